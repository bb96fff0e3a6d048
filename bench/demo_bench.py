"""Bench 5: end to end. `make demo` (kfp.local) wall time and each step's, vs `pcam run` in-process.

``make demo`` is ``python -m pipelines.run_local --config configs/demo.yaml --out ...``:
every step is a kfp.local subprocess that imports TensorFlow afresh. ``pcam run`` does
the same study in one process; the difference is the orchestration overhead. The
per-step times come from run_local's own table and from ``steps.json`` of ``pcam run``.

Goal: the demo under 3 minutes on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from bench.common import OUT, REPO, Figure, loadavg

GOAL_S = 180
CONFIG = "configs/demo.yaml"
STEP_LINE = re.compile(r"^\s+(\S+)\s+([\d.]+) s(?: \((\d+) runs\))?$")


def _run(cmd: list[str], log_name: str) -> tuple[float, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (OUT / log_name).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); log: {OUT / log_name}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def step_times(stdout: str) -> dict[str, float]:
    """run_local's 'step times' table: {task name: seconds}."""
    steps = {}
    for line in stdout.splitlines():
        match = STEP_LINE.match(line)
        if match and match.group(1) != "total":
            steps[match.group(1)] = float(match.group(2))
    return steps


def run(quick: bool = False) -> list[Figure]:
    OUT.mkdir(parents=True, exist_ok=True)
    kfp_out, run_out = OUT / "demo-kfp", OUT / "demo-run"
    shutil.rmtree(kfp_out, ignore_errors=True)
    shutil.rmtree(run_out, ignore_errors=True)
    in_process, _ = _run(
        [sys.executable, "-m", "pcam.cli", "run", "--config", CONFIG, "--out", str(run_out)], "demo-pcam-run.log"
    )
    load_run = loadavg()
    kfp, stdout = _run(
        [sys.executable, "-m", "pipelines.run_local", "--config", CONFIG, "--out", str(kfp_out)], "demo-run-local.log"
    )
    load = loadavg()
    figures = [
        Figure("demo_make_demo_seconds", kfp, "s", f"<{GOAL_S}", kfp < GOAL_S, load),
        Figure("demo_pcam_run_seconds", in_process, "s", f"<{GOAL_S}", in_process < GOAL_S, load_run),
        Figure("demo_kfp_overhead_vs_pcam_run", kfp / in_process, "x", load=load),
    ]
    for name, seconds in step_times(stdout).items():
        figures.append(Figure(f"demo_step_{name}_seconds", seconds, "s", load=load))
    steps = json.loads((run_out / "steps.json").read_text())
    for name, seconds in steps.items():
        figures.append(Figure(f"demo_pcam_run_step_{name}_seconds", seconds, "s", load=load_run))
    return figures


if __name__ == "__main__":
    for fig in run():
        print(fig.line())
