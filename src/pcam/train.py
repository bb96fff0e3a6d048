"""Train one model under one LR policy, resumable after preemption (``pcam train``).

Layers:

* :func:`fit_model` - the core: a compiled model, a training dataset (or a function
  ``epoch -> dataset``), a validation dataset and an LR policy in; per-epoch history,
  best model, checkpoints and TensorBoard logs out. Tests drive it with in-memory data.
* :func:`train` / :func:`finetune` - read the shards (``pcam.input.make_dataset``),
  build or load the model, compile, call :func:`fit_model`, write ``train.json``.

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

import argparse
import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from pcam.artifacts import MODEL_FILE, PARTIAL_MODEL_FILE, load_model
from pcam.checkpoint import (  # noqa: F401 - re-exported: callers import them from here
    CHECKPOINT_PREFIX,
    STATE_FILE,
    VARIABLES_FILE,
    check_identity,
    check_resumable,
    checkpoint_root,
    load_checkpoint,
    read_state,
    run_identity,
    save_checkpoint,
)
from pcam.checkpoint import complete_checkpoints as _complete_checkpoints
from pcam.config import POLICY_NAMES, TRANSFER_MODELS, ExperimentConfig, ModelConfig, load_config
from pcam.errors import ConfigError, DataError
from pcam.fsutil import (
    KIND_FILE,
    atomic_open,
    atomic_path,
    check_output,
    mark_directory,
    read_json,
    write_json,
)

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


class StageSettings(TypedDict, total=False):
    """The learning-rate settings one stage records in ``train.json`` beside the common ones."""

    learning_rate: float
    max_learning_rate: float
    """Stage 1 only."""
    trained_dir: str
    """Fine-tuning only: the stage-1 directory it started from."""


class TrainSummary(FitSummary, StageSettings):
    """``train.json``: the stage's summary, the model's size and the settings that made it."""

    model: str
    policy: str
    params: int
    trainable_params: int
    weights: str
    batch_size: int
    optimizer: str
    mixed_precision: bool
    xla: bool
    config_digest: str
    seed: int
    model_path: str


# --------------------------------------------------------------------------- helpers


def verbosity() -> int:
    """Keras progress bar when a person watches; one line per epoch in logs and pods."""
    return 1 if sys.stderr.isatty() else 2


def compile_model(model: Any, model_cfg: ModelConfig, xla: bool = False) -> None:
    """Compile with binary cross-entropy (label-smoothed if asked), accuracy and AUC.

    The optimizer is Adam, or SGD (momentum 0.9) for ``optimizer: sgd``.
    """
    import keras

    if model_cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=model_cfg.learning_rate, momentum=0.9)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=model_cfg.learning_rate)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss = (
        keras.losses.BinaryCrossentropy(label_smoothing=model_cfg.label_smoothing)
        if model_cfg.label_smoothing > 0
        else "binary_crossentropy"
    )
    model.compile(
        optimizer=optimizer, loss=loss, metrics=["accuracy", keras.metrics.AUC(name="auc")], jit_compile=bool(xla)
    )
    # Create the optimizer's slots now, eagerly. Left to Keras, they are made inside the
    # first traced train step, where each variable costs ~30 ms: 15 s of MobileNetV2's
    # first epoch on a 2-core CPU (a third of a demo-sized epoch; bench/RESULTS.md).
    optimizer.build(model.trainable_variables)


def strategy_for_devices() -> Any:
    """The distribution strategy for the devices present.

    MirroredStrategy across several GPUs; OneDeviceStrategy on one GPU, so that Keras
    distributes the input through it and batches are prefetched to the device; the
    default strategy on a CPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


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


@contextlib.contextmanager
def _precision(mixed: bool) -> Iterator[None]:
    """Set the global Keras dtype policy for a block and restore it afterwards."""
    import keras

    saved = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(saved)


# --------------------------------------------------------------------------- checkpoints
# (saving, loading, listing them and deciding whether one may be resumed: pcam.checkpoint)


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
        callbacks=[step_lr],
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
    elif _complete_checkpoints(ckpt_root):
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
            with atomic_path(best_path) as tmp:
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
        with atomic_path(best_path) as tmp:
            model.save(tmp)
        progress.best_epoch = progress.history[-1]["epoch"]
    os.replace(best_path, out / MODEL_FILE)
    _write_history(out, prior + progress.history)
    return _fit_summary(stage, progress, monitor, ckpt_root)


# --------------------------------------------------------------------------- shard wrappers


def _check_names(model_name: str, policy: str) -> None:
    from pcam.config import MODEL_NAMES

    if model_name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {model_name!r}; expected one of {', '.join(MODEL_NAMES)}")
    if policy not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {policy!r}; expected one of {', '.join(POLICY_NAMES)}")


def _datasets(
    shards_dir: str | os.PathLike[str], cfg: ExperimentConfig, batch_size: int
) -> tuple[Callable[[int], Any], Any, int, int, bool]:
    """(epoch -> train dataset, valid dataset, steps per epoch, train images, fixed steps)."""
    from pcam.input import dataset_size, make_dataset

    n_train = dataset_size(shards_dir, "train")
    n_valid = dataset_size(shards_dir, "valid")
    if n_train == 0 or n_valid == 0:
        raise DataError(
            f"{shards_dir}: training needs non-empty train and valid splits (train {n_train}, valid {n_valid})"
        )
    fixed = cfg.train.steps_per_epoch > 0
    steps = cfg.train.steps_per_epoch if fixed else math.ceil(n_train / batch_size)
    augment = cfg.augment if cfg.augment.online else None

    def train_ds(epoch: int) -> Any:
        return make_dataset(
            shards_dir,
            "train",
            batch_size,
            training=True,
            augment_cfg=augment,
            seed=cfg.seed * 1000 + epoch,
            shuffle_buffer=cfg.train.shuffle_buffer,
            repeat=fixed,
        )

    val_ds = make_dataset(shards_dir, "valid", batch_size, training=False)
    images = steps * batch_size if fixed else n_train
    return train_ds, val_ds, steps, images, fixed


def _summary(
    out: Path,
    cfg: ExperimentConfig,
    pair: tuple[str, str],
    model: keras.Model,
    model_cfg: ModelConfig,
    fit: FitSummary,
    extra: StageSettings,
) -> TrainSummary:
    """Write ``train.json``: the pair, the fit's summary, the model's size and the settings that made it."""
    summary: TrainSummary = {
        "model": pair[0],
        "policy": pair[1],
        **fit,
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "weights": model_cfg.weights,
        "batch_size": model_cfg.batch_size,
        "optimizer": model_cfg.optimizer,
        "mixed_precision": cfg.train.mixed_precision,
        "xla": cfg.train.xla,
        "config_digest": cfg.digest(),
        "seed": cfg.seed,
        "model_path": str(out / MODEL_FILE),
        **extra,
    }
    write_json(out / "train.json", summary)
    return summary


@contextlib.contextmanager
def _output_dir(out_dir: str | os.PathLike[str], kind: str, inputs: list[Any], force: bool) -> Iterator[Path]:
    """Claim ``out_dir`` for a training stage; remove it again if this call created it and then failed."""
    out = check_output(out_dir, kind, inputs=inputs, force=force)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    mark_directory(out, kind)
    try:
        yield Path(out_dir)
    except BaseException:
        if created and not any(p.name != KIND_FILE for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_stage(
    stage: str,
    out_dir: str | os.PathLike[str],
    shards_dir: str | os.PathLike[str],
    cfg: ExperimentConfig,
    pair: tuple[str, str],
    model_cfg: ModelConfig,
    make_model: Callable[[], keras.Model],
    *,
    identity: dict[str, str],
    inputs: list[Any],
    resume: bool,
    force: bool,
    extra: StageSettings,
    prior_history: list[dict[str, Any]] | None = None,
) -> TrainSummary:
    """What training and fine-tuning share: claim ``out_dir``, build the datasets, fit, write ``train.json``.

    ``make_model`` builds or loads the model and sets which layers train; it runs
    inside the distribution strategy's scope, under the stage's dtype policy.
    """
    from pcam.policies import make_policy

    model_name, policy = pair
    if resume:
        check_resumable(checkpoint_root(out_dir, cfg, model_name, policy, stage), identity)
    with _output_dir(out_dir, stage, inputs, force) as out, _precision(cfg.train.mixed_precision):
        train_ds, val_ds, steps, images, fixed = _datasets(shards_dir, cfg, model_cfg.batch_size)
        with strategy_for_devices().scope():
            model = make_model()
            compile_model(model, model_cfg, cfg.train.xla)
        fit = fit_model(
            model,
            train_ds,
            val_ds,
            out_dir=out,
            policy=make_policy(policy, model_cfg, model_cfg.epochs, cfg.train, steps),
            epochs=model_cfg.epochs,
            steps_per_epoch=steps,
            train_images=images,
            monitor=cfg.train.monitor,
            seed=cfg.seed,
            resume=resume,
            stage=stage,
            prior_history=prior_history,
            fixed_steps=fixed,
            identity=identity,
            checkpoint_dir=checkpoint_root(out, cfg, model_name, policy, stage),
        )
    return _summary(out, cfg, pair, model, model_cfg, fit, extra)


def train(
    shards_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: ExperimentConfig,
    model_name: str,
    policy: str,
    *,
    resume: bool = True,
    force: bool = False,
) -> TrainSummary:
    """Stage 1: build ``model_name`` (transfer bases frozen) and train it under ``policy``.

    Args:
        shards_dir: The shards directory (train and valid splits).
        out_dir: Output directory (model.keras, history, checkpoints, train.json).
        cfg: The experiment config.
        model_name: One of :data:`pcam.config.MODEL_NAMES`.
        policy: One of :data:`pcam.config.POLICY_NAMES`.
        resume: Continue from this run's last checkpoint when there is one.
        force: Write into ``out_dir`` even if it is not a pcam training directory.

    Returns:
        What ``train.json`` holds.
    """
    from pcam.models import build_model, is_pretrained, set_trainable_for_stage

    _check_names(model_name, policy)
    model_cfg = cfg.model(model_name)

    def make_model() -> keras.Model:
        model = build_model(model_name, model_cfg, seed=cfg.seed)  # seeds Python, NumPy, Keras and TF
        set_trainable_for_stage(model, model_name, "train", pretrained=is_pretrained(model_cfg))
        return model

    return _run_stage(
        "train",
        out_dir,
        shards_dir,
        cfg,
        (model_name, policy),
        model_cfg,
        make_model,
        identity=run_identity(cfg, model_name, policy, "train", shards_dir),
        inputs=[shards_dir],
        resume=resume,
        force=force,
        extra={"learning_rate": model_cfg.learning_rate, "max_learning_rate": model_cfg.max_learning_rate},
    )


def finetune_config(model_cfg: ModelConfig) -> ModelConfig:
    """Stage 2 hyper-parameters: the fine-tune LR, one-cycle peak scaled by the same ratio as stage 1."""
    ratio = model_cfg.max_learning_rate / model_cfg.learning_rate
    lr = model_cfg.finetune_learning_rate
    return dataclasses.replace(
        model_cfg, learning_rate=lr, max_learning_rate=lr * ratio, epochs=model_cfg.finetune_epochs
    )


def _check_trained(trained: Path, model_name: str, policy: str) -> list[dict[str, Any]]:
    """The stage-1 history of ``trained``, after checking it holds this pair's finished model."""
    if not (trained / MODEL_FILE).exists():
        raise DataError(f"{trained / MODEL_FILE}: missing (train the model before fine-tuning it)")
    trained_as = read_json(trained / "train.json")
    if not isinstance(trained_as, dict) or (trained_as.get("model"), trained_as.get("policy")) != (model_name, policy):
        got = (trained_as.get("model"), trained_as.get("policy")) if isinstance(trained_as, dict) else None
        raise DataError(f"{trained / 'train.json'}: that model was trained as {got}, not ({model_name!r}, {policy!r})")
    return [r for r in read_json(trained / "history.json") if r.get("stage", "train") == "train"]


def finetune(
    trained_dir: str | os.PathLike[str],
    shards_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: ExperimentConfig,
    model_name: str,
    policy: str,
    *,
    resume: bool = True,
    force: bool = False,
) -> TrainSummary:
    """Stage 2: load ``trained_dir/model.keras``, unfreeze the top layers, train on under ``policy``.

    Args:
        trained_dir: The stage-1 output directory of the same (model, policy) pair.
        shards_dir: The shards directory (train and valid splits).
        out_dir: Output directory; its history continues the stage-1 epoch numbers.
        cfg: The experiment config (``models.<name>.finetune_*``).
        model_name: A transfer model (:data:`pcam.config.TRANSFER_MODELS`).
        policy: The LR policy stage 1 used.
        resume: Continue from this run's last checkpoint when there is one.
        force: Write into ``out_dir`` even if it is not a pcam training directory.

    Returns:
        What ``train.json`` holds.
    """
    import keras

    from pcam.models import set_trainable_for_stage

    _check_names(model_name, policy)
    if model_name not in TRANSFER_MODELS:
        raise ConfigError(f"model {model_name!r} cannot be fine-tuned; only {', '.join(TRANSFER_MODELS)} can")
    model_cfg = finetune_config(cfg.model(model_name))
    if model_cfg.epochs <= 0:
        raise ConfigError(f"config key 'models.{model_name}.finetune_epochs': must be > 0 to fine-tune")
    trained = Path(trained_dir)
    prior = _check_trained(trained, model_name, policy)

    def make_model() -> keras.Model:
        keras.utils.set_random_seed(cfg.seed)
        model = load_model(trained / MODEL_FILE)
        set_trainable_for_stage(model, model_name, "finetune")
        return model

    return _run_stage(
        "finetune",
        out_dir,
        shards_dir,
        cfg,
        (model_name, policy),
        model_cfg,
        make_model,
        identity=run_identity(cfg, model_name, policy, "finetune", shards_dir, start_model=trained / MODEL_FILE),
        inputs=[shards_dir, trained],
        resume=resume,
        force=force,
        extra={"learning_rate": model_cfg.learning_rate, "trained_dir": str(trained)},
        prior_history=prior,
    )


# --------------------------------------------------------------------------- CLI


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options ``pcam train`` and ``pcam finetune`` share on ``parser``."""
    parser.add_argument("--shards", required=True, help="shards directory (index.json)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--model", required=True, help="logreg, cnn, mobilenetv2 or resnet50")
    parser.add_argument("--policy", required=True, help="constant, onecycle or plateau")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from scratch even if a checkpoint exists (a rerun of the same command resumes; "
        "a checkpoint made with other settings or data is refused without this flag)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into --out even if it is not a pcam training directory"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam train`` options on ``parser``."""
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``pcam train`` (train one model under one learning-rate policy); returns the exit code."""
    cfg = load_config(args.config)
    summary = train(args.shards, args.out, cfg, args.model, args.policy, resume=args.resume, force=args.force)
    print(summary_line("trained", summary))
    return 0


def summary_line(verb: str, summary: TrainSummary) -> str:
    """One line for the terminal: which pair, its best score and epoch, where the model is."""
    return (
        f"{verb} {summary['model']}/{summary['policy']}: best {summary['monitor']} "
        f"{summary['best']} at epoch {summary['best_epoch']}; model {summary['model_path']}"
    )
