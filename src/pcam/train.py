"""Train one model under one LR policy, or fine-tune it (``pcam train``; ``pcam finetune``).

:func:`train` / :func:`finetune` read the shards (``pcam.input.make_dataset``), build
or load the model, compile it, call :func:`pcam.fit.fit_model` (the epoch loop, its
checkpoints and the resume rules) and write ``train.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from pcam.artifacts import MODEL_FILE, load_model
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
from pcam.config import POLICY_NAMES, TRANSFER_MODELS, ExperimentConfig, ModelConfig, load_config
from pcam.errors import ConfigError, DataError
from pcam.fit import HISTORY_COLUMNS, FitSummary, fit_model  # noqa: F401 - HISTORY_COLUMNS re-exported
from pcam.fsutil import (
    KIND_FILE,
    check_output,
    mark_directory,
    read_json,
    write_json,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


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


def compile_model(model: Any, model_cfg: ModelConfig, xla: bool = False) -> None:
    """Compile with binary cross-entropy (label-smoothed if asked), accuracy and AUC.

    The optimizer is Adam, or SGD (momentum 0.9) for ``optimizer: sgd``; with ``ema`` it
    also keeps the weights' moving average (:func:`pcam.fit.ema_weights`).
    """
    import keras

    ema = {"use_ema": True, "ema_momentum": model_cfg.ema} if model_cfg.ema > 0 else {}
    if model_cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=model_cfg.learning_rate, momentum=0.9, **ema)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=model_cfg.learning_rate, **ema)
    if ema:
        # Keras overwrites the weights with their average at the end of every fit(); ours
        # is one fit() per epoch, so training would restart from the average each epoch.
        # pcam.fit swaps the average in only to validate and to save (fit.ema_weights).
        optimizer.finalize_variable_values = lambda var_list: None
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
