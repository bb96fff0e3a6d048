"""Atomic outputs: ``pcam ingest`` and ``pcam shard`` SIGKILLed halfway, then rerun.

A kill cannot be cleaned up after, so what it leaves is only a hidden temp
directory (``.<out>.<random>.tmp``) beside the output. Each test kills a real child
process the moment a partly written file exists in that directory, then checks that
the reader refuses the output path (it does not exist; ``open_dataset`` /
``load_index`` raise DataError), that a rerun into the same path succeeds, and that
the rerun's files are byte for byte those of an uninterrupted run.
"""

from __future__ import annotations

import pytest

from pcam.cli import main
from pcam.dataset import open_dataset
from pcam.errors import DataError
from pcam.shard import load_index
from tests.faults.conftest import (
    kill_when,
    partial_file_in_temp,
    pcam_command,
    spawn,
    temp_siblings,
    tree_digest,
)

INGEST_LIMIT = 1000
"""Patches per source split for the ingest kill: 2,000 real JPEGs take a second or two to decode."""


def test_ingest_killed_mid_write_leaves_nothing_accepted_and_rerun_matches(pcam_sample, tmp_path):
    out = tmp_path / "data" / "dataset"
    args = [
        "ingest",
        "--source",
        str(pcam_sample),
        "--format",
        "folders",
        "--limit-per-split",
        str(INGEST_LIMIT),
        "--workers",
        "1",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    log = tmp_path / "killed.log"
    # kill once images.npy holds more than its header: patches are being written
    kill_when(spawn(pcam_command(*args), log), lambda: partial_file_in_temp(out, "images.npy", min_bytes=1 << 20), log)

    assert not out.exists()
    with pytest.raises(DataError, match="no dataset here"):
        open_dataset(out)
    assert [p.name for p in temp_siblings(out)], "the kill came after the rename: nothing was tested"

    assert main(args) == 0
    reference = tmp_path / "reference" / "dataset"
    assert main([*args[:-4], "--out", str(reference), "--cache-dir", str(tmp_path / "cache")]) == 0
    open_dataset(out)  # sizes and sha256s match its manifest
    assert tree_digest(out) == tree_digest(reference)
    assert sorted(tree_digest(out)) == ["images.npy", "labels.npy", "manifest.json", "meta.csv"]


@pytest.mark.slow
def test_shard_killed_mid_write_leaves_nothing_accepted_and_rerun_matches(fault_dataset, fault_split, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 5\naugment: {copies: 1}\nshard: {records_per_shard: 200}\n")
    out = tmp_path / "shards"
    args = [
        "shard",
        "--dataset",
        str(fault_dataset),
        "--split",
        str(fault_split),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    log = tmp_path / "killed.log"
    kill_when(spawn(pcam_command(*args), log), lambda: partial_file_in_temp(out, "*.tfrecord"), log)

    assert not out.exists()
    with pytest.raises(DataError, match="index.json: missing"):
        load_index(out)
    leftovers = temp_siblings(out)
    assert leftovers and not list(leftovers[0].glob("index.json")), "killed after index.json: too late"

    assert main(args) == 0
    reference = tmp_path / "reference"
    assert main([*args[:6], str(reference), *args[7:]]) == 0
    index = load_index(out)  # every shard present with its recorded size and sha256
    assert index["splits"]["train"]["augmented_copies"] == 1
    assert tree_digest(out) == tree_digest(reference)
    assert len(tree_digest(out)) == 1 + sum(len(s["shards"]) for s in index["splits"].values())
