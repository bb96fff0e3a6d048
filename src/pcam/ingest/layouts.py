"""Readers of the labelled layouts: the Kaggle variant and class folders (with or without a labels CSV).

``kaggle``
    ``train/<id>.tif`` + ``train_labels.csv`` (id,label). Every patch goes to source
    split ``train`` (the study splits them randomly); ``test/`` is unlabelled and skipped.
``folders``
    ``<root>/<split>/<label>/*.{png,jpg,jpeg,tif,tiff}`` (split: train, valid/val, test;
    label: 0 or 1), or ``<root>/<label>/*`` (all ``train``), with an optional
    ``labels.csv`` (path,split,label[,slide|wsi]) that then lists the patches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pcam.config import FORMATS
from pcam.dataset import SPLITS
from pcam.errors import DataError
from pcam.ingest.common import (
    H5_PREFIX,
    IMAGE_EXTENSIONS,
    LABEL_DIRS,
    SPLIT_ALIASES,
    Part,
    Stats,
    check_labels,
    first_line,
    select,
)
from pcam.ingest.images import file_batches, list_images

log = logging.getLogger(__name__)


def detect_format(root: Path) -> str:
    """Tell hdf5 / synthetic / kaggle / folders from what ``root`` holds."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    names = {p.name for p in root.iterdir()}
    if not names:
        raise DataError(f"{root}: empty directory")
    if any(n.startswith(H5_PREFIX) and (n.endswith(".h5") or n.endswith(".h5.gz")) for n in names):
        return "synthetic" if "SYNTHETIC.json" in names else "hdf5"
    if "train_labels.csv" in names:
        return "kaggle"
    if "labels.csv" in names or any(n in SPLIT_ALIASES or n in LABEL_DIRS for n in names):
        return "folders"
    raise DataError(
        f"{root}: cannot tell the format (no {H5_PREFIX}_*.h5[.gz], train_labels.csv, labels.csv "
        f"or <split>/<label>/ folders); pass one of {', '.join(FORMATS[1:])}"
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A labels CSV as text, checked to have the ``required`` columns, rows, and a key in every row."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({first_line(exc)})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})")
    if table.empty:
        raise DataError(f"{path}: no rows")
    # The first required column is the row's key (id or path): an empty cell would reach
    # the readers as NaN and fail there with a TypeError instead of this message.
    empty = table[required[0]].isna().to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{path}: row {i + 2} has an empty {required[0]!r}"
            + (f" ({int(empty.sum())} rows do)" if empty.sum() > 1 else "")
        )
    return table


def kaggle_parts(root: Path, limit: int, seed: int, convert: bool, stats: Stats, workers: int | None) -> list[Part]:
    """The Kaggle layout (``train/<id>.tif`` + ``train_labels.csv``) as one part, source split ``train``.

    Args:
        root: The directory holding ``train/`` and ``train_labels.csv``.
        limit: At most this many patches (0: all).
        seed: Seeds the choice under a limit.
        convert: Convert images of another shape or mode instead of refusing them.
        stats: Counts the converted images.
        workers: Decoding threads.

    Returns:
        One part (``test/`` is unlabelled and skipped).

    Raises:
        DataError: A file is missing, an id is duplicated or names no file, or a label is not 0/1.
    """
    csv_path, folder = root / "train_labels.csv", root / "train"
    if not csv_path.exists():
        raise DataError(f"{csv_path}: missing (the Kaggle layout is train/<id>.tif + train_labels.csv)")
    if not folder.is_dir():
        raise DataError(f"{folder}: missing (the Kaggle layout is train/<id>.tif + train_labels.csv)")
    table = _read_csv(csv_path, ("id", "label"))
    ids = table["id"].astype(str).str.strip()
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{csv_path}: duplicate id {dup.iloc[0]!r} ({len(dup)} duplicate rows)")
    labels = check_labels(table["label"], lambda i: f"{csv_path}: row {i + 2} (id {ids.iloc[i]})")
    present = {p.name for p in folder.iterdir()}
    paths = []
    for i, name in enumerate(ids):
        file = f"{name}.tif" if f"{name}.tif" in present else f"{name}.tiff"
        if file not in present:
            raise DataError(f"{csv_path}: row {i + 2} names id {name!r} but {folder / (name + '.tif')} does not exist")
        paths.append(folder / file)
    unlisted = len([n for n in present if n.lower().endswith((".tif", ".tiff"))]) - len(paths)
    if unlisted:
        log.warning("%s: %d .tif files are not in %s and are skipped", folder, unlisted, csv_path.name)
    chosen = select(labels, limit, seed, "train")
    sel_paths = [paths[i] for i in chosen]
    notes = ["kaggle: every labelled patch is source split 'train'; test/ is unlabelled and skipped"]
    return [
        Part(
            "train",
            len(chosen),
            file_batches(sel_paths, labels[chosen], [ids.iloc[i] for i in chosen], None, convert, stats, workers),
            available=len(paths),
            notes=notes,
        )
    ]


def folder_parts(root: Path, limit: int, seed: int, convert: bool, stats: Stats, workers: int | None) -> list[Part]:
    """Class folders (``<split>/<label>/*`` or ``<label>/*``, or the files a ``labels.csv`` lists), one part per split.

    Args:
        root: The data root.
        limit: At most this many patches per split (0: all).
        seed: Seeds the choice under a limit.
        convert: Convert images of another shape or mode instead of refusing them.
        stats: Counts the converted images.
        workers: Decoding threads.

    Returns:
        The parts, in split order.

    Raises:
        DataError: No images, an unknown split or label folder, or a bad labels.csv row.
    """
    csv_path = root / "labels.csv"
    notes: list[str] = []
    rows = _rows_from_csv(root, csv_path) if csv_path.exists() else _rows_from_tree(root, notes)
    if not rows:
        raise DataError(f"{root}: no images (*{', *'.join(IMAGE_EXTENSIONS)}) found")
    parts = []
    for split in SPLITS:
        entries = [r for r in rows if r[1] == split]
        if not entries:
            continue
        where = (
            (lambda i, e=entries: f"{root / e[i][0]}")
            if not csv_path.exists()
            else (lambda i, e=entries: f"{csv_path}: row for {e[i][0]}")
        )
        labels = check_labels([e[2] for e in entries], where)
        chosen = select(labels, limit, seed, split)
        slides = [entries[i][3] for i in chosen] if any(e[3] for e in entries) else None
        parts.append(
            Part(
                split,
                len(chosen),
                file_batches(
                    [root / entries[i][0] for i in chosen],
                    labels[chosen],
                    [entries[i][0] for i in chosen],
                    slides,
                    convert,
                    stats,
                    workers,
                ),
                available=len(entries),
                notes=notes,
            )
        )
        notes = []  # said once, on the first part
    return parts


def _subdirs(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _rows_from_tree(root: Path, notes: list[str]) -> list[tuple[str, str, str, str]]:
    """(relative path, split, label, slide) for <root>/<split>/<label>/** or <root>/<label>/**.

    Images below a label folder, at any depth, take that label. Images with no label
    folder above them (loose in <split>/ or in the root) cannot be labelled: they are
    counted, logged and noted in the manifest, never skipped silently.
    """
    dirs = _subdirs(root)
    if not dirs:
        raise DataError(f"{root}: empty (expected <split>/<label>/ or <label>/ folders of images)")
    if any(d.name in LABEL_DIRS for d in dirs):  # <label>/ at the top: every other folder is the odd one out
        layout = [(root, "train")]
    else:
        layout = []
        for d in dirs:
            if d.name not in SPLIT_ALIASES:
                raise DataError(f"{d}: unknown split folder; expected one of {', '.join(SPLIT_ALIASES)}")
            layout.append((d, SPLIT_ALIASES[d.name]))
    rows = []
    unlabelled = [p for p in list_images(root)] if layout[0][0] != root else []
    for folder, split in layout:
        for sub in _subdirs(folder):
            if sub.name not in LABEL_DIRS:
                raise DataError(f"{sub}: unknown label folder; expected {' or '.join(LABEL_DIRS)}")
            rows += [(p.relative_to(root).as_posix(), split, sub.name, "") for p in list_images(sub, recursive=True)]
        unlabelled += list_images(folder)
    if unlabelled:
        note = (
            f"{len(unlabelled)} image(s) outside any <label>/ folder were not read (no label), "
            f"e.g. {unlabelled[0].relative_to(root).as_posix()}"
        )
        log.warning("%s: %s", root, note)
        notes.append(note)
    return rows


def _rows_from_csv(root: Path, csv_path: Path) -> list[tuple[str, str, str, str]]:
    """(relative path, split, label, slide) from labels.csv, each file checked to exist."""
    table = _read_csv(csv_path, ("path", "label"))
    paths = table["path"].astype(str).str.strip().str.replace("\\", "/", regex=False)
    dup = paths[paths.duplicated()]
    if len(dup):
        raise DataError(f"{csv_path}: duplicate path {dup.iloc[0]!r} ({len(dup)} duplicate rows)")
    folders = paths.str.rpartition("/")[0]
    splits = table["split"].astype(str).str.strip() if "split" in table.columns else paths.str.split("/").str[0]
    labels = table["label"].fillna("").astype(str).str.strip()
    slide_col = next((c for c in ("slide", "wsi") if c in table.columns), None)
    slides = table[slide_col].fillna("").astype(str).tolist() if slide_col else [""] * len(table)
    # One directory listing per folder instead of a stat per file (23,000 files: ms, not s).
    present: set[str] = set()
    for folder in folders.unique():
        if (root / folder).is_dir():
            present.update(f"{folder}/{q}" if folder else q for q in os.listdir(root / folder))
    exists = paths.isin(present).to_numpy()
    if not exists.all():
        i = int(np.flatnonzero(~exists)[0])
        raise DataError(f"{csv_path}: row {i + 2} names {paths.iloc[i]} but {root / paths.iloc[i]} does not exist")
    unknown = ~splits.isin(list(SPLIT_ALIASES)).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{csv_path}: row {i + 2} ({paths.iloc[i]}): unknown split {splits.iloc[i]!r}; "
            f"expected one of {', '.join(SPLIT_ALIASES)}"
        )
    # Compared by value, not text: "1.0" in the CSV is label 1 (check_labels parses it once, here).
    values = check_labels(labels, lambda i: f"{csv_path}: row {i + 2} ({paths.iloc[i]})")
    label_dir = folders.str.rpartition("/")[2]
    in_label_dir = label_dir.isin(LABEL_DIRS).to_numpy()
    clash = in_label_dir & (pd.to_numeric(label_dir.where(in_label_dir, "-1")).to_numpy() != values)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise DataError(
            f"{csv_path}: row {i + 2} gives label {labels.iloc[i]} but {paths.iloc[i]} is in folder "
            f"{label_dir.iloc[i]}/"
        )
    return list(zip(paths, splits.map(SPLIT_ALIASES), values.tolist(), slides, strict=True))
