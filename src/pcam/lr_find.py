"""The LR range test (Smith 2017; ``pcam lr-find``): how high can the learning rate go?

Train for a few hundred steps while the LR grows exponentially from ``min_lr`` to
``max_lr``; record the exponentially smoothed (bias-corrected) loss; stop early once
it exceeds ``explode`` times its minimum. The suggestion is the range between the LR
of steepest descent of the smoothed loss (against log LR) and the LR of the minimum
loss divided by 10: the usual one-cycle ``learning_rate`` / ``max_learning_rate``.

The model's weights and optimizer state are restored afterwards, so the sweep never
leaks into training. Outputs: ``lr_find.json`` (lrs, losses, suggestion) and
``lr_find.png`` (loss vs LR on a log axis, suggested range shaded).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pcam.argtypes import positive_float, positive_int
from pcam.config import ExperimentConfig, load_config
from pcam.errors import ConfigError, DataError
from pcam.fsutil import atomic_dir, atomic_path, check_output, write_json

log = logging.getLogger(__name__)


def lr_sweep(
    model: Any,
    dataset: Any,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 200,
    smoothing: float = 0.98,
    explode: float = 4.0,
) -> dict[str, Any]:
    """Run the sweep on a compiled ``model`` over a (repeated if needed) ``dataset`` of batches."""
    from tqdm import tqdm

    if steps < 2 or not 0 < min_lr < max_lr:
        raise DataError(f"lr-find needs steps >= 2 and 0 < min_lr < max_lr (got {steps}, {min_lr}, {max_lr})")
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    saved_model = [v.numpy() for v in model.variables]
    saved_opt = [v.numpy() for v in optimizer.variables]
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    avg, best = 0.0, math.inf
    try:
        batches = iter(dataset.repeat())
        for i in tqdm(range(steps), desc="lr-find", unit="step", leave=False):
            lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
            optimizer.learning_rate = lr
            x, y = next(batches)
            loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
            raw.append(loss)
            avg = smoothing * avg + (1 - smoothing) * loss
            smoothed = avg / (1 - smoothing ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if not math.isfinite(smoothed) or (i > 10 and smoothed > explode * best):
                log.info("lr-find: loss exploded at lr %.3g (step %d); stopping", lr, i)
                break
            best = min(best, smoothed)
    finally:
        for variable, value in zip(model.variables, saved_model, strict=True):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, saved_opt, strict=True):
            variable.assign(value)
    return {
        "lrs": lrs,
        "losses": losses,
        "raw_losses": raw,
        **suggest(lrs, losses),
        "min_lr": min_lr,
        "max_lr": max_lr,
        "steps": steps,
        "steps_run": len(lrs),
    }


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """Steepest descent of the smoothed loss and min-loss LR / 10, ordered as a range."""
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(finite) < 3:
        raise DataError("lr-find: fewer than 3 finite losses; lower min_lr or check the data")
    lr_arr = np.array([f[0] for f in finite])
    loss_arr = np.array([f[1] for f in finite])
    # Skip the first steps: the bias-corrected average is noisy there.
    skip = min(len(lr_arr) // 10, 10)
    grad = np.gradient(loss_arr[skip:], np.log10(lr_arr[skip:]))
    steepest = float(lr_arr[skip:][int(np.argmin(grad))])
    at_min = float(lr_arr[int(np.argmin(loss_arr))])
    # min-loss / 10 falls below the sweep when the loss was lowest at its first steps:
    # never suggest an LR the sweep did not try.
    low, high = sorted((steepest, max(at_min / 10, float(lr_arr[0]))))
    return {"steepest_lr": steepest, "min_loss_lr": at_min, "suggested_min_lr": low, "suggested_max_lr": high}


def plot(result: dict[str, Any], path: str | os.PathLike[str], title: str = "LR range test") -> None:
    """Plot loss against learning rate (log scale) with the suggested LR range shaded, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"], color="C0", label="smoothed loss")
    ax.axvspan(
        result["suggested_min_lr"],
        result["suggested_max_lr"],
        color="C2",
        alpha=0.2,
        label=f"suggested {result['suggested_min_lr']:.2g} - {result['suggested_max_lr']:.2g}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def lr_find(
    shards_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: ExperimentConfig,
    model_name: str,
    *,
    steps: int = 200,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    force: bool = False,
) -> dict[str, Any]:
    """Sweep ``model_name`` (stage-1 setup) over the training shards; write lr_find.{json,png}."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"--min-lr {min_lr:g} must be > 0 and below --max-lr {max_lr:g}")
    check_output(out_dir, "lr-find", inputs=[shards_dir], force=force)

    from pcam.input import make_dataset
    from pcam.models import build_model, is_pretrained, set_trainable_for_stage
    from pcam.train import compile_model

    model_cfg = cfg.model(model_name)
    model = build_model(model_name, model_cfg, seed=cfg.seed)  # seeds Python, NumPy, Keras and TF
    set_trainable_for_stage(model, model_name, "train", pretrained=is_pretrained(model_cfg))
    compile_model(model, model_cfg)
    dataset = make_dataset(
        shards_dir,
        "train",
        model_cfg.batch_size,
        training=True,
        augment_cfg=cfg.augment if cfg.augment.online else None,
        seed=cfg.seed,
        shuffle_buffer=cfg.train.shuffle_buffer,
        drop_remainder=True,
        repeat=True,
    )
    result = lr_sweep(model, dataset, min_lr=min_lr, max_lr=max_lr, steps=steps)
    result["model"] = model_name
    with atomic_dir(out_dir, "lr-find", inputs=[shards_dir], force=force) as tmp:
        plot(result, tmp / "lr_find.png", title=f"LR range test: {model_name}")
        write_json(tmp / "lr_find.json", result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam lr-find`` options on ``parser``."""
    parser.add_argument("--shards", required=True, help="shards directory (index.json)")
    parser.add_argument("--out", required=True, help="output directory for lr_find.json/png")
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--model", required=True, help="logreg, cnn, mobilenetv2 or resnet50")
    parser.add_argument("--steps", type=positive_int, default=200, help="sweep length in steps (default 200)")
    parser.add_argument("--min-lr", type=positive_float, default=1e-7)
    parser.add_argument("--max-lr", type=positive_float, default=1.0)
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam lr-find output")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam lr-find`` (sweep the learning rate exponentially and plot loss vs LR); returns the exit code."""
    cfg = load_config(args.config)
    result = lr_find(
        args.shards,
        args.out,
        cfg,
        args.model,
        steps=args.steps,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        force=args.force,
    )
    print(
        f"lr-find {args.model}: suggested LR {result['suggested_min_lr']:.3g} .. "
        f"{result['suggested_max_lr']:.3g} ({result['steps_run']} steps); {Path(args.out) / 'lr_find.png'}"
    )
    return 0
