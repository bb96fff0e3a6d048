"""Augment+shard step: TFRecord shards per split with index.json."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Input, Output

from components._common import make_component


def shard(dataset: Input[Dataset], split_index: Input[Dataset], config_yaml: str, shards: Output[Dataset]):
    """Write TFRecord shards per split (augment.*, shard.*), materialising augmented copies if asked.

    Args:
        dataset: The canonical dataset from ingest.
        split_index: The split from the split step.
        config_yaml: The resolved experiment config.
        shards: Directory: ``{split}-{i:05d}-of-{n:05d}.tfrecord`` + index.json.
    """
    from pcam import step

    shards.metadata.update(step.shard(dataset.path, split_index.path, config_yaml, shards.path))


shard_op = make_component(shard)
