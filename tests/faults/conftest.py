"""Helpers for the fault tests: run ``pcam`` as a child process, kill it, check what it left.

``fault_dataset`` / ``fault_split`` are bigger than the shared ``tiny_*`` fixtures on
purpose: writing their shards takes long enough (about a second) for a test to kill
the writer halfway with certainty.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pcam.fsutil import KIND_FILE
from tests.fixtures_data import ingest_sample, official_split

REPO = Path(__file__).resolve().parents[2]
FAULT_LIMIT = 600
"""Patches per source split in ``fault_dataset`` (600 train + 600 valid real patches)."""


def pcam_command(*args: str) -> list[str]:
    """``pcam ARGS`` with this interpreter (the venv's console script, minus PATH lookup)."""
    return [sys.executable, "-m", "pcam.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn that makes every write past ``limit`` bytes fail with EFBIG (a full disk, as far as
    a process can tell): SIGXFSZ is ignored, so write() returns the error instead of killing it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_pcam(args: list[str], *, fsize: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        pcam_command(*args),
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=file_size_limit(fsize) if fsize else None,
    )


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """Start ``command`` in its own process group (so a kill takes its children too, like a pod's)."""
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=REPO, env=child_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 180) -> None:
    """SIGKILL ``proc``'s whole process group as soon as ``ready()`` holds.

    Fails the test if the process ends first: then it was not killed mid-write and
    the test would prove nothing.
    """
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if proc.poll() is not None:
                pytest.fail(
                    f"process ended (exit {proc.returncode}) before it could be killed mid-write:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.005)
        pytest.fail(f"nothing to kill within {timeout} s:\n" + log.read_text(errors="replace")[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def temp_siblings(out: Path) -> list[Path]:
    """The temporary names an atomic write of ``out`` uses (``.<name>.*.tmp``), if any are left."""
    return sorted(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else []


def partial_file_in_temp(out: Path, pattern: str, min_bytes: int = 1) -> bool:
    """True once a temp directory of ``out`` holds a file matching ``pattern`` of ``min_bytes`` or more."""
    for tmp in temp_siblings(out):
        try:
            if any(f.stat().st_size >= min_bytes for f in tmp.glob(pattern)):
                return True
        except FileNotFoundError:  # renamed or removed between glob and stat
            continue
    return False


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every data file under ``root`` (not pcam's kind marker, the same in every run)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != KIND_FILE
    }


@pytest.fixture(scope="session")
def fault_dataset(pcam_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_sample(pcam_sample, tmp_path_factory, FAULT_LIMIT, "fault_dataset")


@pytest.fixture(scope="session")
def fault_split(fault_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_split(fault_dataset, tmp_path_factory, "fault_split")
