"""Export a trained model as a TensorFlow SavedModel in the layout TF Serving (KServe) loads.

Layout (what KServe's ``kserve-tensorflow-serving`` runtime expects at ``storageUri``)::

    <dest>/<version>/saved_model.pb
    <dest>/<version>/variables/variables.{index,data-*}
    <dest>/<version>/assets.extra/pcam.json     # our description; TF Serving ignores assets.extra

``<dest>`` is the folder to give as ``storageUri`` (it holds the numbered versions);
TF Serving serves the highest version it finds.

The serving signature (``serving_default``) takes a batch of **encoded image bytes**
(input ``image_bytes``, a string tensor of shape ``[None]``) and returns, per image,
``probability`` (the mean over the configured TTA views, as ``pcam evaluate`` scores it)
and ``single_probability`` (the identity view alone). Accepted encodings: **PNG and
JPEG** only, 96x96 pixels; grey or RGBA images are converted to RGB by the decoder
(``channels=3``). The format is chosen from the file's magic bytes; anything else, or
another size, fails the request with InvalidArgumentError (TF Serving answers 400).
PNG and JPEG are decoded by explicit ``DecodePng``/``DecodeJpeg`` ops rather than
``tf.io.decode_image``, so the graph holds no decoder a given TF Serving build may lack.

The TTA views run inside the graph through the same :func:`pcam.evaluate.tta_views` that
evaluation uses, so the SavedModel, ``pcam evaluate`` and ``pcam serve`` cannot disagree
on what a view is. The ops the exported graph uses are listed in ``pcam.json``
(:func:`graph_ops`); docs/cluster.md says which TF Serving release we set as KServe's
``runtimeVersion``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pcam import IMAGE_SHAPE
from pcam.config import TTA_VIEW_NAMES
from pcam.errors import ConfigError, DataError
from pcam.fsutil import atomic_dir, file_sha256, is_remote

log = logging.getLogger(__name__)

INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probability", "single_probability")
SIGNATURE = "serving_default"
META_DIR = "assets.extra"
META_FILE = "pcam.json"
ENCODINGS = ("png", "jpeg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def check_views(views: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The view names as a tuple; an unknown or missing view is a ConfigError naming it."""
    views = tuple(views)
    if not views:
        raise ConfigError("export: tta views: needs at least one view")
    for v in views:
        if v not in TTA_VIEW_NAMES:
            raise ConfigError(f"export: unknown TTA view {v!r}; expected one of {', '.join(TTA_VIEW_NAMES)}")
    return views


def decode_image(data: Any) -> Any:
    """One PNG or JPEG (a scalar string tensor) to a (96, 96, 3) uint8 tensor; anything else fails.

    JPEG is decoded with the accurate integer IDCT (libjpeg's ISLOW), Pillow's default, so
    the served pixels equal what ``pcam ingest`` reads from the same file (TensorFlow's
    default fast IDCT differs by up to 5 grey levels on PCam's JPEGs).
    """
    import tensorflow as tf

    height, width, _ = IMAGE_SHAPE
    blank = tf.zeros(IMAGE_SHAPE, tf.uint8)
    # Each check is an Assert whose failing case feeds a blank image on, so no other op
    # (a decoder, a shape check) can fail first with a less helpful message.
    is_png = tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    known = tf.debugging.Assert(
        tf.logical_or(is_png, is_jpeg), ["image_bytes: not a PNG or JPEG image (accepted encodings: png, jpeg)"]
    )
    with tf.control_dependencies([known]):
        image = tf.cond(
            is_png,
            lambda: tf.io.decode_png(data, channels=3),
            lambda: tf.cond(
                is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"), lambda: blank
            ),
        )
    size = tf.shape(image)[:2]
    right_size = tf.reduce_all(tf.equal(size, [height, width]))
    sized = tf.debugging.Assert(right_size, [f"image_bytes: image must be {height}x{width} pixels, got", size])
    with tf.control_dependencies([sized]):
        image = tf.cond(right_size, lambda: image, lambda: blank)
    return tf.ensure_shape(image, IMAGE_SHAPE)


def serving_fn(model: Any, views: tuple[str, ...]) -> Any:
    """The function behind the signature: encoded bytes ``[None]`` -> {probability, single_probability}."""
    import tensorflow as tf

    from pcam.evaluate import tta_views

    forward = views if "identity" in views else (*views, "identity")
    single = forward.index("identity")

    def serve(image_bytes: Any) -> dict[str, Any]:
        images = tf.map_fn(decode_image, image_bytes, fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8))
        x = tta_views(tf.cast(images, tf.float32), forward)
        probs = tf.reshape(tf.cast(model(x, training=False), tf.float32), (len(forward), -1))
        return {"probability": tf.reduce_mean(probs[: len(views)], axis=0), "single_probability": probs[single]}

    return serve


def graph_ops(saved_model_dir: str | os.PathLike[str]) -> list[str]:
    """Sorted op types in a SavedModel's graph and function library (what the runtime must register)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for graph in proto.meta_graphs:
        ops.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return sorted(ops)


def next_version(dest: str) -> int:
    """One more than the highest numbered version folder in ``dest`` (1 when there is none)."""
    if is_remote(dest):
        from pcam import storage

        names = storage.list_dir(dest) if storage.exists(dest) else []
    else:
        names = os.listdir(dest) if os.path.isdir(dest) else []
    versions = [int(n.strip("/")) for n in names if n.strip("/").isdigit()]
    return max(versions, default=0) + 1


def _write_version(model: Any, model_file: Path, views: tuple[str, ...], out: Path) -> dict[str, Any]:
    """Write the SavedModel of one version into the (empty) directory ``out``; returns pcam.json."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE, serving_fn(model, views), input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)]
    )
    archive.write_out(str(out), verbose=False)
    meta = {
        "format": "tensorflow SavedModel (TF Serving layout)",
        "signature": SIGNATURE,
        "input": {
            "name": INPUT_NAME,
            "dtype": "string",
            "shape": [None],
            "encodings": list(ENCODINGS),
            "image_shape": list(IMAGE_SHAPE),
        },
        "outputs": {
            "probability": f"mean tumour probability over the TTA views {list(views)}",
            "single_probability": "tumour probability of the identity view",
        },
        "views": list(views),
        "source_model": str(model_file),
        "source_model_sha256": file_sha256(model_file),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ops": graph_ops(out),
    }
    (out / META_DIR).mkdir(exist_ok=True)
    (out / META_DIR / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _copy_remote(local: Path, target: str) -> None:
    """Upload a version folder; ``saved_model.pb`` last, so a polling server never loads half of it."""
    from pcam import storage

    storage.upload_tree(local, target, marker="saved_model.pb")


def export_serving(
    model_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    views: tuple[str, ...] | list[str],
    *,
    version: int | None = None,
) -> str:
    """Export ``model_path`` (a model directory or ``.keras`` file) as ``<dest>/<version>/``.

    Args:
        model_path: Directory holding ``model.keras``, or the ``.keras`` file.
        dest: The serving folder (local or gs://): KServe's ``storageUri``.
        views: TTA views computed inside the graph (``evaluate.tta_views``).
        version: Version folder number (default: one more than the highest present).

    Returns:
        The version folder written (``<dest>/<version>``).
    """
    views = check_views(views)
    dest = str(dest)
    version = next_version(dest) if version is None else int(version)
    if version < 1:
        raise ConfigError(f"export: version must be >= 1, got {version}")
    from pcam.artifacts import load_model
    from pcam.artifacts import model_file as model_file_of

    model_file = model_file_of(model_path)
    model = load_model(model_file)
    if tuple(model.input_shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{model_file}: model takes {model.input_shape[1:]}, not {IMAGE_SHAPE} PCam patches")
    if is_remote(dest):
        target = dest.rstrip("/") + f"/{version}"
        with tempfile.TemporaryDirectory(prefix="pcam-export-") as tmp:
            local = Path(tmp) / str(version)
            local.mkdir()
            meta = _write_version(model, model_file, views, local)
            _copy_remote(local, target)
    else:
        target = str(Path(dest) / str(version))
        with atomic_dir(target, "savedmodel") as tmp:  # a killed export leaves no version folder behind
            meta = _write_version(model, model_file, views, tmp)
    log.info("exported %s as %s (%d views, %d op types)", model_file, target, len(views), len(meta["ops"]))
    return target


def read_meta(version_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``pcam.json`` an export wrote into a version folder."""
    path = Path(version_dir) / META_DIR / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (not a folder written by `pcam export`)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def latest_version(serving_dir: str | os.PathLike[str]) -> Path:
    """The highest numbered version folder of a local serving folder (what TF Serving would load)."""
    root = Path(serving_dir)
    if (root / "saved_model.pb").is_file():
        return root  # a version folder given directly
    if not root.is_dir():
        raise DataError(f"{root}: no such serving folder")
    versions = sorted((int(p.name), p) for p in root.iterdir() if p.name.isdigit() and p.is_dir())
    if not versions:
        raise DataError(f"{root}: no numbered version folder (expected {root}/1/saved_model.pb)")
    path = versions[-1][1]
    if not (path / "saved_model.pb").is_file():
        raise DataError(f"{path}: saved_model.pb missing")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam export`` options on ``parser``."""
    parser.add_argument("--model", required=True, help="directory holding model.keras (or the .keras file)")
    parser.add_argument(
        "--out",
        required=True,
        help="serving folder (local or gs://) to write <out>/<version>/saved_model.pb into; KServe's storageUri",
    )
    parser.add_argument("--config", help="experiment YAML: its evaluate.tta_views go into the graph")
    parser.add_argument(
        "--views",
        nargs="+",
        metavar="VIEW",
        help=f"TTA views (default: the config's, else the evaluation default); any of {', '.join(TTA_VIEW_NAMES)}",
    )
    parser.add_argument("--version", type=int, help="version number (default: highest present + 1)")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam export``; returns the exit code."""
    from pcam.config import EvaluateConfig, load_config

    if args.views:
        views = check_views(args.views)
    elif args.config:
        views = load_config(args.config).evaluate.tta_views
    else:
        views = EvaluateConfig().tta_views
    print(export_serving(args.model, args.out, views, version=args.version))
    return 0
