"""Shared fixtures: where the real PCam data for tests comes from.

Two sources, both real PCam pixels:

* ``$PCAM_SHARED`` (default ``../shared``) when it holds ``pcam-sample/labels.csv``:
  the 23,000-patch class-folder sample and the Kaggle-layout sample (CI has them);
* otherwise ``tests/data/pcam-fixture.zip`` (committed, 1.8 MB: 340 patches of that
  sample and 9 Kaggle .tif files, byte for byte; ``tests/data/PROVENANCE.md``),
  unpacked once per session into the same two layouts, so ``make test`` passes
  from a bare clone.

Either way the tests read the same layouts through ``pcam_sample`` / ``kaggle_sample``;
the header of every run says which source it used (never a silent skip).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_ZIP = REPO / "tests" / "data" / "pcam-fixture.zip"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shared() -> Path:
    return Path(os.environ.get("PCAM_SHARED", REPO.parent / "shared")).resolve()


def shared_available() -> bool:
    """Whether ``$PCAM_SHARED`` holds the full real sample (else tests use the committed fixture)."""
    return (_shared() / "pcam-sample" / "labels.csv").exists()


def _count(root: Path) -> int:
    with (root / "pcam-sample" / "labels.csv").open() as handle:
        return sum(1 for _ in handle) - 1


def data_source_line() -> str:
    """Which real data this run reads: printed in the header and again after the results."""
    if shared_available():
        return f"real data: PCAM_SHARED={_shared()} (pcam-sample: {_count(_shared()):,} patches)"
    return (
        f"real data: {FIXTURE_ZIP.relative_to(REPO)} (committed fixture, 340 patches); "
        f"PCAM_SHARED={_shared()} has no pcam-sample/labels.csv"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return data_source_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # `pytest -q` (make test) hides the header; this line is printed whatever the verbosity.
    terminalreporter.write_line(data_source_line())


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``pcam-sample/`` and ``kaggle-sample/``: ``$PCAM_SHARED``, or the unpacked fixture."""
    if shared_available():
        return _shared()
    if not FIXTURE_ZIP.exists():
        pytest.fail(f"no real PCam data: {_shared()} has no pcam-sample/ and {FIXTURE_ZIP} is missing")
    root = tmp_path_factory.mktemp("pcam-fixture")
    with zipfile.ZipFile(FIXTURE_ZIP) as archive:
        archive.extractall(root)
    return root


@pytest.fixture(scope="session")
def using_fixture(shared_dir: Path) -> bool:
    """True when the tests run on the committed fixture rather than the full sample."""
    return not shared_available()


@pytest.fixture(scope="session")
def pcam_sample(shared_dir: Path) -> Path:
    """Real PCam patches as class folders: train/{0,1}, valid/{0,1}, labels.csv (23,000 or the fixture's 340)."""
    return shared_dir / "pcam-sample"


@pytest.fixture(scope="session")
def kaggle_sample(shared_dir: Path) -> Path:
    """Real Kaggle-layout patches: train/<id>.tif, train_labels.csv, test/<id>.tif."""
    return shared_dir / "kaggle-sample"


# Session fixtures that build real tiny artifacts (dataset, split, shards, trained
# models) live in their own plugin modules, one per owner.
pytest_plugins = ["tests.fixtures_data", "tests.fixtures_shards", "tests.fixtures_predict", "tests.fixtures_serving"]
