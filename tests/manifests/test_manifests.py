"""The Kubernetes manifests: rendered with the real kustomize, validated in strict mode
against the Kubernetes schemas, and checked against ``pcam.cluster`` (the names and
GPU scheduling the pipeline compiles in).

kustomize is kubectl's built-in one (``kubectl kustomize``), which the machines carry;
kubernetes-validate ships the schemas, so nothing here touches a cluster or a network.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pcam import cluster

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = ["base", "overlays/kind", "overlays/gke", "overlays/gke-b200"]
# Overlays that target another GPU pool (the pipeline is compiled for it: make compile GPU=...).
OVERLAY_GPU = {"overlays/gke-b200": "nvidia-b200"}
# Opt-in extras applied on top of base; each has its own test (serving: tests/unit/test_deploy.py).
OPT_IN = ["serving"]
# The oldest and the newest Kubernetes minor we check against: GKE's and kind's
# supported versions sit in between.
K8S_VERSIONS = ["1.31.0", "1.37.0"]
CLUSTER_SCOPED = {"PriorityClass", "Namespace", "ClusterRole", "ClusterRoleBinding"}


def kustomize(path: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render manifests/"
    result = subprocess.run([kubectl, "kustomize", str(MANIFESTS / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs, f"{path} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path: kustomize(path) for path in KUSTOMIZATIONS}


def by_kind(docs: list[dict], kind: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def test_every_kustomization_dir_is_rendered():
    found = sorted(str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS + OPT_IN)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_documents_pass_strict_schema_validation(rendered, path, version):
    for doc in rendered[path]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field(rendered):
    """Guard for the test above: strict mode must catch an unknown key."""
    pvc = dict(by_kind(rendered["base"], "PersistentVolumeClaim"))
    pvc["spec"] = {**pvc["spec"], "storageClass": "standard"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_objects_live_in_the_pipeline_namespace_and_commit_no_secret(rendered, path):
    kinds = sorted(d["kind"] for d in rendered[path])
    assert kinds == sorted(
        ["ConfigMap", "PersistentVolumeClaim", "PriorityClass", "Role", "RoleBinding", "ServiceAccount"]
    )
    for doc in rendered[path]:
        meta = doc["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "pcam"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, doc
        else:
            assert meta["namespace"] == cluster.NAMESPACE, doc


def test_no_secret_values_anywhere_in_manifests():
    for file in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(file.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{file} commits a Secret"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_names_match_pcam_cluster(rendered, path):
    docs = rendered[path]
    assert by_kind(docs, "ServiceAccount")["metadata"]["name"] == cluster.SERVICE_ACCOUNT
    assert by_kind(docs, "PersistentVolumeClaim")["metadata"]["name"] == cluster.PVC_NAME
    assert by_kind(docs, "PriorityClass")["metadata"]["name"] == cluster.PRIORITY_CLASS
    binding = by_kind(docs, "RoleBinding")
    role = by_kind(docs, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": cluster.SERVICE_ACCOUNT, "namespace": cluster.NAMESPACE}
    ]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_configmap_publishes_exactly_the_pcam_cluster_values(rendered, path):
    cm = by_kind(rendered[path], "ConfigMap")
    assert cm["metadata"]["name"] == cluster.CONFIGMAP_NAME
    assert cm["data"] == {
        "namespace": cluster.NAMESPACE,
        "service-account": cluster.SERVICE_ACCOUNT,
        "pvc-name": cluster.PVC_NAME,
        "data-mount-path": cluster.DATA_MOUNT_PATH,
        "priority-class": cluster.PRIORITY_CLASS,
        "gpu-node-label-key": cluster.GPU_NODE_LABEL_KEY,
        "gpu-node-label-value": OVERLAY_GPU.get(path, cluster.GPU_NODE_LABEL_VALUE),
        "gpu-taint-key": cluster.GPU_TAINT_KEY,
        "gpu-taint-value": cluster.GPU_TAINT_VALUE,
        "gpu-taint-effect": cluster.GPU_TAINT_EFFECT,
        "gpu-resource": cluster.GPU_RESOURCE,
        "checkpoint-root": cluster.CHECKPOINT_ROOT,
        "cuda-cache-root": cluster.CUDA_CACHE_ROOT,
        "cuda-cache-maxsize": str(cluster.CUDA_CACHE_MAXSIZE),
        "gcs-credentials-secret": cluster.GCS_CREDENTIALS_SECRET,
        "image-pull-secret": cluster.IMAGE_PULL_SECRET,
    }


def test_role_is_least_privilege(rendered):
    role = by_kind(rendered["base"], "Role")
    granted = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
        if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
            assert rule.get("resourceNames"), f"unnamed access to {rule['resources']}"
    # Read-only everywhere except Argo's task results, which the executor writes.
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    assert {r for r, verbs in granted.items() if verbs & writes} == {"workflowtaskresults"}
    assert "pods/exec" not in granted
    assert set(granted) == {
        "workflowtaskresults",
        "pods",
        "pods/log",
        "configmaps",
        "secrets",
        "persistentvolumeclaims",
    }


def test_priority_class_is_low_but_still_scales_the_gpu_pool(rendered):
    pc = by_kind(rendered["base"], "PriorityClass")
    # Below default pods (0), above the cluster autoscaler's expendable cutoff (-10).
    assert -10 < pc["value"] < 0
    assert pc["preemptionPolicy"] == "Never"
    assert pc["globalDefault"] is False


def test_overlays_choose_storage_and_identity(rendered):
    kind_pvc = by_kind(rendered["overlays/kind"], "PersistentVolumeClaim")
    assert kind_pvc["spec"]["storageClassName"] == "standard"  # kind's local-path class
    assert kind_pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    gke_pvc = by_kind(rendered["overlays/gke"], "PersistentVolumeClaim")
    assert gke_pvc["spec"]["storageClassName"] == "standard-rwx"
    assert gke_pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    base_pvc = by_kind(rendered["base"], "PersistentVolumeClaim")
    assert "storageClassName" not in base_pvc["spec"]

    gke_sa = by_kind(rendered["overlays/gke"], "ServiceAccount")
    gsa = gke_sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert gsa.endswith(".iam.gserviceaccount.com")
    for path in ("base", "overlays/kind"):
        assert "annotations" not in by_kind(rendered[path], "ServiceAccount")["metadata"]


def test_kind_cluster_fakes_the_gpu_pool_of_pcam_cluster():
    config = yaml.safe_load((MANIFESTS / "kind" / "cluster.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    gpu_nodes = [n for n in config["nodes"] if n.get("labels")]
    assert len(gpu_nodes) == 1 and gpu_nodes[0]["role"] == "worker"
    assert gpu_nodes[0]["labels"] == cluster.gpu_node_selector()
    patches = [yaml.safe_load(p) for p in gpu_nodes[0]["kubeadmConfigPatches"]]
    join = next(p for p in patches if p["kind"] == "JoinConfiguration")
    toleration = cluster.gpu_toleration()
    assert join["nodeRegistration"]["taints"] == [
        {"key": toleration["key"], "value": toleration["value"], "effect": toleration["effect"]}
    ]
    # A plain worker is left for KFP itself, which tolerates no GPU taint.
    assert [n["role"] for n in config["nodes"]].count("worker") == 2


def test_gpu_selector_and_toleration_are_valid_pod_fields():
    """What the pipeline compiles into GPU pods, as a pod spec the schema accepts."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-probe", "namespace": cluster.NAMESPACE},
        "spec": {
            "serviceAccountName": cluster.SERVICE_ACCOUNT,
            "priorityClassName": cluster.PRIORITY_CLASS,
            "nodeSelector": cluster.gpu_node_selector(),
            "tolerations": [cluster.gpu_toleration()],
            "containers": [
                {"name": "main", "image": "pcam-gpu:0123abcd", "resources": {"limits": {cluster.GPU_RESOURCE: 1}}}
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": cluster.PVC_NAME}}],
        },
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    assert cluster.GPU_TAINT_EFFECT in {"NoSchedule", "PreferNoSchedule", "NoExecute"}


def test_argo_workflow_defaults_patch_sets_pcam_priority_class():
    patch = yaml.safe_load((MANIFESTS / "kfp" / "workflow-defaults.yaml").read_text())
    assert set(patch) == {"data"} and set(patch["data"]) == {"workflowDefaults"}
    defaults = yaml.safe_load(patch["data"]["workflowDefaults"])
    assert defaults == {"spec": {"podPriorityClassName": cluster.PRIORITY_CLASS}}
