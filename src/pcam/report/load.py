"""Reading one (model, policy) run directory into typed records, and ranking them.

A run directory holds ``pair.json`` ({model, policy}), ``train/`` (history.json,
train.json), optionally ``finetune/`` (same files; its history repeats stage 1 before
its own epochs) and ``evaluate/`` (metrics.json, roc.json, confusion.json). Only the
keys those writers produce (:mod:`pcam.train`, :mod:`pcam.evaluate`) are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from pcam.config import MODEL_NAMES, POLICY_NAMES
from pcam.fsutil import read_json
from pcam.report.fmt import num, order

METRICS = ("f1", "auc", "recall", "precision", "accuracy", "specificity")
COLUMNS = (
    "model",
    "policy",
    "split",
    "tta",
    "f1",
    "auc",
    "recall",
    "precision",
    "accuracy",
    "train_seconds",
    "specificity",
    "sensitivity_threshold",
    "specificity_at_target",
    "f1_single",
    "auc_single",
    "recall_single",
    "precision_single",
    "accuracy_single",
    "specificity_single",
    "specificity_at_target_single",
    "params",
    "epochs",
    "n",
    "run",
    "slide_disjoint_from_train",
)
"""summary.csv's columns, in order."""

_NUMBER = (int, float, type(None))
_SCORES = {key: _NUMBER for key in ("auc", "accuracy", "f1", "recall", "precision")}
METRICS_SCHEMA = {"tta": _SCORES, "single": _SCORES, "n?": int, "split?": str}
"""What the report reads from an evaluation's metrics.json."""
_HISTORY_SCHEMA = [{"epoch": int}]


class Scores(TypedDict, total=False):
    """One prediction mode's metrics (:func:`pcam.metrics.binary_metrics`; null where undefined)."""

    f1: float | None
    auc: float | None
    recall: float | None
    precision: float | None
    accuracy: float | None
    specificity: float | None
    confusion: dict[str, int]
    target_sensitivity: float
    sensitivity_threshold: float | None
    sensitivity_at_target: float | None
    specificity_at_target: float | None


class Metrics(TypedDict):
    """The part of an evaluation's metrics.json the report uses (:func:`pcam.evaluate.evaluate`)."""

    tta: Scores
    single: Scores
    n_views: NotRequired[int]
    threshold: NotRequired[float]
    split: NotRequired[str]
    n: NotRequired[int]


History = list[dict[str, Any]]
"""Per-epoch records of history.json (epoch, stage, loss, accuracy, val_*, lr, seconds, ...)."""


@dataclass
class Run:
    """Everything the report needs from one pair's directory."""

    dir: Path
    model: str
    policy: str
    metrics: Metrics
    roc: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=list)
    finetune_start: int | None = None
    """1-based epoch where fine-tuning starts in ``history``; None without fine-tuning."""
    train_seconds: float | None = None
    params: int | None = None


class Row(TypedDict):
    """One row of the comparison table (the keys are :data:`COLUMNS`); None where undefined."""

    model: str
    policy: str
    split: str | None
    tta: int | None
    f1: float | None
    auc: float | None
    recall: float | None
    precision: float | None
    accuracy: float | None
    train_seconds: float | None
    specificity: float | None
    sensitivity_threshold: float | None
    specificity_at_target: float | None
    f1_single: float | None
    auc_single: float | None
    recall_single: float | None
    precision_single: float | None
    accuracy_single: float | None
    specificity_single: float | None
    specificity_at_target_single: float | None
    params: int | None
    epochs: int | None
    n: int | None
    run: str
    slide_disjoint_from_train: str


def _read(path: Path, schema: Any, required: bool = True) -> Any:
    if not required and not path.exists():
        return None
    return read_json(path, schema)


def load_history(run_dir: Path) -> tuple[History, int | None]:
    """Stage-1 rows then fine-tune rows, and the 1-based position where fine-tuning starts.

    The fine-tune step's history repeats the stage-1 rows (stage ``train``) before its
    own (stage ``finetune``); a run directory may hold only ``finetune/``.

    Args:
        run_dir: The pair's directory.

    Returns:
        The merged history and the fine-tuning start (None without fine-tuning).
    """
    lists = []
    for stage in ("train", "finetune"):
        path = run_dir / stage / "history.json"
        lists.append(list(_read(path, _HISTORY_SCHEMA, required=False) or []))  # the schema checks the rows
    rows, ft = lists
    if ft:
        seen = {r.get("stage") for r in rows} - {None}
        if rows:  # keep stage 1 from train/, only the new stage from finetune/
            ft = [r for r in ft if r.get("stage") not in seen]
        for r in ft:
            r.setdefault("stage", "finetune")
    history = rows + ft
    boundary = next((i for i, r in enumerate(history, start=1) if r.get("stage") == "finetune"), None)
    return history, boundary


def _seconds(info: Mapping[str, Any] | None, history: History) -> float | None:
    """A stage's training seconds: train.json's ``train_seconds``, else the sum over its epochs."""
    if info and isinstance(info.get("train_seconds"), (int, float)):
        return float(info["train_seconds"])
    values = [r["seconds"] for r in history if isinstance(r.get("seconds"), (int, float))]
    return float(sum(values)) if values else None


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read one pair's directory.

    Args:
        run_dir: The pair's directory (pair.json, train/, optionally finetune/, evaluate/).

    Returns:
        The run's record.

    Raises:
        DataError: A required file (pair.json, evaluate/metrics.json) is missing or malformed.
    """
    run_dir = Path(run_dir)
    pair = _read(run_dir / "pair.json", {"model": str, "policy": str})
    metrics = _read(run_dir / "evaluate" / "metrics.json", METRICS_SCHEMA)
    history, boundary = load_history(run_dir)
    train_info = _read(run_dir / "train" / "train.json", {}, required=False)
    ft_info = _read(run_dir / "finetune" / "train.json", {}, required=False)
    stage1 = history[: (boundary - 1 if boundary else len(history))]
    stage2 = history[boundary - 1 :] if boundary else []
    seconds = [
        s
        for s in (_seconds(train_info, stage1), _seconds(ft_info, stage2) if (ft_info or stage2) else None)
        if s is not None
    ]
    params = next(
        (info["params"] for info in (ft_info, train_info) if info and isinstance(info.get("params"), int)), None
    )
    return Run(
        dir=run_dir,
        model=str(pair["model"]),
        policy=str(pair["policy"]),
        metrics=cast(Metrics, metrics),
        roc=_read(run_dir / "evaluate" / "roc.json", {}, required=False) or {},
        confusion=_read(run_dir / "evaluate" / "confusion.json", {}, required=False) or {},
        history=history,
        finetune_start=boundary,
        train_seconds=round(sum(seconds), 1) if seconds else None,
        params=params,
    )


def summary_row(run: Run) -> Row:
    """The comparison-table row of ``run`` (slide disjointness ``unknown`` until the split is known)."""
    m = run.metrics
    tta, single = m["tta"], m["single"]
    return Row(
        model=run.model,
        policy=run.policy,
        split=m.get("split"),
        tta=m.get("n_views"),
        f1=num(tta.get("f1")),
        auc=num(tta.get("auc")),
        recall=num(tta.get("recall")),
        precision=num(tta.get("precision")),
        accuracy=num(tta.get("accuracy")),
        specificity=num(tta.get("specificity")),
        f1_single=num(single.get("f1")),
        auc_single=num(single.get("auc")),
        recall_single=num(single.get("recall")),
        precision_single=num(single.get("precision")),
        accuracy_single=num(single.get("accuracy")),
        specificity_single=num(single.get("specificity")),
        sensitivity_threshold=num(tta.get("sensitivity_threshold")),
        specificity_at_target=num(tta.get("specificity_at_target")),
        specificity_at_target_single=num(single.get("specificity_at_target")),
        train_seconds=run.train_seconds,
        params=run.params,
        epochs=len(run.history) or None,
        n=m.get("n"),
        run=run.dir.name,
        slide_disjoint_from_train="unknown",
    )


def sort_key(row: Row) -> tuple[int, str, int, str]:
    """Model family order (logreg, cnn, mobilenetv2, resnet50), then policy order."""
    return (order(row["model"], MODEL_NAMES), row["model"], order(row["policy"], POLICY_NAMES), row["policy"])


def score_key(row: Row, metric: str = "auc") -> tuple[float, float]:
    """Rank by ``metric`` (undefined ranks last), ties broken by F1."""
    value = num(cast(Mapping[str, Any], row).get(metric))
    f1 = num(row["f1"])
    return (-math.inf if value is None else value, -math.inf if f1 is None else f1)


def best_index(rows: Sequence[Row], metric: str = "auc") -> int | None:
    """Index of the best row (the first among equals); None when no row has the metric."""
    scored = [
        (score_key(r, metric), -i)
        for i, r in enumerate(rows)
        if num(cast(Mapping[str, Any], r).get(metric)) is not None
    ]
    return -max(scored)[1] if scored else None
