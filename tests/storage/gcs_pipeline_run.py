"""A whole kfp.local pipeline run whose source, checkpoints and champion are on gs:// (fake-gcs-server).

kfp.local's SubprocessRunner runs each step in a child process that inherits
STORAGE_EMULATOR_HOST, so every step reaches the same GCS-protocol server.

Run by ``make test-gcs-pipeline``, not by ``make test``: a second whole pipeline run
(11 step processes, each importing TensorFlow) took 233-400 s on the shared 2-core
machine at load 10-15, beyond the test budget of this feature. The file name
keeps pytest's default collection away from it; naming it runs it.
"""

from __future__ import annotations

import json

import pytest

from pcam import champion as C
from pcam import storage
from pcam.config import config_from_dict
from pipelines import run_local

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*non-Python base image:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning"),
]


def test_pipeline_with_source_checkpoints_and_champion_on_gcs(pcam_sample, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("PCAM_GCS_RETRY_DEADLINE", "60")
    source = tmp_path / "source"
    for split, n in (("train", 60), ("valid", 30)):
        for label in ("0", "1"):
            (source / split / label).mkdir(parents=True)
            for path in sorted((pcam_sample / split / label).glob("*.jpg"))[:n]:
                (source / split / label / path.name).write_bytes(path.read_bytes())
    storage.upload_tree(source, f"{gcs}/raw")
    cfg = config_from_dict(
        {
            "name": "gcs-pipeline-test",
            "seed": 5,
            "data": {"source": f"{gcs}/raw", "format": "folders"},
            "shard": {"records_per_shard": 64},
            "defaults": {"epochs": 1, "batch_size": 16, "finetune_epochs": 1},
            "models": {"mobilenetv2": {"image_size": 32}},
            "train": {"models": ["logreg", "mobilenetv2"], "policies": ["constant"], "checkpoint_uri": f"{gcs}/ckpt"},
            "evaluate": {"tta_views": ["identity", "hflip"]},
            "promote": {"champion_uri": f"{gcs}/champion"},
        }
    )
    report, _ = run_local.run_local(cfg, tmp_path / "run")
    assert report.is_file()

    # checkpoints: one folder per (model, policy, stage), each holding its last complete epoch
    assert storage.list_dir(f"{gcs}/ckpt") == [
        "logreg-constant-train",
        "mobilenetv2-constant-finetune",
        "mobilenetv2-constant-train",
    ]
    for folder in storage.list_dir(f"{gcs}/ckpt"):
        assert storage.walk(f"{gcs}/ckpt/{folder}") == [
            "epoch-00001/state.json",
            "epoch-00001/variables.npz",
        ] or storage.walk(f"{gcs}/ckpt/{folder}") == ["epoch-00002/state.json", "epoch-00002/variables.npz"]
    assert not list((tmp_path / "run").glob("**/checkpoint/epoch-*"))  # none in the pipeline root

    # the champion: published on gs:// and readable whole
    (promote_dir,) = report.parents[1].glob("**/promote")
    decision = json.loads(json.loads((promote_dir / "executor_output.json").read_text())["parameterValues"]["Output"])
    assert decision["promoted"] is True and decision["champion_uri"] == f"{gcs}/champion"
    pointer = C.fetch(f"{gcs}/champion", tmp_path / "reader")
    assert pointer["model"] in ("logreg", "mobilenetv2") and pointer["version"] == decision["version"]
    assert json.loads((tmp_path / "reader" / "metrics.json").read_text())["model_sha256"] == pointer["model_sha256"]
