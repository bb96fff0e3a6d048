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
    import logging

    import yaml

    from pcam.config import config_from_dict
    from pcam.shard import write_shards

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    index = write_shards(dataset.path, split_index.path, shards.path, cfg.augment, cfg.shard, cfg.seed)
    shards.metadata["records"] = {name: info.get("records") for name, info in index.get("splits", {}).items()}


shard_op = make_component(shard)
