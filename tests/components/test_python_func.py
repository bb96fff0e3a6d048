"""Every component body run in-process through ``.python_func``: seconds, not kfp.local's minutes.

The artifacts are kfp's own classes (``dsl.Dataset(uri=...)`` etc.), so each body sees
exactly what the executor hands it on a cluster; the metric artifacts record into their
real ``metadata``. One chain shares its work, on 80 real PCam patches: configure →
ingest → split → shard → train (logreg, and MobileNetV2 at 32 px) → finetune →
evaluate → report → promote; its tests are ``slow`` (about 50 s on two busy cores, most of
it MobileNetV2's two steps). configure, select_pairs, the prologue and the inference
components run in seconds (``-m "not slow"``: about 10 s, most of it importing TensorFlow).
tests/components/test_components.py runs the same components through kfp.local (the
executor, the subprocess, artifact passing).
"""

import gc
import json
import math
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.configure import configure_op
from components.deploy import deploy_gate_op, deploy_op
from components.evaluate import evaluate_op
from components.finetune import finetune_op
from components.ingest import ingest_op
from components.predict_list import predict_list_op
from components.predict_patches import predict_patches_op
from components.predict_report import predict_report_op
from components.predict_slide import predict_slide_op
from components.promote import promote_op
from components.report import report_op
from components.select_pairs import select_pairs_op
from components.shard import shard_op
from components.split import split_op
from components.train import train_op
from pcam.config import config_from_dict
from pcam.errors import ConfigError
from tests.components.test_components import PARAMS as KFP_LOCAL_PARAMS

LIMIT = 40  # per source split: 40 train + 40 valid real patches
RUN_ID = "run-0001"
# 60/20/20: the test split (16 patches) holds both classes, so every metric is defined.
PARAMS = {**KFP_LOCAL_PARAMS, "split_ratios": [0.6, 0.2, 0.2], "seed": 5, "tta_views": ["identity", "hflip"]}


@pytest.fixture(autouse=True, scope="module")
def _unfreeze_gc():
    # train/finetune/evaluate freeze the GC (their process ends next on a cluster); here the process goes on.
    yield
    gc.unfreeze()


def _out(root: Path, kind: type, name: str) -> dsl.Artifact:
    """An output artifact as the executor makes it: its uri under the root, the parent directory present."""
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    return kind(name=name, uri=str(root / name))


def _configure(config: dict, **overrides) -> str:
    return configure_op.python_func(config_yaml=yaml.safe_dump(config), **{**PARAMS, **overrides})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("python_func")


@pytest.fixture(scope="module")
def config_yaml(pcam_sample, root) -> str:
    """configure's output for the chain: milliseconds, no TensorFlow."""
    config = {
        "name": "python-func",
        "data": {"source": "synthetic", "limit_per_split": LIMIT},
        "shard": {"records_per_shard": 32},
        "models": {"mobilenetv2": {"image_size": 32, "epochs": 3}, "cnn": {"batch_size": 8}},
        "train": {"policies": ["constant"], "steps_per_epoch": 1, "checkpoint_uri": str(root / "checkpoints")},
    }
    return _configure(config, source=str(pcam_sample))


@pytest.fixture(scope="module")
def chain(config_yaml, root) -> dict:
    """Each training-pipeline component once, each feeding the next: {output name: artifact or value}.

    About 50 s on 2 busy cores (MobileNetV2's train and finetune steps are most of it), hence ``slow``.
    """
    out = {"config_yaml": config_yaml}
    cfg = out["config_yaml"]
    out["dataset"] = _out(root, dsl.Dataset, "dataset")
    ingest_op.python_func(config_yaml=cfg, dataset=out["dataset"])
    out["split_index"] = _out(root, dsl.Dataset, "split_index")
    split_op.python_func(dataset=out["dataset"], config_yaml=cfg, split_index=out["split_index"])
    out["shards"] = _out(root, dsl.Dataset, "shards")
    shard_op.python_func(dataset=out["dataset"], split_index=out["split_index"], config_yaml=cfg, shards=out["shards"])
    common = {"shards": out["shards"], "config_yaml": cfg, "policy": "constant", "run_id": RUN_ID}
    for name in ("logreg", "mobilenetv2"):
        out[f"{name}/train"] = _out(root, dsl.Model, f"{name}/train")
        train_op.python_func(model_name=name, model=out[f"{name}/train"], **common)
    out["checkpoints_before_evaluate"] = sorted(p.name for p in (root / "checkpoints" / RUN_ID).iterdir())
    out["mobilenetv2/finetune"] = _out(root, dsl.Model, "mobilenetv2/finetune")
    finetune_op.python_func(
        trained=out["mobilenetv2/train"], model_name="mobilenetv2", model=out["mobilenetv2/finetune"], **common
    )
    for name, stage in (("logreg", "train"), ("mobilenetv2", "finetune")):
        run, metrics = _out(root, dsl.Dataset, f"{name}/run"), _out(root, dsl.Metrics, f"{name}/metrics")
        classification = _out(root, dsl.ClassificationMetrics, f"{name}/classification")
        evaluate_op.python_func(
            model=out[f"{name}/{stage}"],
            model_name=name,
            stage=stage,
            run=run,
            metrics=metrics,
            classification=classification,
            **common,
        )
        out.update({f"{name}/run": run, f"{name}/metrics": metrics, f"{name}/classification": classification})
    out["root"] = root
    return out


def test_configure_applies_parameters_and_rejects_a_bad_one_naming_the_key(config_yaml, pcam_sample):
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    assert cfg.data.source == str(pcam_sample) and cfg.data.format == "folders" and cfg.seed == 5
    assert cfg.model("mobilenetv2").epochs == 1 and cfg.model("logreg").epochs == 1  # beats the model's section
    assert cfg.model("cnn").batch_size == 16 and cfg.model("mobilenetv2").image_size == 32
    assert cfg.model("mobilenetv2").learning_rate == 1e-3  # 0 keeps the config's value
    assert cfg.evaluate.tta_views == ("identity", "hflip") and cfg.split.ratios == (0.6, 0.2, 0.2)
    with pytest.raises(ConfigError, match="split.mode"):
        _configure({}, source="synthetic", split_mode="by-hospital")
    with pytest.raises(ConfigError, match=r"config_yaml:2:1: invalid YAML: duplicate key 'seed' \(first at line 1\)"):
        configure_op.python_func(config_yaml="seed: 1\nseed: 2\n", source="synthetic", **PARAMS)
    tuned = yaml.safe_load(_configure({}, source="synthetic", weights_uri="/w.h5", champion_uri="/champion"))
    assert tuned["models"]["resnet50"]["weights"] == tuned["models"]["mobilenetv2"]["weights"] == "/w.h5"
    assert tuned["promote"]["champion_uri"] == "/champion"


def test_select_pairs_splits_the_grid_and_names_a_bad_pair(config_yaml):
    grid = [{"model": m, "policy": p} for m in ("logreg", "mobilenetv2") for p in ("constant", "plateau")]
    pairs = {t: select_pairs_op.python_func(grid=grid, config_yaml=config_yaml, transfer=t) for t in (0, 1)}
    assert [(p["model"], p["policy"]) for p in pairs[1]] == [("mobilenetv2", "constant"), ("mobilenetv2", "plateau")]
    assert [(p["model"], p["policy"]) for p in pairs[0]] == [("logreg", "constant"), ("logreg", "plateau")]
    assert all(p["config_yaml"] == config_yaml for p in pairs[0] + pairs[1])
    with pytest.raises(ConfigError, match=r"grid\[1\]\.policy: unknown policy 'cosine'"):
        select_pairs_op.python_func(grid=[grid[0], {"model": "cnn", "policy": "cosine"}], config_yaml="{}", transfer=0)
    with pytest.raises(ConfigError, match="grid: needs at least one"):
        select_pairs_op.python_func(grid=[], config_yaml="{}", transfer=False)


@pytest.mark.slow
def test_ingest_split_shard_write_their_directories_and_metadata(chain, pcam_sample):
    dataset = chain["dataset"]
    manifest = json.loads(Path(dataset.path, "manifest.json").read_text())
    assert manifest["count"] == 2 * LIMIT
    assert dataset.metadata == {
        "source": str(pcam_sample),
        "format": "folders",
        "count": 2 * LIMIT,
        "counts": manifest["counts"],
    }
    split = json.loads(Path(chain["split_index"].path, "split.json").read_text())
    assert sorted(i for part in split["indices"].values() for i in part) == list(range(2 * LIMIT))
    assert chain["split_index"].metadata == {"mode": "random", "counts": split["counts"]}
    index = json.loads(Path(chain["shards"].path, "index.json").read_text())
    records = {s: len(v) for s, v in split["indices"].items()}
    assert {s: v["records"] for s, v in index["splits"].items()} == records == chain["shards"].metadata["records"]


@pytest.mark.slow
def test_train_and_finetune_write_models_and_checkpoints_under_the_run_id(chain):
    for key in ("logreg/train", "mobilenetv2/train", "mobilenetv2/finetune"):
        assert Path(chain[key].path, "model.keras").read_bytes()[:2] == b"PK"
    name, stage = "mobilenetv2", "finetune"
    assert chain[f"{name}/{stage}"].metadata == {
        "model": name,
        "policy": "constant",
        "stage": stage,
        "framework": "keras",
    }
    h1 = json.loads(Path(chain["mobilenetv2/train"].path, "history.json").read_text())
    h2 = json.loads(Path(chain["mobilenetv2/finetune"].path, "history.json").read_text())
    assert len(h2) == len(h1) + 1 and h2[-1]["stage"] == "finetune"
    # train.checkpoint_uri narrowed to <root>/<run id> (pcam.run_checkpoints.for_run)
    assert chain["checkpoints_before_evaluate"] == ["logreg-constant-train", "mobilenetv2-constant-train"]


@pytest.mark.slow
def test_evaluate_publishes_run_dir_metrics_and_deletes_the_pairs_checkpoints(chain):
    run = Path(chain["mobilenetv2/run"].path)
    assert json.loads((run / "pair.json").read_text()) == {"model": "mobilenetv2", "policy": "constant"}
    assert (run / "finetune" / "model.keras").is_file() and not (run / "finetune" / "checkpoint").exists()
    result = json.loads((run / "evaluate" / "metrics.json").read_text())
    scalars = chain["mobilenetv2/metrics"].metadata
    assert set(scalars) == {
        f"{m}_{n}" for m in ("tta", "single") for n in ("f1", "auc", "recall", "precision", "accuracy")
    }
    for key, value in scalars.items():
        mode, name = key.split("_")
        assert value == pytest.approx(result[mode][name]) and 0.0 <= value <= 1.0
    cm = chain["mobilenetv2/classification"].metadata
    assert sum(map(sum, (r["row"] for r in cm["confusionMatrix"]["rows"]))) == result["n"]
    points = cm["confidenceMetrics"]
    assert 2 <= len(points) <= 200 and all(math.isfinite(p["confidenceThreshold"]) for p in points)
    meta = chain["mobilenetv2/run"].metadata
    ckpt = chain["root"] / "checkpoints" / RUN_ID
    assert meta["checkpoints_deleted"] == [
        str(ckpt / "mobilenetv2-constant-train"),
        str(ckpt / "mobilenetv2-constant-finetune"),
    ]
    assert list(ckpt.iterdir()) == []  # logreg's went with its own evaluation
    assert {k: meta[k] for k in ("model", "policy", "stage")} == {
        "model": "mobilenetv2",
        "policy": "constant",
        "stage": "finetune",
    }


@pytest.mark.slow
def test_report_builds_the_page_and_table_over_every_pair(chain):
    root = chain["root"]
    outs = {
        name: _out(root, kind, f"report/{name}")
        for name, kind in (("report_dir", dsl.Dataset), ("html", dsl.HTML), ("summary", dsl.Markdown))
    }
    report_op.python_func(
        scratch_runs=[chain["logreg/run"]],
        transfer_runs=[chain["mobilenetv2/run"]],
        dataset=chain["dataset"],
        shards=chain["shards"],
        config_yaml=chain["config_yaml"],
        **outs,
    )
    summary = Path(outs["summary"].path).read_text()
    assert "logreg" in summary and "mobilenetv2" in summary
    page = Path(outs["html"].path).read_text()
    assert "<html" in page.lower() and "data:image/png;base64," in page
    assert Path(outs["report_dir"].path, "summary.csv").read_text().count("\n") >= 3  # header + two pairs


@pytest.mark.slow
def test_promote_crowns_the_best_run_and_says_why_without_a_champion_location(chain, tmp_path):
    runs = {
        "scratch_runs": [chain["logreg/run"]],
        "transfer_runs": [chain["mobilenetv2/run"]],
        "shards": chain["shards"],
    }
    decision = _out(tmp_path, dsl.Markdown, "decision.md")
    result = json.loads(promote_op.python_func(config_yaml=chain["config_yaml"], decision=decision, **runs))
    assert result == {"promoted": False, "reason": "no champion location (promote.champion_uri) configured"}
    assert "promote.champion_uri" in Path(decision.path).read_text()

    champion = tmp_path / "champion"
    cfg = yaml.safe_load(chain["config_yaml"])
    cfg["promote"]["champion_uri"] = str(champion)
    result = json.loads(promote_op.python_func(config_yaml=yaml.safe_dump(cfg), decision=decision, **runs))
    best = max(("logreg", "mobilenetv2"), key=lambda n: chain[f"{n}/metrics"].metadata["tta_auc"])
    assert result["promoted"] is True and result["candidate"] == {"model": best, "policy": "constant"}
    assert "**promoted**: True" in Path(decision.path).read_text()
    assert any(champion.rglob("serving/1/saved_model.pb"))
    assert deploy_gate_op.python_func(decision=json.dumps(result), serving_name="pcam") is True
    # deploy reads the champion from the config: this one is a local folder off the shared volume
    with pytest.raises(ConfigError, match="cannot fetch"):
        _deploy(json.dumps(result), yaml.safe_dump(cfg))


def _deploy(decision: str, config_yaml: str) -> str:
    return deploy_op.python_func(
        decision=decision,
        config_yaml=config_yaml,
        serving_name="pcam",
        serving_namespace="pcam",
        canary_traffic_percent=100,
        gpu=False,
        timeout_seconds=5,
    )


def test_deploy_gate_and_deploy_do_nothing_unless_promoted(config_yaml):
    promoted, not_promoted = json.dumps({"promoted": True, "version": "v1"}), json.dumps({"promoted": False})
    assert deploy_gate_op.python_func(decision=promoted, serving_name="pcam") is True
    assert deploy_gate_op.python_func(decision=promoted, serving_name="") is False  # no name: no deployment
    assert deploy_gate_op.python_func(decision=not_promoted, serving_name="pcam") is False
    assert _deploy(not_promoted, config_yaml) == ""
    with pytest.raises(ConfigError, match="promote decision is not JSON"):
        deploy_gate_op.python_func(decision="promoted", serving_name="pcam")


def test_inference_components_list_predict_and_gather(test_slide, mean_model_dir, kaggle_sample, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "slide.tif").write_bytes(test_slide.path.read_bytes())
    patches = sorted((kaggle_sample / "test").iterdir())[:3]
    for p in patches:
        (source / p.name).write_bytes(p.read_bytes())
    slides = predict_list_op.python_func(source_uri=str(source), kind="slides")
    assert [Path(s).name for s in slides] == ["slide.tif"]
    assert predict_list_op.python_func(source_uri=str(source), kind="patches") == [str(source)]
    with pytest.raises(ConfigError, match="kind: 'tiles'"):
        predict_list_op.python_func(source_uri=str(source), kind="tiles")

    predictions = _out(tmp_path, dsl.Dataset, "patches")
    predict_patches_op.python_func(
        model_uri=str(mean_model_dir), source_uri=str(source), views=1, predictions=predictions
    )
    rows = Path(predictions.path, "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(patches)

    result = _out(tmp_path, dsl.Dataset, "slide")
    predict_slide_op.python_func(
        model_uri=str(mean_model_dir),
        slide_uri=slides[0],
        mpp=0.0,
        stride=96,
        views=1,
        min_tissue=0.25,
        top_k=3,
        result=result,
    )
    slide_dir = Path(result.path, "slides", "slide.tif")
    assert (slide_dir / "heatmap.png").is_file() and (slide_dir / "tiles.csv").is_file()
    html, table = _out(tmp_path, dsl.HTML, "page"), _out(tmp_path, dsl.Dataset, "slides.csv")
    predict_report_op.python_func(results=[result], html=html, table=table)
    assert Path(table.path).read_text().count("\n") == 2  # header + the slide
    assert "data:image/png;base64," in Path(html.path).read_text()


def test_the_prologue_names_config_yaml_and_the_run_id_when_they_are_wrong(tmp_path):
    from pcam import step

    with pytest.raises(ConfigError, match="config_yaml: must hold a mapping at the top level"):
        step.start("- a list\n")
    with pytest.raises(ConfigError, match="config key 'split.mode'"):
        step.start("split: {mode: by-hospital}\n")
    with pytest.raises(ConfigError, match="run_id: '{{\\$.pipeline_job_uuid}}' is not a resolved KFP run id"):
        step.start(f"train: {{checkpoint_uri: {tmp_path}}}\n", "{{$.pipeline_job_uuid}}")
    assert step.start(f"train: {{checkpoint_uri: {tmp_path}}}\n", "r1").train.checkpoint_uri == f"{tmp_path}/r1"
    assert step.start("{}").train.checkpoint_uri == ""
    with pytest.raises(ConfigError, match="per_model: unknown key"):
        step.configure(
            "{}",
            source="synthetic",
            data_format="auto",
            split_mode="random",
            split_ratios=[0.7, 0.2, 0.1],
            seed=0,
            tta_views=["identity"],
            target_sensitivity=0.9,
            per_model={"epoch": 3},
        )
