#!/usr/bin/env bash
# Build or push pcam's two images with docker or podman, whichever is installed.
#
#   scripts/images.sh build      # images/gpu -> $PCAM_IMAGE, images/cpu -> $PCAM_CPU_IMAGE
#   scripts/images.sh push
#
# The Makefile exports PCAM_IMAGE=$(REGISTRY)/pcam-gpu:$(IMAGE_TAG) and
# PCAM_CPU_IMAGE=$(REGISTRY)/pcam-cpu:$(IMAGE_TAG), the tag being the git SHA. Tags
# are never `latest`: a compiled pipeline names one exact image.
#
# Optional environment:
#   CONTAINER_TOOL   docker or podman (default: docker if present, else podman)
#   BASE_IMAGE       base image for both Dockerfiles (e.g. your registry mirror)
#   WHEELHOUSE       wheel directory inside the repo for an offline build (sets PIP_OFFLINE=1)
#   IMAGES           which images: "gpu cpu" (default), "cpu" or "gpu"
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 build|push" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
action="$1"
[[ "$action" == build || "$action" == push ]] || usage

die() {
    echo "images.sh: $*" >&2
    exit 1
}

tool="${CONTAINER_TOOL:-}"
if [[ -z "$tool" ]]; then
    if command -v docker >/dev/null 2>&1; then
        tool=docker
    elif command -v podman >/dev/null 2>&1; then
        tool=podman
    else
        die "neither docker nor podman is installed (install one, or set CONTAINER_TOOL)"
    fi
fi
command -v "$tool" >/dev/null 2>&1 || die "CONTAINER_TOOL=$tool is not installed"

: "${PCAM_IMAGE:?set PCAM_IMAGE (the Makefile does: make images)}"
: "${PCAM_CPU_IMAGE:?set PCAM_CPU_IMAGE (the Makefile does: make images)}"

image_for() {
    case "$1" in
        gpu) echo "$PCAM_IMAGE" ;;
        cpu) echo "$PCAM_CPU_IMAGE" ;;
        *) die "unknown image '$1' in IMAGES (use gpu and/or cpu)" ;;
    esac
}

read -r -a which <<<"${IMAGES:-gpu cpu}"
for kind in "${which[@]}"; do
    ref="$(image_for "$kind")"
    tag="${ref##*:}"
    [[ "$ref" == *:* && "$tag" != */* ]] || die "$ref has no tag; images are tagged with the git SHA"
    [[ "$tag" != latest ]] || die "$ref: refusing the tag 'latest'; tag images with the git SHA (IMAGE_TAG)"
done

git_sha="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "$action" == build ]] && ! git diff --quiet HEAD -- src pyproject.toml requirements.lock images 2>/dev/null; then
    echo "images.sh: warning: uncommitted changes under src/, images/ or the lock file; the tag names HEAD" >&2
fi

# RUN --mount needs BuildKit (docker's default builder since 23.0; podman always has it).
export DOCKER_BUILDKIT=1
build_args=(--build-arg "GIT_SHA=$git_sha")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
if [[ -n "${WHEELHOUSE:-}" ]]; then
    [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a directory"
    build_args+=(--build-arg "WHEELHOUSE=$WHEELHOUSE" --build-arg PIP_OFFLINE=1)
fi

for kind in "${which[@]}"; do
    ref="$(image_for "$kind")"
    if [[ "$action" == build ]]; then
        echo "==> $tool build images/$kind/Dockerfile -> $ref"
        start=$SECONDS
        "$tool" build -f "images/$kind/Dockerfile" "${build_args[@]}" -t "$ref" .
        echo "==> built $ref in $((SECONDS - start)) s"
    else
        echo "==> $tool push $ref"
        "$tool" push "$ref"
    fi
done
