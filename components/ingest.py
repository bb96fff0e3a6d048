"""Ingest step: any supported source into the canonical dataset."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from kfp.dsl import Dataset, Output

from components._common import make_component


def ingest(config_yaml: str, dataset: Output[Dataset]):
    """Read the configured source (data.source, data.format) into a validated canonical dataset.

    ``synthetic`` sources are generated first (official HDF5 layout, seeded), so the
    demo runs offline; ``official`` downloads the Zenodo files with md5 checks.

    Args:
        config_yaml: The resolved experiment config.
        dataset: Directory: images.npy, labels.npy, meta.csv, manifest.json.
    """
    import logging
    import tempfile
    from pathlib import Path

    import yaml
    from pcam.ingest import ingest as ingest_dataset

    from pcam.config import config_from_dict

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    source, fmt = cfg.data.source, cfg.data.format
    with tempfile.TemporaryDirectory(prefix="pcam-synth-") as tmp:
        if source == "synthetic":
            from pcam.synth import write_synthetic

            source, fmt = str(write_synthetic(Path(tmp), cfg.data.synthetic, cfg.seed)), "synthetic"
        manifest = ingest_dataset(source, dataset.path, fmt=fmt, convert=cfg.data.convert,
                                  limit_per_split=cfg.data.limit_per_split, seed=cfg.seed)
    dataset.metadata["source"] = cfg.data.source
    dataset.metadata["format"] = str(manifest.get("format", fmt))
    dataset.metadata["patches"] = int(manifest.get("count", manifest.get("n", 0)) or 0)


ingest_op = make_component(ingest)
