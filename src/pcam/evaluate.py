"""Evaluate a trained model on one split, with test-time augmentation (TTA).

Each patch is shown to the model in V views (default 5: identity, horizontal flip,
vertical flip, rotation by 90 and by 270 degrees; PCam patches have no canonical
orientation, so every view is an equally valid picture of the same tissue). For each
batch the V views are concatenated into one V*B batch and the model runs once on it,
so TTA costs one forward pass per batch, not a Python loop over images or views.
``evaluate.batch_size`` counts patches: the model sees V times as many images per
call, so lower it for large models on small accelerators (ResNet50 upsizes to 224 px).

Two decisions come out of the V probabilities:

- the **label** is the majority vote of the V thresholded predictions
  (``p >= threshold``). A tie (possible with an even number of views) counts as
  **positive**: in metastasis screening a missed tumour costs more than a second look
  at a normal patch;
- the **probability** used for AUC, the ROC curve and the sensitivity operating point
  is the mean of the V view probabilities (a vote count has only V+1 levels, too
  coarse for a ROC curve).

The identity view alone is scored beside it ("single"), so the report shows what TTA
bought. Outputs (``out_dir``, built under a temporary name then renamed):
``metrics.json``, ``predictions.csv``, ``roc.json``, ``confusion.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from pcam import metrics as M
from pcam.artifacts import METRICS_FILE, load_model, model_file
from pcam.augment import view
from pcam.config import ExperimentConfig, load_config
from pcam.errors import ConfigError, DataError
from pcam.fsutil import atomic_dir, check_output, file_sha256, write_json

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

VOTE_RULE = "majority of thresholded views; ties count as positive"


def tta_views(images: Any, names: tuple[str, ...] | list[str]) -> Any:
    """Stack the views of a (B, H, W, C) batch into one (V*B, H, W, C) tensor, view-major.

    Row ``v*B + i`` is view ``names[v]`` of image ``i``, so the model's output reshapes
    to (V, B).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise DataError(f"TTA expects a (B, H, W, C) batch, got shape {tuple(images.shape)}")
    names = tuple(names)
    if not names:
        raise ConfigError("evaluate.tta_views needs at least one view")
    if images.shape[1] != images.shape[2] and any(n in ("rot90", "rot270", "transpose", "transverse") for n in names):
        raise DataError(f"rotated views need square images, got {tuple(images.shape)}")
    return tf.concat([view(images, n) for n in names], axis=0)


def predict_views(
    model: Any, images: np.ndarray, names: tuple[str, ...], batch_size: int = 256, *, progress: bool = True
) -> np.ndarray:
    """Probabilities of shape (V, N): one batched forward pass per batch of ``batch_size`` images."""
    import tensorflow as tf
    from tqdm import tqdm

    names = tuple(names)
    n = len(images)

    @tf.function(reduce_retracing=True)
    def forward(batch: tf.Tensor) -> tf.Tensor:
        x = tta_views(tf.cast(batch, tf.float32), names)
        return tf.reshape(tf.cast(model(x, training=False), tf.float32), (len(names), -1))

    out = np.empty((len(names), n), dtype=np.float32)
    starts = range(0, n, batch_size)
    for start in tqdm(
        starts, desc=f"evaluate ({len(names)} views)", unit="batch", disable=not progress, total=len(starts)
    ):
        stop = min(start + batch_size, n)
        out[:, start:stop] = forward(tf.convert_to_tensor(images[start:stop])).numpy()
    return out


def vote(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over the view axis of (V, N) probabilities: (labels, positive vote counts).

    Ties (V even, half the views positive) resolve to positive.
    """
    positive = (probs >= threshold).sum(axis=0)
    return (2 * positive >= probs.shape[0]).astype(np.int64), positive.astype(np.int64)


def data_fingerprint(ids: Any, labels: Any) -> str:
    """sha256 over (id, label) pairs in order: tells whether two evaluations saw the same test data."""
    digest = hashlib.sha256()
    for i, y in zip(ids, np.asarray(labels).reshape(-1), strict=True):
        name = i.decode() if isinstance(i, bytes) else str(i)
        digest.update(f"{name}\t{int(y)}\n".encode())
    return digest.hexdigest()


class Scores(TypedDict):
    """What :func:`evaluate_arrays` measures: the top of ``metrics.json``."""

    single: dict[str, Any]
    """:func:`pcam.metrics.binary_metrics` of the identity view alone."""
    tta: dict[str, Any]
    """:func:`pcam.metrics.binary_metrics` of the TTA vote (labels) and mean probability (scores)."""
    views: list[str]
    n_views: int
    threshold: float
    vote_rule: str
    target_sensitivity: float
    n: int
    positives: int
    negatives: int
    seconds: float
    images_per_second: float | None
    notes: list[str]


class EvaluationMetrics(Scores, total=False):
    """``metrics.json``: the scores plus what :func:`evaluate` knows about the model and data."""

    split: str
    model: str
    policy: str | None
    model_file: str
    model_sha256: str
    shards_dir: str
    data_fingerprint: str
    config_digest: str


@dataclass(frozen=True)
class PerImage:
    """Per-patch outputs of an evaluation (the rows of ``predictions.csv``), index-aligned."""

    ids: list[str]
    labels: np.ndarray
    probability: np.ndarray
    """Mean probability over the TTA views."""
    vote: np.ndarray
    """Majority-vote label (ties positive)."""
    positive_votes: np.ndarray
    single_probability: np.ndarray
    """The identity view's probability."""


@dataclass
class Evaluation:
    """An evaluation in memory: ``metrics`` (what ``metrics.json`` holds) and the per-patch arrays beside it.

    ``metrics`` is a plain mapping that callers may extend with provenance before
    :func:`write_evaluation`; the arrays are never part of it, so writing an
    evaluation does not change it and may be repeated.
    """

    metrics: EvaluationMetrics
    arrays: PerImage


def evaluate_arrays(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[Any] | np.ndarray,
    *,
    views: Sequence[str],
    threshold: float = 0.5,
    target_sensitivity: float = 0.95,
    batch_size: int = 256,
    progress: bool = True,
) -> Evaluation:
    """Score ``images`` in every view; nothing is written.

    Args:
        model: A model taking raw 0..255 pixels and giving one sigmoid probability.
        images: ``(N, H, W, C)`` pixels.
        labels: ``N`` labels in {0, 1}.
        ids: ``N`` patch ids (str or bytes).
        views: TTA views that vote (the identity view is always scored as "single").
        threshold: Probability at or above which a view votes positive.
        target_sensitivity: Recall of the operating point reported beside the threshold's.
        batch_size: Patches per forward pass (the model sees ``len(views)`` times as many images).
        progress: Show a progress bar.

    Returns:
        The metrics and the per-patch arrays.

    Raises:
        DataError: The split is empty, or images, labels and ids differ in length.
    """
    views = tuple(views)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(images) == 0:
        raise DataError("evaluation split is empty")
    if len(images) != len(labels) or len(labels) != len(ids):
        raise DataError(f"images, labels and ids differ in length: {len(images)}, {len(labels)}, {len(ids)}")
    # The identity view is always computed (it is the single-view baseline), but only
    # votes when it is one of the configured views.
    forward_views = views if "identity" in views else (*views, "identity")
    start = time.perf_counter()
    probs = predict_views(model, images, forward_views, batch_size, progress=progress)
    seconds = time.perf_counter() - start
    tta_probs = probs[: len(views)]
    single = probs[forward_views.index("identity")]
    tta_label, positive_votes = vote(tta_probs, threshold)
    tta_score = tta_probs.mean(axis=0)
    single_label = (single >= threshold).astype(np.int64)
    notes = []
    if not M.both_classes(labels):
        notes.append("the split holds one class only: AUC, ROC and the sensitivity operating point are undefined")
    metrics: EvaluationMetrics = {
        "single": M.binary_metrics(labels, single, single_label, target_sensitivity=target_sensitivity),
        "tta": M.binary_metrics(labels, tta_score, tta_label, target_sensitivity=target_sensitivity),
        "views": list(views),
        "n_views": len(views),
        "threshold": float(threshold),
        "vote_rule": VOTE_RULE,
        "target_sensitivity": float(target_sensitivity),
        "n": int(len(labels)),
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(labels) / seconds, 1) if seconds > 0 else None,
        "notes": notes,
    }
    arrays = PerImage(
        ids=[i.decode() if isinstance(i, bytes) else str(i) for i in ids],
        labels=labels,
        probability=tta_score,
        vote=tta_label,
        positive_votes=positive_votes,
        single_probability=single,
    )
    return Evaluation(metrics, arrays)


def write_evaluation(
    out_dir: str | os.PathLike[str],
    evaluation: Evaluation,
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    force: bool = False,
) -> None:
    """Write an evaluation as the evaluate directory (built under a temporary name, then renamed).

    Args:
        out_dir: The directory to (re)place.
        evaluation: What :func:`evaluate_arrays` returned, its metrics possibly extended.
        inputs: Paths ``out_dir`` must not be inside (it would replace them).
        force: Replace ``out_dir`` even if it is not a pcam evaluation.
    """
    with atomic_dir(out_dir, "evaluation", inputs=inputs, force=force) as tmp:
        _write_predictions(tmp / "predictions.csv", evaluation.arrays)
        _write_curves(tmp, evaluation)
        write_json(tmp / METRICS_FILE, M.json_safe(evaluation.metrics))  # last: its presence marks completion


def _write_predictions(path: Path, arrays: PerImage) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "probability", "vote", "positive_votes", "single_probability"])
        for row in zip(
            arrays.ids,
            arrays.labels,
            arrays.probability,
            arrays.vote,
            arrays.positive_votes,
            arrays.single_probability,
            strict=True,
        ):
            writer.writerow([row[0], int(row[1]), f"{row[2]:.6f}", int(row[3]), int(row[4]), f"{row[5]:.6f}"])


def _write_curves(out: Path, evaluation: Evaluation) -> None:
    """``roc.json`` and ``confusion.json``."""
    result, arrays = evaluation.metrics, evaluation.arrays
    roc = M.roc_curve(arrays.labels, arrays.probability)
    roc_single = M.roc_curve(arrays.labels, arrays.single_probability)
    write_json(
        out / "roc.json",
        M.json_safe(
            {
                **roc,
                "auc": result["tta"]["auc"],
                "single": {**roc_single, "auc": result["single"]["auc"]},
                "score": f"mean probability over {result['n_views']} TTA views",
                "note": "scikit-learn's first threshold (inf: nothing predicted positive) is written as "
                "max(1.0, highest score); empty lists when the split holds one class",
            }
        ),
    )
    confusion: dict[str, Any] = {
        "labels": ["normal (0)", "tumour (1)"],
        "layout": "matrix[true][predicted]",
        "threshold": result["threshold"],
    }
    for mode in ("tta", "single"):
        c = result["tta"]["confusion"] if mode == "tta" else result["single"]["confusion"]
        confusion[mode] = {**c, "matrix": [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]}
    write_json(out / "confusion.json", confusion)


def evaluate(
    model_dir: str | os.PathLike[str],
    shards_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: ExperimentConfig,
    split: str | None = None,
    *,
    progress: bool = True,
    force: bool = False,
) -> EvaluationMetrics:
    """Evaluate ``model_dir/model.keras`` on ``split`` (default ``cfg.evaluate.split``) of the shards.

    Args:
        model_dir: A train/fine-tune output directory, or a ``.keras`` file.
        shards_dir: The shards directory (``index.json``).
        out_dir: The evaluate directory to write.
        cfg: The experiment config (its ``evaluate`` section).
        split: Split to score (default ``cfg.evaluate.split``).
        progress: Show a progress bar.
        force: Replace ``out_dir`` even if it is not a pcam evaluation.

    Returns:
        What ``metrics.json`` holds (NaN as None, as written there).
    """
    ecfg = cfg.evaluate
    split = split or ecfg.split
    check_output(out_dir, "evaluation", inputs=[model_dir, shards_dir], force=force)
    model_path = model_file(model_dir)
    model = load_model(model_path)
    from pcam.input import load_arrays

    images, labels, ids = load_arrays(shards_dir, split)
    log.info("evaluating %s on %d %s patches with %d views", model_path, len(labels), split, len(ecfg.tta_views))
    evaluation = evaluate_arrays(
        model,
        images,
        labels,
        ids,
        views=ecfg.tta_views,
        threshold=ecfg.threshold,
        target_sensitivity=ecfg.target_sensitivity,
        batch_size=ecfg.batch_size,
        progress=progress,
    )
    provenance = _provenance(model_path.parent)
    evaluation.metrics.update(
        {
            "split": split,
            "model": provenance.get("model", Path(model_dir).name),
            "policy": provenance.get("policy"),
            "model_file": str(model_path),
            "model_sha256": file_sha256(model_path),
            "shards_dir": str(shards_dir),
            "data_fingerprint": data_fingerprint(evaluation.arrays.ids, labels),
            "config_digest": cfg.digest(),
        }
    )
    write_evaluation(out_dir, evaluation, inputs=[model_dir, shards_dir], force=force)
    for mode in ("single", "tta"):
        m = evaluation.metrics["tta"] if mode == "tta" else evaluation.metrics["single"]
        log.info("%s: auc=%.4f acc=%.4f f1=%.4f", mode, m["auc"], m["accuracy"], m["f1"])
    metrics: EvaluationMetrics = M.json_safe(evaluation.metrics)
    return metrics


def _provenance(model_dir: Path) -> dict[str, Any]:
    """Model name and policy from the train step's ``train.json`` in ``model_dir``, when it is there."""
    import json

    try:
        data = json.loads((model_dir / "train.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in ("model", "policy") if k in data}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam evaluate`` options on ``parser``."""
    parser.add_argument("--model", required=True, help="directory holding model.keras (or the .keras file)")
    parser.add_argument("--shards", required=True, help="shards directory (index.json + TFRecords)")
    parser.add_argument("--out", required=True, help="output directory for metrics.json, predictions.csv, ...")
    parser.add_argument("--config", required=True, help="experiment YAML (evaluate: views, threshold, ...)")
    parser.add_argument("--split", choices=("train", "valid", "test"), help="default: evaluate.split")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam evaluation")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam evaluate`` (evaluate a model with test-time augmentation); returns the exit code."""
    cfg = load_config(args.config)
    result = evaluate(args.model, args.shards, args.out, cfg, split=args.split, force=args.force)
    for mode in ("single", "tta"):
        m = result[mode]
        print(
            f"{mode:>6}: auc={m['auc']} accuracy={m['accuracy']:.4f} f1={m['f1']:.4f} "
            f"recall={m['recall']:.4f} precision={m['precision']:.4f}"
        )
    print(Path(args.out) / "metrics.json")
    return 0
