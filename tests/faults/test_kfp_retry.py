"""A cluster fault as far as one machine can show it: the shard component killed mid-write
under kfp.local, then retried, gives the same artifact as an uninterrupted run.

The killed run is a child process running the pipeline (``python -m
tests.faults.test_kfp_retry``) in its own process group; kfp.local's
SubprocessRunner starts the component as a grandchild, and the whole group gets
SIGKILL once a shard file in the component's temp directory has bytes in it: what
a preempted pod experiences. The retry runs the same pipeline through kfp.local in
this process, into the same pipeline root. Its artifact must hold exactly the files,
with the same sha256s, that an uninterrupted ``write_shards`` call (what the
component calls) writes from the same inputs.
"""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
import argparse
import sys
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Dataset

from components.shard import shard_op
from pcam.config import config_from_dict
from pcam.errors import DataError
from pcam.shard import load_index, write_shards
from tests.faults.conftest import kill_when, partial_file_in_temp, spawn, tree_digest

CONFIG_YAML = "seed: 3\naugment: {copies: 1}\nshard: {records_per_shard: 250}\n"


@dsl.pipeline(name="shard-retry")
def shard_from_artifacts(dataset_uri: str, split_uri: str, config_yaml: str) -> Dataset:
    """Import an existing dataset and split, shard them: the one step whose kill is under test."""
    dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=Dataset, reimport=False)
    split = dsl.importer(artifact_uri=split_uri, artifact_class=Dataset, reimport=False)
    return shard_op(dataset=dataset.output, split_index=split.output, config_yaml=config_yaml).outputs["shards"]


def run_pipeline(root: Path, dataset: Path, split: Path) -> Dataset:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return shard_from_artifacts(dataset_uri=str(dataset), split_uri=str(split), config_yaml=CONFIG_YAML).output


def _shard_outputs(root: Path) -> list[Path]:
    """Every shard artifact directory path kfp.local chose under ``root`` (complete or not)."""
    return sorted({tmp.parent / tmp.name.split(".")[1] for tmp in root.rglob(".shards.*.tmp")}
                  | set(root.rglob("shards")))


@pytest.mark.slow
def test_shard_component_killed_mid_write_then_retried_equals_uninterrupted_run(fault_dataset, fault_split,
                                                                                 tmp_path):
    root = tmp_path / "pipeline_root"
    log = tmp_path / "killed.log"
    child = spawn([sys.executable, "-m", "tests.faults.test_kfp_retry", "--root", str(root),
                   "--dataset", str(fault_dataset), "--split", str(fault_split)], log)
    kill_when(child, lambda: any(partial_file_in_temp(out, "*.tfrecord") for out in _shard_outputs(root)), log)

    killed = _shard_outputs(root)
    assert len(killed) == 1, killed
    assert not killed[0].exists()
    with pytest.raises(DataError, match="index.json: missing"):
        load_index(killed[0])

    retried = run_pipeline(root, fault_dataset, fault_split)
    retry_dir = Path(retried.path)
    assert retry_dir != killed[0] and retry_dir.is_relative_to(root)
    load_index(retry_dir)

    cfg = config_from_dict({"seed": 3, "augment": {"copies": 1}, "shard": {"records_per_shard": 250}})
    reference = tmp_path / "uninterrupted"
    write_shards(fault_dataset, fault_split, reference, cfg.augment, cfg.shard, cfg.seed, progress=False)
    assert tree_digest(retry_dir) == tree_digest(reference)
    assert sum(name.endswith(".tfrecord") for name in tree_digest(reference)) > 3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="run the shard-retry pipeline once (the test kills it)")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    options = parser.parse_args()
    print(run_pipeline(options.root, options.dataset, options.split).path)
