"""Report step: the study's comparison table over every evaluated pair."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.

from kfp.dsl import HTML, Dataset, Input, Markdown, Output

from components._common import make_component


def report(
    scratch_runs: Input[list[Dataset]],
    transfer_runs: Input[list[Dataset]],
    dataset: Input[Dataset],
    shards: Input[Dataset],
    config_yaml: str,
    report_dir: Output[Dataset],
    html: Output[HTML],
    summary: Output[Markdown],
):
    """Build the comparison report (table, curves, confusion matrices, ROC) and publish it to the UI.

    Args:
        scratch_runs: Run directories of the train-only pairs (evaluate's ``run``).
        transfer_runs: Run directories of the fine-tuned pairs.
        dataset: The canonical dataset (its manifest goes into the model card).
        shards: The shards (their index goes into the model card).
        config_yaml: The resolved experiment config.
        report_dir: Directory: summary.csv, summary.md, report.html, plots/*.png.
        html: The report as one self-contained page (plots inlined), shown by the UI.
        summary: The comparison table as Markdown, shown by the UI.
    """
    from pcam import step

    runs = [r.path for r in [*scratch_runs, *transfer_runs]]
    report_dir.metadata.update(
        step.report(runs, dataset.path, shards.path, config_yaml, report_dir.path, html.path, summary.path)
    )


report_op = make_component(report)
