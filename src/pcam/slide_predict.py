"""Score one whole-slide image tile by tile, resumably, and write its outputs.

Per slide, ``<out>/slides/<file name>/`` holds (built under a temporary name, renamed
into place when complete):

- ``tiles.csv``: ``row, col, x, y, size`` (level 0), ``tissue``, ``probability``
  (TTA mean), ``single_probability``;
- ``heatmap.png``: the probabilities over the slide thumbnail (:mod:`pcam.slide_outputs`);
- ``tumour.geojson``: tumour regions at the operating point (0.5 without one);
- ``slide.json``: the slide score (max and top-k mean), level, resolution, grid, counts.

**Resume.** Scores go to ``<out>/.partial/<file name>/scores.bin`` as they are made:
fixed 16-byte records (cell index int64, probability float32, single float32),
appended and fsynced one batch at a time beside ``state.json`` (the run's identity:
slide size and mtime, model sha256, views, grid). A killed run leaves that file; the
next run with the same identity reads the whole records back (a torn last record is
cut off), scores only the remaining tiles, and removes ``.partial`` when the slide's
outputs are in place. A different identity starts the slide afresh.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pcam.errors import DataError
from pcam.fsutil import atomic_dir, write_json
from pcam.metrics import json_safe
from pcam.scoring import Predictor
from pcam.slide import (
    PCAM_MPP,
    PCAM_TILE,
    TileGrid,
    iter_tile_batches,
    open_slide,
    slide_mpp,
    tile_grid,
    tissue_fraction,
    tissue_mask,
)
from pcam.slide_outputs import (
    heatmap_array,
    heatmap_png,
    heatmap_scale,
    slide_score,
    tumour_geojson,
)

log = logging.getLogger(__name__)

RECORD = np.dtype([("cell", "<i8"), ("p", "<f4"), ("single", "<f4")])
PARTIAL_DIR = ".partial"
SLIDE_JSON = "slide.json"


class SlidePlan:
    """An opened slide, its grid and its tissue tiles: everything checked before any model runs."""

    def __init__(self, path: Path, mpp: float | None, stride: int, min_tissue: float):
        """Open the slide, lay its tile grid and find the tissue tiles (``min_tissue`` share or more)."""
        self.path = path
        self.slide = open_slide(path)
        self.mpp0 = slide_mpp(self.slide, path, mpp)
        self.grid: TileGrid = tile_grid(self.slide, self.mpp0, stride)
        if self.grid.cols == 0 or self.grid.rows == 0:
            raise DataError(
                f"{path}: {self.grid.width0}x{self.grid.height0} px is smaller than one "
                f"{self.grid.tile0} px tile at {PCAM_MPP} µm/px"
            )
        self.tissue = tissue_mask(self.slide, path, self.grid)
        self.fraction = tissue_fraction(self.grid, self.tissue)
        self.cells = np.flatnonzero(self.fraction.ravel() >= min_tissue)
        self.stride, self.min_tissue = stride, min_tissue

    def identity(self, predictor: Predictor) -> dict[str, Any]:
        """What a partial result must match to be resumed: the slide file, the model, the grid."""
        stat = self.path.stat()
        g = self.grid
        return {
            "slide": self.path.name,
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "model_sha256": predictor.model_sha256,
            "views": list(predictor.views),
            "mpp0": self.mpp0,
            "level": g.level,
            "read_size": g.read_size,
            "tile0": g.tile0,
            "stride0": g.stride0,
            "cols": g.cols,
            "rows": g.rows,
            "min_tissue": self.min_tissue,
            "tissue_tiles": len(self.cells),
        }

    def close(self) -> None:
        """Close the slide file."""
        self.slide.close()


def _load_partial(state_dir: Path, identity: dict[str, Any]) -> np.ndarray:
    """Records already scored under the same identity (a torn trailing record dropped), else none."""
    state, scores = state_dir / "state.json", state_dir / "scores.bin"
    try:
        same = json.loads(state.read_text()) == json.loads(json.dumps(identity))
    except (OSError, ValueError):
        same = False
    if not same or not scores.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json(state, identity)
        return np.empty(0, dtype=RECORD)
    whole = scores.stat().st_size // RECORD.itemsize
    with open(scores, "r+b") as handle:
        handle.truncate(whole * RECORD.itemsize)
    return np.fromfile(scores, dtype=RECORD, count=whole)


def score_slide(
    plan: SlidePlan, predictor: Predictor, state_dir: Path, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Scores of every tissue tile (records sorted by cell), resuming from ``state_dir``."""
    done = _load_partial(state_dir, plan.identity(predictor))
    remaining = np.setdiff1d(plan.cells, done["cell"], assume_unique=False)
    if len(done):
        log.info("%s: resuming, %d of %d tiles already scored", plan.path.name, len(done), len(plan.cells))
    bar = tqdm(
        total=len(plan.cells),
        initial=len(plan.cells) - len(remaining),
        unit="tile",
        desc=plan.path.name[:30],
        disable=not progress,
    )
    with open(state_dir / "scores.bin", "ab") as handle:
        for cells, tiles in iter_tile_batches(plan.slide, plan.path, plan.grid, remaining, batch_size):
            mean, single = predictor.score(tiles, batch_size)
            records = np.empty(len(cells), dtype=RECORD)
            records["cell"], records["p"], records["single"] = cells, mean, single
            handle.write(records.tobytes())
            handle.flush()
            os.fsync(handle.fileno())  # a batch is either wholly on disk or cut off on resume
            bar.update(len(cells))
    bar.close()
    every = np.fromfile(state_dir / "scores.bin", dtype=RECORD)
    every = every[np.isin(every["cell"], plan.cells)]
    _, first = np.unique(every["cell"], return_index=True)
    return every[first]


def write_slide_outputs(
    plan: SlidePlan, predictor: Predictor, records: np.ndarray, out_dir: Path, top_k: int
) -> dict[str, Any]:
    """tiles.csv, heatmap.png, tumour.geojson and slide.json into ``out_dir`` (atomically)."""
    grid = plan.grid
    cells, probs = records["cell"], records["p"].astype(np.float64)
    threshold = predictor.operating_point if predictor.operating_point is not None else 0.5
    rows, cols = np.divmod(cells, grid.cols)
    scale = heatmap_scale(grid, plan.tissue.downsample)
    score = slide_score(records["p"], top_k)
    summary = {
        "slide": str(plan.path),
        "mpp0": plan.mpp0,
        "pcam_mpp": PCAM_MPP,
        "tile_px": PCAM_TILE,
        "level": grid.level,
        "level_downsample": grid.level_downsample,
        "level_mpp": grid.level_mpp,
        "read_size": grid.read_size,
        "resampled": grid.read_size != PCAM_TILE,
        "tile_size0": grid.tile0,
        "stride": plan.stride,
        "stride0": grid.stride0,
        "grid": {"cols": grid.cols, "rows": grid.rows},
        "width0": grid.width0,
        "height0": grid.height0,
        "min_tissue": plan.min_tissue,
        "tissue_threshold_saturation": plan.tissue.threshold,
        "mask_downsample": plan.tissue.downsample,
        "tiles_total": grid.cols * grid.rows,
        "tiles_scored": len(cells),
        "views": list(predictor.views),
        "score": score,
        "operating_point": predictor.operating_point,
        "operating_point_source": predictor.operating_point_source,
        "geojson_threshold": threshold,
        "label_at_operating_point": (
            None
            if predictor.operating_point is None or not len(cells)
            else int(score["max"] >= predictor.operating_point)
        ),
        "tumour_tiles": int((probs >= threshold).sum()),
        "heatmap_scale": scale,
        "model_file": str(predictor.model_file),
        "model_sha256": predictor.model_sha256,
    }
    with atomic_dir(out_dir, "slide-prediction") as tmp:
        with open(tmp / "tiles.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "col", "x", "y", "size", "tissue", "probability", "single_probability"])
            fraction = plan.fraction
            for r, c, p, s in zip(rows, cols, records["p"], records["single"], strict=True):
                x, y = grid.origin(int(r), int(c))
                writer.writerow([r, c, x, y, grid.tile0, f"{fraction[r, c]:.3f}", f"{p:.6f}", f"{s:.6f}"])
        heat = heatmap_array(grid, cells, records["p"], scale)
        heatmap_png(plan.tissue.image, heat).save(tmp / "heatmap.png")
        geo = tumour_geojson(grid, cells, records["p"], threshold, plan.path.stem)
        (tmp / "tumour.geojson").write_text(json.dumps(geo) + "\n")
        summary["tumour_regions"] = len(geo["features"])
        summary = json_safe(summary)  # a slide without tissue has NaN scores: null in JSON
        write_json(tmp / SLIDE_JSON, {**summary, "identity": plan.identity(predictor)})
    return summary


def predict_slide(
    path: Path,
    predictor: Predictor,
    out: Path,
    *,
    mpp: float | None = None,
    stride: int = PCAM_TILE,
    min_tissue: float = 0.25,
    top_k: int = 10,
    batch_size: int = 256,
    progress: bool = True,
    plan: SlidePlan | None = None,
) -> dict[str, Any]:
    """Score one slide into ``out/slides/<file name>/``; a finished slide with the same identity is reused."""
    plan = plan or SlidePlan(path, mpp, stride, min_tissue)
    slide_dir = out / "slides" / path.name
    state_dir = out / PARTIAL_DIR / path.name
    try:
        previous = slide_dir / SLIDE_JSON
        if previous.is_file():
            try:
                old = json.loads(previous.read_text())
            except ValueError:
                old = {}
            if old.get("identity") == json.loads(json.dumps(plan.identity(predictor))):
                log.info("%s: already predicted with this model and grid, kept", path.name)
                return {k: v for k, v in old.items() if k != "identity"}
        try:
            records = score_slide(plan, predictor, state_dir, batch_size, progress)
        except DataError:
            shutil.rmtree(state_dir, ignore_errors=True)  # a corrupt slide leaves nothing behind
            raise
        summary = write_slide_outputs(plan, predictor, records, slide_dir, top_k)
        shutil.rmtree(state_dir, ignore_errors=True)
        with_partial = out / PARTIAL_DIR
        if with_partial.is_dir() and not any(with_partial.iterdir()):
            with_partial.rmdir()
        return summary
    finally:
        plan.close()
