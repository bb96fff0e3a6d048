"""Run the whole pipeline with every step in its container: kfp.local's DockerRunner.

    python -m pipelines.run_container --config configs/demo.yaml --out runs/demo-container --image IMAGE

The closest thing to a cluster run one machine has: each step runs in the CPU image
(``make image-check`` builds it offline) instead of this virtualenv, so the run proves
that the image holds everything each component imports and that artifacts pass
between containers through the pipeline root. ``make demo-container`` starts
podman's Docker-compatible API (``podman system service``) and runs this; a Docker
engine works as well (``DOCKER_HOST`` or the default socket).

Each container gets what the compiled pipeline asks of a pod for that step:

* CPU and memory: the step's limits (``nano_cpus``, ``mem_limit``, ``memswap_limit``)
  and memory request (``mem_reservation``), read from the compiled spec and capped at
  this machine's CPUs and memory (a GPU step asks for 8 CPUs and 32 GB);
* ``/dev/shm``: the size of the step's memory-backed ``/dev/shm`` volume, if any;
* no network (``network_mode="none"``), the image's own non-root user, explicit
  ulimits (podman's root defaults exceed what a sandboxed host lets runc set);
* not run here: the GPU request, node selector and toleration (no GPU, no nodes).

DockerRunner takes one set of ``containers.run`` arguments for every step, so
:class:`PerStepDockerTaskHandler` picks the step's own set by the component function
the task executes (``--function_to_execute``); every task of one function has the
same requests (:func:`step_limits` refuses a pipeline where they differ).

DockerRunner mounts the pipeline root at the same absolute path, so everything a
step writes (artifacts, the run's checkpoints, the champion) lives under it, owned
by the image's user.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcam.config import ExperimentConfig, load_config
from pcam.errors import ConfigError, PcamError

log = logging.getLogger("pcam.run_container")

QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
ULIMITS = {"nofile": 4096, "nproc": 4096}
PODMAN_HINT = (
    "start one: podman system service --time=0 unix:///tmp/pcam-podman.sock & "
    "export DOCKER_HOST=unix:///tmp/pcam-podman.sock (make demo-container does)"
)


def quantity(value: str, key: str) -> float:
    """A Kubernetes quantity (``500m``, ``16G``, ``8Gi``) as a number (cores or bytes)."""
    match = QUANTITY.match(str(value))
    if not match:
        raise ConfigError(f"{key}: {value!r} is not a Kubernetes quantity")
    return float(match.group(1)) * FACTORS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class StepLimits:
    """What the compiled pipeline requests for one step's pod."""

    cpu_limit: float
    memory_limit: int
    memory_request: int
    shm_size: int = 0
    gpus: int = 0


def _function(args: list[str]) -> str:
    """The component function a lightweight component's command line executes."""
    if "--function_to_execute" not in args:
        raise ConfigError(f"container args {args[:6]}...: no --function_to_execute (not a Python component)")
    return args[args.index("--function_to_execute") + 1]


def step_limits(spec: dict[str, Any], platform: dict[str, Any] | None = None) -> dict[str, StepLimits]:
    """Requests per component function from a compiled pipeline (its two YAML documents).

    Args:
        spec: The pipeline spec (first document of the compiled YAML).
        platform: The platform spec (second document), for /dev/shm volumes; optional.

    Returns:
        {function name: StepLimits}.

    Raises:
        ConfigError: a step has no CPU/memory limit, or two tasks of one function differ.
    """
    k8s = (platform or {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    found: dict[str, StepLimits] = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        container = executor.get("container")
        if not container:
            continue  # importers
        name = _function(container["args"])
        res = container.get("resources", {})
        key = f"deploymentSpec.executors.{label}.container.resources"
        if "resourceCpuLimit" not in res or "resourceMemoryLimit" not in res:
            raise ConfigError(f"{key}: step {name!r} sets no CPU/memory limit")
        shm = [m for m in k8s.get(label, {}).get("emptyDirMounts", []) if m.get("mountPath") == "/dev/shm"]
        limits = StepLimits(
            cpu_limit=quantity(res["resourceCpuLimit"], f"{key}.resourceCpuLimit"),
            memory_limit=int(quantity(res["resourceMemoryLimit"], f"{key}.resourceMemoryLimit")),
            memory_request=int(
                quantity(res.get("resourceMemoryRequest", res["resourceMemoryLimit"]), f"{key}.resourceMemoryRequest")
            ),
            shm_size=int(quantity(shm[0]["sizeLimit"], f"{label}.emptyDirMounts")) if shm else 0,
            gpus=int(res.get("accelerator", {}).get("resourceCount", 0)),
        )
        if found.setdefault(name, limits) != limits:
            raise ConfigError(
                f"{key}: tasks of {name!r} request {found[name]} and {limits}; "
                "per-step container limits are keyed by function"
            )
    return found


def host_capacity() -> tuple[float, int]:
    """(CPUs this process may use, physical memory in bytes)."""
    return float(len(os.sched_getaffinity(0))), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def container_run_args(limits: StepLimits, cpus: float, memory: int) -> dict[str, Any]:
    """docker-py ``containers.run`` arguments for one step on a machine with ``cpus`` and ``memory``."""
    import docker

    mem_limit = min(limits.memory_limit, memory)
    args: dict[str, Any] = {
        "network_mode": "none",
        "nano_cpus": int(min(limits.cpu_limit, cpus) * 1e9),
        "mem_limit": mem_limit,
        "memswap_limit": mem_limit,  # no swap beyond the limit, as in a pod
        "mem_reservation": min(limits.memory_request, mem_limit),
        "ulimits": [docker.types.Ulimit(name=n, soft=v, hard=v) for n, v in ULIMITS.items()],
    }
    if limits.shm_size:
        args["shm_size"] = min(limits.shm_size, mem_limit)
    return args


def run_args_per_function(
    pipeline: Any,
    cpus: float | None = None,
    memory: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Compile ``pipeline`` and derive every step's container arguments from its requests."""
    import yaml
    from kfp import compiler

    if cpus is None or memory is None:
        cpus, memory = host_capacity()
    with tempfile.TemporaryDirectory(prefix="pcam-compile-") as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        docs = list(yaml.safe_load_all(path.read_text()))
    limits = step_limits(docs[0], docs[1] if len(docs) > 1 else None)
    return {name: container_run_args(lim, cpus, memory) for name, lim in limits.items()}


def args_for(full_command: list[str], args_by_function: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``containers.run`` arguments of the step ``full_command`` (kfp.local's resolved command) runs."""
    name = _function(full_command)
    if name not in args_by_function:
        raise ConfigError(f"step {name!r}: no container limits derived for it")
    return args_by_function[name]


def _handler_class(args_by_function: dict[str, dict[str, Any]]) -> type:
    from kfp.local import docker_task_handler

    class PerStepDockerTaskHandler(docker_task_handler.DockerTaskHandler):
        """DockerTaskHandler whose ``containers.run`` arguments are the executed step's own."""

        def run(self):  # noqa: ANN201 - kfp's signature
            step = args_for(self.full_command, args_by_function)
            self.runner = copy.copy(self.runner)
            self.runner.container_run_args = {**self.runner.container_run_args, **step}
            log.info("step %s: %s", _function(self.full_command), describe(self.runner.container_run_args))
            return super().run()

    return PerStepDockerTaskHandler


def describe(args: dict[str, Any]) -> str:
    """One line for the log: network, CPUs, memory, shm."""
    parts = [
        f"network={args.get('network_mode')}",
        f"cpus={args['nano_cpus'] / 1e9:g}",
        f"memory={args['mem_limit'] / 2**30:.2f}GiB",
    ]
    if "shm_size" in args:
        parts.append(f"shm={args['shm_size'] / 2**30:.2f}GiB")
    if "user" in args:
        parts.append(f"user={args['user']}")
    return " ".join(parts)


@contextlib.contextmanager
def per_step_containers(args_by_function: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Make kfp.local launch each DockerRunner step with that step's own arguments.

    kfp.local picks its task handler class from ``kfp.local.docker_task_handler`` at
    every task; the subclass is swapped in for the duration of the run and restored.
    """
    from kfp.local import docker_task_handler

    original = docker_task_handler.DockerTaskHandler
    docker_task_handler.DockerTaskHandler = _handler_class(args_by_function)
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = original


def image_user(client: Any, image: str) -> tuple[int, int]:
    """The image's (uid, gid); raises DataError with the fix if the image is missing."""
    import docker

    from pcam.errors import DataError

    try:
        config = client.images.get(image).attrs["Config"]
    except docker.errors.ImageNotFound:
        raise DataError(f"{image}: no such image on the container engine; build it with make image-check") from None
    user = (config.get("User") or "0").split(":")
    if not user[0].isdigit():
        raise DataError(f"{image}: runs as user {user[0]!r}; a numeric uid is needed to own the pipeline root")
    return int(user[0]), int(user[1] if len(user) > 1 and user[1].isdigit() else user[0])


def docker_client() -> Any:
    """A docker-py client for DOCKER_HOST (podman's API socket or a Docker engine)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise PcamError(
            f"DOCKER_HOST={os.environ.get('DOCKER_HOST', '(default socket)')}: no container engine "
            f"answers ({exc.__class__.__name__}); {PODMAN_HINT}"
        ) from None
    return client


def run_container(
    cfg: ExperimentConfig, out_dir: str | os.PathLike[str], image: str, champion_uri: str | None = None
) -> tuple[Path, dict[str, list[float]]]:
    """Run the pipeline with every step in ``image``; returns (report.html path, seconds per step)."""
    from kfp import local

    from pipelines.pcam_training import build_pipeline
    from pipelines.run_local import run_local

    client = docker_client()
    uid, gid = image_user(client, image)
    out = Path(out_dir).resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {}
    if os.geteuid() == 0:
        # The mount keeps host ownership: hand the pipeline root to the image's user.
        for path in [root, *root.rglob("*")]:
            os.lchown(path, uid, gid)
    elif os.geteuid() != uid:
        base = {"user": f"{os.geteuid()}:{os.getegid()}", "environment": {"HOME": "/tmp"}}
    per_step = run_args_per_function(build_pipeline(image=image, parallelism=1, retries=False))
    runner = local.DockerRunner(**base)
    with per_step_containers(per_step):
        return run_local(cfg, out, champion_uri or str(root / "champion"), runner=runner, image=image)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.run_container``: the whole pipeline, one container per step; returns the exit code."""
    from pipelines.run_local import add_run_arguments, run_and_summarise

    parser = argparse.ArgumentParser(prog="python -m pipelines.run_container", description=__doc__.split("\n")[0])
    add_run_arguments(
        parser,
        out_help="output directory (its pipeline_root is mounted into every step)",
        source_help="data source overriding data.source; must be under OUT/pipeline_root to be "
        "visible in the containers (default: the config's)",
    )
    parser.add_argument(
        "--image",
        default=os.environ.get("PCAM_CPU_IMAGE"),
        help="image of every step (default: env PCAM_CPU_IMAGE; make image-check builds it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run() -> tuple[Path, dict[str, list[float]]]:
        if not args.image:
            raise ConfigError("--image: no image given and PCAM_CPU_IMAGE is not set")
        cfg = load_config(args.config, {"data.source": args.source, "data.format": "auto"} if args.source else None)
        return run_container(cfg, args.out, args.image)

    return run_and_summarise(run, f"DockerRunner, one container per step in {args.image}")


if __name__ == "__main__":
    sys.exit(main())
