"""Readers of image files: decode (and with ``convert`` fix) patches, in threaded batches.

With ``convert=True`` other images are converted instead of refused: Pillow
``convert("RGB")`` (grayscale is replicated, an alpha channel is dropped without
compositing, palette images are expanded), 16-bit/float data are scaled to 0..255
first (uint16 / 257, float in [0, 1] x 255), and other sizes are resized to 96x96
bilinearly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pcam import IMAGE_SHAPE
from pcam.errors import DataError
from pcam.ingest.common import IMAGE_EXTENSIONS, Batch, Stats

FILE_BATCH = 512
"""Image files decoded per writer batch."""

_MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "RGBA": "RGBA",
    "P": "palette",
    "1": "1-bit",
    "CMYK": "CMYK",
    "I;16": "16-bit grayscale",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float pixel data to uint8 (only used with convert=True)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return np.clip(np.rint(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if finite.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def _convert_pil(image: Image.Image) -> np.ndarray:
    """Any Pillow image to (96, 96, 3) uint8 RGB: scaled to 8 bits, converted to RGB, resized bilinearly."""
    if image.mode.startswith("I") or image.mode == "F":
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != IMAGE_SHAPE[:2][::-1]:
        image = image.resize(IMAGE_SHAPE[:2][::-1], Image.Resampling.BILINEAR)
    return np.asarray(image)


def convert_array(image: np.ndarray) -> np.ndarray:
    """One HDF5 row of any shape/dtype to (96, 96, 3) uint8 (convert=True)."""
    data = _to_uint8(image)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return _convert_pil(Image.fromarray(data))


def read_image(path: Path, convert: bool, stats: Stats | None = None) -> np.ndarray:
    """Decode one image file with Pillow; check (or, with ``convert``, fix) shape and mode.

    Args:
        path: The image file.
        convert: Convert another shape or mode to 96x96 RGB instead of refusing it.
        stats: Counts the converted images.

    Returns:
        The image, (96, 96, 3) uint8.

    Raises:
        DataError: The file cannot be decoded, or (without ``convert``) is not 96x96 RGB.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "RGB" and image.size == (IMAGE_SHAPE[1], IMAGE_SHAPE[0]):
                return np.asarray(image)
            if not convert:
                kind = _MODE_NAMES.get(image.mode, f"mode {image.mode}")
                raise DataError(
                    f"{path}: {image.size[0]}x{image.size[1]} {kind} image; expected 96x96 RGB "
                    "uint8 (ingest with convert=True / --convert to convert and resize)"
                )
            if stats is not None:
                stats.count_converted()
            return _convert_pil(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def file_batches(
    paths: list[Path],
    labels: np.ndarray,
    ids: list[str],
    slides: list[str] | None,
    convert: bool,
    stats: Stats,
    workers: int | None,
) -> Callable[[], Iterator[Batch]]:
    """Decode files in batches of :data:`FILE_BATCH` with a thread pool (Pillow releases the GIL while decoding).

    Args:
        paths: The image files, in output order.
        labels: Their labels.
        ids: Their ids.
        slides: Their slides, or None when unknown.
        convert: Convert images of another shape or mode instead of refusing them.
        stats: Counts the converted images.
        workers: Decoding threads (default: CPU count, at most 8).

    Returns:
        A function that streams the batches (each call decodes again).
    """
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(chunk: list[Path]) -> np.ndarray:
        return np.stack([read_image(p, convert, stats) for p in chunk])

    def batches() -> Iterator[Batch]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), FILE_BATCH):
                stop = min(len(paths), start + FILE_BATCH)
                step = max(1, (stop - start) // (workers * 2))
                chunks = [paths[i : min(stop, i + step)] for i in range(start, stop, step)]
                images = np.concatenate(list(pool.map(decode, chunks)))
                yield images, labels[start:stop], ids[start:stop], slides[start:stop] if slides else None

    return batches


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``; hidden entries skipped), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
