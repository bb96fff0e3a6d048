"""Reader of the official HDF5 files (and the synthetic data, written in the same layout).

``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` or ``.h5.gz`` (datasets
``x`` (N, 96, 96, 3) uint8 and ``y`` (N, 1, 1, 1)), plus the optional ``_meta.csv``
whose ``wsi`` column gives the slide of every patch. A ``.gz`` file is
stream-decompressed into a temporary file (HDF5 needs random access), one split at a
time, and deleted afterwards; images are read in blocks of :data:`BLOCK` rows, so
memory stays bounded for the 6 GB train file.
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pcam import IMAGE_SHAPE
from pcam.dataset import SPLITS
from pcam.errors import DataError
from pcam.fsutil import CHUNK
from pcam.ingest.common import H5_PREFIX, Batch, Part, Stats, check_labels, first_line, select
from pcam.ingest.images import convert_array

BLOCK = 4096
"""HDF5 rows read per step (4096 x 27 KB = 113 MB)."""


def _h5_file(root: Path, split: str, kind: str) -> Path | None:
    """The official file of ``split`` and ``kind`` (x, y) in ``root``, plain or gzipped; None when absent."""
    for suffix in (".h5", ".h5.gz"):
        path = root / f"{H5_PREFIX}_{split}_{kind}{suffix}"
        if path.exists():
            return path
    return None


def _gunzip(path: Path, scratch: Path) -> Path:
    """Stream-decompress ``path`` into ``scratch`` (constant memory); a corrupt file is a DataError."""
    target = scratch / path.name.removesuffix(".gz")
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except (OSError, EOFError, zlib.error) as exc:
        target.unlink(missing_ok=True)
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return target


@contextlib.contextmanager
def open_h5(path: Path, scratch: Path) -> Iterator[h5py.File]:
    """Open an .h5 or .h5.gz file; the decompressed copy is deleted on exit.

    Args:
        path: The file.
        scratch: Where a .gz file is decompressed (HDF5 needs random access).

    Yields:
        The open file.

    Raises:
        DataError: The file is not a readable HDF5 file (or gzip stream).
    """
    local = _gunzip(path, scratch) if path.name.endswith(".gz") else path
    try:
        try:
            handle = h5py.File(local, "r")
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt ({first_line(exc)})") from None
        with handle:
            yield handle
    finally:
        if local != path:
            local.unlink(missing_ok=True)


def h5_dataset(handle: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """Dataset ``key`` of an open file, or a DataError naming ``path`` and what it holds instead."""
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        raise DataError(f"{path}: no dataset {key!r} (found: {', '.join(handle.keys()) or 'nothing'})")
    return handle[key]


def _row_namer(prefix: str) -> Callable[[int], str]:
    """Names row ``i`` after ``prefix`` in an error message (bound now, not when the loop moves on)."""
    return lambda i: f"{prefix} row {i}"


def hdf5_parts(root: Path, limit: int, seed: int, convert: bool, scratch: Path, stats: Stats) -> list[Part]:
    """One part per split whose official x and y files are in ``root``; labels and slides are read and checked now.

    Args:
        root: The directory holding the official files.
        limit: At most this many patches per split (0: all).
        seed: Seeds the choice under a limit.
        convert: Convert images of another shape or dtype instead of refusing them.
        scratch: Where .gz files are decompressed, one at a time.
        stats: Counts the converted images.

    Returns:
        The parts, in split order.

    Raises:
        DataError: A split lacks its x or y file, a file is unreadable, a label is not 0/1, or no file is found.
    """
    parts = []
    for split in SPLITS:
        x_path, y_path = _h5_file(root, split, "x"), _h5_file(root, split, "y")
        if x_path is None and y_path is None:
            continue
        if x_path is None or y_path is None:
            missing = f"{H5_PREFIX}_{split}_{'x' if x_path is None else 'y'}.h5[.gz]"
            raise DataError(f"{root / missing}: missing (the {split} split needs both x and y files)")
        with open_h5(y_path, scratch) as handle:
            y = h5_dataset(handle, "y", y_path)
            try:
                raw = y[()]
            except OSError as exc:
                raise DataError(
                    f"{y_path}: dataset 'y' cannot be read, truncated or corrupt ({first_line(exc)})"
                ) from None
        n = raw.shape[0] if raw.ndim else 0
        if raw.size != n:
            raise DataError(f"{y_path}: dataset 'y' has shape {raw.shape}; expected (N,) or (N, 1, 1, 1)")
        labels = check_labels(raw, _row_namer(f"{y_path}: dataset 'y'"))
        slides, meta_note = _meta_slides(root / f"{H5_PREFIX}_{split}_meta.csv", n)
        chosen = select(labels, limit, seed, split)
        parts.append(
            Part(
                split,
                len(chosen),
                _h5_batches(x_path, split, labels, slides, chosen, convert, scratch, stats),
                available=n,
                notes=[meta_note] if meta_note else [],
            )
        )
    if not parts:
        raise DataError(f"{root}: no {H5_PREFIX}_{{train,valid,test}}_{{x,y}}.h5[.gz] files")
    return parts


def _meta_slides(path: Path, n: int) -> tuple[list[str] | None, str]:
    """The slide of each of ``n`` patches from a ``_meta.csv`` (``wsi`` column), or None and a note when absent."""
    if not path.exists():
        return None, f"{path.name}: absent, slides unknown"
    try:
        meta = pd.read_csv(path, dtype={"wsi": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({first_line(exc)})") from None
    if "wsi" not in meta.columns:
        raise DataError(f"{path}: no 'wsi' column (found: {', '.join(map(str, meta.columns))})")
    if len(meta) != n:
        raise DataError(f"{path}: {len(meta)} rows but the y file has {n}")
    if meta["wsi"].isna().any():
        raise DataError(f"{path}: row {int(np.flatnonzero(meta['wsi'].isna())[0])} has no wsi")
    return meta["wsi"].astype(str).tolist(), ""


def _checked_x(handle: h5py.File, x_path: Path, n: int, convert: bool) -> tuple[h5py.Dataset, bool]:
    """Dataset ``x`` with as many rows as the labels, and whether its rows are 96x96x3 uint8 already."""
    x = h5_dataset(handle, "x", x_path)
    if x.ndim < 1 or x.shape[0] != n:
        raise DataError(f"{x_path}: dataset 'x' has {x.shape[0] if x.ndim else 0} rows, the y file {n}")
    ok = x.dtype == np.uint8 and x.shape[1:] == IMAGE_SHAPE
    if not ok and not convert:
        raise DataError(
            f"{x_path}: dataset 'x' is {x.dtype} {x.shape[1:]}; expected uint8 {IMAGE_SHAPE} "
            "(ingest with convert=True / --convert to convert and resize)"
        )
    return x, ok


def _read_rows(x: h5py.Dataset, rows: np.ndarray, x_path: Path) -> np.ndarray:
    """Rows ``rows`` (sorted) of ``x``: the span when the selection is dense, else only those rows.

    h5py point selection is slow for many rows and a span read wastes I/O for few, so
    a small limit stays fast and a full read makes no second (fancy-index) copy.
    """
    try:
        span = rows[-1] - rows[0] + 1
        if len(rows) == span:
            return x[rows[0] : rows[-1] + 1]
        if len(rows) * 4 >= span:
            return x[rows[0] : rows[-1] + 1][rows - rows[0]]
        return x[rows]
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{x_path}: dataset 'x' rows {rows[0]}..{rows[-1]} cannot be read, truncated or corrupt ({first_line(exc)})"
        ) from None


def _h5_batches(
    x_path: Path,
    split: str,
    labels: np.ndarray,
    slides: list[str] | None,
    chosen: np.ndarray,
    convert: bool,
    scratch: Path,
    stats: Stats,
) -> Callable[[], Iterator[Batch]]:
    """Stream the ``chosen`` rows of ``x_path`` in blocks of :data:`BLOCK` source rows (bounded memory)."""

    def batches() -> Iterator[Batch]:
        with open_h5(x_path, scratch) as handle:
            x, ok = _checked_x(handle, x_path, len(labels), convert)
            for start in range(0, len(labels), BLOCK):
                rows = chosen[(chosen >= start) & (chosen < start + BLOCK)]
                if not len(rows):
                    continue
                images = _read_rows(x, rows, x_path)
                if not ok:
                    images = np.stack([convert_array(img) for img in images])
                    for _ in rows:
                        stats.count_converted()
                yield (
                    np.ascontiguousarray(images),
                    labels[rows],
                    [f"{split}/{r}" for r in rows],
                    [slides[r] for r in rows] if slides else None,
                )

    return batches
