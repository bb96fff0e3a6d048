"""Fixtures that write tiny real TFRecord shards (owned by the shard step).

``tiny_shards`` is what other steps' tests read: a shards directory (index.json plus
several shards per split: ``records_per_shard`` 64, no materialised copies, default
encoding) built from the data step's ``tiny_dataset`` and ``tiny_split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcam.fsutil import write_json

TINY_RECORDS_PER_SHARD = 64


def sample_patches(pcam_sample: Path, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``per_class`` patches of each label in a pcam-sample split, read by Pillow."""
    from PIL import Image

    table = pd.read_csv(pcam_sample / "labels.csv")
    rows = pd.concat([table[(table.split == split) & (table.label == label)].head(per_class) for label in (0, 1)])
    images = np.stack([np.asarray(Image.open(pcam_sample / p).convert("RGB")) for p in rows.path])
    ids = [Path(p).stem for p in rows.path]
    return images, rows.label.to_numpy(np.uint8), ids


def write_split_json(split_dir: Path, indices: dict[str, list[int]], labels: np.ndarray) -> Path:
    """A hand-written split.json in the documented format (counts from ``labels``; out-of-range rows count as 0)."""

    def counts(rows: list[int]) -> dict[str, int]:
        ones = sum(int(labels[i]) for i in rows if 0 <= i < len(labels))
        return {"0": len(rows) - ones, "1": ones}

    write_json(
        split_dir / "split.json",
        {
            "mode": "official",
            "seed": 0,
            "ratios": [0.7, 0.2, 0.1],
            "grouped_by_slide": False,
            "counts": {k: counts(v) for k, v in indices.items()},
            "indices": {k: sorted(int(i) for i in v) for k, v in indices.items()},
        },
    )
    return split_dir


@pytest.fixture(scope="session")
def tiny_shards(tiny_dataset: Path, tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of ``tiny_dataset`` + ``tiny_split``: copies 0, 64 records per shard, default encoding."""
    from pcam.config import AugmentConfig, ShardConfig
    from pcam.shard import write_shards

    out = tmp_path_factory.mktemp("tiny-shards") / "shards"
    write_shards(
        tiny_dataset,
        tiny_split,
        out,
        AugmentConfig(copies=0),
        ShardConfig(records_per_shard=TINY_RECORDS_PER_SHARD),
        seed=0,
        progress=False,
    )
    return out
