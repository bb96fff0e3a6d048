"""Training core (in-memory real images) and the shard wrappers (tiny real shards)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pcam.artifacts import load_model
from pcam.cli import main
from pcam.config import ModelConfig, TrainConfig, config_from_dict
from pcam.errors import ConfigError, DataError
from pcam.fit import ema_weights
from pcam.models import build_model
from pcam.policies import PlateauLR, make_policy
from pcam.train import HISTORY_COLUMNS, compile_model, finetune, fit_model, load_checkpoint, train
from tests.unit._train_helpers import datasets, load_real

LOGREG = ModelConfig(optimizer="sgd", learning_rate=1e-4, max_learning_rate=1e-3, weight_decay=1e-4)


@pytest.fixture(scope="module")
def real(pcam_sample):
    return load_real(pcam_sample, per_class=40)


def _fit(real, out, epochs, policy="plateau", resume=True, train_cfg=None, model_cfg=LOGREG):
    x, y = real
    train_ds, val_ds, steps = datasets(x, y, batch_size=16, n_valid=16, seed=5)
    model = build_model("logreg", model_cfg, seed=5)
    compile_model(model, model_cfg)
    lr_policy = make_policy(policy, model_cfg, 3, train_cfg or TrainConfig(plateau_patience=1), steps)
    summary = fit_model(
        model,
        train_ds,
        val_ds,
        out_dir=out,
        policy=lr_policy,
        epochs=epochs,
        steps_per_epoch=steps,
        train_images=len(x) - 16,
        seed=5,
        resume=resume,
        verbose=0,
    )
    return model, summary


def test_fit_model_writes_history_best_model_checkpoint_and_tensorboard(real, tmp_path):
    model, summary = _fit(real, tmp_path, 3)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3] and {r["stage"] for r in history} == {"train"}
    assert all(set(HISTORY_COLUMNS) <= set(r) for r in history)
    assert all(np.isfinite([r[k] for k in HISTORY_COLUMNS if k != "stage"]).all() for r in history)
    with open(tmp_path / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(HISTORY_COLUMNS) and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the LR column replays the plateau rule on the recorded val_accuracy
    replay = PlateauLR(LOGREG.learning_rate, 2.0, 1)
    for row in history:
        assert row["lr"] == pytest.approx(replay.lr)
        replay.on_epoch_end(row["epoch"], row)
    aucs = [r["val_auc"] for r in history]
    assert summary["best_epoch"] == 1 + int(np.argmax(aucs)) and summary["best"] == max(aucs)
    best = load_model(tmp_path / "model.keras")
    assert best.count_params() == 27_649
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["epoch-00003"]
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "tensorboard" / "validation").glob("events.out.tfevents.*"))


def test_resume_continues_exactly_and_ignores_half_written_checkpoints(real, tmp_path):
    full_model, full = _fit(real, tmp_path / "full", 3, policy="onecycle")
    _fit(real, tmp_path / "cut", 2, policy="onecycle")  # "killed" after epoch 2
    ckpt = tmp_path / "cut" / "checkpoint"
    (ckpt / ".epoch-00003.x1y2.tmp").mkdir()  # a write killed before its rename
    (ckpt / ".epoch-00003.x1y2.tmp" / "variables.npz").write_bytes(b"truncated")
    (ckpt / "epoch-00004").mkdir()  # e.g. a gs:// copy killed before state.json
    (ckpt / "epoch-00004" / "variables.npz").write_bytes(b"truncated")
    model, cut = _fit(real, tmp_path / "cut", 3, policy="onecycle")
    assert cut["resumed_from"] == [2]
    for a, b in zip(full_model.variables, model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # bit-identical on CPU
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_cut = json.loads((tmp_path / "cut" / "history.json").read_text())
    keys = ("epoch", "loss", "val_loss", "val_accuracy", "val_auc", "lr")
    assert [[r[k] for k in keys] for r in h_cut] == [[r[k] for k in keys] for r in h_full]
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-00003"]  # leftovers cleaned
    # a finished run resumed again trains nothing more and keeps its history
    _, again = _fit(real, tmp_path / "cut", 3, policy="onecycle")
    assert again["resumed_from"] == [2, 3] and again["epochs"] == 3


def test_ema_validates_and_saves_the_average_trains_on_and_resumes_exactly(real, tmp_path):
    ema = dataclasses.replace(LOGREG, learning_rate=1e-3, ema=0.9)
    model, summary = _fit(real, tmp_path / "one", 1, model_cfg=ema)
    raw = [w.numpy() for w in model.trainable_variables]
    with ema_weights(model):
        average = [w.numpy() for w in model.trainable_variables]
    after = [w.numpy() for w in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(raw, after, strict=True))  # the swap back is exact
    assert not np.allclose(raw[0], average[0])  # training holds the raw weights, not the average
    saved = load_model(tmp_path / "one" / "model.keras")
    for a, b in zip(average, [w.numpy() for w in saved.trainable_variables], strict=True):
        np.testing.assert_array_equal(a, b)  # the best model is the average
    x, y = real
    compile_model(saved, LOGREG)
    val = saved.evaluate(x[:16], y[:16], batch_size=16, verbose=0, return_dict=True)
    assert val["auc"] == pytest.approx(summary["best"], abs=1e-6)  # and the average is what was validated
    full_model, _ = _fit(real, tmp_path / "full", 3, policy="onecycle", model_cfg=ema)
    _fit(real, tmp_path / "cut", 2, policy="onecycle", model_cfg=ema)
    model, cut = _fit(real, tmp_path / "cut", 3, policy="onecycle", model_cfg=ema)
    assert cut["resumed_from"] == [2]
    optimizer_vars = {v.path: v.numpy() for v in model.optimizer.variables}
    assert any(path.endswith("_average") for path in optimizer_vars)
    for a, b in zip(full_model.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # the average resumes bit-identically too
    for a, b in zip(full_model.variables, model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_resume_starts_over(real, tmp_path):
    _fit(real, tmp_path, 2)
    _, summary = _fit(real, tmp_path, 1, resume=False)
    assert summary["resumed_from"] == [] and summary["last_epoch"] == 1
    assert load_checkpoint(str(tmp_path / "checkpoint"), build_and_compile())["epoch"] == 1


def test_checkpoint_is_keyed_by_variable_path_and_a_changed_model_is_named(tmp_path):
    from pcam.checkpoint import save_checkpoint

    model = build_and_compile()
    model.get_layer(model.layers[-1].name).kernel.assign(np.full(model.layers[-1].kernel.shape, 0.25))
    save_checkpoint(str(tmp_path), model, {"epoch": 1})
    with np.load(tmp_path / "epoch-00001" / "variables.npz") as saved:
        assert "prediction/kernel" in saved.files and "sgd/prediction_kernel_momentum" in saved.files
    fresh = build_and_compile()
    assert load_checkpoint(str(tmp_path), fresh)["epoch"] == 1
    for a, b in zip(model.variables, fresh.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = build_model("cnn", ModelConfig(cnn_filters=(4,), cnn_head="gap"))
    compile_model(other, ModelConfig())
    with pytest.raises(
        DataError, match=r"epoch-00001: checkpoint does not match this model \(missing \['adam/bn1_beta"
    ):
        load_checkpoint(str(tmp_path), other)


def build_and_compile():
    model = build_model("logreg", LOGREG)
    compile_model(model, LOGREG)
    return model


def _cfg(tmp_path: Path, **models):
    return config_from_dict(
        {
            "seed": 3,
            "defaults": {"epochs": 2, "batch_size": 32, "learning_rate": 0.001, "max_learning_rate": 0.003},
            "models": models,
            "augment": {"online": True, "noise": 0.02},
            "train": {"shuffle_buffer": 256},
        }
    )


def test_train_cnn_end_to_end_on_tiny_shards(tiny_shards, tmp_path):
    cfg = _cfg(tmp_path)
    summary = train(tiny_shards, tmp_path / "out", cfg, "cnn", "onecycle")
    out = tmp_path / "out"
    for name in ("model.keras", "history.json", "history.csv", "train.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint" / "epoch-00002" / "state.json").is_file()
    saved = json.loads((out / "train.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["model"] == "cnn" and saved["policy"] == "onecycle" and saved["stage"] == "train"
    assert saved["params"] == 1_640_049 and saved["epochs"] == 2 and saved["config_digest"] == cfg.digest()
    assert saved["images_per_second"] > 0 and 1 <= saved["best_epoch"] <= 2
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0]["lr"] == pytest.approx(0.001)  # one-cycle starts at learning_rate


def test_finetune_mobilenetv2_continues_epochs_with_both_stages(tiny_shards, tmp_path):
    cfg = _cfg(
        tmp_path,
        mobilenetv2={
            "epochs": 1,
            "finetune_epochs": 1,
            "weights": "none",
            "image_size": 32,
            "finetune_learning_rate": 1e-5,
        },
    )
    train(tiny_shards, tmp_path / "train", cfg, "mobilenetv2", "constant")
    summary = finetune(tmp_path / "train", tiny_shards, tmp_path / "ft", cfg, "mobilenetv2", "constant")
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert [(r["epoch"], r["stage"]) for r in history] == [(1, "train"), (2, "finetune")]
    assert history[1]["lr"] == pytest.approx(1e-5)
    assert summary["stage"] == "finetune" and summary["first_epoch"] == 2
    with open(tmp_path / "ft" / "history.csv") as handle:
        assert [r["stage"] for r in csv.DictReader(handle)] == ["train", "finetune"]
    model = load_model(tmp_path / "ft" / "model.keras")
    base = model.get_layer("mobilenetv2_base")
    # (the InputLayer's flag is not serialised; it has no weights either way)
    assert [layer.trainable for layer in base.layers[1:]] == [False] * 99 + [True] * 54
    with pytest.raises(ConfigError, match="'cnn'"):
        finetune(tmp_path / "train", tiny_shards, tmp_path / "x", cfg, "cnn", "constant")


def test_cli_names_unknown_model_and_policy(tiny_shards, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    base = ["train", "--shards", str(tiny_shards), "--out", str(tmp_path / "o"), "--config", str(config)]
    assert main([*base, "--model", "vgg", "--policy", "constant"]) == 2
    assert "'vgg'" in capsys.readouterr().err
    assert main([*base, "--model", "cnn", "--policy", "cosine"]) == 2
    assert "'cosine'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_lr_find_sweeps_plots_and_restores_weights(tiny_shards, real, tmp_path):
    from pcam.lr_find import lr_find, lr_sweep

    cfg = _cfg(tmp_path, logreg={"optimizer": "sgd"})
    result = lr_find(tiny_shards, tmp_path / "lr", cfg, "logreg", steps=60, min_lr=1e-6, max_lr=10.0)
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    lrs = saved["lrs"]
    assert lrs[0] == pytest.approx(1e-6) and len(lrs) == len(saved["losses"]) == result["steps_run"] <= 60
    np.testing.assert_allclose(np.diff(np.log(lrs)), np.log(10.0 / 1e-6) / 59, rtol=1e-9)  # exponential
    assert 1e-6 <= saved["suggested_min_lr"] <= saved["suggested_max_lr"] <= 10.0
    # the sweep leaves the model as it found it
    model = build_and_compile()
    before = [v.numpy().copy() for v in model.variables]
    import tensorflow as tf

    x, y = real
    lr_sweep(model, tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8), steps=20)
    for a, b in zip(before, model.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
