import json

import numpy as np
import pytest
from PIL import Image

from pcam import evaluate as E
from pcam import promote as P
from pcam.config import config_from_dict
from pcam.errors import ConfigError, DataError
from pcam.fsutil import file_sha256, write_json

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot270")


@pytest.fixture(scope="module")
def patches(pcam_sample):
    images, labels = [], []
    for label in (0, 1):
        # the last 40 of each label: other patches than the other tests' first ones (the fixture has 80)
        for path in sorted((pcam_sample / "valid" / str(label)).glob("*.jpg"))[-40:]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels), [f"v{i}" for i in range(len(labels))]


def _model(kind, images=None, labels=None):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    if kind == "fitted":
        model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
        model.fit(images.astype("float32"), labels.astype("float32"), epochs=6, batch_size=40, verbose=0)
    return model


def _candidate(root, name, model, images, labels, ids):
    """A real evaluation (eval dir) plus the saved model (model dir) of one candidate."""
    model_dir = root / name / "train"
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    result = E.evaluate_arrays(model, images, labels, ids, views=VIEWS, progress=False)
    result.update({"split": "test", "model": name, "policy": "constant",
                   "data_fingerprint": E.data_fingerprint(ids, labels)})
    E.write_evaluation(root / name / "evaluate", result)
    write_json(root / name / "pair.json", {"model": name, "policy": "constant"})
    return root / name


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, patches):
    images, labels, ids = patches
    root = tmp_path_factory.mktemp("cands")
    good = _candidate(root, "good", _model("fitted", images, labels), images, labels, ids)
    bad = _candidate(root, "bad", _model("random"), images, labels, ids)
    auc = {n: json.loads((root / n / "evaluate" / "metrics.json").read_text())["tta"]["auc"] for n in ("good", "bad")}
    assert auc["good"] > auc["bad"]
    return good, bad


def _promote(run, champion, tmp_path, **kw):
    return P.promote(run / "evaluate", run / "train", str(champion), "auc", out_dir=tmp_path / "decision", **kw)


def test_first_run_promotes_then_better_replaces_and_worse_or_equal_do_not(candidates, tmp_path):
    good, bad = candidates
    champion = tmp_path / "champion"
    first = _promote(bad, champion, tmp_path)
    assert first["promoted"] is True and first["champion_score"] is None
    assert sorted(p.name for p in champion.iterdir()) == ["champion.json", "metrics.json", "model.keras"]
    assert file_sha256(champion / "model.keras") == file_sha256(bad / "train" / "model.keras")

    better = _promote(good, champion, tmp_path)
    assert better["promoted"] is True and better["champion_score"] == pytest.approx(first["candidate_score"])
    assert file_sha256(champion / "model.keras") == file_sha256(good / "train" / "model.keras")
    provenance = json.loads((champion / "champion.json").read_text())
    assert provenance["model"] == "good" and provenance["replaced"]["model"] == "bad"
    assert provenance["model_sha256"] == file_sha256(champion / "model.keras")
    # no staging or old directories left beside the champion
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    worse = _promote(bad, champion, tmp_path)
    equal = _promote(good, champion, tmp_path)
    assert worse["promoted"] is False and equal["promoted"] is False
    assert "strictly better" in equal["reason"]
    assert file_sha256(champion / "model.keras") == file_sha256(good / "train" / "model.keras")
    saved = json.loads((tmp_path / "decision" / "decision.json").read_text())
    assert saved == equal
    assert set(saved) >= {"promoted", "reason", "metric", "candidate_score", "champion_score", "champion_uri"}


def test_corrupt_or_incomplete_champion_metrics_is_a_clear_error(candidates, tmp_path):
    good, _ = candidates
    champion = tmp_path / "champion"
    champion.mkdir()
    (champion / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"champion/metrics\.json: not valid JSON"):
        _promote(good, champion, tmp_path)
    (champion / "metrics.json").write_text(json.dumps({"tta": {"f1": 0.5}}))
    with pytest.raises(DataError, match=r"metrics\.json: no tta\.auc score"):
        _promote(good, champion, tmp_path)
    (champion / "metrics.json").unlink()
    (champion / "model.keras").write_bytes(b"x")
    with pytest.raises(DataError, match="pass shards_dir and cfg"):
        _promote(good, champion, tmp_path)
    assert not (tmp_path / "decision").exists()


def test_object_store_champion_through_gfile(candidates, tmp_path):
    """ram:// is TensorFlow's in-memory filesystem: the same tf.io.gfile code path as gs://."""
    import tensorflow as tf

    good, bad = candidates
    uri = f"ram://pcam-test-{tmp_path.name}/champion"
    assert _promote(bad, uri, tmp_path)["promoted"] is True
    assert _promote(good, uri, tmp_path)["promoted"] is True
    assert _promote(bad, uri, tmp_path)["promoted"] is False
    assert sorted(tf.io.gfile.listdir(uri)) == ["champion.json", "metrics.json", "model.keras"]
    with tf.io.gfile.GFile(uri + "/champion.json") as handle:
        assert json.load(handle)["model"] == "good"


def test_best_run_and_metric_names(candidates, tmp_path):
    good, bad = candidates
    unevaluated = tmp_path / "pending"
    unevaluated.mkdir()
    assert P.best_run([bad, unevaluated, good], "auc") == good
    assert P.best_run([bad, good], "single.auc") == good
    with pytest.raises(ConfigError, match="promote metric 'loss'"):
        P.best_run([good], "loss")
    with pytest.raises(DataError, match="no evaluated run"):
        P.best_run([unevaluated], "auc")


def test_champion_is_re_evaluated_on_the_given_shards(tiny_shards, tmp_path):
    """A stored champion score from other data must not decide: the champion is re-scored."""
    cfg = config_from_dict({"evaluate": {"batch_size": 64}})
    fitted = tmp_path / "fitted"
    (fitted / "train").mkdir(parents=True)
    _model("random").save(fitted / "train" / "model.keras")
    # the candidate's numbers as evaluate() writes them on these shards
    E.evaluate(fitted / "train", tiny_shards, fitted / "evaluate", cfg, progress=False)
    champion = tmp_path / "champion"
    assert _promote(fitted, champion, tmp_path, shards_dir=tiny_shards, cfg=cfg)["promoted"] is True
    stored = json.loads((champion / "metrics.json").read_text())
    stored["tta"]["auc"] = 0.999  # pretend it scored better on some older test set
    (champion / "metrics.json").write_text(json.dumps(stored))
    decision = _promote(fitted, champion, tmp_path, shards_dir=tiny_shards, cfg=cfg)
    assert decision["champion_score"] == pytest.approx(decision["candidate_score"])  # same model, same data
    assert decision["promoted"] is False and "re-evaluated" in decision["reason"]
    metrics = json.loads((fitted / "evaluate" / "metrics.json").read_text())
    metrics["data_fingerprint"] = "0" * 64  # the candidate was scored on other data
    (fitted / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="computed on other data"):
        _promote(fitted, champion, tmp_path, shards_dir=tiny_shards, cfg=cfg)


def test_cli_promote_best_of_runs(candidates, tmp_path, capsys):
    from pcam.cli import main

    good, bad = candidates
    code = main(["promote", "--runs", str(bad), str(good), "--champion", str(tmp_path / "champ"),
                 "--out", str(tmp_path / "d")])
    assert code == 0 and capsys.readouterr().out.startswith("promoted: no champion yet")
    assert json.loads((tmp_path / "champ" / "champion.json").read_text())["model"] == "good"
