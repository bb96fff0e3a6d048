"""Inference step 2 (one pod per slide): tiles, heatmap, tiles.csv, GeoJSON and score of one slide."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Output

from components._common import make_component


def predict_slide(
    model_uri: str,
    slide_uri: str,
    mpp: float,
    stride: int,
    views: int,
    min_tissue: float,
    top_k: int,
    result: Output[Dataset],
):
    """Run ``pcam predict`` on one slide.

    Args:
        model_uri: Model directory, .keras file or champion location (local or gs://).
        slide_uri: The slide (local or gs://).
        mpp: Level-0 µm/px for slides without it in their metadata; 0 = read it from the slide.
        stride: Tile stride in PCam pixels (96: adjacent tiles).
        views: TTA views per tile (1 = none).
        min_tissue: Share of a tile that must be tissue for it to be scored.
        top_k: The slide score is also the mean of the top-k tiles.
        result: Directory: slides/<name>/ (tiles.csv, heatmap.png, tumour.geojson, slide.json), slides.csv.
    """
    from pcam import step

    step.predict(
        model_uri,
        slide_uri,
        result.path,
        slide_views=views,
        mpp=mpp or None,
        stride=stride,
        min_tissue=min_tissue,
        top_k=top_k,
        kinds=("slides",),
    )


predict_slide_op = make_component(predict_slide)
