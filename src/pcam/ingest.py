"""Read PCam in any of its formats into one validated canonical dataset (:mod:`pcam.dataset`).

Formats (``fmt``):

``hdf5``
    The official files ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` or
    ``.h5.gz`` (datasets ``x`` (N, 96, 96, 3) uint8 and ``y`` (N, 1, 1, 1)), plus the
    optional ``_meta.csv`` whose ``wsi`` column gives the slide of every patch. A
    ``.gz`` file is stream-decompressed into a temporary file beside the cache (HDF5
    needs random access), one split at a time, and deleted afterwards; images are read
    in blocks of :data:`BLOCK` rows, so memory stays bounded for the 6 GB train file.
``kaggle``
    ``train/<id>.tif`` + ``train_labels.csv`` (id,label). Every patch goes to source
    split ``train`` (the study splits them randomly); ``test/`` is unlabelled and skipped.
``folders``
    ``<root>/<split>/<label>/*.{png,jpg,jpeg,tif,tiff}`` (split: train, valid/val, test;
    label: 0 or 1), or ``<root>/<label>/*`` (all ``train``), with an optional
    ``labels.csv`` (path,split,label[,slide|wsi]) that then lists the patches.
``synthetic``
    A directory written by :func:`pcam.synth.write_synthetic` (it is HDF5), or the
    literal source ``synthetic``: generate into a temporary directory first.
``official``
    Download the Zenodo files (md5-checked, resumable) into the cache, then read them.
``auto``
    Tell the format from what the source holds.

Sources: a local path, ``gs://`` (copied to a local temporary directory with
:mod:`pcam.storage`), or ``http(s)://`` (an archive ``.zip``/``.tar[.gz]``/``.tgz`` of any
layout above, or a directory URL holding the official file names, i.e. a mirror).

Every image is checked to be 96x96x3 uint8 RGB and every label to be 0 or 1; anything
else stops with a :class:`DataError` naming the file (or HDF5 dataset and row). With
``convert=True`` other images are converted instead: Pillow ``convert("RGB")``
(grayscale is replicated, an alpha channel is dropped without compositing, palette
images are expanded), 16-bit/float data are scaled to 0..255 first (uint16 / 257,
float in [0, 1] x 255), and other sizes are resized to 96x96 bilinearly. Exact
duplicate images are reported in the manifest (the writer hashes every image).

``limit_per_split`` keeps at most N patches per source split, half of each label
where possible, chosen with a generator seeded by ``seed`` and the split name, kept in
source order. Nothing is written unless everything validates: the output directory is
built under a temporary name and only renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pcam import IMAGE_SHAPE
from pcam.argtypes import integer, positive_int
from pcam.config import FORMATS, SyntheticConfig
from pcam.dataset import KIND as DATASET_KIND
from pcam.dataset import SPLITS, DatasetWriter
from pcam.errors import ConfigError, DataError
from pcam.fsutil import CHUNK, check_output, is_remote, local_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
LABEL_DIRS = ("0", "1")
H5_PREFIX = "camelyonpatch_level_2_split"
BLOCK = 4096
"""HDF5 rows read per step (4096 x 27 KB = 113 MB)."""
FILE_BATCH = 512
"""Image files decoded per writer batch."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
GCS_TIMEOUT_S = float(os.environ.get("PCAM_GCS_TIMEOUT", "120"))
"""How long the first contact with a gs:// URI may take before it counts as unreachable."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("PCAM_CACHE", Path.home() / ".cache" / "pcam")).expanduser()


@dataclass
class _Part:
    """One source split: how many patches it contributes and how to stream them."""

    split: str
    count: int
    batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, list[str], list[str] | None]]]
    available: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Stats:
    converted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_converted(self) -> None:
        with self.lock:
            self.converted += 1


def ingest(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "auto",
    convert: bool = False,
    limit_per_split: int = 0,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    synthetic: SyntheticConfig | None = None,
    workers: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Read ``source`` (format ``fmt``) into a canonical dataset at ``out_dir``; return its manifest.

    ``cache_dir`` holds downloads (default ``$PCAM_CACHE`` or ``~/.cache/pcam``);
    ``synthetic`` sizes the data generated for the source ``synthetic``; ``workers``
    threads decode image files (default: CPU count, at most 8).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"config key 'data.format': unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if limit_per_split < 0:
        raise ConfigError(f"config key 'data.limit_per_split': must be >= 0, got {limit_per_split}")
    source = str(source)
    local_source = None if source in ("official", "synthetic") else source
    check_output(out_dir, DATASET_KIND, inputs=[local_source], force=force)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stats = _Stats()
    with contextlib.ExitStack() as stack:
        root, fmt, is_synthetic = _resolve(source, fmt, cache, seed, synthetic or SyntheticConfig(), stack)
        if fmt == "auto":
            fmt = detect_format(root)
        if fmt in ("hdf5", "synthetic"):
            is_synthetic = is_synthetic or fmt == "synthetic" or (root / "SYNTHETIC.json").exists()
            gz = any(p.name.endswith(".h5.gz") for p in root.iterdir())
            scratch = Path(stack.enter_context(_scratch_dir(cache))) if gz else root  # only .gz needs scratch
            parts = _hdf5_parts(root, limit_per_split, seed, convert, scratch, stats)
        elif fmt == "kaggle":
            parts = _kaggle_parts(root, limit_per_split, seed, convert, stats, workers)
        else:
            parts = _folder_parts(root, limit_per_split, seed, convert, stats, workers)
        manifest = _write(
            parts,
            out_dir,
            force,
            source,
            "synthetic" if is_synthetic else fmt,
            is_synthetic,
            {
                "reader": "hdf5" if fmt == "synthetic" else fmt,
                "convert": convert,
                "limit_per_split": limit_per_split,
                "seed": seed,
                "source_available": {p.split: p.available for p in parts},
                "notes": [note for p in parts for note in p.notes],
            },
            stats,
        )
    dup = manifest["duplicates"]["count"]
    if dup:
        log.warning("%s: %d exact duplicate images (first pairs in manifest.json)", source, dup)
    log.info("ingested %s (%s) into %s: %s", source, manifest["format"], out_dir, manifest["counts"])
    return manifest


def _write(
    parts: list[_Part],
    out_dir: str | os.PathLike[str],
    force: bool,
    source: str,
    fmt: str,
    synthetic: bool,
    extra: dict[str, Any],
    stats: _Stats,
) -> dict[str, Any]:
    total = sum(p.count for p in parts)
    if total == 0:
        raise DataError(f"{source}: no patches found")
    writer = DatasetWriter(out_dir, total, force=force)
    try:
        with tqdm(total=total, unit="img", desc="ingest", disable=None, mininterval=2) as bar:
            for part in parts:
                for images, labels, ids, slides in part.batches():
                    writer.add(images, labels, ids, part.split, slides)
                    bar.update(len(images))
        extra["converted"] = stats.converted
        return writer.finish(source, fmt, synthetic=synthetic, extra=extra)
    except BaseException:
        writer.abort()
        raise


# ----------------------------------------------------------------------------- sources


def _resolve(
    source: str, fmt: str, cache: Path, seed: int, sizes: SyntheticConfig, stack: contextlib.ExitStack
) -> tuple[Path, str, bool]:
    """A local directory for ``source`` (downloading or generating it if needed)."""
    if source == "synthetic":
        from pcam.synth import write_synthetic

        tmp = Path(stack.enter_context(_scratch_dir(cache)))
        return write_synthetic(tmp / "synthetic", sizes, seed), "hdf5", True
    if source == "official" or fmt == "official":
        from pcam.download import ZENODO_URL, download_official

        if source != "official" and not source.startswith(("http://", "https://")):
            raise ConfigError(
                f"format 'official' downloads; the source must be 'official' or an https:// mirror, not {source!r}"
            )
        base = ZENODO_URL if source == "official" else source
        return download_official(cache / "official", base_url=base), "hdf5", False
    if source.startswith("gs://"):
        tmp = Path(stack.enter_context(_scratch_dir(cache)))
        return _copy_gcs(source, tmp / "gcs"), fmt, False
    if source.startswith(("http://", "https://")):
        return _fetch_http(source, cache, stack), fmt, False
    if is_remote(source):
        raise DataError(f"{source}: unsupported URI scheme; use a local path, gs:// or https://")
    root = local_path(source)
    if not root.exists():
        raise DataError(f"{root}: does not exist")
    if root.is_file():
        if root.name.startswith(H5_PREFIX):
            return root.parent, fmt, False
        raise DataError(f"{root}: is a file; point ingest at the directory holding the data")
    return root, fmt, False


@contextlib.contextmanager
def _scratch_dir(cache: Path) -> Iterator[str]:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ingest-", dir=cache) as tmp:
        yield tmp


def _copy_gcs(uri: str, dest: Path) -> Path:
    """Copy a gs:// file or folder tree to ``dest`` through :mod:`pcam.storage`.

    The first call (what is there?) runs in a daemon thread with a timeout: without
    network the client retries with backoff up to its deadline, and one clear error
    naming the URI is more useful than a long wait. Errors arrive as one DataError line.
    """
    from pcam import storage

    answer: dict[str, Any] = {}

    def probe() -> None:
        try:
            answer["isfile"] = storage.is_file(uri)
            answer["files"] = [] if answer["isfile"] else storage.walk(uri)
        except Exception as exc:  # noqa: BLE001 - re-raised below in the caller's thread
            answer["error"] = exc

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(GCS_TIMEOUT_S)
    if worker.is_alive():
        raise DataError(
            f"{uri}: no answer from Google Cloud Storage within {GCS_TIMEOUT_S:.0f} s (no network or credentials?)"
        )
    if "error" in answer:
        if isinstance(answer["error"], DataError):
            raise answer["error"]
        raise DataError(f"{uri}: cannot read ({_first_line(answer['error'])})")
    if answer["isfile"]:
        target = dest / uri.rstrip("/").rsplit("/", 1)[-1]
        storage.download_file(uri, target)
        return _unpack_if_archive(target, dest)
    if not answer["files"]:
        raise DataError(f"{uri}: does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    for name in tqdm(answer["files"], desc=f"copy {uri}", unit="file", disable=len(answer["files"]) < 100):
        storage.download_file(storage.join(uri, *name.split("/")), dest / name)
    return dest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fetch_http(url: str, cache: Path, stack: contextlib.ExitStack) -> Path:
    """Download an archive (and unpack it), or treat the URL as a mirror of the official files."""
    from pcam.download import download_official, fetch

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(ARCHIVE_SUFFIXES):
        archive = fetch(url, cache / "downloads" / f"{key}-{name}", None, retries=1)
        tmp = Path(stack.enter_context(_scratch_dir(cache)))
        return _unpack_if_archive(archive, tmp)
    return download_official(cache / "mirror" / key, base_url=url, retries=1)


def _unpack_if_archive(path: Path, dest: Path) -> Path:
    """Unpack a .zip/.tar[.gz] into ``dest``; return the data root (a single top folder is entered)."""
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        return path.parent
    out = dest / "unpacked"
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"{path}: unsafe member path {member!r} in archive")
                archive.extractall(out)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(out, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot unpack archive ({exc})") from None
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


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


# ----------------------------------------------------------------------------- validation


def select(labels: np.ndarray, limit: int, seed: int, split: str) -> np.ndarray:
    """Sorted indices of at most ``limit`` patches, half per label where possible (seeded)."""
    n = len(labels)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    k_pos = min(len(pos), limit // 2)
    k_neg = min(len(neg), limit - k_pos)
    k_pos = min(len(pos), limit - k_neg)
    chosen = np.concatenate([rng.choice(pos, k_pos, replace=False), rng.choice(neg, k_neg, replace=False)])
    return np.sort(chosen)


def check_labels(values: Any, where: Callable[[int], str]) -> np.ndarray:
    """Labels as uint8, or a DataError naming the first bad one (``where(i)`` names row i)."""
    raw = pd.to_numeric(pd.Series(np.asarray(values).ravel()), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isin(raw, (0.0, 1.0)))
    if len(bad):
        i = int(bad[0])
        value = np.asarray(values).ravel()[i]
        value = value.item() if isinstance(value, np.generic) else value
        raise DataError(
            f"{where(i)}: label {value!r} is not 0 or 1" + (f" ({len(bad)} bad labels in all)" if len(bad) > 1 else "")
        )
    return raw.astype(np.uint8)


_MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "RGBA": "RGBA",
    "P": "palette",
    "1": "1-bit",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float pixel data to uint8 (only used with convert=True)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return np.clip(np.rint(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if finite.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def _convert_pil(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != IMAGE_SHAPE[:2][::-1]:
        image = image.resize(IMAGE_SHAPE[:2][::-1], Image.Resampling.BILINEAR)
    return np.asarray(image)


def _convert_array(image: np.ndarray) -> np.ndarray:
    """One HDF5 row of any shape/dtype to (96, 96, 3) uint8 (convert=True)."""
    data = _to_uint8(image)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return _convert_pil(Image.fromarray(data))


def read_image(path: Path, convert: bool, stats: _Stats | None = None) -> np.ndarray:
    """Decode one image file with Pillow; check (or, with ``convert``, fix) shape and mode."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "RGB" and image.size == (IMAGE_SHAPE[1], IMAGE_SHAPE[0]):
                return np.asarray(image)
            if not convert:
                kind = _MODE_NAMES.get(image.mode, f"mode {image.mode}")
                raise DataError(
                    f"{path}: {image.size[0]}x{image.size[1]} {kind} image; expected 96x96 RGB "
                    "uint8 (ingest with convert=True / --convert to convert and resize)"
                )
            if stats is not None:
                stats.count_converted()
            return _convert_pil(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def _file_batches(
    paths: list[Path],
    labels: np.ndarray,
    ids: list[str],
    slides: list[str] | None,
    convert: bool,
    stats: _Stats,
    workers: int | None,
):
    """Decode files in batches with a thread pool (Pillow releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(chunk: list[Path]) -> np.ndarray:
        return np.stack([read_image(p, convert, stats) for p in chunk])

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, list[str], list[str] | None]]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), FILE_BATCH):
                stop = min(len(paths), start + FILE_BATCH)
                step = max(1, (stop - start) // (workers * 2))
                chunks = [paths[i : min(stop, i + step)] for i in range(start, stop, step)]
                images = np.concatenate(list(pool.map(decode, chunks)))
                yield images, labels[start:stop], ids[start:stop], slides[start:stop] if slides else None

    return batches


# ----------------------------------------------------------------------------- hdf5


def _h5_file(root: Path, split: str, kind: str) -> Path | None:
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
def _open_h5(path: Path, scratch: Path) -> Iterator[h5py.File]:
    """Open an .h5 or .h5.gz file; the decompressed copy is deleted on exit."""
    local = _gunzip(path, scratch) if path.name.endswith(".gz") else path
    try:
        try:
            handle = h5py.File(local, "r")
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file, truncated or corrupt ({_first_line(exc)})") from None
        with handle:
            yield handle
    finally:
        if local != path:
            local.unlink(missing_ok=True)


def _dataset(handle: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        raise DataError(f"{path}: no dataset {key!r} (found: {', '.join(handle.keys()) or 'nothing'})")
    return handle[key]


def _hdf5_parts(root: Path, limit: int, seed: int, convert: bool, scratch: Path, stats: _Stats) -> list[_Part]:
    parts = []
    for split in SPLITS:
        x_path, y_path = _h5_file(root, split, "x"), _h5_file(root, split, "y")
        if x_path is None and y_path is None:
            continue
        if x_path is None or y_path is None:
            missing = f"{H5_PREFIX}_{split}_{'x' if x_path is None else 'y'}.h5[.gz]"
            raise DataError(f"{root / missing}: missing (the {split} split needs both x and y files)")
        with _open_h5(y_path, scratch) as handle:
            y = _dataset(handle, "y", y_path)
            try:
                raw = y[()]
            except OSError as exc:
                raise DataError(
                    f"{y_path}: dataset 'y' cannot be read, truncated or corrupt ({_first_line(exc)})"
                ) from None
        n = raw.shape[0] if raw.ndim else 0
        if raw.size != n:
            raise DataError(f"{y_path}: dataset 'y' has shape {raw.shape}; expected (N,) or (N, 1, 1, 1)")
        labels = check_labels(raw, lambda i, p=y_path: f"{p}: dataset 'y' row {i}")
        slides, meta_note = _meta_slides(root / f"{H5_PREFIX}_{split}_meta.csv", n)
        chosen = select(labels, limit, seed, split)
        parts.append(
            _Part(
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
    if not path.exists():
        return None, f"{path.name}: absent, slides unknown"
    try:
        meta = pd.read_csv(path, dtype={"wsi": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({_first_line(exc)})") from None
    if "wsi" not in meta.columns:
        raise DataError(f"{path}: no 'wsi' column (found: {', '.join(map(str, meta.columns))})")
    if len(meta) != n:
        raise DataError(f"{path}: {len(meta)} rows but the y file has {n}")
    if meta["wsi"].isna().any():
        raise DataError(f"{path}: row {int(np.flatnonzero(meta['wsi'].isna())[0])} has no wsi")
    return meta["wsi"].astype(str).tolist(), ""


def _h5_batches(
    x_path: Path,
    split: str,
    labels: np.ndarray,
    slides: list[str] | None,
    chosen: np.ndarray,
    convert: bool,
    scratch: Path,
    stats: _Stats,
):
    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, list[str], list[str] | None]]:
        with _open_h5(x_path, scratch) as handle:
            x = _dataset(handle, "x", x_path)
            if x.ndim < 1 or x.shape[0] != len(labels):
                raise DataError(
                    f"{x_path}: dataset 'x' has {x.shape[0] if x.ndim else 0} rows, the y file {len(labels)}"
                )
            ok = x.dtype == np.uint8 and x.shape[1:] == IMAGE_SHAPE
            if not ok and not convert:
                raise DataError(
                    f"{x_path}: dataset 'x' is {x.dtype} {x.shape[1:]}; expected uint8 {IMAGE_SHAPE} "
                    "(ingest with convert=True / --convert to convert and resize)"
                )
            # Blocks of BLOCK source rows: read the span when the selection is dense, else
            # only the chosen rows (h5py point selection), so a small limit stays fast.
            for start in range(0, len(labels), BLOCK):
                rows = chosen[(chosen >= start) & (chosen < start + BLOCK)]
                if not len(rows):
                    continue
                try:
                    span = rows[-1] - rows[0] + 1
                    if len(rows) == span:  # every row of the span: no second (fancy-index) copy
                        images = x[rows[0] : rows[-1] + 1]
                    elif len(rows) * 4 >= span:
                        images = x[rows[0] : rows[-1] + 1][rows - rows[0]]
                    else:
                        images = x[rows]
                except (OSError, ValueError) as exc:
                    raise DataError(
                        f"{x_path}: dataset 'x' rows {rows[0]}..{rows[-1]} cannot be read, "
                        f"truncated or corrupt ({_first_line(exc)})"
                    ) from None
                if not ok:
                    images = np.stack([_convert_array(img) for img in images])
                    for _ in rows:
                        stats.count_converted()
                yield (
                    np.ascontiguousarray(images),
                    labels[rows],
                    [f"{split}/{r}" for r in rows],
                    [slides[r] for r in rows] if slides else None,
                )

    return batches


# ----------------------------------------------------------------------------- image files


def _list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``; hidden entries skipped), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read CSV ({_first_line(exc)})") from None
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


def _kaggle_parts(root: Path, limit: int, seed: int, convert: bool, stats: _Stats, workers: int | None) -> list[_Part]:
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
        _Part(
            "train",
            len(chosen),
            _file_batches(sel_paths, labels[chosen], [ids.iloc[i] for i in chosen], None, convert, stats, workers),
            available=len(paths),
            notes=notes,
        )
    ]


def _folder_parts(root: Path, limit: int, seed: int, convert: bool, stats: _Stats, workers: int | None) -> list[_Part]:
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
            _Part(
                split,
                len(chosen),
                _file_batches(
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
    unlabelled = [p for p in _list_images(root)] if layout[0][0] != root else []
    for folder, split in layout:
        for sub in _subdirs(folder):
            if sub.name not in LABEL_DIRS:
                raise DataError(f"{sub}: unknown label folder; expected {' or '.join(LABEL_DIRS)}")
            rows += [(p.relative_to(root).as_posix(), split, sub.name, "") for p in _list_images(sub, recursive=True)]
        unlabelled += _list_images(folder)
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
    present = set()
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


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        help="local path, gs:// or https:// URI, 'official' or 'synthetic' (default: data.source of --config)",
    )
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--format", choices=FORMATS, default=None, help="source format (default: auto)")
    parser.add_argument(
        "--convert",
        action="store_true",
        default=None,
        help="convert grayscale/RGBA/16-bit to RGB and resize to 96x96 (bilinear) instead of rejecting",
    )
    parser.add_argument(
        "--limit-per-split", type=integer, default=None, help="at most N patches per source split (0 = all)"
    )
    parser.add_argument("--seed", type=integer, default=None)
    parser.add_argument("--cache-dir", default=None, help="where downloads land (default ~/.cache/pcam)")
    parser.add_argument("--workers", type=positive_int, default=None, help="image decoding threads")
    parser.add_argument("--config", default=None, help="experiment YAML: its data section supplies the defaults")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam dataset")


def run(args: argparse.Namespace) -> int:
    from pcam.config import load_config

    cfg = load_config(
        args.config,
        {
            "data.source": args.source,
            "data.format": args.format,
            "data.convert": args.convert,
            "data.limit_per_split": args.limit_per_split,
            "seed": args.seed,
            "data.cache_dir": args.cache_dir,
        },
    )
    data = cfg.data
    manifest = ingest(
        data.source,
        args.out,
        fmt=data.format,
        convert=data.convert,
        limit_per_split=data.limit_per_split,
        seed=cfg.seed,
        cache_dir=data.cache_dir or None,
        synthetic=data.synthetic,
        workers=args.workers,
        force=args.force,
    )
    print(
        f"{args.out}: {manifest['count']} patches {manifest['counts']}, "
        f"{manifest['duplicates']['count']} duplicates, format {manifest['format']}"
    )
    return 0
