"""``pcam doctor``: will a submitted run schedule and run? Checked before the submit.

One line per check, ``ok`` or ``FAIL`` with the fix, exit code 1 on any FAIL:

* kube context: the kubeconfig's context answers, and the namespace exists;
* service account: it exists, and a SubjectAccessReview per permission the pipeline's
  pods need (the rules of ``manifests/base/rbac.yaml``) says it has it;
* PVC: ``pcam-data`` (every PVC the compiled pipeline mounts) is Bound, or Pending on a
  storage class that binds at first use (``WaitForFirstConsumer``);
* GPU nodes: nodes exist that match the compiled GPU tasks' node selector, whose
  taints those tasks tolerate, with allocatable ``nvidia.com/gpu``. A pod asking for an
  absent GPU type sits Pending forever, so the failure names the GPU types the
  cluster does have and the ``make compile GPU=...`` that targets one;
* KFP: the endpoint's healthz answers, and its version resolves the run-id
  placeholder the checkpoints are keyed by (>= 2.4);
* pipeline root: reachable and writable (a local path, gs:// through
  google-cloud-storage, which honours ``STORAGE_EMULATOR_HOST``; minio:// is KFP's
  in-cluster store, reachable only from pods: its credentials secret must exist).

The kubernetes client is imported lazily and KFP is asked over plain HTTP: ``src/pcam``
never imports kfp. The compiled pipeline YAML is read as YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from pcam import cluster
from pcam.errors import ConfigError

log = logging.getLogger(__name__)

KFP_MIN_VERSION = (2, 4, 0)
"""KFP resolves ``{{$.pipeline_job_uuid}}`` in task inputs since 2.4 (kubeflow/pipelines#11599)."""
KFP_DEFAULT_ROOT = "minio://mlpipeline/v2/artifacts"
MINIO_SECRET = "mlpipeline-minio-artifact"

# (verb, API group, resource, resource name or "") the pipeline's pods need: the Role of
# manifests/base/rbac.yaml. tests/pipelines/test_doctor.py checks the two agree.
REQUIRED_ACCESS: tuple[tuple[str, str, str, str], ...] = (
    ("create", "argoproj.io", "workflowtaskresults", ""),
    ("patch", "argoproj.io", "workflowtaskresults", ""),
    ("get", "", "pods", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("get", "", "pods/log", ""),
    *(
        (verb, "", "configmaps", name)
        for verb in ("get", "watch")
        for name in ("kfp-launcher", "metadata-grpc-configmap", cluster.CONFIGMAP_NAME)
    ),
    ("get", "", "secrets", MINIO_SECRET),
    ("get", "", "persistentvolumeclaims", ""),
    ("list", "", "persistentvolumeclaims", ""),
)


@dataclasses.dataclass
class Check:
    """One line of the doctor's output."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The check as one report line: status mark, name, detail and the fix when it failed."""
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


@dataclasses.dataclass(frozen=True)
class PipelineNeeds:
    """What a compiled pipeline asks of the cluster."""

    node_selectors: list[dict[str, str]]
    tolerations: list[dict[str, str]]
    gpu_resource: str
    pvcs: list[str]
    pipeline_root: str


def pipeline_needs(path: str | os.PathLike[str]) -> PipelineNeeds:
    """Read a compiled pipeline YAML (``make compile``'s output) without kfp."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the compiled pipeline ({exc}); run make compile") from None
    if not docs or "deploymentSpec" not in docs[0]:
        raise ConfigError(f"{path}: not a compiled KFP pipeline (no deploymentSpec); run make compile")
    spec = docs[0]
    platform: dict[str, Any] = next((d for d in docs[1:] if "platforms" in d), {})
    executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    selectors, tolerations, pvcs = [], [], []
    for executor in executors.values():
        labels = executor.get("nodeSelector", {}).get("labels")
        if labels and labels not in selectors:
            selectors.append(labels)
        for tol in executor.get("tolerations", []):
            if tol not in tolerations:
                tolerations.append(tol)
        for mount in executor.get("pvcMount", []):
            name = mount.get("constant") or mount.get("pvcNameParameter", {}).get("runtimeValue", {}).get("constant")
            if name and name not in pvcs:
                pvcs.append(name)
    resources = {
        c["container"].get("resources", {}).get("accelerator", {}).get("resourceType")
        for c in spec["deploymentSpec"]["executors"].values()
        if "container" in c
    }
    gpu = next((r for r in sorted(filter(None, resources))), cluster.GPU_RESOURCE)
    return PipelineNeeds(selectors, tolerations, gpu, pvcs, spec.get("defaultPipelineRoot", ""))


# --------------------------------------------------------------------------- Kubernetes


class Kube:
    """The kubernetes client for one kubeconfig context; None-safe when it could not load."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        """Load ``kubeconfig`` for ``context`` (default: the current one) and make the API clients."""
        from kubernetes import client, config

        self.client = client
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        cfg.retries = 1  # a doctor should answer fast when the API server is down
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        self.context = context or active["name"]
        self.host = cfg.host
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.storage = client.StorageV1Api(self.api)
        self.authz = client.AuthorizationV1Api(self.api)


def _api_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status is not None:
        try:
            message = json.loads(exc.body).get("message", "")  # type: ignore[attr-defined]
        except (TypeError, ValueError, AttributeError):
            message = str(getattr(exc, "reason", ""))
        return f"HTTP {status} {message}".strip()
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}"


def check_context(kube: Kube, namespace: str) -> Check:
    """Whether the cluster answers and ``namespace`` exists."""
    try:
        kube.core.read_namespace(namespace)
    except Exception as exc:  # noqa: BLE001 - any failure is this check's FAIL line
        if getattr(exc, "status", None) == 404:
            return Check(
                "kube context",
                False,
                f"{kube.context} ({kube.host}) has no namespace {namespace!r}",
                "install KFP there, or pass --namespace (multi-user Kubeflow: your profile namespace)",
            )
        return Check(
            "kube context",
            False,
            f"{kube.context} ({kube.host}): {_api_error(exc)}",
            "check the cluster is up and kubectl --context works; pass --context/--kubeconfig",
        )
    return Check("kube context", True, f"{kube.context} ({kube.host}), namespace {namespace}")


def check_service_account(kube: Kube, namespace: str, account: str) -> Check:
    """Whether ``account`` exists and may do what the pipeline's pods do (RBAC)."""
    name = f"service account {account}"
    apply = "kubectl apply -k manifests/overlays/<yours>"
    try:
        kube.core.read_namespaced_service_account(account, namespace)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return Check(name, False, f"not found in {namespace}", apply)
        return Check(name, False, _api_error(exc), "check you may get serviceaccounts in the namespace")
    user = f"system:serviceaccount:{namespace}:{account}"
    denied = []
    for verb, group, resource, resource_name in REQUIRED_ACCESS:
        resource, _, sub = resource.partition("/")
        attrs = kube.client.V1ResourceAttributes(
            namespace=namespace,
            verb=verb,
            group=group,
            resource=resource,
            subresource=sub or None,
            name=resource_name or None,
        )
        review = kube.client.V1SubjectAccessReview(
            spec=kube.client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                resource_attributes=attrs,
            )
        )
        try:
            result = kube.authz.create_subject_access_review(review)
        except Exception as exc:  # noqa: BLE001
            return Check(
                name,
                False,
                f"cannot review its RBAC: {_api_error(exc)}",
                "run as someone allowed to create subjectaccessreviews (kubectl auth can-i create "
                "subjectaccessreviews), e.g. a cluster admin",
            )
        if not result.status.allowed:
            what = f"{verb} {group + '/' if group else ''}{resource}{'/' + sub if sub else ''}"
            denied.append(what + (f" {resource_name}" if resource_name else ""))
    if denied:
        return Check(name, False, f"RBAC denies {', '.join(denied)}", f"{apply} (its Role grants these)")
    return Check(name, True, f"exists; RBAC allows all {len(REQUIRED_ACCESS)} permissions the pipeline's pods use")


def check_pvc(kube: Kube, namespace: str, pvc: str) -> Check:
    """Whether the PVC the pipeline mounts exists and is bound (or pending on a class that can bind it)."""
    name = f"pvc {pvc}"
    try:
        claim = kube.core.read_namespaced_persistent_volume_claim(pvc, namespace)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return Check(name, False, f"not found in {namespace}", "kubectl apply -k manifests/overlays/<yours>")
        return Check(name, False, _api_error(exc), "check you may get persistentvolumeclaims")
    phase = claim.status.phase if claim.status else None
    if phase == "Bound":
        return Check(
            name,
            True,
            f"Bound ({claim.spec.storage_class_name or 'default class'}, {','.join(claim.spec.access_modes or [])})",
        )
    class_name = claim.spec.storage_class_name
    if phase == "Pending" and class_name:
        try:
            binding = kube.storage.read_storage_class(class_name).volume_binding_mode
        except Exception as exc:  # noqa: BLE001
            return Check(
                name,
                False,
                f"Pending; storage class {class_name}: {_api_error(exc)}",
                "create the storage class or set the PVC's storageClassName to one that exists",
            )
        if binding == "WaitForFirstConsumer":
            return Check(name, True, f"Pending until the first pod mounts it ({class_name}: WaitForFirstConsumer)")
    return Check(
        name,
        False,
        f"{phase or 'no phase'} (storage class {class_name or 'default'})",
        f"kubectl describe pvc {pvc} -n {namespace}: its events say why no volume binds",
    )


def _tolerated(taint: Any, tolerations: list[dict[str, str]]) -> bool:
    if taint.effect == "PreferNoSchedule":
        return True
    for tol in tolerations:
        effect_ok = not tol.get("effect") or tol["effect"] == taint.effect
        if tol.get("operator") == "Exists":
            if effect_ok and (not tol.get("key") or tol["key"] == taint.key):
                return True
        elif effect_ok and tol.get("key") == taint.key and tol.get("value", "") == (taint.value or ""):
            return True
    return False


def check_gpu_nodes(kube: Kube, needs: PipelineNeeds) -> list[Check]:
    """Whether nodes exist that match the pipeline's GPU requests, node selectors and tolerations."""
    if not needs.node_selectors:
        return [Check("gpu nodes", True, "the pipeline selects no node pool")]
    checks = []
    for selector in needs.node_selectors:
        text = ",".join(f"{k}={v}" for k, v in selector.items())
        name = f"gpu nodes {text}"
        try:
            nodes = kube.core.list_node(label_selector=text).items
        except Exception as exc:  # noqa: BLE001
            checks.append(Check(name, False, _api_error(exc), "check you may list nodes (a ClusterRole)"))
            continue
        if not nodes:
            key = next(iter(selector))
            try:
                others = sorted({n.metadata.labels[key] for n in kube.core.list_node(label_selector=key).items})
            except Exception:  # noqa: BLE001 - only used to word the hint
                others = []
            fix = (
                f"make compile GPU=<one of {', '.join(others)}>"
                if others and key == cluster.GPU_NODE_LABEL_KEY
                else f"make compile GPU_LABEL={key}=<one of {', '.join(others)}>"
                if others
                else "add a GPU node pool with that label, or compile for the one you have (make compile GPU=...)"
            )
            checks.append(
                Check(
                    name,
                    False,
                    "no node has this label: GPU pods would stay Pending forever"
                    + (f" (nodes have {key}={', '.join(others)})" if others else ""),
                    fix,
                )
            )
            continue
        usable, reasons = [], []
        for node in nodes:
            untolerated = [t for t in (node.spec.taints or []) if not _tolerated(t, needs.tolerations)]
            gpus = (node.status.allocatable or {}).get(needs.gpu_resource, "0")
            if untolerated:
                reasons.append(
                    f"{node.metadata.name}: taint {untolerated[0].key}={untolerated[0].value or ''}:"
                    f"{untolerated[0].effect} not tolerated"
                )
            elif int(gpus) < 1:
                reasons.append(f"{node.metadata.name}: no allocatable {needs.gpu_resource}")
            else:
                usable.append(f"{node.metadata.name} ({gpus})")
        if usable:
            checks.append(
                Check(name, True, f"{len(usable)} node(s) with allocatable {needs.gpu_resource}: {', '.join(usable)}")
            )
        elif any("taint" in r for r in reasons):
            checks.append(
                Check(
                    name,
                    False,
                    "; ".join(reasons),
                    "compile with the pool's taint (make compile GPU_TAINT=key=value:Effect)",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    False,
                    "; ".join(reasons),
                    "install the NVIDIA device plugin (GKE installs it with the GPU driver; "
                    "elsewhere the NVIDIA GPU operator)",
                )
            )
    return checks


# --------------------------------------------------------------------------- KFP and the pipeline root


def _version(tag: str) -> tuple[int, ...]:
    parts = []
    for piece in tag.lstrip("v").split("-")[0].split(".")[:3]:
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def check_kfp(host: str, namespace: str, timeout: float = 10) -> Check:
    """Whether the KFP API server at ``host`` answers."""
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
            health = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return Check(
            "kfp",
            False,
            f"{url}: HTTP {exc.code}",
            "is this the KFP API (ml-pipeline-ui / ml-pipeline service)? behind IAP, use its proxy URL",
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            "kfp",
            False,
            f"{url}: {reason}",
            "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80 and KFP_HOST=http://localhost:8080",
        )
    tag = str(health.get("tag_name", ""))
    version = _version(tag)
    if len(version) < 2 or version < KFP_MIN_VERSION:
        return Check(
            "kfp",
            False,
            f"{host}: version {tag or 'unknown'}, older than {'.'.join(map(str, KFP_MIN_VERSION))}",
            "upgrade KFP: older backends pass {{$.pipeline_job_uuid}} unresolved, so train steps refuse to checkpoint",
        )
    if health.get("multi_user") and namespace == cluster.NAMESPACE:
        return Check(
            "kfp",
            False,
            f"{host}: {tag}, multi-user: runs go to profile namespaces, not {namespace}",
            "pass --namespace <your profile namespace> and apply the manifests there",
        )
    return Check("kfp", True, f"{host}: healthy, version {tag}{', multi-user' if health.get('multi_user') else ''}")


def launcher_root(kube: Kube | None, namespace: str) -> str:
    """KFP's default pipeline root for the namespace (ConfigMap kfp-launcher), or ''."""
    if kube is None:
        return ""
    try:
        return (kube.core.read_namespaced_config_map("kfp-launcher", namespace).data or {}).get(
            "defaultPipelineRoot", ""
        )
    except Exception:  # noqa: BLE001 - absent: KFP's built-in default applies
        return ""


def check_pipeline_root(root: str, kube: Kube | None, namespace: str) -> Check:
    """Whether the pipeline root (gs://, KFP's MinIO/S3 store or a shared volume) is usable from here."""
    name = f"pipeline root {root}"
    if root.startswith("gs://"):
        return _check_gcs(name, root)
    if root.startswith(("minio://", "s3://")):
        if kube is None:
            return Check(name, False, "KFP's in-cluster store: needs the API server to check", "fix kube context")
        try:
            kube.core.read_namespaced_secret(MINIO_SECRET, namespace)
        except Exception as exc:  # noqa: BLE001
            return Check(
                name,
                False,
                f"secret {MINIO_SECRET}: {_api_error(exc)}",
                "KFP's artifact store credentials are missing: reinstall KFP's manifests",
            )
        return Check(name, True, f"in-cluster store (reachable from pods only); secret {MINIO_SECRET} present")
    if "://" in root:
        return Check(name, False, "unsupported scheme", "use gs://, minio:// or a path on a shared volume")
    probe = Path(root) / f".pcam-doctor-{uuid.uuid4().hex}"
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"pcam doctor\n")
        probe.unlink()
    except OSError as exc:
        return Check(
            name, False, f"not writable: {exc.strerror or exc}", "create it, writable by uid 1000 (the image's user)"
        )
    return Check(name, True, "writable")


def _check_gcs(name: str, root: str) -> Check:
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    bucket_name, _, prefix = root[len("gs://") :].partition("/")
    blob_name = f"{prefix.rstrip('/') + '/' if prefix else ''}.pcam-doctor-{uuid.uuid4().hex}"
    try:
        client = storage.Client()
        blob = client.bucket(bucket_name).blob(blob_name)
        blob.upload_from_string(b"pcam doctor\n", timeout=30)
        blob.delete(timeout=30)
    except gexc.NotFound:
        return Check(
            name, False, f"bucket {bucket_name} does not exist", f"gcloud storage buckets create gs://{bucket_name}"
        )
    except gexc.Forbidden as exc:
        return Check(
            name,
            False,
            f"no write access ({exc.message})",
            "grant roles/storage.objectAdmin on the bucket to the pipeline's Google service account",
        )
    except Exception as exc:  # noqa: BLE001 - credentials, network, 5xx: one line, not a traceback
        return Check(
            name,
            False,
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}",
            "check credentials (gcloud auth application-default login) and the bucket name",
        )
    return Check(name, True, "writable (wrote and deleted a probe object)")


# --------------------------------------------------------------------------- command


def run_checks(args: argparse.Namespace) -> list[Check]:
    """Every check, in order; later ones still run when earlier ones fail."""
    needs = pipeline_needs(args.pipeline)
    checks: list[Check] = []
    kube: Kube | None = None
    try:
        kube = Kube(args.kubeconfig, args.context)
    except Exception as exc:  # noqa: BLE001 - a missing/bad kubeconfig is a FAIL line
        checks.append(
            Check(
                "kube context",
                False,
                f"cannot load kubeconfig: {str(exc).splitlines()[0][:160]}",
                "kubectl config use-context <cluster>, or pass --kubeconfig/--context",
            )
        )
    if kube is not None:
        checks.append(check_context(kube, args.namespace))
        if checks[-1].ok:
            checks.append(check_service_account(kube, args.namespace, args.service_account))
            checks.extend(check_pvc(kube, args.namespace, pvc) for pvc in needs.pvcs)
            checks.extend(check_gpu_nodes(kube, needs))
        else:
            kube = None
    if kube is None:
        checks.append(
            Check(
                "cluster checks",
                False,
                "service account, RBAC, PVC and GPU nodes not checked",
                "fix the kube context first",
            )
        )
    checks.append(check_kfp(args.kfp_host, args.namespace))
    root = args.pipeline_root or needs.pipeline_root or launcher_root(kube, args.namespace) or KFP_DEFAULT_ROOT
    checks.append(check_pipeline_root(root, kube, args.namespace))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam doctor`` options on ``parser``."""
    parser.add_argument(
        "--pipeline",
        default="pipelines/compiled/pcam_training.yaml",
        help="compiled pipeline to check against (make compile; default: %(default)s)",
    )
    parser.add_argument("--kfp-host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    parser.add_argument("--namespace", default=cluster.NAMESPACE, help="namespace runs go to (default: %(default)s)")
    parser.add_argument(
        "--service-account",
        default=cluster.SERVICE_ACCOUNT,
        help="service account of the pipeline's pods (default: %(default)s)",
    )
    parser.add_argument(
        "--pipeline-root",
        default="",
        help="pipeline root to check (default: the compiled one, else KFP's kfp-launcher ConfigMap)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam doctor``; returns the exit code."""
    checks = run_checks(args)
    for check in checks:
        print(check.line(), flush=True)
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} ok, {failed} FAIL" + ("" if failed else ": ready to submit"))
    return 1 if failed else 0
