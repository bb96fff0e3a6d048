"""TFRecord layout of one PCam patch: the writer and the parser are a pair.

Each record is a ``tf.train.Example`` with three features, named by the constants
below so no other module spells them:

* ``image``: the 96x96x3 uint8 pixels, either ``raw`` (``ndarray.tobytes()``, C order,
  27,648 bytes) or ``png`` (lossless, so decoding gives back the exact pixels);
* ``label``: int64 in {0, 1};
* ``id``: the patch's source id (bytes), so predictions can be traced to a file.

Parsing works on a batch of serialized records at once (``tf.io.parse_example`` plus
one ``decode_raw`` over the batch): per-record parsing costs a kernel launch per
image and is several times slower in tf.data.

Compression (``none``/``gzip``) is a property of the whole TFRecord file, not of a
record: :func:`tfrecord_options` and :func:`compression_type` translate it for the
writer and for ``tf.data.TFRecordDataset``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pcam import IMAGE_SHAPE
from pcam.errors import DataError

IMAGE_KEY = "image"
LABEL_KEY = "label"
ID_KEY = "id"
ENCODINGS = ("raw", "png")
COMPRESSIONS = ("none", "gzip")
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE))
PNG_COMPRESS_LEVEL = 6
"""zlib level for PNG: fixed, so the same pixels always give the same bytes."""


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise DataError(f"unknown image encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def compression_type(compression: str) -> str:
    """The ``compression_type`` string that ``tf.data.TFRecordDataset`` takes."""
    if compression not in COMPRESSIONS:
        raise DataError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    return "GZIP" if compression == "gzip" else ""


def tfrecord_options(compression: str) -> Any:
    import tensorflow as tf

    return tf.io.TFRecordOptions(compression_type=compression_type(compression))


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    _check_encoding(encoding)
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise DataError(f"expected a uint8 {IMAGE_SHAPE} image, got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_example(image: np.ndarray, label: int, id: str, encoding: str) -> bytes:  # noqa: A002
    """One serialized ``tf.train.Example`` holding a patch, its label and its id."""
    import tensorflow as tf

    label = int(label)
    if label not in (0, 1):
        raise DataError(f"patch {id!r}: label {label} is not 0 or 1")
    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_image(image, encoding)])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(id).encode()])),
    }
    # deterministic=True sorts the feature map's keys. Without it protobuf (upb) writes
    # them in hash order, which changes with PYTHONHASHSEED: a rerun in another process
    # wrote the same records with other bytes, so shard sha256s differed between runs.
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def _feature_spec() -> dict[str, Any]:
    import tensorflow as tf

    return {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }


def decode_images(encoded: Any, encoding: str) -> Any:
    """A batch of encoded image strings (shape ``(B,)``) to uint8 ``(B, 96, 96, 3)``."""
    import tensorflow as tf

    _check_encoding(encoding)
    if encoding == "raw":
        flat = tf.io.decode_raw(encoded, tf.uint8)
        return tf.reshape(flat, (-1, *IMAGE_SHAPE))
    images = tf.map_fn(lambda s: tf.io.decode_png(s, channels=3), encoded,
                       fn_output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    return tf.ensure_shape(images, (None, *IMAGE_SHAPE))


def parse_example(serialized: Any, encoding: str) -> tuple[Any, Any, Any]:
    """Serialized record(s) to ``(image uint8, label int64, id string)`` tensors.

    A scalar string gives one ``(96, 96, 3)`` image; a 1-D batch gives
    ``(B, 96, 96, 3)``, ``(B,)``, ``(B,)`` — the fast path, used by :mod:`pcam.input`.
    """
    import tensorflow as tf

    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    scalar = serialized.shape.rank == 0
    batch = tf.reshape(serialized, [-1])
    features = tf.io.parse_example(batch, _feature_spec())
    images = decode_images(features[IMAGE_KEY], encoding)
    labels, ids = features[LABEL_KEY], features[ID_KEY]
    if scalar:
        return images[0], labels[0], ids[0]
    return images, labels, ids
