"""Whole-slide prediction on a pyramidal TIFF made of real PCam patches: exact geometry, mask, outputs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.errors import DataError
from pcam.scoring import Predictor
from pcam.slide import (
    PCAM_MPP,
    choose_level,
    open_slide,
    otsu_threshold,
    read_tiles,
    slide_mpp,
    tile_grid,
    tissue_fraction,
    tissue_mask,
)
from pcam.slide_outputs import heatmap_array, slide_score, tumour_geojson
from pcam.slide_predict import RECORD, SlidePlan, predict_slide, score_slide
from tests.fixtures_predict import COLS, ROWS, mean_model


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(mean_model(), Path("mean.keras"), "0" * 64, ("identity",), 0.55, "test")


def expected_mean(patch: np.ndarray) -> float:
    return float(patch.astype(np.float64).mean() / 255)


def test_level_chosen_from_mpp():
    downsamples = (1.0, 2.0, 4.0, 8.0)
    assert choose_level(downsamples, 0.486) == (1, 96)  # level 1 is exactly PCam's 0.972 µm/px
    assert choose_level(downsamples, 0.243) == (2, 96)
    assert choose_level(downsamples, 0.972) == (0, 96)
    assert choose_level(downsamples, 0.25) == (2, 96)  # 1.0 µm/px: within 10 %, read as it is
    level, read = choose_level(downsamples, 0.6)  # level 1 would be 1.2 µm/px: too coarse
    assert (level, read) == (0, round(96 * PCAM_MPP / 0.6))
    assert choose_level(downsamples, 2.0) == (0, round(96 * PCAM_MPP / 2.0))  # coarser than PCam: upsampled


def test_slide_resolution_and_grid(test_slide):
    slide = open_slide(test_slide.path)
    mpp = slide_mpp(slide, test_slide.path, None)
    assert mpp == pytest.approx(0.486, rel=1e-6)
    grid = tile_grid(slide, mpp)
    assert (grid.level, grid.read_size, grid.tile0, grid.stride0) == (1, 96, 192, 192.0)
    assert (grid.rows, grid.cols) == (ROWS, COLS)
    assert grid.origin(3, 4) == (4 * 192, 3 * 192)
    half = tile_grid(slide, mpp, stride=48)
    assert (half.stride0, half.cols, half.rows) == (96.0, 2 * COLS - 1, 2 * ROWS - 1)


def test_tiles_at_level_1_are_the_real_patches(test_slide):
    slide = open_slide(test_slide.path)
    grid = tile_grid(slide, slide_mpp(slide, test_slide.path, None))
    cells = np.arange(grid.rows * grid.cols)
    tiles = read_tiles(slide, test_slide.path, grid, cells[:64])  # one 8x8 block...
    tiles = np.concatenate([tiles, read_tiles(slide, test_slide.path, grid, cells[64:])])  # ...and the rest
    by_row_col = {(int(i) // COLS, int(i) % COLS): t for i, t in zip(cells, tiles, strict=True)}
    for (r, c), patch in test_slide.cells.items():
        np.testing.assert_array_equal(by_row_col[(r, c)], patch, err_msg=f"cell {(r, c)}")


@pytest.mark.parametrize("mpp0, level", [(0.972, 0), (0.486, 1), (0.243, 2)])
def test_tile_coordinates_at_each_level(test_slide, mpp0, level):
    """A claimed resolution picks the level; every tile is the level's pixels under its level-0 box."""
    slide = open_slide(test_slide.path)
    grid = tile_grid(slide, slide_mpp(slide, test_slide.path, mpp0))
    assert grid.level == level and grid.read_size == 96
    width, height = slide.level_dimensions[level]
    whole = np.asarray(slide.read_region((0, 0), level, (width, height)))[..., :3]
    ds = slide.level_downsamples[level]
    cells = np.arange(grid.rows * grid.cols)
    for block in np.array_split(cells, 5):
        tiles = read_tiles(slide, test_slide.path, grid, block)
        for i, tile in zip(block, tiles, strict=True):
            x, y = grid.origin(int(i) // grid.cols, int(i) % grid.cols)
            u, v = round(x / ds), round(y / ds)
            np.testing.assert_array_equal(tile, whole[v : v + 96, u : u + 96])


def test_resampled_tiles_have_pcam_scale(test_slide):
    slide = open_slide(test_slide.path)
    grid = tile_grid(slide, slide_mpp(slide, test_slide.path, 0.6))  # no level within 10 % of 0.972
    size = round(96 * PCAM_MPP / 0.6)
    assert (grid.level, grid.read_size, grid.tile0, grid.stride0) == (0, size, size, size)
    tiles = read_tiles(slide, test_slide.path, grid, np.array([grid.cols + 1]))
    region = slide.read_region((size, size), 0, (size, size)).convert("RGB")
    np.testing.assert_array_equal(tiles[0], np.asarray(region.resize((96, 96), Image.Resampling.BILINEAR)))


def test_mask_excludes_background(test_slide):
    slide = open_slide(test_slide.path)
    grid = tile_grid(slide, slide_mpp(slide, test_slide.path, None))
    fraction = tissue_fraction(grid, tissue_mask(slide, test_slide.path, grid))
    glass = [(r, c) for r in range(ROWS) for c in range(COLS) if (r, c) not in test_slide.cells]
    assert all(fraction[rc] == 0 for rc in glass)
    tissue = np.array([fraction[rc] for rc in test_slide.cells])
    assert (tissue >= 0.25).mean() >= 0.85, tissue


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(500, 10), np.full(300, 120)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 120


def test_predict_slide_outputs_map_back_to_tiles(test_slide, predictor, tmp_path):
    summary = predict_slide(test_slide.path, predictor, tmp_path, min_tissue=0.01, progress=False)
    out = tmp_path / "slides" / test_slide.path.name
    rows = list(csv.DictReader(open(out / "tiles.csv")))
    scored = {(int(r["row"]), int(r["col"])) for r in rows}
    assert scored <= set(test_slide.cells)  # glass is never scored...
    assert len(scored) >= 0.9 * len(test_slide.cells)  # ...tissue is (a real patch can be nearly all white)
    for r in rows:
        cell = (int(r["row"]), int(r["col"]))
        assert (int(r["x"]), int(r["y"]), int(r["size"])) == (cell[1] * 192, cell[0] * 192, 192)
        assert float(r["probability"]) == pytest.approx(expected_mean(test_slide.cells[cell]), abs=2e-6)
    # Heatmap: the pixel under every tile's centre holds that tile's probability.
    plan = SlidePlan(test_slide.path, None, 96, 0.01)
    grid, scale = plan.grid, summary["heatmap_scale"]
    cells = np.array([int(r["row"]) * COLS + int(r["col"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows], dtype=np.float32)
    heat = heatmap_array(grid, cells, probs, scale)
    png = np.asarray(Image.open(out / "heatmap.png"))
    assert png.shape[:2] == heat.shape
    for cell, p in zip(cells, probs, strict=True):
        x, y = grid.origin(cell // COLS, cell % COLS)
        assert heat[int((y + 96) // scale), int((x + 96) // scale)] == pytest.approx(p, abs=1e-6)
    assert np.isnan(heat[0, 0]) and int(np.isfinite(heat).sum()) == len(cells) * (192 // int(scale)) ** 2
    plan.close()
    score = json.loads((out / "slide.json").read_text())["score"]
    assert score["max"] == pytest.approx(probs.max(), abs=1e-6)
    assert score["top_k_mean"] == pytest.approx(np.sort(probs)[-10:].mean(), abs=1e-6)
    geo = json.loads((out / "tumour.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    positive = probs >= 0.55
    area = sum(
        abs(_area(f["geometry"]["coordinates"][0])) - sum(abs(_area(h)) for h in f["geometry"]["coordinates"][1:])
        for f in geo["features"]
    )
    assert area == positive.sum() * 192 * 192


def _area(ring):
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False))


def test_geojson_regions_follow_the_tiles():
    from matplotlib.path import Path as MplPath

    from pcam.slide import TileGrid

    grid = TileGrid(0, 1.0, 0.972, 96, 100, 100.0, 6, 5, 600, 500)
    positive = {
        (0, 0),
        (0, 1),
        (1, 0),  # an L
        (1, 3),
        (1, 4),
        (1, 5),
        (2, 3),
        (2, 5),
        (3, 3),
        (3, 4),
        (3, 5),  # a ring around (2, 4)
        (4, 0),
    }  # alone
    cells = np.array([r * 6 + c for r in range(5) for c in range(6)])
    probs = np.array([0.9 if (c // 6, c % 6) in positive else 0.1 for c in cells], dtype=np.float32)
    geo = tumour_geojson(grid, cells, probs, 0.5, "s")
    polygons = [f["geometry"]["coordinates"] for f in geo["features"]]
    assert len(polygons) == 3
    assert sorted(len(p) for p in polygons) == [1, 1, 2]  # the ring has a hole
    for f in geo["features"]:
        assert f["geometry"]["type"] == "Polygon" and f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "Tumor"
        assert all(ring[0] == ring[-1] for ring in f["geometry"]["coordinates"])
    for r in range(5):
        for c in range(6):
            centre = (c * 100 + 50, r * 100 + 50)
            inside = sum(
                MplPath(p[0]).contains_point(centre) and not any(MplPath(h).contains_point(centre) for h in p[1:])
                for p in polygons
            )
            assert inside == ((r, c) in positive), (r, c)


def test_slide_score_max_and_top_k():
    probs = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    assert slide_score(probs, 2) == {"max": pytest.approx(0.9), "top_k": 2, "top_k_mean": pytest.approx(0.8)}
    assert slide_score(probs, 10)["top_k"] == 4


class _Interrupting:
    """Scores like the predictor, and is killed (KeyboardInterrupt) after ``batches`` batches."""

    def __init__(self, inner: Predictor, batches: int | None):
        self.inner, self.batches, self.scored = inner, batches, 0
        self.views, self.model_sha256 = inner.views, inner.model_sha256

    def score(self, images, batch_size=256):
        if self.batches is not None and self.scored >= self.batches * 8:
            raise KeyboardInterrupt
        self.scored += len(images)
        return self.inner.score(images, batch_size)


def test_killed_slide_run_resumes_without_rescoring(test_slide, predictor, tmp_path):
    state = tmp_path / ".partial" / "s"
    first = _Interrupting(predictor, batches=2)
    plan = SlidePlan(test_slide.path, None, 96, 0.01)
    with pytest.raises(KeyboardInterrupt):
        score_slide(plan, first, state, batch_size=8, progress=False)
    assert first.scored == 16
    assert (state / "scores.bin").stat().st_size == 16 * RECORD.itemsize
    with open(state / "scores.bin", "ab") as handle:
        handle.write(b"\x01" * 7)  # a record torn by the kill
    second = _Interrupting(predictor, batches=None)
    records = score_slide(plan, second, state, batch_size=8, progress=False)
    assert second.scored == len(plan.cells) - 16
    fresh = score_slide(plan, predictor, tmp_path / "fresh", batch_size=64, progress=False)
    np.testing.assert_array_equal(records["cell"], fresh["cell"])
    np.testing.assert_allclose(records["p"], fresh["p"], atol=1e-6)
    # Another model (identity differs) starts afresh instead of mixing scores.
    other = _Interrupting(Predictor(predictor.model, Path("x"), "1" * 64, ("identity",), None, "t"), None)
    score_slide(plan, other, state, batch_size=64, progress=False)
    assert other.scored == len(plan.cells)
    plan.close()


def test_slide_without_resolution_needs_mpp(real_patches, tmp_path):
    from pcam.slide_synth import write_slide

    tumour, _ = real_patches
    path = write_slide(tmp_path / "nompp.tif", lambda r, c: tumour[0], 3, 3, levels=2, resolution=False)
    slide = open_slide(path)
    with pytest.raises(DataError, match="nompp.tif: no resolution"):
        slide_mpp(slide, path, None)
    assert slide_mpp(slide, path, 0.486) == 0.486


def test_slide_without_tissue_gives_empty_outputs(tmp_path, predictor):
    from pcam.slide_synth import write_slide

    path = write_slide(tmp_path / "glass.tif", lambda r, c: None, 4, 5, levels=3)
    summary = predict_slide(path, predictor, tmp_path / "out", progress=False)
    assert summary["tiles_scored"] == 0 and summary["score"]["max"] is None
    out = tmp_path / "out" / "slides" / "glass.tif"
    assert json.loads((out / "tumour.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    assert json.loads((out / "slide.json").read_text())["score"]["top_k_mean"] is None
    assert (out / "heatmap.png").is_file()


def test_overlapping_tiles_own_the_cell_around_their_centre(test_slide, predictor, tmp_path):
    summary = predict_slide(test_slide.path, predictor, tmp_path, stride=48, min_tissue=0.01, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "slides" / test_slide.path.name / "tiles.csv")))
    assert summary["stride0"] == 96.0 and len(rows) > 3 * len(test_slide.cells)
    plan = SlidePlan(test_slide.path, None, 48, 0.01)
    grid = plan.grid
    plan.close()
    cells = np.array([int(r["row"]) * grid.cols + int(r["col"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows], dtype=np.float32)
    scale = summary["heatmap_scale"]
    heat = heatmap_array(grid, cells, probs, scale)
    for cell, p, r in zip(cells, probs, rows, strict=True):
        x, y = int(r["x"]), int(r["y"])
        assert (x, y) == grid.origin(cell // grid.cols, cell % grid.cols) and x % 96 == 0
        assert heat[int((y + 96) // scale), int((x + 96) // scale)] == pytest.approx(p, abs=1e-6)
        if (x % 192, y % 192) == (0, 0):  # a tile on the patch grid is exactly that patch
            assert p == pytest.approx(expected_mean(test_slide.cells[(y // 192, x // 192)]), abs=2e-6)
