"""Ingest step: any supported source into the canonical dataset."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Output

from components._common import make_component


def ingest(config_yaml: str, dataset: Output[Dataset]):
    """Read the configured source (data.source, data.format) into a validated canonical dataset.

    ``synthetic`` generates seeded data in the official HDF5 layout (the offline demo);
    ``official`` downloads the Zenodo files with md5 checks into data.cache_dir.

    Args:
        config_yaml: The resolved experiment config.
        dataset: Directory: images.npy, labels.npy, meta.csv, manifest.json.
    """
    from pcam import step

    dataset.metadata.update(step.ingest(config_yaml, dataset.path))


ingest_op = make_component(ingest)
