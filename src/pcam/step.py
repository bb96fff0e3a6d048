"""The component runtime: each KFP component's body is one call here, with plain paths and strings.

Components pass their artifacts' ``.path`` (the metric artifacts themselves, through
:class:`MetricsSink` / :class:`ClassificationSink`) and copy the returned mapping into
their output's metadata; nothing here imports kfp, so tests call the same bodies
in-process. :func:`start` is the prologue every config-reading step shares.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pcam.config import (
    POLICY_NAMES,
    TRANSFER_MODELS,
    ExperimentConfig,
    config_from_dict,
    dump_config,
    parse_yaml,
    set_dotted,
)
from pcam.errors import ConfigError
from pcam.fsutil import write_json

log = logging.getLogger(__name__)

METRIC_NAMES = ("f1", "auc", "recall", "precision", "accuracy")
CLASS_NAMES = ["normal", "tumour"]
ROC_POINTS = 200  # the UI draws every point it is given; 200 keep the curve's shape
PER_MODEL_KEYS = ("epochs", "finetune_epochs", "batch_size", "learning_rate", "finetune_learning_rate")


class MetricsSink(Protocol):
    """Where scalar metrics go (a kfp ``Output[Metrics]`` on a cluster)."""

    def log_metric(self, metric: str, value: float) -> None:
        """Record one scalar."""


class ClassificationSink(Protocol):
    """Where the confusion matrix and ROC curve go (a kfp ``Output[ClassificationMetrics]``)."""

    def log_confusion_matrix(self, categories: list[str], matrix: list[list[int]]) -> None:
        """Record the confusion matrix (rows: true class)."""

    def log_roc_curve(self, fpr: list[float], tpr: list[float], threshold: list[float]) -> None:
        """Record the ROC curve's points."""


def start(config_yaml: str, run_id: str = "") -> ExperimentConfig:
    """The prologue of every config-reading step: logging on, the resolved config parsed and validated.

    Args:
        config_yaml: The resolved experiment config (configure's output).
        run_id: KFP's run id; when set, ``train.checkpoint_uri`` is narrowed to this run.

    Returns:
        The config the step runs with.

    Raises:
        ConfigError: The YAML is invalid, not a mapping, or fails the config's checks.
    """
    from pcam.run_checkpoints import for_run

    logging.basicConfig(level=logging.INFO)
    return for_run(config_from_dict(_mapping(config_yaml)), run_id)


def _mapping(config_yaml: str) -> dict[str, Any]:
    data = parse_yaml(config_yaml, "config_yaml") or {}
    if not isinstance(data, dict):
        raise ConfigError("config_yaml: must hold a mapping at the top level")
    return data


def _process_ends() -> None:
    # The component's process ends next: spare its final GC pass over TensorFlow's objects (1-2 s a step).
    gc.freeze()


def configure(
    config_yaml: str,
    *,
    source: str,
    data_format: str,
    split_mode: str,
    split_ratios: Sequence[float],
    seed: int,
    tta_views: Sequence[str],
    target_sensitivity: float,
    per_model: dict[str, Any],
    weights_uri: str = "",
    champion_uri: str = "",
    checkpoint_root: str = "",
) -> str:
    """Apply the pipeline's parameters to the config YAML and validate the result.

    Args:
        config_yaml: An ExperimentConfig as YAML.
        source: ``data.source``.
        data_format: ``data.format``.
        split_mode: ``split.mode``.
        split_ratios: ``split.ratios``.
        seed: ``seed``.
        tta_views: ``evaluate.tta_views``.
        target_sensitivity: ``evaluate.target_sensitivity``.
        per_model: Values of :data:`PER_MODEL_KEYS` set on the defaults and every model section; 0 keeps the config's.
        weights_uri: Weights of the transfer models; empty keeps the config's.
        champion_uri: ``promote.champion_uri``; empty keeps the config's.
        checkpoint_root: ``train.checkpoint_uri``; empty keeps the config's.

    Returns:
        The resolved config as YAML.
    """
    logging.basicConfig(level=logging.INFO)
    data = _mapping(config_yaml)
    unknown = sorted(set(per_model) - set(PER_MODEL_KEYS))
    if unknown:
        raise ConfigError(f"per_model: unknown key(s) {', '.join(unknown)}; expected {', '.join(PER_MODEL_KEYS)}")
    for dotted, value in (
        ("data.source", source),
        ("data.format", data_format),
        ("split.mode", split_mode),
        ("split.ratios", list(split_ratios)),
        ("seed", seed),
        ("evaluate.tta_views", list(tta_views)),
        ("evaluate.target_sensitivity", target_sensitivity),
    ):
        set_dotted(data, dotted, value)
    for key, value in per_model.items():
        if value:  # per-model sections override defaults, so an explicit value must reach both
            for section in ["defaults", *(f"models.{name}" for name in data.get("models") or {})]:
                set_dotted(data, f"{section}.{key}", value)
    for name in TRANSFER_MODELS if weights_uri else ():
        set_dotted(data, f"models.{name}.weights", weights_uri)
    if champion_uri:
        set_dotted(data, "promote.champion_uri", champion_uri)
    if checkpoint_root:
        set_dotted(data, "train.checkpoint_uri", checkpoint_root)
    resolved = dump_config(config_from_dict(data))
    log.info("resolved config:\n%s", resolved)
    return resolved


def select_pairs(grid: Sequence[Any], config_yaml: str, transfer: bool) -> list[dict[str, str]]:
    """Validate the grid; return the pairs that are (``transfer``) or are not fine-tuned, each carrying the config.

    Args:
        grid: ``{"model": ..., "policy": ...}`` mappings.
        config_yaml: The resolved config (decides which transfer models are fine-tuned).
        transfer: True for the fine-tuned branch, False for the train-only branch.

    Returns:
        The branch's pairs in grid order, as ``{"model", "policy", "config_yaml"}``.
    """
    cfg = config_from_dict(_mapping(config_yaml))
    if not grid:
        raise ConfigError("grid: needs at least one {model, policy} pair")
    chosen = []
    for i, pair in enumerate(grid):
        if not isinstance(pair, dict) or set(pair) != {"model", "policy"}:
            raise ConfigError(f"grid[{i}]: expected a mapping with keys model and policy, got {pair!r}")
        model_cfg = cfg.model(pair["model"])  # ConfigError naming the model when unknown
        if pair["policy"] not in POLICY_NAMES:
            raise ConfigError(
                f"grid[{i}].policy: unknown policy {pair['policy']!r}; expected one of {', '.join(POLICY_NAMES)}"
            )
        finetuned = pair["model"] in TRANSFER_MODELS and model_cfg.finetune_epochs > 0
        if finetuned == transfer:
            chosen.append({"model": pair["model"], "policy": pair["policy"], "config_yaml": config_yaml})
    return chosen


def ingest(config_yaml: str, out: str) -> dict[str, Any]:
    """Ingest data.source (data.format) into a canonical dataset at ``out``; returns the artifact's metadata."""
    from pcam.ingest import ingest as ingest_dataset

    cfg = start(config_yaml)
    manifest = ingest_dataset(
        cfg.data.source,
        out,
        fmt=cfg.data.format,
        convert=cfg.data.convert,
        limit_per_split=cfg.data.limit_per_split,
        seed=cfg.seed,
        cache_dir=cfg.data.cache_dir or None,
        synthetic=cfg.data.synthetic,
    )
    return {"source": cfg.data.source, **{key: manifest[key] for key in ("format", "count", "counts")}}


def split(dataset_dir: str, config_yaml: str, out: str) -> dict[str, Any]:
    """Write split.json for the dataset (split.mode, split.ratios, seed); returns the artifact's metadata."""
    from pcam.split import split_dataset

    cfg = start(config_yaml)
    result = split_dataset(dataset_dir, out, cfg.split.mode, cfg.split.ratios, cfg.seed)
    return {"mode": cfg.split.mode, "counts": result.get("counts", {})}


def shard(dataset_dir: str, split_dir: str, config_yaml: str, out: str) -> dict[str, Any]:
    """Write the TFRecord shards and index.json; returns the artifact's metadata (records per split)."""
    from pcam.shard import write_shards

    cfg = start(config_yaml)
    index = write_shards(dataset_dir, split_dir, out, cfg.augment, cfg.shard, cfg.seed)
    return {"records": {name: info.get("records") for name, info in index.get("splits", {}).items()}}


def _model_metadata(model_name: str, policy: str, stage: str) -> dict[str, Any]:
    return {"model": model_name, "policy": policy, "stage": stage, "framework": "keras"}


def train(
    shards_dir: str, config_yaml: str, model_name: str, policy: str, out: str, run_id: str = ""
) -> dict[str, Any]:
    """Train one (model, policy) pair (stage 1) into ``out``; returns the model artifact's metadata."""
    from pcam.train import train as train_model

    train_model(shards_dir, out, start(config_yaml, run_id), model_name, policy)
    _process_ends()
    return _model_metadata(model_name, policy, "train")


def finetune(
    trained_dir: str, shards_dir: str, config_yaml: str, model_name: str, policy: str, out: str, run_id: str = ""
) -> dict[str, Any]:
    """Fine-tune a stage-1 transfer model into ``out``; returns the model artifact's metadata."""
    from pcam.train import finetune as finetune_model

    finetune_model(trained_dir, shards_dir, out, start(config_yaml, run_id), model_name, policy)
    _process_ends()
    return _model_metadata(model_name, policy, "finetune")


def evaluate(
    model_dir: str,
    shards_dir: str,
    config_yaml: str,
    pair: tuple[str, str, str],
    out: str,
    metrics: MetricsSink,
    classification: ClassificationSink,
    run_id: str = "",
) -> dict[str, Any]:
    """Evaluate with TTA, publish the pair's run directory and its UI metrics, then drop its checkpoints.

    Args:
        model_dir: The model directory from train or finetune.
        shards_dir: TFRecord shards with index.json.
        config_yaml: The resolved experiment config.
        pair: ``(model_name, policy, stage)``; ``stage`` names the model's directory in ``out``.
        out: The run directory: pair.json, <stage>/, evaluate/.
        metrics: Receives ``tta_*`` and ``single_*`` scalars (finite ones only).
        classification: Receives the TTA confusion matrix and ROC curve (at most :data:`ROC_POINTS` points).
        run_id: KFP's run id: names the run's checkpoint directory to clean up.

    Returns:
        The run artifact's metadata (model, policy, stage, checkpoints_deleted).
    """
    from pcam.evaluate import evaluate as evaluate_model
    from pcam.run_checkpoints import for_run, remove_pair_checkpoints

    model_name, policy, stage = pair
    cfg = start(config_yaml)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    result = evaluate_model(model_dir, shards_dir, run / "evaluate", cfg)
    ignore = shutil.ignore_patterns("checkpoint", "tensorboard")
    shutil.copytree(model_dir, run / stage, dirs_exist_ok=True, ignore=ignore)
    write_json(run / "pair.json", {"model": model_name, "policy": policy})
    for mode in ("tta", "single"):
        for name in METRIC_NAMES:
            value = result[mode].get(name)
            if value is not None and math.isfinite(value):  # AUC is NaN with one class only
                metrics.log_metric(f"{mode}_{name}", float(value))
    confusion = json.loads((run / "evaluate" / "confusion.json").read_text())
    classification.log_confusion_matrix(CLASS_NAMES, confusion["tta"]["matrix"])
    roc = json.loads((run / "evaluate" / "roc.json").read_text())
    if roc["fpr"]:
        last = len(roc["fpr"]) - 1
        keep = sorted({round(last * i / (ROC_POINTS - 1)) for i in range(ROC_POINTS)})
        classification.log_roc_curve(*([roc[key][i] for i in keep] for key in ("fpr", "tpr", "thresholds")))
    # Last: only a pair whose results are safely written gives up its checkpoints.
    removed = remove_pair_checkpoints(for_run(cfg, run_id), model_name, policy)
    _process_ends()
    return {"model": model_name, "policy": policy, "stage": stage, "checkpoints_deleted": removed}


def report(
    run_dirs: Sequence[str], dataset_dir: str, shards_dir: str, config_yaml: str, out: str, html: str, summary: str
) -> dict[str, Any]:
    """Build the comparison report of the evaluated pairs, and the two files the UI shows.

    Args:
        run_dirs: The evaluated pairs' run directories.
        dataset_dir: The canonical dataset (its manifest goes into the model card).
        shards_dir: The shards (their index goes into the model card).
        config_yaml: The resolved experiment config.
        out: The report directory: summary.csv, summary.md, report.html, plots/*.png.
        html: Where the UI's page goes (report.html: it embeds its figures as data: URIs).
        summary: Where the UI's Markdown table goes.

    Returns:
        The output's metadata: the best pair and the number of pairs.
    """
    from pcam.report import build_report
    from pcam.study import run_context, step_seconds_from_runs

    cfg = start(config_yaml)
    runs = [Path(r) for r in run_dirs]
    built = build_report(runs, out, run_context(cfg, dataset_dir, shards_dir, step_seconds_from_runs(runs)))
    shutil.copyfile(Path(out) / "report.html", html)
    shutil.copyfile(Path(out) / "summary.md", summary)
    best = built["best"]
    headline = {f"best_{key}": value for key, value in (best or {}).items() if value is not None}
    return {"pairs": len(runs), "split_warnings": len(built["split_warnings"]), **headline}


def promote(run_dirs: Sequence[str], shards_dir: str, config_yaml: str, decision_md: str) -> str:
    """Promote the best run (promote.metric) over the champion at promote.champion_uri if it wins.

    Args:
        run_dirs: The evaluated pairs' run directories.
        shards_dir: The shards the candidate was evaluated on (the champion is re-scored on them).
        config_yaml: The resolved experiment config.
        decision_md: Where the decision and the numbers behind it go, as Markdown.

    Returns:
        The decision as JSON, or ``{"promoted": false, "reason": ...}`` without a champion location.
    """
    cfg = start(config_yaml)
    result: dict[str, Any]
    if not cfg.promote.champion_uri:
        result = {"promoted": False, "reason": "no champion location (promote.champion_uri) configured"}
    else:
        from pcam import promote as champion
        from pcam.artifacts import final_model_dir

        best = champion.best_run([Path(r) for r in run_dirs], cfg.promote.metric)
        with tempfile.TemporaryDirectory() as tmp:  # decision.json: returned, not written into an input
            result = dict(
                champion.promote(
                    best / "evaluate",
                    final_model_dir(best),
                    cfg.promote.champion_uri,
                    cfg.promote.metric,
                    shards_dir=shards_dir,
                    cfg=cfg,
                    out_dir=tmp,
                )
            )
        result = {**result, "candidate": json.loads((best / "pair.json").read_text())}
    lines = ["# Champion decision", "", *(f"- **{key}**: {value}" for key, value in result.items())]
    Path(decision_md).write_text("\n".join(lines) + "\n")
    return json.dumps(result, default=str)


def deploy(
    decision: str,
    config_yaml: str,
    serving_name: str,
    *,
    namespace: str,
    canary_percent: int,
    gpu: bool,
    timeout: float,
) -> str:
    """Deploy ``<promote.champion_uri>/serving`` when ``decision`` promoted; returns the URL ('' if not deployed).

    Args:
        decision: promote's output (decision.json as a string).
        config_yaml: The resolved experiment config.
        serving_name: InferenceService name.
        namespace: Namespace of the InferenceService.
        canary_percent: Traffic share of the new revision (100 = full rollout).
        gpu: One GPU for the predictor.
        timeout: Seconds to wait for Ready.

    Returns:
        The InferenceService's URL.
    """
    from pcam.deploy import deploy_champion

    cfg = start(config_yaml)
    result = deploy_champion(
        decision,
        cfg.promote.champion_uri,
        serving_name,
        namespace=namespace,
        canary_percent=canary_percent,
        gpu=gpu,
        timeout=timeout,
    )
    return str(result.get("url", ""))


def predict(model_uri: str, source_uri: str, out: str, **options: Any) -> dict[str, Any]:
    """Run ``pcam predict`` (no progress bars: pod logs) with logging on; returns what predict.json holds.

    Args:
        model_uri: Model directory, .keras file or champion location (local or gs://).
        source_uri: A slide or a source of patches (local or gs://).
        out: The output directory.
        **options: Keyword arguments of :func:`pcam.predict.predict` (``kinds``, ``views``, ``mpp``...).

    Returns:
        What predict.json holds.
    """
    from pcam.predict import predict as run_predict

    logging.basicConfig(level=logging.INFO)
    return dict(run_predict(model_uri, [source_uri], out, progress=False, **options))


def list_source(source_uri: str, kind: str) -> list[str]:
    """The slide URIs of ``source_uri`` (``kind`` slides), or ``[source_uri]`` if it holds patches (``patches``)."""
    from pcam.inference import list_source as find

    if kind not in ("slides", "patches"):
        raise ConfigError(f"kind: {kind!r} is not slides or patches")
    found = find(source_uri)
    if kind == "slides":
        return list(found["slides"])
    return [source_uri] if found["patches"] else []
