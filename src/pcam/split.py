"""Split a canonical dataset into train/valid/test: ``split.json`` with sorted indices.

Modes:

``random``
    Stratified by label with a seeded generator: each label's patches are shuffled and
    cut by ``ratios`` (largest-remainder rounding). When the dataset knows slide ids
    (``manifest.slides_known``), whole slides are assigned instead, so no slide is in
    two splits: slides are shuffled (seeded) and each goes, in turn, to the split whose
    per-label counts it brings closest to the targets ``ratios x label totals``. Label
    balance is then approximate; the counts in ``split.json`` say what came out.
``official``
    Keep the source splits (train/valid/test from the source). When the source brings
    one held-out split and no test (class folders with train/ and valid/ only, like
    PCam's official train and valid), that held-out split is the one evaluated: it
    becomes ``test``, and the model-selection ``valid`` split is carved out of source
    train. Evaluating on a split carved from train instead would score the model on
    slides it trained on. Any other missing split (Kaggle brings train only) is carved
    out of source train with the same stratified (slide-grouped if known) procedure, in
    the proportions of ``ratios`` among train and the carved splits: with
    (0.7, 0.2, 0.1) and only valid missing, valid gets 0.2 / (0.7 + 0.2) = 22 % of
    source train. ``notes`` in ``split.json`` records what was moved and carved.

Every ``split.json`` also states what was done, so reports read it instead of
guessing from the mode: ``origin`` (per split: which source split it holds, or what
it was carved from) and ``pairs`` (per pair of splits: ``slide_disjoint`` and the
``basis`` for saying so; :func:`split_facts`). A pair is slide-disjoint when slide ids
show it (checked, not assumed), or when the two splits are different source splits
of official PCam HDF5 files (disjoint by construction) or of another source's own
split folders (taken as disjoint, and said so: PCam's official splits are). Splits
carved at random out of one source split without slide ids may share slides.

Every split must be non-empty and hold both labels, except one whose ratio is 0
(which may legitimately be empty). Same data, mode, ratios and seed give the same
``split.json`` bytes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pcam.argtypes import finite_float, integer
from pcam.dataset import IMAGES_FILE, SPLITS, CanonicalDataset, label_counts, open_dataset
from pcam.errors import ConfigError, DataError
from pcam.fsutil import atomic_dir, check_output, read_json, write_json

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
MODES = ("random", "official")
_SPLIT_COUNTS = {"0": int, "1": int}
SPLIT_SCHEMA = {
    "mode": str,
    "seed": int,
    "ratios": [(int, float)],
    "counts": {s: _SPLIT_COUNTS for s in SPLITS},
    "indices": {s: [int] for s in SPLITS},
    "dataset?": {"count": int, "images_sha256": str},
}
"""What readers of split.json rely on (checked by :func:`pcam.fsutil.check_shape`)."""


def split_dataset(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mode: str = "random",
    ratios: tuple[float, float, float] | list[float] = (0.7, 0.2, 0.1),
    seed: int = 42,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/split.json`` for the dataset at ``dataset_dir``; return its content."""
    check_output(out_dir, "split", inputs=[dataset_dir], force=force)
    if mode not in MODES:
        raise ConfigError(f"config key 'split.mode': unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    given = [float(r) for r in ratios]
    if len(given) != 3 or any(r < 0 for r in given) or abs(sum(given) - 1) > 1e-6:
        raise ConfigError(f"config key 'split.ratios': need three non-negative numbers summing to 1, got {given}")
    ratios = (given[0], given[1], given[2])
    ds = open_dataset(dataset_dir, verify=False)
    labels = ds.labels
    slides = ds.slides
    notes: list[str] = []
    origin: dict[str, dict[str, Any]]
    if mode == "random":
        assignment = _assign(np.arange(len(labels)), labels, slides, ratios, seed)
        origin = {s: {"from": "all", "carved": True, "text": "a random share of all patches"} for s in SPLITS}
    else:
        assignment, notes, origin = _official(ds, ratios, seed)
    indices = {s: sorted(int(i) for i in assignment[s]) for s in SPLITS}
    result = {
        "mode": mode,
        "seed": seed,
        "ratios": list(ratios),
        "grouped_by_slide": slides is not None,
        "counts": {s: label_counts(labels[indices[s]]) for s in SPLITS},
        "indices": indices,
        "notes": notes,
        "origin": origin,
        "pairs": split_facts(indices, origin, slides, ds.manifest.get("format", "")),
        "dataset": {"count": len(labels), "images_sha256": ds.manifest["files"][IMAGES_FILE]["sha256"]},
    }
    _validate(result, Path(out_dir) / SPLIT_FILE)
    with atomic_dir(out_dir, "split", inputs=[dataset_dir], force=force) as tmp:
        write_json(tmp / SPLIT_FILE, result)
    log.info("split %s (%s, seed %d): %s", dataset_dir, mode, seed, result["counts"])
    return result


def _official(
    ds: CanonicalDataset, ratios: tuple[float, float, float], seed: int
) -> tuple[dict[str, np.ndarray], list[str], dict[str, dict[str, Any]]]:
    """Source splits kept; (assignment, notes, origin of each split)."""
    source = ds.meta["source_split"].to_numpy(dtype=str)
    out = {s: np.flatnonzero(source == s) for s in SPLITS}
    origin: dict[str, dict[str, Any]] = {s: {"from": s, "carved": False, "text": f"source {s}"} for s in SPLITS}
    if not len(out["train"]):
        raise DataError(
            f"{ds.root}: official mode needs a source 'train' split; this dataset has "
            f"{', '.join(sorted(set(source)))} (use mode random)"
        )
    notes: list[str] = []
    if not len(out["test"]) and len(out["valid"]):
        # One held-out split and no test: evaluate on the held-out one (other slides than
        # train), and pick epochs on a slice of train.
        out["test"], out["valid"] = out["valid"], np.empty(0, dtype=np.int64)
        origin["test"] = {"from": "valid", "carved": False, "text": "source valid"}
        notes.append(
            f"source has no 'test' split: its 'valid' split ({len(out['test'])} patches) is evaluated "
            "as test; the model-selection 'valid' split is carved out of source train"
        )
    missing = [s for s in SPLITS if not len(out[s]) and s != "train"]
    if not missing:
        return out, notes, origin
    share = {s: ratios[SPLITS.index(s)] for s in ["train", *missing]}
    total = sum(share.values())
    sub_ratios = tuple(share.get(s, 0.0) / total if total else 0.0 for s in SPLITS)
    pool = out["train"]
    slides = ds.slides
    carved = _assign(pool, ds.labels[pool], slides[pool] if slides is not None else None, sub_ratios, seed)
    for s in ["train", *missing]:
        out[s] = carved[s]
    how = "grouped by slide" if slides is not None else "stratified by label"
    for s in missing:
        origin[s] = {
            "from": "train",
            "carved": True,
            "text": f"carved from source train ({sub_ratios[SPLITS.index(s)]:.1%}, {how})",
        }
    origin["train"] = {
        "from": "train",
        "carved": True,
        "text": "source train minus the carved " + " and ".join(missing),
    }
    notes += [
        f"source has no {s!r} split: carved {sub_ratios[SPLITS.index(s)]:.4f} of source train "
        f"({len(out[s])} patches, {how}, seed {seed})"
        for s in missing
    ]
    return out, notes, origin


PAIRS = (("train", "valid"), ("train", "test"), ("valid", "test"))


def split_facts(
    indices: dict[str, list[int]], origin: dict[str, dict[str, Any]], slides: np.ndarray | None, fmt: str
) -> dict[str, dict[str, Any]]:
    """Per pair of splits (``"train|test"``): whether they share no slide, and why we can say so.

    Args:
        indices: Dataset positions of each split.
        origin: Per split, ``{"from": <source split, or "all">, "carved": bool, "text": ...}``.
        slides: Slide id of every patch, or None when the dataset has none.
        fmt: The dataset's source format (``hdf5`` marks the official PCam files).

    Returns:
        ``{"train|valid": {"slide_disjoint": bool, "basis": str}, ...}``.
    """
    facts = {}
    for a, b in PAIRS:
        if not indices[a] or not indices[b]:
            facts[f"{a}|{b}"] = {"slide_disjoint": True, "basis": f"split {b if indices[a] else a!r} is empty"}
            continue
        if slides is not None:
            shared = set(slides[indices[a]]) & set(slides[indices[b]])
            basis = f"slide ids: {len(shared)} slide(s) in both" if shared else "slide ids: no slide in both (checked)"
            facts[f"{a}|{b}"] = {"slide_disjoint": not shared, "basis": basis}
            continue
        apart = origin[a]["from"] != origin[b]["from"] and "all" not in (origin[a]["from"], origin[b]["from"])
        if apart and fmt in ("hdf5", "synthetic"):
            facts[f"{a}|{b}"] = {
                "slide_disjoint": True,
                "basis": "different official PCam split files (slide-disjoint by construction)",
            }
        elif apart:
            facts[f"{a}|{b}"] = {
                "slide_disjoint": True,
                "basis": "different split folders of the source, taken as "
                "slide-disjoint (PCam's official splits are; no slide ids to check)",
            }
        else:
            facts[f"{a}|{b}"] = {
                "slide_disjoint": False,
                "basis": "carved at random from the same patches without slide ids: the two may share slides",
            }
    return facts


def _assign(
    index: np.ndarray, labels: np.ndarray, slides: np.ndarray | None, ratios: tuple[float, ...], seed: int
) -> dict[str, np.ndarray]:
    """Positions ``index`` (with ``labels``, optional ``slides``) dealt into the three splits."""
    rng = np.random.default_rng(seed)
    if slides is None:
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for label in (0, 1):
            members = index[labels == label]
            members = members[rng.permutation(len(members))]
            bounds = np.cumsum(_largest_remainder(len(members), ratios))
            for s, chunk in zip(SPLITS, np.split(members, bounds[:-1]), strict=True):
                parts[s].append(chunk)
        return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}
    # Slide-grouped: greedy, in a seeded random order of slides.
    names, inverse = np.unique(slides, return_inverse=True)
    per_slide = np.zeros((len(names), 2), dtype=np.int64)
    np.add.at(per_slide, (inverse, labels.astype(np.int64)), 1)
    totals = per_slide.sum(axis=0).astype(np.float64)
    target = np.outer(ratios, totals)  # (split, label)
    current = np.zeros_like(target)
    open_splits = [k for k, r in enumerate(ratios) if r > 0]
    weight = 1.0 / (target + 1.0)
    choice = np.empty(len(names), dtype=np.int64)
    for slide in rng.permutation(len(names)):
        c = per_slide[slide]
        cost = [
            float((((current[k] + c - target[k]) ** 2 - (current[k] - target[k]) ** 2) * weight[k]).sum())
            for k in open_splits
        ]
        k = open_splits[int(np.argmin(cost))]
        current[k] += c
        choice[slide] = k
    split_of = choice[inverse]
    return {s: np.sort(index[split_of == k]) for k, s in enumerate(SPLITS)}


def _largest_remainder(n: int, ratios: tuple[float, ...]) -> list[int]:
    exact = [n * r for r in ratios]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(ratios)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


def _validate(data: dict[str, Any], where: Path) -> None:
    """Every split non-empty with both labels, unless its ratio is 0; no index twice."""
    ratios = data.get("ratios", [1, 1, 1])
    seen: set[int] = set()
    for k, s in enumerate(SPLITS):
        idx = data["indices"].get(s)
        if idx is None:
            raise DataError(f"{where}: split {s!r} is missing")
        counts = data["counts"][s]
        if counts["0"] + counts["1"] != len(idx):
            raise DataError(f"{where}: split {s!r} has {len(idx)} indices but counts say {counts}")
        overlap = seen.intersection(idx)
        if overlap:
            raise DataError(f"{where}: index {min(overlap)} is in split {s!r} and an earlier split")
        seen.update(idx)
        if ratios[k] == 0 and not idx:
            continue
        if not idx:
            raise DataError(
                f"{where}: split {s!r} is empty (ratio {ratios[k]}); the dataset is too small for these ratios"
            )
        missing = [label for label in ("0", "1") if counts[label] == 0]
        if missing:
            grouped = " (grouped by slide: too few slides?)" if data.get("grouped_by_slide") else ""
            raise DataError(f"{where}: split {s!r} has no patches with label {missing[0]}{grouped}")


def load_split(split_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The indices of each split (sorted int64 arrays), checked as :func:`split_dataset` writes them."""
    path = Path(split_dir) / SPLIT_FILE
    data = read_json(path, SPLIT_SCHEMA)
    _validate(data, path)
    out = {}
    for s in SPLITS:
        idx = np.asarray(data["indices"][s], dtype=np.int64)
        count = data.get("dataset", {}).get("count")
        if len(idx) and (idx.min() < 0 or (count is not None and idx.max() >= count)):
            raise DataError(f"{path}: split {s!r} has an index outside the dataset (0..{count})")
        if np.any(np.diff(idx) <= 0):
            raise DataError(f"{path}: split {s!r} indices are not sorted and unique")
        out[s] = idx
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam split`` options on ``parser``."""
    parser.add_argument("--dataset", required=True, help="canonical dataset directory (from `pcam ingest`)")
    parser.add_argument("--out", required=True, help="output directory for split.json")
    parser.add_argument("--mode", choices=MODES, default=None, help="random (default) or official")
    parser.add_argument("--ratios", type=finite_float, nargs=3, default=None, metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--seed", type=integer, default=None)
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam split")
    parser.add_argument(
        "--config", default=None, help="experiment YAML: its split section and seed supply the defaults"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``pcam split`` (split a dataset: stratified random (grouped by slide) or official); returns the exit code."""
    from pcam.config import load_config

    cfg = load_config(args.config, {"split.mode": args.mode, "split.ratios": args.ratios, "seed": args.seed})
    result = split_dataset(
        args.dataset, args.out, mode=cfg.split.mode, ratios=cfg.split.ratios, seed=cfg.seed, force=args.force
    )
    print(f"{args.out}: {result['counts']}")
    return 0
