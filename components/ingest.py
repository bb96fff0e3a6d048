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
    import logging

    import yaml

    from pcam.config import config_from_dict
    from pcam.ingest import ingest as ingest_dataset

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    manifest = ingest_dataset(
        cfg.data.source,
        dataset.path,
        fmt=cfg.data.format,
        convert=cfg.data.convert,
        limit_per_split=cfg.data.limit_per_split,
        seed=cfg.seed,
        cache_dir=cfg.data.cache_dir or None,
        synthetic=cfg.data.synthetic,
    )
    dataset.metadata.update(
        {
            "source": cfg.data.source,
            "format": manifest["format"],
            "count": manifest["count"],
            "counts": manifest["counts"],
        }
    )


ingest_op = make_component(ingest)
