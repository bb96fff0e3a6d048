"""Fine-tune step: a trained transfer model with its top layers unfrozen (stage 2)."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Input, Model, Output

from components._common import make_component


def finetune(
    trained: Input[Model],
    shards: Input[Dataset],
    config_yaml: str,
    model_name: str,
    policy: str,
    model: Output[Model],
    run_id: str = "",
):
    """Fine-tune a stage-1 transfer model.

    MobileNetV2 trains all but its first 100 base layers; ResNet50 its last 124, BatchNorm frozen.

    Args:
        trained: The stage-1 model directory from train.
        shards: TFRecord shards with index.json.
        config_yaml: The resolved experiment config.
        model_name: mobilenetv2 or resnet50.
        policy: constant, onecycle or plateau.
        model: Directory with the train layout; the history continues the stage-1 epochs.
        run_id: KFP's run id: checkpoints go to ``<train.checkpoint_uri>/<run_id>/<model>-<policy>-finetune``.
    """
    from pcam import step

    model.metadata.update(step.finetune(trained.path, shards.path, config_yaml, model_name, policy, model.path, run_id))


finetune_op = make_component(finetune)
