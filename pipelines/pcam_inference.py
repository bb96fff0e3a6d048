"""The pcam inference pipeline: apply the champion (or a given model) to a folder of slides and patches.

    list ─► predict_slide (ParallelFor: one pod per slide) ─► report (HTML with every heatmap + slides.csv)
        └─► predict_patches (when the folder holds patches) ─► predictions.csv

Compile it with::

    python -m pipelines.pcam_inference --image REGISTRY/pcam-gpu:TAG --output pipelines/compiled/pcam_inference.yaml \
        [--gpu-steps | --gpu ACCELERATOR]

``--gpu`` gives each slide step one GPU on the GPU node pool (node selector and
toleration as in training); without it the steps run on CPU nodes. The same
definition runs under kfp.local (tests/pipelines/test_inference_pipeline.py), which
ignores the resource settings. A local ``model_uri``/``source_uri`` on a cluster must
be on the pcam-data volume (mounted at ``pcam.cluster.DATA_MOUNT_PATH``); gs:// works
anywhere with credentials.

Resuming inside a pod: a retried pod starts with an empty output directory (the
launcher uploads outputs only on success), so a preempted slide step scores its slide
again; ``pcam predict`` itself resumes when rerun on the same ``--out``.
"""

# No `from __future__ import annotations`: kfp reads the pipeline signature's real types.
import argparse
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import predict_list, predict_patches, predict_report, predict_slide
from components._common import PCAM_IMAGE, make_component
from pcam import cluster
from pipelines.pcam_training import add_gpu_arguments, gpu_pool_from_args

PIPELINE_NAME = "pcam-inference"
DEFAULT_PARALLELISM = 8
DEFAULT_OUTPUT = "pipelines/compiled/pcam_inference.yaml"
MALLOC_ARENA_MAX = "2"


def _on_volume(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Mount the shared data volume: where a local champion and local slide folders live on a cluster."""
    kubernetes.mount_pvc(task, pvc_name=cluster.PVC_NAME, mount_path=cluster.DATA_MOUNT_PATH)
    return task


def build_pipeline(
    image: str | None = None,
    gpu: cluster.GpuPool | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
    pipeline_root: str | None = None,
):
    """Build the inference pipeline with every step running in ``image``.

    Args:
        image: Container image of every step (default: env PCAM_IMAGE).
        gpu: The GPU node pool for one GPU per slide step; None runs them on CPU nodes.
        parallelism: Most slides predicted at once. 0 = unlimited.
        pipeline_root: Where artifacts go; default: the server's.
    """
    image = image or PCAM_IMAGE
    list_op = make_component(predict_list.predict_list, image)
    slide_op = make_component(predict_slide.predict_slide, image)
    patches_op = make_component(predict_patches.predict_patches, image)
    report_op = make_component(predict_report.predict_report, image)

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=pipeline_root)
    def pcam_inference(
        source_uri: str,
        model_uri: str = f"{cluster.DATA_MOUNT_PATH}/champion",
        mpp: float = 0.0,
        stride: int = 96,
        slide_views: int = 1,
        patch_views: int = 5,
        min_tissue: float = 0.25,
        top_k: int = 10,
    ):
        """Predict every slide (one pod each) and the patches of a folder; heatmaps in one HTML page.

        Args:
            source_uri: Folder (local on the data volume, or gs://) of slides and/or patches.
            model_uri: Champion location or model directory (local or gs://).
            mpp: Level-0 µm/px for slides whose metadata lacks it; 0 = from the slide.
            stride: Tile stride in PCam pixels (96: adjacent tiles, 48: half overlap).
            slide_views: TTA views per slide tile (1 = none).
            patch_views: TTA views per patch.
            min_tissue: Share of a tile that must be tissue for it to be scored.
            top_k: Slide score: mean of the k most probable tiles (beside the maximum).
        """
        slides = _on_volume(list_op(source_uri=source_uri, kind="slides")).set_display_name("list-slides")
        slides.set_cpu_request("500m").set_memory_request("1G").set_caching_options(False)
        with dsl.ParallelFor(slides.output, parallelism=parallelism) as slide_uri:
            slide = _on_volume(
                slide_op(
                    model_uri=model_uri,
                    slide_uri=slide_uri,
                    mpp=mpp,
                    stride=stride,
                    views=slide_views,
                    min_tissue=min_tissue,
                    top_k=top_k,
                )
            )
            slide.set_cpu_request("2").set_cpu_limit("4").set_memory_request("4G").set_memory_limit("8G")
            if gpu:
                slide.set_accelerator_type(gpu.resource).set_accelerator_limit(1)
                kubernetes.add_node_selector(slide, gpu.label_key, gpu.label_value)
                kubernetes.add_toleration(
                    slide, key=gpu.taint_key, operator="Equal", value=gpu.taint_value, effect=gpu.taint_effect
                )
                slide.set_env_variable("CUDA_CACHE_PATH", gpu.cuda_cache_path)
            slide.set_retry(num_retries=2, backoff_duration="60s")
            # glibc's per-thread malloc arenas (reader threads + TensorFlow's) held ~150 MiB
            # more at the peak of a 57,600-tile slide: 1,023 -> 872 MiB with two arenas.
            slide.set_env_variable("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        # Zero or one patch source: a loop instead of dsl.If (kfp.local 2.17 cannot resolve
        # a condition on a task output inside this DAG).
        patch_sources = _on_volume(list_op(source_uri=source_uri, kind="patches")).set_display_name("list-patches")
        patch_sources.set_cpu_request("500m").set_memory_request("1G").set_caching_options(False)
        with dsl.ParallelFor(patch_sources.output) as patch_source:
            patches = _on_volume(patches_op(model_uri=model_uri, source_uri=patch_source, views=patch_views))
            patches.set_cpu_request("2").set_memory_request("4G").set_memory_limit("8G")
            patches.set_env_variable("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        report = report_op(results=dsl.Collected(slide.outputs["result"]))
        report.set_cpu_request("500m").set_memory_request("1G").set_caching_options(False)

    return pcam_inference


def compile_pipeline(
    output: str | Path,
    image: str | None = None,
    gpu: cluster.GpuPool | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
    pipeline_root: str | None = None,
) -> Path:
    """Compile the inference pipeline to ``output`` (YAML) and return its path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, gpu, parallelism, pipeline_root), str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.pcam_inference``: compile the inference pipeline; prints the YAML's path."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.pcam_inference", description="Compile the pcam inference pipeline to YAML."
    )
    parser.add_argument("--image", default=PCAM_IMAGE, help=f"image of every step (default: {PCAM_IMAGE})")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="YAML to write")
    parser.add_argument(
        "--gpu-steps", action="store_true", help="one GPU per slide step, on the pool of --gpu/--gpu-label/--gpu-taint"
    )
    add_gpu_arguments(parser)
    parser.add_argument(
        "--parallelism", type=int, default=DEFAULT_PARALLELISM, help="most slides predicted at once; 0 = unlimited"
    )
    parser.add_argument("--pipeline-root", default=None, help="artifact root (gs://..., minio://...)")
    args = parser.parse_args(argv)
    gpu = gpu_pool_from_args(parser, args) if args.gpu_steps or args.gpu or args.gpu_label else None
    print(compile_pipeline(args.output, args.image, gpu, args.parallelism, args.pipeline_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
