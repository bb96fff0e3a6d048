"""Patch sources for ``pcam predict``, streamed in blocks through the readers of :mod:`pcam.ingest`.

Accepted: every layout ingest reads (official/synthetic HDF5, Kaggle, class folders;
their labels are carried along as ``true_label``), one HDF5 ``x`` file (``.h5`` or
``.h5.gz``, dataset ``x``, no labels needed), and a flat folder of 96x96 RGB images
(PNG/JPEG/TIFF, e.g. Kaggle's unlabelled ``test/``). Memory stays bounded: HDF5 is
read :data:`H5_BLOCK` rows at a time (an ingest layout: :data:`pcam.ingest.BLOCK`), image
files :data:`pcam.ingest.FILE_BATCH` at a time.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcam import IMAGE_SHAPE
from pcam import ingest as I
from pcam.errors import DataError

H5_BLOCK = 1024
"""HDF5 rows read at a time (28 MB): predict holds TensorFlow beside them, so smaller than ingest's block."""
Batch = tuple[np.ndarray, list[str], np.ndarray | None]
"""(uint8 images, ids, true labels or None)."""


@dataclass
class PatchSource:
    """What ``pcam predict`` reads patches from: how many, and a generator of batches."""

    description: str
    count: int
    batches: Callable[[], Iterator[Batch]]


def _from_parts(parts: list, description: str) -> PatchSource:
    def batches() -> Iterator[Batch]:
        for part in parts:
            for images, labels, ids, _slides in part.batches():
                yield images, [str(i) for i in ids], np.asarray(labels, dtype=np.int64)

    return PatchSource(description, sum(p.count for p in parts), batches)


def _h5_source(path: Path, stack: contextlib.ExitStack) -> PatchSource:
    """One HDF5 file holding dataset ``x`` (N, 96, 96, 3) uint8; ids are ``<file name>/<row>``."""
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcam-predict-")))
    handle = stack.enter_context(I.open_h5(path, scratch))
    x = I.h5_dataset(handle, "x", path)
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or x.dtype != np.uint8:
        raise DataError(f"{path}: dataset 'x' is {x.dtype} {x.shape}; expected uint8 (N, 96, 96, 3)")
    name = path.name.removesuffix(".gz")

    def batches() -> Iterator[Batch]:
        for start in range(0, x.shape[0], H5_BLOCK):
            stop = min(start + H5_BLOCK, x.shape[0])
            try:
                images = x[start:stop]
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"{path}: dataset 'x' rows {start}..{stop - 1} cannot be read, truncated or "
                    f"corrupt ({I.first_line(exc)})"
                ) from None
            yield images, [f"{name}/{row}" for row in range(start, stop)], None

    return PatchSource(f"HDF5 file {path}", int(x.shape[0]), batches)


def _flat_source(folder: Path, files: list[Path], convert: bool) -> PatchSource:
    """Image files with no labels; ids are paths relative to ``folder``."""
    ids = [p.relative_to(folder).as_posix() for p in files]
    inner = I.file_batches(files, np.zeros(len(files), dtype=np.uint8), ids, None, convert, I.Stats(), None)

    def batches() -> Iterator[Batch]:
        for images, _labels, chunk_ids, _slides in inner():
            yield images, list(chunk_ids), None

    return PatchSource(f"{len(files)} images in {folder}", len(files), batches)


def image_files(folder: Path) -> list[Path]:
    """The image files (png, jpg, tif) directly in ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in I.IMAGE_EXTENSIONS
    )


def open_patch_source(
    path: Path, stack: contextlib.ExitStack, *, convert: bool = False, files: list[Path] | None = None
) -> PatchSource:
    """A :class:`PatchSource` for a file or folder; ``files`` restricts a flat folder to these images.

    Raises DataError naming ``path`` when it holds nothing to predict.
    """
    if path.is_file():
        if path.name.endswith((".h5", ".h5.gz")):
            return _h5_source(path, stack)
        if path.suffix.lower() in I.IMAGE_EXTENSIONS:
            return _flat_source(path.parent, [path], convert)
        raise DataError(f"{path}: unsupported format (expected a slide, an HDF5 file or a patch image)")
    if files is not None:
        return _flat_source(path, files, convert)
    try:
        fmt = I.detect_format(path)
    except DataError:
        fmt = None
    if fmt in ("hdf5", "synthetic"):
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcam-predict-")))
        return _from_parts(I.hdf5_parts(path, 0, 0, convert, scratch, I.Stats()), f"HDF5 splits in {path}")
    if fmt == "kaggle":
        return _from_parts(I.kaggle_parts(path, 0, 0, convert, I.Stats(), None), f"Kaggle layout in {path}")
    if fmt == "folders":
        return _from_parts(I.folder_parts(path, 0, 0, convert, I.Stats(), None), f"class folders in {path}")
    flat = image_files(path)
    if not flat:
        raise DataError(
            f"{path}: empty folder: no slides, HDF5 files or patch images "
            f"(*{', *'.join(I.IMAGE_EXTENSIONS)}) to predict"
        )
    return _flat_source(path, flat, convert)
