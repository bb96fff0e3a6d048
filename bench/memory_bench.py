"""Bench 6: peak memory of `pcam ingest` on an official-format training file of realistic size.

Writes ``camelyonpatch_level_2_split_train_{x,y}.h5`` (and ``_meta.csv``) of N patches
into bench/out in blocks (generation itself stays bounded): real pixels from the
sample, tiled, with each patch's row number stamped into its first pixels so no
two patches are duplicates (the writer hashes every patch). Then runs
``pcam ingest`` in a subprocess and records its peak resident memory two ways:

* ``ru_maxrss`` of that child (read by a small launcher process, see :data:`LAUNCHER`):
  the kernel's high-water mark, which also counts resident file-backed pages of any
  memory map the process writes;
* the peak of ``RssAnon`` polled from ``/proc/<pid>/status``: memory the process
  itself holds (heap, numpy buffers), which is what can exhaust a pod.

Run at two sizes: bounded means the peak does not grow with the file. The full
official size is 262,144 patches (7.2 GB); ``--quick`` uses small sizes.
Goal: peak RSS < 1.5 GiB and flat across sizes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from bench.common import OUT, REPO, Figure, loadavg, sample_dir

GOAL_MIB = 1536
PREFIX = "camelyonpatch_level_2_split_train"
BLOCK = 4096
FULL = 262_144
QUICK_SIZES = (4096, 16384)


def _base_pixels(n: int) -> np.ndarray:
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(sample_dir() / "labels.csv").head(n)
    return np.stack([np.asarray(Image.open(sample_dir() / p).convert("RGB")) for p in table.path])


def write_official(root: Path, n: int) -> Path:
    """Official-layout train x/y/meta with ``n`` patches, written block by block."""
    if (root / "DONE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = _base_pixels(min(n, BLOCK))
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.5).astype(np.uint8)
    with h5py.File(root / f"{PREFIX}_x.h5", "w") as f:
        x = f.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8, chunks=(32, 96, 96, 3))
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            block = base[: stop - start].copy()
            rows = np.arange(start, stop, dtype=np.uint32)
            block[:, 0, 0:2, :] = rows.view(np.uint8).reshape(-1, 4)[:, :3].repeat(2, axis=0).reshape(-1, 2, 3)
            x[start:stop] = block
    with h5py.File(root / f"{PREFIX}_y.h5", "w") as f:
        f.create_dataset("y", data=labels.reshape(-1, 1, 1, 1))
    slides = np.repeat(np.arange(n // 1024 + 1), 1024)[:n]
    with open(root / f"{PREFIX}_meta.csv", "w") as handle:
        handle.write(",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n")
        for i in range(n):
            handle.write(f"{i},0,0,False,{bool(labels[i])},slide_{slides[i]:03d}\n")
    (root / "DONE").touch()
    return root


LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""
"""A small Python between us and `pcam ingest`: Linux carries the forking parent's
resident size into the child's ru_maxrss (exec records the old address space's
high-water mark), so a child forked straight from this (large, TensorFlow-holding)
process would report our size, not its own."""


def measure_ingest(source: Path, out: Path) -> dict[str, float]:
    """Peak RSS (MiB) of `pcam ingest` in a child process, and its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [
        sys.executable,
        "-c",
        LAUNCHER,
        sys.executable,
        "-m",
        "pcam.cli",
        "ingest",
        "--source",
        str(source),
        "--format",
        "hdf5",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"anon": 0.0, "hwm": 0.0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for child in Path(f"/proc/{proc.pid}/task").glob("*/children"):
                for pid in child.read_text().split():
                    try:
                        text = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
                    for key, name in (("RssAnon", "anon"), ("VmHWM", "hwm")):
                        if key in fields:
                            peak[name] = max(peak[name], int(fields[key].split()[0]) / 1024)
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    err = proc.stderr.read().decode(errors="replace")
    status = proc.wait()
    done.set()
    watcher.join()
    if status != 0:
        raise RuntimeError(f"pcam ingest failed ({status}):\n{err[-2000:]}")
    maxrss_kib = int(err.strip().splitlines()[-1])
    return {
        "maxrss_mib": maxrss_kib / 1024,
        "anon_mib": peak["anon"],
        "hwm_polled_mib": peak["hwm"],
        "seconds": time.perf_counter() - start,
    }


def run(quick: bool = False, sizes: tuple[int, ...] | None = None, keep: bool = False) -> list[Figure]:
    if sizes is None:
        sizes = QUICK_SIZES if quick else (65536, FULL)
    figures = []
    results = {}
    for n in sizes:
        need = 2 * n * 27648 * 1.1
        free = shutil.disk_usage(OUT.parent if not OUT.exists() else OUT).free
        if free < need:
            raise SystemExit(f"memory bench: {n} patches need {need / 2**30:.1f} GiB free, have {free / 2**30:.1f}")
        source = write_official(OUT / f"official-{n}", n)
        r = measure_ingest(source, OUT / f"official-{n}-dataset")
        results[n] = r
        load = loadavg()
        ok = r["maxrss_mib"] < GOAL_MIB
        figures += [
            Figure(f"ingest_peak_rss_{n}", r["maxrss_mib"], "MiB", f"<{GOAL_MIB}", ok, load),
            Figure(f"ingest_peak_anon_rss_{n}", r["anon_mib"], "MiB", f"<{GOAL_MIB}", r["anon_mib"] < GOAL_MIB, load),
            Figure(f"ingest_hdf5_{n}_images_per_s", n / r["seconds"], "img/s", load=load),
        ]
        if not keep:
            shutil.rmtree(OUT / f"official-{n}-dataset", ignore_errors=True)
            if n >= 65536:
                shutil.rmtree(source, ignore_errors=True)
    small, large = min(results), max(results)
    growth = results[large]["maxrss_mib"] / results[small]["maxrss_mib"]
    figures.append(Figure(f"ingest_peak_rss_growth_{small}_to_{large}", growth, "x", "<1.25", growth < 1.25, loadavg()))
    return figures


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sizes",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=None,
        help="comma-separated patch counts (default 65536,262144; --quick 4096,16384)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files and datasets")
    args = parser.parse_args()
    for fig in run(args.quick, args.sizes, args.keep):
        print(fig.line())
