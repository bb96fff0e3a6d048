"""The training core: fit a compiled model epoch by epoch, checkpointing after each, resuming after preemption.

:func:`fit_model` takes a compiled model, a training dataset (or a function ``epoch ->
dataset``), a validation dataset and an LR policy; it writes the per-epoch history,
the best model, checkpoints and TensorBoard logs. :mod:`pcam.train` builds those
from the shards and the config; tests drive this module with in-memory data.

Resume: after every epoch a complete checkpoint is written to
``<out>/checkpoint/epoch-NNNNN/`` (or ``<train.checkpoint_uri>/<model>-<policy>-<stage>/
epoch-NNNNN/``, which may be gs://; :mod:`pcam.checkpoint`): ``variables.npz`` (every model variable,
including dropout seed-generator states, and every optimizer variable, including the
iteration count and Adam moments) then ``state.json`` (epoch, history so far, LR
policy state, best metric) written last as the commit marker. Locally the epoch
directory is built under a temporary name and renamed; a directory without
``state.json`` is ignored. The previous checkpoint is deleted only after the new
one is complete. Determinism across a resume: the global RNGs are reseeded at the
start of every epoch with ``seed * 1000 + epoch`` and the training dataset for epoch
``e`` is built with that seed, so an interrupted-and-resumed run repeats exactly the
computation of an uninterrupted one (on CPU the final weights are bit-identical;
tests check it).

The one-cycle LR is set before every step; history's ``lr`` is the LR of the epoch's
first step.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from pcam.artifacts import MODEL_FILE, PARTIAL_MODEL_FILE
from pcam.checkpoint import check_identity, complete_checkpoints, load_checkpoint, save_checkpoint
from pcam.errors import DataError
from pcam.fsutil import atomic_open, atomic_path, write_json

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "stage",
    "loss",
    "accuracy",
    "auc",
    "val_loss",
    "val_accuracy",
    "val_auc",
    "lr",
    "seconds",
    "images_per_second",
)


class FitSummary(TypedDict):
    """What :func:`fit_model` reports about one stage (the stage part of ``train.json``)."""

    stage: str
    epochs: int
    first_epoch: int
    last_epoch: int
    best_epoch: int
    monitor: str
    best: float | None
    train_seconds: float
    images_per_second: float
    resumed_from: list[int]
    checkpoint: str
    final_lr: float


def verbosity() -> int:
    """Keras progress bar when a person watches; one line per epoch in logs and pods."""
    return 1 if sys.stderr.isatty() else 2


def _reseed_epoch(seed: int) -> None:
    """Reseed Python's and NumPy's global RNGs at the start of an epoch.

    A resumed run then draws what an uninterrupted one would.

    Not TensorFlow's global seed (``keras.utils.set_random_seed`` sets it):
    ``tf.random.set_seed`` clears TensorFlow's kernel cache, so every epoch re-optimised
    the train and test functions, 5-8 s an epoch for MobileNetV2 on two cores. The
    TensorFlow seed is set once, before the model is built; shuffling and augmentation
    take explicit per-epoch seeds and dropout keeps its RNG state in checkpointed variables.
    """
    random.seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------- the core


def _step_lr(policy: Any, first_step: int) -> Any:
    """A Keras callback that sets the policy's LR before every batch and times the training part of the epoch."""
    import keras

    class StepLR(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = first_step
            self.first_lr = policy.lr_at(first_step)
            self.train_seconds = 0.0
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.model.optimizer.learning_rate = policy.lr_at(self.step)
            self.step += 1

        def on_test_begin(self, logs: Any = None) -> None:
            if not self.train_seconds:
                self.train_seconds = time.perf_counter() - self._t0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if not self.train_seconds:
                self.train_seconds = time.perf_counter() - self._t0

    return StepLR()


def _ema_pairs(model: keras.Model) -> list[tuple[Any, Any]]:
    """(weight, its moving average) for a model compiled with ``ema``; empty otherwise."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under LossScaleOptimizer
    if not getattr(optimizer, "use_ema", False):
        return []
    # The averages were built from model.trainable_variables, in that order (compile_model);
    # Keras's own SwapEMAWeights pairs them the same way.
    return list(zip(model.trainable_variables, optimizer._model_variables_moving_average, strict=True))


def _swap(pairs: list[tuple[Any, Any]]) -> None:
    for weight, average in pairs:
        held = weight.numpy()
        weight.assign(average)
        average.assign(held)


@contextlib.contextmanager
def ema_weights(model: keras.Model) -> Iterator[None]:
    """Inside, the model holds its weights' moving average (``ema``); outside, the raw weights again.

    A no-op for a model compiled without ``ema``. The swap goes both ways, so the
    average is intact afterwards and a checkpoint written outside holds the raw weights
    plus the average (an exact resume).
    """
    pairs = _ema_pairs(model)
    _swap(pairs)
    try:
        yield
    finally:
        _swap(pairs)


def _ema_validation(model: keras.Model) -> list[Any]:
    """A callback that validates the moving average (``ema``); none without it."""
    import keras

    pairs = _ema_pairs(model)
    if not pairs:
        return []

    class EmaValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs: Any = None) -> None:
            _swap(pairs)

        def on_test_end(self, logs: Any = None) -> None:
            _swap(pairs)

    return [EmaValidation()]


def _write_tensorboard(log_dir: Path, row: dict[str, Any]) -> None:
    """Per-epoch scalars in TensorBoard's format (``train/`` and ``validation/``, tags ``epoch_*``).

    Written with core ``tf.summary.write`` plus the scalars-plugin metadata rather than
    ``keras.callbacks.TensorBoard``: TensorFlow 2.21 no longer installs the
    ``tensorboard`` package that ``tf.summary.scalar`` needs, and the viewer is not
    a runtime dependency of training.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    groups = {
        "train": ("loss", "accuracy", "auc", "lr", "images_per_second"),
        "validation": ("val_loss", "val_accuracy", "val_auc"),
    }
    for group, keys in groups.items():
        writer = tf.summary.create_file_writer(str(log_dir / group))
        with writer.as_default():
            for key in keys:
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    tf.summary.write(
                        f"epoch_{key.removeprefix('val_')}",
                        tf.constant(float(value), tf.float32),
                        step=int(row["epoch"]),
                        metadata=metadata,
                    )
        writer.close()


def _improved(value: float, best: float | None) -> bool:
    return not math.isnan(value) and (best is None or value > best)


def _write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    write_json(out_dir / "history.json", history)
    with atomic_open(out_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


@dataclasses.dataclass
class _Progress:
    """Where a stage stands: its rows so far and its best epoch (fresh, or restored from a checkpoint)."""

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: float | None = None
    best_epoch: int = 0
    start: int = 0
    """Epochs of this stage already done."""
    resumed_from: list[int] = dataclasses.field(default_factory=list)


def _restore(
    ckpt_root: str, model: keras.Model, policy: Any, *, stage: str, offset: int, identity: dict[str, str] | None
) -> _Progress:
    """Load the last complete checkpoint into ``model`` and ``policy``; a fresh progress when there is none."""
    state = load_checkpoint(ckpt_root, model)
    if state is None:
        return _Progress()
    if identity is not None:
        check_identity(ckpt_root, state.get("identity"), identity)
    if state.get("stage") != stage or int(state["offset"]) != offset:
        raise DataError(
            f"{ckpt_root}: checkpoint belongs to stage {state.get('stage')!r} "
            f"(offset {state.get('offset')}), not {stage!r} (offset {offset})"
        )
    policy.load_state(state["policy"])
    return _Progress(
        history=[row for row in state["history"] if row["stage"] == stage],
        best=state["best"],
        best_epoch=int(state["best_epoch"]),
        start=int(state["epoch"]) - offset,
        resumed_from=[*state.get("resumed_from", []), int(state["epoch"])],
    )


def _prepare_outputs(out: Path, start: int) -> Path:
    """The best-so-far model's path, after clearing (fresh start) or reclaiming (resume) earlier outputs."""
    best_path = out / PARTIAL_MODEL_FILE
    if start > 0 and (out / MODEL_FILE).exists() and not best_path.exists():
        os.replace(out / MODEL_FILE, best_path)  # a finished run resumed: its best model stays the best so far
    if start == 0:  # a fresh start: nothing of an earlier run may survive into this one's outputs
        for name in (MODEL_FILE, PARTIAL_MODEL_FILE, "train.json"):
            (out / name).unlink(missing_ok=True)
    return best_path


def _fit_epoch(
    model: keras.Model, dataset: Any, val_ds: Any, epoch: int, step_lr: Any, steps: int | None, verbose: int
) -> tuple[dict[str, float], float]:
    """One Keras epoch: (its final logs, wall seconds)."""
    t0 = time.perf_counter()
    result = model.fit(
        dataset,
        validation_data=val_ds,
        initial_epoch=epoch - 1,
        epochs=epoch,
        steps_per_epoch=steps,
        callbacks=[step_lr, *_ema_validation(model)],
        verbose=verbose,
        shuffle=False,  # tf.data shuffles
    )
    return {k: float(v[-1]) for k, v in result.history.items()}, time.perf_counter() - t0


def _fit_summary(stage: str, progress: _Progress, monitor: str, ckpt_root: str) -> FitSummary:
    history = progress.history
    return {
        "stage": stage,
        "epochs": len(history),
        "first_epoch": history[0]["epoch"],
        "last_epoch": history[-1]["epoch"],
        "best_epoch": progress.best_epoch,
        "monitor": monitor,
        "best": progress.best,
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "images_per_second": round(float(np.mean([r["images_per_second"] for r in history])), 2),
        "resumed_from": progress.resumed_from,
        "checkpoint": ckpt_root,
        "final_lr": history[-1]["lr"],
    }


def fit_model(
    model: keras.Model,
    train_data: Any,
    val_ds: Any,
    *,
    out_dir: str | os.PathLike[str],
    policy: Any,
    epochs: int,
    steps_per_epoch: int,
    train_images: int,
    monitor: str = "val_auc",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = True,
    stage: str = "train",
    prior_history: list[dict[str, Any]] | None = None,
    fixed_steps: bool = False,
    verbose: int | None = None,
    identity: dict[str, str] | None = None,
) -> FitSummary:
    """Train a compiled ``model`` for ``epochs`` epochs; checkpoint after each, resume if asked.

    ``train_data`` is a ``tf.data.Dataset`` or a function ``epoch -> Dataset`` (epoch
    numbers are global and 1-based; build the epoch's shuffle/augmentation from it
    for exact resume). ``steps_per_epoch`` sizes the LR policy; ``fixed_steps`` also
    passes it to Keras (for repeated datasets). ``prior_history`` holds earlier
    stages' rows (fine-tuning continues their epoch numbers). Returns the summary
    fields of ``train.json`` (without the model/config ones). ``identity`` (see
    :func:`run_identity`) is stored in every checkpoint; a resume from a checkpoint
    with another identity is refused. The best model so far is kept as
    ``model.partial.keras`` and becomes ``model.keras`` only when training ends, so a
    failed or diverged run leaves no ``model.keras``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = checkpoint_dir or str(out / "checkpoint")
    prior = list(prior_history or [])
    offset = len(prior)
    progress = _Progress()
    if resume:
        progress = _restore(ckpt_root, model, policy, stage=stage, offset=offset, identity=identity)
    elif complete_checkpoints(ckpt_root):
        log.info("--no-resume: ignoring and replacing the checkpoints in %s", ckpt_root)
    best_path = _prepare_outputs(out, progress.start)
    verbose = verbosity() if verbose is None else verbose
    for i in range(progress.start, epochs):
        epoch = offset + i + 1
        log.info("%s epoch %d (%d of %d in this stage)", stage, epoch, i + 1, epochs)
        _reseed_epoch(seed * 1000 + epoch)
        dataset = train_data(epoch) if callable(train_data) else train_data
        step_lr = _step_lr(policy, i * steps_per_epoch)
        logs, seconds = _fit_epoch(
            model, dataset, val_ds, epoch, step_lr, steps_per_epoch if fixed_steps else None, verbose
        )
        if not math.isfinite(logs.get("loss", float("nan"))):
            best_path.unlink(missing_ok=True)
            raise DataError(
                f"{out}: training diverged: loss {logs.get('loss')} in epoch {epoch}; no model written "
                "(lower the learning rate, or check the data)"
            )
        row: dict[str, Any] = {
            "epoch": epoch,
            "stage": stage,
            "lr": step_lr.first_lr,
            "seconds": round(seconds, 3),
            "images_per_second": round(train_images / max(step_lr.train_seconds, 1e-9), 2),
        }
        row.update({k: logs.get(k, float("nan")) for k in HISTORY_COLUMNS if k not in row})
        policy.on_epoch_end(epoch, logs)
        value = logs.get(monitor, float("nan"))
        if _improved(value, progress.best):
            progress.best, progress.best_epoch = value, epoch
            with atomic_path(best_path) as tmp, ema_weights(model):
                model.save(tmp)
            log.info("epoch %d: %s improved to %.4f; saved %s", epoch, monitor, value, best_path)
        progress.history.append(row)
        _write_tensorboard(out / "tensorboard", row)
        _write_history(out, prior + progress.history)
        state = {"epoch": epoch, "stage": stage, "offset": offset, "history": progress.history}
        state |= {"policy": policy.state(), "best": progress.best, "best_epoch": progress.best_epoch}
        state |= {"resumed_from": progress.resumed_from, "seed": seed, "identity": identity}
        save_checkpoint(ckpt_root, model, state)
    if not progress.history:
        raise DataError(f"{out}: no epochs to train (epochs={epochs})")
    if not best_path.exists():
        # Every monitored value was NaN: keep the last model rather than none.
        with atomic_path(best_path) as tmp, ema_weights(model):
            model.save(tmp)
        progress.best_epoch = progress.history[-1]["epoch"]
    os.replace(best_path, out / MODEL_FILE)
    _write_history(out, prior + progress.history)
    return _fit_summary(stage, progress, monitor, ckpt_root)
