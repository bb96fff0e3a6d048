"""Names and rules of the artifacts the steps hand to each other, written once.

A run (one model x policy pair) is a directory laid out as the pipeline and ``pcam run``
both write it::

    <run>/pair.json          {"model": ..., "policy": ...}
    <run>/train/model.keras  stage 1 (every model)
    <run>/finetune/model.keras  stage 2 (transfer models with finetune_epochs > 0)
    <run>/evaluate/metrics.json

This module imports nothing heavy: validation code and the kfp components call it
before TensorFlow loads.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from pcam.errors import DataError

if TYPE_CHECKING:
    import keras

MODEL_FILE = "model.keras"
"""The final Keras model of a train or fine-tune directory (and of a champion version)."""
PARTIAL_MODEL_FILE = "model.partial.keras"
"""The best model so far while training runs; renamed to :data:`MODEL_FILE` when training ends."""
METRICS_FILE = "metrics.json"
"""What ``pcam evaluate`` writes last in its directory (its presence marks completion)."""
TRAIN_DIR = "train"
FINETUNE_DIR = "finetune"
EVALUATE_DIR = "evaluate"


def final_model_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The directory holding a run's final model: ``finetune/`` when it holds a model, else ``train/``.

    The test is the model file, not the directory: a fine-tune step that failed (or a
    KFP output directory created empty) leaves ``finetune/`` without ``model.keras``,
    and the stage-1 model is then the run's final one.

    Args:
        run_dir: A run directory (``train/`` [+ ``finetune/``] + ``evaluate/``).

    Returns:
        ``run_dir/finetune`` or ``run_dir/train``; neither is checked to hold a model.
    """
    run_dir = Path(run_dir)
    finetune = run_dir / FINETUNE_DIR
    return finetune if (finetune / MODEL_FILE).is_file() else run_dir / TRAIN_DIR


def model_file(model: str | os.PathLike[str]) -> Path:
    """The ``.keras`` file of a model directory, or ``model`` itself when it names a ``.keras`` file.

    Args:
        model: A directory written by train/fine-tune, or a ``.keras`` file.

    Returns:
        The path of the model file (not checked to exist).
    """
    path = Path(model)
    return path if path.suffix == ".keras" and not path.is_dir() else path / MODEL_FILE


def load_model(model: str | os.PathLike[str], compile: bool = False) -> keras.Model:  # noqa: A002 - Keras' name
    """Load a model written by train/fine-tune: a model directory or a ``.keras`` file.

    The file is checked before Keras is imported, so a wrong path fails fast. Importing
    :mod:`pcam.models` first registers its custom layers (Keras' safe mode refuses to
    deserialize unknown ones).

    Args:
        model: A directory holding ``model.keras``, or a ``.keras`` file.
        compile: Restore the optimizer and loss too (only to continue training as saved).

    Returns:
        The Keras model.

    Raises:
        DataError: The file is missing, unreadable, or holds something else than a model.
    """
    path = model_file(model)
    if not path.is_file():
        raise DataError(f"{path}: model file missing (did the train step finish?)")
    import keras

    import pcam.models  # noqa: F401 - registers the custom layers

    try:
        loaded = keras.models.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable Keras model ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, keras.Model):
        raise DataError(f"{path}: holds a {type(loaded).__name__}, not a Keras model")
    return loaded
