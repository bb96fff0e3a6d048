"""Fine-tune step: a trained transfer model with its top layers unfrozen (stage 2)."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Input, Model, Output

from components._common import make_component


def finetune(trained: Input[Model], shards: Input[Dataset], config_yaml: str, model_name: str,
             policy: str, model: Output[Model]):
    """Fine-tune a stage-1 transfer model (MobileNetV2: all but the first 100 base layers; ResNet50: the last 124, BatchNorm frozen).

    Args:
        trained: The stage-1 model directory from train.
        shards: TFRecord shards with index.json.
        config_yaml: The resolved experiment config.
        model_name: mobilenetv2 or resnet50.
        policy: constant, onecycle or plateau.
        model: Directory with the train layout; the history continues the stage-1 epochs.
    """
    import logging

    import yaml

    from pcam.config import config_from_dict
    from pcam.train import finetune as finetune_model

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    finetune_model(trained.path, shards.path, model.path, cfg, model_name, policy)
    model.metadata.update({"model": model_name, "policy": policy, "stage": "finetune",
                           "framework": "keras"})
    import gc

    gc.freeze()  # the process ends next: spare its final GC pass over TensorFlow's objects (1-2 s a step)


finetune_op = make_component(finetune)
