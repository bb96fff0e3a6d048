"""Promotions racing (threads and processes, local and on a real GCS-protocol server): the best always wins.

Each round starts several promotions of candidates with different scores at once,
while a reader keeps fetching the champion. Afterwards the champion must be the best
candidate seen so far, and every read must have returned one complete champion: the
model matching the pointer's sha256 and the metrics of that same model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pcam import champion as C
from pcam import promote as P
from pcam import storage
from pcam.fsutil import file_sha256

REPO = Path(__file__).resolve().parents[2]


def _candidate(root: Path, name: str, auc: float) -> Path:
    """A candidate run: a model file (distinct bytes) and the metrics.json naming its sha256."""
    (root / name / "train").mkdir(parents=True)
    model = root / name / "train" / "model.keras"
    model.write_bytes(os.urandom(2048) + name.encode())
    (root / name / "evaluate").mkdir()
    metrics = {
        "tta": {"auc": auc},
        "single": {"auc": auc},
        "model": name,
        "policy": "constant",
        "model_sha256": file_sha256(model),
    }
    (root / name / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    return root / name


class Reader(threading.Thread):
    """Fetches the champion in a loop; records every inconsistency."""

    def __init__(self, uri: str, dest: Path):
        super().__init__(daemon=True)
        self.uri, self.dest, self.stop, self.reads, self.errors = uri, dest, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pointer = C.fetch(self.uri, self.dest)
                metrics = json.loads((self.dest / "metrics.json").read_text())
                if metrics["model_sha256"] != pointer["model_sha256"] or metrics["model"] != pointer["model"]:
                    self.errors.append(f"mixed champion: pointer {pointer['model']}, metrics {metrics['model']}")
                self.reads += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.errors.append(f"{type(exc).__name__}: {exc}")


def _location(kind: str, request, tmp_path: Path) -> str:
    return request.getfixturevalue("gcs") + "/champion" if kind == "gcs" else str(tmp_path / "champion")


def _race(uri: str, tmp_path: Path, rounds: int, racers: int, promote_all) -> None:
    scores = random.Random(7).sample(range(1, 1000), rounds * racers)  # all distinct: one right answer
    best: tuple[float, Path] | None = None
    first = _candidate(tmp_path / "c", "seed", 0.0)
    assert P.promote(first / "evaluate", first / "train", uri, out_dir=tmp_path / "d0", serving=False)["promoted"]
    reader = Reader(uri, tmp_path / "reader")
    reader.start()
    try:
        for r in range(rounds):
            runs = [
                (s / 1000, _candidate(tmp_path / "c", f"r{r}-{i}", s / 1000))
                for i, s in enumerate(scores[r * racers : (r + 1) * racers])
            ]
            promote_all([run for _, run in runs])
            best = max([*([best] if best else []), *runs])
            pointer, _ = C.read_pointer(uri)
            assert pointer["score"] == best[0], f"round {r}: champion {pointer['score']} but best was {best[0]}"
            assert pointer["model_sha256"] == file_sha256(best[1] / "train" / "model.keras")
    finally:
        reader.stop.set()
        reader.join(30)
    assert reader.errors == [] and reader.reads > 0
    pointer = C.read_pointer(uri)[0]
    assert len(pointer["history"]) <= C.KEEP_VERSIONS
    published = {pointer["version"], *pointer["history"]}
    assert set(storage.list_dir(storage.join(uri, "versions"))) == published  # losers left nothing behind


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_threads_racing(kind, request, tmp_path):
    uri = _location(kind, request, tmp_path)

    def promote_all(runs):
        with ThreadPoolExecutor(len(runs)) as pool:
            list(
                pool.map(
                    lambda run: P.promote(
                        run / "evaluate", run / "train", uri, out_dir=run / "decision", serving=False
                    ),
                    runs,
                )
            )

    _race(uri, tmp_path, rounds=12, racers=3, promote_all=promote_all)


RACER = """
import pathlib, sys, time
from pcam import storage
from pcam.cli import main
if storage.is_gcs(sys.argv[2]):
    storage._client()  # connect before the start line, so that the racers really overlap
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
sys.exit(main(["promote", "--eval", sys.argv[3], "--model", sys.argv[4], "--champion", sys.argv[2],
               "--out", sys.argv[5], "--no-serving-export"]))
"""


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_processes_racing(kind, request, tmp_path):
    """Each racer is a process running `pcam promote` (cli.main); all start at one signal."""
    uri = _location(kind, request, tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}

    def promote_all(runs):
        go = runs[0].parent / f"go-{runs[0].name}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(go), uri, str(run / "evaluate"), str(run / "train"), str(run / "d")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for run in runs
        ]
        time.sleep(2.5)  # let every racer import and connect
        go.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            assert out.startswith(("promoted: ", "not promoted: "))

    _race(uri, tmp_path, rounds=4, racers=3, promote_all=promote_all)


@pytest.mark.parametrize("kind", ["local", "gcs"])
@pytest.mark.parametrize("other_wins", [True, False])
def test_a_promotion_that_loses_the_swap_compares_again(kind, other_wins, request, tmp_path, monkeypatch):
    """Deterministic interleaving: while A uploads its version, B promotes and publishes."""
    uri = _location(kind, request, tmp_path)
    seed = _candidate(tmp_path / "c", "seed", 0.5)
    a = _candidate(tmp_path / "c", "a", 0.7)
    b = _candidate(tmp_path / "c", "b", 0.9 if other_wins else 0.6)
    P.promote(seed / "evaluate", seed / "train", uri, out_dir=tmp_path / "d0", serving=False)
    upload = C.upload_version
    interleaved = []

    def upload_then_b_publishes(*args, **kwargs):
        version = upload(*args, **kwargs)
        if not interleaved:
            interleaved.append(None)  # B's own upload goes straight through
            interleaved[0] = P.promote(b / "evaluate", b / "train", uri, out_dir=tmp_path / "db", serving=False)
        return version

    monkeypatch.setattr(C, "upload_version", upload_then_b_publishes)
    decision = P.promote(a / "evaluate", a / "train", uri, out_dir=tmp_path / "da", serving=False)
    assert interleaved[0]["promoted"] is True  # B beat the seed, and published first
    assert decision["attempts"] == 2  # A's swap failed on the generation: it re-read and compared again
    pointer, _ = C.read_pointer(uri)
    if other_wins:
        assert decision["promoted"] is False and decision["champion_score"] == 0.9 and pointer["model"] == "b"
    else:
        assert decision["promoted"] is True and decision["champion_score"] == 0.6 and pointer["model"] == "a"
        assert pointer["replaced"]["model"] == "b" and pointer["history"][0] == interleaved[0]["version"]
    published = {pointer["version"], *pointer["history"]}
    assert set(storage.list_dir(storage.join(uri, "versions"))) == published  # A's loser upload is gone
