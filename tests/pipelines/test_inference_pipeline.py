"""The pcam_inference pipeline: compiled structure, and a real kfp.local run over two slides and patches."""

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from pcam import cluster
from pcam.fsutil import file_sha256
from tests.conftest import REPO

IMAGE = "registry.example/pcam/pcam-gpu:0123abcd"
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning"),
]


def _compile(tmp_path: Path, *flags: str) -> tuple[dict, dict]:
    out = tmp_path / "pcam_inference.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.pcam_inference", "--image", IMAGE, "--output", str(out), *flags],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compiled_pipeline_fans_out_one_task_per_slide(tmp_path):
    spec, platform = _compile(tmp_path, "--gpu-steps")
    assert spec["pipelineInfo"]["name"] == "pcam-inference"
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 2  # the slides, and zero or one patch source
    producers = sorted(t["parameterIterator"]["items"]["inputParameter"] for t in loops)
    assert producers == ["pipelinechannel--predict-list-2-Output", "pipelinechannel--predict-list-Output"]
    resources = spec["deploymentSpec"]["executors"]["exec-predict-slide"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "1"
    env = spec["deploymentSpec"]["executors"]["exec-predict-slide"]["container"]["env"]
    assert {"name": "MALLOC_ARENA_MAX", "value": "2"} in env
    assert platform["exec-predict-slide"]["nodeSelector"]["labels"] == {
        cluster.GPU_NODE_LABEL_KEY: cluster.GPU_NODE_LABEL_VALUE
    }
    _, pool = _compile(tmp_path, "--gpu", "nvidia-l4")  # the training pipeline's pool options
    assert pool["exec-predict-slide"]["nodeSelector"]["labels"] == {cluster.GPU_NODE_LABEL_KEY: "nvidia-l4"}
    assert platform["exec-predict-list"]["pvcMount"][0]["mountPath"] == cluster.DATA_MOUNT_PATH
    outputs = spec["components"]["comp-predict-report"]["outputDefinitions"]["artifacts"]
    assert outputs["html"]["artifactType"]["schemaTitle"] == "system.HTML"
    cpu_spec, _ = _compile(tmp_path)  # without --gpu: no accelerator
    assert "accelerator" not in cpu_spec["deploymentSpec"]["executors"]["exec-predict-slide"]["container"].get(
        "resources", {}
    )


@pytest.mark.slow
def test_kfp_local_run_predicts_every_slide_and_the_patches(test_slide, mean_model_dir, kaggle_sample, tmp_path):
    from kfp import local

    from pipelines.pcam_inference import build_pipeline

    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(test_slide.path, source / "first.tif")
    shutil.copy(test_slide.path, source / "second.tif")
    patches = sorted((kaggle_sample / "test").iterdir())[:4]  # the bare-clone fixture holds fewer
    assert patches
    for p in patches:
        shutil.copy(p, source / p.name)
    champion = tmp_path / "champion"
    champion.mkdir()
    shutil.copy(mean_model_dir / "model.keras", champion / "model.keras")
    (champion / "metrics.json").write_text(
        json.dumps(
            {
                "model_sha256": file_sha256(champion / "model.keras"),
                "views": ["identity"],
                "tta": {"sensitivity_threshold": 0.55},
                "single": {"sensitivity_threshold": 0.55},
            }
        )
    )
    root = tmp_path / "pipeline_root"
    root.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        build_pipeline(image=IMAGE, parallelism=2)(source_uri=str(source), model_uri=str(champion), patch_views=1)
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    (page,) = run.glob("**/predict-report/html")
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and "first.tif" in text and "second.tif" in text
    (table,) = run.glob("**/predict-report/table")
    rows = list(csv.DictReader(open(table)))
    assert sorted(r["slide"] for r in rows) == ["first.tif", "second.tif"]
    assert rows[0]["max"] == rows[1]["max"]  # the same pixels give the same score in both pods
    (predictions,) = run.glob("**/predict-patches/predictions")  # one patch source: one step
    patch_rows = list(csv.DictReader(open(predictions / "predictions.csv")))
    assert len(patch_rows) == len(patches) and all(r["label_at_operating_point"] in ("0", "1") for r in patch_rows)


def test_submit_sends_the_inference_package_and_wants_its_source(tmp_path, capsys):
    from pipelines import submit
    from pipelines.pcam_inference import compile_pipeline
    from tests.pipelines.fake_kfp_server import FakeKfpServer

    package = compile_pipeline(tmp_path / "pcam_inference.yaml", IMAGE)
    server = FakeKfpServer().start()
    try:
        common = ["run", "--host", server.url, "--experiment", "pcam-test", "--package", str(package)]
        assert submit.main([*common, "--param", "stride=48"]) == 2
        assert "needs --param source_uri=..." in capsys.readouterr().err
        assert submit.main([*common, "--param", "source_uri=gs://bucket/slides", "--param", "stride=48"]) == 0
        (run,) = server.posted("/runs")
        assert run["runtime_config"]["parameters"] == {"source_uri": "gs://bucket/slides", "stride": 48}
        assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "pcam-inference"
    finally:
        server.stop()
