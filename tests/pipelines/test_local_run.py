"""The whole pipeline through kfp.local on tiny real data: a 2-model x 2-policy grid, report, promote."""

import csv
import json
from pathlib import Path

import pytest

from pcam.config import config_from_dict
from pipelines import run_local

# kfp.local says, rightly, that the image name and the cluster settings do nothing here.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning"),
]
GRID_MODELS = ("cnn", "mobilenetv2")  # mobilenetv2 takes the fine-tuning branch
POLICIES = ("constant", "onecycle")


@pytest.fixture(scope="module")
def local_run(pcam_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("local_run")
    cfg = config_from_dict(
        {
            "name": "pipeline-test",
            "seed": 5,
            "data": {"source": str(pcam_sample), "format": "folders", "limit_per_split": 100},
            "shard": {"records_per_shard": 64},
            "defaults": {"epochs": 1, "batch_size": 16, "finetune_epochs": 1},
            "train": {"models": list(GRID_MODELS), "policies": list(POLICIES)},
            "evaluate": {"tta_views": ["identity", "hflip"]},
            "promote": {"champion_uri": str(out / "champion")},
        }
    )
    report, seconds = run_local.run_local(cfg, out / "run")
    return out, report, seconds


def test_report_has_one_row_per_pair(local_run):
    _, report, _ = local_run
    page = report.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and 'src="plots/' not in page
    with open(report.parent / "report_dir" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["model"], r["policy"]) for r in rows) == sorted((m, p) for m in GRID_MODELS for p in POLICIES)
    for row in rows:
        assert 0.0 <= float(row["auc"]) <= 1.0
    assert "| cnn" in (report.parent / "summary").read_text()


def test_transfer_pairs_were_fine_tuned_and_others_not(local_run):
    _, report, _ = local_run
    runs = [Path(p).parent for p in report.parents[1].glob("**/run/pair.json")]
    stages = {(json.loads((r / "pair.json").read_text())["model"], (r / "finetune").is_dir()) for r in runs}
    assert stages == {("cnn", False), ("mobilenetv2", True)}
    assert len(runs) == 4


def test_first_run_promotes_the_best_model(local_run):
    out, report, _ = local_run
    (promote_dir,) = report.parents[1].glob("**/promote")
    decision = json.loads(json.loads((promote_dir / "executor_output.json").read_text())["parameterValues"]["Output"])
    assert decision["promoted"] is True and "first" in decision["reason"]
    assert "promoted" in (promote_dir / "decision").read_text()
    assert any((out / "champion").iterdir())


def test_every_step_is_timed(local_run):
    _, _, seconds = local_run
    assert {"configure", "ingest", "split", "shard", "report", "promote"} <= set(seconds)
    trains = seconds.get("train", []) + seconds.get("train-2", [])
    assert len(trains) == 4 and len(seconds["finetune"]) == 2
    assert all(s > 0 for values in seconds.values() for s in values)
