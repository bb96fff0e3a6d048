"""What every reader shares: layout names, the batch a reader streams, label checks and the per-split limit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pcam.dataset import SPLITS
from pcam.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
LABEL_DIRS = ("0", "1")
H5_PREFIX = "camelyonpatch_level_2_split"
"""The official files' common name prefix."""

Batch = tuple[np.ndarray, np.ndarray, list[str], list[str] | None]
"""One writer batch: images (N, 96, 96, 3) uint8, labels (N,) uint8, ids, slides (None when unknown)."""


@dataclass
class Part:
    """One source split: how many patches it contributes and how to stream them."""

    split: str
    count: int
    batches: Callable[[], Iterator[Batch]]
    available: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Stats:
    """How many images were converted (shape, mode or dtype fixed); counted from decoding threads."""

    converted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_converted(self) -> None:
        """Count one converted image."""
        with self.lock:
            self.converted += 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def select(labels: np.ndarray, limit: int, seed: int, split: str) -> np.ndarray:
    """Sorted indices of at most ``limit`` patches, half per label where possible.

    Args:
        labels: The split's labels.
        limit: At most this many (0: all).
        seed: Seeds the choice, together with the split's name.
        split: The source split.

    Returns:
        The chosen indices, in source order.
    """
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
    """Labels as uint8, or a DataError naming the first bad one.

    Args:
        values: Label values of any type (text from a CSV, numbers from HDF5).
        where: Names row ``i`` in the error message.

    Returns:
        The labels, (N,) uint8.

    Raises:
        DataError: A label is not 0 or 1.
    """
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
