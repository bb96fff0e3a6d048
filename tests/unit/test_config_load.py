"""Everything a later step would refuse is refused when the config loads (issue 14), naming the key."""

from __future__ import annotations

import pytest

from pcam.config import ExperimentConfig, config_from_dict, dump_config
from pcam.errors import ConfigError


@pytest.mark.parametrize(
    "data, key",
    [
        ({"evaluate": {"threshold": 1.5}}, "evaluate.threshold"),
        ({"evaluate": {"threshold": -0.01}}, "evaluate.threshold"),
        ({"evaluate": {"target_sensitivity": 0}}, "evaluate.target_sensitivity"),
        ({"train": {"onecycle_final_fraction": 1.0}}, "train.onecycle_final_fraction"),
        ({"train": {"onecycle_final_fraction": -0.1}}, "train.onecycle_final_fraction"),
        ({"promote": {"metric": "loss"}}, "promote.metric"),
        ({"promote": {"metric": "best.auc"}}, "promote.metric"),
        # write_synthetic needs a patch per label in every split and a tumour and a normal slide per split
        ({"data": {"synthetic": {"valid": 1}}}, "data.synthetic.valid"),
        ({"data": {"synthetic": {"slides": 5}}}, "data.synthetic.slides"),
        # pcam.storage speaks local paths and gs:// only: the train and promote steps would fail
        ({"train": {"checkpoint_uri": "s3://bucket/ckpt"}}, "train.checkpoint_uri"),
        ({"promote": {"champion_uri": "https://example.org/champion"}}, "promote.champion_uri"),
    ],
)
def test_later_steps_refusals_happen_at_load(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert repr(key) in str(info.value)


def test_storage_locations_that_work_load():
    cfg = config_from_dict(
        {"train": {"checkpoint_uri": "gs://b/ckpt"}, "promote": {"champion_uri": "file:///srv/champion"}}
    )
    assert cfg.train.checkpoint_uri == "gs://b/ckpt" and cfg.promote.champion_uri == "file:///srv/champion"
    assert config_from_dict({"data": {"synthetic": {"train": 2, "valid": 2, "test": 2, "slides": 6}}})


def test_the_configure_step_refuses_what_the_loader_refuses():
    from components.configure import configure

    good = dict(
        config_yaml=dump_config(ExperimentConfig()),
        source="synthetic",
        data_format="auto",
        split_mode="random",
        split_ratios=[0.7, 0.2, 0.1],
        seed=1,
        epochs=0,
        finetune_epochs=0,
        batch_size=0,
        learning_rate=0.0,
        finetune_learning_rate=0.0,
        weights_uri="",
        tta_views=["identity", "hflip"],
        target_sensitivity=0.95,
        champion_uri="",
    )
    assert "tta_views" in configure(**good)
    for override, key in (
        ({"champion_uri": "s3://b/champion"}, "promote.champion_uri"),
        ({"target_sensitivity": 1.5}, "evaluate.target_sensitivity"),
        ({"checkpoint_root": "https://x/ckpt"}, "train.checkpoint_uri"),
    ):
        with pytest.raises(ConfigError, match=repr(key)):
            configure(**{**good, **override})
