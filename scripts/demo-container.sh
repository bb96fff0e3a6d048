#!/usr/bin/env bash
# `make demo-container`: the demo pipeline through kfp.local's DockerRunner, every step in
# the CPU image that `make image-check` builds ($PCAM_CPU_IMAGE), each container limited
# to the CPU/memory its step requests in the compiled pipeline, with no network.
#
# Container engine: $DOCKER_HOST if set (a Docker engine, or podman's API socket);
# otherwise this script starts `podman system service` on a socket of its own and stops
# it at the end. Output: $OUT (default runs/demo-container); prints step times and the
# report path, like `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
CONFIG="${CONFIG:-configs/demo.yaml}"
OUT="${OUT:-runs/demo-container}"
: "${PCAM_CPU_IMAGE:?set PCAM_CPU_IMAGE (the Makefile does)}"

service_pid=""
cleanup() {
    if [[ -n "$service_pid" ]]; then
        kill "$service_pid" 2>/dev/null || true
        wait "$service_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [[ -z "${DOCKER_HOST:-}" ]]; then
    command -v podman >/dev/null 2>&1 || {
        echo "demo-container: error: set DOCKER_HOST to a Docker engine, or apt-get install podman" >&2
        exit 2
    }
    sock_dir="$(mktemp -d)"
    podman system service --time=0 "unix://$sock_dir/podman.sock" >"$sock_dir/service.log" 2>&1 &
    service_pid=$!
    for _ in $(seq 100); do
        [[ -S "$sock_dir/podman.sock" ]] && break
        sleep 0.1
    done
    [[ -S "$sock_dir/podman.sock" ]] || { echo "demo-container: error: podman system service did not start" >&2; exit 1; }
    export DOCKER_HOST="unix://$sock_dir/podman.sock"
fi

"$PYTHON" -m pipelines.run_container --config "$CONFIG" --out "$OUT" --image "$PCAM_CPU_IMAGE"
