"""tf.data pipelines over tiny real shards: counts, exact pixels, order, seeded augmentation."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from pcam.config import AugmentConfig
from pcam.dataset import open_dataset
from pcam.errors import DataError
from pcam.fsutil import read_json, write_json
from pcam.input import dataset_size, load_arrays, make_dataset

GEOMETRY_ONLY = AugmentConfig(noise=0.0)


def dihedral_key(image: np.ndarray) -> bytes:
    """The same bytes for all 8 flips/quarter turns of an image."""
    return min(np.ascontiguousarray(np.rot90(v, k)).tobytes() for v in (image, image[:, ::-1]) for k in range(4))


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def source(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    return ds, {i: k for k, i in enumerate(ds.ids)}


def test_sizes_come_from_index(tiny_shards, tiny_split):
    index = read_json(tiny_shards / "index.json")
    split = read_json(tiny_split / "split.json")
    for name in ("train", "valid", "test"):
        assert dataset_size(tiny_shards, name) == index["splits"][name]["records"] == len(split["indices"][name])
    assert len(index["splits"]["train"]["shards"]) > 1  # several shards, so interleave is exercised


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluation_batches_are_exact_and_in_written_order(tiny_shards, source, split):
    ds, row = source
    images, labels, ids = load_arrays(tiny_shards, split)
    assert images.dtype == np.uint8 and images.shape == (dataset_size(tiny_shards, split), 96, 96, 3)
    rows = [row[i] for i in ids]
    np.testing.assert_array_equal(images, ds.images[rows])
    np.testing.assert_array_equal(labels, ds.labels[rows])
    pipeline = make_dataset(tiny_shards, split, 32, training=False, augment_cfg=GEOMETRY_ONLY)
    x, y = next(iter(pipeline))
    assert x.dtype.name == "float32" and y.dtype.name == "float32" and tuple(x.shape) == (min(32, len(ids)), 96, 96, 3)
    got_images, got_labels = collect(pipeline)
    np.testing.assert_array_equal(got_images, images.astype(np.float32))  # no augmentation, same order
    np.testing.assert_array_equal(got_labels, labels.astype(np.float32))
    np.testing.assert_array_equal(collect(pipeline)[0], got_images)  # and again on a second pass


def test_training_batches_are_shuffled_dihedral_views_and_seeded(tiny_shards, source):
    ds, row = source
    images, labels, ids = load_arrays(tiny_shards, "train")
    by_key = {dihedral_key(im): lab for im, lab in zip(images, labels, strict=True)}
    pipeline = make_dataset(tiny_shards, "train", 64, training=True, augment_cfg=GEOMETRY_ONLY, seed=5)
    epoch1, labels1 = collect(pipeline)
    assert len(epoch1) == len(images)
    assert epoch1.min() >= 0 and epoch1.max() <= 255
    unchanged = 0
    originals = {im.tobytes() for im in images}
    for image, label in zip(epoch1.astype(np.uint8), labels1, strict=True):
        assert by_key[dihedral_key(image)] == label  # every image is a flip/rotation of one original
        unchanged += image.tobytes() in originals
    assert unchanged < len(images) // 2  # 1 in 8 views is the identity
    assert sorted(by_key) == sorted(dihedral_key(im) for im in epoch1.astype(np.uint8))  # each once
    again, _ = collect(make_dataset(tiny_shards, "train", 64, training=True, augment_cfg=GEOMETRY_ONLY, seed=5))
    np.testing.assert_array_equal(again, epoch1)  # same seed, same batches
    epoch2, _ = collect(pipeline)
    assert not np.array_equal(epoch2, epoch1)  # a new epoch reshuffles and re-augments


def test_training_without_augmentation_only_shuffles(tiny_shards):
    images, labels, _ = load_arrays(tiny_shards, "train")
    for cfg in (None, dataclasses.replace(GEOMETRY_ONLY, online=False)):
        got, got_labels = collect(make_dataset(tiny_shards, "train", 50, training=True, augment_cfg=cfg, seed=1))
        assert not np.array_equal(got, images.astype(np.float32))  # shuffled
        order = np.lexsort(got.reshape(len(got), -1).T[::-1])
        expected = np.lexsort(images.reshape(len(images), -1).T[::-1])
        np.testing.assert_array_equal(got[order], images[expected].astype(np.float32))
        np.testing.assert_array_equal(got_labels[order], labels[expected].astype(np.float32))


def test_noise_is_bounded_in_the_pipeline(tiny_shards):
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, noise=0.02)
    images, _, _ = load_arrays(tiny_shards, "valid")
    x, _ = next(iter(make_dataset(tiny_shards, "valid", 16, training=True, augment_cfg=cfg, shuffle_buffer=1)))
    # Training reads shards interleaved, so match each noisy patch to its closest original.
    originals = images.astype(np.float32)
    for noisy in x.numpy():
        diff = np.abs(originals - noisy).reshape(len(originals), -1).max(axis=1)
        assert 0 < diff.min() <= 0.02 * 255 + 1e-4


def test_drop_remainder_and_repeat(tiny_shards):
    n = dataset_size(tiny_shards, "train")
    sizes = [int(y.shape[0]) for _, y in make_dataset(tiny_shards, "train", 64, training=True, drop_remainder=True)]
    assert sizes == [64] * (n // 64)
    repeated = make_dataset(tiny_shards, "train", 64, training=True, repeat=True, drop_remainder=True)
    assert sum(1 for _ in repeated.take(n // 64 + 3)) == n // 64 + 3


def test_pipelines_run_without_the_autotune_thread_that_stalls_each_epochs_end(tiny_shards):
    # TF 2.21 waits for that thread's sleep (up to 60 s) whenever an iterator is destroyed,
    # and Keras destroys one per fit call: once per epoch here.
    for training in (True, False):
        ds = make_dataset(tiny_shards, "train", 64, training=training, augment_cfg=AugmentConfig())
        assert ds.options().autotune.enabled is False
        assert sum(int(y.shape[0]) for _, y in ds) == dataset_size(tiny_shards, "train")


def test_unknown_empty_or_damaged_split_is_an_error(tiny_shards, tmp_path):
    with pytest.raises(DataError, match="no split 'holdout'"):
        make_dataset(tiny_shards, "holdout", 8, training=False)
    copy = shutil.copytree(tiny_shards, tmp_path / "shards")
    index = read_json(copy / "index.json")
    index["splits"]["test"] = {"records": 0, "labels": {"0": 0, "1": 0}, "shards": [], "augmented_copies": 0}
    write_json(copy / "index.json", index)
    with pytest.raises(DataError, match="'test' is empty"):
        make_dataset(copy, "test", 8, training=False)
    shard = index["splits"]["valid"]["shards"][0]["name"]
    (copy / shard).write_bytes((copy / shard).read_bytes()[:1000])
    with pytest.raises(DataError, match=shard + ".*truncated"):
        load_arrays(copy, "valid")
