"""The run's context for the report's header and model card: data, split, seeds, versions.

The context comes from :func:`pcam.study.run_context` (``pcam run`` and the pipeline's
report step) or from a JSON file (``pcam report --context``); every key is optional,
and the report says "not recorded" for a missing one. The split statement is read from
``split.json``'s facts (carried in the shards' ``index.json``): where each split came
from, and for each pair of splits whether they share no slide. Without recorded facts
the report says so rather than assume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pcam.report.fmt import order
from pcam.study import package_versions

_NUMBER = (int, float, type(None))
CONTEXT_SCHEMA = {
    "source?": str,
    "format?": str,
    "synthetic?": bool,
    "split_mode?": str,
    "split_facts?": dict,
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


class ReferenceRow(TypedDict, total=False):
    """One published result: model name, accuracy, AUC."""

    model: str
    accuracy: float
    auc: float


class Reference(TypedDict, total=False):
    """Published numbers shown beside the run's: the study's rows and the official-split figure."""

    study: str
    rows: list[ReferenceRow]
    official_split: dict[str, Any]


DEFAULT_REFERENCE: Reference = {
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


@dataclass
class Context:
    """The context with its gaps filled and the split statement made, as the writers use it."""

    source: str
    synthetic: bool
    split_mode: str
    versions: dict[str, str]
    reference: Reference
    notes: list[str]
    experiment: str | None = None
    format: str | None = None
    seed: int | None = None
    config_digest: str | None = None
    image: str | None = None
    step_seconds: dict[str, float | None] = field(default_factory=dict)
    data_checksums: dict[str, str] = field(default_factory=dict)
    shard_checksums: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    split_lines: list[str] = field(default_factory=list)
    """What the split was: each split's origin, then each pair's slide disjointness."""
    split_warnings: list[str] = field(default_factory=list)
    """One per evaluated split that may share slides with train (or where nobody recorded it)."""
    split_disjoint: dict[str, bool | None] = field(default_factory=dict)
    """Evaluated split -> slide-disjoint from train (None: not recorded)."""


def split_statement(
    facts: Mapping[str, Any], evaluated: Sequence[str]
) -> tuple[list[str], list[str], dict[str, bool | None]]:
    """What the split was, from the recorded facts.

    The disjointness value is True, False, or None when nothing was recorded (an old
    split.json): then a warning says the report cannot tell, never that it is disjoint.

    Args:
        facts: split.json's facts (``origin``: split -> {text, ...}; ``pairs``: "a|b" -> {slide_disjoint, basis}).
        evaluated: The splits the runs were scored on.

    Returns:
        Fact lines, warnings, and evaluated split -> slide-disjoint from train.
    """
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
    warnings: list[str] = []
    disjoint: dict[str, bool | None] = {}
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


def make_context(context: Mapping[str, Any] | None, evaluated: Sequence[str]) -> Context:
    """Fill the context's gaps so every header line says something, and state the split.

    Args:
        context: The raw context (shape checked against :data:`CONTEXT_SCHEMA` by the caller).
        evaluated: The splits the runs were scored on.

    Returns:
        The filled context.
    """
    ctx = dict(context or {})
    source = str(ctx.get("source", "not recorded"))
    synthetic = ctx.get("synthetic")
    if synthetic is None:
        synthetic = source == "synthetic" or ctx.get("format") == "synthetic"
    versions = package_versions()  # this process's; the recorded ones (the steps') win
    versions.update({k: str(v) for k, v in (ctx.get("versions") or {}).items()})
    versions.setdefault("kfp", "not used (in-process run)")
    reference = ctx.get("reference") or DEFAULT_REFERENCE
    if isinstance(reference, list):
        reference = {**DEFAULT_REFERENCE, "rows": reference}
    notes = ctx.get("notes") or []
    lines, warnings, disjoint = split_statement(ctx.get("split_facts") or {}, evaluated)
    return Context(
        source=source,
        synthetic=bool(synthetic),
        split_mode=str(ctx.get("split_mode", "not recorded")),
        versions=versions,
        reference=reference,
        notes=[notes] if isinstance(notes, str) else list(notes),
        experiment=ctx.get("experiment"),
        format=ctx.get("format"),
        seed=ctx.get("seed"),
        config_digest=ctx.get("config_digest"),
        image=ctx.get("image"),
        step_seconds=dict(ctx.get("step_seconds") or {}),
        data_checksums=dict(ctx.get("data_checksums") or {}),
        shard_checksums=dict(ctx.get("shard_checksums") or {}),
        counts=dict(ctx.get("counts") or {}),
        split_lines=lines,
        split_warnings=warnings,
        split_disjoint=disjoint,
    )


def ordered_steps(steps: Mapping[str, float | None]) -> dict[str, float | None]:
    """Steps in pipeline order (JSON files often come back sorted by name)."""
    return dict(sorted(steps.items(), key=lambda kv: (order(kv[0], STEP_ORDER), kv[0])))
