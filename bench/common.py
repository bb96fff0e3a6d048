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
    load: float | None = None
    """1-minute load average when the figure was measured."""

    def line(self) -> str:
        verdict = "" if self.met is None else ("  ok" if self.met else "  MISSED")
        load = "" if self.load is None else f"  (load {self.load:.1f})"
        return f"{self.name} {self.value:.4g} {self.unit} {self.goal}{verdict}{load}"

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


def loadavg() -> float:
    """1-minute load average: printed beside every figure (the machine is shared)."""
    return round(os.getloadavg()[0], 2)


def quiet_tf() -> None:
    """Keep TensorFlow's C++ logging out of the figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def sample_dir() -> Path:
    """The real 23,000-patch class-folder sample (train 20,000, valid 3,000)."""
    path = shared_dir() / "pcam-sample"
    if not (path / "labels.csv").exists():
        raise SystemExit(f"real PCam sample not found under {path}; set PCAM_SHARED")
    return path


def real_dataset(n_train: int) -> Path:
    """Canonical dataset of the real sample: ``n_train`` train patches, valid/test cut from its valid split.

    Cached in bench/out by size: the ingest bench times ingest itself; the other
    benches only need the pixels.
    """
    from pcam.ingest import ingest

    out = OUT / f"dataset-real-{n_train}"
    if not (out / "manifest.json").exists():
        ingest(sample_dir(), out, fmt="folders", limit_per_split=n_train, seed=0)
    return out


def real_shards(n_train: int) -> Path:
    """TFRecord shards (default config: raw, uncompressed) of :func:`real_dataset`, split at random 80/10/10."""
    from pcam.config import AugmentConfig, ShardConfig
    from pcam.shard import write_shards
    from pcam.split import split_dataset

    out = OUT / f"shards-real-{n_train}"
    if not (out / "index.json").exists():
        dataset = real_dataset(n_train)
        split = OUT / f"split-real-{n_train}"
        if not (split / "split.json").exists():
            split_dataset(dataset, split, "random", (0.8, 0.1, 0.1), 0)
        write_shards(dataset, split, out, AugmentConfig(copies=0), ShardConfig(), 0, progress=False)
    return out


def fit_rate(model, dataset, steps: int, warmup: int = 3) -> float:
    """Images/s of ``model.fit`` over ``steps`` batches of ``dataset`` after ``warmup`` (tracing) steps.

    ``dataset`` yields ``(x, y)`` batches forever (repeat()).
    """
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    batch = None
    for x, _ in dataset.take(1):
        batch = int(x.shape[0])
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main(run: Callable[[bool], list[Figure]]) -> None:
    """``python -m bench.<name> [--quick]``: run one bench and print its figure lines."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    for fig in run(parser.parse_args().quick):
        print(fig.line())
