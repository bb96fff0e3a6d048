#!/usr/bin/env bash
# `make kind-test`: run the demo pipeline on the kind cluster from `make kind-up` and
# wait for it to finish. Needs kubectl, curl and .venv (make setup).
#
#   1. port-forward KFP's UI/API (svc/ml-pipeline-ui) to localhost:$KFP_PORT
#   2. make compile with the CPU image (kind has no GPU; its fake GPU node takes the
#      GPU tasks through the same node selector, toleration and GPU limit as GKE),
#      then submit one run (pipelines.submit, as make submit) with configs/demo.yaml
#   3. wait for the run (kfp.Client.wait_for_run_completion); fail unless SUCCEEDED
#
# Environment: KIND_CLUSTER (pcam), KFP_PORT (8080), RUN_TIMEOUT seconds (3600).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "kind-test: error: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

CLUSTER="${KIND_CLUSTER:-pcam}"
PORT="${KFP_PORT:-8080}"
RUN_TIMEOUT="${RUN_TIMEOUT:-3600}"
PYTHON=.venv/bin/python

# ---------------------------------------------------------------- preflight
missing=()
for tool in kubectl curl make; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x "$PYTHON" ]] || die "$PYTHON not found: run make setup"
: "${PCAM_CPU_IMAGE:?set PCAM_CPU_IMAGE (the Makefile does: make kind-test)}"
kubectl config use-context "kind-$CLUSTER" >/dev/null 2>&1 ||
    die "no kubectl context kind-$CLUSTER: run make kind-up first"
NAMESPACE="$(PYTHONPATH=src "$PYTHON" -c 'from pcam import cluster; print(cluster.NAMESPACE)')"
kubectl -n "$NAMESPACE" get svc ml-pipeline-ui >/dev/null 2>&1 ||
    die "KFP's ml-pipeline-ui service is missing in $NAMESPACE: run make kind-up first"

# ---------------------------------------------------------------- 1. port-forward
say "port-forwarding svc/ml-pipeline-ui to localhost:$PORT"
kubectl -n "$NAMESPACE" port-forward svc/ml-pipeline-ui "$PORT:80" >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
host="http://localhost:$PORT"
for _ in $(seq 60); do
    curl -fsS "$host/apis/v2beta1/healthz" >/dev/null 2>&1 && break
    kill -0 "$forward" 2>/dev/null || die "kubectl port-forward exited"
    sleep 2
done
curl -fsS "$host/apis/v2beta1/healthz" >/dev/null || die "KFP API at $host is not answering"

# ---------------------------------------------------------------- 2. submit
# The demo: the compiled pipeline (make compile, CPU image) with the parameters that
# reproduce configs/demo.yaml exactly (synthetic data, small models), as `make demo`
# runs it locally. `make submit` cannot carry them (PARAMS splits on spaces), so the
# submit module is called as make submit calls it.
run_name="pcam-kind-$(date +%Y%m%d-%H%M%S)"
say "compiling with $PCAM_CPU_IMAGE"
make --no-print-directory compile PCAM_IMAGE="$PCAM_CPU_IMAGE"
mapfile -t params < <("$PYTHON" - <<'PY'
import json

from pcam import cluster
from pcam.config import load_config
from pipelines.run_local import pipeline_arguments

arguments = pipeline_arguments(load_config("configs/demo.yaml"), f"{cluster.DATA_MOUNT_PATH}/champion")
for name, value in arguments.items():
    print(f"--param={name}={value if isinstance(value, str) else json.dumps(value)}")
PY
)
((${#params[@]})) || die "no pipeline parameters for configs/demo.yaml"
say "submitting $run_name"
submit_out="$("$PYTHON" -m pipelines.submit run --host "$host" --experiment pcam-kind \
    --run-name "$run_name" --package pipelines/compiled/pcam_training.yaml "${params[@]}" 2>&1)" ||
    { echo "$submit_out" >&2; die "submitting the run failed"; }
echo "$submit_out"
run_id="$(sed -n 's/^run \([0-9a-f-]\{8,\}\)$/\1/p' <<<"$submit_out" | tail -1)"
[[ -n "$run_id" ]] || die "the submit step printed no run id"

# ---------------------------------------------------------------- 3. wait
say "waiting up to ${RUN_TIMEOUT}s for run $run_id ($host/#/runs/details/$run_id)"
"$PYTHON" - "$host" "$run_id" "$RUN_TIMEOUT" <<'PY'
import sys

import kfp

host, run_id, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = kfp.Client(host=host).wait_for_run_completion(run_id, timeout=timeout)
print(f"run {run_id}: {run.state}")
sys.exit(0 if run.state == "SUCCEEDED" else 1)
PY
say "run $run_id succeeded"
