"""The comparison report: one row per (model, policy) pair, as CSV, Markdown and one HTML page.

``build_report`` reads each run directory (:mod:`pcam.report.load`) and writes into
``out_dir`` (built under a temporary name, then renamed):

- ``summary.csv``: the study's table, TTA metrics first, single-view ones beside them;
- ``summary.md``: the same table plus the run's context, for a PR or a wiki
  (:mod:`pcam.report.markdown`);
- ``report.html``: one self-contained page (figures embedded as base64 PNG) a reader
  can mail around: provenance header, comparison table, reference numbers, curves,
  confusion matrices, ROC curves, step timings (:mod:`pcam.report.page`);
- ``plots/*.png``: the same figures as files (:mod:`pcam.report.figures`).

The page states loudly when the data is synthetic, and states the split that
happened (:mod:`pcam.report.context`): where each split came from, and for each pair
of splits whether they share no slide. When the evaluated split may share slides with
train (carved at random, no slide ids), a warning sits beside the numbers and in the
model card: such numbers are flattered. Without recorded facts the report says so
rather than assume.

A package rather than one module so that each part reads in one sitting; this
``__init__`` keeps the public names (``build_report``, the CLI's ``add_arguments`` and
``run``, the schemas and table helpers) where callers have always imported them.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from pcam.errors import DataError
from pcam.fsutil import atomic_dir, check_output, check_shape, read_json
from pcam.report.context import CONTEXT_SCHEMA, DEFAULT_REFERENCE, PAIR_NAMES, SPLIT_NOTES, Context, make_context
from pcam.report.figures import draw_figures
from pcam.report.fmt import fmt, yes_no
from pcam.report.load import (
    COLUMNS,
    METRICS,
    METRICS_SCHEMA,
    Row,
    Run,
    best_index,
    load_run,
    score_key,
    sort_key,
    summary_row,
)
from pcam.report.markdown import markdown, write_csv
from pcam.report.page import html_page

__all__ = [
    "COLUMNS",
    "CONTEXT_SCHEMA",
    "DEFAULT_REFERENCE",
    "METRICS",
    "METRICS_SCHEMA",
    "PAIR_NAMES",
    "SPLIT_NOTES",
    "Context",
    "Row",
    "Run",
    "Summary",
    "add_arguments",
    "best_index",
    "build_report",
    "load_run",
    "run",
    "score_key",
    "sort_key",
    "summary_row",
]

log = logging.getLogger(__name__)


class Best(TypedDict):
    """The best pair's headline numbers."""

    model: str
    policy: str
    run: str
    auc: float | None
    accuracy: float | None
    f1: float | None


class Summary(TypedDict):
    """What :func:`build_report` returns."""

    rows: list[Row]
    best: Best | None
    report_html: str
    summary_csv: str
    summary_md: str
    plots: list[str]
    synthetic: bool
    split_mode: str
    split_warnings: list[str]
    promotion: NotRequired[Mapping[str, Any]]
    """Added by ``pcam run`` when it promotes the best model (:func:`pcam.promote.promote`)."""


def _best(row: Row) -> Best:
    """The best row's headline numbers."""
    values = dict(row)
    return cast(Best, {key: values[key] for key in ("model", "policy", "run", "auc", "accuracy", "f1")})


def _write(out: Path, runs: list[Run], rows: list[Row], best: int | None, ctx: Context) -> list[str]:
    """Write every output into ``out``; returns the plot files' names."""
    figs = draw_figures(runs, rows, out / "plots", ctx)
    write_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(markdown(rows, best, ctx))
    (out / "report.html").write_text(html_page(rows, runs, best, ctx, figs))
    # readable by whoever serves or opens the report (temp files are created 0600)
    for path in [out, out / "plots", *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return figs.files


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    context: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
) -> Summary:
    """Write summary.csv, summary.md, report.html and plots/ for ``run_dirs``.

    Args:
        run_dirs: One directory per (model, policy) pair.
        out_dir: The report directory (replaced atomically).
        context: The run's context (:data:`CONTEXT_SCHEMA`; every key optional).
        force: Replace ``out_dir`` even if it is not a pcam report.

    Returns:
        The table's rows, the best pair, the files written and the split statement.

    Raises:
        DataError: No run directories, a run directory or the context is malformed.
    """
    if not run_dirs:
        raise DataError("report: no run directories given")
    check_output(out_dir, "report", inputs=run_dirs, force=force)
    loaded = [load_run(d) for d in run_dirs]
    unsorted = [summary_row(r) for r in loaded]
    order = sorted(range(len(unsorted)), key=lambda i: sort_key(unsorted[i]))
    runs, rows = [loaded[i] for i in order], [unsorted[i] for i in order]
    best = best_index(rows, "auc")
    if best is None:
        best = best_index(rows, "accuracy")
    check_shape(context or {}, CONTEXT_SCHEMA, "report context")
    ctx = make_context(context, [str(r["split"]) for r in rows])
    for row in rows:
        row["slide_disjoint_from_train"] = yes_no(ctx.split_disjoint.get(str(row["split"])))
    out = Path(out_dir)
    with atomic_dir(out, "report", inputs=run_dirs, force=force) as tmp:
        plot_files = _write(tmp, runs, rows, best, ctx)
    log.info("report: %s (%d pairs)", out / "report.html", len(rows))
    top = None if best is None else rows[best]
    return Summary(
        rows=rows,
        best=None if top is None else _best(top),
        report_html=str(out / "report.html"),
        summary_csv=str(out / "summary.csv"),
        summary_md=str(out / "summary.md"),
        plots=sorted(plot_files),
        synthetic=ctx.synthetic,
        split_mode=ctx.split_mode,
        split_warnings=ctx.split_warnings,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pcam report``'s options to ``parser``."""
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (pair.json, train/, evaluate/)")
    parser.add_argument("--out", required=True, help="output directory for the report")
    parser.add_argument("--context", help="JSON file: source, synthetic, split_mode, seed, config_digest, ...")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam report")


def run(args: argparse.Namespace) -> int:
    """``pcam report``: build the report, print one line per pair and the page's path."""
    context = read_json(args.context, CONTEXT_SCHEMA) if args.context else {}
    summary = build_report(args.runs, args.out, context, force=args.force)
    for row in summary["rows"]:
        print(f"{row['model']:>12} {row['policy']:>9}  auc={fmt(row['auc'])}  acc={fmt(row['accuracy'])}")
    print(summary["report_html"])
    return 0
