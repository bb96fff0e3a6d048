"""Binary-classification metrics in plain numpy (scikit-learn only for AUC and ROC).

Conventions, the same everywhere in pcam:

- label 1 (tumour) is the positive class; a probability ``p`` is predicted positive
  when ``p >= threshold``;
- a ratio whose denominator is zero (precision with no predicted positive, recall
  with no positive example, ...) is 0.0, as scikit-learn's ``zero_division=0``;
- AUC and the operating point at a target sensitivity need both classes. With one
  class they are undefined: the functions return NaN (never raise), callers write
  ``null`` to JSON and the report says why.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pcam.config import METRIC_NAMES  # noqa: F401 - re-exported: the metrics a run is ranked on


def _arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {t.size} vs {p.size}")
    return t.astype(np.int64), p


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else 0.0


def confusion(y_true: Any, y_label: Any) -> dict[str, int]:
    """Counts ``{tn, fp, fn, tp}`` of hard 0/1 predictions."""
    t, p = _arrays(y_true, y_label)
    p = p.astype(np.int64)
    return {
        "tn": int(np.sum((t == 0) & (p == 0))),
        "fp": int(np.sum((t == 0) & (p == 1))),
        "fn": int(np.sum((t == 1) & (p == 0))),
        "tp": int(np.sum((t == 1) & (p == 1))),
    }


def precision(y_true: Any, y_label: Any) -> float:
    """Share of predicted tumour patches that are tumour (0.0 with no positive prediction)."""
    c = confusion(y_true, y_label)
    return _ratio(c["tp"], c["tp"] + c["fp"])


def recall(y_true: Any, y_label: Any) -> float:
    """Sensitivity: the share of tumour patches found."""
    c = confusion(y_true, y_label)
    return _ratio(c["tp"], c["tp"] + c["fn"])


def specificity(y_true: Any, y_label: Any) -> float:
    """The share of normal patches left alone."""
    c = confusion(y_true, y_label)
    return _ratio(c["tn"], c["tn"] + c["fp"])


def accuracy(y_true: Any, y_label: Any) -> float:
    """Share of patches labelled correctly."""
    c = confusion(y_true, y_label)
    return _ratio(c["tp"] + c["tn"], sum(c.values()))


def f1(y_true: Any, y_label: Any) -> float:
    """Harmonic mean of precision and recall."""
    c = confusion(y_true, y_label)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def both_classes(y_true: Any) -> bool:
    """Whether both labels occur (AUC and ROC need both)."""
    t = np.asarray(y_true).reshape(-1)
    return bool(np.any(t == 1) and np.any(t == 0))


def auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve; NaN when ``y_true`` holds one class only."""
    from sklearn.metrics import roc_auc_score

    t, s = _arrays(y_true, y_score)
    if not both_classes(t):
        return math.nan
    return float(roc_auc_score(t, s))


def roc_curve(y_true: Any, y_score: Any, *, drop_intermediate: bool = True) -> dict[str, list[float]]:
    """``{fpr, tpr, thresholds}`` with finite thresholds only.

    scikit-learn puts ``inf`` first (the "predict nothing positive" point); JSON,
    the KFP ClassificationMetrics artifact and plotting all want finite numbers, so
    it is written as ``max(1.0, highest score)``. A probability equal to that value
    would be counted positive at the first point, which is therefore nominal. With
    one class only the curve is undefined and all three lists are empty.
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    t, s = _arrays(y_true, y_score)
    if not both_classes(t):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = sk_roc_curve(t, s, drop_intermediate=drop_intermediate)
    thr = np.asarray(thr, dtype=np.float64)
    top = max(1.0, float(np.max(s))) if s.size else 1.0
    thr = np.where(np.isfinite(thr), thr, top)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def operating_point(y_true: Any, y_score: Any, target_sensitivity: float) -> dict[str, float]:
    """The highest threshold whose sensitivity reaches ``target_sensitivity``.

    Screening wants few missed tumours: fix the sensitivity, read off what it costs
    in specificity. Returns ``{threshold, sensitivity, specificity}`` (the achieved
    values at that threshold); all NaN when either class is absent.
    """
    t, s = _arrays(y_true, y_score)
    nan = {"threshold": math.nan, "sensitivity": math.nan, "specificity": math.nan}
    if not both_classes(t):
        return nan
    curve = roc_curve(t, s, drop_intermediate=False)
    tpr = np.asarray(curve["tpr"])
    # tpr is non-decreasing along the curve; the first index reaching the target has
    # the highest threshold (and so the lowest false-positive rate) that does.
    idx = int(np.searchsorted(tpr, target_sensitivity - 1e-12, side="left"))
    idx = min(idx, tpr.size - 1)
    return {
        "threshold": float(curve["thresholds"][idx]),
        "sensitivity": float(tpr[idx]),
        "specificity": float(1.0 - curve["fpr"][idx]),
    }


def binary_metrics(y_true: Any, y_score: Any, y_label: Any, *, target_sensitivity: float = 0.95) -> dict[str, Any]:
    """Every metric pcam reports for one prediction mode (single view or TTA).

    ``y_score`` (probabilities) drives AUC and the operating point; ``y_label`` (the
    hard decisions, e.g. a majority vote) drives the count-based metrics.
    """
    c = confusion(y_true, y_label)
    point = operating_point(y_true, y_score, target_sensitivity)
    return {
        "f1": f1(y_true, y_label),
        "auc": auc(y_true, y_score),
        "recall": recall(y_true, y_label),
        "precision": precision(y_true, y_label),
        "accuracy": accuracy(y_true, y_label),
        "specificity": specificity(y_true, y_label),
        "confusion": c,
        "target_sensitivity": float(target_sensitivity),
        "sensitivity_threshold": point["threshold"],
        "sensitivity_at_target": point["sensitivity"],
        "specificity_at_target": point["specificity"],
    }


def json_safe(value: Any) -> Any:
    """NaN/inf floats become ``None`` (JSON ``null``), numpy scalars plain Python."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
