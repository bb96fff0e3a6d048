"""tf.data input pipelines over the shards written by :mod:`pcam.shard`.

Every model eats raw pixels: ``(images float32 (B, 96, 96, 3) in 0..255, labels
float32 (B,))``; models own their rescaling, so TTA and training see the same tensors.

Order of the pipeline and why:

1. list the shard files from ``index.json`` (sizes checked; sha256 is left to the step
   that calls :func:`pcam.shard.load_index` once, not every epoch);
2. training: shard order shuffled, records read by a parallel, deterministic
   ``interleave``; evaluation: shards read one after another, so records come in the
   order they were written (the split's order) and ids line up with predictions;
3. shuffle (training only, seeded, reshuffled each epoch), repeat if asked;
4. batch first, then parse + decode + augment the whole batch in one vectorised map
   (``tf.io.parse_example`` and ``decode_raw`` over 256 records cost little more than
   over one, so per-record maps waste most of the CPU);
5. prefetch last.

Online augmentation draws a fresh seed per batch from a seeded
``tf.data.Dataset.random`` that re-randomises each epoch: the same seed gives the
same sequence of augmented batches, and two epochs never repeat one another.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pcam.augment import augment_batch
from pcam.config import AugmentConfig
from pcam.errors import DataError
from pcam.records import compression_type, parse_example
from pcam.shard import load_index

READ_BUFFER = 1 << 20


def _split_files(shards_dir: str | os.PathLike[str], split: str) -> tuple[dict[str, Any], list[str]]:
    index = load_index(shards_dir, verify=False)
    if split not in index["splits"]:
        raise DataError(f"{Path(shards_dir) / 'index.json'}: no split {split!r} (has {', '.join(index['splits'])})")
    info = index["splits"][split]
    if info["records"] == 0:
        raise DataError(f"{Path(shards_dir) / 'index.json'}: split {split!r} is empty")
    return index, [str(Path(shards_dir) / s["name"]) for s in info["shards"]]


def dataset_size(shards_dir: str | os.PathLike[str], split: str) -> int:
    """Records in a split (originals plus materialised copies for train), from index.json."""
    index = load_index(shards_dir, verify=False)
    if split not in index["splits"]:
        raise DataError(f"{Path(shards_dir) / 'index.json'}: no split {split!r}")
    return int(index["splits"][split]["records"])


def _without_autotune_thread(ds: Any) -> Any:
    """``ds`` with tf.data's autotuning optimizer off (AUTOTUNE still picks the parallelism once).

    Why: in TensorFlow 2.21, destroying an iterator waits for the autotuner's background
    thread to wake from its sleep, and that sleep grows to a minute on long epochs. Keras
    makes a new iterator per ``fit`` call and we call ``fit`` once per epoch (resume,
    reseeding), so every epoch ended with a wait of up to 60 s with the CPU idle: 45 s per
    epoch in a 96-s epoch of configs/sample.yaml (bench/RESULTS.md, round 4). With the
    optimizer off the epochs are as fast and end at once.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _records(index: dict[str, Any], files: list[str], *, training: bool, seed: int) -> Any:
    import tensorflow as tf

    compression = compression_type(index["compression"])
    if not training:
        return tf.data.TFRecordDataset(files, compression_type=compression, buffer_size=READ_BUFFER)
    names = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return names.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=READ_BUFFER),
        cycle_length=min(len(files), 4),
        block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def make_dataset(
    shards_dir: str | os.PathLike[str],
    split: str,
    batch_size: int,
    *,
    training: bool,
    augment_cfg: AugmentConfig | None = None,
    seed: int = 0,
    shuffle_buffer: int = 4096,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> Any:
    """Batches of ``(images float32 (B,96,96,3) in 0..255, labels float32 (B,))``.

    ``training=True`` shuffles (seeded) and, when ``augment_cfg`` is given with
    ``online`` set, augments each batch; ``training=False`` keeps the written order
    and never augments.
    """
    import tensorflow as tf

    if batch_size <= 0:
        raise DataError(f"batch_size must be > 0, got {batch_size}")
    index, files = _split_files(shards_dir, split)
    encoding = index["encoding"]
    ds = _records(index, files, training=training, seed=seed)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if not repeat:
        # interleave hides the length from tf.data; stating it gives Keras a progress bar with
        # a total and an epoch end it expects (no "ran out of data" warning every epoch).
        records = int(index["splits"][split]["records"])
        batches = records // batch_size if drop_remainder else math.ceil(records / batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    augment = augment_cfg if training and augment_cfg is not None and augment_cfg.online else None

    def decode(serialized: Any) -> tuple[Any, Any]:
        images, labels, _ = parse_example(serialized, encoding)
        return tf.cast(images, tf.float32), tf.cast(labels, tf.float32)

    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def decode_augment(serialized: Any, draw: Any) -> tuple[Any, Any]:
            images, labels, _ = parse_example(serialized, encoding)
            batch_seed = tf.stack([tf.constant(seed, tf.int64), draw])
            return augment_batch(images, augment, batch_seed, tf.float32), tf.cast(labels, tf.float32)

        ds = tf.data.Dataset.zip((ds, seeds)).map(
            decode_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    else:
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _without_autotune_thread(ds.prefetch(tf.data.AUTOTUNE))


def load_arrays(
    shards_dir: str | os.PathLike[str], split: str, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole split as numpy, in written order: ``(images uint8 (N,96,96,3), labels uint8 (N,), ids str (N,))``.

    The same order as ``make_dataset(..., training=False)``.
    """
    import tensorflow as tf

    index, files = _split_files(shards_dir, split)
    encoding = index["encoding"]
    ds = _records(index, files, training=False, seed=0).batch(batch_size)
    ds = ds.map(lambda s: parse_example(s, encoding), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _without_autotune_thread(ds.prefetch(tf.data.AUTOTUNE))
    n = int(index["splits"][split]["records"])
    images = np.empty((n, *index["image_shape"]), dtype=np.uint8)
    labels = np.empty(n, dtype=np.uint8)
    ids: list[str] = []
    filled = 0
    for batch_images, batch_labels, batch_ids in ds.as_numpy_iterator():
        m = len(batch_labels)
        if filled + m > n:
            raise DataError(f"{shards_dir}: split {split!r} holds more records than index.json says ({n})")
        images[filled : filled + m] = batch_images
        labels[filled : filled + m] = batch_labels
        ids.extend(i.decode() for i in batch_ids)
        filled += m
    if filled != n:
        raise DataError(f"{shards_dir}: split {split!r} holds {filled} records, index.json says {n}")
    return images, labels, np.asarray(ids, dtype=str)
