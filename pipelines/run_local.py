"""Run the whole pipeline on this machine through kfp.local (no cluster, no Docker, offline).

    python -m pipelines.run_local --config configs/demo.yaml --out runs/demo [--source PATH]

Every step runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``:
nothing is pip-installed, so it works offline) with the same component code a
cluster runs in the image. Artifacts land under ``OUT/pipeline_root``; the command
prints each step's time and where the HTML report is. The data source is the
config's (synthetic for the demo) unless ``--source`` or env ``PCAM_SOURCE`` says
otherwise; the champion lives in ``OUT/champion`` unless the config names one, and
train/finetune checkpoint to ``OUT/pipeline_root/checkpoints/<run id>/`` (deleted
pair by pair once evaluated) unless it sets ``train.checkpoint_uri``.
"""

import argparse
import logging
import os
import re
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcam.config import TRANSFER_MODELS, ExperimentConfig, load_config
from pcam.errors import ConfigError, PcamError

LOCAL_IMAGE = "local-venv"
"""Recorded as the image in the report: locally the steps run in this virtualenv."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


class StepTimer(logging.Filter):
    """Times each task from kfp.local's own start/finish log lines.

    A filter on the root logger, not a handler: kfp.local swaps the root logger's
    handlers for its own while it runs. The local run uses parallelism 1 (two
    TensorFlow trainings on two cores only slow each other down), so a task name's
    start and finish lines pair up in order.
    """

    def __init__(self) -> None:
        """Start with no task seen."""
        super().__init__()
        self.started: dict[str, float] = {}
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Note the record if it starts or finishes a task; always let it through."""
        self._note(record)
        return True

    def _note(self, record: logging.LogRecord) -> None:
        message = ANSI.sub("", record.getMessage())
        if match := STARTED.search(message):
            self.started[match.group(1)] = record.created
        elif (match := FINISHED.search(message)) and match.group(1) in self.started:
            name = match.group(1)
            self.seconds[name].append(record.created - self.started.pop(name))
            self.status[name] = match.group(2)


def pipeline_arguments(cfg: ExperimentConfig, champion_uri: str, checkpoint_root: str = "") -> dict[str, Any]:
    """The pipeline parameters that reproduce ``cfg`` exactly (checkpoints under ``checkpoint_root``)."""
    from pipelines.pcam_training import config_arguments, config_param

    return {
        "config_yaml": config_param(cfg),
        **config_arguments(cfg),
        "champion_uri": champion_uri,
        "checkpoint_root": checkpoint_root or cfg.train.checkpoint_uri,
    }


def check_local_grid(cfg: ExperimentConfig) -> None:
    """kfp.local cannot collect the outputs of a loop with no iterations: both branches need a pair."""
    finetuned = [m for m in cfg.train.models if m in TRANSFER_MODELS and cfg.model(m).finetune_epochs > 0]
    trained_only = [m for m in cfg.train.models if m not in finetuned]
    if not finetuned or not trained_only:
        raise ConfigError(
            "train.models: a kfp.local run needs at least one fine-tuned transfer model (mobilenetv2/resnet50 "
            "with finetune_epochs > 0) and one other model; run `pcam run` for other grids"
        )


def run_local(
    cfg: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    champion_uri: str | None = None,
    runner: Any = None,
    image: str = LOCAL_IMAGE,
) -> tuple[Path, dict[str, list[float]]]:
    """Run the pipeline through kfp.local; returns (report.html path, seconds per step).

    ``runner`` defaults to ``SubprocessRunner(use_venv=False)`` (this virtualenv, image
    ``local-venv``); ``pipelines.run_container`` passes a DockerRunner and the image.
    """
    from kfp import local

    from pipelines.pcam_training import PIPELINE_NAME, build_pipeline

    check_local_grid(cfg)
    out = Path(out_dir).resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    champion = champion_uri or cfg.promote.champion_uri or str(out / "champion")
    # Under the pipeline root, the one host directory a DockerRunner container also sees.
    checkpoints = cfg.train.checkpoint_uri or str(root / "checkpoints")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Expected locally: the image is only a name here, and GPU/resources/retries are cluster settings.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build_pipeline(image=image, parallelism=1, retries=False)

    timer = StepTimer()
    logging.getLogger().addFilter(timer)
    before = set(root.iterdir())
    try:
        pipeline(**pipeline_arguments(cfg, champion, checkpoints))
    finally:
        logging.getLogger().removeFilter(timer)
    (run_dir,) = [p for p in root.iterdir() if p not in before and p.is_dir() and p.name.startswith(PIPELINE_NAME)]
    return find_report(run_dir), dict(timer.seconds)


def find_report(run_dir: Path) -> Path:
    """The report step's HTML artifact (one self-contained page) under a local run directory."""
    pages = sorted(run_dir.glob("**/report/html"))
    if not pages:
        raise PcamError(f"{run_dir}: the run finished but holds no report/html artifact")
    return pages[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.run_local``: the whole pipeline on this machine; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__.split("\n")[0])
    add_run_arguments(
        parser,
        out_help="output directory (pipeline_root and champion go here)",
        source_help="data source overriding data.source (default: env PCAM_SOURCE, else the config's)",
    )
    parser.add_argument("--format", default=None, help="data format for --source (default: auto)")
    parser.add_argument("--champion", default=None, help="champion location (default: the config's, else OUT/champion)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.source:
        overrides = {"data.source": args.source, "data.format": args.format or "auto"}
    elif args.format:
        overrides = {"data.format": args.format}
    return run_and_summarise(
        lambda: run_local(load_config(args.config, overrides), args.out, args.champion),
        "kfp.local, one subprocess per step",
    )


def add_run_arguments(parser: argparse.ArgumentParser, out_help: str, source_help: str) -> None:
    """The options every local runner takes: ``--config``, ``--out`` and ``--source`` (env ``PCAM_SOURCE``)."""
    parser.add_argument("--config", required=True, help="experiment YAML (configs/demo.yaml)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--source", default=os.environ.get("PCAM_SOURCE"), help=source_help)


def run_and_summarise(run: Callable[[], tuple[Path, dict[str, list[float]]]], how: str) -> int:
    """Call ``run`` (a whole local run), print its summary; the exit code of a ``main``.

    Args:
        run: Runs the pipeline; returns the report's path and each step's seconds.
        how: How the steps ran, for the summary's heading.

    Returns:
        0; 2 on bad input (one line, no traceback); 1 when kfp.local says a step failed (its log is above).
    """
    start = time.perf_counter()
    try:
        report, seconds = run()
    except PcamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # kfp.local: a step failed; its log is above
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(report, seconds, time.perf_counter() - start, how)
    return 0


def print_summary(report: Path, seconds: dict[str, list[float]], total: float, how: str) -> None:
    """Print each step's time, the total and where the report is."""
    print(f"\nstep times ({how}):")
    for name, values in seconds.items():
        runs = f" ({len(values)} runs)" if len(values) > 1 else ""
        print(f"  {name:<16} {sum(values):8.1f} s{runs}")
    print(f"  {'total':<16} {total:8.1f} s")
    print(f"\nHTML report: {report.parent / 'report_dir' / 'report.html'}")
    print(f"  (the same page as the UI's HTML artifact: {report}; summary.csv and plots/ beside it)")


if __name__ == "__main__":
    sys.exit(main())
