"""The compiled pipeline: structure, image, cluster settings (no library or cluster needed)."""

import subprocess
import sys

import pytest
import yaml

from pcam import cluster
from pcam.config import TRANSFER_MODELS, config_from_dict, load_config
from pipelines.pcam_training import PAPER_CONFIG, RETRIES, compile_pipeline
from tests.conftest import REPO

IMAGE = "registry.example/pcam/pcam-gpu:0123abcd"
GPU_EXECUTORS = ("exec-train", "exec-train-2", "exec-finetune", "exec-evaluate", "exec-evaluate-2")
CPU_EXECUTORS = ("exec-configure", "exec-ingest", "exec-split", "exec-shard", "exec-report", "exec-promote")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(pipeline spec, kubernetes platform spec) of the pipeline compiled by the CLI, as `make compile` does."""
    out = tmp_path_factory.mktemp("compiled") / "pcam_training.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.pcam_training", "--image", IMAGE, "--output", str(out), "--parallelism", "3"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _loop_tasks(spec):
    loops = {name: task for name, task in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in task}
    return {
        name: spec["components"][task["componentRef"]["name"]]["dag"]["tasks"] for name, task in loops.items()
    }, loops


def test_every_step_runs_the_image_from_the_command_line(compiled):
    spec, _ = compiled
    images = {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()}
    assert set(images.values()) == {IMAGE}
    assert {*GPU_EXECUTORS, *CPU_EXECUTORS, "exec-select-pairs"} <= set(images)


def test_components_do_not_pip_install_kfp(compiled):
    spec, _ = compiled
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_grid_fans_out_into_two_parallel_loops_over_the_grid_parameter(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    bodies, loops = _loop_tasks(spec)
    assert len(loops) == 2
    selectors = set()
    for loop in loops.values():
        assert loop["iteratorPolicy"]["parallelismLimit"] == 3
        items = loop["parameterIterator"]["items"]["inputParameter"]
        selector = items.removeprefix("pipelinechannel--").removesuffix("-Output")
        selectors.add(selector)
        # the loop iterates over a select-pairs output that is computed from the grid parameter
        assert root[selector]["inputs"]["parameters"]["grid"]["componentInputParameter"] == "grid"
    assert {root[s]["inputs"]["parameters"]["transfer"]["runtimeValue"]["constant"] for s in selectors} == {True, False}
    refs = sorted(
        sorted(t["componentRef"]["name"].removesuffix("-2") for t in body.values()) for body in bodies.values()
    )
    assert refs == [["comp-evaluate", "comp-finetune", "comp-train"], ["comp-evaluate", "comp-train"]]
    assert spec["root"]["inputDefinitions"]["parameters"]["grid"]["parameterType"] == "LIST"
    # in-loop steps read the resolved config from the loop item (kfp.local workaround)
    for loop_name, body in bodies.items():
        item = loops[loop_name]["parameterIterator"]["itemInput"]
        for task in body.values():
            config = task["inputs"]["parameters"]["config_yaml"]
            assert config["componentInputParameter"] == item
            assert config["parameterExpressionSelector"] == 'parseJson(string_value)["config_yaml"]'


def test_local_build_has_no_retries():
    from pipelines.pcam_training import build_pipeline

    spec = build_pipeline(IMAGE, parallelism=1, retries=False).pipeline_spec
    for component in spec.components.values():
        for task in component.dag.tasks.values():
            assert not task.HasField("retry_policy")


def test_report_and_promote_collect_every_evaluation(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    for step in ("report", "promote"):
        artifacts = root[step]["inputs"]["artifacts"]
        producers = {artifacts[k]["taskOutputArtifact"]["producerTask"] for k in ("scratch_runs", "transfer_runs")}
        assert producers == {"for-loop-1", "for-loop-2"}
        inputs = spec["components"][f"comp-{step}"]["inputDefinitions"]["artifacts"]
        assert inputs["scratch_runs"]["isArtifactList"] and inputs["transfer_runs"]["isArtifactList"]
    assert "report" in root["promote"]["dependentTasks"]


def test_gpu_steps_request_a_gpu_on_the_gpu_node_pool(compiled):
    spec, k8s = compiled
    for name in GPU_EXECUTORS:
        resources = spec["deploymentSpec"]["executors"][name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == cluster.GPU_RESOURCE
        assert resources["accelerator"]["resourceCount"] == "1"
        assert k8s[name]["nodeSelector"]["labels"] == cluster.gpu_node_selector()
        assert k8s[name]["tolerations"] == [cluster.gpu_toleration()]
        shm = k8s[name]["emptyDirMounts"]
        assert [(m["mountPath"], m["medium"]) for m in shm] == [("/dev/shm", "Memory")]


def test_cpu_steps_have_requests_and_limits_and_no_gpu(compiled):
    spec, k8s = compiled
    for name in CPU_EXECUTORS:
        resources = spec["deploymentSpec"]["executors"][name]["container"]["resources"]
        assert "accelerator" not in resources
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources[key], (name, key)
        assert "nodeSelector" not in k8s.get(name, {})


def test_train_and_finetune_retry_with_backoff(compiled):
    spec, _ = compiled
    bodies, _ = _loop_tasks(spec)
    tasks = {name: task for body in bodies.values() for name, task in body.items()}
    for name in ("train", "train-2", "finetune"):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] == RETRIES["num_retries"]
        assert policy["backoffDuration"] == RETRIES["backoff_duration"]
        assert policy["backoffFactor"] == RETRIES["backoff_factor"]
    assert "retryPolicy" not in tasks["evaluate"]


def test_caching_on_for_data_steps_and_off_for_report_and_promote(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    for name in ("ingest", "split", "shard"):
        assert root[name]["cachingOptions"] == {"enableCache": True}
    for name in ("report", "promote"):
        assert not root[name]["cachingOptions"].get("enableCache", False)


def test_promote_mounts_the_shared_volume_for_a_local_champion(compiled):
    spec, k8s = compiled
    mounts = k8s["exec-promote"]["pvcMount"]
    assert [(m["constant"], m["mountPath"]) for m in mounts] == [(cluster.PVC_NAME, cluster.DATA_MOUNT_PATH)]
    default = spec["root"]["inputDefinitions"]["parameters"]["champion_uri"]["defaultValue"]
    assert default.startswith(cluster.DATA_MOUNT_PATH + "/")


def test_checkpoints_outlive_the_pod_by_default_keyed_by_run_id(compiled):
    """Section 1 of issue 11: a retried train/finetune pod finds its checkpoints on the shared volume."""
    spec, k8s = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["checkpoint_root"]["defaultValue"] == cluster.CHECKPOINT_ROOT
    assert cluster.CHECKPOINT_ROOT.startswith(cluster.DATA_MOUNT_PATH + "/")
    configure = spec["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"]["checkpoint_root"]
    assert configure == {"componentInputParameter": "checkpoint_root"}
    bodies, _ = _loop_tasks(spec)
    tasks = {name: task for body in bodies.values() for name, task in body.items()}
    for name in ("train", "train-2", "finetune", "evaluate", "evaluate-2"):
        # KFP's run id: the same for every retry of a task in one run, new for every run.
        assert tasks[name]["inputs"]["parameters"]["run_id"] == {
            "runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}
        }
    for name in GPU_EXECUTORS:
        mounts = [(m["constant"], m["mountPath"]) for m in k8s[name]["pvcMount"]]
        assert mounts == [(cluster.PVC_NAME, cluster.DATA_MOUNT_PATH)], name


def test_ui_artifacts_evaluate_metrics_and_report_html(compiled):
    spec, _ = compiled
    for name in ("comp-evaluate", "comp-evaluate-2"):
        outputs = spec["components"][name]["outputDefinitions"]["artifacts"]
        assert outputs["classification"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    outputs = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert outputs["html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"
    decision = spec["components"]["comp-promote"]["outputDefinitions"]["artifacts"]["decision"]
    assert decision["artifactType"]["schemaTitle"] == "system.Markdown"


def test_defaults_reproduce_the_study(compiled):
    spec, _ = compiled
    params = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    paper = load_config(PAPER_CONFIG)
    assert config_from_dict(yaml.safe_load(params["config_yaml"])) == paper
    assert len(params["grid"]) == len(paper.train.models) * len(paper.train.policies) == 12
    assert {p["model"] for p in params["grid"]} == set(paper.train.models)
    assert params["source"] == "official" and params["split_mode"] == "random"
    assert params["split_ratios"] == [0.7, 0.2, 0.1] and params["seed"] == 42
    assert params["tta_views"] == list(paper.evaluate.tta_views)
    assert params["target_sensitivity"] == 0.95
    # the per-model values come from the config unless a parameter sets them
    assert params["epochs"] == 0 and params["learning_rate"] == 0 and params["weights_uri"] == ""
    assert set(TRANSFER_MODELS) <= {p["model"] for p in params["grid"]}


def test_pipeline_root_is_configurable(tmp_path):
    out = compile_pipeline(tmp_path / "p.yaml", IMAGE, parallelism=0, pipeline_root="gs://bucket/pcam-root")
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["defaultPipelineRoot"] == "gs://bucket/pcam-root"
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert all("iteratorPolicy" not in t for t in loops)  # 0 = unlimited
