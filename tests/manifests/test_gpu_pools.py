"""The GPU node pool is a compile option, and each manifests overlay agrees with the pipeline
compiled for the pool it publishes: node selector, toleration, GPU resource, the CUDA JIT
cache on the shared volume. Also the compile options' errors and the GPU image's cache.
"""

import re
import subprocess
import sys

import pytest
import yaml

from pcam import cluster
from pcam.errors import ConfigError
from pipelines.pcam_training import compile_pipeline
from tests.conftest import REPO
from tests.manifests.test_manifests import KUSTOMIZATIONS, MANIFESTS, by_kind, kustomize

GPU_EXECUTORS = ("exec-train", "exec-train-2", "exec-finetune", "exec-evaluate", "exec-evaluate-2")


def gpu_tasks(path):
    """{executor: (container, kubernetes platform config)} of the GPU steps of a compiled pipeline."""
    spec, platform = yaml.safe_load_all(path.read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {e: (spec["deploymentSpec"]["executors"][e]["container"], k8s[e]) for e in GPU_EXECUTORS}


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_pipeline_compiled_for_an_overlays_pool_agrees_with_it(overlay, tmp_path):
    data = by_kind(kustomize(overlay), "ConfigMap")["data"]
    pool = cluster.gpu_pool_from_configmap(data)
    # What an operator types for that overlay: make compile GPU=<its gpu-node-label-value>.
    assert pool == cluster.gpu_pool(accelerator=data["gpu-node-label-value"])
    compiled = compile_pipeline(tmp_path / "p.yaml", image="r/pcam-gpu:1", gpu=pool)
    for name, (container, k8s) in gpu_tasks(compiled).items():
        assert k8s["nodeSelector"]["labels"] == {data["gpu-node-label-key"]: data["gpu-node-label-value"]}, name
        assert k8s["tolerations"] == [
            {
                "key": data["gpu-taint-key"],
                "operator": "Equal",
                "value": data["gpu-taint-value"],
                "effect": data["gpu-taint-effect"],
            }
        ]
        assert container["resources"]["accelerator"]["resourceType"] == data["gpu-resource"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {
            "CUDA_CACHE_PATH": f"{data['cuda-cache-root']}/{data['gpu-node-label-value']}",
            "CUDA_CACHE_MAXSIZE": data["cuda-cache-maxsize"],
        }
        # The cache and the checkpoints live on the volume the overlay creates, mounted where it says.
        assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [
            (data["pvc-name"], data["data-mount-path"])
        ]
        assert data["cuda-cache-root"].startswith(data["data-mount-path"] + "/")
        assert data["checkpoint-root"].startswith(data["data-mount-path"] + "/")


def test_kind_cluster_gpu_worker_carries_the_kind_overlays_pool():
    data = by_kind(kustomize("overlays/kind"), "ConfigMap")["data"]
    pool = cluster.gpu_pool_from_configmap(data)
    config = yaml.safe_load((MANIFESTS / "kind" / "cluster.yaml").read_text())
    (worker,) = [n for n in config["nodes"] if n.get("labels")]
    assert worker["labels"] == pool.node_selector()
    (join,) = [p for p in map(yaml.safe_load, worker["kubeadmConfigPatches"]) if p["kind"] == "JoinConfiguration"]
    assert join["nodeRegistration"]["taints"] == [
        {"key": pool.taint_key, "value": pool.taint_value, "effect": pool.taint_effect}
    ]


def test_make_compile_gpu_options_reach_the_compiled_pipeline(tmp_path):
    out = tmp_path / "p.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.pcam_training",
            "--image",
            "r/pcam-gpu:1",
            "--output",
            str(out),
            "--gpu-label",
            "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
            "--gpu-taint",
            "dedicated=gpu:NoExecute",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    for container, k8s in gpu_tasks(out).values():
        assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert k8s["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}]
        assert {"name": "CUDA_CACHE_PATH", "value": f"{cluster.CUDA_CACHE_ROOT}/NVIDIA-H100-80GB-HBM3"} in container[
            "env"
        ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu", "nvidia l4"], "--gpu: 'nvidia l4' is not a valid Kubernetes label value"),
        (["--gpu", "nvidia-l4", "--gpu-label", "a=b"], "--gpu and --gpu-label: give one"),
        (["--gpu-label", "no-equals"], "--gpu-label: expected key=value, got 'no-equals'"),
        (["--gpu-taint", "nvidia.com/gpu=present"], "--gpu-taint: expected key=value:Effect"),
        (["--gpu-taint", "nvidia.com/gpu=present:Sometimes"], "--gpu-taint: effect 'Sometimes' is not one of"),
    ],
)
def test_bad_gpu_options_exit_2_naming_the_option(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.pcam_training", "--output", str(tmp_path / "p.yaml"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_gpu_pool_rejects_a_label_key_kubernetes_would():
    with pytest.raises(ConfigError, match="--gpu-label: 'Bad_Prefix/x' is not a valid Kubernetes label key"):
        cluster.gpu_pool(label="Bad_Prefix/x=1")


def test_gpu_image_keeps_a_large_cuda_jit_cache_its_user_can_write():
    dockerfile = (REPO / "images" / "gpu" / "Dockerfile").read_text()
    env = dict(re.findall(r"^\s+(CUDA_CACHE_\w+)=(\S+?)(?: \\)?$", dockerfile, re.M))
    assert env["CUDA_CACHE_MAXSIZE"] == str(cluster.CUDA_CACHE_MAXSIZE) == str(4 * 2**30)
    assert env["CUDA_CACHE_PATH"].startswith("/var/cache/")
    assert re.search(r'chown pcam:pcam [^\n]*"\$CUDA_CACHE_PATH"', dockerfile)
