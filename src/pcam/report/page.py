"""report.html: one self-contained page (figures embedded as data URIs) a reader can mail around.

The page is :data:`PAGE` (a :class:`string.Template`: head, style, title) around one
function per section, in reading order: banner and split warnings, the run's
provenance, the comparison table, reference numbers, ROC curves of all pairs, one
panel per pair, step timings, notes. Every value from a file is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape as e
from string import Template

from pcam.report.context import SPLIT_NOTES, Context, ordered_steps
from pcam.report.figures import Figures
from pcam.report.fmt import delta, fmt, fmt_seconds, num, recorded, yes_no
from pcam.report.load import Row, Run

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;
     color:#222;padding:0 16px;line-height:1.4}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.banner{background:#b00020;color:#fff;padding:12px 16px;font-size:18px;font-weight:600;border-radius:4px;margin:12px 0}
.banner.real{background:#1b5e20;font-size:15px}
.warn{background:#fff4e5;border-left:4px solid #f0a000;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;white-space:normal;vertical-align:bottom}
.scroll{overflow-x:auto}
.row{display:flex;flex-wrap:wrap;align-items:flex-start}td.l,th.l{text-align:left}
tr.best td{background:#e3f2e6;font-weight:600}
.badge{background:#1b5e20;color:#fff;border-radius:3px;padding:0 5px;font-size:11px;margin-left:4px}
.up{color:#1b5e20}.down{color:#b00020}.muted{color:#666;font-size:12px}
table.kv td{text-align:left;white-space:normal;max-width:1000px;word-break:break-all}
table.kv td:first-child{font-weight:600;white-space:nowrap;word-break:normal}
.pair{border:1px solid #ddd;border-radius:4px;padding:8px 12px;margin:12px 0}
.pair img,.figs img{margin:4px;vertical-align:top;border:1px solid #eee}
code{background:#f4f4f4;padding:0 3px}
"""
PAGE = Template(
    """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>PCam model comparison: $experiment</title>
<style>$css</style></head><body>
<h1>PCam model comparison</h1>
<div class="muted">generated $generated &middot; $pairs model/policy pairs</div>
$body
</body></html>"""
)
BADGE = '<span class="badge">best</span>'
_COMPARISON_NOTE = (
    '<p class="muted">Metrics on the evaluated split. <b>TTA</b>: each patch seen in '
    "$views orientations; the label is the majority vote of the "
    "thresholded views (a tie counts as tumour), AUC uses the mean view probability. "
    "<b>single</b>: the unaugmented patch only. &Delta; = TTA minus single (green: TTA helped). "
    "Threshold / specificity at the target sensitivity: the highest cut-off on the TTA probability that "
    "still finds that share of tumours, and the share of normal patches it leaves alone there. "
    "The best row (highest TTA AUC, then F1) is highlighted.</p>"
)


def _banner(ctx: Context) -> list[str]:
    """Synthetic or real data, loudly; then the split warnings."""
    if ctx.synthetic:
        out = [
            '<div class="banner">SYNTHETIC DATA: these numbers check that the pipeline runs end to end. '
            "They say nothing about how well any model detects metastases.</div>"
        ]
    else:
        out = [f'<div class="banner real">Real data: {e(ctx.source)}</div>']
    return out + [f'<div class="warn"><b>Split:</b> {e(warning)}</div>' for warning in ctx.split_warnings]


def _checksums(label: str, unit: str, checks: dict[str, str]) -> list[str]:
    """A folded list of checksums (nothing when none were recorded)."""
    if not checks:
        return []
    items = "".join(f"<div><code>{e(str(v))}</code> {e(str(k))}</div>" for k, v in checks.items())
    return [f"<tr><td>{label}</td><td><details><summary>{len(checks)} {unit}</summary>{items}</details></td></tr>"]


def _run_table(ctx: Context, rows: Sequence[Row]) -> list[str]:
    """The model card's provenance: data, split facts, seed, config digest, image, versions, checksums."""
    split = ctx.split_mode
    evaluated = ", ".join(
        f"{r} (slide-disjoint from train: {yes_no(ctx.split_disjoint.get(r))})"
        for r in sorted({str(r["split"]) for r in rows})
    )
    kv = [
        ("experiment", ctx.experiment),
        ("data source", ctx.source + (f" (format {ctx.format})" if ctx.format else "")),
        ("synthetic", "YES" if ctx.synthetic else "no"),
        ("split mode", f"{split} ({SPLIT_NOTES[split]})" if split in SPLIT_NOTES else split),
        ("split facts", "; ".join(ctx.split_lines) or "not recorded"),
        ("evaluated split", evaluated),
        ("patch counts", ", ".join(f"{k} {v}" for k, v in ctx.counts.items()) or None),
        ("seed", ctx.seed),
        ("config sha256", ctx.config_digest),
        ("image", ctx.image),
        ("versions", ", ".join(f"{k} {v}" for k, v in ctx.versions.items())),
    ]
    out = ['<h2>Run</h2><table class="kv">']
    out += [f"<tr><td>{e(key)}</td><td>{e(recorded(value))}</td></tr>" for key, value in kv]
    out += _checksums("data sha256", "files", ctx.data_checksums)
    out += _checksums("shard sha256", "shards", ctx.shard_checksums)
    return out + ["</table>"]


def _delta_cell(a: float | None, b: float | None) -> str:
    """TTA minus single view, green when TTA helped."""
    if a is None or b is None:
        return '<td class="muted">n/a</td>'
    cls = "up" if a > b else "down" if a < b else "muted"
    return f'<td class="{cls}">{delta(a, b)}</td>'


def _table_row(r: Row, is_best: bool) -> str:
    """One pair's row of the comparison table."""
    params = f"{r['params']:,}" if isinstance(r["params"], int) else "n/a"
    return (
        f'<tr class="{"best" if is_best else ""}"><td class="l">{e(r["model"])}{BADGE if is_best else ""}</td>'
        f'<td class="l">{e(r["policy"])}</td><td>{fmt(r["tta"])}</td>'
        f"<td>{fmt(r['auc'])}</td><td>{fmt(r['auc_single'])}</td>{_delta_cell(r['auc'], r['auc_single'])}"
        f"<td>{fmt(r['accuracy'])}</td><td>{fmt(r['accuracy_single'])}</td>"
        f"{_delta_cell(r['accuracy'], r['accuracy_single'])}"
        f"<td>{fmt(r['f1'])}</td><td>{fmt(r['recall'])}</td><td>{fmt(r['precision'])}</td>"
        f"<td>{fmt(r['specificity'])}</td><td>{fmt(r['sensitivity_threshold'], 3)}</td>"
        f"<td>{fmt(r['specificity_at_target'])}</td><td>{fmt_seconds(r['train_seconds'])}</td>"
        f"<td>{fmt(r['epochs'])}</td><td>{params}</td></tr>"
    )


def _comparison(rows: Sequence[Row], runs: Sequence[Run], best: int | None, ctx: Context) -> list[str]:
    """The comparison table, with the split warnings beside the numbers (not only at the top)."""
    out = ["<h2>Comparison</h2>"]
    out += [f'<div class="warn"><b>Not an unseen-slide score:</b> {e(w)}</div>' for w in ctx.split_warnings]
    views = sorted({r["tta"] for r in rows if r["tta"]})
    out.append(Template(_COMPARISON_NOTE).substitute(views="/".join(map(str, views)) or "n/a"))
    targets = sorted({t for run in runs if (t := run.metrics["tta"].get("target_sensitivity")) is not None})
    sens = "/".join(f"{t:.0%}" for t in targets) or "target"
    head = ["model", "policy", "TTA views", "AUC", "AUC single", "&Delta; AUC", "accuracy", "accuracy single"]
    head += ["&Delta; acc.", "F1", "recall", "precision", "specificity", f"threshold for {sens} sensitivity"]
    head += [f"specificity at {sens} sensitivity", "train time", "epochs", "params"]
    cells = "".join(f'<th class="{"l" if i < 2 else ""}">{h}</th>' for i, h in enumerate(head))
    out.append(f'<div class="scroll"><table><tr>{cells}</tr>')
    out += [_table_row(r, i == best) for i, r in enumerate(rows)]
    out.append("</table></div>")
    return out + _comparison_caveats(rows, runs)


def _comparison_caveats(rows: Sequence[Row], runs: Sequence[Run]) -> list[str]:
    """Warnings under the table: ranking far better than the decisions; AUC undefined."""
    out = []
    off_centre = [
        f"{r['model']} / {r['policy']}"
        for r in rows
        if r["auc"] is not None and r["accuracy"] is not None and r["auc"] - r["accuracy"] >= 0.25
    ]
    if off_centre:
        thresholds = sorted({t for run in runs if (t := run.metrics.get("threshold")) is not None})
        out.append(
            f'<div class="warn">{e(", ".join(off_centre))}: the ranking is much better (AUC) than the '
            f"decisions at threshold {'/'.join(map(str, thresholds))} (accuracy): the predicted "
            "probabilities sit on one side of the threshold, typical after short training. The "
            "threshold column above shows where a usable cut-off lies.</div>"
        )
    undefined = _undefined(rows)
    if undefined:
        out.append(
            f'<div class="warn">n/a AUC for {e(", ".join(undefined))}: the evaluated split holds one '
            "class only, so AUC, the ROC curve and the sensitivity operating point are undefined.</div>"
        )
    return out


def _undefined(rows: Sequence[Row]) -> list[str]:
    """The pairs whose AUC is undefined (one class in the evaluated split)."""
    return [f"{r['model']} / {r['policy']}" for r in rows if r["auc"] is None]


def _reference(ctx: Context) -> list[str]:
    """Published numbers, with a caution that they come from other data and splits."""
    ref = ctx.reference
    out = [
        f'<h2>Reference numbers</h2><p class="muted">Published results; the study\'s rows come from '
        f"its {e(str(ref.get('study', 'own split')))}. Different data and split from this run: "
        "compare orders of magnitude, not decimals.</p>",
        '<table><tr><th class="l">model</th><th>accuracy</th><th>AUC</th></tr>',
    ]
    out += [
        f'<tr><td class="l">{e(str(r["model"]))} (study, random split)</td>'
        f"<td>{fmt(r.get('accuracy'), 3)}</td><td>{fmt(r.get('auc'), 3)}</td></tr>"
        for r in ref.get("rows", [])
    ]
    official = ref.get("official_split")
    if official:
        out.append(
            f'<tr><td class="l">{e(str(official.get("note", "official split")))}</td>'
            f"<td>~{fmt(official.get('accuracy'), 2)}</td><td>~{fmt(official.get('auc'), 2)}</td></tr>"
        )
    return out + ["</table>"]


def _roc_all(rows: Sequence[Row], figs: Figures) -> list[str]:
    """Every pair's ROC curve in one figure."""
    if not figs.roc_all:
        return []
    out = ["<h2>ROC curves, all pairs (TTA)</h2>"]
    out.append(f'<div class="figs"><img alt="ROC curves of every pair" src="{figs.roc_all}"></div>')
    undefined = _undefined(rows)
    if undefined:
        out.append(f'<p class="muted">Not drawn (undefined): {e(", ".join(undefined))}.</p>')
    return out


def _pair(run: Run, r: Row, is_best: bool, f: dict[str, str]) -> list[str]:
    """One pair's panel: headline numbers, training curves, confusion matrices, ROC curve."""
    c = run.metrics["tta"].get("confusion", {})
    out = [
        f'<div class="pair"><h3>{e(r["model"])} &middot; {e(r["policy"])}'
        f"{'<span class=badge>best</span>' if is_best else ''}</h3>",
        f'<div class="muted">run <code>{e(r["run"])}</code> &middot; n={fmt(r["n"])} &middot; '
        f"TTA AUC {fmt(r['auc'])}, accuracy {fmt(r['accuracy'])} &middot; "
        f"TP {c.get('tp', '?')}, FP {c.get('fp', '?')}, FN {c.get('fn', '?')}, TN {c.get('tn', '?')}"
        + (f" &middot; fine-tuning from epoch {run.finetune_start}" if run.finetune_start else "")
        + "</div>",
    ]
    if f.get("history"):
        out.append(f'<div><img alt="loss and accuracy curves" src="{f["history"]}"></div>')
    else:
        out.append('<p class="muted">no training history recorded</p>')
    out.append('<div class="row">')
    alts = (("confusion", "confusion matrix, TTA"), ("confusion_single", "confusion matrix, single view"))
    for key, alt in (*alts, ("roc", "ROC curve")):
        if f.get(key):
            out.append(f'<img alt="{alt}" src="{f[key]}">')
    return out + ["</div>", "</div>"]


def _steps(ctx: Context, figs: Figures) -> list[str]:
    """Seconds per pipeline step, as a figure and a table."""
    steps = ordered_steps(ctx.step_seconds)
    if not steps:
        return []
    out = ["<h2>Step timings</h2>"]
    if figs.steps:
        out.append(f'<div class="figs"><img alt="seconds per step" src="{figs.steps}"></div>')
    out.append(
        '<p class="muted">Wall-clock seconds per step, summed over every pair for the per-pair '
        "steps (train, fine-tune, evaluate).</p>"
    )
    out.append('<table><tr><th class="l">step</th><th>seconds</th><th></th></tr>')
    out += [
        f'<tr><td class="l">{e(str(k))}</td><td>{fmt(num(v), 1)}</td><td>{fmt_seconds(num(v))}</td></tr>'
        for k, v in steps.items()
    ]
    total = sum(v for v in map(num, steps.values()) if v is not None)
    out.append(
        f'<tr><td class="l"><b>total</b></td><td><b>{total:.1f}</b></td>'
        f"<td><b>{fmt_seconds(total)}</b></td></tr></table>"
    )
    return out


def html_page(rows: Sequence[Row], runs: Sequence[Run], best: int | None, ctx: Context, figs: Figures) -> str:
    """report.html's text.

    Args:
        rows: The table's rows, in display order.
        runs: Their runs, in the same order.
        best: Index of the best row, or None.
        ctx: The filled context.
        figs: The figures, as data URIs.

    Returns:
        The page.
    """
    body = _banner(ctx) + _run_table(ctx, rows) + _comparison(rows, runs, best, ctx) + _reference(ctx)
    body += _roc_all(rows, figs) + ["<h2>Per pair</h2>"]
    for i, (run, row) in enumerate(zip(runs, rows, strict=True)):
        body += _pair(run, row, i == best, figs.pairs[i])
    body += _steps(ctx, figs)
    if ctx.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(str(n))}</li>" for n in ctx.notes) + "</ul>")
    return PAGE.substitute(
        experiment=e(ctx.experiment or ""),
        css=CSS,
        generated=e(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        pairs=len(rows),
        body="\n".join(body),
    )
