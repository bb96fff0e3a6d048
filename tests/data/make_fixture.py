"""Rebuild ``tests/data/pcam-fixture.zip`` from the real samples (needs ``$PCAM_SHARED``).

    python tests/data/make_fixture.py --shared ../shared

Picks, with a fixed seed, ``TRAIN_PER_LABEL`` patches of each label from
``pcam-sample/train`` and ``VALID_PER_LABEL`` from ``pcam-sample/valid`` (their JPEG
bytes unchanged), plus the first ``KAGGLE_TRAIN`` rows of ``kaggle-sample`` and
``KAGGLE_TEST`` of its unlabelled test files (their .tif bytes unchanged), and writes
them in the samples' own layouts under ``pcam-sample/`` and ``kaggle-sample/`` of one
zip with fixed timestamps, so the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import pandas as pd

TRAIN_PER_LABEL = 90
VALID_PER_LABEL = 80
KAGGLE_TRAIN = 7
KAGGLE_TEST = 2
SEED = 0
ZIP_TIME = (2026, 12, 3, 0, 0, 0)
OUT = Path(__file__).with_name("pcam-fixture.zip")


def _add(archive: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def build(shared: Path, out: Path = OUT) -> Path:
    """Write the fixture zip from ``shared/pcam-sample`` and ``shared/kaggle-sample``; return its path."""
    sample, kaggle = shared / "pcam-sample", shared / "kaggle-sample"
    table = pd.read_csv(sample / "labels.csv")
    picks = []
    for split, n in (("train", TRAIN_PER_LABEL), ("valid", VALID_PER_LABEL)):
        for label in (0, 1):
            rows = table[(table.split == split) & (table.label == label)]
            picks.append(rows.sample(n, random_state=SEED).sort_values("path"))
    chosen = pd.concat(picks)
    labels = pd.read_csv(kaggle / "train_labels.csv", dtype={"id": str}).head(KAGGLE_TRAIN)
    tests = sorted((kaggle / "test").glob("*.tif"))[:KAGGLE_TEST]
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for rel in chosen.path:
            # JPEG does not deflate: store it, byte for byte the sample's file.
            _add(archive, f"pcam-sample/{rel}", (sample / rel).read_bytes(), compress=False)
        buf = io.StringIO()
        chosen.to_csv(buf, index=False)
        _add(archive, "pcam-sample/labels.csv", buf.getvalue().encode(), compress=True)
        for name in labels.id:
            _add(archive, f"kaggle-sample/train/{name}.tif", (kaggle / "train" / f"{name}.tif").read_bytes(), True)
        for path in tests:
            _add(archive, f"kaggle-sample/test/{path.name}", path.read_bytes(), compress=True)
        buf = io.StringIO()
        labels.to_csv(buf, index=False)
        _add(archive, "kaggle-sample/train_labels.csv", buf.getvalue().encode(), compress=True)
    tmp.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="folder holding pcam-sample/ and kaggle-sample/")
    args = parser.parse_args()
    path = build(args.shared)
    print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
