"""Train step: one model under one learning-rate policy (stage 1)."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Input, Model, Output

from components._common import make_component


def train(
    shards: Input[Dataset], config_yaml: str, model_name: str, policy: str, model: Output[Model], run_id: str = ""
):
    """Train ``model_name`` under ``policy`` on the training shards; transfer models keep their base frozen.

    Per-epoch checkpoints go to ``<train.checkpoint_uri>/<run_id>/<model>-<policy>-train`` when
    train.checkpoint_uri is set (the pipeline sets it: a retried pod of the same run
    resumes there), otherwise into the output directory.

    Args:
        shards: TFRecord shards with index.json.
        config_yaml: The resolved experiment config.
        model_name: logreg, cnn, mobilenetv2 or resnet50.
        policy: constant, onecycle or plateau.
        model: Directory: model.keras, history.json/.csv, tensorboard/, train.json.
        run_id: KFP's run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``); empty keeps train.checkpoint_uri as is.
    """
    from pcam import step

    model.metadata.update(step.train(shards.path, config_yaml, model_name, policy, model.path, run_id))


train_op = make_component(train)
