"""A stand-in for a Kubernetes API server, the KFP API and the GCS JSON API on 127.0.0.1.

It answers the REST paths ``pcam doctor`` asks (found by logging what the kubernetes
client 30.1 and google-cloud-storage 3.17 send) with objects shaped like a real
cluster's recorded responses; everything else gets a 404 and is recorded, so a test
sees when the doctor starts asking for more. SubjectAccessReviews are decided by the
rules of ``manifests/base/rbac.yaml`` (the Role pcam installs), evaluated here the way
the RBAC authorizer does for namespaced resources, unless a test swaps the rules.
"""

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from pcam import cluster

ROOT = Path(__file__).resolve().parents[2]


def pcam_role_rules() -> list[dict]:
    """The rules of the Role in manifests/base/rbac.yaml."""
    docs = yaml.safe_load_all((ROOT / "manifests" / "base" / "rbac.yaml").read_text())
    (role,) = [d for d in docs if d and d["kind"] == "Role"]
    return role["rules"]


def node(name: str, labels: dict[str, str], gpus: int = 1, taints: list[dict] | None = None) -> dict:
    """A Node as the API returns it (trimmed to what matters for scheduling)."""
    allocatable = {"cpu": "7910m", "memory": "27000000Ki", "pods": "110"}
    if gpus:
        allocatable[cluster.GPU_RESOURCE] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": allocatable, "capacity": allocatable},
    }


def gpu_taint() -> dict:
    return {"key": cluster.GPU_TAINT_KEY, "value": cluster.GPU_TAINT_VALUE, "effect": cluster.GPU_TAINT_EFFECT}


@dataclass
class FakeCluster:
    namespace: str = cluster.NAMESPACE
    namespaces: set[str] = field(default_factory=lambda: {cluster.NAMESPACE, "default"})
    service_accounts: set[str] = field(default_factory=lambda: {cluster.SERVICE_ACCOUNT})
    role_rules: list[dict] = field(default_factory=pcam_role_rules)
    sar_forbidden: bool = False
    pvcs: dict[str, dict] = field(
        default_factory=lambda: {cluster.PVC_NAME: {"phase": "Bound", "class": "standard-rwx"}}
    )
    storage_classes: dict[str, str] = field(
        default_factory=lambda: {"standard-rwx": "Immediate", "standard": "WaitForFirstConsumer"}
    )
    nodes: list[dict] = field(
        default_factory=lambda: [
            node("cpu-pool-1", {}, gpus=0),
            node("gpu-pool-1", {cluster.GPU_NODE_LABEL_KEY: cluster.GPU_NODE_LABEL_VALUE}, 1, [gpu_taint()]),
        ]
    )
    secrets: set[str] = field(default_factory=lambda: {"mlpipeline-minio-artifact"})
    configmaps: dict[str, dict] = field(default_factory=dict)
    healthz: tuple[int, dict] = (200, {"commit_sha": "4ea7a3a", "tag_name": "2.5.0", "multi_user": False})
    buckets: set[str] = field(default_factory=lambda: {"pcam-artifacts"})
    forbidden_buckets: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)

    # ------------------------------------------------------------------ server plumbing
    def start(self) -> "FakeCluster":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append((method, url.path))
                status, payload = fake.answer(method, url.path, parse_qs(url.query), raw)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, path: Path, server: str | None = None) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake-gke",
                    "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
                    "users": [{"name": "admin", "user": {"token": "recorded-token"}}],
                    "contexts": [{"name": "fake-gke", "context": {"cluster": "fake", "user": "admin"}}],
                }
            )
        )
        return path

    # ------------------------------------------------------------------ answers
    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }

    def _not_found(self, kind: str, name: str) -> tuple[int, dict]:
        return self._status(404, "NotFound", f'{kind} "{name}" not found')

    def answer(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
        ns = f"/api/v1/namespaces/{self.namespace}"
        if method == "GET" and (m := re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)):
            if m.group(1) not in self.namespaces:
                return self._not_found("namespaces", m.group(1))
            return 200, {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": m.group(1)},
                "status": {"phase": "Active"},
            }
        if method == "GET" and (m := re.fullmatch(ns + r"/serviceaccounts/([^/]+)", path)):
            if m.group(1) not in self.service_accounts:
                return self._not_found("serviceaccounts", m.group(1))
            return 200, {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": m.group(1), "namespace": self.namespace},
            }
        if method == "POST" and path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            if self.sar_forbidden:
                return self._status(
                    403,
                    "Forbidden",
                    "subjectaccessreviews.authorization.k8s.io is forbidden: "
                    'User "dev@example.com" cannot create resource "subjectaccessreviews"',
                )
            review = json.loads(raw)
            return 201, {**review, "status": {"allowed": self._allowed(review["spec"])}}
        if method == "GET" and (m := re.fullmatch(ns + r"/persistentvolumeclaims/([^/]+)", path)):
            pvc = self.pvcs.get(m.group(1))
            if pvc is None:
                return self._not_found("persistentvolumeclaims", m.group(1))
            return 200, {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": m.group(1), "namespace": self.namespace},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": pvc["class"],
                    "resources": {"requests": {"storage": "1Ti"}},
                },
                "status": {"phase": pvc["phase"]},
            }
        if method == "GET" and (m := re.fullmatch(r"/apis/storage.k8s.io/v1/storageclasses/([^/]+)", path)):
            if m.group(1) not in self.storage_classes:
                return self._not_found("storageclasses.storage.k8s.io", m.group(1))
            return 200, {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": m.group(1)},
                "provisioner": "filestore.csi.storage.gke.io",
                "volumeBindingMode": self.storage_classes[m.group(1)],
            }
        if method == "GET" and path == "/api/v1/nodes":
            selected = [n for n in self.nodes if self._selects(query.get("labelSelector", [""])[0], n)]
            return 200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": selected}
        if method == "GET" and (m := re.fullmatch(ns + r"/secrets/([^/]+)", path)):
            if m.group(1) not in self.secrets:
                return self._not_found("secrets", m.group(1))
            return 200, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": m.group(1)}, "type": "Opaque"}
        if method == "GET" and (m := re.fullmatch(ns + r"/configmaps/([^/]+)", path)):
            if m.group(1) not in self.configmaps:
                return self._not_found("configmaps", m.group(1))
            return 200, {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": m.group(1)},
                "data": self.configmaps[m.group(1)],
            }
        if method == "GET" and path == "/apis/v2beta1/healthz":
            return self.healthz
        if method == "POST" and (m := re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path)):
            return self._gcs_upload(m.group(1), query, raw)
        if method == "DELETE" and (m := re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", path)):
            bucket, name = m.group(1), unquote(m.group(2))
            if self.objects.pop(f"{bucket}/{name}", None) is None:
                return 404, {"error": {"code": 404, "message": "No such object"}}
            return 204, None
        return 404, {"kind": "Status", "code": 404, "message": f"fake cluster: {method} {path} not recorded"}

    def _gcs_upload(self, bucket: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
        if bucket in self.forbidden_buckets:
            return 403, {
                "error": {
                    "code": 403,
                    "message": "pcam-sa@p.iam.gserviceaccount.com does not have "
                    "storage.objects.create access to the Google Cloud "
                    "Storage object.",
                }
            }
        if bucket not in self.buckets:
            return 404, {"error": {"code": 404, "message": "The specified bucket does not exist."}}
        # multipart/related: a JSON metadata part, then the bytes.
        meta = json.loads(raw.split(b"\r\n\r\n", 2)[1].split(b"\r\n--", 1)[0]) if b"\r\n\r\n" in raw else {}
        name = meta.get("name") or query.get("name", [""])[0]
        self.objects[f"{bucket}/{name}"] = raw
        return 200, {"kind": "storage#object", "bucket": bucket, "name": name, "generation": "1", "size": str(len(raw))}

    @staticmethod
    def _selects(selector: str, item: dict) -> bool:
        labels = item["metadata"].get("labels", {})
        for term in filter(None, selector.split(",")):
            key, eq, value = term.partition("=")
            if key not in labels or (eq and labels[key] != value):
                return False
        return True

    def _allowed(self, spec: dict) -> bool:
        if spec.get("user") != f"system:serviceaccount:{self.namespace}:{cluster.SERVICE_ACCOUNT}":
            return False
        attrs = spec["resourceAttributes"]
        if attrs.get("namespace") != self.namespace:
            return False
        resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        for rule in self.role_rules:
            if (
                attrs.get("group", "") in rule["apiGroups"]
                and resource in rule["resources"]
                and attrs["verb"] in rule["verbs"]
                and ("resourceNames" not in rule or attrs.get("name") in rule["resourceNames"])
            ):
                return True
        return False
