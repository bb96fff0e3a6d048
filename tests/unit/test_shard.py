"""Shard writing: counts, shuffled originals + augmented copies, determinism, verification."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pcam.cli import main as cli_main
from pcam.config import AugmentConfig, ShardConfig, config_from_dict
from pcam.dataset import open_dataset
from pcam.errors import ConfigError, DataError
from pcam.fsutil import read_json
from pcam.input import load_arrays
from pcam.shard import load_index, write_shards
from tests.fixtures_shards import write_split_json

NAME = re.compile(r"^(train|valid|test)-(\d{5})-of-(\d{5})\.tfrecord$")
COPIES_NO_NOISE = AugmentConfig(copies=1, noise=0.0)


def dihedral(image):
    return [np.rot90(view, k) for view in (image, image[:, ::-1]) for k in range(4)]


@pytest.fixture(scope="module")
def augmented(tiny_dataset, tiny_split, tmp_path_factory):
    """Shards with one noiseless augmented copy per training image, 50 records per shard."""
    out = tmp_path_factory.mktemp("aug") / "shards"
    index = write_shards(
        tiny_dataset, tiny_split, out, COPIES_NO_NOISE, ShardConfig(records_per_shard=50), seed=3, progress=False
    )
    return out, index


def test_index_lists_every_shard_with_counts(augmented, tiny_dataset, tiny_split):
    out, index = augmented
    split = read_json(tiny_split / "split.json")
    assert read_json(out / "index.json") == json.loads(json.dumps(index))
    assert index["encoding"] == "raw" and index["compression"] == "none" and index["image_shape"] == [96, 96, 3]
    assert index["split_mode"] == "official" and index["augment"]["copies"] == 1
    manifest = open_dataset(tiny_dataset).manifest
    assert index["source_manifest"]["sha256"] == {k: v["sha256"] for k, v in manifest["files"].items()}
    assert index["source_manifest"]["synthetic"] is False
    names = {p.name for p in out.iterdir()} - {"index.json", ".pcam-kind"}
    for name, info in index["splits"].items():
        copies = 1 if name == "train" else 0
        assert (
            info["records"] == len(split["indices"][name]) * (1 + copies) == sum(s["records"] for s in info["shards"])
        )
        assert info["augmented_copies"] == copies and sum(info["labels"].values()) == info["records"]
        n = len(info["shards"])
        assert n == -(-info["records"] // 50)
        for i, shard in enumerate(info["shards"]):
            assert shard["name"] == f"{name}-{i:05d}-of-{n:05d}.tfrecord" and NAME.match(shard["name"])
            assert 0 < shard["records"] <= 50
            names.remove(shard["name"])
    assert not names  # nothing else in the directory (no temp files)
    assert load_index(out) == index


def test_train_holds_each_original_once_plus_a_dihedral_copy_shuffled(augmented, tiny_dataset, tiny_split):
    out, _ = augmented
    ds = open_dataset(tiny_dataset)
    train_rows = read_json(tiny_split / "split.json")["indices"]["train"]
    by_id = {ds.ids[i]: i for i in train_rows}
    images, labels, ids = load_arrays(out, "train")
    originals = [i for i in ids if "#" not in i]
    copies = [i for i in ids if "#" in i]
    assert sorted(originals) == sorted(by_id) and sorted(copies) == sorted(f"{i}#aug1" for i in by_id)
    changed = 0
    for image, label, rid in zip(images, labels, ids, strict=True):
        source = by_id[rid.split("#")[0]]
        assert label == ds.labels[source]
        if "#" in rid:
            assert any(np.array_equal(image, v) for v in dihedral(ds.images[source]))
            changed += not np.array_equal(image, ds.images[source])
        else:
            np.testing.assert_array_equal(image, ds.images[source])
    assert changed > len(copies) // 2  # 7 of 8 views differ from the original
    # shuffled: originals and copies mixed across shards, not in split order
    position = [by_id[i.split("#")[0]] for i in ids]
    assert position != sorted(position)
    assert any("#" in i for i in ids[:50]) and any("#" not in i for i in ids[:50])


def test_valid_and_test_are_originals_in_split_order(augmented, tiny_dataset, tiny_split):
    out, _ = augmented
    ds = open_dataset(tiny_dataset)
    for name in ("valid", "test"):
        rows = read_json(tiny_split / "split.json")["indices"][name]
        images, labels, ids = load_arrays(out, name)
        assert list(ids) == [ds.ids[i] for i in rows]
        np.testing.assert_array_equal(images, ds.images[rows])
        np.testing.assert_array_equal(labels, ds.labels[rows])


def test_same_inputs_and_seed_give_byte_identical_shards(augmented, tiny_dataset, tiny_split, tmp_path):
    out, index = augmented
    again = write_shards(
        tiny_dataset,
        tiny_split,
        tmp_path / "again",
        COPIES_NO_NOISE,
        ShardConfig(records_per_shard=50),
        seed=3,
        progress=False,
    )
    assert again == index
    for shard in index["splits"]["train"]["shards"]:
        assert (tmp_path / "again" / shard["name"]).read_bytes() == (out / shard["name"]).read_bytes()
    other = write_shards(
        tiny_dataset,
        tiny_split,
        tmp_path / "other",
        COPIES_NO_NOISE,
        ShardConfig(records_per_shard=50),
        seed=4,
        progress=False,
    )
    assert other["splits"]["train"]["shards"][0]["sha256"] != index["splits"]["train"]["shards"][0]["sha256"]
    assert other["splits"]["valid"] == index["splits"]["valid"]  # eval splits do not depend on the seed


@pytest.fixture(scope="module")
def small_split(tiny_dataset, tiny_split, tmp_path_factory):
    """The first 12 rows of each split of ``tiny_split`` (6 per label), for the slower encodings."""
    labels = open_dataset(tiny_dataset).labels
    rows = {}
    for name, idx in read_json(tiny_split / "split.json")["indices"].items():
        idx = np.asarray(idx)
        rows[name] = [*idx[labels[idx] == 0][:6], *idx[labels[idx] == 1][:6]]
    return write_split_json(tmp_path_factory.mktemp("small") / "split", rows, labels)


@pytest.mark.parametrize("encoding,compression", [("png", "none"), ("raw", "gzip")])
def test_other_encodings_round_trip_deterministically(tiny_dataset, small_split, tmp_path, encoding, compression):
    cfg = ShardConfig(records_per_shard=10, encoding=encoding, compression=compression)
    aug = AugmentConfig(copies=1, color_jitter=True)  # noise + jitter: the copies go through the uint8 path
    first = write_shards(tiny_dataset, small_split, tmp_path / "a", aug, cfg, seed=1, progress=False)
    assert write_shards(tiny_dataset, small_split, tmp_path / "b", aug, cfg, seed=1, progress=False) == first
    assert first["encoding"] == encoding and first["compression"] == compression
    ds = open_dataset(tiny_dataset)
    rows = read_json(small_split / "split.json")["indices"]["test"]
    images, labels, ids = load_arrays(tmp_path / "a", "test")
    np.testing.assert_array_equal(images, ds.images[rows])
    assert list(ids) == [ds.ids[i] for i in rows]
    assert len(load_arrays(tmp_path / "a", "train")[0]) == 2 * 12


def test_missing_truncated_or_corrupt_shard_is_named(augmented, tmp_path):
    import shutil

    src, index = augmented
    shard = index["splits"]["train"]["shards"][1]["name"]
    for damage, message in (("missing", "missing"), ("truncated", "truncated"), ("corrupt", "sha256")):
        out = tmp_path / damage
        shutil.copytree(src, out)
        path = out / shard
        if damage == "missing":
            path.unlink()
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:-100])
        else:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            load_index(out, verify=False)  # same size: only the checksum catches it
        with pytest.raises(DataError, match=re.escape(shard) + ".*" + message):
            load_index(out)
    (tmp_path / "missing" / "index.json").unlink()
    with pytest.raises(DataError, match="index.json"):
        load_index(tmp_path / "missing")


@pytest.mark.parametrize("bad", [-1, 320, 10**6])
def test_split_index_out_of_range_is_rejected(tiny_dataset, tmp_path, bad):
    labels = open_dataset(tiny_dataset).labels
    zeros, ones = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rows = {name: [int(zeros[k]), int(ones[k])] for k, name in enumerate(("train", "valid", "test"))}
    rows["train"].append(bad)
    split = write_split_json(tmp_path / "split", rows, labels)
    with pytest.raises(DataError, match=r"split\.json.*(train|outside)"):
        write_shards(tiny_dataset, split, tmp_path / "out", AugmentConfig(), ShardConfig(), 0, progress=False)
    assert not (tmp_path / "out").exists()


def test_failure_midway_leaves_nothing_behind(tiny_dataset, tiny_split, tmp_path):
    bad = ShardConfig(encoding="jpeg")  # built directly, so past config validation
    with pytest.raises(DataError, match="jpeg"):
        write_shards(tiny_dataset, tiny_split, tmp_path / "out", AugmentConfig(), bad, 0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_records_per_shard_must_be_positive():
    for value in (0, -5):
        with pytest.raises(ConfigError, match="shard.records_per_shard"):
            config_from_dict({"shard": {"records_per_shard": value}})


def test_cli_writes_shards_from_config_and_reports_errors(tiny_dataset, tiny_split, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("seed: 9\nshard:\n  records_per_shard: 100\naugment:\n  copies: 0\n")
    out = tmp_path / "shards"
    args = ["shard", "--dataset", str(tiny_dataset), "--split", str(tiny_split), "--out", str(out)]
    assert cli_main([*args, "--config", str(config)]) == 0
    index = load_index(out)
    assert index["seed"] == 9
    printed = capsys.readouterr().out
    for name, rows in read_json(tiny_split / "split.json")["indices"].items():
        n = -(-len(rows) // 100)
        assert len(index["splits"][name]["shards"]) == n
        assert f"{name}: {len(rows)} records in {n} shards" in printed
    assert cli_main([*args[:3], "--split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "split.json" in capsys.readouterr().err


def test_shards_without_copies_are_written_without_importing_tensorflow(tiny_dataset, tiny_split, tmp_path):
    """The shard step pays TensorFlow's import (5 s here) only when it materialises augmented copies."""
    import subprocess
    import sys

    script = (
        "import sys; from pcam.config import AugmentConfig, ShardConfig; from pcam.shard import write_shards; "
        f"write_shards({str(tiny_dataset)!r}, {str(tiny_split)!r}, {str(tmp_path / 'out')!r}, "
        "AugmentConfig(copies=0), ShardConfig(), 0, progress=False); "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert load_index(tmp_path / "out")["splits"]["train"]["records"] > 0  # verify=True: sha256s match the files
