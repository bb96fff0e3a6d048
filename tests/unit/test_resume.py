"""Kill `pcam train` after its second checkpoint, rerun it: the result equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EPOCHS = 6
CONFIG = f"""
seed: 3
defaults: {{epochs: {EPOCHS}, batch_size: 32}}
models:
  logreg: {{optimizer: sgd, learning_rate: 0.0001, max_learning_rate: 0.001, weight_decay: 0.0001}}
augment: {{online: true, noise: 0.02, color_jitter: true}}
train: {{shuffle_buffer: 256}}
"""


def _command(shards: Path, out: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pcam.cli",
        "train",
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--config",
        str(config),
        "--model",
        "logreg",
        "--policy",
        "onecycle",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _checkpoint_epochs(out: Path) -> list[int]:
    root = out / "checkpoint"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("epoch-*") if (p / "state.json").exists())


def _final(out: Path) -> tuple[list[dict], list[np.ndarray]]:
    history = json.loads((out / "history.json").read_text())
    npz = np.load(out / "checkpoint" / f"epoch-{EPOCHS:05d}" / "variables.npz")
    return history, [npz[k] for k in sorted(npz.files)]


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tiny_shards, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"

    proc = subprocess.Popen(
        _command(tiny_shards, killed_out, config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while len(_checkpoint_epochs(killed_out)) == 0 or _checkpoint_epochs(killed_out)[-1] < 2:
        assert proc.poll() is None, "training ended before its second checkpoint"
        assert time.monotonic() < deadline, "no second checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_epochs(killed_out)[-1]
    assert 2 <= killed_at < EPOCHS and not (killed_out / "train.json").exists()

    resumed = subprocess.run(
        _command(tiny_shards, killed_out, config), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"epoch {killed_at} done" in resumed.stderr  # the log says where it resumed
    summary = json.loads((killed_out / "train.json").read_text())
    assert summary["resumed_from"] == [killed_at] and summary["epochs"] == EPOCHS

    clean = subprocess.run(
        _command(tiny_shards, clean_out, config), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-2000:]

    h_killed, v_killed = _final(killed_out)
    h_clean, v_clean = _final(clean_out)
    assert [r["epoch"] for r in h_killed] == list(range(1, EPOCHS + 1))  # no gap, no duplicate
    keys = ("epoch", "lr", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")
    assert [[r[k] for k in keys] for r in h_killed] == [[r[k] for k in keys] for r in h_clean]
    assert len(v_killed) == len(v_clean)
    for a, b in zip(v_killed, v_clean, strict=True):
        np.testing.assert_array_equal(a, b)  # exact: weights, optimizer slots, RNG states
