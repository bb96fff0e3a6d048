"""Synthetic PCam in the official HDF5 layout, for offline demos and tests.

The files look exactly like the Zenodo release (``camelyonpatch_level_2_split_{split}_x.h5``
with dataset ``x`` (N, 96, 96, 3) uint8, ``_y.h5`` with ``y`` (N, 1, 1, 1) uint8, and
``_meta.csv`` with ``coord_y, coord_x, tumor_patch, center_tumor_patch, wsi`` after an
unnamed index column), so the demo exercises the same reader as the real data.

How a patch is drawn (all vectorised over a chunk of patches):

* Colour comes from a Beer-Lambert stain model: optical density = haematoxylin map x
  H vector + eosin map x E vector, ``rgb = 255 * exp(-od)``. Every slide gets its own
  stain vectors and intensity (two "centres", like Camelyon16's Radboud and Utrecht),
  so colour alone does not give the label away and slide grouping matters.
* Pink stroma: low-frequency eosin noise with a few white (fat/lumen) holes.
* Lymphocytes everywhere: small, round, dark nuclei (Poisson points convolved with a
  small disc by FFT).
* Tumour: a region of large, elongated, paler nuclei with coarse chromatin. Label 1
  means that region covers the centre 32x32 window (PCam's rule); about a quarter of
  the label-0 patches have tumour only in the border, so a model must look at the
  centre. Tumour displaces lymphocytes, so the mean darkness of the centre is about
  the same for both labels: a linear model on raw pixels does much worse than a
  small CNN, which sees nucleus size and shape.

Labels are exactly balanced per split; slides are disjoint between splits and come
as "tumor" slides (both labels) and "normal" slides (label 0 only), like Camelyon16.
``SYNTHETIC.json`` marks the directory so ingest records ``synthetic: true``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.fft as sfft

from pcam.argtypes import integer
from pcam.config import SyntheticConfig, check_bounds
from pcam.fsutil import atomic_dir, write_json

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
PREFIX = "camelyonpatch_level_2_split"
MARKER_FILE = "SYNTHETIC.json"
META_COLUMNS = ("coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi")
SIZE = 96
CHUNK = 128
"""Patches drawn per vectorised step (bounds memory: a few float32 arrays of CHUNK x 96 x 96)."""

# Haematoxylin and eosin optical-density directions (Ruifrok & Johnston), unit vectors.
_H = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_E = np.array([0.072, 0.990, 0.105], dtype=np.float32)


def file_names(split: str) -> tuple[str, str, str]:
    """The official names of a split's image, label and meta files (uncompressed)."""
    return f"{PREFIX}_{split}_x.h5", f"{PREFIX}_{split}_y.h5", f"{PREFIX}_{split}_meta.csv"


def write_synthetic(out_dir: str | os.PathLike[str], sizes: SyntheticConfig, seed: int, *, force: bool = False) -> Path:
    """Write synthetic train/valid/test files in the official HDF5 layout into ``out_dir``.

    Deterministic for ``(sizes, seed)``. The directory is built under a temporary name
    and renamed into place, so an interrupted run leaves nothing behind.
    """
    check_bounds(sizes, "data.synthetic")  # the ranges the config loader checks, for sizes built in code
    counts = {"train": sizes.train, "valid": sizes.valid, "test": sizes.test}
    slides_per_split = _slides_per_split(counts, sizes.slides)
    out = Path(out_dir)
    with atomic_dir(out, "synthetic", force=force) as tmp:
        for k, split in enumerate(SPLIT_NAMES):
            rng = np.random.default_rng([seed, k])
            _write_split(tmp, split, counts[split], slides_per_split[split], rng)
        write_json(
            tmp / MARKER_FILE, {"generator": "pcam.synth", "seed": seed, "sizes": counts, "slides": slides_per_split}
        )
    log.info("synthetic PCam written to %s (%s)", out, counts)
    return out


def _slides_per_split(counts: dict[str, int], total: int) -> dict[str, int]:
    """Share ``total`` slides in proportion to split sizes, at least two per split."""
    n = sum(counts.values())
    share = {s: max(2, round(total * c / n)) for s, c in counts.items()}
    while sum(share.values()) > total:  # take back from the largest share above the minimum
        biggest = max((s for s in share if share[s] > 2), key=lambda s: share[s])
        share[biggest] -= 1
    share["train"] += total - sum(share.values())
    return share


def _write_split(root: Path, split: str, n: int, n_slides: int, rng: np.random.Generator) -> None:
    x_name, y_name, meta_name = file_names(split)
    labels = np.zeros(n, dtype=np.uint8)
    labels[: n // 2] = 1
    rng.shuffle(labels)
    # Half the slides are "tumor" slides (both labels), the rest "normal" (label 0 only).
    n_tumor = max(1, n_slides // 2)
    slide_names = [f"synthetic_{split}_tumor_{i:03d}" for i in range(n_tumor)]
    slide_names += [f"synthetic_{split}_normal_{i:03d}" for i in range(n_slides - n_tumor)]
    slide = np.where(labels == 1, rng.integers(0, n_tumor, n), rng.integers(0, n_slides, n))
    slide[np.flatnonzero(labels == 0)[:n_slides]] = np.arange(min(n_slides, int((labels == 0).sum())))
    # Border-only tumour happens on tumor slides only.
    border = (labels == 0) & (slide < n_tumor) & (rng.random(n) < 0.5)
    stains = _slide_stains(n_slides, rng)
    with h5py.File(root / x_name, "w") as fx:
        x = fx.create_dataset("x", shape=(n, SIZE, SIZE, 3), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            x[start:stop] = draw_patches(
                labels[start:stop], border[start:stop], {k: v[slide[start:stop]] for k, v in stains.items()}, rng
            )
    with h5py.File(root / y_name, "w") as fy:
        fy.create_dataset("y", data=labels.reshape(n, 1, 1, 1))
    meta = pd.DataFrame(
        {
            "coord_y": rng.integers(0, 2000, n) * 96,
            "coord_x": rng.integers(0, 2000, n) * 96,
            "tumor_patch": (labels == 1) | border,
            "center_tumor_patch": labels == 1,
            "wsi": np.asarray(slide_names)[slide],
        }
    )
    meta.to_csv(root / meta_name)


def _slide_stains(n_slides: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-slide stain vectors and intensities: two staining 'centres' plus slide jitter."""
    centre = rng.integers(0, 2, n_slides)
    h_vec = _H + rng.normal(0, 0.06, (n_slides, 3)) + np.where(centre[:, None] == 1, [0.08, -0.05, 0.06], 0.0)
    e_vec = _E + rng.normal(0, 0.06, (n_slides, 3)) + np.where(centre[:, None] == 1, [0.05, -0.08, 0.04], 0.0)
    h_vec = np.abs(h_vec) / np.linalg.norm(h_vec, axis=1, keepdims=True)
    e_vec = np.abs(e_vec) / np.linalg.norm(e_vec, axis=1, keepdims=True)
    return {
        "h_vec": h_vec.astype(np.float32),
        "e_vec": e_vec.astype(np.float32),
        "h_gain": rng.uniform(0.75, 1.25, n_slides).astype(np.float32),
        "e_gain": rng.uniform(0.6, 1.4, n_slides).astype(np.float32),
    }


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells`` x ``cells`` grid upsampled bilinearly."""
    grid = rng.random((n, cells, cells), dtype=np.float32)
    pos = np.linspace(0, cells - 1, SIZE, dtype=np.float32)
    lo = np.floor(pos).astype(int).clip(0, cells - 2)
    frac = pos - lo
    up = np.zeros((SIZE, cells), dtype=np.float32)
    up[np.arange(SIZE), lo] = 1 - frac
    up[np.arange(SIZE), lo + 1] = frac
    return up @ grid @ up.T


def _nucleus(a: float, b: float, angle: float, vesicular: bool) -> np.ndarray:
    """One soft elliptical nucleus centred at (0, 0) with wrap-around (for FFT convolution).

    Vesicular (tumour) nuclei have a dark rim, a paler inside and a dark nucleolus.
    """
    d = np.fft.fftfreq(SIZE, 1 / SIZE).astype(np.float32)  # 0, 1, ..., -1: wrapped offsets
    dy, dx = d[:, None], d[None, :]
    c, s = np.cos(angle), np.sin(angle)
    r = np.sqrt(((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2)
    disc = np.clip((1.2 - r) * 3.0, 0.0, 1.0) * (1.0 if vesicular else 1.6)
    if vesicular:
        disc = disc * (0.55 + 0.45 * np.clip((r - 0.55) * 4, 0, 1)) + np.clip((0.3 - r) * 4, 0, 1) * 0.6
    return disc.astype(np.float32)


_LYMPH_RADII = (1.7, 1.9, 2.1, 2.3, 2.5)
_TUMOUR_SHAPES = tuple(
    (a, a * ratio, k * np.pi / 8) for a in (4.0, 4.7, 5.4) for ratio in (0.55, 0.75) for k in range(8)
)


@functools.lru_cache(maxsize=1)
def _kernel_bank() -> tuple[np.ndarray, np.ndarray]:
    """FFTs of the lymphocyte and tumour nucleus shapes, computed once per process."""
    lymph = np.stack([_nucleus(r, r, 0.0, False) for r in _LYMPH_RADII])
    tumour = np.stack([_nucleus(a, b, t, True) for a, b, t in _TUMOUR_SHAPES])
    return sfft.rfft2(lymph), sfft.rfft2(tumour)


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_CENTRE_MARGIN = np.zeros((SIZE, SIZE), dtype=bool)
_CENTRE_MARGIN[24:72, 24:72] = True
_H_LEVELS, _E_LEVELS = 128, 64
_H_SCALE, _E_SCALE = 63.5, 48.0
"""Optical densities are quantised (with dither) and coloured through a per-slide lookup table."""


def draw_patches(
    labels: np.ndarray, border: np.ndarray, stains: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Draw one chunk of patches, vectorised: (n, 96, 96, 3) uint8.

    ``labels[i] == 1``: a tumour region covers the centre 32x32 window.
    ``border[i]``: label 0 with tumour only outside the centre (and an 8-pixel margin).
    """
    n = len(labels)
    f32 = np.float32
    pos = labels == 1
    # Tumour region: an irregular blob. Positives: near the middle, covering the centre
    # window. Border cases: in a corner, kept clear of the centre window and its margin.
    corner = rng.integers(0, 4, n)
    cy = np.where(pos, rng.uniform(40, 56, n), np.where(corner < 2, 8.0, 88.0) + rng.uniform(-6, 6, n)).astype(f32)
    cx = np.where(pos, rng.uniform(40, 56, n), np.where(corner % 2 == 0, 8.0, 88.0) + rng.uniform(-6, 6, n)).astype(f32)
    radius = np.where(pos, rng.uniform(30, 60, n), rng.uniform(16, 30, n)).astype(f32)
    wobble = _smooth_noise(rng, n, 4) * f32(0.6) + f32(0.7)
    dist2 = (_YY - cy[:, None, None]) ** 2 + (_XX - cx[:, None, None]) ** 2
    region = dist2 < (radius[:, None, None] * wobble) ** 2
    region &= (pos | border)[:, None, None]
    region[~pos] &= ~_CENTRE_MARGIN
    region[pos, 32:64, 32:64] = True

    # Nucleus centres from one uniform draw: lymphocytes (small, round, dark) outside the
    # tumour, tumour nuclei (large, elongated, vesicular, sparser) inside; the densities
    # give both about the same mean darkness.
    u = rng.random((n, SIZE, SIZE), dtype=f32)
    d_lymph = rng.uniform(0.007, 0.016, n).astype(f32)[:, None, None]
    d_tumour = rng.uniform(0.0030, 0.0050, n).astype(f32)[:, None, None]
    lymph_pts = ((u < d_lymph) & ~region).astype(f32)
    tumour_a = ((u < d_tumour / 2) & region).astype(f32)
    tumour_b = ((u >= d_tumour / 2) & (u < d_tumour) & region).astype(f32)
    k_lymph, k_tumour = _kernel_bank()
    spectrum = sfft.rfft2(lymph_pts, workers=-1) * k_lymph[rng.integers(0, len(_LYMPH_RADII), n)]
    spectrum += sfft.rfft2(tumour_a, workers=-1) * k_tumour[rng.integers(0, len(_TUMOUR_SHAPES), n)]
    spectrum += sfft.rfft2(tumour_b, workers=-1) * k_tumour[rng.integers(0, len(_TUMOUR_SHAPES), n)]
    nuclei = np.clip(sfft.irfft2(spectrum, s=(SIZE, SIZE), workers=-1), 0.0, 1.8).astype(f32)

    # Stroma (eosin) with white holes (fat, lumen); tumour cytoplasm is a little pinker.
    stroma = _smooth_noise(rng, n, 12)
    holes = _smooth_noise(rng, n, 6) > rng.uniform(0.8, 1.0, n).astype(f32)[:, None, None]
    eosin = (f32(0.35) + f32(0.45) * stroma) * (f32(1) - f32(0.6) * np.minimum(nuclei, f32(1)))
    eosin[holes] *= f32(0.1)
    eosin += f32(0.12) * region
    haem = (nuclei + f32(0.04)) * stains["h_gain"][:, None, None]
    eosin *= stains["e_gain"][:, None, None]

    # Colour: quantise the two optical densities with dither noise, then look up
    # 255 * exp(-(h * H + e * E)) in a per-patch table (cheaper than exp per pixel).
    dither = rng.random((2, n, SIZE, SIZE), dtype=f32) * f32(3.0)
    hq = np.clip((haem * f32(_H_SCALE) + dither[0]).astype(np.int32), 0, _H_LEVELS - 1)
    eq = np.clip((eosin * f32(_E_SCALE) + dither[1]).astype(np.int32), 0, _E_LEVELS - 1)
    h_od = np.arange(_H_LEVELS, dtype=f32) / f32(_H_SCALE)
    e_od = np.arange(_E_LEVELS, dtype=f32) / f32(_E_SCALE)
    od = (
        h_od[None, :, None, None] * stains["h_vec"][:, None, None, :]
        + e_od[None, None, :, None] * stains["e_vec"][:, None, None, :]
    )
    table = np.clip(np.rint(255.0 * np.exp(-od)), 0, 255).astype(np.uint8).reshape(-1, 3)
    index = (np.arange(n, dtype=np.int32)[:, None, None] * _H_LEVELS + hq) * _E_LEVELS + eq
    return table[index]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam synth`` options on ``parser``."""
    defaults = SyntheticConfig()
    parser.add_argument("--out", required=True, help="output directory (official HDF5 layout)")
    parser.add_argument("--train", type=integer, default=defaults.train, help="training patches")
    parser.add_argument("--valid", type=integer, default=defaults.valid, help="validation patches")
    parser.add_argument("--test", type=integer, default=defaults.test, help="test patches")
    parser.add_argument("--slides", type=integer, default=defaults.slides, help="slides in all (split disjointly)")
    parser.add_argument("--seed", type=integer, default=42)
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not a pcam synth output")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam synth`` (write synthetic PCam files in the official HDF5 format); returns the exit code."""
    from pcam.config import load_config

    cfg = load_config(
        "",
        {
            "seed": args.seed,
            "data.synthetic": {"train": args.train, "valid": args.valid, "test": args.test, "slides": args.slides},
        },
    )
    out = write_synthetic(args.out, cfg.data.synthetic, cfg.seed, force=args.force)
    print(out)
    return 0
