#!/usr/bin/env bash
# `make image-check`: really build the CPU image on this machine and run pcam in it,
# with no Docker engine and no container registry (only the Debian mirror and PyPI).
#
#   1. podman + buildah + debootstrap + runc from Debian (installed if missing and root)
#   2. a Debian 12 (Python 3.11) root filesystem from the Debian mirror, imported as
#      the local base image $CHECK_BASE (stands in for python:3.11-slim-bookworm)
#   3. every wheel in requirements.lock (+ the build backend) into build/wheels with
#      the host's pip; the image's RUN steps have no network
#   4. scripts/images.sh build for images/cpu/Dockerfile, the very Dockerfile a normal
#      docker build uses, with BASE_IMAGE=$CHECK_BASE WHEELHOUSE=build/wheels
#      PIP_OFFLINE=1 (the air-gapped path of docs/cluster.md)
#   5. inside the image, as its non-root user with no network: pcam --help, the
#      pcam synth -> ingest -> split -> shard chain, pcam evaluate of a freshly built
#      Keras model, and the pipeline's ingest component launched the way KFP launches
#      it (its compiled command + args, executor input JSON, output to /minio/...),
#      and the second entry point: pcam export of that model, then pcam serve answering
#      one real KServe v1 request on the container's loopback and stopping on SIGTERM
#
# Slow (minutes; the first run debootstraps and downloads ~450 MB of wheels); a make
# target, not a CI test. Writes only under build/. Results: build/image-check/report.txt.
#
# Environment: DEBIAN_MIRROR (default: this machine's apt source), IMAGE_CHECK_FRESH=1
# (rebuild the base image), PCAM_CPU_IMAGE (image name; the Makefile sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "image-check: error: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

WORK=build/image-check
WHEELS=build/wheels
SUITE=bookworm           # Debian 12: python3 is 3.11, as on the hosts that build the wheels
PY_TAG=3.11
CHECK_BASE="localhost/pcam-check-base:$SUITE"
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="${PCAM_CPU_IMAGE:-localhost/pcam/pcam-cpu:$(git rev-parse --short=12 HEAD)}"
mkdir -p "$WORK"
started=$SECONDS

# ---------------------------------------------------------------- 1. tools
[[ -x "$PYTHON" ]] || die "$PYTHON not found: run make setup (make image-check does)"
host_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$host_py" == "$PY_TAG" ]] || die "the host Python is $host_py; the wheels must be built for $PY_TAG (the image's Python)"

missing=()
for tool in podman buildah debootstrap runc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (Debian packages)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
            podman buildah debootstrap runc fuse-overlayfs >/dev/null
    else
        die "missing ${missing[*]}: apt-get install podman buildah debootstrap runc (as root)"
    fi
fi
[[ $EUID -eq 0 ]] || die "run as root: debootstrap and podman's storage need it here"

# ---------------------------------------------------------------- 2. base image
debian_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri="$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)"
    fi
    [[ -n "$uri" ]] || die "no Debian mirror in /etc/apt/sources*; set DEBIAN_MIRROR"
    echo "$uri"
}

t0=$SECONDS
if [[ "${IMAGE_CHECK_FRESH:-0}" == 1 ]] || ! podman image exists "$CHECK_BASE"; then
    mirror="$(debian_mirror)"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    say "debootstrap $SUITE (minbase + python3-venv) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    # What an image does not need: package caches and lists, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/debootstrap
    say "importing it as $CHECK_BASE"
    tar -C "$rootfs" --numeric-owner -c . |
        podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$CHECK_BASE" >/dev/null
    rm -rf "$rootfs"
fi
base_py="$(podman run --rm --network=none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$CHECK_BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$base_py" == "$PY_TAG" ]] || die "$CHECK_BASE has Python $base_py, the wheels are for $PY_TAG"
base_seconds=$((SECONDS - t0))

# ---------------------------------------------------------------- 3. wheels
t0=$SECONDS
say "wheels for requirements.lock -> $WHEELS (host pip; sdist-only packages are built here)"
mkdir -p "$WHEELS"
if ! "$PYTHON" -m pip wheel --disable-pip-version-check -r requirements.lock \
    'setuptools>=77' wheel --wheel-dir "$WHEELS" >"$WORK/wheels.log" 2>&1; then
    tail -20 "$WORK/wheels.log" >&2
    die "building the wheelhouse failed (log: $WORK/wheels.log)"
fi
rm -f "$WHEELS"/pcam-*.whl  # the image builds its own from the sources
wheels_seconds=$((SECONDS - t0))

# ---------------------------------------------------------------- 4. build
t0=$SECONDS
say "building $IMAGE from images/cpu/Dockerfile (offline, base $CHECK_BASE)"
if ! CONTAINER_TOOL=podman IMAGES=cpu BASE_IMAGE="$CHECK_BASE" WHEELHOUSE="$WHEELS" \
    PCAM_CPU_IMAGE="$IMAGE" PCAM_IMAGE="unused:unused" \
    scripts/images.sh build >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log" >&2
    die "image build failed (log: $WORK/build.log)"
fi
grep -E '^==> ' "$WORK/build.log"
build_seconds=$((SECONDS - t0))
size_bytes="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
user="$(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
[[ -n "$user" && "$user" != root && "$user" != 0* ]] || die "$IMAGE runs as '$user', not a non-root user"

# ---------------------------------------------------------------- 5. run inside
out="$WORK/run"
rm -rf "$out"
mkdir -p "$out"
chmod 0777 "$out"  # written by the image's non-root user
# A small config (demo.yaml with tiny synthetic data) and the ingest component's
# launch command, both made on the host with the same pcam + kfp versions.
"$PYTHON" - "$out" <<'PY'
import json
import shlex
import sys
from pathlib import Path

from pcam.config import dump_config, load_config

out = Path(sys.argv[1])
cfg = load_config(
    "configs/demo.yaml",
    {"data.synthetic": {"train": 96, "valid": 32, "test": 32, "slides": 8},
     "shard.records_per_shard": 64},
)
(out / "config.yaml").write_text(dump_config(cfg))

# The ingest component exactly as the compiled pipeline runs it: KFP's executor
# command with the executor input it would get, the output artifact under /minio
# (the launcher's local path for a minio:// URI, owned by the image's user).
from components.ingest import ingest
from components._common import make_component

spec = make_component(ingest, image="unused").component_spec
container = spec.implementation.container
executor_input = {
    "inputs": {"parameterValues": {"config_yaml": dump_config(cfg)}},
    "outputs": {
        "artifacts": {"dataset": {"artifacts": [{
            "name": "dataset",
            "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
            "uri": "minio://mlpipeline/pcam-check/ingest/dataset",
            "metadata": {},
        }]}},
        "outputFile": "/tmp/kfp-outputs/executor_output.json",
    },
}
args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container.args]
assert "{{$}}" in container.args, container.args
(out / "component.sh").write_text(shlex.join(list(container.command) + args) + "\n")
PY
cat >"$out/check.sh" <<'SH'
#!/bin/sh
# Runs inside the image as its non-root user, with no network.
set -eu
w=/tmp/pcam-check
cfg=/check/config.yaml
mkdir -p "$w"
step() { echo "--- $*"; }
have() {
    pcam "$1" --help >/dev/null 2>&1 || { echo "pcam $1 is missing from the image" >&2; exit 1; }
}
step "id: $(id -u):$(id -g) $(id -un); python: $(command -v python3) $(python3 --version)"
step "pcam --help"
pcam --help
pcam --version
for c in synth ingest split shard evaluate; do have "$c"; done
step "pcam synth"
pcam synth --out "$w/raw" --train 96 --valid 32 --test 32 --slides 8 --seed 1
step "pcam ingest"
pcam ingest --source "$w/raw" --format hdf5 --out "$w/dataset"
step "pcam split"
pcam split --dataset "$w/dataset" --out "$w/split" --config "$cfg"
step "pcam shard"
pcam shard --dataset "$w/dataset" --split "$w/split" --out "$w/shards" --config "$cfg"
ls "$w/shards"
step "pcam evaluate: a freshly built Keras CNN, saved, evaluated with TTA on the test shards"
python3 - "$w" <<'PY'
import sys
from pathlib import Path

import keras

w = Path(sys.argv[1])
inputs = keras.Input((96, 96, 3))
x = keras.layers.Rescaling(1 / 255)(inputs)
x = keras.layers.Conv2D(4, 3, activation="relu")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
(w / "model").mkdir()
model.save(w / "model" / "model.keras")
print("saved", w / "model" / "model.keras", model.count_params(), "parameters")
PY
pcam evaluate --model "$w/model" --shards "$w/shards" --out "$w/eval" --config "$cfg" --split test
python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print({k: m[k] for k in sorted(m) if isinstance(m[k], (int, float))})" "$w/eval/metrics.json"
step "KFP: the pipeline's ingest component, launched as KFP launches it"
sh /check/component.sh
ls /minio/mlpipeline/pcam-check/ingest/dataset
test -s /minio/mlpipeline/pcam-check/ingest/dataset/manifest.json
test -s /tmp/kfp-outputs/executor_output.json
python3 -c "import json; print(json.load(open('/tmp/kfp-outputs/executor_output.json')))"
step "second entry point: pcam export + pcam serve (KServe v1) answering one real request on loopback"
have export
have serve
pcam export --model "$w/model" --out "$w/serving" --config "$cfg"
pcam serve --model "$w/serving" --host 127.0.0.1 --port 8080 >"$w/serve.log" 2>&1 &
server=$!
python3 - "$w" <<'PY'
import base64, io, json, sys, time, urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

base = "http://127.0.0.1:8080"
for _ in range(240):
    try:
        if urllib.request.urlopen(base + "/v2/health/ready", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.5)
else:
    print(Path(sys.argv[1], "serve.log").read_text()[-2000:])
    raise SystemExit("pcam serve did not become ready")
buf = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
body = json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}).encode()
request = urllib.request.Request(base + "/v1/models/pcam:predict", body, {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=60))
p = answer["predictions"][0]["probability"]
assert 0.0 <= p <= 1.0, answer
print("v1 predict:", answer)
PY
kill -TERM "$server"
wait "$server"
step "all checks passed"
SH
t0=$SECONDS
say "running the checks inside $IMAGE (user $user, --network=none)"
# Explicit, lowered ulimits: podman's defaults (nofile/nproc near 1M for root) are above
# what a sandboxed host lets runc set, and the container start fails with
# "error setting rlimit ... operation not permitted".
if ! podman run --rm --network=none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    -v "$PWD/$out:/check:ro" "$IMAGE" sh /check/check.sh 2>&1 |
    tee "$WORK/run.log"; then
    die "the checks inside the image failed (log: $WORK/run.log)"
fi
run_seconds=$((SECONDS - t0))
grep -q -- '--- all checks passed' "$WORK/run.log" || die "the checks did not finish (log: $WORK/run.log)"

size_mb=$((size_bytes / 1000000))
{
    echo "image-check $(date -u +%Y-%m-%dT%H:%M:%SZ) at $(git rev-parse --short=12 HEAD)"
    echo "image:        $IMAGE ($size_mb MB, user $user)"
    echo "base:         $CHECK_BASE (debootstrap $SUITE, Python $base_py): ${base_seconds}s"
    echo "wheels:       $(find "$WHEELS" -name '*.whl' | wc -l) in $WHEELS: ${wheels_seconds}s"
    echo "build:        images/cpu/Dockerfile, offline: ${build_seconds}s"
    echo "run:          ${run_seconds}s:"
    grep -- '^--- ' "$WORK/run.log" | sed 's/^--- /                /'
    echo "total:        $((SECONDS - started))s"
} | tee "$WORK/report.txt"
