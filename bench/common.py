"""Shared benchmark plumbing: figures, timing, the real-sample location."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


@dataclass
class Figure:
    """One measured number: ``name value unit goal`` is the line `make bench` ends with."""

    name: str
    value: float
    unit: str
    goal: str = "-"
    met: bool | None = None

    def line(self) -> str:
        verdict = "" if self.met is None else ("  ok" if self.met else "  MISSED")
        return f"{self.name} {self.value:.4g} {self.unit} {self.goal}{verdict}"

    def to_dict(self) -> dict:
        return asdict(self)


def shared_dir() -> Path:
    return Path(os.environ.get("PCAM_SHARED", REPO.parent / "shared")).resolve()


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls: the least noisy estimate on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mib_children() -> float:
    """Peak resident memory of finished child processes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
