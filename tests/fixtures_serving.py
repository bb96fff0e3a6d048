"""Fixtures for the serving tests (export, serve): one exported real model per session.

* ``cnn_model_dir``: the study's CNN (untrained, seeded: orientation-sensitive, so TTA
  views change its scores), saved as a train-step model directory (``model.keras``).
* ``cnn_champion``: a champion-like folder holding ``serving/1``, that model exported
  by :func:`pcam.export.export_serving` with the default TTA views.

Tests must not write into ``cnn_champion`` (the server tests serve it).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.config import EvaluateConfig, ModelConfig

SERVING_VIEWS = EvaluateConfig().tta_views


def real_jpegs(pcam_sample: Path, per_class: int = 20) -> tuple[list[bytes], np.ndarray]:
    """Encoded JPEG bytes of real valid patches, and their pixels as Pillow (so `pcam ingest`) reads them."""
    files = [f for label in (0, 1) for f in sorted((pcam_sample / "valid" / str(label)).glob("*.jpg"))[:per_class]]
    return [f.read_bytes() for f in files], np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of one (H, W, 3) uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def cnn_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pcam.models import build_model

    out = tmp_path_factory.mktemp("cnn")
    build_model("cnn", ModelConfig(), seed=3).save(out / "model.keras")
    return out


@pytest.fixture(scope="session")
def cnn_champion(cnn_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pcam.export import export_serving

    champion = tmp_path_factory.mktemp("champion")
    export_serving(cnn_model_dir, champion / "serving", SERVING_VIEWS)
    return champion
