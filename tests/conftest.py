"""Shared fixtures: where the real PCam samples live (PCAM_SHARED, default ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shared() -> Path:
    return Path(os.environ.get("PCAM_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared()
    if not (path / "pcam-sample" / "labels.csv").exists():
        pytest.fail(f"real PCam sample not found under {path}; set PCAM_SHARED to the folder holding pcam-sample/")
    return path


@pytest.fixture(scope="session")
def pcam_sample(shared_dir: Path) -> Path:
    """23,000 real PCam patches as class folders: train/{0,1}, valid/{0,1}, labels.csv."""
    return shared_dir / "pcam-sample"


@pytest.fixture(scope="session")
def kaggle_sample(shared_dir: Path) -> Path:
    """Real Kaggle-layout patches: train/<id>.tif, train_labels.csv, test/<id>.tif."""
    return shared_dir / "kaggle-sample"

# Session fixtures that build real tiny artifacts (dataset, split, shards, trained
# models) live in their own plugin modules, one per owner.
pytest_plugins = ["tests.fixtures_data", "tests.fixtures_shards", "tests.fixtures_predict", "tests.fixtures_serving"]
