"""Bench: `pcam predict` speed and memory, and the real check on a slide of real patches.

    python -m bench.predict_bench [--quick] [--only throughput,rss,real] [--model DIR]

* **throughput** (goal >= 0.8): images/s of the whole predict path (read, tile, mask,
  score, write) over images/s of a bare ``model.predict`` on the same patches already in
  memory, one view each, with the study's CNN. Patches: an HDF5 file of real pixels.
  Slide: a pyramidal TIFF of real patches (level 1 read, block reads on a thread pool).
* **rss**: peak resident memory of `pcam predict` in a child process (a launcher
  reads its ``ru_maxrss``; ``RssAnon`` is polled) on a synthesised slide of >= 50,000
  tissue tiles and on a 262,144-patch official HDF5 file (goal <= 1 GiB each). The
  logistic-regression model keeps these runs short: memory is the predict path's.
* **real**: a CNN trained on ``pcam-sample/train`` (or ``--model``) applied to a slide
  assembled from ``pcam-sample/valid`` patches (other slides than training): the tile
  AUC against the cells' labels and the Dice overlap of tiles >= 0.5 with the tumour
  region.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from bench.common import OUT, REPO, Figure, loadavg, quiet_tf, sample_dir

RSS_GOAL_MIB = 1024
WORK = OUT / "predict"
BIG_SLIDE_CELLS = 240  # 240 x 240 = 57,600 cells, every one a patch
HDF5_FULL = 262_144


def _real_patches(n: int, split: str = "train", label: str | None = None) -> np.ndarray:
    from PIL import Image

    rows = [
        r
        for r in csv.DictReader(open(sample_dir() / "labels.csv"))
        if r["split"] == split and (label is None or r["label"] == label)
    ][:n]
    return np.stack([np.asarray(Image.open(sample_dir() / r["path"]).convert("RGB")) for r in rows])


def _model_dir(name: str) -> Path:
    from pcam.config import ModelConfig
    from pcam.models import build_model

    out = WORK / f"model-{name}"
    if not (out / "model.keras").exists():
        out.mkdir(parents=True, exist_ok=True)
        build_model(name, ModelConfig(), seed=0).save(out / "model.keras")
    return out


def _slide(path: Path, cells: int, patches: np.ndarray, upscale: int, levels: int) -> Path:
    from pcam.slide_synth import write_slide

    if not path.exists():
        write_slide(
            path,
            lambda r, c: patches[(r * cells + c) % len(patches)],
            cells,
            cells,
            upscale=upscale,
            levels=levels,
            compression=None,
        )
    return path


def throughput(quick: bool) -> list[Figure]:
    from pcam.predict import predict_patches
    from pcam.scoring import load_predictor
    from pcam.slide import read_tiles
    from pcam.slide_predict import SlidePlan, predict_slide

    n = 1024 if quick else 8192
    patches = _real_patches(1024)
    images = np.concatenate([patches] * (n // len(patches)))
    h5 = WORK / f"patches-{n}.h5"
    if not h5.exists():
        with h5py.File(h5, "w") as handle:
            handle.create_dataset("x", data=images, chunks=(32, 96, 96, 3))
    model_dir = _model_dir("cnn")
    figures = []
    with contextlib.ExitStack() as stack:
        predictor = load_predictor(str(model_dir), 1, stack)
        model = predictor.model
        model.predict(images[:512], batch_size=256, verbose=0)  # trace once
        predictor.score(images[:512])
        bare = _best(lambda: model.predict(images, batch_size=256, verbose=0))
        ours = _best(lambda: predict_patches([(h5, None)], predictor, WORK / "out-patches", stack, progress=False))
        figures += [
            Figure("predict_patches_images_per_s", n / ours, "img/s", load=loadavg()),
            Figure("bare_model_predict_images_per_s", n / bare, "img/s", load=loadavg()),
            Figure("predict_patches_vs_bare", bare / ours, "ratio", ">=0.8", bare / ours >= 0.8, loadavg()),
        ]
        cells = 12 if quick else 32
        slide = _slide(WORK / f"slide-{cells}.tif", cells, patches, upscale=2, levels=5)
        plan = SlidePlan(slide, None, 96, 0.25)
        tiles = np.concatenate(
            [
                read_tiles(plan.slide, slide, plan.grid, block)
                for block in np.array_split(plan.cells, max(1, len(plan.cells) // 64))
            ]
        )
        plan.close()
        bare = _best(lambda: model.predict(tiles, batch_size=256, verbose=0))

        def whole_slide() -> None:
            shutil.rmtree(WORK / "out-slide", ignore_errors=True)
            predict_slide(slide, predictor, WORK / "out-slide", progress=False)

        ours = _best(whole_slide)
        figures += [
            Figure("predict_slide_tiles_per_s", len(tiles) / ours, "tile/s", load=loadavg()),
            Figure("bare_model_predict_tiles_per_s", len(tiles) / bare, "tile/s", load=loadavg()),
            Figure("predict_slide_vs_bare", bare / ours, "ratio", ">=0.8", bare / ours >= 0.8, loadavg()),
        ]
    return figures


def _best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""
"""A small process between us and `pcam predict`, so its ru_maxrss is the child's own (see memory_bench)."""


def measure_predict(args: list[str]) -> dict[str, float]:
    """Peak RSS (MiB, ru_maxrss and polled RssAnon) and wall time of `pcam predict ARGS` in a child."""
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "pcam.cli", "predict", *args, "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"anon": 0.0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for child in Path(f"/proc/{proc.pid}/task").glob("*/children"):
                for pid in child.read_text().split():
                    try:
                        text = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    for line in text.splitlines():
                        if line.startswith("RssAnon:"):
                            peak["anon"] = max(peak["anon"], int(line.split()[1]) / 1024)
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    err = proc.stderr.read().decode(errors="replace")
    status = proc.wait()
    done.set()
    watcher.join()
    if status != 0:
        raise RuntimeError(f"pcam predict failed ({status}):\n{err[-2000:]}")
    return {
        "maxrss_mib": int(err.strip().splitlines()[-1]) / 1024,
        "anon_mib": peak["anon"],
        "seconds": time.perf_counter() - start,
    }


def rss(quick: bool) -> list[Figure]:
    from bench.memory_bench import PREFIX, write_official

    model = _model_dir("logreg")
    cells = 24 if quick else BIG_SLIDE_CELLS
    slide = _slide(WORK / f"big-slide-{cells}.tif", cells, _real_patches(1024), upscale=1, levels=7)
    out = WORK / "out-big-slide"
    shutil.rmtree(out, ignore_errors=True)
    r = measure_predict(["--model", str(model), "--input", str(slide), "--out", str(out)])
    with open(out / "slides.csv") as handle:
        tiles = int(next(csv.DictReader(handle))["tiles_scored"])
    figures = [
        Figure(
            f"predict_slide_tissue_tiles_{cells}x{cells}",
            tiles,
            "tiles",
            ">=50000" if not quick else "-",
            tiles >= 50_000 if not quick else None,
        ),
        Figure(
            "predict_slide_peak_rss",
            r["maxrss_mib"],
            "MiB",
            f"<={RSS_GOAL_MIB}",
            r["maxrss_mib"] <= RSS_GOAL_MIB,
            loadavg(),
        ),
        Figure("predict_slide_peak_anon_rss", r["anon_mib"], "MiB", load=loadavg()),
        Figure("predict_slide_big_tiles_per_s", tiles / r["seconds"], "tile/s", load=loadavg()),
    ]
    n = 4096 if quick else HDF5_FULL
    source = write_official(OUT / f"official-{n}", n)
    out = WORK / "out-hdf5"
    shutil.rmtree(out, ignore_errors=True)
    r = measure_predict(["--model", str(model), "--input", str(source / f"{PREFIX}_x.h5"), "--out", str(out)])
    figures += [
        Figure(
            f"predict_hdf5_{n}_peak_rss",
            r["maxrss_mib"],
            "MiB",
            f"<={RSS_GOAL_MIB}",
            r["maxrss_mib"] <= RSS_GOAL_MIB,
            loadavg(),
        ),
        Figure(f"predict_hdf5_{n}_peak_anon_rss", r["anon_mib"], "MiB", load=loadavg()),
        Figure(f"predict_hdf5_{n}_images_per_s", n / r["seconds"], "img/s", load=loadavg()),
    ]
    return figures


def _train_cnn(n: int, epochs: int) -> Path:
    """The study's CNN on ``n`` balanced pcam-sample/train patches: flips + rot90, Adam 1e-3."""
    import keras

    from pcam.config import ModelConfig
    from pcam.models import build_model

    out = WORK / f"cnn-trained-{n}-{epochs}"
    if (out / "model.keras").exists():
        return out
    x = np.concatenate([_real_patches(n // 2, "train", "0"), _real_patches(n // 2, "train", "1")])
    y = np.concatenate([np.zeros(n // 2), np.ones(n // 2)]).astype(np.float32)
    rng = np.random.default_rng(0)
    model = build_model("cnn", ModelConfig(), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, 64):
            batch = x[order[start : start + 64]]
            k = int(rng.integers(4))
            batch = np.rot90(batch, k, axes=(1, 2))
            if rng.random() < 0.5:
                batch = batch[:, :, ::-1]
            model.train_on_batch(np.ascontiguousarray(batch).astype(np.float32), y[order[start : start + 64]])
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    return out


def real_check(quick: bool, model_dir: str | None) -> list[Figure]:
    from sklearn.metrics import roc_auc_score

    from pcam.predict import predict

    model = Path(model_dir) if model_dir else _train_cnn(1000 if quick else 8000, 1 if quick else 4)
    tumour, normal = _real_patches(400, "valid", "1"), _real_patches(800, "valid", "0")
    rows, cols = (10, 12) if quick else (24, 30)
    region = (slice(rows // 4, rows // 4 + rows // 3), slice(cols // 3, cols // 3 + cols // 3))

    def in_tumour(r: int, c: int) -> bool:
        return region[0].start <= r < region[0].stop and region[1].start <= c < region[1].stop

    def cell(r: int, c: int) -> np.ndarray | None:
        if not (1 <= r < rows - 1 and 1 <= c < cols - 1):
            return None
        return tumour[(r * cols + c) % len(tumour)] if in_tumour(r, c) else normal[(r * cols + c) % len(normal)]

    from pcam.slide_synth import write_slide

    slide = WORK / f"real-check-{rows}x{cols}.tif"
    if not slide.exists():
        write_slide(slide, cell, rows, cols)
    out = WORK / "out-real-check"
    shutil.rmtree(out, ignore_errors=True)
    predict(str(model), [str(slide)], out, progress=False)
    tiles = list(csv.DictReader(open(out / "slides" / slide.name / "tiles.csv")))
    truth = np.array([in_tumour(int(t["row"]), int(t["col"])) for t in tiles])
    probs = np.array([float(t["probability"]) for t in tiles])
    predicted = probs >= 0.5
    dice = 2 * (predicted & truth).sum() / max(1, predicted.sum() + truth.sum())
    return [
        Figure("predict_real_slide_tile_auc", roc_auc_score(truth, probs), "auc", load=loadavg()),
        Figure("predict_real_slide_tumour_dice_at_0.5", dice, "dice", load=loadavg()),
        Figure("predict_real_slide_tiles", len(tiles), "tiles"),
    ]


def run(
    quick: bool = False, only: tuple[str, ...] = ("throughput", "rss", "real"), model_dir: str | None = None
) -> list[Figure]:
    quiet_tf()
    WORK.mkdir(parents=True, exist_ok=True)
    figures = []
    if "throughput" in only:
        figures += throughput(quick)
    if "rss" in only:
        figures += rss(quick)
    if "real" in only:
        figures += real_check(quick, model_dir)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--only", default="throughput,rss,real", help="comma-separated: throughput, rss, real")
    parser.add_argument("--model", default=None, help="trained model for the real check (default: train a CNN)")
    args = parser.parse_args()
    for fig in run(args.quick, tuple(args.only.split(",")), args.model):
        print(fig.line())


if __name__ == "__main__":
    main()
