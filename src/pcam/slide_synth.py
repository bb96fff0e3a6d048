"""Write a pyramidal tiled TIFF slide assembled from PCam patches, with its resolution in the tags.

The slide is a grid of ``rows x cols`` cells of 96x96 px at PCam's scale
(:data:`pcam.slide.PCAM_MPP`); each cell is a given patch or background. Level 0 is
that picture enlarged ``upscale`` times (pixel repetition), so its resolution is
``PCAM_MPP / upscale``; level ``k`` is level 0 downsampled by ``2**k`` (block means).
With ``upscale=2``, level 1 holds the patches' exact pixels. Tiles are produced one
at a time from the cells, so a slide of any size is written in bounded memory.

OpenSlide reads the file as ``generic-tiff`` and derives ``openslide.mpp-x/y`` from
XResolution/YResolution (pixels per centimetre). Tests and benches use it; real
slides come from scanners.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pcam.fsutil import atomic_path
from pcam.slide import PCAM_MPP, PCAM_TILE

BACKGROUND = (241, 240, 243)
"""Glass: bright and nearly unsaturated, like a scanner's background."""
TIFF_TILE = 256


def write_slide(
    path: str | os.PathLike[str],
    cell: Callable[[int, int], np.ndarray | None],
    rows: int,
    cols: int,
    *,
    upscale: int = 2,
    levels: int = 4,
    resolution: bool = True,
    compression: str | None = "zlib",
) -> Path:
    """Write the slide to ``path`` (atomically); ``cell(row, col)`` gives a (96, 96, 3) uint8 patch or None.

    ``resolution=False`` leaves the resolution tags out (a slide without MPP).
    """
    import tifffile

    mpp0 = PCAM_MPP / upscale
    width0, height0 = cols * PCAM_TILE * upscale, rows * PCAM_TILE * upscale
    background = np.array(BACKGROUND, dtype=np.uint8)

    def canvas(x: int, y: int, w: int, h: int) -> np.ndarray:
        """The PCam-scale picture in [x, x+w) x [y, y+h) (background outside the grid)."""
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = background
        for r in range(max(0, y // PCAM_TILE), min(rows, math.ceil((y + h) / PCAM_TILE))):
            for c in range(max(0, x // PCAM_TILE), min(cols, math.ceil((x + w) / PCAM_TILE))):
                patch = cell(r, c)
                if patch is None:
                    continue
                cx, cy = c * PCAM_TILE, r * PCAM_TILE
                x0, x1 = max(x, cx), min(x + w, cx + PCAM_TILE)
                y0, y1 = max(y, cy), min(y + h, cy + PCAM_TILE)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = patch[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
        return out

    def tiles(downsample: int) -> Iterator[np.ndarray]:
        width, height = math.ceil(width0 / downsample), math.ceil(height0 / downsample)
        for ty in range(0, height, TIFF_TILE):
            for tx in range(0, width, TIFF_TILE):
                yield _level_tile(canvas, tx, ty, downsample, upscale)

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=width0 * height0 * 3 > 2**31) as tiff:
            for k in range(levels):
                ds = 2**k
                width, height = math.ceil(width0 / ds), math.ceil(height0 / ds)
                extra: dict[str, Any] = {}
                if resolution:
                    per_cm = 1e4 / (mpp0 * ds)
                    extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                tiff.write(
                    tiles(ds),
                    shape=(height, width, 3),
                    dtype=np.uint8,
                    tile=(TIFF_TILE, TIFF_TILE),
                    photometric="rgb",
                    compression=compression,
                    subfiletype=0 if k == 0 else 1,
                    metadata=None,
                    **extra,
                )
    return Path(path)


def _level_tile(
    canvas: Callable[[int, int, int, int], np.ndarray], tx: int, ty: int, downsample: int, upscale: int
) -> np.ndarray:
    """One TIFF tile of the level at ``downsample``: PCam pixels repeated or block-averaged."""
    if downsample <= upscale:
        k = upscale // downsample
        part = canvas(tx // k, ty // k, TIFF_TILE // k, TIFF_TILE // k)
        return np.repeat(np.repeat(part, k, axis=0), k, axis=1)
    f = downsample // upscale
    part = canvas(tx * f, ty * f, TIFF_TILE * f, TIFF_TILE * f).astype(np.float32)
    part = part.reshape(TIFF_TILE, f, TIFF_TILE, f, 3).mean(axis=(1, 3))
    return np.clip(np.rint(part), 0, 255).astype(np.uint8)
