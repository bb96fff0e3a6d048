import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from pcam import evaluate as E
from pcam.artifacts import load_model
from pcam.config import ExperimentConfig, config_from_dict
from pcam.errors import DataError

VIEWS5 = ("identity", "hflip", "vflip", "rot90", "rot270")
NUMPY_VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1],
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "transpose": lambda x: x.transpose(0, 2, 1, 3),
    "transverse": lambda x: np.rot90(x.transpose(0, 2, 1, 3), 2, axes=(1, 2)),
}


@pytest.fixture(scope="module")
def real_patches(pcam_sample):
    """60 real valid patches per class, uint8 (N,96,96,3), with labels and ids."""
    images, labels, ids = [], [], []
    for label in (0, 1):
        for path in sorted((pcam_sample / "valid" / str(label)).glob("*.jpg"))[:60]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
            ids.append(path.stem)
    return np.stack(images), np.array(labels), ids


def _flat_model(seed=0):
    """Orientation-sensitive tiny model: each pixel has its own weight."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0, offset=-0.5)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def _colour_model(images, labels):
    """Tiny model fitted for a few steps on mean colour, so its AUC means something."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    model.fit(images.astype("float32"), labels.astype("float32"), epochs=6, batch_size=40, verbose=0)
    return model


def test_tta_views_match_numpy_and_are_view_major(real_patches):
    images = real_patches[0][:4].astype(np.float32)
    names = list(NUMPY_VIEWS)
    stacked = np.asarray(E.tta_views(images, names))
    assert stacked.shape == (len(names) * 4, 96, 96, 3)
    for v, name in enumerate(names):
        np.testing.assert_array_equal(stacked[v * 4 : (v + 1) * 4], NUMPY_VIEWS[name](images))


def test_eight_views_are_the_eight_symmetries_of_the_square(real_patches):
    from pcam.config import TTA_VIEW_NAMES

    image = real_patches[0][:1].astype(np.float32)
    dihedral = [np.rot90(v, k, axes=(1, 2)) for v in (image, image[:, :, ::-1]) for k in range(4)]
    views = np.asarray(E.tta_views(image, TTA_VIEW_NAMES))
    assert len(TTA_VIEW_NAMES) == 8
    matches = [next(i for i, d in enumerate(dihedral) if np.array_equal(v[None], d)) for v in views]
    assert sorted(matches) == list(range(8))  # each symmetry exactly once


def test_batched_predictions_equal_per_view_predictions(real_patches):
    images = real_patches[0][:50]
    model = _flat_model()
    probs = E.predict_views(model, images, VIEWS5, batch_size=16, progress=False)  # 50 = 3*16 + 2
    assert probs.shape == (5, 50)
    for v, name in enumerate(VIEWS5):
        expected = model.predict(NUMPY_VIEWS[name](images).astype(np.float32), verbose=0)[:, 0]
        np.testing.assert_allclose(probs[v], expected, atol=1e-5)
    assert not np.allclose(probs[0], probs[3])  # the views really differ for this model


def test_vote_is_majority_with_ties_positive():
    probs = np.array([[0.9, 0.1, 0.6, 0.2], [0.8, 0.2, 0.4, 0.7], [0.1, 0.3, 0.5, 0.1], [0.2, 0.9, 0.1, 0.1]])
    labels, votes = E.vote(probs, 0.5)
    assert votes.tolist() == [2, 1, 2, 1]
    assert labels.tolist() == [1, 0, 1, 0]  # 2 of 4 is a tie: positive
    labels3, _ = E.vote(probs[:3], 0.5)
    assert labels3.tolist() == [1, 0, 1, 0]


def test_evaluate_arrays_metrics_agree_with_sklearn(real_patches):
    images, labels, ids = real_patches
    model = _colour_model(images, labels)
    out = E.evaluate_arrays(model, images, labels, ids, views=VIEWS5, batch_size=32, progress=False)
    arrays, m = out.arrays, out.metrics
    assert m["n"] == 120 and m["positives"] == 60 and m["n_views"] == 5
    assert m["tta"]["auc"] == pytest.approx(skm.roc_auc_score(labels, arrays.probability))
    assert m["single"]["auc"] == pytest.approx(skm.roc_auc_score(labels, arrays.single_probability))
    assert m["tta"]["f1"] == pytest.approx(skm.f1_score(labels, arrays.vote, zero_division=0))
    assert m["tta"]["auc"] > 0.6  # mean colour separates PCam classes somewhat
    single = (arrays.single_probability >= 0.5).astype(int)
    assert m["single"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, single))


def test_identity_is_scored_even_when_not_a_voting_view(real_patches):
    images, labels, ids = real_patches
    model = _flat_model()
    out = E.evaluate_arrays(model, images[:20], labels[:20], ids[:20], views=("hflip", "vflip"), progress=False)
    direct = model.predict(images[:20].astype(np.float32), verbose=0)[:, 0]
    np.testing.assert_allclose(out.arrays.single_probability, direct, atol=1e-5)
    hv = np.stack(
        [model.predict(NUMPY_VIEWS[n](images[:20]).astype(np.float32), verbose=0)[:, 0] for n in ("hflip", "vflip")]
    )
    np.testing.assert_allclose(out.arrays.probability, hv.mean(axis=0), atol=1e-5)


def test_an_evaluation_can_be_written_twice_and_is_not_changed_by_writing(real_patches, tmp_path):
    images, labels, ids = real_patches
    out = E.evaluate_arrays(_flat_model(), images[:12], labels[:12], ids[:12], views=VIEWS5, progress=False)
    before = json.dumps(out.metrics, sort_keys=True, default=str)
    E.write_evaluation(tmp_path / "a", out)
    E.write_evaluation(tmp_path / "b", out)  # the arrays used to be popped out of the result: KeyError here
    assert json.dumps(out.metrics, sort_keys=True, default=str) == before
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    written = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert written["n"] == 12 and "_arrays" not in written and "arrays" not in written


def test_one_class_split_gives_null_auc_and_a_note(real_patches):
    images, labels, ids = real_patches
    out = E.evaluate_arrays(_flat_model(), images[:10], labels[:10], ids[:10], views=VIEWS5, progress=False)
    assert math.isnan(out.metrics["tta"]["auc"]) and out.metrics["notes"]


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="model.keras: model file missing"):
        load_model(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"model\.keras: not a readable Keras model"):
        load_model(tmp_path)


def test_evaluate_writes_all_outputs_from_shards(tiny_shards, tmp_path):
    from pcam.input import load_arrays

    images, labels, ids = load_arrays(tiny_shards, "test")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _flat_model().save(model_dir / "model.keras")
    cfg: ExperimentConfig = config_from_dict({"evaluate": {"batch_size": 64}})
    out = tmp_path / "eval"
    result = E.evaluate(model_dir, tiny_shards, out, cfg, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        ".pcam-kind",
        "confusion.json",
        "metrics.json",
        "predictions.csv",
        "roc.json",
    ]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["split"] == "test" and saved["views"] == list(VIEWS5) and saved["n"] == len(labels)
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    prob = np.array([float(r["probability"]) for r in rows])
    vote = np.array([int(r["vote"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    if saved["tta"]["auc"] is not None:
        assert saved["tta"]["auc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-4)
    assert saved["tta"]["accuracy"] == pytest.approx(skm.accuracy_score(y, vote))
    roc = json.loads((out / "roc.json").read_text())
    assert all(math.isfinite(t) for t in roc["thresholds"])
    conf = json.loads((out / "confusion.json").read_text())
    assert sum(map(sum, conf["tta"]["matrix"])) == len(labels)


def test_cli_evaluate_reports_a_missing_model(tmp_path, capsys):
    from pcam.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("name: t\n")
    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "nope"),
            "--shards",
            str(tmp_path / "shards"),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(config),
        ]
    )
    assert code == 2
    assert "model.keras: model file missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
