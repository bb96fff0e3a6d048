import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from pcam import metrics as M


def _random_case(seed, n=500, positive_rate=0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_rate).astype(int)
    score = np.clip(0.3 * y + rng.random(n) * 0.8, 0, 1)
    return y, score, (score >= 0.5).astype(int)


@pytest.mark.parametrize("seed,rate", [(0, 0.5), (1, 0.1), (2, 0.9), (3, 0.5)])
def test_count_metrics_match_sklearn(seed, rate):
    y, score, label = _random_case(seed, positive_rate=rate)
    assert M.f1(y, label) == pytest.approx(skm.f1_score(y, label, zero_division=0))
    assert M.recall(y, label) == pytest.approx(skm.recall_score(y, label, zero_division=0))
    assert M.precision(y, label) == pytest.approx(skm.precision_score(y, label, zero_division=0))
    assert M.accuracy(y, label) == pytest.approx(skm.accuracy_score(y, label))
    assert M.specificity(y, label) == pytest.approx(skm.recall_score(1 - y, 1 - label, zero_division=0))
    tn, fp, fn, tp = skm.confusion_matrix(y, label, labels=[0, 1]).ravel()
    assert M.confusion(y, label) == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert M.auc(y, score) == pytest.approx(skm.roc_auc_score(y, score))


@pytest.mark.parametrize("label", [np.zeros(6, int), np.ones(6, int)])
def test_degenerate_predictions_match_sklearn_zero_division(label):
    y = np.array([0, 1, 1, 0, 1, 0])
    assert M.precision(y, label) == skm.precision_score(y, label, zero_division=0)
    assert M.f1(y, label) == skm.f1_score(y, label, zero_division=0)
    assert M.recall(y, label) == skm.recall_score(y, label, zero_division=0)


@pytest.mark.parametrize("cls", [0, 1])
def test_one_class_gives_nan_auc_and_empty_roc_without_raising(cls):
    y = np.full(10, cls)
    score = np.linspace(0, 1, 10)
    assert math.isnan(M.auc(y, score))
    assert M.roc_curve(y, score) == {"fpr": [], "tpr": [], "thresholds": []}
    point = M.operating_point(y, score, 0.95)
    assert all(math.isnan(v) for v in point.values())
    out = M.binary_metrics(y, score, (score >= 0.5).astype(int))
    assert math.isnan(out["auc"])
    assert M.accuracy(y, score >= 0.5) == pytest.approx(0.5)
    # NaN must become JSON null, not the invalid token NaN
    text = json.dumps(M.json_safe(out), allow_nan=False)
    assert '"auc": null' in text


def test_roc_curve_matches_sklearn_with_finite_thresholds():
    y, score, _ = _random_case(7)
    fpr, tpr, thr = skm.roc_curve(y, score)
    assert np.isinf(thr[0])  # the reason for the replacement
    out = M.roc_curve(y, score)
    np.testing.assert_allclose(out["fpr"], fpr)
    np.testing.assert_allclose(out["tpr"], tpr)
    assert np.all(np.isfinite(out["thresholds"]))
    assert out["thresholds"][0] == 1.0
    np.testing.assert_allclose(out["thresholds"][1:], thr[1:])
    json.dumps(out, allow_nan=False)


def test_operating_point_is_the_highest_threshold_reaching_the_target():
    y, score, _ = _random_case(11, n=2000)
    point = M.operating_point(y, score, 0.95)
    predicted = (score >= point["threshold"]).astype(int)
    assert M.recall(y, predicted) >= 0.95
    assert point["sensitivity"] == pytest.approx(M.recall(y, predicted))
    assert point["specificity"] == pytest.approx(M.specificity(y, predicted))
    # any higher score used as threshold misses the target
    higher = np.unique(score[score > point["threshold"]])
    assert M.recall(y, (score >= higher.min()).astype(int)) < 0.95


def test_operating_point_on_a_hand_worked_case():
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    # target 2/3: the two top positives (0.9, 0.8) suffice; nothing negative above 0.8
    assert M.operating_point(y, score, 0.6) == {
        "threshold": 0.8,
        "sensitivity": pytest.approx(2 / 3),
        "specificity": 1.0,
    }
    # target 1.0 needs threshold 0.35: negatives 0.4 and 0.7 are above it
    point = M.operating_point(y, score, 1.0)
    assert point["threshold"] == 0.35 and point["specificity"] == pytest.approx(1 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        M.f1([0, 1], [1])
