"""Cluster faults as far as one machine can show them, under kfp.local.

1. The shard component killed mid-write, then retried, gives the same artifact as an
   uninterrupted run.
2. A preempted train pod: the train component's process is killed mid-epoch while
   kfp.local (the orchestrator) lives on and retries the task, as KFP retries a
   preempted pod. The retry resumes from the run's checkpoints
   (``<checkpoint_root>/<run id>/<model>-<policy>-train``), ends with the same weights
   as an uninterrupted run, and the checkpoints are deleted once evaluate succeeds.

For (1):

The killed run is a child process running the pipeline (``python -m
tests.faults.test_kfp_retry``) in its own process group; kfp.local's
SubprocessRunner starts the component as a grandchild, and the whole group gets
SIGKILL once a shard file in the component's temp directory has bytes in it: what
a preempted pod experiences. The retry runs the same pipeline through kfp.local in
this process, into the same pipeline root. Its artifact must hold exactly the files,
with the same sha256s, that an uninterrupted ``write_shards`` call (what the
component calls) writes from the same inputs.
"""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl, local
from kfp.dsl import Dataset

from components.evaluate import evaluate_op
from components.shard import shard_op
from components.train import train_op
from pcam.config import config_from_dict
from pcam.errors import DataError
from pcam.shard import load_index, write_shards
from tests.faults.conftest import kill_when, partial_file_in_temp, spawn, tree_digest

CONFIG_YAML = "seed: 3\naugment: {copies: 1}\nshard: {records_per_shard: 250}\n"


@dsl.pipeline(name="shard-retry")
def shard_from_artifacts(dataset_uri: str, split_uri: str, config_yaml: str) -> Dataset:
    """Import an existing dataset and split, shard them: the one step whose kill is under test."""
    dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=Dataset, reimport=False)
    split = dsl.importer(artifact_uri=split_uri, artifact_class=Dataset, reimport=False)
    return shard_op(dataset=dataset.output, split_index=split.output, config_yaml=config_yaml).outputs["shards"]


def run_pipeline(root: Path, dataset: Path, split: Path) -> Dataset:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return shard_from_artifacts(dataset_uri=str(dataset), split_uri=str(split), config_yaml=CONFIG_YAML).output


def _shard_outputs(root: Path) -> list[Path]:
    """Every shard artifact directory path kfp.local chose under ``root`` (complete or not)."""
    return sorted(
        {tmp.parent / tmp.name.split(".")[1] for tmp in root.rglob(".shards.*.tmp")} | set(root.rglob("shards"))
    )


@pytest.mark.slow
def test_shard_component_killed_mid_write_then_retried_equals_uninterrupted_run(fault_dataset, fault_split, tmp_path):
    root = tmp_path / "pipeline_root"
    log = tmp_path / "killed.log"
    child = spawn(
        [
            sys.executable,
            "-m",
            "tests.faults.test_kfp_retry",
            "shard",
            "--root",
            str(root),
            "--dataset",
            str(fault_dataset),
            "--split",
            str(fault_split),
        ],
        log,
    )
    kill_when(child, lambda: any(partial_file_in_temp(out, "*.tfrecord") for out in _shard_outputs(root)), log)

    killed = _shard_outputs(root)
    assert len(killed) == 1, killed
    assert not killed[0].exists()
    with pytest.raises(DataError, match="index.json: missing"):
        load_index(killed[0])

    retried = run_pipeline(root, fault_dataset, fault_split)
    retry_dir = Path(retried.path)
    assert retry_dir != killed[0] and retry_dir.is_relative_to(root)
    load_index(retry_dir)

    cfg = config_from_dict({"seed": 3, "augment": {"copies": 1}, "shard": {"records_per_shard": 250}})
    reference = tmp_path / "uninterrupted"
    write_shards(fault_dataset, fault_split, reference, cfg.augment, cfg.shard, cfg.seed, progress=False)
    assert tree_digest(retry_dir) == tree_digest(reference)
    assert sum(name.endswith(".tfrecord") for name in tree_digest(reference)) > 3


# --------------------------------------------------------------------------- a preempted train pod
# The production wiring (pipelines.pcam_training's GPU step: run id placeholder, retry policy)
# around the real train and evaluate components; only the retry backoff is shortened.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN_RETRY = {"num_retries": 2, "backoff_duration": "0s"}
TRAIN_EPOCHS = 2
PAIR = ("logreg", "onecycle")


def train_config(checkpoint_root: Path) -> str:
    """The resolved config the pipeline's configure step would hand on (checkpoint_root applied)."""
    return (
        f"seed: 5\ndefaults: {{epochs: {TRAIN_EPOCHS}, batch_size: 16}}\n"
        "models: {logreg: {optimizer: sgd, learning_rate: 0.0001, max_learning_rate: 0.001}}\n"
        f"train: {{shuffle_buffer: 64, checkpoint_uri: '{checkpoint_root}'}}\n"
        "evaluate: {tta_views: [identity, hflip], split: valid}\n"
    )


@dsl.pipeline(name="train-retry")
def train_then_evaluate(shards_uri: str, config_yaml: str) -> Dataset:
    """Train one pair (retried on failure) and evaluate it, as the pipeline's train-only loop does."""
    from pcam.cluster import GpuPool
    from pipelines.pcam_training import _gpu_step

    shards = dsl.importer(artifact_uri=shards_uri, artifact_class=Dataset, reimport=False)
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    trained = _gpu_step(
        train_op(shards=shards.output, config_yaml=config_yaml, model_name=PAIR[0], policy=PAIR[1], run_id=run_id),
        retry=TRAIN_RETRY,
        gpu=GpuPool(),
    )
    scored = _gpu_step(
        evaluate_op(
            model=trained.outputs["model"],
            shards=shards.output,
            config_yaml=config_yaml,
            model_name=PAIR[0],
            policy=PAIR[1],
            stage="train",
            run_id=run_id,
        ),
        retry=False,
        gpu=GpuPool(),
    )
    return scored.outputs["run"]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the component launched by kfp.local: sh, then python)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _run_killed_train_pipeline(tmp_path: Path, shards: Path) -> tuple[Path, str, int]:
    """Run the pipeline in a child process and SIGKILL the train step's processes once epoch 1 is checkpointed.

    Returns the evaluate step's run directory, the child's log, and the last epoch
    checkpointed before the kill (1 unless the machine stalled the poll for an epoch).
    """
    ckpt_root = tmp_path / "checkpoints"
    log = tmp_path / "killed.log"
    child = spawn(
        [
            sys.executable,
            "-m",
            "tests.faults.test_kfp_retry",
            "train",
            "--root",
            str(tmp_path / "root"),
            "--shards",
            str(shards),
            "--checkpoints",
            str(ckpt_root),
        ],
        log,
    )
    pair_dir = f"*/{PAIR[0]}-{PAIR[1]}-train"
    deadline = time.monotonic() + 300
    while not list(ckpt_root.glob(f"{pair_dir}/epoch-*/state.json")):
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail("no epoch checkpoint to preempt after:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.01)
    # The pod dies; the orchestrator (KFP, here kfp.local) lives on and retries the task.
    for pid in _descendants(child.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = max(int(p.parent.name.split("-")[1]) for p in ckpt_root.glob(f"{pair_dir}/epoch-*/state.json"))
    assert killed_at < TRAIN_EPOCHS, "training ended before the kill"
    assert child.wait(timeout=600) == 0, log.read_text(errors="replace")[-4000:]
    text = log.read_text(errors="replace")
    (run_dir,) = [Path(line) for line in text.splitlines() if line.startswith(str(tmp_path / "root"))]
    return run_dir, text, killed_at


@pytest.mark.slow
def test_train_pod_killed_mid_epoch_is_retried_and_resumes_from_the_run_checkpoints(tiny_shards, tmp_path):
    import keras
    import yaml

    from pcam.config import config_from_dict
    from pcam.train import train

    ckpt_root = tmp_path / "checkpoints"
    run_dir, log, killed_at = _run_killed_train_pipeline(tmp_path, tiny_shards)

    # kfp.local saw the killed attempt fail and ran the task again (the retry policy), once.
    statuses = re.findall(r"Task 'train' finished with status (\w+)", ANSI.sub("", log))
    assert statuses == ["FAILURE", "SUCCESS"], statuses
    # The retry found the first attempt's checkpoint at <root>/<run id>/<pair>-train and went on from there.
    resumed = re.findall(r"resuming from checkpoint (\S+) \(epoch (\d+) done\)", log)
    assert [int(epoch) for _, epoch in resumed] == [killed_at], resumed
    location = Path(resumed[0][0]).parent
    assert location.parent.parent == ckpt_root and location.name == f"{PAIR[0]}-{PAIR[1]}-train"
    assert location.parent.name.isdigit()  # kfp.local's resolved PIPELINE_JOB_ID_PLACEHOLDER
    summary = json.loads((run_dir / "train" / "train.json").read_text())
    assert summary["resumed_from"] == [killed_at] and summary["checkpoint"] == str(location)

    # The same weights and history as an uninterrupted training of the same pair.
    cfg = config_from_dict({**yaml.safe_load(train_config(ckpt_root)), "train": {"shuffle_buffer": 64}})
    reference = tmp_path / "uninterrupted"
    train(tiny_shards, reference, cfg, *PAIR)
    keys = ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "val_auc")
    h_killed = json.loads((run_dir / "train" / "history.json").read_text())
    h_clean = json.loads((reference / "history.json").read_text())
    assert [r["epoch"] for r in h_killed] == list(range(1, TRAIN_EPOCHS + 1))
    assert [[r[k] for k in keys] for r in h_killed] == [[r[k] for k in keys] for r in h_clean]
    w_killed = keras.saving.load_model(run_dir / "train" / "model.keras").get_weights()
    w_clean = keras.saving.load_model(reference / "model.keras").get_weights()
    assert len(w_killed) == len(w_clean) > 0
    for a, b in zip(w_killed, w_clean, strict=True):
        np.testing.assert_array_equal(a, b)

    # Evaluate succeeded, so the pair's checkpoints are gone (the empty run directory stays).
    assert (run_dir / "evaluate" / "metrics.json").is_file()
    assert [p.name for p in ckpt_root.iterdir()] == [location.parent.name]
    assert not any(ckpt_root.rglob("*/*"))


def run_train_pipeline(root: Path, shards: Path, checkpoints: Path) -> Dataset:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return train_then_evaluate(shards_uri=str(shards), config_yaml=train_config(checkpoints)).output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="run one of the retry pipelines once (the tests kill it)")
    commands = parser.add_subparsers(dest="command", required=True)
    shard_cmd = commands.add_parser("shard")
    shard_cmd.add_argument("--root", type=Path, required=True)
    shard_cmd.add_argument("--dataset", type=Path, required=True)
    shard_cmd.add_argument("--split", type=Path, required=True)
    train_cmd = commands.add_parser("train")
    train_cmd.add_argument("--root", type=Path, required=True)
    train_cmd.add_argument("--shards", type=Path, required=True)
    train_cmd.add_argument("--checkpoints", type=Path, required=True)
    options = parser.parse_args()
    if options.command == "shard":
        print(run_pipeline(options.root, options.dataset, options.split).path)
    else:
        print(run_train_pipeline(options.root, options.shards, options.checkpoints).path)
