"""Inference step 2b: every patch in the source, one predictions.csv."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Output

from components._common import make_component


def predict_patches(model_uri: str, source_uri: str, views: int, predictions: Output[Dataset]):
    """Run ``pcam predict`` on the patches of ``source_uri`` (slides there are left to the per-slide steps).

    Args:
        model_uri: Model directory, .keras file or champion location (local or gs://).
        source_uri: Folder or file of patches (any layout ``pcam ingest`` reads, HDF5, images).
        views: TTA views per patch (1..5).
        predictions: Directory: predictions.csv and predict.json.
    """
    from pcam import step

    step.predict(model_uri, source_uri, predictions.path, views=views, kinds=("patches",))


predict_patches_op = make_component(predict_patches)
