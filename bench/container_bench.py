"""Bench: `make demo` (kfp.local, subprocesses) against `make demo-container` (every step in the
CPU image through kfp.local's DockerRunner), back to back on the same config.

    python -m bench.container_bench [--quick]

Needs the CPU image of ``make image-check`` (``PCAM_CPU_IMAGE``, else the newest
``localhost/pcam/pcam-cpu`` podman holds) and podman; scripts/demo-container.sh starts
podman's API. Figures: both wall times, their ratio (goal <= 1.5), and whether the two
reports' comparison tables (summary.csv, every score; not the train_seconds timing
column) are identical. Not part of ``make bench``:
it runs the demo twice (~8-15 minutes here).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, REPO, Figure, loadavg, main


def _image() -> str:
    wanted = os.environ.get("PCAM_CPU_IMAGE", "")
    found = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/pcam/pcam-cpu"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if wanted and wanted not in found:
        raise SystemExit(f"{wanted}: not in podman's images; run make image-check")
    if not (wanted or found):
        raise SystemExit("no localhost/pcam/pcam-cpu image; run make image-check")
    return wanted or found[0]


def _timed(command: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}); log: {log}")
    return time.perf_counter() - start


TIMING_COLUMNS = {"train_seconds"}


def _summary(out: Path) -> list[dict[str, str]]:
    """The report's comparison table without its timing column (wall times differ run to run)."""
    (path,) = sorted(out.glob("pipeline_root/pcam-training-*/**/report_dir/summary.csv"))
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def run(quick: bool = False) -> list[Figure]:
    del quick  # one size only: the demo
    config = "configs/demo.yaml"
    base = OUT / "container"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    image = _image()
    figures = []
    local_out, container_out = base / "local", base / "container"
    for path in (local_out, container_out):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    base.mkdir(parents=True, exist_ok=True)
    local = _timed(
        [sys.executable, "-m", "pipelines.run_local", "--config", config, "--out", str(local_out)],
        env,
        base / "local.log",
    )
    figures.append(Figure("demo_local_seconds", local, "s", load=loadavg()))
    container = _timed(
        ["scripts/demo-container.sh"],
        {**env, "CONFIG": config, "OUT": str(container_out), "PYTHON": sys.executable, "PCAM_CPU_IMAGE": image},
        base / "container.log",
    )
    figures.append(Figure("demo_container_seconds", container, "s", load=loadavg()))
    ratio = container / local
    figures.append(Figure("demo_container_ratio", ratio, "x", "<=1.5", met=ratio <= 1.5, load=loadavg()))
    same = _summary(local_out) == _summary(container_out)
    figures.append(Figure("demo_container_same_summary_csv", float(same), "bool", "1", met=same))
    return figures


if __name__ == "__main__":
    main(run)
