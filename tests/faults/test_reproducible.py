"""Reproducibility: same config + seed, same bytes; and a report a reviewer can check.

Two complete data chains (``pcam ingest`` → ``split`` → ``shard``) from one config
file, each in its own process, must agree byte for byte, augmented shard copies
included; CPU training of the CNN (dropout, batch norm, online augmentation,
shuffling) here and in another process must give bit-identical weights and losses; the report must state the
seed, package versions, config hash, data checksums and image tag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from pcam.cli import main
from pcam.config import load_config
from pcam.fsutil import read_json, write_json
from tests.faults.conftest import REPO, child_env, tree_digest

TRAIN_ARGS = ["train", "--model", "cnn", "--policy", "onecycle"]
IMAGE_TAG = "registry.example/pcam/pcam-cpu:3f9c2d1e8a7b"
CONFIG = """\
name: faults-repro
seed: 11
data: {{source: '{source}', format: folders, limit_per_split: 60}}
split: {{mode: random}}
augment: {{copies: 1, noise: 0.02}}
shard: {{records_per_shard: 40}}
defaults: {{epochs: 1, batch_size: 16}}
train: {{steps_per_epoch: 4, shuffle_buffer: 64}}
evaluate: {{tta_views: [identity, hflip]}}
"""


def _chain_commands(config: Path, root: Path, seed: int | None = None) -> list[list[str]]:
    """ingest → split → shard, as a user (or a rerun) would call them."""
    seed_args = ["--seed", str(seed)] if seed is not None else []
    return [
        ["ingest", "--config", str(config), "--out", str(root / "dataset"), "--cache-dir", str(root.parent / "cache")],
        [
            "split",
            "--config",
            str(config),
            "--dataset",
            str(root / "dataset"),
            "--out",
            str(root / "split"),
            *seed_args,
        ],
        [
            "shard",
            "--config",
            str(config),
            "--dataset",
            str(root / "dataset"),
            "--split",
            str(root / "split"),
            "--out",
            str(root / "shards"),
            *seed_args,
        ],
    ]


def run_in_child(commands: list[list[str]], hash_seed: int) -> None:
    """Run pcam commands in one fresh process with a fixed PYTHONHASHSEED.

    Two runs must agree across processes, not only within one: anything that
    iterates a hash-ordered container (protobuf maps included) differs between
    processes with different hash seeds, and 1 and 2 give different orders.
    """
    script = (
        "import json, sys\nfrom pcam.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n    code = main(argv)\n    if code: sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands)],
        cwd=REPO,
        env={**child_env(), "PYTHONHASHSEED": str(hash_seed)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def chains(pcam_sample, tmp_path_factory):
    """The same config run twice, each chain in its own process (hash seeds 1 and 2); chain a is also
    trained in this process, chain b in the fresh one."""
    base = tmp_path_factory.mktemp("repro")
    config = base / "config.yaml"
    config.write_text(CONFIG.format(source=pcam_sample))
    a, b = base / "a", base / "b"
    run_in_child(_chain_commands(config, a), hash_seed=1)
    run_in_child(
        [
            *_chain_commands(config, b),
            [*TRAIN_ARGS, "--config", str(config), "--shards", str(b / "shards"), "--out", str(b / "train")],
        ],
        hash_seed=2,
    )
    return config, a, b


def test_same_config_and_seed_give_byte_identical_dataset_split_and_shards(chains, tmp_path):
    config, a, b = chains
    digest_a = tree_digest(a)
    digest_b = tree_digest(b)
    assert {k: v for k, v in digest_b.items() if not k.startswith("train/")} == digest_a
    assert {"dataset/images.npy", "split/split.json", "shards/index.json"} <= set(digest_a)
    index = read_json(a / "shards" / "index.json")
    assert index["splits"]["train"]["augmented_copies"] == 1 and index["seed"] == 11
    # ...and the seed matters: another one deals another split and other augmented copies
    other = tmp_path / "c"
    for argv in _chain_commands(config, other, seed=12)[1:]:
        argv[argv.index("--dataset") + 1] = str(a / "dataset")
        assert main(argv) == 0
    assert (other / "split" / "split.json").read_bytes() != (a / "split" / "split.json").read_bytes()
    assert not set(tree_digest(other / "shards").values()) & set(tree_digest(a / "shards").values())


def _weights(run: Path) -> list[np.ndarray]:
    from pcam.artifacts import load_model

    return load_model(run / "model.keras", compile=False).get_weights()


def _losses(run: Path) -> list[dict]:
    """history.json without the wall-clock columns."""
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
        for row in json.loads((run / "history.json").read_text())
    ]


@pytest.fixture(scope="module")
def trained(chains):
    """The CNN trained for one epoch on chain a's shards here (chain b's was trained in its process)."""
    config, a, b = chains
    assert main([*TRAIN_ARGS, "--config", str(config), "--shards", str(a / "shards"), "--out", str(a / "train")]) == 0
    return a / "train", b / "train"


@pytest.mark.slow
def test_cpu_training_is_bit_identical_across_processes(trained):
    here, there = trained
    assert _losses(here) == _losses(there)
    mine, theirs = _weights(here), _weights(there)
    assert len(mine) == len(theirs) > 10
    for x, y in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(x, y)
    summary_here, summary_there = read_json(here / "train.json"), read_json(there / "train.json")
    assert summary_here["config_digest"] == summary_there["config_digest"]
    assert summary_here["seed"] == 11


@pytest.mark.slow
def test_report_is_a_model_card_a_reviewer_can_check(chains, trained, tmp_path, monkeypatch):
    from pcam.report import build_report
    from pcam.study import run_context

    config, a, _ = chains
    here, _ = trained
    pair = tmp_path / "runs" / "cnn-onecycle"
    pair.mkdir(parents=True)
    write_json(pair / "pair.json", {"model": "cnn", "policy": "onecycle"})
    (pair / "train").symlink_to(here, target_is_directory=True)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(here),
                "--shards",
                str(a / "shards"),
                "--out",
                str(pair / "evaluate"),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    monkeypatch.setenv("PCAM_IMAGE", IMAGE_TAG)
    cfg = load_config(config)
    build_report([pair], tmp_path / "report", run_context(cfg, a / "dataset", a / "shards"))

    page = (tmp_path / "report" / "report.html").read_text()
    card = (tmp_path / "report" / "summary.md").read_text()
    manifest, index = read_json(a / "dataset" / "manifest.json"), read_json(a / "shards" / "index.json")
    for text in (page, card):
        assert "seed: 11" in text or "<td>seed</td><td>11</td>" in text
        assert cfg.digest() in text
        assert IMAGE_TAG in text
        for package in ("tensorflow", "keras", "numpy"):
            dist = "tensorflow-cpu" if package == "tensorflow" and _installed("tensorflow-cpu") else package
            assert metadata.version(dist) in text, package
    for name, info in manifest["files"].items():
        assert info["sha256"] in page, name
    for split in index["splits"].values():
        for shard in split["shards"]:
            assert shard["sha256"] in page, shard["name"]


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True
