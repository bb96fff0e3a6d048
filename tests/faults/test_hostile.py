"""A hostile user's inputs, through the real CLI in a child process (issue 15).

Each case asserts what a user sees in a terminal: the exit code, exactly one stderr line
naming the file or key at fault, and that nothing they own was destroyed and nothing
half-written was left. The child's environment does NOT set TF_CPP_MIN_LOG_LEVEL: the
CLI must keep TensorFlow's start-up lines out of the way by itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import REPO, pcam_command

CNN_FAST = """\
name: hostile
seed: {seed}
defaults: {{epochs: {epochs}, batch_size: 16, bn_momentum: 0.8, learning_rate: {lr}, max_learning_rate: {lr}}}
train: {{models: [cnn], policies: [{policy}], steps_per_epoch: 2}}
evaluate: {{split: test, batch_size: 64}}
"""


def pcam(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        pcam_command(*map(str, args)), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) pcam\.")


def refused(result: subprocess.CompletedProcess, *needles: str, code: int = 2, after_work: bool = False) -> str:
    """Exit ``code``, one stderr line, no traceback, and every needle in that line.

    ``after_work``: the command did work before it failed, so pcam's own progress log
    lines may precede the error line; nothing else may (no TensorFlow start-up lines).
    """
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    if after_work:
        lines = [line for line in lines if not LOG_LINE.match(line)]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def image_tree(pcam_sample: Path, tmp_path: Path) -> Path:
    """<root>/train/{0,1}/ and valid/{0,1}/ with 4 real patches each."""
    root = tmp_path / "raw"
    for split in ("train", "valid"):
        for label in ("0", "1"):
            (root / split / label).mkdir(parents=True)
            for src in sorted((pcam_sample / split / label).iterdir())[:4]:
                shutil.copy(src, root / split / label / src.name)
    return root


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ------------------------------------------------------------------ 1. output paths


def test_ingest_into_its_own_source_or_its_parent_is_refused_and_destroys_nothing(image_tree: Path):
    before = tree(image_tree)
    refused(pcam("ingest", "--source", image_tree, "--out", image_tree), "the output is the input")
    refused(pcam("ingest", "--source", image_tree, "--out", image_tree.parent, "--force"), "holds the input")
    refused(pcam("ingest", "--source", image_tree, "--out", image_tree / "train" / "ds"), "inside the input")
    assert tree(image_tree) == before


@pytest.mark.parametrize("command", ["split", "shard", "synth", "report", "run", "lr-find", "train", "evaluate"])
def test_an_unrelated_directory_is_never_replaced(
    command: str, tiny_dataset: Path, tiny_split: Path, tiny_shards: Path, tmp_path: Path
):
    out = tmp_path / "thesis"
    write(out / "thesis.tex", "\\documentclass{article}")
    config = write(tmp_path / "c.yaml", CNN_FAST.format(seed=1, epochs=1, lr=0.001, policy="constant"))
    args = {
        "split": ["--dataset", tiny_dataset],
        "shard": ["--dataset", tiny_dataset, "--split", tiny_split],
        "synth": [],
        "report": ["--runs", tmp_path / "no-run"],
        "run": ["--config", config],
        "lr-find": ["--shards", tiny_shards, "--config", config, "--model", "cnn"],
        "train": ["--shards", tiny_shards, "--config", config, "--model", "cnn", "--policy", "constant"],
        "evaluate": ["--model", tmp_path / "m", "--shards", tiny_shards, "--config", config],
    }[command]
    refused(pcam(command, *args, "--out", out), str(out), "not a directory pcam wrote", "--force")
    assert tree(out) == {"thesis.tex": b"\\documentclass{article}"}


def test_a_file_at_the_output_path_is_refused(tiny_dataset: Path, tmp_path: Path):
    out = write(tmp_path / "notes.txt", "mine")
    refused(pcam("split", "--dataset", tiny_dataset, "--out", out), "is not a directory")
    assert out.read_text() == "mine"


def test_force_replaces_and_a_pcam_output_of_the_same_kind_is_replaced_without_it(tiny_dataset: Path, tmp_path: Path):
    out = tmp_path / "d"
    write(out / "thesis.tex", "x")
    assert pcam("split", "--dataset", tiny_dataset, "--out", out, "--force").returncode == 0
    assert not (out / "thesis.tex").exists() and (out / "split.json").exists()
    assert pcam("split", "--dataset", tiny_dataset, "--out", out, "--seed", "3").returncode == 0
    # ...but not a pcam output of another kind
    refused(
        pcam("ingest", "--source", tiny_dataset, "--out", out, "--format", "folders"),
        "a pcam split directory",
        "refusing",
    )


def test_shard_into_its_dataset_and_report_into_its_run_are_refused(
    tiny_dataset: Path, tiny_split: Path, tmp_path: Path
):
    before = tree(tiny_dataset)
    refused(
        pcam("shard", "--dataset", tiny_dataset, "--split", tiny_split, "--out", tiny_dataset, "--force"),
        "the output is the input",
    )
    assert tree(tiny_dataset) == before
    run_dir = write(tmp_path / "run" / "pair.json", '{"model": "cnn", "policy": "constant"}').parent
    refused(pcam("report", "--runs", run_dir, "--out", run_dir), "the output is the input")
    assert (run_dir / "pair.json").exists()


# ------------------------------------------------------------------ 2. resume is bound to its inputs


@pytest.mark.slow
def test_train_resumes_only_what_the_same_settings_and_data_made(tiny_shards: Path, tmp_path: Path):
    first = write(tmp_path / "a.yaml", CNN_FAST.format(seed=7, epochs=1, lr=0.001, policy="constant"))
    other = write(tmp_path / "b.yaml", CNN_FAST.format(seed=123, epochs=1, lr=0.05, policy="onecycle"))
    out = tmp_path / "cnn"
    ok = pcam(
        "train", "--shards", tiny_shards, "--out", out, "--config", first, "--model", "cnn", "--policy", "constant"
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    model = (out / "model.keras").read_bytes()
    line = refused(
        pcam(
            "train", "--shards", tiny_shards, "--out", out, "--config", other, "--model", "cnn", "--policy", "onecycle"
        ),
        "checkpoint made by another run",
        "--no-resume",
    )
    assert "config" in line and "policy" in line and "seed" in line
    refused(
        pcam(
            "train", "--shards", tiny_shards, "--out", out, "--config", first, "--model", "cnn", "--policy", "plateau"
        ),
        "policy differ",
    )  # was KeyError: 'lr'
    assert (out / "model.keras").read_bytes() == model
    assert json.loads((out / "train.json").read_text())["policy"] == "constant"
    again = pcam(
        "train",
        "--shards",
        tiny_shards,
        "--out",
        out,
        "--config",
        other,
        "--model",
        "cnn",
        "--policy",
        "onecycle",
        "--no-resume",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert (summary["policy"], summary["seed"], summary["learning_rate"]) == ("onecycle", 123, 0.05)
    assert summary["resumed_from"] == []


@pytest.mark.slow
def test_pcam_run_does_not_resume_a_model_trained_on_another_source(image_tree: Path, tmp_path: Path):
    config = write(
        tmp_path / "c.yaml",
        """\
seed: 1
data: {synthetic: {train: 64, valid: 32, test: 32, slides: 8}}
split: {mode: official}
defaults: {epochs: 1, batch_size: 16}
models: {logreg: {optimizer: sgd, learning_rate: 0.00003}}
train: {models: [logreg], policies: [constant]}
""",
    )
    out = tmp_path / "study"
    first = pcam("run", "--config", config, "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    refused(
        pcam("run", "--config", config, "--out", out, "--source", image_tree),
        "checkpoints were trained with other settings",
        "data differ",
        "--no-resume",
    )
    assert (out / "runs" / "logreg-constant" / "train" / "model.keras").exists()


# ------------------------------------------------------------------ 3. artifacts belong together


def test_shard_refuses_a_split_made_for_another_dataset(tiny_dataset: Path, synthetic_dataset: Path, tmp_path: Path):
    other_split = tmp_path / "split"
    assert pcam("split", "--dataset", synthetic_dataset, "--out", other_split).returncode == 0
    refused(
        pcam("shard", "--dataset", tiny_dataset, "--split", other_split, "--out", tmp_path / "s"),
        "split.json",
        "made for another dataset",
    )
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ 4, 5, 7. config values and YAML


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("defaults: {learning_rate: .inf}\n", "defaults.learning_rate"),
        ("evaluate: {batch_size: -4}\n", "evaluate.batch_size"),
        ("evaluate: {batch_size: 0}\n", "evaluate.batch_size"),
        ("evaluate: {threshold: .nan}\n", "evaluate.threshold"),
        ("evaluate: {threshold: 1.5}\n", "evaluate.threshold"),
        ("seed: -1\n", "seed"),
        ("seed: 100000000000000000000000000\n", "seed"),
        ("split: {ratios: [.nan, 0.5, 0.5]}\n", "split.ratios[0]"),
        ("train: {onecycle_final_fraction: 1.5}\n", "train.onecycle_final_fraction"),
        ("promote: {metric: speed}\n", "promote.metric"),
        ("models: {resnet50: {image_size: 8}}\n", "models.resnet50.image_size"),
        ("defaults: {optimizer: rmsprop}\n", "defaults.optimizer"),
    ],
)
def test_every_number_and_choice_is_checked_when_the_config_loads(
    yaml_text: str, key: str, tiny_dataset: Path, tmp_path: Path
):
    config = write(tmp_path / "c.yaml", yaml_text)
    refused(
        pcam("split", "--dataset", tiny_dataset, "--out", tmp_path / "o", "--config", config), str(config), repr(key)
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "what"),
    [
        (["--seed", "-1"], "'seed'"),
        (["--seed", "100000000000000000000000000"], "'seed'"),
        (["--ratios", "nan", "0.5", "0.5"], "--ratios"),
        (["--ratios", "0.9", "0.9", "0.1"], "split.ratios"),
    ],
)
def test_flags_get_the_checks_of_their_config_keys(flags: list[str], what: str, tiny_dataset: Path, tmp_path: Path):
    refused(pcam("split", "--dataset", tiny_dataset, "--out", tmp_path / "o", *flags), what)
    assert not (tmp_path / "o").exists()


def test_flags_without_a_config_key_are_range_checked(image_tree: Path, tmp_path: Path):
    refused(
        pcam("ingest", "--source", image_tree, "--out", tmp_path / "o", "--workers", "-1"), "--workers", "must be >= 1"
    )
    refused(
        pcam(
            "lr-find",
            "--shards",
            tmp_path,
            "--out",
            tmp_path / "o",
            "--config",
            "configs/demo.yaml",
            "--model",
            "cnn",
            "--min-lr",
            "inf",
        ),
        "--min-lr",
    )


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("defaults: {epochs: 1}\nseed: 3\ndefaults: {epochs: 2}\n", (":3:1:", "duplicate key 'defaults'", "line 1")),
        ("name: caf\xe9\n".encode("latin-1"), (":1:", "not UTF-8")),
        ("defaults:\n  epochs: [1, 2\n", (":3:1:", "invalid YAML")),
        ("defaults: {epochs: 1\n", ("invalid YAML",)),
    ],
)
def test_the_yaml_a_user_wrote_is_the_yaml_we_read(
    content: str | bytes, needles: tuple[str, ...], tiny_dataset: Path, tmp_path: Path
):
    config = write(tmp_path / "c.yaml", content)
    refused(
        pcam("split", "--dataset", tiny_dataset, "--out", tmp_path / "o", "--config", config), str(config), *needles
    )


# ------------------------------------------------------------------ 6. labels and layouts by meaning


def test_a_csv_label_is_compared_with_its_folder_by_value(image_tree: Path, tmp_path: Path):
    rows = ["path,label"] + [
        f"{p.relative_to(image_tree).as_posix()},{p.parent.name}.0" for p in sorted(image_tree.rglob("*.jpg"))
    ]
    first_normal = next(i for i, r in enumerate(rows) if "/0/" in r)
    rows[first_normal] = rows[first_normal].replace(",0.0", ",1.0")
    write(image_tree / "labels.csv", "\n".join(rows) + "\n")
    refused(
        pcam("ingest", "--source", image_tree, "--out", tmp_path / "o"), "labels.csv", "gives label 1.0", "in folder 0/"
    )
    rows[first_normal] = rows[first_normal].replace(",1.0", ",0.0")
    write(image_tree / "labels.csv", "\n".join(rows) + "\n")  # "0.0" under 0/ is consistent
    assert pcam("ingest", "--source", image_tree, "--out", tmp_path / "o").returncode == 0


def test_nested_images_are_read_and_loose_ones_counted(image_tree: Path, tmp_path: Path):
    nested = image_tree / "train" / "1" / "slide-a"
    nested.mkdir()
    for src in sorted((image_tree / "train" / "1").glob("*.jpg"))[:2]:
        shutil.copy(src, nested / f"nested-{src.name}")
    for src in sorted((image_tree / "valid" / "0").glob("*.jpg"))[:3]:
        shutil.copy(src, image_tree / "valid" / f"loose-{src.name}")
    result = pcam("ingest", "--source", image_tree, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": {"0": 4, "1": 6}, "valid": {"0": 4, "1": 4}}
    assert any("3 image(s) outside any <label>/ folder were not read" in n for n in manifest["notes"])
    assert "3 image(s) outside any <label>/ folder" in result.stderr  # also said where the user looks


def test_an_unknown_label_folder_is_the_one_blamed(image_tree: Path, tmp_path: Path):
    flat = tmp_path / "flat"
    for label in ("0", "1", "2"):
        shutil.copytree(image_tree / "train" / ("1" if label == "2" else label), flat / label)
    refused(pcam("ingest", "--source", flat, "--out", tmp_path / "o"), f"{flat / '2'}: unknown label folder")


# ------------------------------------------------------------------ 7. artifacts of the wrong shape


def _edited_copy(src: Path, dst: Path, name: str, edit) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / name).read_text())
    edit(data)
    (dst / name).write_text(json.dumps(data))
    return dst


def test_a_manifest_without_files_is_named(tiny_dataset: Path, tiny_split: Path, tmp_path: Path):
    ds = _edited_copy(tiny_dataset, tmp_path / "ds", "manifest.json", lambda d: d.pop("files"))
    refused(pcam("split", "--dataset", ds, "--out", tmp_path / "o"), "manifest.json", "missing key 'files'")


def test_a_split_without_counts_test_is_named(tiny_dataset: Path, tiny_split: Path, tmp_path: Path):
    split = _edited_copy(tiny_split, tmp_path / "sp", "split.json", lambda d: d["counts"].pop("test"))
    refused(
        pcam("shard", "--dataset", tiny_dataset, "--split", split, "--out", tmp_path / "o"),
        "split.json",
        "missing key 'counts.test'",
    )


def test_an_index_without_splits_or_with_wrong_counts_is_named(tiny_shards: Path, tmp_path: Path):
    config = write(tmp_path / "c.yaml", CNN_FAST.format(seed=1, epochs=1, lr=0.001, policy="constant"))
    shards = _edited_copy(tiny_shards, tmp_path / "sh", "index.json", lambda d: d.pop("splits"))
    refused(
        pcam(
            "train",
            "--shards",
            shards,
            "--out",
            tmp_path / "o",
            "--config",
            config,
            "--model",
            "cnn",
            "--policy",
            "constant",
        ),
        "index.json",
        "missing key 'splits'",
    )
    assert not (tmp_path / "o").exists()

    def inflate(index: dict) -> None:
        index["splits"]["train"]["records"] += 40

    shards = _edited_copy(tiny_shards, tmp_path / "sh2", "index.json", inflate)
    refused(
        pcam(
            "train",
            "--shards",
            shards,
            "--out",
            tmp_path / "o",
            "--config",
            config,
            "--model",
            "cnn",
            "--policy",
            "constant",
        ),
        "index.json",
        "split 'train'",
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_finetuning_a_cnn_as_mobilenetv2_is_refused(tiny_shards: Path, tmp_path: Path):
    config = write(
        tmp_path / "c.yaml",
        CNN_FAST.format(seed=1, epochs=1, lr=0.001, policy="constant")
        + "models: {mobilenetv2: {finetune_epochs: 1}}\n",
    )
    trained = tmp_path / "cnn"
    ok = pcam(
        "train", "--shards", tiny_shards, "--out", trained, "--config", config, "--model", "cnn", "--policy", "constant"
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    refused(
        pcam(
            "finetune",
            "--trained",
            trained,
            "--shards",
            tiny_shards,
            "--out",
            tmp_path / "ft",
            "--config",
            config,
            "--model",
            "mobilenetv2",
            "--policy",
            "constant",
        ),
        "train.json",
        "trained as ('cnn'",
    )
    assert not (tmp_path / "ft").exists()


def test_a_report_context_or_metrics_of_the_wrong_shape_is_named(tmp_path: Path):
    run = tmp_path / "run"
    write(run / "pair.json", '{"model": "cnn", "policy": "constant"}')
    write(run / "evaluate" / "metrics.json", '{"tta": {"auc": "high"}, "single": {}}')
    refused(pcam("report", "--runs", run, "--out", tmp_path / "r"), "metrics.json", "tta.auc")
    write(
        run / "evaluate" / "metrics.json",
        json.dumps({m: {k: 0.5 for k in ("auc", "accuracy", "f1", "recall", "precision")} for m in ("tta", "single")}),
    )
    context = write(tmp_path / "ctx.json", '{"seed": "seven", "versions": []}')
    refused(pcam("report", "--runs", run, "--out", tmp_path / "r", "--context", context), "ctx.json", "seed")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 4, 8. divergence, after TensorFlow loaded


@pytest.mark.slow
def test_training_that_diverges_stops_with_one_line_and_no_model(tiny_shards: Path, tmp_path: Path):
    # Legal but extreme: SGD at lr 10 with an L2 weight of 1 multiplies the weights by about
    # -19 every step, so the penalty overflows float32 within the first epoch.
    config = write(
        tmp_path / "c.yaml",
        """\
defaults: {epochs: 2, batch_size: 16}
models: {logreg: {optimizer: sgd, learning_rate: 10, weight_decay: 1}}
train: {models: [logreg], policies: [constant], steps_per_epoch: 40}
""",
    )
    out = tmp_path / "o"
    line = refused(
        pcam(
            "train",
            "--shards",
            tiny_shards,
            "--out",
            out,
            "--config",
            config,
            "--model",
            "logreg",
            "--policy",
            "constant",
        ),
        "training diverged",
        "epoch 1",
        "no model written",
        after_work=True,
    )
    assert str(out) in line
    assert not (out / "model.keras").exists() and not (out / "model.partial.keras").exists()


def test_a_corrupt_model_file_is_one_line_even_after_tensorflow_loads(tiny_shards: Path, tmp_path: Path):
    model_dir = tmp_path / "m"
    write(model_dir / "model.keras", np.random.default_rng(0).bytes(4096))
    refused(
        pcam(
            "evaluate",
            "--model",
            model_dir,
            "--shards",
            tiny_shards,
            "--out",
            tmp_path / "e",
            "--config",
            "configs/demo.yaml",
        ),
        "model.keras",
    )
    assert not (tmp_path / "e").exists()
