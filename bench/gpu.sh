#!/usr/bin/env bash
# GPU throughput bench: one prepared script, a few minutes on one GPU.
#   bench/gpu.sh [--tiny] [extra args for bench.gpu_throughput]
# Needs the repo and a virtualenv holding tensorflow[and-cuda]==2.21.0 plus this
# package (pip install -e . --no-deps); VENV points at it (default .venv). Makes its
# own synthetic data; writes ${BENCH_OUT:-bench/out}/gpu.json and prints figure lines.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
OUT_DIR=${BENCH_OUT:-bench/out}
mkdir -p "$OUT_DIR"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Let XLA pick the CUDA toolkit pip installed (ptxas/nvvm from the nvidia-* wheels).
export TF_XLA_FLAGS=${TF_XLA_FLAGS:---tf_xla_auto_jit=0}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu-smi.txt"
else
  echo "nvidia-smi not found: running on CPU" >&2
fi
"$PY" -c 'import tensorflow as tf; print("TensorFlow", tf.__version__, "GPUs:", tf.config.list_physical_devices("GPU"))'
"$PY" -m bench.gpu_throughput --out "$OUT_DIR/gpu.json" "$@" 2>&1 | tee "$OUT_DIR/gpu.log"
