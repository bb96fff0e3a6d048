"""Resolve the experiment config once: the config YAML plus the pipeline's explicit parameters."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from components._common import make_component


def configure(
    config_yaml: str,
    source: str,
    data_format: str,
    split_mode: str,
    split_ratios: list,
    seed: int,
    epochs: int,
    finetune_epochs: int,
    batch_size: int,
    learning_rate: float,
    finetune_learning_rate: float,
    weights_uri: str,
    tta_views: list,
    target_sensitivity: float,
    champion_uri: str,
    checkpoint_root: str = "",
) -> str:
    """Apply the pipeline parameters to the config and validate the result.

    Every later step receives the YAML this returns, so the overrides are applied
    (and rejected, when wrong) in one place, and the UI shows the resolved config as
    this step's output.

    Args:
        config_yaml: An ExperimentConfig as YAML (``pcam.config.dump_config``).
        source: ``data.source``: local path, gs:// or https:// URI, ``official`` or ``synthetic``.
        data_format: ``data.format``: auto, hdf5, kaggle, folders or synthetic.
        split_mode: ``split.mode``: random (stratified, grouped by slide) or official.
        split_ratios: ``split.ratios``: train/valid/test fractions summing to 1.
        seed: ``seed`` for split, shuffling, augmentation and initialisation.
        epochs: Stage-1 epochs for every model; 0 keeps the config's per-model values.
        finetune_epochs: Fine-tuning epochs for every model; 0 keeps the config's values.
        batch_size: Batch size for every model; 0 keeps the config's values.
        learning_rate: Stage-1 learning rate for every model; 0 keeps the config's values.
        finetune_learning_rate: Fine-tuning learning rate; 0 keeps the config's values.
        weights_uri: Weights file (local or gs://) for the transfer models; empty keeps the config's.
        tta_views: ``evaluate.tta_views``: names of the test-time augmentation views.
        target_sensitivity: ``evaluate.target_sensitivity`` of the reported operating point.
        champion_uri: ``promote.champion_uri`` (local dir or gs://); empty keeps the config's.
        checkpoint_root: ``train.checkpoint_uri`` (local dir on a shared volume, or gs://), to which
            the checkpointing steps add the run id; empty keeps the config's.

    Returns:
        The resolved config as YAML.
    """
    from pcam import step

    return step.configure(
        config_yaml,
        source=source,
        data_format=data_format,
        split_mode=split_mode,
        split_ratios=split_ratios,
        seed=seed,
        tta_views=tta_views,
        target_sensitivity=target_sensitivity,
        per_model={
            "epochs": epochs,
            "finetune_epochs": finetune_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "finetune_learning_rate": finetune_learning_rate,
        },
        weights_uri=weights_uri,
        champion_uri=champion_uri,
        checkpoint_root=checkpoint_root,
    )


configure_op = make_component(configure)
