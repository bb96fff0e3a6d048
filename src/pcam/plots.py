"""The report's figures as small PNGs (matplotlib, Agg backend: no display needed).

Every function writes one file atomically and returns its path. Figures are kept at
about 90 dpi so the self-contained HTML report, which embeds them, stays light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pcam.fsutil import atomic_path  # noqa: E402

DPI = 90


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history, start=1):
        value = row.get(key)
        if isinstance(value, (int, float)):
            xs.append(i)
            ys.append(float(value))
    return xs, ys


def plot_history(
    history: Sequence[Mapping[str, Any]], title: str, path: str | os.PathLike[str], *, finetune_start: int | None = None
) -> Path:
    """Loss and accuracy per epoch, train vs validation; a dashed line where fine-tuning starts.

    ``history`` is the concatenated per-epoch list (stage-1 rows, then fine-tune rows);
    the x axis counts epochs over both stages and ``finetune_start`` is the 1-based
    position of the first fine-tune epoch (default: the first row whose stage is
    ``finetune``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    boundary = finetune_start or next(
        (i for i, row in enumerate(history, start=1) if row.get("stage") == "finetune"), None
    )
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for key, style, name in ((metric, "-o", "train"), (f"val_{metric}", "-s", "validation")):
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=name)
        if boundary is not None and boundary > 1:
            ax.axvline(boundary - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(
                boundary - 0.4,
                0.97,
                "fine-tune",
                transform=ax.get_xaxis_transform(),
                fontsize=8,
                color="grey",
                va="top",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], title: str, path: str | os.PathLike[str]) -> Path:
    """2x2 confusion matrix (rows: true class, columns: predicted) with counts and row shares.

    Cells are shaded by their share of the true class (0..1), not by raw count, so the
    colour reads as "how much of this class went here" whatever the class balance.
    """
    shares = [[v / (sum(row) or 1) for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(3.3, 3.3))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = ["normal", "tumour"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{matrix[i][j]}\n{shares[i][j]:.1%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if shares[i][j] > 0.55 else "black",
            )
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_roc(
    curves: Mapping[str, Mapping[str, Any]], title: str, path: str | os.PathLike[str], *, wide: bool = False
) -> Path:
    """ROC curves, one line per entry: ``{label: {fpr, tpr, auc}}``; chance diagonal dotted.

    ``wide`` (the all-pairs plot) draws larger with the legend on the right, where a
    dozen entries do not hide the curves.
    """
    many = wide or len(curves) > 4
    fig, ax = plt.subplots(figsize=(7.2, 4.2) if many else (3.6, 3.3))
    for label, curve in curves.items():
        if not curve.get("fpr"):
            continue
        auc = curve.get("auc")
        text = f"{label} (AUC {auc:.3f})" if isinstance(auc, (int, float)) else f"{label} (AUC n/a)"
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.4, label=text, linestyle="-" if len(ax.lines) < 10 else "--")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (1 - specificity)", fontsize=8)
    ax.set_ylabel("true-positive rate (sensitivity)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if many:
            ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0))
        else:
            ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_step_seconds(step_seconds: Mapping[str, float], path: str | os.PathLike[str]) -> Path:
    """Horizontal bars of wall-clock seconds per pipeline step."""
    names = list(step_seconds)
    values = [float(step_seconds[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
    ax.barh(names, values, color="#4c72b0")
    ax.invert_yaxis()
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f}s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(values + [1.0]) * 1.2)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
