"""Augment and write TFRecord shards: the training step's only input format.

Output directory (built under a temporary name, renamed into place on success)::

    train-00000-of-00005.tfrecord ...   originals + materialised augmented copies, shuffled
    valid-00000-of-00001.tfrecord ...   originals in split order
    test-00000-of-00001.tfrecord  ...
    index.json                          written last: counts, names, sizes, sha256s

Training shards hold every training image once plus ``augment.copies`` augmented
copies of it (the study's "original + augmented" set), all shuffled across shards by
``seed``. Copies are made with :func:`pcam.augment.augment_batch` under seeds derived
from ``seed``, so the same dataset, split, config and seed give byte-identical
shards. Online augmentation in :mod:`pcam.input` is separate and happens per batch.

Encoding choice, measured on the 20,000-image real train sample (pcam-sample, JPEG
sourced), 2-core CPU box shared with other jobs (load 4-9, so absolute speeds are
low and noisy; ratios held across runs), TF 2.21, best of the runs:

==========  ===========  ==============  ====================================
encoding    bytes/image  write images/s  tf.data read+decode images/s, B=256
==========  ===========  ==============  ====================================
raw         27,731       2,900           7,700 - 13,000
raw + gzip  24,430       560             2,400 - 2,500
png         23,851       300             600 - 1,200
==========  ===========  ==============  ====================================

H&E texture (and JPEG noise in the sample) barely compresses losslessly: gzip saves
12 % and PNG 14 % of the bytes, at 5-10x the CPU to write and 3-10x to read. So
the default is ``raw`` without compression: reading must outrun training on the
same CPU (a CNN trains at ~170 images/s on 2 cores), and 28 KB per image is 7 GB
for the official 262,144-image train split, fine on local disk or a bucket. gzip
is there for slow networks, PNG for archives.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pcam import IMAGE_SHAPE
from pcam.argtypes import integer
from pcam.augment import augment_numpy
from pcam.config import AugmentConfig, ShardConfig, load_config
from pcam.dataset import IMAGES_FILE, SPLITS, label_counts, open_dataset
from pcam.errors import DataError
from pcam.fsutil import atomic_dir, check_output, check_shape, file_sha256, read_json, write_json
from pcam.records import TFRecordFileWriter, compression_type, encode_example
from pcam.split import SPLIT_FILE, load_split

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
INDEX_SCHEMA = {
    "format_version": int,
    "encoding": str,
    "compression": str,
    "image_shape": [int],
    "splits": {
        str: {
            "records": int,
            "labels": {str: int},
            "shards": [{"name": str, "records": int, "bytes": int, "sha256": str}],
        }
    },
}
"""What readers of index.json rely on (checked by :func:`pcam.fsutil.check_shape`)."""
CHUNK = 1024
"""Records read, augmented and encoded together; part of the seed derivation, so fixed."""


def shard_name(split: str, i: int, n: int) -> str:
    """File name of shard ``i`` of ``n`` of a split (``train-00001-of-00004.tfrecord``)."""
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _load_split(
    split_dir: str | os.PathLike[str], count: int, images_sha256: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The split's indices and its split.json header, checked to belong to the dataset.

    A split.json that ``pcam split`` wrote names its dataset (the images' sha256); a
    hand-written one may not, and then only its indices' range is checked.
    """
    path = Path(split_dir) / SPLIT_FILE
    indices = load_split(split_dir)
    made_for = read_json(path).get("dataset", {}).get("images_sha256", images_sha256)
    if made_for != images_sha256:
        raise DataError(
            f"{path}: made for another dataset (images sha256 {str(made_for)[:12]}, this dataset's "
            f"{images_sha256[:12]}); split this dataset again"
        )
    for name, rows in indices.items():
        bad = rows[(rows < 0) | (rows >= count)]
        if len(bad):
            raise DataError(
                f"{path}: indices.{name} holds {int(bad[0])}, outside the dataset's 0..{count - 1} "
                "(split made for another dataset?)"
            )
    header = {k: v for k, v in read_json(path).items() if k != "indices"}
    return indices, header


def _plan(indices: np.ndarray, copies: int, shuffle: bool, rng: np.random.Generator) -> np.ndarray:
    """Rows (source index, copy number); copy 0 is the original."""
    plan = np.stack([np.repeat(indices, copies + 1), np.tile(np.arange(copies + 1), len(indices))], axis=1)
    if shuffle:
        plan = plan[rng.permutation(len(plan))]
    return plan


def _write_split(
    ds: Any,
    name: str,
    plan: np.ndarray,
    out: Path,
    augment_cfg: AugmentConfig,
    shard_cfg: ShardConfig,
    seed: int,
    bar: tqdm,
) -> list[dict[str, Any]]:
    """Write one split's records in ``plan`` order, cut into shards of near-equal size."""
    if len(plan) == 0:
        return []
    n_shards = math.ceil(len(plan) / shard_cfg.records_per_shard)
    bounds = np.cumsum([len(part) for part in np.array_split(np.arange(len(plan)), n_shards)])
    ids = ds.ids
    shards: list[dict[str, Any]] = []
    writer = None
    try:
        for start in range(0, len(plan), CHUNK):
            rows = plan[start : start + CHUNK]
            images = ds.images[rows[:, 0]]
            copies = rows[:, 1] > 0
            if copies.any():
                images[copies] = augment_numpy(images[copies], augment_cfg, [seed, start // CHUNK])
            for j, (source, copy) in enumerate(rows):
                if writer is None:
                    shard = shard_name(name, len(shards), n_shards)
                    writer = TFRecordFileWriter(out / shard, shard_cfg.compression)
                    shards.append({"name": shard, "records": 0})
                record_id = ids[source] if copy == 0 else f"{ids[source]}#aug{copy}"
                writer.write(encode_example(images[j], ds.labels[source], record_id, shard_cfg.encoding))
                shards[-1]["records"] += 1
                if start + j + 1 == bounds[len(shards) - 1]:
                    writer.close()
                    shards[-1].update(bytes=writer.bytes, sha256=writer.sha256)
                    writer = None
            bar.update(len(rows))
    finally:
        if writer is not None:
            writer.close()
    return shards


def write_shards(
    dataset_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    augment_cfg: AugmentConfig,
    shard_cfg: ShardConfig,
    seed: int,
    *,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write train/valid/test shards and ``index.json``; return the index."""
    inputs = [dataset_dir, split_dir]
    check_output(out_dir, "shards", inputs=inputs, force=force)
    ds = open_dataset(dataset_dir)
    indices, split = _load_split(split_dir, len(ds), ds.manifest["files"][IMAGES_FILE]["sha256"])
    compression_type(shard_cfg.compression)  # reject unknown values before any work
    plans = {}
    for stream, name in enumerate(SPLITS):
        training = name == "train"
        rng = np.random.default_rng([seed, stream])
        plans[name] = _plan(indices[name], augment_cfg.copies if training else 0, training, rng)
    total = sum(len(p) for p in plans.values())
    if total == 0:
        raise DataError(f"{Path(split_dir) / SPLIT_FILE}: every split is empty")
    manifest = ds.manifest
    index: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "encoding": shard_cfg.encoding,
        "compression": shard_cfg.compression,
        "records_per_shard": shard_cfg.records_per_shard,
        "image_shape": list(IMAGE_SHAPE),
        "seed": seed,
        "augment": {k: getattr(augment_cfg, k) for k in augment_cfg.__dataclass_fields__},
        "source_manifest": {
            "source": manifest.get("source"),
            "format": manifest.get("format"),
            "synthetic": manifest.get("synthetic"),
            "count": manifest.get("count"),
            "sha256": {name: info["sha256"] for name, info in manifest["files"].items()},
        },
        "split_mode": split.get("mode"),
        "split_seed": split.get("seed"),
        # What the split did (origin of each split, slide-disjointness of each pair), carried
        # along so the report states it without needing split.json itself.
        "split_facts": {k: split[k] for k in ("origin", "pairs", "notes") if k in split},
        "splits": {},
    }
    log.info("writing %d records (%s, compression %s) to %s", total, shard_cfg.encoding, shard_cfg.compression, out_dir)
    with (
        atomic_dir(out_dir, "shards", inputs=inputs, force=force) as tmp,
        tqdm(total=total, desc="shard", unit="img", disable=not progress) as bar,
    ):
        for name in SPLITS:
            plan = plans[name]
            shards = _write_split(ds, name, plan, tmp, augment_cfg, shard_cfg, seed, bar)
            index["splits"][name] = {
                "records": int(len(plan)),
                "originals": int((plan[:, 1] == 0).sum()),
                "augmented_copies": augment_cfg.copies if name == "train" else 0,
                "labels": label_counts(ds.labels[plan[:, 0]]),
                "shards": shards,
            }
        write_json(tmp / INDEX_FILE, index)
    return index


def load_index(shards_dir: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Read ``index.json`` and check every shard exists with the recorded size (and sha256)."""
    root = Path(shards_dir)
    index = read_json(root / INDEX_FILE)
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{root / INDEX_FILE}: format_version is not {FORMAT_VERSION} (not written by `pcam shard`?)")
    check_shape(index, INDEX_SCHEMA, root / INDEX_FILE)
    for split, info in index["splits"].items():
        in_shards = sum(s["records"] for s in info["shards"])
        if info["records"] != in_shards or sum(info["labels"].values()) != in_shards:
            raise DataError(
                f"{root / INDEX_FILE}: split {split!r} says {info['records']} records "
                f"(labels {info['labels']}) but its shards hold {in_shards} (edited or corrupt)"
            )
        for shard in info["shards"]:
            path = root / shard["name"]
            if not path.is_file():
                raise DataError(f"{path}: shard of split {split!r} is missing (listed in {INDEX_FILE})")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise DataError(f"{path}: {size} bytes, {INDEX_FILE} says {shard['bytes']} (truncated or changed)")
            if verify and file_sha256(path) != shard["sha256"]:
                raise DataError(f"{path}: sha256 does not match {INDEX_FILE} (corrupt or changed)")
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam shard`` options on ``parser``."""
    parser.add_argument("--dataset", required=True, help="canonical dataset directory (from `pcam ingest`)")
    parser.add_argument("--split", required=True, help="split directory holding split.json (from `pcam split`)")
    parser.add_argument("--out", required=True, help="output directory for the shards and index.json")
    parser.add_argument("--config", help="experiment YAML (its augment:, shard: and seed are used)")
    parser.add_argument("--seed", type=integer, help="override the config's seed")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam shards directory")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam shard`` (augment and write TFRecord shards with index.json); returns the exit code."""
    cfg = load_config(args.config, {"seed": args.seed})
    index = write_shards(args.dataset, args.split, args.out, cfg.augment, cfg.shard, cfg.seed, force=args.force)
    for name, info in index["splits"].items():
        print(f"{name}: {info['records']} records in {len(info['shards'])} shards")
    print(f"wrote {Path(args.out) / INDEX_FILE}")
    return 0
