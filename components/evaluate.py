"""Evaluate step: test-time-augmented evaluation of one (model, policy) pair."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._common import make_component


def evaluate(
    model: Input[Model],
    shards: Input[Dataset],
    config_yaml: str,
    model_name: str,
    policy: str,
    stage: str,
    run: Output[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    run_id: str = "",
):
    """Evaluate the model on evaluate.split with TTA and publish the pair's run directory.

    ``run`` is what the report and promote steps read (docs/architecture.md):
    ``pair.json``, ``<stage>/`` (the evaluated model directory, without checkpoints)
    and ``evaluate/`` (metrics.json, predictions.csv, roc.json, confusion.json). The
    scalar metrics (``tta_*`` and ``single_*``) and the TTA confusion matrix and ROC
    curve go to the KFP UI. Once all of that is written, the pair's checkpoints under
    ``<train.checkpoint_uri>/<run_id>/`` are deleted (``pcam.run_checkpoints``).

    Args:
        model: The model directory from train or finetune.
        shards: TFRecord shards with index.json.
        config_yaml: The resolved experiment config.
        model_name: The model's name, recorded in pair.json.
        policy: The LR policy, recorded in pair.json.
        stage: ``train`` or ``finetune``: the name of the model's directory in ``run``.
        run: Directory: pair.json, <stage>/, evaluate/.
        metrics: f1, auc, recall, precision, accuracy with (tta_) and without (single_) TTA.
        classification: Confusion matrix and ROC curve (at most 200 points) of the TTA scores.
        run_id: KFP's run id: names the run's checkpoint directory to clean up.
    """
    import json
    import logging
    import math
    import shutil
    from pathlib import Path

    import numpy as np
    import yaml

    from pcam.config import config_from_dict
    from pcam.evaluate import evaluate as evaluate_model
    from pcam.fsutil import write_json
    from pcam.run_checkpoints import for_run, remove_pair_checkpoints

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    out = Path(run.path)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_model(model.path, shards.path, out / "evaluate", cfg)
    shutil.copytree(
        model.path, out / stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint", "tensorboard")
    )
    write_json(out / "pair.json", {"model": model_name, "policy": policy})

    for mode in ("tta", "single"):
        for name in ("f1", "auc", "recall", "precision", "accuracy"):
            value = result[mode].get(name)
            if value is not None and math.isfinite(value):  # AUC is NaN with one class only
                metrics.log_metric(f"{mode}_{name}", float(value))

    confusion = json.loads((out / "evaluate" / "confusion.json").read_text())
    classification.log_confusion_matrix(["normal", "tumour"], confusion["tta"]["matrix"])
    roc = json.loads((out / "evaluate" / "roc.json").read_text())
    if roc["fpr"]:
        # The UI draws every point it is given; 200 keep the curve's shape.
        keep = np.unique(np.linspace(0, len(roc["fpr"]) - 1, 200).round().astype(int))
        classification.log_roc_curve(
            [roc["fpr"][i] for i in keep], [roc["tpr"][i] for i in keep], [roc["thresholds"][i] for i in keep]
        )
    run.metadata.update({"model": model_name, "policy": policy, "stage": stage})
    # Last: only a pair whose results are safely written gives up its checkpoints.
    removed = remove_pair_checkpoints(for_run(cfg, run_id), model_name, policy)
    run.metadata["checkpoints_deleted"] = removed
    import gc

    gc.freeze()  # the process ends next: spare its final GC pass over TensorFlow's objects (1-2 s a step)


evaluate_op = make_component(evaluate)
