"""pcam.deploy: the InferenceService it renders (KServe's CRD schema) and the calls it makes.

The kubernetes client talks real HTTP to a small API server started here on 127.0.0.1.
It answers the paths and semantics pcam.deploy relies on: server-side apply (PATCH
``application/apply-patch+yaml`` with ``fieldManager``) creating (201) or updating (200)
the object and bumping ``metadata.generation`` on a spec change, field-manager conflicts
(409 unless ``force``), RBAC refusal (403), and a status that turns Ready for the current
generation after a few reads, or never.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest
import yaml

from pcam import cluster
from pcam.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "kserve" / "kserve-inferenceservice-v1beta1.schema.json"
PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"


def strict(node):
    """Forbid fields the CRD does not list (the CRD itself never does; see tests/data/kserve/README.md)."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(strict(json.loads(SCHEMA.read_text())))


class FakeKube:
    """State of the local API server: stored objects, behaviour switches, requests seen."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.forbidden = False
        self.ready_after = 2  # GETs after an apply before the status reports the generation Ready
        self.reads = 0
        self.owner_conflicts: dict[tuple[str, str], str] = {}  # (ns, name) -> other manager owning storageUri

    def status(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        }

    def apply(self, ns: str, name: str, query: dict, body: dict) -> tuple[int, dict]:
        manager = query.get("fieldManager", [""])[0]
        if not manager:
            return self.status(422, "Invalid", "PATCH apply requests need a fieldManager")
        if self.forbidden:
            return self.status(
                403,
                "Forbidden",
                f'inferenceservices.serving.kserve.io "{name}" is forbidden: '
                f'User "system:serviceaccount:kubeflow:pcam-pipeline-runner" cannot patch '
                f'resource "inferenceservices" in API group "serving.kserve.io" in the namespace "{ns}"',
            )
        other = self.owner_conflicts.get((ns, name))
        if other and query.get("force", ["False"])[0].lower() != "true":
            return self.status(
                409,
                "Conflict",
                f'Apply failed with 1 conflict: conflict with "{other}" using '
                "serving.kserve.io/v1beta1: .spec.predictor.model.storageUri",
            )
        self.owner_conflicts.pop((ns, name), None)
        self.reads = 0
        current = self.objects.get((ns, name))
        if current is None:
            obj = copy.deepcopy(body)
            obj["metadata"].update({"generation": 1, "uid": f"uid-{name}", "resourceVersion": "1"})
            obj["status"] = {}
            self.objects[(ns, name)] = obj
            return 201, obj
        if current["spec"] != body["spec"]:
            current["spec"] = copy.deepcopy(body["spec"])
            current["metadata"]["generation"] += 1
        return 200, current

    def get(self, ns: str, name: str) -> tuple[int, dict]:
        obj = self.objects.get((ns, name))
        if obj is None:
            return self.status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
        self.reads += 1
        if self.ready_after is not None and self.reads >= self.ready_after:
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "url": f"http://{name}.{ns}.example.com",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        elif self.ready_after is None:
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RevisionFailed",
                        "message": "Revision failed: container kserve-container is waiting",
                    }
                ],
            }
        return 200, obj


@pytest.fixture
def kube():
    state = FakeKube()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length) if length else b""
            state.requests.append(
                {
                    "method": method,
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "content_type": self.headers.get("Content-Type"),
                    "authorization": self.headers.get("Authorization"),
                    "body": raw,
                }
            )
            parts = url.path[len(PREFIX) :].split("/") if url.path.startswith(PREFIX) else []
            if len(parts) != 3 or parts[1] != "inferenceservices":
                return self._answer(*state.status(404, "NotFound", "the server could not find the requested resource"))
            ns, _, name = parts
            if method == "GET":
                return self._answer(*state.get(ns, name))
            if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                return self._answer(*state.status(415, "UnsupportedMediaType", "expected apply patch"))
            return self._answer(*state.apply(ns, name, parse_qs(url.query), yaml.safe_load(raw)))

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_PATCH(self):  # noqa: N802
            self._route("PATCH")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def api_client(kube: FakeKube):
    from kubernetes import client

    configuration = client.Configuration(host=kube.url)
    configuration.api_key = {"authorization": "test-token"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


def deploy(kube: FakeKube, **kwargs):
    from pcam.deploy import deploy as run_deploy

    kwargs.setdefault("timeout", 10)
    kwargs.setdefault("poll", 0.05)
    return run_deploy("pcam-champion", "gs://bucket/champion/serving", api_client=api_client(kube), **kwargs)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    "options", [{}, {"gpu": True, "canary_percent": 10, "revision": "ab" * 32}, {"namespace": "serving"}]
)
def test_rendered_service_validates_against_the_kserve_crd(validator, options):
    from pcam.deploy import TF_SERVING_VERSION, render_inference_service

    isvc = render_inference_service("pcam-champion", f"{cluster.DATA_MOUNT_PATH}/champion/serving", **options)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(isvc)]
    assert not errors
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "tensorflow"}
    assert model["storageUri"] == f"pvc://{cluster.PVC_NAME}/champion/serving"
    assert model["runtimeVersion"] == TF_SERVING_VERSION + ("-gpu" if options.get("gpu") else "")
    if options.get("gpu"):
        assert model["resources"]["limits"][cluster.GPU_RESOURCE] == "1"
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    else:
        assert cluster.GPU_RESOURCE not in model["resources"]["limits"]


def test_strict_schema_catches_a_misspelt_field(validator):
    """Guard for the test above: a typo must not validate."""
    from pcam.deploy import render_inference_service

    isvc = render_inference_service("pcam-champion", "gs://b/serving")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e.message for e in validator.iter_errors(isvc))


@pytest.mark.parametrize(
    "name, uri, canary, words",
    [
        ("Pcam_Champion", "gs://b/serving", 100, "lower-case"),
        ("pcam", "gs://b/serving", 0, "1..100"),
        ("pcam", "/tmp/champion/serving", 100, "cannot fetch"),
    ],
)
def test_bad_parameters_are_config_errors_naming_them(name, uri, canary, words):
    from pcam.deploy import render_inference_service

    with pytest.raises(ConfigError, match=words):
        render_inference_service(name, uri, canary_percent=canary)


def test_library_imports_kubernetes_only_when_deploying():
    code = (
        "import sys, pcam.deploy; pcam.deploy.render_inference_service('a', 'gs://b/c'); "
        "assert 'kubernetes' not in sys.modules, 'kubernetes imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# ---------------------------------------------------------------- API calls


def test_first_deploy_creates_by_server_side_apply_and_waits_for_ready(kube):
    result = deploy(kube)
    assert result["url"] == "http://pcam-champion.kubeflow.example.com" and result["generation"] == 1
    patch = kube.requests[0]
    assert patch["method"] == "PATCH" and patch["content_type"] == "application/apply-patch+yaml"
    assert patch["path"] == PREFIX + "kubeflow/inferenceservices/pcam-champion"
    assert patch["query"]["fieldManager"] == ["pcam-deploy"] and patch["authorization"] == "Bearer test-token"
    stored = kube.objects[("kubeflow", "pcam-champion")]
    assert stored["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/champion/serving"
    assert [r["method"] for r in kube.requests[1:]] == ["GET", "GET"]


def test_redeploy_patches_and_waits_for_the_new_generation(kube):
    deploy(kube)
    result = deploy(kube, canary_percent=20, revision="f" * 64)
    assert result["generation"] == 2
    spec = kube.objects[("kubeflow", "pcam-champion")]["spec"]["predictor"]
    assert spec["canaryTrafficPercent"] == 20 and spec["annotations"] == {"pcam.dev/model-revision": "f" * 64}
    # The first read after the patch still showed generation 1 Ready: deploy must not stop there.
    assert [r["method"] for r in kube.requests].count("PATCH") == 2
    assert [r["method"] for r in kube.requests[-2:]] == ["GET", "GET"]


def test_conflict_is_a_clear_error_and_force_takes_over(kube):
    from pcam.deploy import DeployError

    deploy(kube)
    kube.owner_conflicts[("kubeflow", "pcam-champion")] = "kubectl-edit"
    with pytest.raises(DeployError, match='conflict.*"kubectl-edit".*storageUri.*force'):
        deploy(kube)
    assert deploy(kube, force=True)["url"]
    last_patch = [r for r in kube.requests if r["method"] == "PATCH"][-1]
    assert last_patch["query"]["force"] == ["True"]


def test_not_ready_times_out_naming_the_condition(kube):
    from pcam.deploy import DeployError

    kube.ready_after = None
    with pytest.raises(DeployError, match="not Ready after 0.5 s: Ready=False \\(Revision failed"):
        deploy(kube, timeout=0.5, poll=0.1)


def test_forbidden_names_the_role_to_apply(kube):
    from pcam.deploy import DeployError

    kube.forbidden = True
    with pytest.raises(DeployError, match="forbidden.*cannot patch.*manifests/serving"):
        deploy(kube)
    assert not kube.objects


# ---------------------------------------------------------------- RBAC


def test_serving_rbac_grants_exactly_what_deploy_calls():
    import kubernetes_validate

    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render manifests/"
    out = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / "serving")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert set(docs) == {"Role", "RoleBinding"}
    for doc in docs.values():
        for version in ("1.31.0", "1.37.0"):
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["namespace"] == cluster.NAMESPACE
    assert docs["Role"]["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "create", "patch"]}
    ]
    assert docs["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": cluster.SERVICE_ACCOUNT, "namespace": cluster.NAMESPACE}
    ]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]


# ---------------------------------------------------------------- pipeline wiring


def test_gate_reads_promotes_decision():
    from pcam.deploy import should_deploy

    assert should_deploy('{"promoted": true, "reason": "first"}', "pcam-champion")
    assert not should_deploy('{"promoted": false}', "pcam-champion")
    assert not should_deploy('{"promoted": true}', "")
    with pytest.raises(ConfigError, match="not JSON"):
        should_deploy("promoted", "x")


def test_pipeline_deploys_after_promote_only_when_it_promoted(tmp_path):
    from pipelines.pcam_training import compile_pipeline

    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", "registry.example/pcam:1").read_text())
    root = spec["root"]["dag"]["tasks"]
    assert root["deploy-gate"]["dependentTasks"] == ["promote"]
    gate_input = root["deploy-gate"]["inputs"]["parameters"]["decision"]["taskOutputParameter"]
    assert gate_input == {"producerTask": "promote", "outputParameterKey": "Output"}
    ((name, branch),) = [(n, t) for n, t in root.items() if "triggerPolicy" in t]
    assert (
        branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy-gate-Output'] == true"
    )
    inner = spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["serving_name"]["defaultValue"] == "" and params["canary_traffic_percent"]["defaultValue"] == 100
    assert params["serving_gpu"]["defaultValue"] is False
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-deploy"]["pvcMount"]
    assert [(m["constant"], m["mountPath"]) for m in mounts] == [(cluster.PVC_NAME, cluster.DATA_MOUNT_PATH)]


def test_deploy_champion_needs_the_export_and_reads_the_model_revision(kube, tmp_path):
    from pcam.deploy import deploy_champion
    from pcam.errors import DataError

    champion = tmp_path / "champion"
    champion.mkdir()
    (champion / "champion.json").write_text(json.dumps({"model_sha256": "c" * 64, "version": "v1"}))
    promoted = json.dumps({"promoted": True, "version": "v1"})
    with pytest.raises(DataError, match="no serving export"):
        deploy_champion(promoted, str(champion), "pcam-champion", api_client=api_client(kube))
    serving = champion / "versions" / "v1" / "serving"
    (champion / "champion.json").write_text(
        json.dumps({"model_sha256": "c" * 64, "version": "v1", "serving": str(serving)})
    )
    with pytest.raises(DataError, match="serving folder is missing"):
        deploy_champion(promoted, str(champion), "pcam-champion", api_client=api_client(kube))
    (serving / "1").mkdir(parents=True)
    (serving / "1" / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot fetch"):  # a local path off the shared volume
        deploy_champion(promoted, str(champion), "pcam-champion", api_client=api_client(kube))
    assert not kube.requests
    assert deploy_champion(json.dumps({"promoted": False}), str(champion), "x")["deployed"] is False
