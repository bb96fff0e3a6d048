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
    import logging
    import shutil
    from pathlib import Path

    import yaml

    from pcam.config import config_from_dict
    from pcam.report import build_report
    from pcam.study import run_context, step_seconds_from_runs

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    run_dirs = [Path(r.path) for r in [*scratch_runs, *transfer_runs]]
    context = {
        **run_context(cfg, dataset.path, shards.path, step_seconds_from_runs(run_dirs)),
        "orchestrator": "kubeflow pipelines",
    }
    build_report(run_dirs, report_dir.path, context)
    out = Path(report_dir.path)
    # The UI shows one file; report.html already embeds its figures as data: URIs.
    shutil.copyfile(out / "report.html", html.path)
    shutil.copyfile(out / "summary.md", summary.path)


report_op = make_component(report)
