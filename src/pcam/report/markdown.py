"""The report's text outputs: ``summary.csv`` (the study's table) and ``summary.md`` (table plus context)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pcam.report.context import SPLIT_NOTES, Context
from pcam.report.fmt import fmt, fmt_seconds, recorded
from pcam.report.load import COLUMNS, Row


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    """Write ``rows`` as summary.csv: :data:`COLUMNS`, floats to 6 places, empty cells where undefined."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: "" if v is None else round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
            )


def _header(ctx: Context) -> list[str]:
    """The banner and the run's context as a bullet list."""
    lines = ["# PCam model comparison", ""]
    if ctx.synthetic:
        lines += [
            "> **SYNTHETIC DATA.** These numbers test the pipeline; they say nothing about detecting metastases.",
            "",
        ]
    note = f" ({SPLIT_NOTES[ctx.split_mode]})" if ctx.split_mode in SPLIT_NOTES else ""
    return lines + [
        f"- data source: `{ctx.source}`",
        f"- split: {ctx.split_mode}{note}",
        *[f"  - {line}" for line in ctx.split_lines],
        f"- seed: {recorded(ctx.seed)}; config sha256: `{recorded(ctx.config_digest)}`",
        f"- image: `{recorded(ctx.image)}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ctx.versions.items()),
        "",
        "TTA columns: majority vote of the views (ties positive) for the counts, mean view "
        "probability for AUC. `single`: the identity view alone.",
        "",
    ]


def _table(rows: Sequence[Row], best: int | None) -> list[str]:
    """The comparison table, the best row marked."""
    lines = [
        "| model | policy | split | slide-disjoint from train | TTA views | AUC | AUC single "
        "| accuracy | accuracy single | F1 | recall | precision | specificity | spec. @ target sens. | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        mark = " **(best)**" if i == best else ""
        lines.append(
            f"| {r['model']}{mark} | {r['policy']} | {r['split']} | {r['slide_disjoint_from_train']} "
            f"| {r['tta']} | {fmt(r['auc'])} | "
            f"{fmt(r['auc_single'])} | {fmt(r['accuracy'])} | {fmt(r['accuracy_single'])} | {fmt(r['f1'])} | "
            f"{fmt(r['recall'])} | {fmt(r['precision'])} | {fmt(r['specificity'])} | "
            f"{fmt(r['specificity_at_target'])} | {fmt_seconds(r['train_seconds'])} |"
        )
    if any(r["auc"] is None for r in rows):
        lines += ["", "n/a: AUC is undefined when the evaluated split holds one class only."]
    return lines


def _reference(ctx: Context) -> list[str]:
    """The published numbers, then the notes."""
    ref = ctx.reference
    lines = [
        "",
        f"Reference (the study: {ref.get('study', 'published')}):",
        "",
        "| model | accuracy | AUC |",
        "|---|---|---|",
    ]
    lines += [f"| {r['model']} | {fmt(r.get('accuracy'), 3)} | {fmt(r.get('auc'), 3)} |" for r in ref.get("rows", [])]
    official = ref.get("official_split")
    if official:
        lines.append(
            f"| {official.get('note', 'official split')} | ~{fmt(official.get('accuracy'), 2)} "
            f"| ~{fmt(official.get('auc'), 2)} |"
        )
    for note in ctx.notes:
        lines += ["", f"Note: {note}"]
    return lines


def markdown(rows: Sequence[Row], best: int | None, ctx: Context) -> str:
    """summary.md: context, split warnings (before the numbers), comparison table, reference numbers.

    Args:
        rows: The table's rows, in display order.
        best: Index of the best row, or None.
        ctx: The filled context.

    Returns:
        The Markdown text.
    """
    warnings = [line for w in ctx.split_warnings for line in (f"> **WARNING: {w}**", "")]
    return "\n".join(_header(ctx) + warnings + _table(rows, best) + _reference(ctx)) + "\n"
