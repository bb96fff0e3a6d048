import base64
import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from pcam import evaluate as E
from pcam import report as R
from pcam.errors import DataError
from pcam.fsutil import write_json
from pcam.report.context import make_context
from pcam.report.load import load_history

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot270")


@pytest.fixture(scope="module")
def patches(pcam_sample):
    images, labels = [], []
    for label in (0, 1):
        for path in sorted((pcam_sample / "valid" / str(label)).glob("*.jpg"))[:40]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels), [f"p{i}" for i in range(len(labels))]


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(inputs)
    x = keras.layers.Conv2D(2, 5, strides=4)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _history(epochs, stage, start=1, seconds=2.0):
    rng = np.random.default_rng(epochs + start)
    return [
        {
            "epoch": start + i,
            "stage": stage,
            "loss": 0.7 - 0.05 * i,
            "accuracy": 0.6 + 0.03 * i,
            "auc": 0.65 + 0.03 * i,
            "val_loss": 0.72 - 0.04 * i + rng.random() * 0.01,
            "val_accuracy": 0.58 + 0.03 * i,
            "val_auc": 0.6 + 0.03 * i,
            "lr": 1e-3,
            "seconds": seconds,
            "images_per_second": 100.0,
        }
        for i in range(epochs)
    ]


def make_run(root, model, policy, seed, patches, *, finetune=False, one_class=False):
    """A run directory with a real evaluation of a tiny model on real patches."""
    images, labels, ids = patches
    if one_class:
        images, labels, ids = images[:30], labels[:30], ids[:30]
    run = root / f"{model}-{policy}"
    write_json(run / "pair.json", {"model": model, "policy": policy})
    write_json(run / "train" / "history.json", _history(3, "train"))
    write_json(run / "train" / "train.json", {"model": model, "policy": policy, "train_seconds": 6.5, "params": 1234})
    if finetune:
        # as the fine-tune step writes it: the stage-1 rows, then its own
        write_json(
            run / "finetune" / "history.json", _history(3, "train") + _history(2, "finetune", start=4, seconds=3.0)
        )
        write_json(
            run / "finetune" / "train.json", {"model": model, "policy": policy, "train_seconds": 6.0, "params": 1234}
        )
    result = E.evaluate_arrays(_model(seed), images, labels, ids, views=VIEWS, progress=False)
    result.metrics.update({"split": "test", "model": model, "policy": policy})
    E.write_evaluation(run / "evaluate", result)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, patches):
    root = tmp_path_factory.mktemp("runs")
    # given out of family order on purpose
    return [
        make_run(root, "mobilenetv2", "onecycle", 3, patches, finetune=True),
        make_run(root, "cnn", "plateau", 2, patches),
        make_run(root, "cnn", "constant", 1, patches),
        make_run(root, "logreg", "constant", 4, patches, one_class=True),
    ]


CONTEXT = {
    "experiment": "pcam-test",
    "source": "synthetic",
    "format": "synthetic",
    "split_mode": "random",
    "seed": 42,
    "config_digest": "ab" * 32,
    "image": "localhost/pcam-gpu:abc123",
    "data_checksums": {"images.npy": "cd" * 32},
    "step_seconds": {"evaluate": 4.0, "ingest": 1.5, "train": 30.0},  # sorted by name, as steps.json is
    "versions": {"kfp": "2.17.3"},
    "notes": ["tiny test run"],
}


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report"
    return out, R.build_report(runs, out, CONTEXT)


def test_summary_csv_has_one_sorted_row_per_pair(built, runs):
    out, summary = built
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:10] == [
        "model",
        "policy",
        "split",
        "tta",
        "f1",
        "auc",
        "recall",
        "precision",
        "accuracy",
        "train_seconds",
    ]
    assert [(r["model"], r["policy"]) for r in rows] == [
        ("logreg", "constant"),
        ("cnn", "constant"),
        ("cnn", "plateau"),
        ("mobilenetv2", "onecycle"),
    ]
    assert {r["tta"] for r in rows} == {"5"} and {r["split"] for r in rows} == {"test"}
    metrics = json.loads((runs[2] / "evaluate" / "metrics.json").read_text())  # cnn constant
    assert float(rows[1]["auc"]) == pytest.approx(metrics["tta"]["auc"])
    assert float(rows[1]["auc_single"]) == pytest.approx(metrics["single"]["auc"])
    assert float(rows[1]["specificity_at_target"]) == pytest.approx(metrics["tta"]["specificity_at_target"])
    assert rows[0]["auc"] == ""  # one class: undefined, empty cell, no crash
    assert float(rows[3]["train_seconds"]) == pytest.approx(12.5)  # stage 1 + fine-tune
    assert rows[3]["epochs"] == "5" and rows[1]["params"] == "1234"


def test_best_row_is_the_highest_auc(built):
    _, summary = built
    aucs = {(r["model"], r["policy"]): r["auc"] for r in summary["rows"]}
    best = max((v, k) for k, v in aucs.items() if v is not None)[1]
    assert (summary["best"]["model"], summary["best"]["policy"]) == best


def test_html_is_self_contained_and_states_provenance(built):
    out, summary = built
    page = (out / "report.html").read_text()
    # an old-style context without split facts: the page says it cannot tell, never that it is disjoint
    assert "SYNTHETIC DATA" in page and "does not say whether the evaluated split &#x27;test&#x27;" in page
    for needle in (
        "ab" * 32,
        "localhost/pcam-gpu:abc123",
        "cd" * 32,
        "kfp 2.17.3",
        "keras ",
        "numpy ",
        "scikit-learn ",
        "tensorflow ",
        "0.985",
        "0.944",
        "0.622",
        "slide-disjoint",
        "tiny test run",
        'class="best"',
        "one class only",
    ):
        assert needle in page, needle
    assert not re.search(r'src="(?!data:image/png;base64,)', page)  # every image embedded
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # 4 histories + 8 confusion matrices + 4 per-pair ROC + all-pairs ROC + steps
    assert len(images) == 18
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert len(page) < 2_500_000
    assert sorted(p.name for p in (out / "plots").iterdir()) == summary["plots"]
    assert "history-mobilenetv2-onecycle.png" in summary["plots"]
    assert "fine-tuning from epoch 4" in page
    steps = page[page.index("Step timings") :]
    assert steps.index(">ingest<") < steps.index(">train<") < steps.index(">evaluate<")  # pipeline order


def test_markdown_has_table_and_context(built):
    out, _ = built
    md = (out / "summary.md").read_text()
    assert "SYNTHETIC DATA" in md and "| model | policy |" in md and "**(best)**" in md
    assert md.count("\n| cnn") == 3  # two pairs + the reference row


def test_real_data_has_no_synthetic_banner_and_infers_synthetic_from_source(runs, tmp_path):
    summary = R.build_report(runs[:1], tmp_path / "r", {"source": "/data/pcam", "split_mode": "official"})
    page = (tmp_path / "r" / "report.html").read_text()
    assert "SYNTHETIC DATA" not in page and "Real data: /data/pcam" in page and "Random split" not in page
    assert summary["synthetic"] is False
    assert make_context({"source": "synthetic"}, []).synthetic is True
    assert make_context({"source": "/x", "format": "synthetic"}, []).synthetic is True


def test_history_of_a_finetune_only_run_dir(tmp_path):
    write_json(tmp_path / "finetune" / "history.json", _history(3, "train") + _history(2, "finetune", start=4))
    history, boundary = load_history(tmp_path)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5] and boundary == 4
    write_json(tmp_path / "train" / "history.json", _history(3, "train"))
    assert load_history(tmp_path) == (history, 4)


def test_missing_metrics_names_the_file(tmp_path):
    write_json(tmp_path / "run" / "pair.json", {"model": "cnn", "policy": "constant"})
    with pytest.raises(DataError, match=r"evaluate/metrics\.json: missing"):
        R.build_report([tmp_path / "run"], tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_cli_report(runs, tmp_path, capsys):
    from pcam.cli import main

    ctx = tmp_path / "context.json"
    ctx.write_text(json.dumps(CONTEXT))
    assert main(["report", "--runs", str(runs[1]), "--out", str(tmp_path / "o"), "--context", str(ctx)]) == 0
    assert str(tmp_path / "o" / "report.html") in capsys.readouterr().out


CARVED_TEST = {  # split.json facts of a source with train only, test carved at random (no slide ids)
    "origin": {
        "train": {"from": "train", "carved": True, "text": "source train minus the carved valid and test"},
        "valid": {"from": "train", "carved": True, "text": "carved from source train (20.0%)"},
        "test": {"from": "train", "carved": True, "text": "carved from source train (10.0%)"},
    },
    "pairs": {
        f"{a}|{b}": {
            "slide_disjoint": False,
            "basis": "carved at random from the same patches without slide ids: the two may share slides",
        }
        for a, b in R.PAIR_NAMES
    },
}
HELD_OUT_TEST = {  # the sample's case: test = source valid, valid carved from train
    "origin": {
        "train": {"from": "train", "carved": True, "text": "source train minus the carved valid"},
        "valid": {"from": "train", "carved": True, "text": "carved from source train (10.0%)"},
        "test": {"from": "valid", "carved": False, "text": "source valid"},
    },
    "pairs": {
        "train|valid": {"slide_disjoint": False, "basis": "carved at random"},
        "train|test": {"slide_disjoint": True, "basis": "different split folders of the source"},
        "valid|test": {"slide_disjoint": True, "basis": "different split folders of the source"},
    },
}


def test_evaluated_split_sharing_slides_with_train_is_flagged_beside_the_numbers(runs, tmp_path):
    summary = R.build_report(
        runs[1:2], tmp_path / "r", {"source": "/data/kaggle", "split_mode": "official", "split_facts": CARVED_TEST}
    )
    page = (tmp_path / "r" / "report.html").read_text()
    comparison = page[page.index("<h2>Comparison</h2>") :]
    # beside the numbers (before the table), at the top, and in the model card's Run table
    assert comparison.index("NOT slide-disjoint from train") < comparison.index("<table")
    assert page.count("NOT slide-disjoint from train") == 2
    assert "test (slide-disjoint from train: NO)" in page and "MAY SHARE SLIDES" in page
    assert "no slide is shared between train, valid and test" not in page  # the old, unconditional claim
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "> **WARNING: The evaluated split 'test' is NOT slide-disjoint from train" in md
    assert md.index("WARNING") < md.index("| model | policy |")
    assert "| cnn **(best)** | plateau | test | NO |" in md
    with open(tmp_path / "r" / "summary.csv") as handle:
        assert [r["slide_disjoint_from_train"] for r in csv.DictReader(handle)] == ["NO"]
    assert summary["split_warnings"] and summary["rows"][0]["slide_disjoint_from_train"] == "NO"


def test_slide_disjoint_evaluation_states_its_basis_without_warning(runs, tmp_path):
    summary = R.build_report(
        runs[1:2], tmp_path / "r", {"source": "/data/sample", "split_mode": "official", "split_facts": HELD_OUT_TEST}
    )
    page = (tmp_path / "r" / "report.html").read_text()
    assert "NOT slide-disjoint" not in page and "test (slide-disjoint from train: yes)" in page
    assert "train / test: slide-disjoint (different split folders of the source)" in page
    assert "train / valid: MAY SHARE SLIDES (carved at random)" in page  # said, but not about the evaluated split
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "WARNING" not in md and "| cnn **(best)** | plateau | test | yes |" in md
    assert "  - test: source valid" in md
    assert summary["split_warnings"] == []
