"""The canonical dataset: what ingest writes and every later step reads.

Layout of a dataset directory::

    images.npy     (N, 96, 96, 3) uint8, memory-mappable (read without loading it whole)
    labels.npy     (N,) uint8 in {0, 1}
    meta.csv       index,id,source_split,label,slide   (slide empty when unknown)
    manifest.json  written last: counts, checksums, source, format, duplicates

Why ``.npy``: one contiguous array is written in a stream (sequential file writes), so
ingest of the 6 GB official training file keeps memory bounded, and shard writing
reads any index subset at memory speed. The directory is built under a temporary
name and renamed into place on :meth:`DatasetWriter.finish`, so an interrupted
ingest leaves nothing that :func:`open_dataset` would accept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pandas as pd

from pcam import IMAGE_SHAPE, __version__
from pcam.errors import DataError
from pcam.fsutil import (
    check_output,
    file_sha256,
    mark_directory,
    read_json,
    temp_dir_beside,
    write_json,
)

FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.csv"
MANIFEST_FILE = "manifest.json"
META_COLUMNS = ("index", "id", "source_split", "label", "slide")
SPLITS = ("train", "valid", "test")
KIND = "dataset"
MANIFEST_SCHEMA = {
    "format_version": int,
    "source": str,
    "format": str,
    "count": int,
    "counts": {str: {str: int}},
    "files": {str: {"sha256": str, "bytes": int}},
}
"""What readers of manifest.json rely on (checked by :func:`pcam.fsutil.check_shape`)."""


class DatasetWriter:
    """Stream patches into a new canonical dataset; nothing is visible until :meth:`finish`.

    ``capacity`` is the exact number of patches that will be added (every reader
    knows it up front: HDF5 shapes, file lists, CSV rows).
    """

    def __init__(self, out_dir: str | os.PathLike[str], capacity: int, *, force: bool = False):
        """Prepare to write exactly ``capacity`` patches into ``out_dir`` (refused when zero)."""
        if capacity <= 0:
            raise DataError(f"{out_dir}: no patches to write (the source is empty)")
        self.out_dir = Path(out_dir)
        self.force = force
        check_output(self.out_dir, KIND, force=force)
        self._tmp = temp_dir_beside(self.out_dir)
        self.capacity = capacity
        self._sha256 = hashlib.sha256()
        try:  # creating the file is the first write: if it fails, callers have no writer to abort()
            # Plain sequential writes, not a memory map: a written memmap page stays in the
            # process's resident set until unmapped, so RSS grew with the file (2 GiB at
            # 65,536 patches; bench/memory_bench.py); written through a file it stays flat.
            self._file = open(self._tmp / IMAGES_FILE, "w+b")  # closed in finish()/abort(); read back for duplicates
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (capacity, *IMAGE_SHAPE)}
            )
            self._header_bytes = len(header.getvalue())
            self._write(header.getvalue())
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._labels = np.zeros(capacity, dtype=np.uint8)
        self._meta: list[tuple[int, str, str, int, str]] = []
        self._first_by_crc: dict[int, int] = {}
        """crc32c of a patch -> the first row with that crc (a plain int: ~100 bytes a patch)."""
        self._more_by_crc: dict[int, list[int]] = {}
        """Later rows whose crc matched but whose bytes did not (distinct patches, rare)."""
        self._duplicates: list[tuple[str, str]] = []
        self._count = 0

    def add(
        self, images: np.ndarray, labels: np.ndarray, ids: list[str], source_split: str, slides: list[str] | None = None
    ) -> None:
        """Append a batch. Callers validate pixels and labels first (naming the source file)."""
        n = len(images)
        if images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
            raise DataError(
                f"batch from {source_split!r}: expected uint8 {IMAGE_SHAPE}, got {images.dtype} {images.shape[1:]}"
            )
        if len(labels) != n or len(ids) != n or (slides is not None and len(slides) != n):
            raise DataError(f"batch from {source_split!r}: images, labels, ids and slides differ in length")
        if source_split not in SPLITS:
            raise DataError(f"unknown source split {source_split!r}; expected one of {SPLITS}")
        if self._count + n > self.capacity:
            raise DataError(f"more patches than announced ({self.capacity})")
        start = self._count
        images = np.ascontiguousarray(images)
        self._write(images.data.cast("B"))  # batches arrive in order; .data: the array's own buffer, no copy
        self._labels[start : start + n] = labels
        for i in range(n):
            self._note_duplicate(start + i, images[i], ids[i])
            self._meta.append((start + i, ids[i], source_split, int(labels[i]), slides[i] if slides else ""))
        self._count += n

    def _write(self, data: Any) -> None:
        """Append to images.npy and to its running sha256: the file is never read back to checksum it."""
        self._file.write(data)
        self._sha256.update(data)

    def _note_duplicate(self, row: int, image: np.ndarray, patch_id: str) -> None:
        """Record ``row`` as a duplicate if an earlier row holds exactly the same pixels.

        crc32c (hardware-accelerated, 6 GB/s) picks candidates and a byte comparison
        with the earlier patch, read back from the file, decides: exact, at a tenth of
        the cost of a cryptographic hash per patch (bench/ingest_bench.py).
        """
        data = image.tobytes()
        crc = google_crc32c.value(data)
        first = self._first_by_crc.setdefault(crc, row)
        if first == row:
            return
        self._file.flush()
        for earlier in (first, *self._more_by_crc.get(crc, ())):
            offset = self._header_bytes + earlier * len(data)
            if os.pread(self._file.fileno(), len(data), offset) == data:
                self._duplicates.append((self._meta[earlier][1], patch_id))
                return
        self._more_by_crc.setdefault(crc, []).append(row)

    def abort(self) -> None:
        """Close and delete the partly written temporary directory; ``out_dir`` is left untouched."""
        self._file.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def finish(
        self, source: str, fmt: str, *, synthetic: bool = False, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Flush, checksum, write manifest.json last, and rename the directory into place."""
        if self._count != self.capacity:
            self.abort()
            raise DataError(f"{source}: announced {self.capacity} patches but read {self._count}")
        try:
            self._file.close()
            np.save(self._tmp / LABELS_FILE, self._labels)
            with open(self._tmp / META_FILE, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(META_COLUMNS)
                writer.writerows(self._meta)
            manifest = self._manifest(source, fmt, synthetic, extra or {})
            write_json(self._tmp / MANIFEST_FILE, manifest)
            mark_directory(self._tmp, KIND)
            check_output(self.out_dir, KIND, force=self.force)  # again: something may have appeared meanwhile
            if self.out_dir.is_dir():
                shutil.rmtree(self.out_dir)
            elif self.out_dir.exists():
                self.out_dir.unlink()
            os.replace(self._tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        return manifest

    def _manifest(self, source: str, fmt: str, synthetic: bool, extra: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        slides: set[str] = set()
        for _, _, split, label, slide in self._meta:
            counts.setdefault(split, {"0": 0, "1": 0})[str(label)] += 1
            if slide:
                slides.add(slide)
        return {
            "format_version": FORMAT_VERSION,
            "pcam_version": __version__,
            "source": source,
            "format": fmt,
            "synthetic": synthetic,
            "count": self._count,
            "image_shape": list(IMAGE_SHAPE),
            "counts": counts,
            "slides_known": bool(slides) and len(slides) > 1,
            "num_slides": len(slides),
            "duplicates": {"count": len(self._duplicates), "examples": self._duplicates[:20]},
            "files": {
                name: {
                    "sha256": self._sha256.hexdigest() if name == IMAGES_FILE else file_sha256(self._tmp / name),
                    "bytes": (self._tmp / name).stat().st_size,
                }
                for name in (IMAGES_FILE, LABELS_FILE, META_FILE)
            },
            **extra,
        }


@dataclass
class CanonicalDataset:
    """A canonical dataset opened read-only: memory-mapped images, labels and metadata."""

    root: Path
    images: np.ndarray
    """Read-only memory map, shape (N, 96, 96, 3), uint8."""
    labels: np.ndarray
    meta: pd.DataFrame
    manifest: dict[str, Any]

    def __len__(self) -> int:
        """Number of patches."""
        return len(self.labels)

    @property
    def ids(self) -> np.ndarray:
        """The source id of every patch, in order."""
        return self.meta["id"].to_numpy(dtype=str)

    @property
    def slides(self) -> np.ndarray | None:
        """Slide id per patch, or None when the source does not say."""
        if not self.manifest.get("slides_known"):
            return None
        return self.meta["slide"].fillna("").astype(str).to_numpy()


def open_dataset(path: str | os.PathLike[str], verify: bool = True) -> CanonicalDataset:
    """Open a dataset written by :class:`DatasetWriter`, checking manifest counts and checksums."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no dataset here (run `pcam ingest` first)")
    manifest = read_json(root / MANIFEST_FILE, MANIFEST_SCHEMA)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{root / MANIFEST_FILE}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    for name, info in manifest["files"].items():
        file = root / name
        if not file.exists():
            raise DataError(f"{file}: missing, but listed in the manifest")
        if file.stat().st_size != info["bytes"]:
            raise DataError(f"{file}: {file.stat().st_size} bytes, manifest says {info['bytes']} (truncated?)")
        if verify and file_sha256(file) != info["sha256"]:
            raise DataError(f"{file}: checksum does not match the manifest (file changed or corrupt)")
    images = np.load(root / IMAGES_FILE, mmap_mode="r")
    labels = np.load(root / LABELS_FILE)
    meta = pd.read_csv(root / META_FILE, dtype={"id": str, "source_split": str, "slide": str}, keep_default_na=False)
    if not (len(images) == len(labels) == len(meta) == manifest["count"]):
        raise DataError(f"{root}: images/labels/meta/manifest counts disagree")
    return CanonicalDataset(root=root, images=images, labels=labels, meta=meta, manifest=manifest)


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """Counts per label, keyed ``'0'`` and ``'1'``, of a label array."""
    counts = Counter(int(x) for x in labels)
    return {"0": counts.get(0, 0), "1": counts.get(1, 0)}
