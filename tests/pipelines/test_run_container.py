"""DockerRunner wiring of ``pipelines.run_container``: each step's container arguments come
from the compiled pipeline's requests (always checked), and a real container run through
kfp.local's DockerRunner against podman's Docker-compatible API started here (whenever
podman and the CPU image of ``make image-check`` exist on this machine).
"""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl, local

from pcam.errors import ConfigError
from pipelines.pcam_training import build_pipeline
from pipelines.run_container import (
    StepLimits,
    args_for,
    container_run_args,
    per_step_containers,
    quantity,
    run_args_per_function,
    step_limits,
)

GiB = 2**30
FUNCTIONS = {
    "configure",
    "select_pairs",
    "deploy_gate",
    "deploy",
    "ingest",
    "split",
    "shard",
    "train",
    "finetune",
    "evaluate",
    "report",
    "promote",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    compiler.Compiler().compile(
        build_pipeline(image="localhost/pcam/pcam-cpu:test", parallelism=1, retries=False), str(path)
    )
    return list(yaml.safe_load_all(path.read_text()))


def test_quantities_parse_as_kubernetes_does():
    assert quantity("500m", "k") == 0.5 and quantity("8", "k") == 8
    assert quantity("16G", "k") == 16e9 and quantity("8Gi", "k") == 8 * GiB and quantity("512M", "k") == 512e6
    with pytest.raises(ConfigError, match="cpu: '2 cores' is not a Kubernetes quantity"):
        quantity("2 cores", "cpu")


def test_every_step_gets_its_own_compiled_requests(compiled):
    limits = step_limits(*compiled)
    assert set(limits) == FUNCTIONS
    assert limits["train"] == StepLimits(
        cpu_limit=8, memory_limit=32 * 10**9, memory_request=16 * 10**9, shm_size=8 * GiB, gpus=1
    )
    assert limits["shard"] == StepLimits(cpu_limit=4, memory_limit=16 * 10**9, memory_request=16 * 10**9)
    assert limits["select_pairs"] == StepLimits(cpu_limit=0.5, memory_limit=512 * 10**6, memory_request=512 * 10**6)


def test_run_args_follow_the_requests_capped_at_the_machine(compiled):
    pipeline = build_pipeline(image="localhost/pcam/pcam-cpu:test", parallelism=1, retries=False)
    big = run_args_per_function(pipeline, cpus=64, memory=256 * GiB)  # compiles it: what run_container does
    small = {name: container_run_args(lim, 2, 24 * GiB) for name, lim in step_limits(*compiled).items()}
    assert set(big) == set(small) == FUNCTIONS
    for args in (*big.values(), *small.values()):
        assert args["network_mode"] == "none"
        assert args["memswap_limit"] == args["mem_limit"] >= args["mem_reservation"]
        assert {u["Name"]: u["Soft"] for u in args["ulimits"]} == {"nofile": 4096, "nproc": 4096}
    assert (big["train"]["nano_cpus"], big["train"]["mem_limit"], big["train"]["shm_size"]) == (8e9, 32e9, 8 * GiB)
    assert (small["train"]["nano_cpus"], small["train"]["mem_limit"]) == (2e9, 24 * GiB)  # capped
    assert (big["configure"]["nano_cpus"], big["configure"]["mem_limit"]) == (0.5e9, 512e6)
    assert big["configure"] == small["configure"] and "shm_size" not in big["configure"]
    assert (small["shard"]["nano_cpus"], small["shard"]["mem_limit"]) == (2e9, 16e9)


def test_the_handler_picks_the_args_of_the_function_the_task_runs(compiled):
    spec, _ = compiled
    per_step = {name: container_run_args(lim, 2, 24 * GiB) for name, lim in step_limits(*compiled).items()}
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        command = [*container["command"], *container["args"]]
        name = command[command.index("--function_to_execute") + 1]
        assert args_for(command, per_step) is per_step[name]
    with pytest.raises(ConfigError, match="no --function_to_execute"):
        args_for(["python", "-c", "print(1)"], per_step)


def test_tasks_of_one_function_with_different_requests_are_refused(compiled):
    spec, platform = yaml.safe_load(yaml.safe_dump(compiled[0])), compiled[1]
    spec["deploymentSpec"]["executors"]["exec-train-2"]["container"]["resources"]["resourceMemoryLimit"] = "64G"
    with pytest.raises(ConfigError, match="exec-train.*tasks of 'train' request"):
        step_limits(spec, platform)


def test_the_subclass_is_swapped_in_only_for_the_run():
    from kfp.local import docker_task_handler

    original = docker_task_handler.DockerTaskHandler
    with per_step_containers({}):
        assert issubclass(docker_task_handler.DockerTaskHandler, original)
        assert docker_task_handler.DockerTaskHandler is not original
    assert docker_task_handler.DockerTaskHandler is original


# --------------------------------------------------------------------------- a real container run


def _cpu_image() -> str | None:
    """PCAM_CPU_IMAGE if podman has it, else the newest localhost/pcam/pcam-cpu image podman holds."""
    wanted = os.environ.get("PCAM_CPU_IMAGE", "")
    found = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/pcam/pcam-cpu"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    if wanted in found:
        return wanted
    return found[0] if found else None


@pytest.fixture(scope="module")
def podman_api(tmp_path_factory):
    """podman's Docker-compatible API on a socket of this test's own, stopped afterwards."""
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (apt-get install podman): no real container run")
    image = _cpu_image()
    if not image:
        pytest.skip("no localhost/pcam/pcam-cpu image: run make image-check to build it")
    sock = tmp_path_factory.mktemp("podman") / "api.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
        time.sleep(0.1)
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = f"unix://{sock}"
    try:
        yield image
    finally:
        os.environ.pop("DOCKER_HOST") if old is None else os.environ.__setitem__("DOCKER_HOST", old)
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=30)


def probe() -> str:
    """What a container sees of its limits and network (cgroup v1 or v2), as one line of text."""
    import os
    import socket
    from pathlib import Path

    def first(*paths):
        for path in paths:
            if Path(path).exists():
                return Path(path).read_text().split()[0]
        return "?"

    memory = first("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    quota = first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max")
    interfaces = sorted(name for _, name in socket.if_nameindex())
    return f"memory={memory} quota={quota} uid={os.getuid()} if={','.join(interfaces)}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning")
def test_a_real_step_runs_in_the_image_with_its_compiled_limits(podman_api, tmp_path):
    import docker

    from pipelines.run_container import image_user

    image = podman_api
    probe_op = dsl.component(probe, base_image=image, install_kfp_package=False)

    @dsl.pipeline(name="container-probe")
    def limits_pipeline() -> str:
        task = probe_op().set_cpu_limit("500m").set_memory_limit("768M").set_memory_request("256M")
        return task.output

    uid, _ = image_user(docker.from_env(), image)
    root = tmp_path / "root"
    root.mkdir()
    if os.geteuid() == 0:
        os.chown(root, uid, uid)
    per_step = run_args_per_function(limits_pipeline, cpus=2, memory=24 * GiB)
    assert per_step["probe"]["nano_cpus"] == 0.5e9 and per_step["probe"]["mem_limit"] == 768e6
    local.init(runner=local.DockerRunner(), pipeline_root=str(root))
    with per_step_containers(per_step):
        seen = limits_pipeline().output
    fields = dict(item.split("=", 1) for item in seen.split())
    assert int(fields["memory"]) == 768 * 10**6 // 4096 * 4096  # the kernel rounds to pages
    assert fields["quota"] in ("50000", "50000 100000")  # 0.5 CPU of a 100 ms period
    assert fields["uid"] == str(uid) and fields["if"] == "lo"  # the image's user, no network but loopback
    assert Path(root).stat().st_uid == (uid if os.geteuid() == 0 else os.geteuid())
