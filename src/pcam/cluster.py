"""Names shared by the pipeline (``pipelines/``) and the Kubernetes manifests (``manifests/``).

The pipeline compiles these into every GPU task (node selector, toleration) and the
submit step passes the service account; ``manifests/`` creates the objects with the
same names. ``tests/manifests/test_manifests.py`` renders the manifests and checks they
agree with this module, so changing a value here without changing the YAML (or the
other way round) fails the tests.

The defaults follow GKE's conventions, since that is where the GPU node pools live:
GKE labels every GPU node with ``cloud.google.com/gke-accelerator=<accelerator type>``
and taints it ``nvidia.com/gpu=present:NoSchedule``. The kind cluster
(``manifests/kind/cluster.yaml``) fakes the same label and taint on one worker so the
scheduling path is exercised locally without a GPU.

The GPU node pool is a compile option (``make compile GPU=nvidia-a100-80gb``, or a
label/taint pair): :class:`GpuPool` holds one, :func:`gpu_pool` parses the options,
and the defaults below are GKE's L4 pool.

Plain constants and a dataclass: this module is read by the pipeline compiler, the
tests and humans, and must never pull in TensorFlow or kfp.
"""

from __future__ import annotations

import dataclasses
import re

from pcam.errors import ConfigError

# KFP standalone runs every pipeline pod in the namespace KFP itself is installed in
# (single-user mode), so that is where the service account, PVC and ConfigMap live.
# Under multi-user Kubeflow this is the profile namespace instead.
NAMESPACE = "kubeflow"

# The service account pipeline runs use (passed at submit time; KFP's default would be
# the much broader `pipeline-runner`). Bound to a namespaced least-privilege Role.
SERVICE_ACCOUNT = "pcam-pipeline-runner"

# Shared data volume (dataset cache, champion model) and where tasks mount it.
PVC_NAME = "pcam-data"
DATA_MOUNT_PATH = "/mnt/pcam"

# Per-epoch checkpoints of train/fine-tune, on that volume: the compiled pipeline's
# default ``checkpoint_root`` (pcam.run_checkpoints adds /<run id>/<model>-<policy>-<stage>).
CHECKPOINT_ROOT = f"{DATA_MOUNT_PATH}/checkpoints"

# Persistent CUDA JIT cache on that volume, one directory per GPU type. The TF 2.21
# wheel has SASS for sm_60/70/80/89/90 only; on newer GPUs (Blackwell, compute
# capability 10.x/12.x) the driver JIT-compiles TensorFlow's kernels from compute_90
# PTX at first use, and without a persistent cache every new pod pays that again.
CUDA_CACHE_ROOT = f"{DATA_MOUNT_PATH}/cuda-cache"
# The driver's own default is 256 MiB (too small for TensorFlow's kernels); 4 GiB is
# the largest value CUDA accepts.
CUDA_CACHE_MAXSIZE = 4 * 1024**3

# Low-priority class for preemptible training pods (value above the cluster
# autoscaler's expendable cutoff of -10, so pending GPU pods still scale a pool up).
PRIORITY_CLASS = "pcam-preemptible"

# GPU node pool: node selector.
GPU_NODE_LABEL_KEY = "cloud.google.com/gke-accelerator"
GPU_NODE_LABEL_VALUE = "nvidia-l4"

# GPU node pool: the taint its nodes carry, which GPU tasks tolerate.
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "present"
GPU_TAINT_EFFECT = "NoSchedule"

# The extended resource a GPU task requests (one per training pod).
GPU_RESOURCE = "nvidia.com/gpu"

# Secrets, referenced by name only (created by the operator, never committed):
# a GCP service-account key (key.json) for gs:// access on clusters without Workload
# Identity, and an image pull secret for a private registry the nodes cannot pull from.
GCS_CREDENTIALS_SECRET = "pcam-gcs-key"
IMAGE_PULL_SECRET = "pcam-registry"

# Name of the ConfigMap in `manifests/base` that publishes the values above to the
# cluster, for operators and for anything that reads them at run time.
CONFIGMAP_NAME = "pcam-cluster"


def gpu_node_selector() -> dict[str, str]:
    """The node selector every GPU task carries."""
    return {GPU_NODE_LABEL_KEY: GPU_NODE_LABEL_VALUE}


def gpu_toleration() -> dict[str, str]:
    """The toleration every GPU task carries, in Kubernetes' field names."""
    return {
        "key": GPU_TAINT_KEY,
        "operator": "Equal",
        "value": GPU_TAINT_VALUE,
        "effect": GPU_TAINT_EFFECT,
    }


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclasses.dataclass(frozen=True)
class GpuPool:
    """The GPU node pool GPU tasks are compiled for: a node label to select, a taint to tolerate."""

    label_key: str = GPU_NODE_LABEL_KEY
    label_value: str = GPU_NODE_LABEL_VALUE
    taint_key: str = GPU_TAINT_KEY
    taint_value: str = GPU_TAINT_VALUE
    taint_effect: str = GPU_TAINT_EFFECT
    resource: str = GPU_RESOURCE

    def node_selector(self) -> dict[str, str]:
        """The node selector of every GPU task."""
        return {self.label_key: self.label_value}

    def toleration(self) -> dict[str, str]:
        """The toleration of every GPU task, in Kubernetes' field names."""
        return {"key": self.taint_key, "operator": "Equal", "value": self.taint_value, "effect": self.taint_effect}

    @property
    def cuda_cache_path(self) -> str:
        """CUDA_CACHE_PATH for this pool: JIT output is only valid for one GPU type and driver."""
        return f"{CUDA_CACHE_ROOT}/{self.label_value}"


def _check_label(option: str, key: str, value: str) -> None:
    if not _LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise ConfigError(f"{option}: {key!r} is not a valid Kubernetes label key")
    if not _LABEL_VALUE.match(value) or len(value) > 63:
        raise ConfigError(f"{option}: {value!r} is not a valid Kubernetes label value")


def gpu_pool(accelerator: str = "", label: str = "", taint: str = "") -> GpuPool:
    """The GPU pool from compile options; every empty option keeps the default.

    Args:
        accelerator: Value of the default accelerator label (GKE: ``nvidia-l4``,
            ``nvidia-tesla-a100``, ``nvidia-h100-80gb``, ``nvidia-b200``, ...).
        label: ``key=value`` node label instead (e.g. ``nvidia.com/gpu.product=NVIDIA-L4``).
        taint: ``key=value:Effect`` taint of the pool's nodes (Effect: NoSchedule,
            PreferNoSchedule or NoExecute).

    Returns:
        The pool.

    Raises:
        ConfigError: naming the option that is malformed, or both accelerator and label given.
    """
    pool = GpuPool()
    if accelerator and label:
        raise ConfigError(
            "--gpu and --gpu-label: give one (--gpu sets the value of "
            f"{GPU_NODE_LABEL_KEY}, --gpu-label a whole key=value)"
        )
    if accelerator:
        _check_label("--gpu", GPU_NODE_LABEL_KEY, accelerator)
        pool = dataclasses.replace(pool, label_value=accelerator)
    if label:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise ConfigError(f"--gpu-label: expected key=value, got {label!r}")
        _check_label("--gpu-label", key, value)
        pool = dataclasses.replace(pool, label_key=key, label_value=value)
    if taint:
        key_value, sep, effect = taint.rpartition(":")
        key, eq, value = key_value.partition("=")
        if not sep or not eq or not key:
            raise ConfigError(f"--gpu-taint: expected key=value:Effect, got {taint!r}")
        if effect not in TAINT_EFFECTS:
            raise ConfigError(f"--gpu-taint: effect {effect!r} is not one of {', '.join(TAINT_EFFECTS)}")
        _check_label("--gpu-taint", key, value)
        pool = dataclasses.replace(pool, taint_key=key, taint_value=value, taint_effect=effect)
    return pool


def gpu_pool_from_configmap(data: dict[str, str]) -> GpuPool:
    """The pool a ``pcam-cluster`` ConfigMap publishes (manifests/ overlays patch it per cluster)."""
    return GpuPool(
        label_key=data["gpu-node-label-key"],
        label_value=data["gpu-node-label-value"],
        taint_key=data["gpu-taint-key"],
        taint_value=data["gpu-taint-value"],
        taint_effect=data["gpu-taint-effect"],
        resource=data["gpu-resource"],
    )
