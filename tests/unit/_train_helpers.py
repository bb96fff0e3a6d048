"""Small real-image inputs for the training tests (no shards needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def load_real(pcam_sample: Path, split: str = "train", per_class: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` real patches of each label, interleaved, as float32 0..255 and float32 labels."""
    images, labels = [], []
    for label in (0, 1):
        files = sorted((pcam_sample / split / str(label)).glob("*.jpg"))[:per_class]
        images += [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]
        labels += [label] * len(files)
    order = np.argsort(np.arange(len(labels)) % per_class, kind="stable")  # 0,1,0,1,...
    return np.stack(images)[order], np.asarray(labels, dtype=np.float32)[order]


def datasets(x: np.ndarray, y: np.ndarray, batch_size: int, n_valid: int, seed: int = 0):
    """(epoch -> shuffled train dataset, valid dataset, steps per epoch) from arrays."""
    import tensorflow as tf

    xt, yt, xv, yv = x[n_valid:], y[n_valid:], x[:n_valid], y[:n_valid]

    def train_ds(epoch: int):
        ds = tf.data.Dataset.from_tensor_slices((xt, yt))
        return ds.shuffle(len(xt), seed=seed * 1000 + epoch).batch(batch_size)

    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(batch_size)
    return train_ds, val, -(-len(xt) // batch_size)
