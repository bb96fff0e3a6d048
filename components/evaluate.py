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
    from pcam import step

    pair = (model_name, policy, stage)
    run.metadata.update(
        step.evaluate(model.path, shards.path, config_yaml, pair, run.path, metrics, classification, run_id)
    )


evaluate_op = make_component(evaluate)
