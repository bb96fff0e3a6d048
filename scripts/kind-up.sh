#!/usr/bin/env bash
# `make kind-up`: a local Kubernetes cluster (kind) with KFP standalone, pcam's kind
# overlay, and pcam's images loaded, ready for `make kind-test`. Needs docker (or
# podman), kind and kubectl, and network access to GitHub for KFP's manifests.
#
#   1. kind create cluster --config manifests/kind/cluster.yaml (reused if it exists)
#   2. KFP standalone at PIPELINE_VERSION, the documented way:
#        kubectl apply -k github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=V
#        kubectl wait --for condition=established crd/applications.app.k8s.io
#        kubectl apply -k github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=V
#   3. kubectl apply -k manifests/overlays/kind, then Argo's workflowDefaults patch
#      (manifests/kfp/workflow-defaults.yaml: pcam's PriorityClass on pipeline pods)
#   4. the fake GPU worker advertises nvidia.com/gpu (an extended resource patched
#      into the node status: no device, no driver) so GPU tasks schedule there
#   5. kind load the images $PCAM_IMAGE and $PCAM_CPU_IMAGE (make images first)
#
# Environment: KIND_CLUSTER (default pcam), PIPELINE_VERSION (default 2.17.1, the KFP
# 2.17 backend release matching the kfp 2.17 SDK), KFP_ENV (platform-agnostic or dev),
# KIND_NODE_IMAGE (kindest/node image; default: the kind release's own), FAKE_GPUS (4).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "kind-up: error: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

CLUSTER="${KIND_CLUSTER:-pcam}"
PIPELINE_VERSION="${PIPELINE_VERSION:-2.17.1}"
KFP_ENV="${KFP_ENV:-platform-agnostic}"
FAKE_GPUS="${FAKE_GPUS:-4}"
KFP_REPO="github.com/kubeflow/pipelines/manifests/kustomize"

# ---------------------------------------------------------------- preflight
missing=()
for tool in kind kubectl git python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if command -v docker >/dev/null 2>&1; then
    engine=docker
elif command -v podman >/dev/null 2>&1; then
    engine=podman
    export KIND_EXPERIMENTAL_PROVIDER=podman
else
    missing+=("docker (or podman)")
fi
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
"$engine" info >/dev/null 2>&1 || die "$engine is installed but its engine is not reachable ($engine info fails)"
: "${PCAM_IMAGE:?set PCAM_IMAGE (the Makefile does: make kind-up)}"
: "${PCAM_CPU_IMAGE:?set PCAM_CPU_IMAGE (the Makefile does: make kind-up)}"
for image in "$PCAM_IMAGE" "$PCAM_CPU_IMAGE"; do
    "$engine" image inspect "$image" >/dev/null 2>&1 || die "image $image not found locally: run make images first"
done

# The names the manifests and the pipeline share (src/pcam/cluster.py, no dependencies).
cluster_value() { PYTHONPATH=src python3 -c "from pcam import cluster; print(cluster.$1)"; }
NAMESPACE="$(cluster_value NAMESPACE)"
GPU_LABEL="$(cluster_value GPU_NODE_LABEL_KEY)=$(cluster_value GPU_NODE_LABEL_VALUE)"
GPU_RESOURCE="$(cluster_value GPU_RESOURCE)"

# ---------------------------------------------------------------- 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "kind cluster $CLUSTER exists; reusing it"
else
    say "creating kind cluster $CLUSTER"
    create=(kind create cluster --name "$CLUSTER" --config manifests/kind/cluster.yaml --wait 180s)
    if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
        create+=(--image "$KIND_NODE_IMAGE")
    fi
    "${create[@]}"
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

# ---------------------------------------------------------------- 2. KFP standalone
say "installing KFP $PIPELINE_VERSION ($KFP_ENV)"
kubectl apply -k "$KFP_REPO/cluster-scoped-resources?ref=$PIPELINE_VERSION"
kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io
kubectl apply -k "$KFP_REPO/env/$KFP_ENV?ref=$PIPELINE_VERSION"
say "waiting for KFP's deployments (first pull of its images takes minutes)"
kubectl -n "$NAMESPACE" wait --for=condition=Available --timeout=1200s deployment --all

# ---------------------------------------------------------------- 3. pcam's manifests
say "applying manifests/overlays/kind"
kubectl apply -k manifests/overlays/kind
kubectl -n "$NAMESPACE" patch configmap workflow-controller-configmap \
    --type merge --patch-file manifests/kfp/workflow-defaults.yaml
kubectl -n "$NAMESPACE" rollout restart deployment/workflow-controller
kubectl -n "$NAMESPACE" rollout status deployment/workflow-controller --timeout=300s

# ---------------------------------------------------------------- 4. fake GPUs
gpu_nodes="$(kubectl get nodes -l "$GPU_LABEL" -o name)"
[[ -n "$gpu_nodes" ]] || die "no node labelled $GPU_LABEL: manifests/kind/cluster.yaml and src/pcam/cluster.py disagree"
escaped="${GPU_RESOURCE//\//~1}"
for node in $gpu_nodes; do
    say "$node: advertising $FAKE_GPUS fake $GPU_RESOURCE"
    kubectl patch "$node" --subresource=status --type=json \
        -p "[{\"op\": \"add\", \"path\": \"/status/capacity/$escaped\", \"value\": \"$FAKE_GPUS\"}]"
done

# ---------------------------------------------------------------- 5. images
for image in "$PCAM_IMAGE" "$PCAM_CPU_IMAGE"; do
    say "loading $image into $CLUSTER"
    if [[ "$engine" == docker ]]; then
        kind load docker-image "$image" --name "$CLUSTER"
    else
        archive="$(mktemp --suffix=.tar)"
        podman save -o "$archive" "$image"
        kind load image-archive "$archive" --name "$CLUSTER"
        rm -f "$archive"
    fi
done

say "ready: make kind-test (UI: kubectl -n $NAMESPACE port-forward svc/ml-pipeline-ui 8080:80)"
