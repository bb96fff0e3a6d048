"""Fixtures that ingest and split tiny real PCam data (owned by the data step).

Session-scoped and fast (about a second in all); other steps' tests build on them:

* ``tiny_dataset``: canonical dataset of 320 real patches from ``pcam-sample`` (the
  full sample under ``$PCAM_SHARED``, or the committed fixture: see tests/conftest.py)
  (160 from train + 160 from valid, half of each label).
* ``tiny_split``: ``official`` split of it: test is the source's valid split (other
  slides), valid is carved out of source train (all three non-empty with both labels).
* ``synthetic_h5_dir``: synthetic PCam in the official HDF5 layout (96/32/32 patches).
* ``synthetic_dataset``: that directory ingested (slide ids known).
* ``http_server``: a local HTTP server (127.0.0.1, a thread) serving bytes you give it,
  with ``Range`` support and an optional dropped connection, for download tests.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pcam.config import SyntheticConfig
from pcam.ingest import ingest
from pcam.split import split_dataset
from pcam.synth import write_synthetic

TINY_LIMIT = 160


def ingest_sample(pcam_sample: Path, factory: pytest.TempPathFactory, limit: int, name: str) -> Path:
    """A canonical dataset of ``limit`` real patches per source split of ``pcam-sample``."""
    out = factory.mktemp(name) / name
    ingest(str(pcam_sample), out, fmt="folders", limit_per_split=limit, seed=0, cache_dir=factory.mktemp("cache"))
    return out


def official_split(dataset: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    """``official`` split of ``dataset`` (test = source valid; valid carved out of source train)."""
    out = factory.mktemp(name) / name
    split_dataset(dataset, out, mode="official", ratios=(0.7, 0.2, 0.1), seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(pcam_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_sample(pcam_sample, tmp_path_factory, TINY_LIMIT, "tiny_dataset")


@pytest.fixture(scope="session")
def tiny_split(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_split(tiny_dataset, tmp_path_factory, "tiny_split")


@pytest.fixture(scope="session")
def synthetic_h5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("synth") / "synthetic", SyntheticConfig(train=96, valid=32, test=32, slides=12), seed=0
    )


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_h5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synthetic_dataset"
    ingest(str(synthetic_h5_dir), out, cache_dir=tmp_path_factory.mktemp("cache"))
    return out


@dataclass
class LocalServer:
    """What the test server serves, and what it saw."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    """name -> bytes to send before dropping the connection (once; then served normally)."""
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every GET."""


def closed_port_url(scheme: str = "http") -> str:
    """A URL on 127.0.0.1 whose port nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    state = LocalServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            header = self.headers.get("Range")
            state.requests.append((self.path, header))
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if header and not state.ignore_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.drop_after.pop(name, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
