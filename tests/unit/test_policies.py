"""LR policies: every sequence matches its written definition; state survives a resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pcam.config import ModelConfig, TrainConfig
from pcam.errors import ConfigError
from pcam.policies import OneCycleLR, PlateauLR, lr_schedule, make_policy

MODEL = ModelConfig(learning_rate=0.001, max_learning_rate=0.01)


def test_constant():
    schedule = lr_schedule("constant", MODEL, 5, TrainConfig(), steps_per_epoch=3)
    assert [schedule(s) for s in range(15)] == [0.001] * 15


def test_onecycle_matches_formula_step_by_step():
    # 4 epochs x 5 steps, final fraction 0.1: cycle 18 steps, warm-up 9, anneal 9, tail 2.
    policy = make_policy("onecycle", MODEL, 4, TrainConfig(onecycle_final_fraction=0.1), 5)
    start, peak, floor = 0.001, 0.01, 0.01 / 1000
    expected = [start + (peak - start) * s / 9 for s in range(9)]
    expected += [peak - (peak - start) * (s - 9) / 9 for s in range(9, 18)]
    expected += [start + (floor - start) * 1 / 2, floor]
    got = [policy.lr_at(s) for s in range(20)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert max(got) == pytest.approx(peak) and got[9] == pytest.approx(peak)
    assert got[-1] == pytest.approx(peak / 1000)


def test_onecycle_proportions_on_a_long_run():
    policy = OneCycleLR(1e-3, 1e-2, total_steps=1000, final_fraction=0.1)
    lrs = np.array([policy.lr_at(s) for s in range(1000)])
    assert int(np.argmax(lrs)) == 450  # 45% warm-up
    assert lrs[899] == pytest.approx(1e-3 + 9e-3 / 450)  # ~back to the start LR at 90%
    assert np.all(np.diff(lrs[:450]) > 0) and np.all(np.diff(lrs[450:]) < 0)
    assert lrs[-1] == pytest.approx(1e-5)


def test_onecycle_refuses_a_checkpoint_from_another_schedule():
    policy = OneCycleLR(1e-3, 1e-2, 100)
    with pytest.raises(ConfigError, match="100"):
        OneCycleLR(1e-3, 1e-2, 120).load_state(json.loads(json.dumps(policy.state())))


def test_plateau_halves_after_two_epochs_without_val_accuracy_gain():
    policy = make_policy("plateau", MODEL, 8, TrainConfig(plateau_factor=2.0, plateau_patience=2), 10)
    val_acc = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7]
    used = []
    for epoch, acc in enumerate(val_acc, start=1):
        used.append(policy.lr_at(0))
        # val_auc improves all along: plateau must look at val_accuracy only
        policy.on_epoch_end(epoch, {"val_accuracy": acc, "val_auc": epoch / 10})
    assert used == [0.001, 0.001, 0.001, 0.001, 0.0005, 0.0005, 0.0005, 0.00025]
    assert policy.state() == {"lr": 0.00025, "best": 0.7, "wait": 1}


def test_plateau_state_round_trip_continues_identically():
    accs = [0.5, 0.5, 0.4, 0.6, 0.6, 0.6, 0.6, 0.61]
    full = PlateauLR(0.01, 2.0, 2)
    split = PlateauLR(0.01, 2.0, 2)
    seq_full, seq_split = [], []
    for i, a in enumerate(accs):
        seq_full.append(full.lr)
        full.on_epoch_end(i + 1, {"val_accuracy": a})
    for i, a in enumerate(accs[:3]):
        seq_split.append(split.lr)
        split.on_epoch_end(i + 1, {"val_accuracy": a})
    resumed = PlateauLR(0.01, 2.0, 2)
    resumed.load_state(json.loads(json.dumps(split.state())))
    for i, a in enumerate(accs[3:], start=3):
        seq_split.append(resumed.lr)
        resumed.on_epoch_end(i + 1, {"val_accuracy": a})
    assert seq_split == seq_full and resumed.state() == full.state()


def test_plateau_without_validation_metric_and_unknown_policy_fail_clearly():
    with pytest.raises(ConfigError, match="val_accuracy"):
        PlateauLR(0.1).on_epoch_end(1, {"val_auc": 0.9})
    with pytest.raises(ConfigError, match="'cosine'"):
        make_policy("cosine", MODEL, 3, TrainConfig(), 10)
    with pytest.raises(ConfigError, match="plateau"):
        lr_schedule("plateau", MODEL, 3, TrainConfig())
    assert math.isinf(PlateauLR(0.1).best)
