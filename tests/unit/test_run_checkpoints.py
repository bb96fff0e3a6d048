"""Run-scoped checkpoint locations (pcam.run_checkpoints): naming, refusal of unresolved ids, cleanup."""

import pytest

from pcam.config import config_from_dict
from pcam.errors import ConfigError
from pcam.run_checkpoints import for_run, pair_checkpoint_uris, remove_pair_checkpoints


def test_run_id_narrows_the_root_and_nothing_else(tmp_path):
    cfg = config_from_dict({"train": {"checkpoint_uri": f"{tmp_path}/ckpt/"}, "seed": 7})
    run = for_run(cfg, "8f1c2e")
    assert run.train.checkpoint_uri == f"{tmp_path}/ckpt/8f1c2e"
    assert run.seed == 7 and run.train.models == cfg.train.models
    assert pair_checkpoint_uris(run, "cnn", "plateau") == [
        f"{tmp_path}/ckpt/8f1c2e/cnn-plateau-train",
        f"{tmp_path}/ckpt/8f1c2e/cnn-plateau-finetune",
    ]


def test_no_root_or_no_run_id_keeps_the_config():
    cfg = config_from_dict({})
    assert for_run(cfg, "8f1c2e") is cfg and pair_checkpoint_uris(cfg, "cnn", "onecycle") == []
    rooted = config_from_dict({"train": {"checkpoint_uri": "gs://b/ckpt"}})
    assert for_run(rooted, "") is rooted


@pytest.mark.parametrize("run_id", ["{{$.pipeline_job_uuid}}", "a/b", ".."])
def test_an_unresolved_or_unsafe_run_id_is_refused(run_id):
    cfg = config_from_dict({"train": {"checkpoint_uri": "/mnt/pcam/checkpoints"}})
    with pytest.raises(ConfigError, match="run_id: .* is not a resolved KFP run id"):
        for_run(cfg, run_id)


def test_cleanup_removes_only_this_pairs_checkpoints(tmp_path):
    run = for_run(config_from_dict({"train": {"checkpoint_uri": str(tmp_path)}}), "42")
    for pair in ("resnet50-plateau-train", "resnet50-plateau-finetune", "cnn-plateau-train"):
        (tmp_path / "42" / pair / "epoch-00001").mkdir(parents=True)
        (tmp_path / "42" / pair / "epoch-00001" / "state.json").write_text("{}")
    removed = remove_pair_checkpoints(run, "resnet50", "plateau")
    assert removed == [
        str(tmp_path / "42" / "resnet50-plateau-train"),
        str(tmp_path / "42" / "resnet50-plateau-finetune"),
    ]
    assert sorted(p.name for p in (tmp_path / "42").iterdir()) == ["cnn-plateau-train"]
    assert remove_pair_checkpoints(run, "resnet50", "plateau") == []  # idempotent: a retried evaluate
