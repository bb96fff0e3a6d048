"""The pcam training pipeline: ingest → split → shard → (train [→ fine-tune] → evaluate) per pair → report → promote.

Compile it with::

    python -m pipelines.pcam_training --image REGISTRY/pcam-gpu:TAG --output pipelines/compiled/pcam_training.yaml

The same definition runs under kfp.local (``pipelines/run_local.py``) and on a
cluster. Cluster-only settings (GPU limit, node selector, toleration, /dev/shm,
CPU/memory, retries) are set on the tasks unconditionally: kfp.local ignores them.

The (model, policy) grid is one list-of-dicts parameter. Two ``select_pairs`` steps
split it into train-only pairs and fine-tuned transfer pairs, and each half gets its
own ``ParallelFor`` (train → evaluate, and train → finetune → evaluate). One loop
with ``dsl.If``/``dsl.Else`` around fine-tuning would read more naturally, but kfp
2.17 fails to compile a ``dsl.Collected`` of an artifact made under a condition and
kfp.local cannot resolve a ``dsl.OneOf`` of artifacts, so the fan-in to the report
would work in neither place. Steps inside the loops read the resolved config from the
loop item (see ``components/select_pairs.py`` for the kfp.local bug this avoids).
"""

# No `from __future__ import annotations`: kfp reads the pipeline signature's real types.
import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, kubernetes

from components import (
    configure,
    deploy,
    evaluate,
    finetune,
    ingest,
    promote,
    report,
    select_pairs,
    shard,
    split,
    train,
)
from components._common import PCAM_IMAGE, make_component
from pcam import cluster
from pcam.config import ExperimentConfig, load_config
from pcam.errors import PcamError

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "configs" / "paper.yaml"
PIPELINE_NAME = "pcam-training"
DEFAULT_PARALLELISM = 4
RETRIES = {"num_retries": 3, "backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "3600s"}
SHM_VOLUME = "dshm"
DEPLOY_TIMEOUT = 900
"""Seconds the deploy step waits for the InferenceService to be Ready (image pulls, model load)."""


def config_param(cfg: ExperimentConfig) -> str:
    """``cfg`` as the one-line YAML the ``config_yaml`` parameter carries.

    One line, because the compiler copies parameter defaults into the compiled file's
    header comment and a multi-line default would end the comment early. YAML flow
    style rather than JSON: JSON writes 1e-05, which YAML 1.1 reads back as a string.
    """
    return yaml.safe_dump(cfg.to_dict(), default_flow_style=True, sort_keys=False, width=2**31).strip()


def config_arguments(cfg) -> dict:
    """The explicit pipeline parameters that reproduce ``cfg`` (besides ``config_yaml``)."""
    return {
        "source": cfg.data.source,
        "data_format": cfg.data.format,
        "split_mode": cfg.split.mode,
        "split_ratios": list(cfg.split.ratios),
        "seed": cfg.seed,
        "grid": [{"model": m, "policy": p} for m in cfg.train.models for p in cfg.train.policies],
        "tta_views": list(cfg.evaluate.tta_views),
        "target_sensitivity": cfg.evaluate.target_sensitivity,
    }


def _paper_defaults() -> tuple[str, dict]:
    """The study's config plus its values for the explicit parameters."""
    cfg = load_config(PAPER_CONFIG)
    return config_param(cfg), config_arguments(cfg)


def _cpu_step(task: dsl.PipelineTask, cpu: str, memory: str, cache: bool) -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task.set_caching_options(cache)


def _gpu_step(task: dsl.PipelineTask, retry: bool | dict, gpu: cluster.GpuPool) -> dsl.PipelineTask:
    """One GPU on ``gpu``'s node pool, the shared volume, a memory-backed /dev/shm, CPUs to feed the GPU.

    The ``pcam-data`` volume holds the run's checkpoints (``checkpoint_root``) and the
    pool's persistent CUDA JIT cache. ``retry`` is True (the production policy), False,
    or a ``set_retry`` keyword dict (tests use a short backoff).
    """
    task.set_accelerator_type(gpu.resource).set_accelerator_limit(1)
    task.set_cpu_request("4").set_cpu_limit("8").set_memory_request("16G").set_memory_limit("32G")
    kubernetes.add_node_selector(task, gpu.label_key, gpu.label_value)
    kubernetes.add_toleration(task, key=gpu.taint_key, operator="Equal", value=gpu.taint_value, effect=gpu.taint_effect)
    # Docker's default /dev/shm is 64 MB; TensorFlow input pipelines need more.
    kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit="8Gi")
    kubernetes.mount_pvc(task, pvc_name=cluster.PVC_NAME, mount_path=cluster.DATA_MOUNT_PATH)
    # GPUs without native code in the TF wheel (Blackwell) JIT-compile every kernel on
    # first use; the cache on the volume makes that a once-per-pool cost, not per pod.
    task.set_env_variable("CUDA_CACHE_PATH", gpu.cuda_cache_path)
    task.set_env_variable("CUDA_CACHE_MAXSIZE", str(cluster.CUDA_CACHE_MAXSIZE))
    if retry:  # preemptible GPU nodes: train/finetune resume from the run's checkpoints
        task.set_retry(**(RETRIES if retry is True else retry))
    return task.set_caching_options(True)


def _components(image: str) -> dict[str, Any]:
    """Every component of the training pipeline, bound to ``image``, by name."""
    return {
        name: make_component(getattr(module, name), image)
        for name, module in (
            ("configure", configure),
            ("select_pairs", select_pairs),
            ("ingest", ingest),
            ("split", split),
            ("shard", shard),
            ("train", train),
            ("finetune", finetune),
            ("evaluate", evaluate),
            ("report", report),
            ("promote", promote),
            ("deploy_gate", deploy),
            ("deploy", deploy),
        )
    }


def _serve_when_promoted(ops: dict, decision: Any, config_yaml: Any, serving: dict) -> None:
    """Deploy the new champion as an InferenceService, only when promote promoted and a name is set.

    Args:
        ops: The pipeline's components (:func:`_components`).
        decision: promote's output (decision.json as a string).
        config_yaml: The resolved config.
        serving: deploy's serving arguments (serving_name, serving_namespace, ...).
    """
    gate = _cpu_step(
        ops["deploy_gate"](decision=decision, serving_name=serving["serving_name"]), "200m", "256M", cache=False
    )
    with dsl.If(gate.output == True, name="promoted"):  # noqa: E712 - a kfp condition, not Python
        served = _cpu_step(
            ops["deploy"](decision=decision, config_yaml=config_yaml, **serving), "500m", "512M", cache=False
        )
        kubernetes.mount_pvc(served, pvc_name=cluster.PVC_NAME, mount_path=cluster.DATA_MOUNT_PATH)


def build_pipeline(
    image: str | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
    pipeline_root: str | None = None,
    retries: bool | dict = True,
    gpu: cluster.GpuPool | None = None,
):
    """Build the pipeline with every component running in ``image``.

    Args:
        image: Container image of every step (default: env PCAM_IMAGE).
        parallelism: Most (model, policy) pairs trained at once per loop (a compile-time
            setting: ParallelFor takes no pipeline parameter here). 0 = unlimited.
        pipeline_root: Where artifacts go (gs://, minio://, a local dir); default: the server's.
        retries: Retry train/finetune with backoff (for preempted GPU nodes). kfp.local
            2.17 honours retry policies too, where a failure is a bug, not a preemption,
            and retrying only delays the error by minutes; run_local turns them off. A dict
            is a ``set_retry`` policy of its own.
        gpu: The GPU node pool of train/finetune/evaluate (default: ``cluster.GpuPool()``).
    """
    image = image or PCAM_IMAGE
    gpu = gpu or cluster.GpuPool()
    ops = _components(image)
    config_yaml_default, d = _paper_defaults()

    def score_pair(pair, shards_dir, run_id: str, finetuned: bool) -> dsl.PipelineTask:
        """One loop item's train (then finetune) then evaluate, on the GPU pool; returns the evaluate task."""
        common = dict(
            shards=shards_dir, config_yaml=pair.config_yaml, model_name=pair.model, policy=pair.policy, run_id=run_id
        )
        model = _gpu_step(ops["train"](**common), retry=retries, gpu=gpu).outputs["model"]
        if finetuned:
            model = _gpu_step(ops["finetune"](trained=model, **common), retry=retries, gpu=gpu).outputs["model"]
        stage = "finetune" if finetuned else "train"
        return _gpu_step(ops["evaluate"](model=model, stage=stage, **common), retry=False, gpu=gpu)

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=pipeline_root)
    def pcam_training(
        config_yaml: str = config_yaml_default,
        source: str = d["source"],
        data_format: str = d["data_format"],
        split_mode: str = d["split_mode"],
        split_ratios: list = d["split_ratios"],
        seed: int = d["seed"],
        grid: list = d["grid"],
        epochs: int = 0,
        finetune_epochs: int = 0,
        batch_size: int = 0,
        learning_rate: float = 0.0,
        finetune_learning_rate: float = 0.0,
        weights_uri: str = "",
        tta_views: list = d["tta_views"],
        target_sensitivity: float = d["target_sensitivity"],
        champion_uri: str = f"{cluster.DATA_MOUNT_PATH}/champion",
        checkpoint_root: str = cluster.CHECKPOINT_ROOT,
        serving_name: str = "",
        serving_namespace: str = cluster.NAMESPACE,
        canary_traffic_percent: int = 100,
        serving_gpu: bool = False,
    ):
        """Train and compare PCam classifiers over a (model, policy) grid, report, promote the best.

        Args:
            config_yaml: ExperimentConfig as YAML (default: configs/paper.yaml, the study).
            source: Data source: local path, gs:// or https:// URI, ``official`` or ``synthetic``.
            data_format: auto, hdf5, kaggle, folders or synthetic.
            split_mode: random (stratified, grouped by slide) or official.
            split_ratios: Train/valid/test fractions of a random split.
            seed: Seed for split, shuffling, augmentation and initialisation.
            grid: The (model, policy) pairs: a list of {"model": ..., "policy": ...}.
            epochs: Stage-1 epochs for every model; 0 keeps the config's values.
            finetune_epochs: Fine-tuning epochs of the transfer models; 0 keeps the config's.
            batch_size: Batch size for every model; 0 keeps the config's values.
            learning_rate: Stage-1 learning rate for every model; 0 keeps the config's values.
            finetune_learning_rate: Fine-tuning learning rate; 0 keeps the config's values.
            weights_uri: Weights file (local or gs://) for the transfer models; empty keeps the config's.
            tta_views: Test-time augmentation views (identity, hflip, vflip, rot90, ...).
            target_sensitivity: Sensitivity of the reported operating point.
            champion_uri: Champion location (local dir, e.g. on the pcam-data volume, or gs://);
                empty keeps the config's, and no location at all skips promotion.
            checkpoint_root: Where train/finetune checkpoint every epoch so a retried pod resumes
                (default: the pcam-data volume; or gs://...): ``<root>/<run id>/<model>-<policy>-<stage>``,
                deleted once the pair's evaluate succeeds. Empty keeps the config's train.checkpoint_uri.
            serving_name: KServe InferenceService serving the champion, deployed after each
                promotion (needs KServe and manifests/serving); empty: no deployment.
            serving_namespace: Namespace of the InferenceService.
            canary_traffic_percent: Traffic share of a newly promoted model (100: full rollout).
            serving_gpu: Serve on one GPU of the GPU node pool.
        """
        cfg = ops["configure"](
            config_yaml=config_yaml,
            source=source,
            data_format=data_format,
            split_mode=split_mode,
            split_ratios=split_ratios,
            seed=seed,
            epochs=epochs,
            finetune_epochs=finetune_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            finetune_learning_rate=finetune_learning_rate,
            weights_uri=weights_uri,
            tta_views=tta_views,
            target_sensitivity=target_sensitivity,
            champion_uri=champion_uri,
            checkpoint_root=checkpoint_root,
        )
        _cpu_step(cfg, "500m", "512M", cache=True)
        resolved = cfg.output

        data = _cpu_step(ops["ingest"](config_yaml=resolved), "2", "8G", cache=True)
        parts = _cpu_step(ops["split"](dataset=data.outputs["dataset"], config_yaml=resolved), "1", "4G", cache=True)
        shards = _cpu_step(
            ops["shard"](
                dataset=data.outputs["dataset"], split_index=parts.outputs["split_index"], config_yaml=resolved
            ),
            "4",
            "16G",
            cache=True,
        )
        shards_dir = shards.outputs["shards"]

        scratch = _cpu_step(
            ops["select_pairs"](grid=grid, config_yaml=resolved, transfer=False), "500m", "512M", cache=True
        ).set_display_name("select-train-only-pairs")
        # Every retry of a task keeps the run id, so it finds its own checkpoints there.
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        with dsl.ParallelFor(scratch.output, parallelism=parallelism) as pair:
            scored = score_pair(pair, shards_dir, run_id, finetuned=False)

        transfer = _cpu_step(
            ops["select_pairs"](grid=grid, config_yaml=resolved, transfer=True), "500m", "512M", cache=True
        ).set_display_name("select-fine-tuned-pairs")
        with dsl.ParallelFor(transfer.output, parallelism=parallelism) as tpair:
            tscored = score_pair(tpair, shards_dir, run_id, finetuned=True)

        # One dsl.Collected per consumer: the compiler rewrites each instance in place.
        summary = ops["report"](
            scratch_runs=dsl.Collected(scored.outputs["run"]),
            transfer_runs=dsl.Collected(tscored.outputs["run"]),
            dataset=data.outputs["dataset"],
            shards=shards_dir,
            config_yaml=resolved,
        )
        _cpu_step(summary, "1", "4G", cache=False).set_env_variable("PCAM_IMAGE", image)
        decision = ops["promote"](
            scratch_runs=dsl.Collected(scored.outputs["run"]),
            transfer_runs=dsl.Collected(tscored.outputs["run"]),
            shards=shards_dir,
            config_yaml=resolved,
        ).after(summary)
        _cpu_step(decision, "2", "8G", cache=False)
        # A local champion_uri lives on the shared volume; a gs:// one ignores the mount.
        kubernetes.mount_pvc(decision, pvc_name=cluster.PVC_NAME, mount_path=cluster.DATA_MOUNT_PATH)

        _serve_when_promoted(
            ops,
            decision.outputs["Output"],
            resolved,
            dict(
                serving_name=serving_name,
                serving_namespace=serving_namespace,
                canary_traffic_percent=canary_traffic_percent,
                gpu=serving_gpu,
                timeout_seconds=DEPLOY_TIMEOUT,
            ),
        )

    return pcam_training


def compile_pipeline(
    output: str | Path,
    image: str | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
    pipeline_root: str | None = None,
    gpu: cluster.GpuPool | None = None,
) -> Path:
    """Compile the pipeline to ``output`` (YAML) for GPU pool ``gpu`` and return its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, parallelism, pipeline_root, gpu=gpu), str(output))
    return output


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """The GPU node pool as compile options (both pipelines use them)."""
    parser.add_argument(
        "--gpu",
        default="",
        metavar="ACCELERATOR",
        help=f"GPU node pool by accelerator: the value of {cluster.GPU_NODE_LABEL_KEY} "
        f"(default {cluster.GPU_NODE_LABEL_VALUE}; e.g. nvidia-tesla-a100, nvidia-h100-80gb)",
    )
    parser.add_argument(
        "--gpu-label",
        default="",
        metavar="KEY=VALUE",
        help="GPU node pool by any node label instead (e.g. nvidia.com/gpu.product=NVIDIA-L4)",
    )
    parser.add_argument(
        "--gpu-taint",
        default="",
        metavar="KEY=VALUE:EFFECT",
        help=f"taint the GPU nodes carry (default {cluster.GPU_TAINT_KEY}="
        f"{cluster.GPU_TAINT_VALUE}:{cluster.GPU_TAINT_EFFECT})",
    )


def gpu_pool_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> cluster.GpuPool:
    """The GPU pool that ``add_gpu_arguments``' flags name; a bad one exits 2 with one line."""
    try:
        return cluster.gpu_pool(args.gpu, args.gpu_label, args.gpu_taint)
    except PcamError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.pcam_training``: compile the training pipeline; prints the YAML's path."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.pcam_training", description="Compile the pcam training pipeline to YAML."
    )
    parser.add_argument("--image", default=PCAM_IMAGE, help=f"image of every step (default: {PCAM_IMAGE})")
    parser.add_argument("--output", default="pipelines/compiled/pcam_training.yaml", help="YAML to write")
    parser.add_argument(
        "--parallelism",
        type=int,
        default=DEFAULT_PARALLELISM,
        help="most pairs trained at once per loop; 0 = unlimited",
    )
    parser.add_argument("--pipeline-root", default=None, help="artifact root (gs://..., minio://...)")
    add_gpu_arguments(parser)
    args = parser.parse_args(argv)
    gpu = gpu_pool_from_args(parser, args)
    path = compile_pipeline(args.output, args.image, args.parallelism, args.pipeline_root, gpu)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
