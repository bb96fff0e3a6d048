"""Apply a trained model to uint8 patches: the one scoring function of ``pcam predict`` and the server.

:func:`score_images` runs the model on every TTA view of a batch in one forward
pass (the views of :mod:`pcam.evaluate`) and returns the mean over views and the
identity view alone. :func:`load_predictor` loads a model the way ``pcam predict``
accepts it (model directory, ``.keras`` file, run directory, champion location, local
or ``gs://``), checks that it takes 96x96x3 patches and finds the operating point its
own evaluation chose. Nothing here imports slide libraries; TensorFlow is imported
only when a model is loaded or scored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcam import IMAGE_SHAPE
from pcam.artifacts import METRICS_FILE, MODEL_FILE
from pcam.config import EvaluateConfig
from pcam.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_VIEWS: tuple[str, ...] = EvaluateConfig().tta_views
"""The evaluation's default TTA views; ``views=N`` takes the first N of them."""
_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def view_names(views: int | Sequence[str]) -> tuple[str, ...]:
    """``3`` → (identity, hflip, vflip); a sequence of names is returned as a tuple."""
    if isinstance(views, (int, np.integer)):
        if not 1 <= int(views) <= len(DEFAULT_VIEWS):
            raise DataError(f"views: {views} is not 1..{len(DEFAULT_VIEWS)}")
        return DEFAULT_VIEWS[: int(views)]
    names = tuple(views)
    if not names:
        raise DataError("views: at least one TTA view is needed")
    return names


def _forward(model: Any, names: tuple[str, ...]) -> Any:
    """A compiled forward pass per (model, views), traced once for any batch size."""
    import tensorflow as tf

    from pcam.evaluate import tta_views

    per_model = _FORWARD.setdefault(model, {})
    if names not in per_model:
        spec = tf.TensorSpec((None, *IMAGE_SHAPE), tf.uint8)

        @tf.function(input_signature=[spec])
        def forward(batch: tf.Tensor) -> tf.Tensor:
            # Views of the uint8 batch, cast once: a quarter of the memory of float views.
            x = tf.cast(tta_views(batch, names), tf.float32)
            return tf.reshape(tf.cast(model(x, training=False), tf.float32), (len(names), -1))

        per_model[names] = forward
    return per_model[names]


def score_images(
    model: Any, images_uint8: np.ndarray, views: int | Sequence[str] = 1, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Tumour probabilities of (N, 96, 96, 3) uint8 patches: (TTA mean, identity view), each (N,) float32.

    All views of a batch go through the model in one call. With ``views=1`` both
    arrays are the same. The identity view is always scored, even when not listed.
    ``batch_size`` counts images per forward pass, views included (256 with 5 views
    is 51 patches a call): memory stays the same whatever the number of views.
    """
    names = view_names(views)
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(f"expected (N, 96, 96, 3) uint8 patches, got {images.dtype} {images.shape}")
    forward_names = names if "identity" in names else (*names, "identity")
    forward = _forward(model, forward_names)
    n = len(images)
    mean = np.empty(n, dtype=np.float32)
    single = np.empty(n, dtype=np.float32)
    step = max(1, batch_size // len(forward_names))
    for start in range(0, n, step):
        probs = forward(images[start : start + step]).numpy()
        mean[start : start + step] = probs[: len(names)].mean(axis=0)
        single[start : start + step] = probs[forward_names.index("identity")]
    return mean, single


@dataclass
class Predictor:
    """A loaded model, where it came from, and its operating point."""

    model: Any
    model_file: Path
    model_sha256: str
    views: tuple[str, ...]
    operating_point: float | None
    """Probability threshold the model's evaluation chose for the target sensitivity (None: unknown)."""
    operating_point_source: str
    target_sensitivity: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(TTA mean probability, single-view probability) of every image, batched."""
        return score_images(self.model, images, self.views, batch_size)


def resolve_model_file(model: str, stack: contextlib.ExitStack) -> tuple[Path, Path | None]:
    """(model.keras, its metrics.json or None) for a model dir, .keras file, run dir or champion location.

    A ``gs://`` location is copied to a temporary directory that ``stack`` removes. A
    champion location (``champion.json``) gives its current version, checked against the
    pointer's sha256 (:func:`pcam.champion.fetch`).
    """
    from pcam import champion, storage

    if storage.is_file(storage.join(model.removeprefix("file://"), champion.CHAMPION_FILE)):
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcam-champion-")))
        champion.fetch(model.removeprefix("file://"), tmp)
        return tmp / MODEL_FILE, (tmp / METRICS_FILE if (tmp / METRICS_FILE).is_file() else None)
    if model.startswith("gs://"):
        from pcam.ingest import copy_gcs

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pcam-model-")))
        path = copy_gcs(model, tmp / "model")
    else:
        from pcam.fsutil import local_path

        path = local_path(model)
    if not path.exists():
        raise DataError(f"{path}: model not found")
    if path.is_file():
        if path.suffix != ".keras":
            raise DataError(f"{path}: not a model (expected a directory holding {MODEL_FILE}, or a .keras file)")
        return path, _metrics_beside(path.parent)
    if not (path / MODEL_FILE).is_file():
        from pcam.artifacts import final_model_dir

        run_model = final_model_dir(path)
        if (run_model / MODEL_FILE).is_file():  # a run directory: train/ [+ finetune/] + evaluate/
            return run_model / MODEL_FILE, _metrics_beside(run_model)
        raise DataError(
            f"{path}: no {MODEL_FILE} here: expected a model directory (train/finetune output), "
            "a run directory, a champion location or a .keras file"
        )
    return path / MODEL_FILE, _metrics_beside(path)


def _metrics_beside(model_dir: Path) -> Path | None:
    """The champion's own metrics.json, or the run's evaluate/metrics.json next to a train dir."""
    for candidate in (model_dir / METRICS_FILE, model_dir.parent / "evaluate" / METRICS_FILE):
        if candidate.is_file():
            return candidate
    return None


def operating_point(
    metrics_path: Path | None, model_sha256: str, views: tuple[str, ...]
) -> tuple[float | None, str, float | None]:
    """(threshold, where it came from, target sensitivity) from the model's own evaluation.

    The TTA threshold applies to the TTA mean, the single-view one to one view; an
    evaluation of other bytes than this model file is not used.
    """
    if metrics_path is None:
        return None, "no metrics.json from an evaluation of this model", None
    from pcam.fsutil import read_json

    metrics = read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_path}: not an evaluate metrics.json")
    if metrics.get("model_sha256") not in (None, model_sha256):
        log.warning("%s evaluated another model file (sha256 differs): no operating point", metrics_path)
        return None, f"{metrics_path} is from another model file", None
    mode = "single" if len(views) == 1 else "tta"
    section = metrics.get(mode)
    value = section.get("sensitivity_threshold") if isinstance(section, dict) else None
    target = section.get("target_sensitivity") if isinstance(section, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None, f"{metrics_path}: no {mode}.sensitivity_threshold", None
    if mode == "tta" and tuple(metrics.get("views") or ()) != views:
        log.warning(
            "%s was evaluated with views %s, predicting with %s: its threshold is approximate",
            metrics_path,
            metrics.get("views"),
            list(views),
        )
    return float(value), f"{metrics_path} ({mode}.sensitivity_threshold)", target


def check_model(model: Any, path: Path) -> None:
    """The model must take (None, 96, 96, 3) (or unknown sizes) and give one probability."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        raise DataError(f"{path}: model has {len(shape)} inputs; pcam predict feeds one image input")
    if (
        shape is None
        or len(shape) != 4
        or any(s not in (None, want) for s, want in zip(shape[1:], IMAGE_SHAPE, strict=True))
    ):
        raise DataError(
            f"{path}: model expects input {tuple(shape) if shape else shape}, but PCam patches are {IMAGE_SHAPE}"
        )
    out = getattr(model, "output_shape", None)
    if isinstance(out, list) or out is None or tuple(out[1:]) not in ((1,), ()):
        raise DataError(f"{path}: model output {out} is not one tumour probability per image")


def load_predictor(
    model: str, views: int | Sequence[str], stack: contextlib.ExitStack, operating_point_override: float | None = None
) -> Predictor:
    """Load and check ``model``; see :func:`resolve_model_file` for what it may name."""
    from pcam.artifacts import load_model
    from pcam.fsutil import file_sha256

    names = view_names(views)
    model_file, metrics_path = resolve_model_file(str(model), stack)
    keras_model = load_model(model_file)
    check_model(keras_model, model_file)
    sha = file_sha256(model_file)
    point: float | None
    if operating_point_override is not None:
        point, source, target = float(operating_point_override), "--operating-point", None
    else:
        point, source, target = operating_point(metrics_path, sha, names)
    if point is None:
        log.warning("no operating point (%s): label_at_operating_point stays empty", source)
    return Predictor(
        keras_model,
        model_file,
        sha,
        names,
        point,
        source,
        target,
        info={"metrics": str(metrics_path) if metrics_path else None},
    )
