"""TFRecord writer/parser pair: pixel-exact round trips for every encoding and compression."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pcam import records as R
from pcam.errors import DataError
from tests.fixtures_shards import sample_patches


@pytest.fixture(scope="module")
def patches(pcam_sample):
    return sample_patches(pcam_sample, "valid", 10)


@pytest.mark.parametrize("encoding", R.ENCODINGS)
@pytest.mark.parametrize("compression", R.COMPRESSIONS)
def test_round_trip_is_pixel_exact(patches, tmp_path, encoding, compression):
    import tensorflow as tf

    images, labels, ids = patches
    path = tmp_path / "x.tfrecord"
    with R.TFRecordFileWriter(path, compression) as writer:
        for image, label, pid in zip(images, labels, ids, strict=True):
            writer.write(R.encode_example(image, label, pid, encoding))
    assert writer.bytes == path.stat().st_size and writer.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    ds = tf.data.TFRecordDataset(str(path), compression_type=R.compression_type(compression))
    batch = next(iter(ds.batch(64)))
    out_images, out_labels, out_ids = R.parse_example(batch, encoding)
    assert out_images.dtype == tf.uint8 and tuple(out_images.shape) == (20, 96, 96, 3)
    np.testing.assert_array_equal(out_images.numpy(), images)
    np.testing.assert_array_equal(out_labels.numpy(), labels)
    assert [i.decode() for i in out_ids.numpy()] == ids
    # one record at a time gives the same as the batch
    image, label, pid = R.parse_example(next(iter(ds)), encoding)
    assert tuple(image.shape) == (96, 96, 3)
    np.testing.assert_array_equal(image.numpy(), images[0])
    assert int(label) == labels[0] and pid.numpy().decode() == ids[0]


def reference_example(image: np.ndarray, label: int, pid: str, encoding: str) -> bytes:
    """What the proto library serializes for the same record."""
    import tensorflow as tf

    feature = {
        R.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[R.encode_image(image, encoding)])),
        R.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        R.ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[pid.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.mark.parametrize("encoding", R.ENCODINGS)
def test_examples_are_the_bytes_protobuf_serializes(patches, encoding):
    images, labels, _ = patches
    for pid in ["", "a", "x" * 300, "ünïcode#aug2"]:  # ids of 0, 1, 300 (two-byte length) and non-ASCII bytes
        for image, label in zip(images[:2], labels[:2], strict=True):
            assert R.encode_example(image, label, pid, encoding) == reference_example(image, int(label), pid, encoding)


def test_uncompressed_files_are_byte_identical_to_tensorflows_writer(patches, tmp_path):
    import tensorflow as tf

    images, labels, ids = patches
    records = [
        R.encode_example(image, label, pid, "raw") for image, label, pid in zip(images, labels, ids, strict=True)
    ]
    with R.TFRecordFileWriter(tmp_path / "ours.tfrecord", "none") as writer:
        for record in records:
            writer.write(record)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as reference:
        for record in records:
            reference.write(record)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()


def test_gzip_actually_compresses_and_files_differ(patches, tmp_path):
    images, labels, ids = patches
    sizes = {}
    for compression in R.COMPRESSIONS:
        path = tmp_path / f"{compression}.tfrecord"
        with R.TFRecordFileWriter(path, compression) as writer:
            for image, label, pid in zip(images, labels, ids, strict=True):
                writer.write(R.encode_example(image, label, pid, "raw"))
        sizes[compression] = path.stat().st_size
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == (compression == "gzip")
    assert sizes["gzip"] < sizes["none"]


def test_encodings_are_deterministic_and_raw_is_the_plain_bytes(patches):
    image = patches[0][0]
    assert R.encode_image(image, "raw") == image.tobytes()
    png = R.encode_image(image, "png")
    assert png.startswith(b"\x89PNG") and png == R.encode_image(image.copy(), "png")
    assert R.encode_example(image, 1, "a", "png") == R.encode_example(image.copy(), 1, "a", "png")


@pytest.mark.parametrize(
    "bad", [np.zeros((96, 96), np.uint8), np.zeros((96, 96, 3), np.float32), np.zeros((64, 64, 3), np.uint8)]
)
def test_wrong_image_shape_or_dtype_is_rejected(bad):
    with pytest.raises(DataError, match="expected a uint8"):
        R.encode_example(bad, 0, "x", "raw")


def test_bad_label_encoding_and_compression_are_rejected(patches):
    image = patches[0][0]
    with pytest.raises(DataError, match="label 2"):
        R.encode_example(image, 2, "x", "raw")
    with pytest.raises(DataError, match="jpeg"):
        R.encode_example(image, 0, "x", "jpeg")
    with pytest.raises(DataError, match="zstd"):
        R.compression_type("zstd")
