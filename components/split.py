"""Split step: which patches go to train, valid and test."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Input, Output

from components._common import make_component


def split(dataset: Input[Dataset], config_yaml: str, split_index: Output[Dataset]):
    """Split the dataset (split.mode, split.ratios, seed): stratified, grouped by slide when known.

    Args:
        dataset: The canonical dataset from ingest.
        config_yaml: The resolved experiment config.
        split_index: Directory holding split.json (mode, seed, ratios, counts, indices).
    """
    import logging

    import yaml

    from pcam.config import config_from_dict
    from pcam.split import split_dataset

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    result = split_dataset(dataset.path, split_index.path, cfg.split.mode, cfg.split.ratios, cfg.seed)
    split_index.metadata["mode"] = cfg.split.mode
    split_index.metadata["counts"] = result.get("counts", {})


split_op = make_component(split)
