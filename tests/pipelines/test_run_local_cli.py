"""run_local's command line: argument handling that needs no pipeline run."""

from pipelines import run_local
from tests.conftest import REPO


def test_grid_without_a_fine_tuned_model_is_refused_with_the_key(tmp_path, capsys):
    config = tmp_path / "cnn-only.yaml"
    config.write_text("train: {models: [logreg, cnn], policies: [constant]}\n")
    assert run_local.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "train.models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_config_key_exits_2_naming_it(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train: {epochz: 3}\n")
    assert run_local.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "train.epochz" in capsys.readouterr().err


def test_demo_arguments_reproduce_the_demo_config():
    from pcam.config import config_from_dict, load_config

    cfg = load_config(REPO / "configs" / "demo.yaml", {"data.source": "/data/pcam", "data.format": "auto"})
    args = run_local.pipeline_arguments(cfg, "/tmp/champion")
    import yaml

    assert config_from_dict(yaml.safe_load(args["config_yaml"])) == cfg
    assert args["source"] == "/data/pcam" and args["data_format"] == "auto"
    assert [(g["model"], g["policy"]) for g in args["grid"]] == [
        (m, p) for m in cfg.train.models for p in cfg.train.policies
    ]
    assert args["champion_uri"] == "/tmp/champion"
