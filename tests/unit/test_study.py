"""`pcam run`: the whole study in-process on tiny real data."""

import csv
import json

import yaml

from pcam.cli import main
from pcam.fsutil import file_sha256


def test_pcam_run_writes_a_row_per_pair_and_a_report_with_plots(tmp_path, pcam_sample):
    config = {
        "name": "tiny-study",
        "seed": 3,
        "data": {"source": str(pcam_sample), "format": "folders", "limit_per_split": 48},
        "split": {"mode": "official"},
        "shard": {"records_per_shard": 32},
        "defaults": {"epochs": 1, "batch_size": 16},
        "train": {"models": ["logreg", "cnn"], "policies": ["constant", "plateau"]},
        "evaluate": {"batch_size": 64},
        "promote": {"champion_uri": str(tmp_path / "champion")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"

    assert main(["run", "--config", str(path), "--out", str(out)]) == 0

    with open(out / "report" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["model"], r["policy"]) for r in rows) == [
        ("cnn", "constant"),
        ("cnn", "plateau"),
        ("logreg", "constant"),
        ("logreg", "plateau"),
    ]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert row["split"] == "test"
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert "tiny-study" in html or str(pcam_sample) in html
    # official mode on train/ + valid/ folders: the held-out valid folder is evaluated, and the report says so
    assert "test (slide-disjoint from train: yes)" in html and "train / valid: MAY SHARE SLIDES" in html
    assert {r["slide_disjoint_from_train"] for r in rows} == {"yes"}
    steps = yaml.safe_load((out / "steps.json").read_text())
    assert {"ingest", "split", "shard", "train", "evaluate", "report", "promote"} <= set(steps)
    # the first champion: the best evaluated run's own model, as that run's evaluation scored it
    pointer = json.loads((tmp_path / "champion" / "champion.json").read_text())
    best = out / "runs" / f"{pointer['model']}-{pointer['policy']}"
    assert pointer["model_sha256"] == file_sha256(best / "train" / "model.keras")
    assert pointer["model_sha256"] == json.loads((best / "evaluate" / "metrics.json").read_text())["model_sha256"]


def test_step_seconds_are_summed_from_the_pairs_outputs(tmp_path):
    from pcam.fsutil import write_json
    from pcam.study import step_seconds_from_runs

    history = [{"epoch": 1, "stage": "train", "seconds": 10.5}]
    write_json(tmp_path / "cnn-constant" / "train" / "history.json", history)
    write_json(
        tmp_path / "resnet50-constant" / "finetune" / "history.json",
        [*history, {"epoch": 2, "stage": "finetune", "seconds": 7.0}],
    )
    # a finished fine-tune leaves its model (pcam.artifacts.final_model_dir looks for it)
    (tmp_path / "resnet50-constant" / "finetune" / "model.keras").write_bytes(b"")
    for name in ("cnn-constant", "resnet50-constant"):
        write_json(tmp_path / name / "evaluate" / "metrics.json", {"seconds": 2.0})
    assert step_seconds_from_runs([tmp_path / "cnn-constant", tmp_path / "resnet50-constant"]) == {
        "train": 21.0,
        "finetune": 7.0,
        "evaluate": 4.0,
    }
