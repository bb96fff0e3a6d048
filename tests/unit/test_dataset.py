import numpy as np
import pytest

from pcam.dataset import MANIFEST_FILE, DatasetWriter, open_dataset
from pcam.errors import DataError


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8), rng.integers(0, 2, size=n).astype(np.uint8)


def test_write_then_open_round_trip(tmp_path):
    images, labels = _batch(10)
    writer = DatasetWriter(tmp_path / "ds", capacity=12)
    writer.add(images, labels, [f"a{i}" for i in range(10)], "train", [f"s{i % 3}" for i in range(10)])
    writer.add(images[:2], labels[:2], ["dup0", "dup1"], "test", ["s9", "s9"])
    manifest = writer.finish("mem://", "test")
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 12
    np.testing.assert_array_equal(ds.images[:10], images)
    assert manifest["duplicates"]["count"] == 2
    assert manifest["counts"]["test"]["0"] + manifest["counts"]["test"]["1"] == 2
    assert ds.slides is not None and ds.slides[0] == "s0"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize("crc", ["real", "always_equal"])
def test_duplicates_are_exact_even_when_checksums_collide(tmp_path, monkeypatch, crc):
    """crc32c only proposes candidates: bytes decide, within a batch and across batches."""
    import pcam.dataset as D

    if crc == "always_equal":  # every patch collides with every earlier one
        monkeypatch.setattr(D.google_crc32c, "value", lambda data: 7)
    images, labels = _batch(6)
    near = images[0].copy()
    near[48, 48, 0] ^= 1  # one bit from images[0]: not a duplicate
    writer = DatasetWriter(tmp_path / "ds", capacity=10)
    writer.add(np.concatenate([images[:3], images[1:2]]), np.zeros(4, np.uint8), ["a", "b", "c", "b2"], "train")
    writer.add(
        np.stack([near, images[2], images[0], images[5]]), np.zeros(4, np.uint8), ["near", "c2", "a2", "f"], "valid"
    )
    writer.add(images[3:5], np.zeros(2, np.uint8), ["d", "e"], "test")
    manifest = writer.finish("mem://", "test")
    assert manifest["duplicates"] == {"count": 3, "examples": [("b", "b2"), ("c", "c2"), ("a", "a2")]}
    assert manifest["files"]["images.npy"]["sha256"] == D.file_sha256(tmp_path / "ds" / "images.npy")


def test_unfinished_writer_leaves_nothing_openable(tmp_path):
    images, labels = _batch(4)
    writer = DatasetWriter(tmp_path / "ds", capacity=8)
    writer.add(images, labels, list("abcd"), "train")
    with pytest.raises(DataError, match="announced 8"):
        writer.finish("mem://", "test")
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupted_dataset_is_refused(tmp_path):
    images, labels = _batch(4)
    writer = DatasetWriter(tmp_path / "ds", capacity=4)
    writer.add(images, labels, list("abcd"), "train")
    writer.finish("mem://", "test")
    labels_file = tmp_path / "ds" / "labels.npy"
    data = bytearray(labels_file.read_bytes())
    data[-1] ^= 1
    labels_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        open_dataset(tmp_path / "ds")
    (tmp_path / "ds" / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match="manifest.json"):
        open_dataset(tmp_path / "ds")


def test_outputs_are_readable_by_other_users(tmp_path):
    images, labels = _batch(2)
    writer = DatasetWriter(tmp_path / "ds", capacity=2)
    writer.add(images, labels, ["a", "b"], "train")
    writer.finish("mem://", "test")
    assert (tmp_path / "ds").stat().st_mode & 0o055 == 0o055 & ~_umask_now()
    assert (tmp_path / "ds" / "manifest.json").stat().st_mode & 0o044 == 0o044 & ~_umask_now()


def _umask_now():
    import os

    current = os.umask(0)
    os.umask(current)
    return current
