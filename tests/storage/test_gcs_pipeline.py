"""A whole kfp.local pipeline run whose source, checkpoints and champion are on gs:// (fake-gcs-server).

kfp.local's SubprocessRunner runs each step in a child process that inherits
STORAGE_EMULATOR_HOST, so every step reaches the same GCS-protocol server.

Part of ``make test`` (and alone: ``make test-gcs-pipeline``): a second whole pipeline
run, 11 step processes each importing TensorFlow, 73 s on a quiet 2-core machine
(233-400 s at load 10-15).
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

    # checkpoints: written under <checkpoint_uri>/<run id>/<model>-<policy>-<stage> on gs://, and
    # deleted by each pair's evaluate step once its results were written (pcam.run_checkpoints)
    deleted = sorted(uri for meta in _step_metadata(tmp_path / "run") for uri in meta.get("checkpoints_deleted", []))
    assert [uri.rsplit("/", 1)[1] for uri in deleted] == [
        "logreg-constant-train",
        "mobilenetv2-constant-finetune",
        "mobilenetv2-constant-train",
    ]
    (run_root,) = {uri.rsplit("/", 1)[0] for uri in deleted}
    assert run_root.startswith(f"{gcs}/ckpt/") and run_root.count("/") == f"{gcs}/ckpt/".count("/")
    assert storage.walk(f"{gcs}/ckpt") == []  # nothing left behind on gs://
    assert not list((tmp_path / "run").glob("**/checkpoint/epoch-*"))  # none in the pipeline root

    # the champion: published on gs:// and readable whole
    (promote_dir,) = report.parents[1].glob("**/promote")
    decision = json.loads(json.loads((promote_dir / "executor_output.json").read_text())["parameterValues"]["Output"])
    assert decision["promoted"] is True and decision["champion_uri"] == f"{gcs}/champion"
    pointer = C.fetch(f"{gcs}/champion", tmp_path / "reader")
    assert pointer["model"] in ("logreg", "mobilenetv2") and pointer["version"] == decision["version"]
    assert json.loads((tmp_path / "reader" / "metrics.json").read_text())["model_sha256"] == pointer["model_sha256"]


def _step_metadata(root):
    """The metadata of every output artifact the kfp.local steps under ``root`` reported."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("metadata"), dict):
                found.append(node["metadata"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for path in root.glob("**/executor_output.json"):
        visit(json.loads(path.read_text()))
    return found
