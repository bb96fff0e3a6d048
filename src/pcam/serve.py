"""``pcam serve``: the exported champion behind KServe's v1 and v2 (Open Inference) protocols.

Built on KServe's Python SDK (``kserve``): a custom :class:`kserve.Model` registered
with a :class:`kserve.ModelServer`'s data plane, whose REST app provides the routes,
health and readiness endpoints and JSON errors. We run that app under our own uvicorn
server only to choose the bind address (the SDK hard-codes 0.0.0.0; tests bind
127.0.0.1) and to put a request guard in front of it.

The model is the SavedModel that :mod:`pcam.export` writes, and the server calls its
``serving_default`` signature with the encoded bytes it received: the same graph, with
the same decoder and TTA views, that KServe's TensorFlow runtime (TF Serving) runs on
the cluster, so local and cluster answers agree. The wire format is TF Serving's too.

v1 (``POST /v1/models/<name>:predict``, ``Content-Type: application/json``)::

    {"instances": [{"b64": "<base64 PNG or JPEG>"}, ...]}
    -> {"predictions": [{"probability": 0.93, "single_probability": 0.91}, ...]}

``{"image_bytes": {"b64": ...}}`` per instance (TF Serving's named form) works too.

v2 (``POST /v2/models/<name>/infer``, JSON): one input, ``datatype`` ``BYTES``, shape
``[N]``, ``data`` a list of base64 strings. Outputs ``probability`` and
``single_probability``, FP32 ``[N]``. Not the binary-tensor extension: kserve 0.21
decodes BYTES elements as UTF-8 text, which image bytes are not (it answers 500), so
this server accepts JSON only and says so with a 400.

Health: ``GET /`` and ``/v2/health/live`` (live), ``/v2/health/ready``,
``/v1/models/<name>`` and ``/v2/models/<name>/ready`` (ready once the model is loaded
and warmed up). SIGTERM/SIGINT: uvicorn stops accepting connections, finishes the
requests in flight (up to ``--grace-seconds``) and the process exits 0.

Bad requests get a JSON ``{"error": ...}`` (the body and content-type checks live in
:mod:`pcam.serve_guard`) and the server keeps serving: 400 for a
body that is not base64 of a PNG/JPEG, an image that is not 96x96 (unless
``--resize``), no instances, a wrong content type; 413 for a body over
``--max-body-mb``; 400 naming the served model for an unknown model name.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pcam import IMAGE_SHAPE
from pcam.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_NAME = "pcam"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_MB = 8.0
BATCH = 64
"""Images per call of the signature: bounds memory (V views x BATCH images in flight)."""
FORMATS = {"PNG", "JPEG"}


class BadRequest(ValueError):
    """A request the model cannot score: becomes a 400 with the message."""


# ---------------------------------------------------------------- model location


def resolve_model(model: str, workdir: str | None = None) -> Path:
    """The SavedModel version folder to serve for ``model``.

    ``model`` is a champion location (its ``champion.json`` names the current version's
    serving folder), a version folder (holds saved_model.pb), a serving folder (numbered
    versions: the highest is served, as TF Serving does), or a folder holding
    ``serving/``; local or gs:// (a remote one is copied to ``workdir`` first).
    """
    from pcam import champion, storage
    from pcam.export import latest_version

    uri = model.removeprefix("file://")
    if storage.is_file(storage.join(uri, champion.CHAMPION_FILE)):
        pointer, _ = champion.read_pointer(uri)
        if not pointer or not pointer.get("serving"):
            raise DataError(
                f"{uri}: the champion has no serving export (promoted with --no-serving-export or by "
                "an older pcam); run `pcam export` on its model and serve that folder"
            )
        uri = pointer["serving"]
    elif not storage.is_file(storage.join(uri, "saved_model.pb")) and storage.exists(storage.join(uri, "serving")):
        uri = storage.join(uri, "serving")
    if storage.is_gcs(uri):
        return _download(uri, Path(workdir or tempfile.mkdtemp(prefix="pcam-serve-")))
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such model folder")
    if (path / "model.keras").is_file() and not any(p.name.isdigit() for p in path.iterdir()):
        raise DataError(
            f"{path}: holds a Keras model but no SavedModel; run `pcam export --model {path} "
            f"--out {path}/serving` first"
        )
    return latest_version(path)


def _download(uri: str, workdir: Path) -> Path:
    """Copy the highest numbered version of a gs:// serving folder (or the version folder given) to ``workdir``."""
    from pcam import storage

    if storage.is_file(storage.join(uri, "saved_model.pb")):
        return storage.download_tree(uri, workdir / "1")
    versions = sorted(int(n.strip("/")) for n in storage.list_dir(uri) if n.strip("/").isdigit())
    if not versions:
        raise DataError(f"{uri}: no numbered version folder")
    return storage.download_tree(storage.join(uri, str(versions[-1])), workdir / str(versions[-1]))


# ---------------------------------------------------------------- scoring


class Scorer:
    """The SavedModel's signature plus request checks; no HTTP in here (the bench calls it in-process)."""

    def __init__(self, version_dir: str | os.PathLike[str], *, resize: bool = False) -> None:
        """Load the SavedModel version in ``version_dir``; ``resize`` accepts other image sizes."""
        import tensorflow as tf

        from pcam.export import INPUT_NAME, SIGNATURE, read_meta

        self.version_dir = Path(version_dir)
        self.meta = read_meta(self.version_dir)
        self.resize = resize
        self.version = self.version_dir.name
        self._tf = tf
        from google.protobuf.message import DecodeError

        try:
            self._loaded = tf.saved_model.load(str(self.version_dir))
        except (OSError, ValueError, DecodeError, tf.errors.OpError) as exc:
            raise DataError(
                f"{self.version_dir}: not a loadable SavedModel ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
            ) from None
        self._signature = self._loaded.signatures[SIGNATURE]
        self._input = INPUT_NAME

    def check(self, blobs: list[bytes]) -> list[bytes]:
        """Each blob must be a 96x96 PNG or JPEG (other sizes resized only with ``resize``)."""
        from PIL import Image, UnidentifiedImageError

        if not blobs:
            raise BadRequest("no instances: send at least one image")
        height, width, _ = IMAGE_SHAPE
        out = []
        for i, blob in enumerate(blobs):
            try:
                image = Image.open(io.BytesIO(blob))
            except (UnidentifiedImageError, OSError):
                raise BadRequest(f"instance {i}: not an image (accepted encodings: PNG, JPEG)") from None
            if image.format not in FORMATS:
                raise BadRequest(f"instance {i}: {image.format} image; accepted encodings: PNG, JPEG")
            if image.size != (width, height):
                if not self.resize:
                    raise BadRequest(
                        f"instance {i}: image is {image.size[0]}x{image.size[1]}, expected "
                        f"{width}x{height} (start the server with --resize to accept other sizes)"
                    )
                blob = _resized_png(image, (width, height), i)
            out.append(blob)
        return out

    def score(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(TTA-mean, single-view) probabilities of checked blobs, BATCH images per signature call."""
        tf = self._tf
        prob, single = [], []
        for start in range(0, len(blobs), BATCH):
            try:
                out = self._signature(**{self._input: tf.constant(blobs[start : start + BATCH])})
            except tf.errors.InvalidArgumentError as exc:  # a file that passed the header check but not decoding
                message = str(getattr(exc, "message", exc)).strip().splitlines()[0]
                raise BadRequest(f"instances {start}..{start + BATCH - 1}: {message}") from None
            prob.append(out["probability"].numpy())
            single.append(out["single_probability"].numpy())
        return np.concatenate(prob), np.concatenate(single)


def _resized_png(image: Any, size: tuple[int, int], index: int) -> bytes:
    from PIL import Image

    try:
        resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except OSError as exc:
        raise BadRequest(f"instance {index}: unreadable image ({exc})") from None
    buf = io.BytesIO()
    resized.save(buf, "PNG")
    return buf.getvalue()


def b64_blob(item: Any, index: int) -> bytes:
    """Bytes of one base64 item: ``"..."``, ``{"b64": "..."}`` or ``{"image_bytes": {"b64": "..."}}``."""
    if isinstance(item, dict) and set(item) == {"image_bytes"}:
        item = item["image_bytes"]
    if isinstance(item, dict) and set(item) == {"b64"}:
        item = item["b64"]
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if not isinstance(item, str):
        raise BadRequest(f'instance {index}: expected {{"b64": "<base64 PNG or JPEG>"}}, got {type(item).__name__}')
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instance {index}: not valid base64") from None


# ---------------------------------------------------------------- kserve glue


@contextlib.contextmanager
def _own_argv() -> Iterator[None]:
    """kserve.model_server parses sys.argv when imported; keep ``pcam serve``'s flags away from it."""
    saved = sys.argv
    sys.argv = [saved[0]]
    try:
        yield
    finally:
        sys.argv = saved


def build_server(version_dir: Path, *, name: str = DEFAULT_NAME, resize: bool = False) -> tuple[Any, Any]:
    """(the kserve ModelServer with our model registered and loaded, the FastAPI app it serves)."""
    with _own_argv():
        import kserve
        from kserve import model_server
        from kserve.errors import InvalidInput
        from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
        from kserve.protocol.rest.server import RESTServer

    class PcamModel(kserve.Model):
        """The champion SavedModel as a kserve Model (v1 dict and v2 InferRequest payloads)."""

        def __init__(self) -> None:
            super().__init__(name)
            self.scorer: Scorer | None = None

        def load(self) -> bool:
            self.scorer = Scorer(version_dir, resize=resize)
            blank = io.BytesIO()
            from PIL import Image

            Image.new("RGB", IMAGE_SHAPE[:2]).save(blank, "PNG")
            self.scorer.score([blank.getvalue()])  # trace and warm up before reporting ready
            self.ready = True
            return self.ready

        def _blobs(self, payload: Any) -> tuple[list[bytes], bool]:
            if isinstance(payload, InferRequest):
                if len(payload.inputs) != 1:
                    raise BadRequest(f"expected one input (image bytes), got {len(payload.inputs)}")
                tensor = payload.inputs[0]
                if tensor.datatype != "BYTES":
                    raise BadRequest(f"input {tensor.name!r}: datatype must be BYTES, got {tensor.datatype}")
                return [b64_blob(x, i) for i, x in enumerate(tensor.data or [])], True
            if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
                raise BadRequest('expected a JSON object {"instances": [{"b64": "..."}, ...]}')
            return [b64_blob(x, i) for i, x in enumerate(payload["instances"])], False

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            import asyncio

            scorer = self.scorer
            if scorer is None:  # kserve marks the model ready only after load(): a bug if reached
                raise RuntimeError(f"model {self.name} is not loaded")
            try:
                blobs, v2 = self._blobs(payload)
                blobs = scorer.check(blobs)
                # TensorFlow releases the GIL: scoring in a worker thread keeps the event loop
                # (health checks, other requests) answering meanwhile.
                prob, single = await asyncio.get_running_loop().run_in_executor(None, scorer.score, blobs)
            except BadRequest as exc:
                raise InvalidInput(str(exc)) from None
            if not v2:
                return {
                    "predictions": [
                        {"probability": float(p), "single_probability": float(s)}
                        for p, s in zip(prob, single, strict=True)
                    ]
                }
            outputs = [
                InferOutput(key, [len(prob)], "FP32", data=values.tolist())
                for key, values in (("probability", prob), ("single_probability", single))
            ]
            return InferResponse(payload.id or "", self.name, outputs, model_version=scorer.version)

    server = model_server.ModelServer(enable_grpc=False, workers=1)
    model = PcamModel()
    model.load()
    server.register_model(model)
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0)
    rest.create_application()  # kserve's routes, health endpoints and JSON error handlers on its app
    return server, model_server.app


def serve(
    model: str,
    *,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    name: str = DEFAULT_NAME,
    resize: bool = False,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    grace_seconds: int = 20,
) -> int:
    """Load ``model`` and serve it until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop).

    Args:
        model: Version, serving or champion folder, local or gs:// (see :func:`resolve_model`).
        host: Bind address (0.0.0.0 in a container; 127.0.0.1 for local use and tests).
        port: HTTP port.
        name: Model name in the URLs (``/v1/models/<name>:predict``).
        resize: Resize images of other sizes to 96x96 instead of refusing them.
        max_body_mb: Largest request body accepted (413 beyond).
        grace_seconds: How long in-flight requests may finish after SIGTERM.
    """
    if max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {max_body_mb}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    with tempfile.TemporaryDirectory(prefix="pcam-serve-") as workdir:
        version_dir = resolve_model(model, workdir)
        _server, app = build_server(version_dir, name=name, resize=resize)
        import uvicorn

        from pcam.serve_guard import RequestGuard

        config = uvicorn.Config(
            RequestGuard(app, int(max_body_mb * 2**20), name),
            host=host,
            port=port,
            log_config=None,
            timeout_graceful_shutdown=grace_seconds,
            loop="asyncio",
        )
        server = uvicorn.Server(config)
        stopped: list[int] = []
        # uvicorn captures SIGTERM/SIGINT during serve() and re-raises them after its graceful
        # shutdown; these handlers receive that re-raise and turn it into a clean exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: stopped.append(number))
        log.info("serving %s (version %s) as %r on http://%s:%d", version_dir, version_dir.name, name, host, port)
        server.run()
        if stopped:
            log.info("stopped by signal %d", stopped[0])
        return 0 if server.started else 1


def check_port(host: str, port: int) -> None:
    """Fail fast, before loading anything, when ``host:port`` cannot be bound."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam serve`` options on ``parser``."""
    parser.add_argument(
        "--model",
        required=True,
        help="champion folder (holding serving/), serving folder or version folder; local or gs://",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name in the URLs (default: %(default)s)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default: %(default)s)")
    parser.add_argument(
        "--resize", action="store_true", help="resize images that are not 96x96 (bilinear) instead of answering 400"
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help="largest request body in MiB; larger ones get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=int,
        default=20,
        help="time in-flight requests get to finish after SIGTERM (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``pcam serve`` (serve an exported model over HTTP (KServe v1 and v2 protocols)); returns the exit code."""
    from pcam.fsutil import is_remote

    if not is_remote(args.model):
        resolve_model(args.model)  # a wrong folder fails in a second, before TensorFlow and kserve load
    check_port(args.host, args.port)
    try:
        with _own_argv():
            import kserve  # noqa: F401
    except ImportError:
        raise ConfigError("pcam serve needs the kserve package (pip install -r requirements.lock)") from None
    return serve(
        args.model,
        host=args.host,
        port=args.port,
        name=args.name,
        resize=args.resize,
        max_body_mb=args.max_body_mb,
        grace_seconds=args.grace_seconds,
    )
