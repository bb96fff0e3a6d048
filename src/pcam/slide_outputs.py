"""What a scored slide becomes: heatmap over the thumbnail, tumour regions as GeoJSON, slide score.

**Heatmap.** Each tile owns the stride cell centred on it (its footprint when the
stride is the tile size). At heatmap scale ``s`` (level-0 pixels per heatmap pixel) a
cell with level-0 edges ``[a, b)`` covers heatmap pixels ``[round(a/s), round(b/s))``,
so neighbouring cells never overlap and the heatmap pixel under a tile's centre holds
that tile's probability. The PNG blends the thumbnail with the ``jet`` colour of the
probability (alpha :data:`HEATMAP_ALPHA`); untiled pixels show the thumbnail.

**GeoJSON** (what QuPath's *File > Import objects* reads): a FeatureCollection with one
Polygon feature per 4-connected region of tiles at or above the threshold, in level-0
pixel coordinates (origin top-left, as QuPath's ROIs), with ``objectType: annotation``
and classification ``Tumor``. Region outlines follow the cell edges; holes are inner
rings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from pcam.slide import TileGrid

MAX_HEATMAP_SIDE = 2048
HEATMAP_ALPHA = 0.5
TUMOUR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}


def heatmap_scale(grid: TileGrid, image_downsample: float) -> float:
    """Level-0 pixels per heatmap pixel: the thumbnail's, or coarser to keep the PNG <= 2048 px a side."""
    return max(float(image_downsample), max(grid.width0, grid.height0) / MAX_HEATMAP_SIDE)


def heatmap_array(grid: TileGrid, cells: np.ndarray, probs: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) float32 heatmap at ``scale``; NaN where no tile was scored."""
    height, width = math.ceil(grid.height0 / scale), math.ceil(grid.width0 / scale)
    heat = np.full((height, width), np.nan, dtype=np.float32)
    col_edges = np.round(grid.cell_edges(grid.cols) / scale).astype(np.int64)
    row_edges = np.round(grid.cell_edges(grid.rows) / scale).astype(np.int64)
    rows, cols = np.divmod(np.asarray(cells, dtype=np.int64), grid.cols)
    for r, c, p in zip(rows, cols, probs, strict=True):
        y0, y1 = max(row_edges[r], 0), max(row_edges[r + 1], row_edges[r] + 1)
        x0, x1 = max(col_edges[c], 0), max(col_edges[c + 1], col_edges[c] + 1)
        heat[y0:y1, x0:x1] = p
    return heat


def heatmap_png(thumbnail: np.ndarray, heat: np.ndarray) -> Image.Image:
    """The thumbnail (resized to the heatmap) blended with the jet colour of each probability."""
    from matplotlib import colormaps

    out = np.array(Image.fromarray(thumbnail).resize((heat.shape[1], heat.shape[0]), Image.Resampling.BILINEAR))
    scored = ~np.isnan(heat)
    # Colour only the scored pixels (a full-size float64 RGBA colour map is 16x the PNG).
    colour = colormaps["jet"](heat[scored], bytes=True)[:, :3].astype(np.float32)
    blend = (1 - HEATMAP_ALPHA) * out[scored].astype(np.float32) + HEATMAP_ALPHA * colour
    out[scored] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _rings(component: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed boundary rings of a boolean grid, vertices as (col, row) cell corners.

    Every cell contributes its four edges, directed so the cell lies on their right
    (y down); edges shared by two cells cancel. Where two rings touch at a corner
    (diagonal cells), the walk turns right first, which keeps them apart.
    """
    out_edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    edges = set()
    rows, cols = np.nonzero(component)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        for a, b in (
            ((c, r), (c + 1, r)),
            ((c + 1, r), (c + 1, r + 1)),
            ((c + 1, r + 1), (c, r + 1)),
            ((c, r + 1), (c, r)),
        ):
            if (b, a) in edges:
                edges.discard((b, a))
            else:
                edges.add((a, b))
    for a, b in edges:
        out_edges.setdefault(a, []).append(b)
    rings = []
    while out_edges:
        start = next(iter(out_edges))
        ring = [start]
        prev, here = start, out_edges[start].pop()
        if not out_edges[start]:
            del out_edges[start]
        while here != start:
            ring.append(here)
            d = (here[0] - prev[0], here[1] - prev[1])
            options = out_edges[here]
            for turn in ((-d[1], d[0]), d, (d[1], -d[0])):  # right, straight, left
                nxt = (here[0] + turn[0], here[1] + turn[1])
                if nxt in options:
                    break
            options.remove(nxt)
            if not options:
                del out_edges[here]
            prev, here = here, nxt
        rings.append(_simplify(ring))
    return rings


def _simplify(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop collinear vertices; the result is closed (first vertex repeated last)."""
    keep = []
    n = len(ring)
    for i in range(n):
        a, b, c = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) != (b[1] - a[1]) * (c[0] - b[0]):
            keep.append(b)
    return [*keep, keep[0]]


def _area(ring: Sequence[tuple[float, float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False))


def tumour_geojson(
    grid: TileGrid, cells: np.ndarray, probs: np.ndarray, threshold: float, slide_name: str
) -> dict[str, Any]:
    """FeatureCollection of tumour regions (tiles with probability >= threshold), level-0 pixels."""
    from scipy import ndimage

    positive = np.zeros((grid.rows, grid.cols), dtype=bool)
    best = np.zeros((grid.rows, grid.cols), dtype=np.float32)
    rows, cols = np.divmod(np.asarray(cells, dtype=np.int64), grid.cols)
    positive[rows, cols] = probs >= threshold
    best[rows, cols] = probs
    labels, count = ndimage.label(positive)  # 4-connectivity: diagonal neighbours are separate regions
    col_edges, row_edges = grid.cell_edges(grid.cols), grid.cell_edges(grid.rows)
    features = []
    for region in range(1, count + 1):
        component = labels == region
        rings = [[(int(col_edges[c]), int(row_edges[r])) for c, r in ring] for ring in _rings(component)]
        rings.sort(key=lambda ring: abs(_area(ring)), reverse=True)  # the outline first, then holes
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_name}-tumour-{region}",
                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring] for ring in rings]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"tumour region {region}",
                    "classification": TUMOUR_CLASS,
                    "isLocked": False,
                    "measurements": {
                        "tiles": int(component.sum()),
                        "max_probability": float(best[component].max()),
                        "threshold": float(threshold),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def slide_score(probs: np.ndarray, top_k: int) -> dict[str, Any]:
    """The maximum tile probability and the mean of the ``top_k`` highest (NaN without tiles)."""
    if len(probs) == 0:
        return {"max": math.nan, "top_k": top_k, "top_k_mean": math.nan}
    k = min(top_k, len(probs))
    top = np.partition(probs, len(probs) - k)[len(probs) - k :]
    return {"max": float(probs.max()), "top_k": k, "top_k_mean": float(top.mean())}
