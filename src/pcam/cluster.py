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

Plain constants, no imports: this module is read by the pipeline compiler, the tests
and humans, and must never pull in TensorFlow or kfp.
"""

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
