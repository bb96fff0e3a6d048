"""The whole study in one process: ingest → split → shard → train (+ fine-tune) → evaluate → report.

``pcam run`` is the same flow as the Kubeflow pipeline, minus the orchestrator: each
step calls the library function its component calls, writing the same directory
layout under ``out_dir``. Useful on a workstation, in notebooks and in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcam.artifacts import final_model_dir
from pcam.config import TRANSFER_MODELS, ExperimentConfig, load_config
from pcam.errors import DataError
from pcam.fsutil import check_output, mark_directory, read_json, write_json

if TYPE_CHECKING:
    from pcam.report import Summary

log = logging.getLogger(__name__)

STUDY_KIND = "study"
STUDY_FILE = "study.json"


def package_versions() -> dict[str, str]:
    """Versions a reviewer needs to reproduce a result (kfp only when installed; no heavy imports)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("pcam", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "h5py", "matplotlib", "kfp"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "tensorflow-cpu" in versions:  # the x86_64 wheel: say it is TensorFlow
        versions.setdefault("tensorflow", versions.pop("tensorflow-cpu") + " (cpu wheel)")
        versions.pop("tensorflow-cpu", None)
    return versions


def step_seconds_from_runs(run_dirs: list[Path]) -> dict[str, float]:
    """Train, fine-tune and evaluate seconds summed over the pairs, read from their outputs.

    Where steps run as separate tasks (Kubeflow) the report step never sees their wall
    clock; these are the times the steps measured themselves (per-epoch training time
    from the final model's history, which holds both stages, and inference time),
    without process start and model loading.
    """
    totals: dict[str, float] = {}

    def add(step: str, seconds: float) -> None:
        totals[step] = round(totals.get(step, 0.0) + float(seconds or 0.0), 2)

    for run_dir in map(Path, run_dirs):
        model_dir = final_model_dir(run_dir)
        if (model_dir / "history.json").exists():
            for epoch in read_json(model_dir / "history.json"):
                add(epoch.get("stage", "train"), epoch.get("seconds"))
        if (run_dir / "evaluate" / "metrics.json").exists():
            add("evaluate", read_json(run_dir / "evaluate" / "metrics.json").get("seconds"))
    return totals


def run_context(
    cfg: ExperimentConfig, dataset_dir: Path | str, shards_dir: Path | str, step_seconds: dict[str, float] | None = None
) -> dict[str, Any]:
    """What the report's model card states: data, split, seeds, hashes, versions, image."""
    manifest = read_json(Path(dataset_dir) / "manifest.json")
    index = read_json(Path(shards_dir) / "index.json")
    return {
        "experiment": cfg.name,
        "source": manifest["source"],
        "format": manifest["format"],
        "synthetic": bool(manifest.get("synthetic")),
        "split_mode": index.get("split_mode", cfg.split.mode),
        "split_facts": index.get("split_facts") or {},
        "seed": cfg.seed,
        "config_digest": cfg.digest(),
        "image": os.environ.get("PCAM_IMAGE", "local (no container)"),
        "data_checksums": {name: info["sha256"] for name, info in manifest["files"].items()},
        "shard_checksums": {s["name"]: s["sha256"] for split in index["splits"].values() for s in split["shards"]},
        "counts": {split: info["records"] for split, info in index["splits"].items()},
        "versions": package_versions(),
        "step_seconds": step_seconds or {},
    }


def study_identity(cfg: ExperimentConfig) -> dict[str, str]:
    """A digest per config section that decides what a run's checkpoints were trained on."""
    sections = cfg.to_dict()
    sections["train"] = {k: v for k, v in sections["train"].items() if k != "checkpoint_uri"}
    return {
        name: hashlib.sha256(json.dumps(sections[name], sort_keys=True).encode()).hexdigest()
        for name in ("seed", "data", "split", "augment", "shard", "defaults", "models", "train")
    }


def _check_study_resumable(out: Path, identity: dict[str, str]) -> None:
    """Refuse up front, before redoing the data steps, a rerun whose checkpoints another config made.

    Each training step checks its own checkpoint again (with the data's digest), so a
    source whose files changed under the same path is caught there.
    """
    if not any((out / "runs").glob("*/*/checkpoint")):
        return
    found = read_json(out / STUDY_FILE).get("identity", {}) if (out / STUDY_FILE).exists() else {}
    differ = sorted(k for k in identity if found.get(k) != identity[k])
    if differ:
        raise DataError(
            f"{out}: its checkpoints were trained with other settings ({', '.join(differ)} differ); "
            "pass --no-resume to retrain, or use a fresh --out"
        )


class _StepTimer:
    """Wall seconds per step name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Log the step's start and add its wall time to :attr:`seconds` (summed over repeats)."""
        log.info("── %s", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)


def _data_steps(cfg: ExperimentConfig, out: Path, timer: _StepTimer) -> None:
    """Ingest (generating the synthetic source first if asked), split and shard under ``out``."""
    from pcam import ingest, shard, split

    dataset_dir, split_dir, shards_dir = out / "dataset", out / "split", out / "shards"
    with timer.step("ingest"):
        source, fmt = cfg.data.source, cfg.data.format
        if source == "synthetic":
            from pcam.synth import write_synthetic

            source = str(write_synthetic(out / "synthetic-source", cfg.data.synthetic, cfg.seed))
            fmt = "synthetic"
        ingest.ingest(
            source,
            dataset_dir,
            fmt=fmt,
            convert=cfg.data.convert,
            limit_per_split=cfg.data.limit_per_split,
            seed=cfg.seed,
        )
    with timer.step("split"):
        split.split_dataset(dataset_dir, split_dir, cfg.split.mode, cfg.split.ratios, cfg.seed)
    with timer.step("shard"):
        shard.write_shards(dataset_dir, split_dir, shards_dir, cfg.augment, cfg.shard, cfg.seed)


def _pair(
    cfg: ExperimentConfig, pair_dir: Path, shards_dir: Path, pair: tuple[str, str], timer: _StepTimer, *, resume: bool
) -> Path:
    """Train (and fine-tune, for a transfer model with fine-tune epochs) one pair; evaluate its final model.

    Returns:
        The directory of the model that was evaluated.
    """
    from pcam import evaluate, train

    model_name, policy = pair
    pair_dir.mkdir(parents=True, exist_ok=True)
    write_json(pair_dir / "pair.json", {"model": model_name, "policy": policy})
    with timer.step("train"):
        train.train(shards_dir, pair_dir / "train", cfg, model_name, policy, resume=resume)
    # The stage this call ran decides, not what is on disk: a rerun with fine-tuning
    # switched off must not evaluate (or crown) an earlier run's finetune/model.keras.
    final_dir = pair_dir / "train"
    if model_name in TRANSFER_MODELS and cfg.model(model_name).finetune_epochs > 0:
        with timer.step("finetune"):
            train.finetune(final_dir, shards_dir, pair_dir / "finetune", cfg, model_name, policy, resume=resume)
        final_dir = pair_dir / "finetune"
    with timer.step("evaluate"):
        evaluate.evaluate(final_dir, shards_dir, pair_dir / "evaluate", cfg)
    return final_dir


def run_study(
    cfg: ExperimentConfig, out_dir: str | os.PathLike[str], *, resume: bool = True, force: bool = False
) -> Summary:
    """Run every (model, policy) pair of ``cfg`` and build the report; returns the report's summary.

    Rerun into the same ``out_dir``, data steps are redone and training resumes from its
    checkpoints only where they were made by the same settings and data (else it stops,
    unless ``resume`` is False).
    """
    from pcam import report

    source_input = None if cfg.data.source in ("official", "synthetic") else cfg.data.source
    out = check_output(out_dir, STUDY_KIND, inputs=[source_input], force=force)
    identity = study_identity(cfg)
    if resume:
        _check_study_resumable(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    mark_directory(out, STUDY_KIND)
    write_json(out / STUDY_FILE, {"identity": identity})
    out = Path(out_dir)
    timer = _StepTimer()
    dataset_dir, shards_dir = out / "dataset", out / "shards"
    _data_steps(cfg, out, timer)
    final_dirs: dict[Path, Path] = {}  # run directory -> the directory of the model it evaluated
    for model_name in cfg.train.models:
        for policy in cfg.train.policies:
            pair_dir = out / "runs" / f"{model_name}-{policy}"
            final_dirs[pair_dir] = _pair(cfg, pair_dir, shards_dir, (model_name, policy), timer, resume=resume)
    run_dirs = list(final_dirs)

    with timer.step("report"):
        context = run_context(cfg, dataset_dir, shards_dir, timer.seconds)
        summary = report.build_report(run_dirs, out / "report", context)

    if cfg.promote.champion_uri:
        from pcam import promote

        with timer.step("promote"):
            best = promote.best_run(run_dirs, cfg.promote.metric)
            summary["promotion"] = promote.promote(
                best / "evaluate",
                final_dirs[best],
                cfg.promote.champion_uri,
                cfg.promote.metric,
                shards_dir=shards_dir,
                cfg=cfg,
            )
    write_json(out / "steps.json", timer.seconds)
    log.info("report: %s", out / "report" / "report.html")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam run`` options on ``parser``."""
    parser.add_argument("--config", required=True, help="experiment YAML (configs/demo.yaml, configs/paper.yaml)")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--source", help="override data.source (path, gs://, https://, official, synthetic)")
    parser.add_argument("--format", help="override data.format")
    parser.add_argument("--models", help="comma-separated override of train.models")
    parser.add_argument("--policies", help="comma-separated override of train.policies")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="retrain every pair from scratch (by default a rerun resumes checkpoints made by the "
        "same settings and data, and refuses others)",
    )
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not a pcam run directory")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam run`` (run the whole study in-process: ingest to report); returns the exit code."""
    overrides: dict[str, Any] = {}
    if args.source:
        overrides["data.source"] = args.source
        overrides.setdefault("data.format", "auto")
    if args.format:
        overrides["data.format"] = args.format
    if args.models:
        overrides["train.models"] = args.models.split(",")
    if args.policies:
        overrides["train.policies"] = args.policies.split(",")
    cfg = load_config(args.config, overrides)
    run_study(cfg, args.out, resume=args.resume, force=args.force)
    print(Path(args.out) / "report" / "report.html")
    return 0
