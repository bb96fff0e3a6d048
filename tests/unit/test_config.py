from pathlib import Path

import pytest

from pcam.config import ExperimentConfig, config_from_dict, dump_config, load_config
from pcam.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml", "sample.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, ExperimentConfig)
    for model in cfg.train.models:
        assert cfg.model(model).epochs >= 1


def test_paper_config_is_the_study():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.train.models == ("logreg", "cnn", "mobilenetv2", "resnet50")
    assert cfg.train.policies == ("constant", "onecycle", "plateau")
    assert cfg.model("cnn").epochs == 30
    assert cfg.model("resnet50").finetune_epochs == 30
    assert cfg.split.ratios == (0.7, 0.2, 0.1)
    assert cfg.augment.noise == 0.02
    assert len(cfg.evaluate.tta_views) == 5


def test_round_trip_through_yaml():
    import yaml

    cfg = load_config(REPO / "configs" / "demo.yaml")
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.digest() == cfg.digest()


@pytest.mark.parametrize(
    "data, key",
    [
        ({"trian": {}}, "trian"),
        ({"train": {"epochs": 3}}, "train.epochs"),
        ({"defaults": {"epochs": "three"}}, "defaults.epochs"),
        ({"defaults": {"epochs": -1}}, "defaults.epochs"),
        ({"defaults": {"learning_rate": True}}, "defaults.learning_rate"),
        ({"train": {"models": ["vgg16"]}}, "train.models[0]"),
        ({"train": {"policies": ["cosine"]}}, "train.policies[0]"),
        ({"models": {"cnn": {"epochz": 3}}}, "models.cnn.epochz"),
        ({"models": {"vgg": {}}}, "models.vgg"),
        ({"split": {"ratios": [0.5, 0.5]}}, "split.ratios"),
        ({"split": {"ratios": [0.5, 0.4, 0.2]}}, "split.ratios"),
        ({"data": {"format": "parquet"}}, "data.format"),
        ({"evaluate": {"tta_views": ["identity", "shear"]}}, "evaluate.tta_views[1]"),
        ({"augment": {"hed": 1.5}}, "augment.hed"),
        ({"augment": {"hed_shift": -0.1}}, "augment.hed_shift"),
        ({"models": {"cnn": {"cnn_head": "avg"}}}, "models.cnn.cnn_head"),
        ({"defaults": {"cnn_filters": [16, 0]}}, "defaults.cnn_filters"),
        ({"defaults": {"cnn_crop": 16}}, "defaults.cnn_crop"),
        ({"defaults": {"label_smoothing": 1.0}}, "defaults.label_smoothing"),
    ],
)
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert repr(key) in str(info.value)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_apply_dotted_keys():
    cfg = load_config(REPO / "configs" / "demo.yaml", {"train.models": ["cnn"], "seed": 7})
    assert cfg.train.models == ("cnn",)
    assert cfg.seed == 7
