"""Each component run through kfp.local (SubprocessRunner, this venv) on tiny real PCam data.

One chain shares its work: configure → ingest (120 real patches) → split → shard →
train (MobileNetV2, stage 1) → finetune → evaluate. kfp.local calls a component
directly only when it takes no input artifacts, so the artifact steps run inside a
small pipeline that returns every output. report and promote take artifact lists
(dsl.Collected); tests/pipelines/test_local_run.py runs them in the real pipeline.
"""

import json
import math
from typing import NamedTuple

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import ClassificationMetrics, Dataset, Metrics, Model

from components.configure import configure_op
from components.evaluate import evaluate_op
from components.finetune import finetune_op
from components.ingest import ingest_op
from components.select_pairs import select_pairs_op
from components.shard import shard_op
from components.split import split_op
from components.train import train_op
from pcam.config import config_from_dict

# kfp.local says, rightly, that the image name and the cluster settings do nothing here.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning"),
]
LIMIT = 60  # per source split: 60 train + 60 valid real patches


# configure's parameters besides config_yaml and source (test_python_func.py starts from them too).
PARAMS = dict(
    data_format="folders",
    split_mode="random",
    split_ratios=[0.7, 0.2, 0.1],
    seed=3,
    epochs=1,
    finetune_epochs=1,
    batch_size=16,
    learning_rate=0.0,
    finetune_learning_rate=0.0,
    weights_uri="",
    tta_views=["identity", "hflip", "rot90"],
    target_sensitivity=0.9,
    champion_uri="",
)


def _configure(config: dict, **overrides):
    args = dict(PARAMS, config_yaml=yaml.safe_dump(config), source=config["data"]["source"])
    return configure_op(**{**args, **overrides})


class Chain(NamedTuple):
    dataset: Dataset
    split_index: Dataset
    shards: Dataset
    stage1: Model
    stage2: Model
    run: Dataset
    metrics: Metrics
    classification: ClassificationMetrics


@dsl.pipeline
def component_chain(config_yaml: str) -> Chain:
    """ingest → split → shard → train → finetune → evaluate; kfp.local passes input artifacts only inside a pipeline."""
    data = ingest_op(config_yaml=config_yaml)
    parts = split_op(dataset=data.outputs["dataset"], config_yaml=config_yaml)
    shards = shard_op(
        dataset=data.outputs["dataset"], split_index=parts.outputs["split_index"], config_yaml=config_yaml
    ).outputs["shards"]
    stage1 = train_op(shards=shards, config_yaml=config_yaml, model_name="mobilenetv2", policy="constant")
    stage2 = finetune_op(
        trained=stage1.outputs["model"],
        shards=shards,
        config_yaml=config_yaml,
        model_name="mobilenetv2",
        policy="constant",
    )
    scored = evaluate_op(
        model=stage2.outputs["model"],
        shards=shards,
        config_yaml=config_yaml,
        model_name="mobilenetv2",
        policy="constant",
        stage="finetune",
    )
    return Chain(
        dataset=data.outputs["dataset"],
        split_index=parts.outputs["split_index"],
        shards=shards,
        stage1=stage1.outputs["model"],
        stage2=stage2.outputs["model"],
        run=scored.outputs["run"],
        metrics=scored.outputs["metrics"],
        classification=scored.outputs["classification"],
    )


@pytest.fixture(scope="module")
def chain(pcam_sample, tmp_path_factory):
    """Every single-output component once, each feeding the next: {name: output}."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path_factory.mktemp("kfp_components"))
    )
    config = {
        "name": "components",
        "data": {"source": str(pcam_sample), "limit_per_split": LIMIT},
        "shard": {"records_per_shard": 32},
        "models": {"mobilenetv2": {"epochs": 5, "learning_rate": 0.0005}, "cnn": {"batch_size": 8}},
        "train": {"models": ["cnn", "mobilenetv2"], "policies": ["constant"], "steps_per_epoch": 2},
    }
    cfg_yaml = _configure(config).output
    return {"config_yaml": cfg_yaml, **component_chain(config_yaml=cfg_yaml).outputs}


def test_configure_applies_parameters_to_every_model(chain):
    cfg = config_from_dict(yaml.safe_load(chain["config_yaml"]))
    assert cfg.seed == 3 and cfg.split.mode == "random" and cfg.data.format == "folders"
    # an explicit parameter beats both the defaults and the per-model section
    assert cfg.model("mobilenetv2").epochs == 1 and cfg.model("logreg").epochs == 1
    assert cfg.model("cnn").batch_size == 16
    assert cfg.model("mobilenetv2").learning_rate == 0.0005  # 0 keeps the config's value
    assert cfg.evaluate.tta_views == ("identity", "hflip", "rot90")
    assert cfg.train.steps_per_epoch == 2  # untouched keys come through


def test_configure_rejects_a_bad_parameter_naming_the_key(chain, capfd):
    with pytest.raises(RuntimeError):
        _configure({"data": {"source": "synthetic"}}, split_mode="by-hospital")
    assert "split.mode" in capfd.readouterr().out


def test_select_pairs_splits_the_grid_by_fine_tuning(chain):
    grid = [{"model": m, "policy": p} for m in ("cnn", "mobilenetv2") for p in ("constant", "plateau")]
    transfer = select_pairs_op(grid=grid, config_yaml=chain["config_yaml"], transfer=True)
    assert [(p["model"], p["policy"]) for p in transfer.output] == [
        ("mobilenetv2", "constant"),
        ("mobilenetv2", "plateau"),
    ]
    assert all(p["config_yaml"] == chain["config_yaml"] for p in transfer.output)


def test_ingest_split_shard_write_their_directories(chain):
    dataset = chain["dataset"]
    manifest = json.loads(open(f"{dataset.path}/manifest.json").read())
    assert manifest["count"] == dataset.metadata["count"] == 2 * LIMIT
    split = json.loads(open(f"{chain['split_index'].path}/split.json").read())
    assert sorted(i for part in split["indices"].values() for i in part) == list(range(2 * LIMIT))
    index = json.loads(open(f"{chain['shards'].path}/index.json").read())
    assert {s: v["records"] for s, v in index["splits"].items()} == {s: len(v) for s, v in split["indices"].items()}


def test_train_then_finetune_continue_one_history(chain):
    import os

    stage1, stage2 = chain["stage1"], chain["stage2"]
    for model in (stage1, stage2):
        assert os.path.getsize(f"{model.path}/model.keras") > 1_000_000
    assert stage2.metadata == {"model": "mobilenetv2", "policy": "constant", "stage": "finetune", "framework": "keras"}
    h1 = json.loads(open(f"{stage1.path}/history.json").read())
    h2 = json.loads(open(f"{stage2.path}/history.json").read())
    assert len(h2) == len(h1) + 1 and h2[-1]["stage"] == "finetune"
    assert [r["epoch"] for r in h2[: len(h1)]] == [r["epoch"] for r in h1]


def test_evaluate_publishes_run_dir_metrics_and_classification_metrics(chain):
    outputs = chain
    run = outputs["run"].path
    assert json.loads(open(f"{run}/pair.json").read()) == {"model": "mobilenetv2", "policy": "constant"}
    result = json.loads(open(f"{run}/evaluate/metrics.json").read())
    assert (open(f"{run}/finetune/model.keras", "rb").read(2)) == b"PK"  # zip: the model travels with its scores
    scalars = outputs["metrics"].metadata
    for mode in ("tta", "single"):
        for name in ("f1", "auc", "recall", "precision", "accuracy"):
            assert scalars[f"{mode}_{name}"] == pytest.approx(result[mode][name])
            assert 0.0 <= scalars[f"{mode}_{name}"] <= 1.0
    cm = outputs["classification"].metadata
    rows = [r["row"] for r in cm["confusionMatrix"]["rows"]]
    assert sum(map(sum, rows)) == result["n"]
    points = cm["confidenceMetrics"]
    assert 2 <= len(points) <= 200
    assert all(math.isfinite(p["confidenceThreshold"]) for p in points)
