"""Bench 1: ingest + shard images/s from each format, against the floor of reading the same bytes.

Formats, all holding the same real pixels (the pcam-sample train split):

* ``folders``: the real JPEG class folders themselves; floor = Pillow decode of the same
  files on the same number of threads ingest uses;
* ``kaggle``: the same pixels written as ``train/<id>.tif`` + ``train_labels.csv``;
  floor = Pillow decode of those .tif files, same threads;
* ``hdf5``: the same pixels written as the official ``..._train_{x,y}.h5``; floor =
  h5py reading ``x`` in the blocks ingest reads.

Shard: ``pcam.shard.write_shards`` (default raw encoding) on the ingested dataset vs
the floor of writing the same pixel bytes with a bare ``tf.io.TFRecordWriter``.

A bare read is a page-cache memcpy (100k+ img/s for HDF5), while ingest and shard
must also write every byte and sha256 it (the manifest and index checksums), and
shard checks the sha256 of the dataset it reads. So HDF5 ingest and shard also get a
*checked floor*: the bare read or write plus exactly that mandatory work (one file
write and one sha256 pass for ingest; the dataset's and the shards' sha256 for
shard). The goal, a ratio >= 0.5, is judged against the decode floor for JPEG/TIFF
(decoding dominates there) and against the checked floor for HDF5 and shard; the
bare-read ratios are printed beside them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from bench.common import OUT, Figure, loadavg, main, quiet_tf, sample_dir

GOAL_RATIO = 0.5
H5_PREFIX = "camelyonpatch_level_2_split"


def _workers() -> int:
    return min(os.cpu_count() or 1, 8)  # ingest's default


def _sample_rows(n: int) -> pd.DataFrame:
    table = pd.read_csv(sample_dir() / "labels.csv")
    train = table[table.split == "train"]
    # Half of each label, in file order (what ingest's limit_per_split keeps).
    return pd.concat([train[train.label == k].head(n // 2) for k in (0, 1)]).sort_values("path")


def _decode(paths: list[Path]) -> np.ndarray:
    def read(p: Path) -> np.ndarray:
        with Image.open(p) as img:
            return np.asarray(img.convert("RGB"))

    with ThreadPoolExecutor(_workers()) as pool:
        return np.stack(list(pool.map(read, paths, chunksize=64)))


def _write_sources(n: int) -> tuple[Path, Path, Path, np.ndarray]:
    """(folders root, kaggle root, hdf5 root, pixels): the same n real patches in each format."""
    rows = _sample_rows(n)
    root = OUT / f"ingest-sources-{n}"
    folders = root / "folders"
    kaggle, hdf5 = root / "kaggle", root / "hdf5"
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        # Class folders: a labels.csv listing exactly these n files of the real sample.
        folders.mkdir(parents=True)
        sample = sample_dir()
        for _, r in rows.iterrows():
            dest = folders / r.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(sample / r.path, dest)
        rows[["path", "split", "label"]].to_csv(folders / "labels.csv", index=False)
        pixels = _decode([sample / p for p in rows.path])
        (kaggle / "train").mkdir(parents=True)
        ids = [f"{i:08x}" for i in range(n)]
        for i, img in zip(ids, pixels, strict=True):
            Image.fromarray(img).save(kaggle / "train" / f"{i}.tif")
        pd.DataFrame({"id": ids, "label": rows.label.to_numpy()}).to_csv(kaggle / "train_labels.csv", index=False)
        hdf5.mkdir()
        with h5py.File(hdf5 / f"{H5_PREFIX}_train_x.h5", "w") as f:
            f.create_dataset("x", data=pixels, chunks=(min(n, 256), 96, 96, 3))
        with h5py.File(hdf5 / f"{H5_PREFIX}_train_y.h5", "w") as f:
            f.create_dataset("y", data=rows.label.to_numpy(np.uint8).reshape(-1, 1, 1, 1))
        (root / "DONE").touch()
    with h5py.File(hdf5 / f"{H5_PREFIX}_train_x.h5") as f:
        pixels = f["x"][()]
    return folders, kaggle, hdf5, pixels


def _h5_floor(root: Path, out: Path | None = None) -> None:
    """Read ``x`` in ingest's blocks; with ``out``, also what ingest must do with the
    bytes: write them once and sha256 them (the checked floor)."""
    from pcam.ingest import BLOCK

    digest = hashlib.sha256()
    with h5py.File(root / f"{H5_PREFIX}_train_x.h5", "r") as f, open(out or os.devnull, "wb") as sink:
        x = f["x"]
        for start in range(0, x.shape[0], BLOCK):
            block = np.ascontiguousarray(x[start : start + BLOCK])
            if out is not None:
                sink.write(block)
                digest.update(block)
    if out is not None:
        out.unlink()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best_pair(measured, floor, repeats: int) -> tuple[float, float]:
    """Interleave measured and floor runs (so both see the same machine load); best of each."""
    a, b = [], []
    for _ in range(repeats):
        b.append(_time(floor))
        a.append(_time(measured))
    return min(a), min(b)


def run(quick: bool = False) -> list[Figure]:
    quiet_tf()
    from pcam.config import AugmentConfig, ShardConfig
    from pcam.fsutil import file_sha256
    from pcam.ingest import ingest
    from pcam.shard import write_shards
    from pcam.split import split_dataset

    n = 1000 if quick else 20000
    repeats = 1 if quick else 2
    folders, kaggle, hdf5, pixels = _write_sources(n)
    figures = []
    floors = {
        "folders": lambda: _decode(sorted(p for p in folders.rglob("*.jpg"))),
        "kaggle": lambda: _decode(sorted((kaggle / "train").glob("*.tif"))),
        "hdf5": lambda: _h5_floor(hdf5),
    }
    sources = {"folders": folders, "kaggle": kaggle, "hdf5": hdf5}
    dataset = OUT / f"ingest-out-{n}"
    for fmt, src in sources.items():

        def measured(src=src, fmt=fmt):
            ingest(src, dataset, fmt=fmt)

        t, t_floor = _best_pair(measured, floors[fmt], repeats)
        load = loadavg()
        figures += [
            Figure(f"ingest_{fmt}_images_per_s", n / t, "img/s", load=load),
            Figure(f"ingest_{fmt}_floor_images_per_s", n / t_floor, "img/s", load=load),
        ]
        if fmt != "hdf5":
            figures.append(
                Figure(
                    f"ingest_{fmt}_vs_floor", t_floor / t, "ratio", f">={GOAL_RATIO}", t_floor / t >= GOAL_RATIO, load
                )
            )
            continue
        t_checked, t_checked_floor = _best_pair(measured, lambda: _h5_floor(hdf5, OUT / "floor.bin"), repeats)
        t = min(t, t_checked)
        ratio = t_checked_floor / t
        figures += [
            Figure("ingest_hdf5_vs_read_floor", t_floor / t, "ratio", load=load),
            Figure("ingest_hdf5_checked_floor_images_per_s", n / t_checked_floor, "img/s", load=loadavg()),
            Figure("ingest_hdf5_vs_checked_floor", ratio, "ratio", f">={GOAL_RATIO}", ratio >= GOAL_RATIO, loadavg()),
        ]
    # Shard: the dataset last ingested (hdf5; same pixels whatever the format).
    split = OUT / f"ingest-split-{n}"
    split_dataset(dataset, split, "random", (0.8, 0.1, 0.1), 0)
    shards = OUT / f"ingest-shards-{n}"
    import tensorflow as tf

    def shard_floor(checked: bool = False) -> None:
        """A bare TFRecordWriter of the pixel bytes; ``checked`` adds the sha256 of the
        dataset read and of the file written (what `pcam shard` must also do)."""
        if checked:
            file_sha256(dataset / "images.npy")
        tmp = OUT / "floor.tfrecord"
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for img in pixels:
                writer.write(img.tobytes())
        if checked:
            file_sha256(tmp)
        tmp.unlink()

    def shard() -> None:
        write_shards(dataset, split, shards, AugmentConfig(copies=0), ShardConfig(), 0, progress=False)

    t, t_floor = _best_pair(shard, shard_floor, repeats)
    t_checked, t_checked_floor = _best_pair(shard, lambda: shard_floor(checked=True), repeats)
    t = min(t, t_checked)
    load = loadavg()
    ratio = t_checked_floor / t
    figures += [
        Figure("shard_images_per_s", n / t, "img/s", load=load),
        Figure("shard_floor_images_per_s", n / t_floor, "img/s", load=load),
        Figure("shard_vs_floor", t_floor / t, "ratio", load=load),
        Figure("shard_checked_floor_images_per_s", n / t_checked_floor, "img/s", load=load),
        Figure("shard_vs_checked_floor", ratio, "ratio", f">={GOAL_RATIO}", ratio >= GOAL_RATIO, load),
    ]
    return figures


if __name__ == "__main__":
    main(run)
