"""Read PCam in any of its formats into one validated canonical dataset (:mod:`pcam.dataset`).

Formats (``fmt``):

``hdf5``
    The official files ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` or
    ``.h5.gz``, plus the optional ``_meta.csv`` (slide ids); read in bounded blocks
    (:mod:`pcam.ingest.hdf5`).
``kaggle``
    ``train/<id>.tif`` + ``train_labels.csv`` (id,label) (:mod:`pcam.ingest.layouts`).
``folders``
    ``<root>/<split>/<label>/*`` or ``<root>/<label>/*``, with an optional ``labels.csv``
    (:mod:`pcam.ingest.layouts`; image decoding in :mod:`pcam.ingest.images`).
``synthetic``
    A directory written by :func:`pcam.synth.write_synthetic` (it is HDF5), or the
    literal source ``synthetic``: generate into a temporary directory first.
``official``
    Download the Zenodo files (md5-checked, resumable) into the cache, then read them.
``auto``
    Tell the format from what the source holds.

Sources (:mod:`pcam.ingest.sources`): a local path, ``gs://`` (copied to a local
temporary directory with :mod:`pcam.storage`), or ``http(s)://`` (an archive
``.zip``/``.tar[.gz]``/``.tgz`` of any layout above, or a directory URL holding the
official file names, i.e. a mirror).

Every image is checked to be 96x96x3 uint8 RGB and every label to be 0 or 1; anything
else stops with a :class:`DataError` naming the file (or HDF5 dataset and row). With
``convert=True`` other images are converted instead (see :mod:`pcam.ingest.images`).
Exact duplicate images are reported in the manifest (the writer hashes every image).

``limit_per_split`` keeps at most N patches per source split, half of each label
where possible, chosen with a generator seeded by ``seed`` and the split name, kept in
source order. Nothing is written unless everything validates: the output directory is
built under a temporary name and only renamed into place at the end.

A package rather than one module so that each part reads in one sitting; this
``__init__`` keeps the names other modules import (``ingest``, ``detect_format``,
``select``, ``check_labels``, ``read_image``, ``BLOCK``, ``FILE_BATCH``, ``IMAGE_EXTENSIONS``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pcam.argtypes import integer, positive_int
from pcam.config import FORMATS, SyntheticConfig
from pcam.dataset import KIND as DATASET_KIND
from pcam.dataset import DatasetWriter
from pcam.errors import ConfigError, DataError
from pcam.fsutil import check_output
from pcam.ingest.common import (
    H5_PREFIX,
    IMAGE_EXTENSIONS,
    LABEL_DIRS,
    SPLIT_ALIASES,
    Batch,
    Part,
    Stats,
    check_labels,
    first_line,
    select,
)
from pcam.ingest.hdf5 import BLOCK, h5_dataset, hdf5_parts, open_h5
from pcam.ingest.images import FILE_BATCH, file_batches, list_images, read_image
from pcam.ingest.layouts import detect_format, folder_parts, kaggle_parts
from pcam.ingest.sources import ARCHIVE_SUFFIXES, GCS_TIMEOUT_S, copy_gcs, default_cache_dir, resolve, scratch_dir

__all__ = [
    "ARCHIVE_SUFFIXES",
    "BLOCK",
    "FILE_BATCH",
    "GCS_TIMEOUT_S",
    "H5_PREFIX",
    "IMAGE_EXTENSIONS",
    "LABEL_DIRS",
    "SPLIT_ALIASES",
    "Batch",
    "Part",
    "Stats",
    "add_arguments",
    "check_labels",
    "copy_gcs",
    "default_cache_dir",
    "detect_format",
    "file_batches",
    "first_line",
    "folder_parts",
    "h5_dataset",
    "hdf5_parts",
    "ingest",
    "kaggle_parts",
    "list_images",
    "open_h5",
    "read_image",
    "run",
    "select",
]

log = logging.getLogger(__name__)


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
    """Read ``source`` (format ``fmt``) into a canonical dataset at ``out_dir``.

    Args:
        source: A local path, ``gs://`` or ``http(s)://`` URI, ``official`` or ``synthetic``.
        out_dir: The dataset directory (built under a temporary name, then renamed).
        fmt: One of :data:`pcam.config.FORMATS` (``auto``: tell from what the source holds).
        convert: Convert images of another shape, mode or dtype instead of refusing them.
        limit_per_split: At most this many patches per source split, half per label (0: all).
        seed: Seeds the choice under a limit, and the synthetic data.
        cache_dir: Downloads (default ``$PCAM_CACHE`` or ``~/.cache/pcam``).
        synthetic: Sizes the data generated for the source ``synthetic``.
        workers: Threads decoding image files (default: CPU count, at most 8).
        force: Replace ``out_dir`` even if it is not a pcam dataset.

    Returns:
        The dataset's manifest (counts, checksums, duplicates, notes).

    Raises:
        ConfigError: An unknown format or a negative limit.
        DataError: The source is missing, unreadable or holds invalid patches.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"config key 'data.format': unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if limit_per_split < 0:
        raise ConfigError(f"config key 'data.limit_per_split': must be >= 0, got {limit_per_split}")
    source = str(source)
    local_source = None if source in ("official", "synthetic") else source
    check_output(out_dir, DATASET_KIND, inputs=[local_source], force=force)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stats = Stats()
    with contextlib.ExitStack() as stack:
        root, fmt, is_synthetic = resolve(source, fmt, cache, seed, synthetic or SyntheticConfig(), stack)
        parts, fmt, is_synthetic = _read_parts(
            root, fmt, is_synthetic, limit_per_split, seed, convert, stats, workers, cache, stack
        )
        settings = {"convert": convert, "limit_per_split": limit_per_split, "seed": seed}
        manifest = _write(parts, out_dir, source, fmt, is_synthetic, settings, stats, force=force)
    dup = manifest["duplicates"]["count"]
    if dup:
        log.warning("%s: %d exact duplicate images (first pairs in manifest.json)", source, dup)
    log.info("ingested %s (%s) into %s: %s", source, manifest["format"], out_dir, manifest["counts"])
    return manifest


def _read_parts(
    root: Path,
    fmt: str,
    is_synthetic: bool,
    limit: int,
    seed: int,
    convert: bool,
    stats: Stats,
    workers: int | None,
    cache: Path,
    stack: contextlib.ExitStack,
) -> tuple[list[Part], str, bool]:
    """The parts of the data at ``root`` through the reader of its format; (parts, format, synthetic)."""
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt in ("hdf5", "synthetic"):
        is_synthetic = is_synthetic or fmt == "synthetic" or (root / "SYNTHETIC.json").exists()
        gz = any(p.name.endswith(".h5.gz") for p in root.iterdir())
        scratch = Path(stack.enter_context(scratch_dir(cache))) if gz else root  # only .gz needs scratch
        return hdf5_parts(root, limit, seed, convert, scratch, stats), fmt, is_synthetic
    if fmt == "kaggle":
        return kaggle_parts(root, limit, seed, convert, stats, workers), fmt, is_synthetic
    return folder_parts(root, limit, seed, convert, stats, workers), fmt, is_synthetic


def _write(
    parts: list[Part],
    out_dir: str | os.PathLike[str],
    source: str,
    fmt: str,
    synthetic: bool,
    settings: dict[str, Any],
    stats: Stats,
    *,
    force: bool,
) -> dict[str, Any]:
    """Stream every part into a :class:`~pcam.dataset.DatasetWriter`; nothing is left behind on failure."""
    extra = {
        "reader": "hdf5" if fmt == "synthetic" else fmt,
        **settings,
        "source_available": {p.split: p.available for p in parts},
        "notes": [note for p in parts for note in p.notes],
    }
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
        return writer.finish(source, "synthetic" if synthetic else fmt, synthetic=synthetic, extra=extra)
    except BaseException:
        writer.abort()
        raise


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``pcam ingest``'s options to ``parser``."""
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
    """``pcam ingest``: the options over the config's data section; print the counts."""
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
