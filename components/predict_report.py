"""Inference step 3: every slide's heatmap and score on one page in the KFP UI."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import HTML, Dataset, Input, Output

from components._common import make_component


def predict_report(results: Input[list[Dataset]], html: Output[HTML], table: Output[Dataset]):
    """Gather the per-slide results into one HTML page (heatmaps inlined) and a slides.csv.

    Args:
        results: The predict_slide results, one per slide.
        html: The page the UI shows.
        table: slides.csv: one row per slide (scores, label at the operating point, regions).
    """
    from pathlib import Path

    from pcam.inference import inference_page

    inference_page([Path(r.path) for r in results], Path(html.path), Path(table.path))


predict_report_op = make_component(predict_report)
