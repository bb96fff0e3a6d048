"""``pcam predict``: apply a trained model (or the champion) to patches and whole-slide images.

Inputs (``--input``, one or more; local paths or ``gs://``):

- patches: any layout ``pcam ingest`` reads, one HDF5 ``x`` file, a flat folder of
  96x96 images (:mod:`pcam.patches`) → ``<out>/predictions.csv`` with columns
  ``source, id, probability`` (mean over the TTA views), ``single_probability``
  (identity view), ``label_at_0.5``, ``label_at_operating_point`` (empty when the
  model has no evaluation), ``true_label`` (when the source has labels);
- whole-slide images (OpenSlide formats and plain pyramidal TIFF; a folder may mix
  slides and patch images) → ``<out>/slides/<file name>/`` (:mod:`pcam.slide_predict`)
  and ``<out>/slides.csv``, one row per slide.

The operating point is the threshold that the model's own evaluation chose for its
target sensitivity (``metrics.json``: the champion's, or ``evaluate/`` beside a train
directory); ``--operating-point`` overrides it. ``<out>/predict.json`` records the
model, views, threshold and counts; it is written last.

Every input is checked before TensorFlow loads (missing/empty/unsupported/corrupt
file, slide without resolution): a bad one stops the command with one line naming it,
exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from pcam.errors import DataError
from pcam.fsutil import atomic_open, check_output, mark_directory, write_json
from pcam.scoring import (
    DEFAULT_VIEWS,
    Predictor,
    load_predictor,
    operating_point,
    score_images,
    view_names,
)
from pcam.slide import PCAM_MPP, PCAM_TILE, SLIDE_EXTENSIONS, is_slide_file

__all__ = ["score_images", "Predictor", "load_predictor", "predict", "plan_inputs"]

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
KIND = "predictions"
SLIDES_FILE = "slides.csv"
SUMMARY_FILE = "predict.json"
COLUMNS = (
    "source",
    "id",
    "probability",
    "single_probability",
    "label_at_0.5",
    "label_at_operating_point",
    "true_label",
)


@dataclass
class Inputs:
    """What ``--input`` resolved to: patch sources (path, flat image files or None) and slide files."""

    patches: list[tuple[Path, list[Path] | None]] = field(default_factory=list)
    slides: list[Path] = field(default_factory=list)


PatchCounts = TypedDict("PatchCounts", {"patches": int, "positive_at_0.5": int, "positive_at_operating_point": int})
"""Patches scored, and how many came out positive at 0.5 and at the operating point."""


class PatchSummary(PatchCounts):
    """The ``patches`` section of ``predict.json``."""

    views: list[str]
    file: str
    operating_point: float | None
    operating_point_source: str


class SlidesSummary(TypedDict):
    """The ``slides`` section of ``predict.json`` (per-slide rows are in ``slides.csv``)."""

    count: int
    file: str
    views: list[str]
    operating_point: float | None
    operating_point_source: str


class _PredictCommon(TypedDict):
    model_file: str
    model_sha256: str
    inputs: list[str]
    pcam_mpp: float


class PredictSummary(_PredictCommon, total=False):
    """``predict.json``: the model, the inputs, and a section per kind of input predicted."""

    patches: PatchSummary
    slides: SlidesSummary


def _local(uri: str, stack: contextlib.ExitStack) -> Path:
    if uri.startswith("gs://"):
        import tempfile

        from pcam.ingest import copy_gcs

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcam-input-")))
        return copy_gcs(uri, tmp / "input")
    from pcam.fsutil import local_path

    return local_path(uri)


def plan_inputs(uris: list[str], stack: contextlib.ExitStack) -> Inputs:
    """Sort every ``--input`` into patch sources and slides; DataError for a missing, empty or unknown one."""
    from pcam.ingest import IMAGE_EXTENSIONS, detect_format
    from pcam.patches import image_files

    inputs = Inputs()
    for uri in uris:
        path = _local(uri, stack)
        if not path.exists():
            raise DataError(f"{path}: does not exist")
        if path.is_file():
            suffix = path.suffix.lower()
            if is_slide_file(path) or (suffix in SLIDE_EXTENSIONS and suffix not in (".tif", ".tiff")):
                inputs.slides.append(path)
            elif path.name.endswith((".h5", ".h5.gz")) or suffix in IMAGE_EXTENSIONS:
                inputs.patches.append((path, None))
            else:
                raise DataError(
                    f"{path}: unsupported format (expected a slide: {', '.join(SLIDE_EXTENSIONS)}; "
                    "an HDF5 file; or a patch image)"
                )
            continue
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise DataError(f"{path}: empty folder, nothing to predict")
        try:
            detect_format(path)
            inputs.patches.append((path, None))  # a layout ingest reads: its own readers list the files
            continue
        except DataError:
            pass
        slides = sorted(p for p in entries if p.is_file() and is_slide_file(p))
        images = [p for p in image_files(path) if p not in slides]
        if not slides and not images:
            raise DataError(
                f"{path}: no slides ({', '.join(SLIDE_EXTENSIONS)}), patch layouts or patch images "
                f"({', '.join(IMAGE_EXTENSIONS)}) to predict"
            )
        inputs.slides += slides
        if images:
            inputs.patches.append((path, images))
    names = [s.name for s in inputs.slides]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise DataError(f"{duplicate}: two input slides share this file name; their outputs would collide")
    return inputs


def _with_views(predictor: Predictor, views: tuple[str, ...], override: float | None) -> Predictor:
    """The same model with other TTA views (and the operating point that goes with them)."""
    if views == predictor.views:
        return predictor
    metrics = predictor.info.get("metrics")
    point, source, target = (
        (override, "--operating-point", None)
        if override is not None
        else operating_point(Path(metrics) if metrics else None, predictor.model_sha256, views)
    )
    return Predictor(
        predictor.model, predictor.model_file, predictor.model_sha256, views, point, source, target, predictor.info
    )


def predict_patches(
    sources: list[tuple[Path, list[Path] | None]],
    predictor: Predictor,
    out: Path,
    stack: contextlib.ExitStack,
    *,
    convert: bool = False,
    batch_size: int = 256,
    progress: bool = True,
) -> PatchCounts:
    """Stream every patch source through the model into ``out/predictions.csv`` (atomic)."""
    from tqdm import tqdm

    from pcam.patches import open_patch_source

    opened = [(path, open_patch_source(path, stack, convert=convert, files=files)) for path, files in sources]
    total = sum(source.count for _, source in opened)
    if total == 0:
        raise DataError(f"{', '.join(str(p) for p, _ in opened)}: no patches to predict")
    point = predictor.operating_point
    counts: PatchCounts = {"patches": 0, "positive_at_0.5": 0, "positive_at_operating_point": 0}
    with (
        atomic_open(out / PREDICTIONS_FILE, "w", newline="") as handle,
        tqdm(total=total, unit="patch", desc="predict", disable=not progress) as bar,
    ):
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for path, source in opened:
            log.info("predicting %d patches from %s", source.count, source.description)
            for images, ids, labels in source.batches():
                mean, single = predictor.score(images, batch_size)
                at_half = mean >= 0.5
                at_point = mean >= point if point is not None else None
                for i, patch_id in enumerate(ids):
                    writer.writerow(
                        [
                            str(path),
                            patch_id,
                            f"{mean[i]:.6f}",
                            f"{single[i]:.6f}",
                            int(at_half[i]),
                            "" if at_point is None else int(at_point[i]),
                            "" if labels is None else int(labels[i]),
                        ]
                    )
                counts["patches"] += len(ids)
                counts["positive_at_0.5"] += int(at_half.sum())
                counts["positive_at_operating_point"] += 0 if at_point is None else int(at_point.sum())
                bar.update(len(ids))
    return counts


def predict(
    model: str,
    inputs: list[str],
    out: str | Path,
    *,
    views: int | None = None,
    slide_views: int = 1,
    mpp: float | None = None,
    stride: int = PCAM_TILE,
    min_tissue: float = 0.25,
    top_k: int = 10,
    batch_size: int = 256,
    operating_point_override: float | None = None,
    convert: bool = False,
    progress: bool = True,
    kinds: tuple[str, ...] = ("patches", "slides"),
    force: bool = False,
) -> PredictSummary:
    """Predict every input with ``model``; returns what ``predict.json`` holds.

    ``views`` TTA views for patches (default: the evaluation's five), ``slide_views``
    for slide tiles (default 1: a slide has tens of thousands of tiles). ``kinds``
    restricts a mixed input to its patches or its slides (the inference pipeline
    predicts them in separate steps).
    """
    from pcam.slide_predict import SlidePlan

    out = check_output(out, KIND, inputs=[*inputs, model], force=force)
    _check_options(min_tissue, top_k, batch_size, operating_point_override)
    patch_views = view_names(views if views is not None else len(DEFAULT_VIEWS))
    tile_views = view_names(slide_views)
    with contextlib.ExitStack() as stack:
        planned = plan_inputs(inputs, stack)
        planned.patches = planned.patches if "patches" in kinds else []
        planned.slides = planned.slides if "slides" in kinds else []
        if not planned.patches and not planned.slides:
            raise DataError(f"{', '.join(inputs)}: no {' or '.join(kinds)} to predict")
        for slide in planned.slides:  # every slide opens, has a resolution and a readable thumbnail
            SlidePlan(slide, mpp, stride, min_tissue).close()
        predictor = load_predictor(
            model, patch_views if planned.patches else tile_views, stack, operating_point_override
        )
        out.mkdir(parents=True, exist_ok=True)
        mark_directory(out, KIND)  # holds the resumable state of slides scored so far
        summary: PredictSummary = {
            "model_file": str(predictor.model_file),
            "model_sha256": predictor.model_sha256,
            "inputs": list(inputs),
            "pcam_mpp": PCAM_MPP,
        }
        if planned.patches:
            patch_predictor = _with_views(predictor, patch_views, operating_point_override)
            counts = predict_patches(
                planned.patches, patch_predictor, out, stack, convert=convert, batch_size=batch_size, progress=progress
            )
            summary["patches"] = {
                **counts,
                "views": list(patch_views),
                "file": PREDICTIONS_FILE,
                "operating_point": patch_predictor.operating_point,
                "operating_point_source": patch_predictor.operating_point_source,
            }
        if planned.slides:
            slide_predictor = _with_views(predictor, tile_views, operating_point_override)
            summary["slides"] = _predict_slides(
                planned.slides,
                slide_predictor,
                out,
                mpp=mpp,
                stride=stride,
                min_tissue=min_tissue,
                top_k=top_k,
                batch_size=batch_size,
                progress=progress,
            )
        write_json(out / SUMMARY_FILE, summary)
    return summary


def _check_options(min_tissue: float, top_k: int, batch_size: int, operating_point: float | None) -> None:
    """The options' ranges, before any input is opened."""
    if not 0.0 <= min_tissue <= 1.0:
        raise DataError(f"--min-tissue {min_tissue}: must be between 0 and 1")
    if top_k < 1 or batch_size < 1:
        raise DataError("--top-k and --batch-size must be at least 1")
    if operating_point is not None and not 0.0 <= operating_point <= 1.0:
        raise DataError(f"--operating-point {operating_point}: must be a probability (0..1)")


def _predict_slides(slides: list[Path], predictor: Predictor, out: Path, **options: Any) -> SlidesSummary:
    """Score every slide (:func:`pcam.slide_predict.predict_slide` with ``options``) and write ``slides.csv``."""
    from pcam.slide_predict import predict_slide

    results = [predict_slide(path, predictor, out, **options) for path in slides]
    _write_slides_csv(out / SLIDES_FILE, slides, results)
    return {
        "count": len(results),
        "file": SLIDES_FILE,
        "views": list(predictor.views),
        "operating_point": predictor.operating_point,
        "operating_point_source": predictor.operating_point_source,
    }


def _write_slides_csv(path: Path, slides: list[Path], results: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "slide",
                "tiles_scored",
                "max",
                "top_k",
                "top_k_mean",
                "label_at_operating_point",
                "tumour_regions",
                "outputs",
            ]
        )
        for slide, r in zip(slides, results, strict=True):
            score = r["score"]
            label = r.get("label_at_operating_point")
            writer.writerow(
                [
                    slide.name,
                    r["tiles_scored"],
                    _fmt(score["max"]),
                    score["top_k"],
                    _fmt(score["top_k_mean"]),
                    "" if label is None else label,
                    r.get("tumour_regions", 0),
                    f"slides/{slide.name}",
                ]
            )


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="model directory (model.keras), .keras file, run directory, or champion location (local or gs://)",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="patch source (ingest layouts, HDF5 file, folder of images) and/or slides or folders "
        "of slides; local or gs://",
    )
    parser.add_argument("--out", required=True, help="output directory (predictions.csv, slides/, predict.json)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not a pcam predict output")
    parser.add_argument(
        "--views",
        type=int,
        default=None,
        help=f"TTA views for patches, 1..{len(DEFAULT_VIEWS)} (default {len(DEFAULT_VIEWS)}: "
        f"{', '.join(DEFAULT_VIEWS)})",
    )
    parser.add_argument("--slide-views", type=int, default=1, help="TTA views for slide tiles (default 1)")
    parser.add_argument(
        "--mpp", type=float, default=None, help="level-0 microns per pixel for slides whose metadata lacks it"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=PCAM_TILE,
        help=f"tile stride in PCam pixels (default {PCAM_TILE}: adjacent tiles; 48: half overlap)",
    )
    parser.add_argument(
        "--min-tissue",
        type=float,
        default=0.25,
        help="score a tile when at least this share of it is tissue (default 0.25)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="slide score: mean of the k highest tiles (default 10)")
    parser.add_argument("--batch-size", type=int, default=256, help="patches per forward pass (default 256)")
    parser.add_argument(
        "--operating-point",
        type=float,
        default=None,
        help="probability threshold for label_at_operating_point (default: the model's evaluation)",
    )
    parser.add_argument(
        "--convert",
        action="store_true",
        help="convert grayscale/RGBA images and resize other sizes to 96x96 instead of rejecting",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    summary = predict(
        args.model,
        args.input,
        args.out,
        views=args.views,
        slide_views=args.slide_views,
        mpp=args.mpp,
        stride=args.stride,
        min_tissue=args.min_tissue,
        top_k=args.top_k,
        batch_size=args.batch_size,
        operating_point_override=args.operating_point,
        convert=args.convert,
        progress=not args.no_progress,
        force=args.force,
    )
    out = Path(args.out)
    if "patches" in summary:
        p = summary["patches"]
        print(
            f"{p['patches']} patches: {p['positive_at_0.5']} at 0.5, "
            f"{p['positive_at_operating_point']} at the operating point -> {out / PREDICTIONS_FILE}"
        )
    if "slides" in summary:
        print(f"{summary['slides']['count']} slides -> {out / SLIDES_FILE}")
    return 0
