"""The comparison report: one row per (model, policy) pair, as CSV, Markdown and one HTML page.

Each run directory holds ``pair.json`` ({model, policy}), ``train/`` (history.json,
train.json), optionally ``finetune/`` (same files; its history continues stage 1) and
``evaluate/`` (metrics.json, roc.json, confusion.json). ``build_report`` writes into
``out_dir`` (built under a temporary name, then renamed):

- ``summary.csv``: the study's table, TTA metrics first, single-view ones beside them;
- ``summary.md``: the same table plus the run's context, for a PR or a wiki;
- ``report.html``: one self-contained page (figures embedded as base64 PNG) a reader
  can mail around: provenance header, comparison table, reference numbers, curves,
  confusion matrices, ROC curves, step timings;
- ``plots/*.png``: the same figures as files.

The page states loudly when the data is synthetic, and states the split that
happened, read from ``split.json``'s facts (carried in the shards' ``index.json``):
where each split came from, and for each pair of splits whether they share no slide.
When the evaluated split may share slides with train (carved at random, no slide
ids), a warning sits beside the numbers and in the model card: such numbers are
flattered. Without recorded facts the report says so rather than assume.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import html
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcam.config import MODEL_NAMES, POLICY_NAMES
from pcam.errors import DataError
from pcam.fsutil import atomic_dir, check_output, check_shape, read_json
from pcam.study import package_versions

log = logging.getLogger(__name__)

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
DEFAULT_REFERENCE = {
    "study": "random 70/20/10 split of the Kaggle variant",
    "rows": [
        {"model": "resnet50", "accuracy": 0.985, "auc": 0.984},
        {"model": "cnn", "accuracy": 0.949, "auc": 0.944},
        {"model": "logreg", "accuracy": 0.677, "auc": 0.622},
    ],
    "official_split": {
        "accuracy": 0.90,
        "auc": 0.96,
        "note": "published models on the official slide-disjoint test split",
    },
}
SPLIT_NOTES = {
    "random": "random shares of all patches (grouped by slide only when slide ids are known)",
    "official": "the source's own splits where it has them; the lines below say which splits share no slide",
}
PAIR_NAMES = (("train", "valid"), ("train", "test"), ("valid", "test"))


# ---------------------------------------------------------------- loading runs

_NUMBER = (int, float, type(None))
_SCORES = {key: _NUMBER for key in ("auc", "accuracy", "f1", "recall", "precision")}
METRICS_SCHEMA = {"tta": _SCORES, "single": _SCORES, "n?": int, "split?": str}
"""What the report reads from an evaluation's metrics.json."""
CONTEXT_SCHEMA = {
    "source?": str,
    "format?": str,
    "synthetic?": bool,
    "split_mode?": str,
    "seed?": int,
    "config_digest?": str,
    "image?": str,
    "experiment?": str,
    "versions?": {str: (str, int, float)},
    "notes?": (str, list),
    "step_seconds?": {str: _NUMBER},
    "data_checksums?": {str: str},
    "shard_checksums?": {str: str},
    "counts?": {str: int},
    "reference?": (dict, list),
}
"""The report context's keys, all optional (the report says "not recorded" for a missing one)."""
_HISTORY_SCHEMA = [{"epoch": int}]


def _read(path: Path, required: bool = True, schema: Any = None) -> Any:
    if not required and not path.exists():
        return None
    return read_json(path, schema)


def _history(run_dir: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Stage-1 rows then fine-tune rows, and the 1-based position where fine-tuning starts.

    The fine-tune step's history repeats the stage-1 rows (stage ``train``) before its
    own (stage ``finetune``); a run directory may hold only ``finetune/``.
    """
    lists = []
    for stage in ("train", "finetune"):
        path = run_dir / stage / "history.json"
        rows = _read(path, required=False, schema=_HISTORY_SCHEMA) or []
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of per-epoch records")
        lists.append([r for r in rows if isinstance(r, dict)])
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


def _seconds(info: dict[str, Any] | None, history: list[dict[str, Any]]) -> float | None:
    if info:
        for key in ("seconds", "train_seconds", "wall_seconds", "elapsed_seconds"):
            if isinstance(info.get(key), (int, float)):
                return float(info[key])
    values = [r["seconds"] for r in history if isinstance(r.get("seconds"), (int, float))]
    return float(sum(values)) if values else None


def _params(*infos: dict[str, Any] | None) -> int | None:
    for info in infos:
        for key in ("params", "parameters", "param_count", "total_params"):
            if info and isinstance(info.get(key), int):
                return info[key]
    return None


def load_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the report needs from one pair's directory; a missing required file is a DataError."""
    run_dir = Path(run_dir)
    pair = _read(run_dir / "pair.json", schema={"model": str, "policy": str})
    metrics = _read(run_dir / "evaluate" / "metrics.json", schema=METRICS_SCHEMA)
    history, boundary = _history(run_dir)
    train_info = _read(run_dir / "train" / "train.json", required=False, schema={})
    ft_info = _read(run_dir / "finetune" / "train.json", required=False, schema={})
    stage1 = history[: (boundary - 1 if boundary else len(history))]
    stage2 = history[boundary - 1 :] if boundary else []
    seconds = [
        s
        for s in (_seconds(train_info, stage1), _seconds(ft_info, stage2) if (ft_info or stage2) else None)
        if s is not None
    ]
    return {
        "dir": run_dir,
        "model": str(pair["model"]),
        "policy": str(pair["policy"]),
        "metrics": metrics,
        "roc": _read(run_dir / "evaluate" / "roc.json", required=False, schema={}) or {},
        "confusion": _read(run_dir / "evaluate" / "confusion.json", required=False, schema={}) or {},
        "history": history,
        "finetune_start": boundary,
        "train_seconds": round(sum(seconds), 1) if seconds else None,
        "params": _params(ft_info, train_info),
    }


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def summary_row(run: dict[str, Any]) -> dict[str, Any]:
    m = run["metrics"]
    tta, single = m["tta"], m["single"]
    row: dict[str, Any] = {
        "model": run["model"],
        "policy": run["policy"],
        "split": m.get("split"),
        "tta": m.get("n_views", len(m.get("views", [])) or None),
    }
    for key in METRICS:
        row[key] = _num(tta.get(key))
        row[f"{key}_single"] = _num(single.get(key))
    row["sensitivity_threshold"] = _num(tta.get("sensitivity_threshold"))
    row["specificity_at_target"] = _num(tta.get("specificity_at_target"))
    row["specificity_at_target_single"] = _num(single.get("specificity_at_target"))
    row["train_seconds"] = run["train_seconds"]
    row["params"] = run["params"]
    row["epochs"] = len(run["history"]) or None
    row["n"] = m.get("n")
    row["run"] = run["dir"].name
    return row


def _order(name: str, names: Sequence[str]) -> int:
    return names.index(name) if name in names else len(names)


def sort_key(row: dict[str, Any]) -> tuple[int, str, int, str]:
    """Model family order (logreg, cnn, mobilenetv2, resnet50), then policy order."""
    return (_order(row["model"], MODEL_NAMES), row["model"], _order(row["policy"], POLICY_NAMES), row["policy"])


def score_key(row: dict[str, Any], metric: str = "auc") -> tuple[float, float]:
    """Rank by ``metric`` (undefined ranks last), ties broken by F1."""
    value = _num(row.get(metric))
    f1 = _num(row.get("f1"))
    return (-math.inf if value is None else value, -math.inf if f1 is None else f1)


def best_index(rows: Sequence[dict[str, Any]], metric: str = "auc") -> int | None:
    """Index of the best row (the first among equals); None when no row has the metric."""
    scored = [(score_key(r, metric), -i) for i, r in enumerate(rows) if _num(r.get(metric)) is not None]
    return -max(scored)[1] if scored else None


# ---------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    return f"{a - b:+.4f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def split_statement(ctx: dict[str, Any], evaluated: Sequence[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """What the split was, from the recorded facts: (fact lines, warnings, evaluated split -> disjoint from train).

    The disjointness value is True, False, or None when nothing was recorded (an old
    split.json): then a warning says the report cannot tell, never that it is disjoint.
    """
    facts = ctx.get("split_facts") or {}
    origin, pairs = facts.get("origin") or {}, facts.get("pairs") or {}
    lines = []
    for name in ("train", "valid", "test"):
        if name in origin:
            text = origin[name]["text"] if isinstance(origin[name], dict) else str(origin[name])
            lines.append(f"{name}: {text}")
    for a, b in PAIR_NAMES:
        fact = pairs.get(f"{a}|{b}")
        if fact:
            verdict = "slide-disjoint" if fact["slide_disjoint"] else "MAY SHARE SLIDES"
            lines.append(f"{a} / {b}: {verdict} ({fact['basis']})")
    warnings, disjoint = [], {}
    for name in sorted(set(evaluated)):
        fact = pairs.get(f"train|{name}") if name != "train" else {"slide_disjoint": False, "basis": "it is train"}
        disjoint[name] = None if fact is None else bool(fact["slide_disjoint"])
        if fact is None:
            warnings.append(
                f"The split record does not say whether the evaluated split '{name}' shares slides with "
                "train (split.json written before split facts were recorded): the numbers may be "
                "flattered."
            )
        elif not fact["slide_disjoint"]:
            warnings.append(
                f"The evaluated split '{name}' is NOT slide-disjoint from train ({fact['basis']}). The "
                "model was scored on tissue from slides it trained on: these numbers overstate how it "
                "does on new slides."
            )
    return lines, warnings, disjoint


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "NO"


def _context(context: dict[str, Any]) -> dict[str, Any]:
    """Fill the report context's gaps so every header line says something."""
    ctx = dict(context or {})
    source = str(ctx.get("source", "not recorded"))
    ctx["source"] = source
    if "synthetic" not in ctx:
        ctx["synthetic"] = source == "synthetic" or ctx.get("format") == "synthetic"
    ctx["split_mode"] = str(ctx.get("split_mode", "not recorded"))
    versions = package_versions()
    versions.update({k: str(v) for k, v in (ctx.get("versions") or {}).items()})
    if "tensorflow-cpu" in versions:
        versions.setdefault("tensorflow", versions["tensorflow-cpu"] + " (cpu wheel)")
        versions.pop("tensorflow-cpu")
    if ctx.get("kfp_version"):
        versions["kfp"] = str(ctx["kfp_version"])
    versions.setdefault("kfp", "not used (in-process run)")
    ctx["versions"] = versions
    reference = ctx.get("reference") or DEFAULT_REFERENCE
    if isinstance(reference, list):
        reference = {**DEFAULT_REFERENCE, "rows": reference}
    ctx["reference"] = reference
    notes = ctx.get("notes") or []
    ctx["notes"] = [notes] if isinstance(notes, str) else list(notes)
    return ctx


# ---------------------------------------------------------------- outputs


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if row.get(k) is None else round(row[k], 6) if isinstance(row[k], float) else row[k]
                    for k in COLUMNS
                }
            )


def _markdown(rows: list[dict[str, Any]], best: int | None, ctx: dict[str, Any]) -> str:
    lines = ["# PCam model comparison", ""]
    if ctx["synthetic"]:
        lines += [
            "> **SYNTHETIC DATA.** These numbers test the pipeline; they say nothing about detecting metastases.",
            "",
        ]
    lines += [
        f"- data source: `{ctx['source']}`",
        f"- split: {ctx['split_mode']}"
        + (f" ({SPLIT_NOTES[ctx['split_mode']]})" if ctx["split_mode"] in SPLIT_NOTES else ""),
        *[f"  - {line}" for line in ctx["split_lines"]],
        f"- seed: {ctx.get('seed', 'not recorded')}; config sha256: `{ctx.get('config_digest', 'not recorded')}`",
        f"- image: `{ctx.get('image', 'not recorded')}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items()),
        "",
        "TTA columns: majority vote of the views (ties positive) for the counts, mean view "
        "probability for AUC. `single`: the identity view alone.",
        "",
        *[line for w in ctx["split_warnings"] for line in (f"> **WARNING: {w}**", "")],
        "| model | policy | split | slide-disjoint from train | TTA views | AUC | AUC single "
        "| accuracy | accuracy single | F1 | recall | precision | specificity | spec. @ target sens. | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        mark = " **(best)**" if i == best else ""
        lines.append(
            f"| {r['model']}{mark} | {r['policy']} | {r['split']} | {r.get('slide_disjoint_from_train', 'unknown')} "
            f"| {r['tta']} | {_fmt(r['auc'])} | "
            f"{_fmt(r['auc_single'])} | {_fmt(r['accuracy'])} | {_fmt(r['accuracy_single'])} | {_fmt(r['f1'])} | "
            f"{_fmt(r['recall'])} | {_fmt(r['precision'])} | {_fmt(r['specificity'])} | "
            f"{_fmt(r['specificity_at_target'])} | {_fmt_seconds(r['train_seconds'])} |"
        )
    if any(r["auc"] is None for r in rows):
        lines += ["", "n/a: AUC is undefined when the evaluated split holds one class only."]
    ref = ctx["reference"]
    lines += [
        "",
        f"Reference (the study: {ref.get('study', 'published')}):",
        "",
        "| model | accuracy | AUC |",
        "|---|---|---|",
    ]
    lines += [f"| {r['model']} | {_fmt(r.get('accuracy'), 3)} | {_fmt(r.get('auc'), 3)} |" for r in ref.get("rows", [])]
    official = ref.get("official_split")
    if official:
        lines.append(
            f"| {official.get('note', 'official split')} | ~{_fmt(official.get('accuracy'), 2)} "
            f"| ~{_fmt(official.get('auc'), 2)} |"
        )
    for note in ctx["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


STEP_ORDER = (
    "synth",
    "download",
    "ingest",
    "split",
    "shard",
    "lr-find",
    "train",
    "finetune",
    "evaluate",
    "report",
    "promote",
)


def _ordered_steps(steps: dict[str, Any]) -> dict[str, Any]:
    """Pipeline order (JSON files often come back sorted by name)."""
    return dict(sorted(steps.items(), key=lambda kv: (_order(kv[0], STEP_ORDER), kv[0])))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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


def _delta_cell(a: float | None, b: float | None) -> str:
    d = _delta(a, b)
    if not d:
        return '<td class="muted">n/a</td>'
    cls = "up" if a > b else "down" if a < b else "muted"
    return f'<td class="{cls}">{d}</td>'


def _html(
    rows: list[dict[str, Any]], runs: list[dict[str, Any]], best: int | None, ctx: dict[str, Any], figs: dict[str, Any]
) -> str:
    e = html.escape
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>PCam model comparison: {e(str(ctx.get('experiment', '')))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>PCam model comparison</h1>",
        f'<div class="muted">generated {e(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))}'
        f" &middot; {len(rows)} model/policy pairs</div>",
    ]
    if ctx["synthetic"]:
        out.append(
            '<div class="banner">SYNTHETIC DATA: these numbers check that the pipeline runs end to end. '
            "They say nothing about how well any model detects metastases.</div>"
        )
    else:
        out.append(f'<div class="banner real">Real data: {e(ctx["source"])}</div>')
    split = ctx["split_mode"]
    for warning in ctx["split_warnings"]:
        out.append(f'<div class="warn"><b>Split:</b> {e(warning)}</div>')

    # provenance
    kv = [
        ("experiment", ctx.get("experiment")),
        ("data source", ctx["source"] + (f" (format {ctx['format']})" if ctx.get("format") else "")),
        ("synthetic", "YES" if ctx["synthetic"] else "no"),
        ("split mode", f"{split} ({SPLIT_NOTES[split]})" if split in SPLIT_NOTES else split),
        ("split facts", "; ".join(ctx["split_lines"]) or "not recorded"),
        (
            "evaluated split",
            ", ".join(
                f"{r} (slide-disjoint from train: {_yes_no(ctx['split_disjoint'].get(r))})"
                for r in sorted({str(r["split"]) for r in rows})
            ),
        ),
        ("patch counts", ", ".join(f"{k} {v}" for k, v in (ctx.get("counts") or {}).items()) or None),
        ("seed", ctx.get("seed")),
        ("config sha256", ctx.get("config_digest")),
        ("image", ctx.get("image")),
        ("versions", ", ".join(f"{k} {v}" for k, v in ctx["versions"].items())),
    ]
    out.append('<h2>Run</h2><table class="kv">')
    for key, value in kv:
        out.append(f"<tr><td>{e(key)}</td><td>{e('not recorded' if value in (None, '') else str(value))}</td></tr>")
    checks = ctx.get("data_checksums") or {}
    if checks:
        items = "".join(f"<div><code>{e(str(v))}</code> {e(str(k))}</div>" for k, v in checks.items())
        out.append(
            f"<tr><td>data sha256</td><td><details><summary>{len(checks)} files</summary>{items}</details></td></tr>"
        )
    shard_checks = ctx.get("shard_checksums") or {}
    if shard_checks:
        items = "".join(f"<div><code>{e(str(v))}</code> {e(str(k))}</div>" for k, v in shard_checks.items())
        out.append(
            f"<tr><td>shard sha256</td><td><details><summary>{len(shard_checks)} shards</summary>{items}"
            "</details></td></tr>"
        )
    out.append("</table>")

    # comparison table
    out.append("<h2>Comparison</h2>")
    for warning in ctx["split_warnings"]:  # beside the numbers, not only at the top
        out.append(f'<div class="warn"><b>Not an unseen-slide score:</b> {e(warning)}</div>')
    views = sorted({r["tta"] for r in rows if r["tta"]})
    out.append(
        '<p class="muted">Metrics on the evaluated split. <b>TTA</b>: each patch seen in '
        f"{'/'.join(map(str, views)) or 'n/a'} orientations; the label is the majority vote of the "
        "thresholded views (a tie counts as tumour), AUC uses the mean view probability. "
        "<b>single</b>: the unaugmented patch only. &Delta; = TTA minus single (green: TTA helped). "
        "Threshold / specificity at the target sensitivity: the highest cut-off on the TTA probability that "
        "still finds that share of tumours, and the share of normal patches it leaves alone there. "
        "The best row (highest TTA AUC, then F1) is highlighted.</p>"
    )
    targets = sorted({m["metrics"]["tta"].get("target_sensitivity") for m in runs} - {None})
    sens = "/".join(f"{t:.0%}" for t in targets) or "target"
    head = [
        "model",
        "policy",
        "TTA views",
        "AUC",
        "AUC single",
        "&Delta; AUC",
        "accuracy",
        "accuracy single",
        "&Delta; acc.",
        "F1",
        "recall",
        "precision",
        "specificity",
        f"threshold for {sens} sensitivity",
        f"specificity at {sens} sensitivity",
        "train time",
        "epochs",
        "params",
    ]
    out.append(
        '<div class="scroll"><table><tr>'
        + "".join(f'<th class="{"l" if i < 2 else ""}">{h}</th>' for i, h in enumerate(head))
        + "</tr>"
    )
    for i, r in enumerate(rows):
        badge = '<span class="badge">best</span>' if i == best else ""
        params = f"{r['params']:,}" if isinstance(r["params"], int) else "n/a"
        out.append(
            f'<tr class="{"best" if i == best else ""}"><td class="l">{e(r["model"])}{badge}</td>'
            f'<td class="l">{e(r["policy"])}</td><td>{_fmt(r["tta"])}</td>'
            f"<td>{_fmt(r['auc'])}</td><td>{_fmt(r['auc_single'])}</td>{_delta_cell(r['auc'], r['auc_single'])}"
            f"<td>{_fmt(r['accuracy'])}</td><td>{_fmt(r['accuracy_single'])}</td>"
            f"{_delta_cell(r['accuracy'], r['accuracy_single'])}"
            f"<td>{_fmt(r['f1'])}</td><td>{_fmt(r['recall'])}</td><td>{_fmt(r['precision'])}</td>"
            f"<td>{_fmt(r['specificity'])}</td><td>{_fmt(r['sensitivity_threshold'], 3)}</td>"
            f"<td>{_fmt(r['specificity_at_target'])}</td><td>{_fmt_seconds(r['train_seconds'])}</td>"
            f"<td>{_fmt(r['epochs'])}</td><td>{params}</td></tr>"
        )
    out.append("</table></div>")
    off_centre = [
        f"{r['model']} / {r['policy']}"
        for r in rows
        if r["auc"] is not None and r["accuracy"] is not None and r["auc"] - r["accuracy"] >= 0.25
    ]
    if off_centre:
        thresholds = sorted({m["metrics"].get("threshold") for m in runs} - {None})
        out.append(
            f'<div class="warn">{e(", ".join(off_centre))}: the ranking is much better (AUC) than the '
            f"decisions at threshold {'/'.join(map(str, thresholds))} (accuracy): the predicted "
            "probabilities sit on one side of the threshold, typical after short training. The "
            "threshold column above shows where a usable cut-off lies.</div>"
        )
    undefined = [f"{r['model']} / {r['policy']}" for r in rows if r["auc"] is None]
    if undefined:
        out.append(
            f'<div class="warn">n/a AUC for {e(", ".join(undefined))}: the evaluated split holds one '
            "class only, so AUC, the ROC curve and the sensitivity operating point are undefined.</div>"
        )

    # reference
    ref = ctx["reference"]
    out.append(
        f'<h2>Reference numbers</h2><p class="muted">Published results; the study\'s rows come from '
        f"its {e(str(ref.get('study', 'own split')))}. Different data and split from this run: "
        "compare orders of magnitude, not decimals.</p>"
    )
    out.append('<table><tr><th class="l">model</th><th>accuracy</th><th>AUC</th></tr>')
    for r in ref.get("rows", []):
        out.append(
            f'<tr><td class="l">{e(str(r["model"]))} (study, random split)</td>'
            f"<td>{_fmt(r.get('accuracy'), 3)}</td><td>{_fmt(r.get('auc'), 3)}</td></tr>"
        )
    official = ref.get("official_split")
    if official:
        out.append(
            f'<tr><td class="l">{e(str(official.get("note", "official split")))}</td>'
            f"<td>~{_fmt(official.get('accuracy'), 2)}</td><td>~{_fmt(official.get('auc'), 2)}</td></tr>"
        )
    out.append("</table>")

    # figures
    if figs.get("roc_all"):
        out.append("<h2>ROC curves, all pairs (TTA)</h2>")
        out.append(f'<div class="figs"><img alt="ROC curves of every pair" src="{figs["roc_all"]}"></div>')
        if undefined:
            out.append(f'<p class="muted">Not drawn (undefined): {e(", ".join(undefined))}.</p>')
    out.append("<h2>Per pair</h2>")
    for i, (run, r) in enumerate(zip(runs, rows, strict=True)):
        f = figs["pairs"][id(run)]
        t = run["metrics"]["tta"]
        c = t.get("confusion", {})
        out.append(
            f'<div class="pair"><h3>{e(r["model"])} &middot; {e(r["policy"])}'
            f"{'<span class=badge>best</span>' if i == best else ''}</h3>"
        )
        out.append(
            f'<div class="muted">run <code>{e(r["run"])}</code> &middot; n={_fmt(r["n"])} &middot; '
            f"TTA AUC {_fmt(r['auc'])}, accuracy {_fmt(r['accuracy'])} &middot; "
            f"TP {c.get('tp', '?')}, FP {c.get('fp', '?')}, FN {c.get('fn', '?')}, TN {c.get('tn', '?')}"
            + (f" &middot; fine-tuning from epoch {run['finetune_start']}" if run["finetune_start"] else "")
            + "</div>"
        )
        if f.get("history"):
            out.append(f'<div><img alt="loss and accuracy curves" src="{f["history"]}"></div>')
        else:
            out.append('<p class="muted">no training history recorded</p>')
        out.append('<div class="row">')
        for key, alt in (
            ("confusion", "confusion matrix, TTA"),
            ("confusion_single", "confusion matrix, single view"),
            ("roc", "ROC curve"),
        ):
            if f.get(key):
                out.append(f'<img alt="{alt}" src="{f[key]}">')
        out.append("</div>")
        out.append("</div>")
    steps = _ordered_steps(ctx.get("step_seconds") or {})
    if steps:
        out.append("<h2>Step timings</h2>")
        if figs.get("steps"):
            out.append(f'<div class="figs"><img alt="seconds per step" src="{figs["steps"]}"></div>')
        out.append(
            '<p class="muted">Wall-clock seconds per step, summed over every pair for the per-pair '
            "steps (train, fine-tune, evaluate).</p>"
        )
        out.append('<table><tr><th class="l">step</th><th>seconds</th><th></th></tr>')
        out += [
            f'<tr><td class="l">{e(str(k))}</td><td>{_fmt(_num(v), 1)}</td><td>{_fmt_seconds(_num(v))}</td></tr>'
            for k, v in steps.items()
        ]
        total = sum(v for v in map(_num, steps.values()) if v is not None)
        out.append(
            f'<tr><td class="l"><b>total</b></td><td><b>{total:.1f}</b></td>'
            f"<td><b>{_fmt_seconds(total)}</b></td></tr></table>"
        )
    if ctx["notes"]:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(str(n))}</li>" for n in ctx["notes"]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _figures(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], plot_dir: Path, ctx: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    from pcam import plots

    plot_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Any] = {"pairs": {}}
    written: list[str] = []
    slugs: set[str] = set()

    def keep(path: Path) -> str:
        written.append(path.name)
        return _data_uri(path)

    all_curves = {}
    for run, row in zip(runs, rows, strict=True):
        slug = _slug(f"{row['model']}-{row['policy']}")
        while slug in slugs:
            slug += "-2"
        slugs.add(slug)
        label = f"{row['model']} / {row['policy']}"
        pair: dict[str, str] = {}
        if run["history"]:
            pair["history"] = keep(
                plots.plot_history(
                    run["history"], label, plot_dir / f"history-{slug}.png", finetune_start=run["finetune_start"]
                )
            )
        for mode, key in (("tta", "confusion"), ("single", "confusion_single")):
            matrix = (run["confusion"].get(mode) or {}).get("matrix")
            if matrix:
                title = f"{label}\n{'TTA vote' if mode == 'tta' else 'single view'}"
                pair[key] = keep(plots.plot_confusion(matrix, title, plot_dir / f"{key.replace('_', '-')}-{slug}.png"))
        roc = run["roc"]
        if roc.get("fpr") is not None:
            curves = {f"TTA ({row['tta']} views)": roc}
            if isinstance(roc.get("single"), dict):
                curves["single view"] = roc["single"]
            pair["roc"] = keep(plots.plot_roc(curves, f"ROC: {label}", plot_dir / f"roc-{slug}.png"))
            all_curves[label] = roc
        figs["pairs"][id(run)] = pair
    if all_curves:
        figs["roc_all"] = keep(
            plots.plot_roc(all_curves, "ROC, TTA mean probability", plot_dir / "roc-all.png", wide=True)
        )
    if ctx.get("step_seconds"):
        steps = {k: v for k, v in _ordered_steps(ctx["step_seconds"]).items() if _num(v) is not None}
        if steps:
            figs["steps"] = keep(plots.plot_step_seconds(steps, plot_dir / "steps.png"))
    return figs, written


def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    context: dict[str, Any] | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Write summary.csv, summary.md, report.html and plots/ for ``run_dirs``; returns the summary."""
    if not run_dirs:
        raise DataError("report: no run directories given")
    check_output(out_dir, "report", inputs=run_dirs, force=force)
    runs = [load_run(d) for d in run_dirs]
    rows = [summary_row(r) for r in runs]
    order = sorted(range(len(rows)), key=lambda i: sort_key(rows[i]))
    runs, rows = [runs[i] for i in order], [rows[i] for i in order]
    best = best_index(rows, "auc")
    if best is None:
        best = best_index(rows, "accuracy")
    check_shape(context or {}, CONTEXT_SCHEMA, "report context")
    ctx = _context(context or {})
    ctx["split_lines"], ctx["split_warnings"], ctx["split_disjoint"] = split_statement(
        ctx, [str(r["split"]) for r in rows]
    )
    for row in rows:
        row["slide_disjoint_from_train"] = _yes_no(ctx["split_disjoint"].get(str(row["split"])))
    out = Path(out_dir)
    with atomic_dir(out, "report", inputs=run_dirs, force=force) as tmp:
        figs, plot_files = _figures(runs, rows, tmp / "plots", ctx)
        _write_csv(tmp / "summary.csv", rows)
        (tmp / "summary.md").write_text(_markdown(rows, best, ctx))
        (tmp / "report.html").write_text(_html(rows, runs, best, ctx, figs))
        # readable by whoever serves or opens the report (temp files are created 0600)
        for path in [tmp, tmp / "plots", *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    log.info("report: %s (%d pairs)", out / "report.html", len(rows))
    return {
        "rows": rows,
        "best": None
        if best is None
        else {k: rows[best][k] for k in ("model", "policy", "run", "auc", "accuracy", "f1")},
        "report_html": str(out / "report.html"),
        "summary_csv": str(out / "summary.csv"),
        "summary_md": str(out / "summary.md"),
        "plots": sorted(plot_files),
        "synthetic": ctx["synthetic"],
        "split_mode": ctx["split_mode"],
        "split_warnings": ctx["split_warnings"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (pair.json, train/, evaluate/)")
    parser.add_argument("--out", required=True, help="output directory for the report")
    parser.add_argument("--context", help="JSON file: source, synthetic, split_mode, seed, config_digest, ...")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam report")


def run(args: argparse.Namespace) -> int:
    context = read_json(args.context, CONTEXT_SCHEMA) if args.context else {}
    summary = build_report(args.runs, args.out, context, force=args.force)
    buf = io.StringIO()
    for row in summary["rows"]:
        buf.write(f"{row['model']:>12} {row['policy']:>9}  auc={_fmt(row['auc'])}  acc={_fmt(row['accuracy'])}\n")
    print(buf.getvalue(), end="")
    print(summary["report_html"])
    return 0
