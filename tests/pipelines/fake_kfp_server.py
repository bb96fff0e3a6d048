"""A tiny stand-in for the KFP v2 API server on 127.0.0.1, recording every request.

It answers the REST paths kfp.Client 2.17 calls while creating runs and recurring
runs (found by logging what the real client asks for): healthz, experiments
(list with a name filter, create, get), runs and recurringruns. Anything else gets
a 404 and is still recorded, so a test sees when the client starts asking for more.
"""

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeKfpServer:
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)

    def start(self) -> "FakeKfpServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                server.requests.append(Request(method, url.path, parse_qs(url.query), body))
                status, payload = server.answer(method, url.path, parse_qs(url.query), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def posted(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == "POST" and r.path == API + path]

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == f"{API}/healthz":
            return 200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": False}
        if path == f"{API}/experiments" and method == "GET":
            wanted = None
            for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
                if predicate.get("key") == "display_name":
                    wanted = predicate.get("string_value") or predicate.get("stringValue")
            found = [e for e in self.experiments.values() if wanted in (None, e["display_name"])]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{API}/experiments" and method == "POST":
            experiment = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path.startswith(f"{API}/experiments/") and method == "GET":
            experiment = self.experiments.get(path.rsplit("/", 1)[1])
            return (200, experiment) if experiment else (404, {"error": "not found", "code": 5})
        if path == f"{API}/runs" and method == "POST":
            return 200, {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
        if path == f"{API}/recurringruns" and method == "POST":
            return 200, {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
        return 404, {"error": f"fake server: {method} {path} not implemented", "code": 5}
