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
record: :class:`TFRecordFileWriter` writes it and :func:`compression_type` translates it
for ``tf.data.TFRecordDataset``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
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


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """One patch as the record's image bytes: raw uint8 pixels or PNG."""
    _check_encoding(encoding)
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise DataError(f"expected a uint8 {IMAGE_SHAPE} image, got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: tag byte, varint length, payload."""
    return b"".join((bytes((tag,)), _varint(len(payload)), payload))


def _map_entry(key: bytes, feature: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, key) + _field(0x12, feature))  # Features.feature (1): {key (1), value (2)}


def _bytes_feature(value: bytes) -> bytes:
    return _field(0x0A, _field(0x0A, value))  # Feature.bytes_list (1) > BytesList.value (1)


@functools.lru_cache(maxsize=64)
def _image_entry_prefix(size: int) -> bytes:
    """Everything of the image's map entry before its ``size`` pixel bytes (constant for raw)."""
    marker = b"\0" * size
    return _map_entry(IMAGE_KEY.encode(), _bytes_feature(marker))[:-size]


_LABEL_ENTRIES = {
    # Feature.int64_list (3) > Int64List.value (1, packed): one varint, 0 or 1.
    label: _map_entry(LABEL_KEY.encode(), _field(0x1A, _field(0x0A, _varint(label))))
    for label in (0, 1)
}


def encode_example(image: np.ndarray, label: int, id: str, encoding: str) -> bytes:  # noqa: A002
    """One serialized ``tf.train.Example`` holding a patch, its label and its id.

    Written field by field rather than through ``tf.train.Example``: building the
    proto object copied the 27 KB image twice, and per-field Python was most of the
    rest; here the image's framing is a cached prefix and the pixels are copied once
    (bench/ingest_bench.py). The bytes are exactly what
    ``Example.SerializeToString(deterministic=True)`` gives (tests/unit/test_records.py
    checks it): features sorted by key, so a rerun in any process writes the same bytes.
    """
    label = int(label)
    if label not in (0, 1):
        raise DataError(f"patch {id!r}: label {label} is not 0 or 1")
    pixels = encode_image(image, encoding)
    id_entry = _map_entry(ID_KEY.encode(), _bytes_feature(str(id).encode()))
    image_prefix = _image_entry_prefix(len(pixels))
    label_entry = _LABEL_ENTRIES[label]
    size = len(id_entry) + len(image_prefix) + len(pixels) + len(label_entry)
    return b"".join((b"\x0a", _varint(size), id_entry, image_prefix, pixels, label_entry))  # Example.features (1)


def _masked_crc(data: bytes) -> bytes:
    """TFRecord's checksum: crc32c, rotated right by 15 bits plus a constant, little-endian."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


class TFRecordFileWriter:
    """Write a TFRecord file (``none`` or ``gzip``) and hash it on the way out, without TensorFlow.

    A record is ``uint64 length, masked crc32c of the length, data, masked crc32c of
    the data``, all little-endian; gzip wraps the whole stream, as TensorFlow's
    ``GZIP`` option does (fixed level, no name or time in the header, so the same
    records give the same bytes). ``sha256`` and ``bytes`` describe the file as
    written to disk, so the caller never reads it back to checksum it. Not importing
    TensorFlow keeps `pcam shard` (without augmented copies) from paying its 5 s import.
    """

    def __init__(self, path: str | os.PathLike[str], compression: str):
        """Open ``path`` for TFRecords (``compression`` none or gzip), hashing as it writes."""
        compression_type(compression)
        self._sink = _HashingFile(path)
        self._gzip = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._sink, compresslevel=6, mtime=0)
            if compression == "gzip"
            else None
        )

    def write(self, record: bytes) -> None:
        """Append one serialized record."""
        length = len(record).to_bytes(8, "little")
        (self._gzip or self._sink).write(b"".join((length, _masked_crc(length), record, _masked_crc(record))))

    def close(self) -> None:
        """Flush and close the file."""
        if self._gzip is not None:
            self._gzip.close()  # writes the gzip trailer through the sink; leaves the file open
        self._sink.close()

    @property
    def sha256(self) -> str:
        """The sha256 of the file as written to disk (final after :meth:`close`)."""
        return self._sink.hash.hexdigest()

    @property
    def bytes(self) -> int:
        """Bytes written so far."""
        return self._sink.bytes

    def __enter__(self) -> TFRecordFileWriter:
        """The writer itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


class _HashingFile:
    """A file opened for writing that keeps the sha256 and size of what was written."""

    def __init__(self, path: str | os.PathLike[str]):
        self._file = open(path, "wb")  # noqa: SIM115  (closed in close())
        self.hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.bytes += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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
    images = tf.map_fn(
        lambda s: tf.io.decode_png(s, channels=3), encoded, fn_output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    )
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
