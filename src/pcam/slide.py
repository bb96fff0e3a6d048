"""Whole-slide images for ``pcam predict``: open, choose the level, mask tissue, cut tiles.

No TensorFlow here: everything a slide can get wrong (unsupported or corrupt file, no
resolution) is found before a model is loaded.

**Resolution.** PCam patches are 96x96 px at 10x: Camelyon16 level 0 (about
0.243 µm/px) downsampled 4x, so :data:`PCAM_MPP` = 0.972 µm/px. A slide's level-0
resolution comes from ``openslide.mpp-x``/``mpp-y`` (OpenSlide reads it from the
vendor metadata, or from a plain TIFF's XResolution with a centimetre/inch unit), or
from ``--mpp``. The level used is the coarsest one that is not coarser than PCam's
scale by more than :data:`LEVEL_TOLERANCE` (downsampling keeps detail, upsampling
invents none); when its resolution is within the tolerance, tiles are read at 96 px
as they are, else a ``96 * PCAM_MPP / level_mpp`` px square is read and resized to
96 px (bilinear).

**Coordinates.** Every tile is addressed by its level-0 top-left corner ``(x, y)`` and
its level-0 size; grid cell ``(row, col)`` starts at ``(round(col * stride0),
round(row * stride0))``. This is what tiles.csv, the heatmap and the GeoJSON use.

**Tissue.** Otsu's threshold on the HSV saturation of a low-resolution level (never
below :data:`MIN_SATURATION`: a blank slide is all background, not half tissue), then a
morphological closing and hole filling (pale fat and lumina inside tissue count as
tissue); transparent pixels (outside the scanned area) are background. A tile is scored when
at least ``min_tissue`` of its footprint is tissue.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcam.errors import DataError

PCAM_MPP = 0.972
"""µm per pixel of PCam patches (Camelyon16 level 0, ~0.243 µm/px, downsampled 4x: "10x")."""
PCAM_TILE = 96
LEVEL_TOLERANCE = 0.10
"""A level within 10 % of PCam's resolution is used as it is (PCam's own centres differ by ~7 %)."""
MIN_SATURATION = 20
"""Floor of the Otsu threshold on saturation (0..255): background glass is below it."""
MASK_PIXELS_PER_TILE = 4
"""The mask level is the coarsest whose pixels still give each tile at least 4x4 mask pixels."""
MAX_MASK_SIDE = 16384
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
"""File names treated as slides; .tif/.tiff only when they are not patches (a Kaggle patch is a .tif too)."""
MAX_PATCH_SIDE = 512
MAX_PATCH_BYTES = 4 << 20
"""An unreadable .tif bigger than this is reported as a damaged slide, smaller as a damaged patch image."""


def _openslide() -> Any:
    import openslide

    return openslide


def is_slide_file(path: Path) -> bool:
    """Is ``path`` a whole-slide image (readable or not)?

    .tif/.tiff are slides when OpenSlide recognises them, or when they are larger than
    :data:`MAX_PATCH_SIDE` (a damaged slide still has to be reported as one); a
    Kaggle patch is a small .tif.
    """
    suffix = path.suffix.lower()
    if suffix not in SLIDE_EXTENSIONS:
        return False
    if suffix not in (".tif", ".tiff"):
        return True
    try:
        if _openslide().OpenSlide.detect_format(str(path)) is not None:
            return True
    except Exception:  # noqa: BLE001 - detection failing is answered by the header check below
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                return max(image.size) > MAX_PATCH_SIDE
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return path.stat().st_size > MAX_PATCH_BYTES


def open_slide(path: Path) -> Any:
    """An ``openslide.OpenSlide`` for ``path``, or a DataError naming it."""
    openslide = _openslide()
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if _is_tiff(path):  # TIFF-based (plain, .svs, ...) yet unreadable: damaged, or a strip TIFF
            raise DataError(
                f"{path}: corrupt or truncated slide (a TIFF OpenSlide cannot read: cut short, "
                "damaged, or not a tiled pyramid)"
            ) from None
        raise DataError(f"{path}: unsupported slide format (OpenSlide cannot read it)") from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated slide ({_first_line(exc)})") from None


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def slide_mpp(slide: Any, path: Path, override: float | None) -> float:
    """Level-0 µm/px: ``override`` (``--mpp``) first, else the slide's own metadata."""
    if override is not None:
        if not (override > 0 and math.isfinite(override)):
            raise DataError(f"--mpp {override}: must be a positive number of µm per pixel")
        return float(override)
    props = slide.properties
    values = []
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            values.append(float(props[key]))
        except (KeyError, ValueError):
            pass
    values = [v for v in values if v > 0 and math.isfinite(v)]
    if not values:
        raise DataError(f"{path}: no resolution (microns per pixel) in the slide's metadata; pass --mpp")
    return float(np.mean(values))


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one slide are, in level-0 pixels, and how to read them."""

    level: int
    level_downsample: float
    level_mpp: float
    read_size: int
    """Pixels read at ``level`` per tile (resized to 96 when it is not 96)."""
    tile0: int
    """A tile's side in level-0 pixels."""
    stride0: float
    """Distance between grid cells in level-0 pixels."""
    cols: int
    rows: int
    width0: int
    height0: int

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Level-0 pixel coordinates (x, y) of the top-left corner of cell (row, col)."""
        return round(col * self.stride0), round(row * self.stride0)

    def cell_edges(self, n: int) -> np.ndarray:
        """Level-0 edges of the ``n`` stride cells along one axis, each centred on its tile."""
        offset = (self.tile0 - self.stride0) / 2
        return np.round(np.arange(n + 1) * self.stride0 + offset).astype(np.int64)


def choose_level(downsamples: tuple[float, ...], mpp0: float, target: float = PCAM_MPP) -> tuple[int, int]:
    """(level, pixels to read at it per 96 px tile) for a slide with these level downsamples."""
    limit = target * (1 + LEVEL_TOLERANCE)
    usable = [i for i, ds in enumerate(downsamples) if mpp0 * ds <= limit]
    level = max(usable, key=lambda i: downsamples[i]) if usable else 0
    ratio = target / (mpp0 * downsamples[level])
    read = PCAM_TILE if abs(ratio - 1) <= LEVEL_TOLERANCE else max(1, round(PCAM_TILE * ratio))
    return level, read


def tile_grid(slide: Any, mpp0: float, stride: int = PCAM_TILE) -> TileGrid:
    """The tile grid at PCam's scale; ``stride`` is in PCam pixels (96 = tiles side by side)."""
    if not 1 <= stride <= 4 * PCAM_TILE:
        raise DataError(f"--stride {stride}: must be 1..{4 * PCAM_TILE} PCam pixels")
    downsamples = tuple(float(d) for d in slide.level_downsamples)
    level, read = choose_level(downsamples, mpp0)
    ds = downsamples[level]
    width0, height0 = slide.dimensions
    tile0 = round(read * ds)
    stride0 = stride * read / PCAM_TILE * ds
    cols = int((width0 - tile0) // stride0) + 1 if width0 >= tile0 else 0
    rows = int((height0 - tile0) // stride0) + 1 if height0 >= tile0 else 0
    return TileGrid(level, ds, mpp0 * ds, read, tile0, stride0, cols, rows, int(width0), int(height0))


def _rgb(region: Image.Image) -> np.ndarray:
    """RGB uint8 from OpenSlide's RGBA; transparent pixels (no scanned data) become white."""
    rgba = np.asarray(region)
    rgb = np.ascontiguousarray(rgba[..., :3])
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def read_region(slide: Any, path: Path, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """RGB pixels of a region (location in level-0 pixels, size at ``level``); DataError on a bad file."""
    openslide = _openslide()
    try:
        return _rgb(slide.read_region(location, level, size))
    except (openslide.OpenSlideError, OSError) as exc:
        raise DataError(
            f"{path}: corrupt or truncated slide, reading level {level} at {location} failed ({_first_line(exc)})"
        ) from None


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask at ``downsample`` level-0 pixels per mask pixel, and the image it came from."""

    mask: np.ndarray
    image: np.ndarray
    downsample: float
    threshold: float


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (the split that maximises the between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 255.0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    mean_cum = np.cumsum(hist * levels)
    weight1 = total - weight0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_cum[-1] * weight0 - mean_cum * total) ** 2 / (weight0 * weight1)
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between))


def tissue_mask(slide: Any, path: Path, grid: TileGrid) -> TissueMask:
    """Otsu on saturation at the coarsest level that still gives each tile 4x4 mask pixels."""
    downsamples = [float(d) for d in slide.level_downsamples]
    fine_enough = [i for i, ds in enumerate(downsamples) if ds <= grid.tile0 / MASK_PIXELS_PER_TILE]
    level = max(fine_enough, key=lambda i: downsamples[i]) if fine_enough else 0
    width, height = slide.level_dimensions[level]
    if max(width, height) > MAX_MASK_SIDE:
        raise DataError(
            f"{path}: no pyramid level small enough for a tissue mask (level {level} is "
            f"{width}x{height}); convert the slide to a pyramidal format"
        )
    openslide = _openslide()
    try:
        rgba = np.asarray(slide.read_region((0, 0), level, (width, height)))
    except (openslide.OpenSlideError, OSError) as exc:
        raise DataError(
            f"{path}: corrupt or truncated slide, reading level {level} failed ({_first_line(exc)})"
        ) from None
    opaque = rgba[..., 3] > 0
    image = np.ascontiguousarray(rgba[..., :3])
    image[~opaque] = 255
    saturation = np.asarray(Image.fromarray(image).convert("HSV"))[..., 1]
    threshold = max(otsu_threshold(saturation[opaque]), MIN_SATURATION)
    mask = (saturation > threshold) & opaque
    # Pale parts of tissue (fat, lumina) fall under the threshold: close small gaps and fill
    # enclosed holes, so a tile is judged by the tissue it lies in, not by its own pallor.
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2)) & opaque
    return TissueMask(mask=mask, image=image, downsample=downsamples[level], threshold=threshold)


def tissue_fraction(grid: TileGrid, tissue: TissueMask) -> np.ndarray:
    """(rows, cols) share of each tile's footprint that is tissue (an integral image makes it O(1) a tile)."""
    integral = np.zeros((tissue.mask.shape[0] + 1, tissue.mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = tissue.mask.cumsum(0).cumsum(1)
    height, width = tissue.mask.shape

    def spans(n: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.round(np.arange(n) * grid.stride0 / tissue.downsample).astype(np.int64)
        stop = np.round((np.arange(n) * grid.stride0 + grid.tile0) / tissue.downsample).astype(np.int64)
        start = np.clip(start, 0, limit)
        return start, np.clip(np.maximum(stop, start + 1), 0, limit)

    y0, y1 = spans(grid.rows, height)
    x0, x1 = spans(grid.cols, width)
    total = integral[np.ix_(y1, x1)] - integral[np.ix_(y0, x1)] - integral[np.ix_(y1, x0)] + integral[np.ix_(y0, x0)]
    area = np.outer(y1 - y0, x1 - x0)
    return total / np.maximum(area, 1)


BLOCK_CELLS = 8
"""Tiles are read in blocks of up to 8x8 grid cells: one read_region call instead of 64."""


def tile_blocks(grid: TileGrid, cells: np.ndarray) -> list[np.ndarray]:
    """Group flat cell indices (row * cols + col, ascending) into blocks of BLOCK_CELLS x BLOCK_CELLS cells."""
    if len(cells) == 0:
        return []
    rows, cols = np.divmod(cells, grid.cols)
    key = (rows // BLOCK_CELLS) * (grid.cols // BLOCK_CELLS + 1) + cols // BLOCK_CELLS
    order = np.argsort(key, kind="stable")
    keys = key[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    return [cells[part] for part in np.split(order, bounds)]


def read_tiles(slide: Any, path: Path, grid: TileGrid, cells: np.ndarray) -> np.ndarray:
    """(len(cells), 96, 96, 3) uint8 tiles for flat cell indices that lie in one block.

    The block's bounding region is read once at the grid's level and cut into tiles;
    with resampling each cut is resized to 96 px.
    """
    rows, cols = np.divmod(cells, grid.cols)
    x0, y0 = grid.origin(int(rows.min()), int(cols.min()))
    x1, y1 = grid.origin(int(rows.max()), int(cols.max()))
    ds = grid.level_downsample
    width = round((x1 - x0) / ds) + grid.read_size
    height = round((y1 - y0) / ds) + grid.read_size
    region = read_region(slide, path, (x0, y0), grid.level, (width, height))
    out = np.empty((len(cells), PCAM_TILE, PCAM_TILE, 3), dtype=np.uint8)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        x, y = grid.origin(int(r), int(c))
        u, v = round((x - x0) / ds), round((y - y0) / ds)
        crop = region[v : v + grid.read_size, u : u + grid.read_size]
        if grid.read_size != PCAM_TILE:
            crop = np.asarray(Image.fromarray(crop).resize((PCAM_TILE, PCAM_TILE), Image.Resampling.BILINEAR))
        out[i] = crop
    return out


def iter_tile_batches(
    slide: Any, path: Path, grid: TileGrid, cells: np.ndarray, batch_size: int, workers: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(cell indices, tiles) in batches of ``batch_size``, read ahead by a thread pool.

    OpenSlide is thread-safe and decodes outside the GIL, so reading overlaps the model.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    blocks = tile_blocks(grid, cells)
    pending_cells: list[np.ndarray] = []
    pending_tiles: list[np.ndarray] = []
    held = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = 2 * workers
        futures: list[Future[np.ndarray] | None] = [
            pool.submit(read_tiles, slide, path, grid, b) for b in blocks[:ahead]
        ]
        for i, block in enumerate(blocks):
            future = futures[i]
            assert future is not None  # each block is consumed once, in order
            tiles = future.result()
            futures[i] = None  # let the block's pixels go once consumed
            if i + ahead < len(blocks):
                futures.append(pool.submit(read_tiles, slide, path, grid, blocks[i + ahead]))
            pending_cells.append(block)
            pending_tiles.append(tiles)
            held += len(block)
            while held >= batch_size:
                all_cells, all_tiles = np.concatenate(pending_cells), np.concatenate(pending_tiles)
                yield all_cells[:batch_size], all_tiles[:batch_size]
                pending_cells, pending_tiles = [all_cells[batch_size:]], [all_tiles[batch_size:]]
                held -= batch_size
        if held:
            yield np.concatenate(pending_cells), np.concatenate(pending_tiles)
