"""Deploy the champion as a KServe InferenceService (serving.kserve.io/v1beta1).

:func:`render_inference_service` builds the object: ``modelFormat: tensorflow`` (KServe's
``kserve-tensorflow-serving`` runtime, i.e. TF Serving), ``storageUri`` the champion's
serving folder (:mod:`pcam.export` layout), ``runtimeVersion`` a TF Serving release that
loads what TensorFlow 2.21 exports, an optional GPU, and the canary traffic percent.
:func:`deploy` creates or updates it by **server-side apply** (one PATCH with
``application/apply-patch+yaml`` and our field manager: the same call creates and
updates), waits until KServe reports it Ready for this generation, and returns its URL.

Why ``runtimeVersion`` :data:`TF_SERVING_VERSION`: KServe's default ``tensorflow/serving:2.6.2``
predates ops our export contains (``DisableCopyOnRead``, which TensorFlow 2.21 writes
into every SavedModel's variable-restore function and which TF 2.6 does not register),
so it cannot load the model; 2.18.0 is a recent TF Serving release (an exact match for
2.21 was not confirmed from here). The exported graph otherwise uses long-standing core ops only (``pcam.json`` in
each version folder lists them). Not run here: no cluster or TF Serving image is
reachable from this machine (docs/cluster.md).

The pipeline's pods reach the API server with their service account; the Role in
``manifests/serving/`` grants exactly what this module calls (get, create, patch on
inferenceservices). The kubernetes client is imported only inside :func:`deploy`, so
importing this module (e.g. to render) needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from typing import Any

from pcam import cluster
from pcam.errors import ConfigError, DataError, PcamError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "pcam-deploy"
TF_SERVING_VERSION = "2.18.0"
"""TF Serving release for KServe's tensorflow runtime (image tag tensorflow/serving:<this>[-gpu])."""
DEFAULT_TIMEOUT = 600
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class DeployError(PcamError):
    """The cluster refused or did not finish the deployment; the message says what to do."""


def storage_uri_for(serving_uri: str) -> str:
    """The storageUri KServe can fetch: a path on the shared volume becomes ``pvc://<claim>/<path>``."""
    mount = cluster.DATA_MOUNT_PATH.rstrip("/") + "/"
    if serving_uri.startswith(mount):
        return f"pvc://{cluster.PVC_NAME}/{serving_uri[len(mount) :].strip('/')}"
    if re.match(r"^(gs|s3|pvc|https?|hdfs|webhdfs)://", serving_uri):
        return serving_uri.rstrip("/")
    raise ConfigError(
        f"serving folder {serving_uri!r}: KServe cannot fetch it; use gs://, s3://, pvc:// "
        f"or a path under {cluster.DATA_MOUNT_PATH} (the {cluster.PVC_NAME} volume)"
    )


def render_inference_service(
    name: str,
    storage_uri: str,
    *,
    namespace: str = cluster.NAMESPACE,
    canary_percent: int = 100,
    gpu: bool = False,
    runtime_version: str = TF_SERVING_VERSION,
    revision: str = "",
) -> dict[str, Any]:
    """The InferenceService object (a plain dict, ready to apply or to dump as YAML).

    Args:
        name: InferenceService name (DNS-1035 label: lower case, digits, '-').
        storage_uri: Serving folder holding the numbered SavedModel versions (see :func:`storage_uri_for`).
        namespace: Namespace to deploy into.
        canary_percent: Share of traffic the new revision gets (1..100). 100 rolls it out fully;
            less keeps the rest on the last ready revision until promoted.
        gpu: Ask for one GPU on the GPU node pool (and the TF Serving GPU image).
        runtime_version: TF Serving image tag.
        revision: Written as an annotation on the predictor pods (e.g. the model's sha256):
            a new value makes a new revision even when storageUri is unchanged.
    """
    if not NAME.match(name) or len(name) > 45:
        # KServe derives <name>-predictor-... service names from it: DNS-1035, and short.
        raise ConfigError(
            f"InferenceService name {name!r}: use lower-case letters, digits and '-', "
            "starting with a letter, at most 45 characters"
        )
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 1 <= canary_percent <= 100:
        raise ConfigError(f"canary traffic percent must be an integer in 1..100, got {canary_percent!r}")
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "model": {
            "modelFormat": {"name": "tensorflow"},
            "runtimeVersion": runtime_version + ("-gpu" if gpu else ""),
            "storageUri": storage_uri_for(storage_uri),
            "resources": resources,
        },
    }
    if namespace == cluster.NAMESPACE:
        # Its identity reads gs:// on GKE (Workload Identity); it exists in the pipeline's namespace only.
        predictor["serviceAccountName"] = cluster.SERVICE_ACCOUNT
    if revision:
        predictor["annotations"] = {"pcam.dev/model-revision": revision}
    if canary_percent != 100:
        predictor["canaryTrafficPercent"] = canary_percent
    if gpu:
        resources["limits"][cluster.GPU_RESOURCE] = "1"
        predictor["nodeSelector"] = cluster.gpu_node_selector()
        predictor["tolerations"] = [cluster.gpu_toleration()]
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "pcam", "app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "spec": {"predictor": predictor},
    }


def _api_error(exc: Any, name: str, namespace: str) -> DeployError:
    """One line for an ApiException from the apply or the status read."""
    try:
        message = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = ""
    message = message or (exc.reason or "")
    where = f"inferenceservices/{name} in namespace {namespace}"
    if exc.status == 403:
        return DeployError(
            f"forbidden to apply {where} ({message}); apply manifests/serving "
            f"(Role pcam-deployer) for service account {cluster.SERVICE_ACCOUNT}"
        )
    if exc.status == 409:
        return DeployError(
            f"conflict applying {where}: another field manager owns fields we set ({message}); "
            "re-run with force=True to take them over"
        )
    if exc.status == 404:
        return DeployError(f"{where}: not found ({message}); is KServe (the {API_VERSION} CRD) installed?")
    return DeployError(f"{where}: API server answered {exc.status} ({message})")


def ready_url(obj: dict[str, Any]) -> str | None:
    """The URL when KServe reports this generation Ready, else None."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return None  # the status still describes the previous spec
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("url") if ready and status.get("url") else None


def _not_ready_reason(obj: dict[str, Any]) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    pending = [
        f"{c.get('type')}={c.get('status')}" + (f" ({c['message']})" if c.get("message") else "")
        for c in conditions
        if c.get("status") != "True"
    ]
    return "; ".join(pending) or "no status yet"


def deploy(
    name: str,
    serving_uri: str,
    *,
    namespace: str = cluster.NAMESPACE,
    canary_percent: int = 100,
    gpu: bool = False,
    revision: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    poll: float = 5.0,
    force: bool = False,
    api_client: Any = None,
) -> dict[str, Any]:
    """Server-side apply the InferenceService, wait for Ready, return {name, namespace, url, generation}.

    Args:
        name: InferenceService name.
        serving_uri: The champion's serving folder (KServe's storageUri).
        namespace: Target namespace.
        canary_percent: Traffic share of the new revision (100 = full rollout).
        gpu: One GPU for the predictor.
        revision: Model identity (e.g. sha256) annotated on the predictor: forces a new revision.
        timeout: Seconds to wait for Ready before failing.
        poll: Seconds between status reads.
        force: Take over fields another field manager owns instead of failing with a conflict.
        api_client: A kubernetes ``ApiClient`` (default: in-cluster config, else ~/.kube/config).
    """
    body = render_inference_service(
        name, serving_uri, namespace=namespace, canary_percent=canary_percent, gpu=gpu, revision=revision
    )
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    try:
        # The generated CustomObjectsApi.patch_* only sends merge-patch in client 30.1.0;
        # server-side apply needs this content type, so call the API client directly.
        applied = api_client.call_api(
            path,
            "PATCH",
            query_params=[("fieldManager", FIELD_MANAGER), ("force", force)],
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=True,
            _request_timeout=60,
        )
    except ApiException as exc:
        raise _api_error(exc, name, namespace) from None
    generation = (applied.get("metadata") or {}).get("generation")
    log.info("applied %s/%s (generation %s, canary %d%%)", namespace, name, generation, canary_percent)
    api = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    current = applied
    while (url := ready_url(current)) is None:
        if time.monotonic() >= deadline:
            raise DeployError(
                f"inferenceservices/{name} in namespace {namespace} not Ready after {timeout:g} s: "
                f"{_not_ready_reason(current)}"
            )
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        try:
            current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=60)
        except ApiException as exc:
            raise _api_error(exc, name, namespace) from None
    log.info("%s/%s ready at %s", namespace, name, url)
    return {
        "name": name,
        "namespace": namespace,
        "url": url,
        "generation": generation,
        "storage_uri": body["spec"]["predictor"]["model"]["storageUri"],
        "canary_percent": canary_percent,
    }


"""Sub-folder of the champion location that holds the SavedModel versions (``pcam export --out``)."""


def should_deploy(decision_json: str, serving_name: str) -> bool:
    """True when promote's decision says ``promoted`` and an InferenceService name is configured."""
    try:
        decision = json.loads(decision_json)
    except (TypeError, ValueError):
        raise ConfigError(f"promote decision is not JSON: {decision_json!r:.200}") from None
    return bool(serving_name) and isinstance(decision, dict) and decision.get("promoted") is True


def deploy_champion(
    decision_json: str,
    champion_uri: str,
    name: str,
    *,
    namespace: str = cluster.NAMESPACE,
    canary_percent: int = 100,
    gpu: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    api_client: Any = None,
) -> dict[str, Any]:
    """Deploy the version a promotion just published (what the pipeline's deploy step runs).

    Each champion version carries its own ``serving/`` SavedModel (written by promotion),
    so a new champion is a new ``storageUri``: a new revision, which KServe's canary
    rollout splits traffic with. Returns :func:`deploy`'s result, or ``{"deployed":
    False, "reason": ...}`` when the decision did not promote (the pipeline already
    skips the step then).
    """
    if not should_deploy(decision_json, name):
        return {"deployed": False, "reason": "nothing promoted or no InferenceService name"}
    from pcam import champion, storage

    decision = json.loads(decision_json)
    pointer, _ = champion.read_pointer(champion_uri)
    if not pointer or not pointer.get("serving"):
        raise DataError(
            f"{champion_uri}: the champion has no serving export (promoted by an older pcam?); "
            f"run `pcam export --model <model dir> --out <folder>` and `pcam deploy --serving <folder>`"
        )
    if pointer.get("version") != decision.get("version"):
        log.warning(
            "%s: the champion moved on since this run promoted (%s, now %s); deploying the current one",
            champion_uri,
            decision.get("version"),
            pointer.get("version"),
        )
    if not storage.exists(pointer["serving"]):
        raise DataError(f"{pointer['serving']}: the champion's serving folder is missing")
    revision = str(pointer.get("model_sha256") or "")
    result = deploy(
        name,
        pointer["serving"],
        namespace=namespace,
        canary_percent=canary_percent,
        gpu=gpu,
        revision=revision,
        timeout=timeout,
        api_client=api_client,
    )
    return {"deployed": True, "revision": revision, **result}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam deploy`` options on ``parser``."""
    parser.add_argument("--name", required=True, help="InferenceService name")
    parser.add_argument(
        "--serving",
        required=True,
        help=f"the champion's serving folder: gs://..., pvc://... or a path under {cluster.DATA_MOUNT_PATH}",
    )
    parser.add_argument("--namespace", default=cluster.NAMESPACE, help="target namespace (default: %(default)s)")
    parser.add_argument("--canary", type=int, default=100, help="traffic percent for the new revision (default: 100)")
    parser.add_argument("--gpu", action="store_true", help="one GPU for the predictor")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for Ready")
    parser.add_argument("--force", action="store_true", help="take over fields owned by another field manager")
    parser.add_argument("--dry-run", action="store_true", help="print the InferenceService as JSON and exit")


def run(args: argparse.Namespace) -> int:
    """Run ``pcam deploy``; returns the exit code."""
    if args.dry_run:
        print(
            json.dumps(
                render_inference_service(
                    args.name, args.serving, namespace=args.namespace, canary_percent=args.canary, gpu=args.gpu
                ),
                indent=2,
            )
        )
        return 0
    result = deploy(
        args.name,
        args.serving,
        namespace=args.namespace,
        canary_percent=args.canary,
        gpu=args.gpu,
        timeout=args.timeout,
        force=args.force,
    )
    print(result["url"])
    return 0
