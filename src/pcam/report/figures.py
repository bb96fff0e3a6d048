"""The report's figures: written as PNG files under ``plots/`` and embedded in the page as data URIs."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcam.report.context import Context, ordered_steps
from pcam.report.fmt import num, slug
from pcam.report.load import Row, Run


@dataclass
class Figures:
    """Data URIs of the figures; ``pairs`` holds one dict per run, in the runs' order."""

    pairs: list[dict[str, str]] = field(default_factory=list)
    """Per run: ``history``, ``confusion``, ``confusion_single``, ``roc`` (each only when drawn)."""
    roc_all: str | None = None
    steps: str | None = None
    files: list[str] = field(default_factory=list)
    """Names of the PNG files written."""


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


class _Plotter:
    """Writes each figure into the plot directory and remembers its name."""

    def __init__(self, plot_dir: Path) -> None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        self.dir = plot_dir
        self.files: list[str] = []

    def keep(self, path: Path) -> str:
        self.files.append(path.name)
        return data_uri(path)


def _pair_figures(plotter: _Plotter, run: Run, row: Row, name: str) -> dict[str, str]:
    """History, confusion matrices (TTA and single view) and ROC curve of one run."""
    from pcam import plots

    label = f"{row['model']} / {row['policy']}"
    pair: dict[str, str] = {}
    if run.history:
        path = plotter.dir / f"history-{name}.png"
        pair["history"] = plotter.keep(plots.plot_history(run.history, label, path, finetune_start=run.finetune_start))
    for mode, key in (("tta", "confusion"), ("single", "confusion_single")):
        matrix = (run.confusion.get(mode) or {}).get("matrix")
        if matrix:
            title = f"{label}\n{'TTA vote' if mode == 'tta' else 'single view'}"
            path = plotter.dir / f"{key.replace('_', '-')}-{name}.png"
            pair[key] = plotter.keep(plots.plot_confusion(matrix, title, path))
    roc = run.roc
    if roc.get("fpr") is not None:
        curves: dict[str, Any] = {f"TTA ({row['tta']} views)": roc}
        if isinstance(roc.get("single"), dict):
            curves["single view"] = roc["single"]
        pair["roc"] = plotter.keep(plots.plot_roc(curves, f"ROC: {label}", plotter.dir / f"roc-{name}.png"))
    return pair


def draw_figures(runs: Sequence[Run], rows: Sequence[Row], plot_dir: Path, ctx: Context) -> Figures:
    """Draw every figure of the report into ``plot_dir``.

    Args:
        runs: The runs, in display order.
        rows: Their table rows, in the same order.
        plot_dir: Where the PNG files go (created).
        ctx: The filled context (its step timings).

    Returns:
        The figures as data URIs, and the files written.
    """
    from pcam import plots

    plotter = _Plotter(plot_dir)
    figs = Figures()
    names: set[str] = set()
    all_curves = {}
    for run, row in zip(runs, rows, strict=True):
        name = slug(f"{row['model']}-{row['policy']}")
        while name in names:
            name += "-2"
        names.add(name)
        figs.pairs.append(_pair_figures(plotter, run, row, name))
        if run.roc.get("fpr") is not None:
            all_curves[f"{row['model']} / {row['policy']}"] = run.roc
    if all_curves:
        path = plot_dir / "roc-all.png"
        figs.roc_all = plotter.keep(plots.plot_roc(all_curves, "ROC, TTA mean probability", path, wide=True))
    steps = {k: v for k, v in ordered_steps(ctx.step_seconds).items() if v is not None and num(v) is not None}
    if steps:
        figs.steps = plotter.keep(plots.plot_step_seconds(steps, plot_dir / "steps.png"))
    figs.files = plotter.files
    return figs
