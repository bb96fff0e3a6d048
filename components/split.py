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
    from pcam import step

    split_index.metadata.update(step.split(dataset.path, config_yaml, split_index.path))


split_op = make_component(split)
