"""Fixtures for ``pcam predict`` tests (owned by the predict step).

* ``real_patches``: 40 tumour and 80 normal real PCam patches from ``pcam-sample/train``.
* ``test_slide``: a pyramidal tiled TIFF (:func:`pcam.slide_synth.write_slide`) of 8x10
  cells at level 0 = 0.486 µm/px (level 1 is PCam's 0.972 µm/px): tumour patches in
  rows 2-4 x cols 3-6, normal patches in the rest of rows 1-6 x cols 1-8, glass around.
* ``mean_model_dir``: a real saved Keras model whose output is a known function of the
  pixels: the mean of all 96x96x3 values / 255 (pooling + a fixed Dense layer), so
  every tile's score says exactly which pixels it saw.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROWS, COLS = 8, 10
TUMOUR = (slice(2, 5), slice(3, 7))
TISSUE = (slice(1, 7), slice(1, 9))


@dataclass
class SlideFixture:
    path: Path
    cells: dict[tuple[int, int], np.ndarray]
    """(row, col) -> the 96x96x3 patch placed there (absent: glass)."""
    tumour: set[tuple[int, int]]


def _read(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="session")
def real_patches(pcam_sample: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(open(pcam_sample / "labels.csv")))
    tumour = [pcam_sample / r["path"] for r in rows if r["split"] == "train" and r["label"] == "1"][:40]
    normal = [pcam_sample / r["path"] for r in rows if r["split"] == "train" and r["label"] == "0"][:80]
    return _read(tumour), _read(normal)


def slide_cells(real_patches: tuple[np.ndarray, np.ndarray]) -> tuple[dict, set]:
    tumour, normal = real_patches
    cells, positive = {}, set()
    for r in range(ROWS):
        for c in range(COLS):
            if TUMOUR[0].start <= r < TUMOUR[0].stop and TUMOUR[1].start <= c < TUMOUR[1].stop:
                cells[(r, c)] = tumour[(r * COLS + c) % len(tumour)]
                positive.add((r, c))
            elif TISSUE[0].start <= r < TISSUE[0].stop and TISSUE[1].start <= c < TISSUE[1].stop:
                cells[(r, c)] = normal[(r * COLS + c) % len(normal)]
    return cells, positive


@pytest.fixture(scope="session")
def test_slide(real_patches, tmp_path_factory: pytest.TempPathFactory) -> SlideFixture:
    from pcam.slide_synth import write_slide

    cells, positive = slide_cells(real_patches)
    path = write_slide(tmp_path_factory.mktemp("slide") / "sample.tif", lambda r, c: cells.get((r, c)), ROWS, COLS)
    return SlideFixture(path, cells, positive)


def mean_model():
    """A Keras model computing mean(pixels) / 255: a known function of what it sees."""
    import keras

    inputs = keras.Input((96, 96, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    out = keras.layers.Dense(
        1, kernel_initializer=keras.initializers.Constant(1 / (3 * 255)), bias_initializer="zeros", name="prediction"
    )(x)
    return keras.Model(inputs, out)


@pytest.fixture(scope="session")
def mean_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mean_model") / "model"
    out.mkdir()
    mean_model().save(out / "model.keras")
    return out
