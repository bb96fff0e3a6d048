import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam import champion as C
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
    result.metrics.update(
        {
            "split": "test",
            "model": name,
            "policy": "constant",
            "data_fingerprint": E.data_fingerprint(ids, labels),
            "model_sha256": file_sha256(model_dir / "model.keras"),
        }
    )
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


def _current(champion, tmp_path):
    """What a reader gets: the pointer, and the model/metrics files of the version it names."""
    dest = tmp_path / "reader"
    pointer = C.fetch(str(champion), dest)
    return pointer, file_sha256(dest / "model.keras"), json.loads((dest / "metrics.json").read_text())


def test_first_run_promotes_then_better_replaces_and_worse_or_equal_do_not(candidates, tmp_path):
    good, bad = candidates
    champion = tmp_path / "champion"
    first = _promote(bad, champion, tmp_path)
    assert first["promoted"] is True and first["champion_score"] is None
    assert sorted(p.name for p in champion.iterdir()) == ["champion.json", "champion.json.lock", "versions"]
    pointer, sha, metrics = _current(champion, tmp_path)
    assert sha == file_sha256(bad / "train" / "model.keras") == pointer["model_sha256"] == metrics["model_sha256"]
    assert sorted(p.name for p in (champion / "versions" / first["version"]).iterdir()) == [
        "metrics.json",
        "model.keras",
        "serving",
        "version.json",
    ]
    assert pointer["serving"] == first["serving"] == str(champion / "versions" / first["version"] / "serving")
    assert (Path(pointer["serving"]) / "1" / "saved_model.pb").is_file()  # what KServe / pcam serve load

    better = _promote(good, champion, tmp_path)
    assert better["promoted"] is True and better["champion_score"] == pytest.approx(first["candidate_score"])
    provenance, sha, _ = _current(champion, tmp_path)
    assert sha == file_sha256(good / "train" / "model.keras")
    assert provenance["model"] == "good" and provenance["replaced"]["model"] == "bad"
    assert provenance["history"] == [first["version"]]  # the previous version is kept for readers
    # no staging directories left anywhere
    assert [p for p in tmp_path.rglob(".*") if p.name not in ("champion.json.lock", ".pcam-kind")] == []

    worse = _promote(bad, champion, tmp_path)
    equal = _promote(good, champion, tmp_path)
    assert worse["promoted"] is False and equal["promoted"] is False
    assert "strictly better" in equal["reason"]
    assert _current(champion, tmp_path)[1] == file_sha256(good / "train" / "model.keras")
    assert len(list((champion / "versions").iterdir())) == 2  # the losers' uploads were discarded
    saved = json.loads((tmp_path / "decision" / "decision.json").read_text())
    assert saved == equal
    assert set(saved) >= {"promoted", "reason", "metric", "candidate_score", "champion_score", "champion_uri"}


def test_old_versions_age_out_of_the_history(candidates, tmp_path):
    good, _ = candidates
    champion = tmp_path / "champion"
    versions = []
    metrics_path = good / "evaluate" / "metrics.json"
    original = metrics_path.read_text()
    try:
        for i in range(C.KEEP_VERSIONS + 3):
            metrics = json.loads(original)
            metrics["tta"]["auc"] = 0.5 + i / 100  # each round strictly better
            metrics_path.write_text(json.dumps(metrics))
            versions.append(_promote(good, champion, tmp_path)["version"])
    finally:
        metrics_path.write_text(original)
    kept = sorted(p.name for p in (champion / "versions").iterdir())
    assert kept == sorted(versions[-(C.KEEP_VERSIONS + 1) :])  # the champion + KEEP_VERSIONS before it


def test_model_must_be_the_one_the_evaluation_scored(candidates, tmp_path, capsys):
    from pcam.cli import main

    good, bad = candidates
    champion = tmp_path / "champion"
    with pytest.raises(
        DataError,
        match=r"good/evaluate/metrics.json scored another model \(sha256 .*\) than "
        r".*bad/train/model.keras .*evaluate this model first",
    ):
        P.promote(good / "evaluate", bad / "train", str(champion), out_dir=tmp_path / "d")
    code = main(
        [
            "promote",
            "--eval",
            str(good / "evaluate"),
            "--model",
            str(bad / "train"),
            "--champion",
            str(champion),
            "--out",
            str(tmp_path / "d"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "scored another model" in err
    assert not champion.exists() and not (tmp_path / "d").exists()


def test_champion_location_that_is_not_a_champion_is_refused_unless_forced(candidates, tmp_path):
    good, _ = candidates
    champion = tmp_path / "thesis"
    champion.mkdir()
    (champion / "thesis.tex").write_text("years of work")
    with pytest.raises(
        DataError,
        match=r"thesis: not empty and not a pcam champion \(no champion.json; holds "
        r"'thesis.tex'\); choose another --champion, or pass --force",
    ):
        _promote(good, champion, tmp_path)
    assert sorted(p.name for p in champion.iterdir()) == ["thesis.tex"]
    assert _promote(good, champion, tmp_path, force=True)["promoted"] is True
    assert (champion / "thesis.tex").read_text() == "years of work"  # --force writes beside, deletes nothing
    assert _current(champion, tmp_path)[0]["model"] == "good"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: is a file"):
        _promote(good, tmp_path / "afile", tmp_path)
    for inside in (good / "train", good / "evaluate" / "champion"):
        with pytest.raises(DataError, match=r"inside the candidate's .*good/(train|evaluate); choose a location"):
            _promote(good, inside, tmp_path)
    assert not (good / "evaluate" / "champion").exists()


def test_corrupt_champion_is_a_clear_error(candidates, tmp_path):
    good, bad = candidates
    champion = tmp_path / "champion"
    version = _promote(bad, champion, tmp_path)["version"]
    metrics = champion / "versions" / version / "metrics.json"
    metrics.write_text("{not json")
    with pytest.raises(DataError, match=rf"{version}/metrics\.json: not valid JSON"):
        _promote(good, champion, tmp_path)
    metrics.write_text(json.dumps({"tta": {"f1": 0.5}}))
    with pytest.raises(DataError, match=r"metrics\.json: no tta\.auc score"):
        _promote(good, champion, tmp_path)
    metrics.unlink()
    with pytest.raises(DataError, match="pass shards_dir and cfg"):
        _promote(good, champion, tmp_path)
    (champion / "champion.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"champion.json: not a pcam champion pointer"):
        _promote(good, champion, tmp_path)


def test_pre_versioning_champion_is_read_then_replaced(candidates, tmp_path):
    """A champion written before versioning (files at the top level) still counts, and is replaced cleanly."""
    good, bad = candidates
    champion = tmp_path / "champion"
    champion.mkdir()
    for name in ("model.keras", "metrics.json"):
        (champion / name).write_bytes((good / ("train" if name == "model.keras" else "evaluate") / name).read_bytes())
    (champion / "champion.json").write_text(json.dumps({"model": "good", "model_sha256": "x"}))
    assert _promote(bad, champion, tmp_path)["promoted"] is False
    metrics = json.loads((champion / "metrics.json").read_text())
    metrics["tta"]["auc"] = 0.0
    (champion / "metrics.json").write_text(json.dumps(metrics))
    assert _promote(good, champion, tmp_path)["promoted"] is True
    assert sorted(p.name for p in champion.iterdir()) == ["champion.json", "champion.json.lock", "versions"]


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
    first = _promote(fitted, champion, tmp_path, shards_dir=tiny_shards, cfg=cfg)
    assert first["promoted"] is True
    stored_path = champion / "versions" / first["version"] / "metrics.json"
    stored = json.loads(stored_path.read_text())
    stored["tta"]["auc"] = 0.999  # pretend it scored better on some older test set
    stored_path.write_text(json.dumps(stored))
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
    code = main(
        ["promote", "--runs", str(bad), str(good), "--champion", str(tmp_path / "champ"), "--out", str(tmp_path / "d")]
    )
    assert code == 0 and capsys.readouterr().out.strip().startswith("promoted: no champion yet")
    assert json.loads((tmp_path / "champ" / "champion.json").read_text())["model"] == "good"
    assert C.fetch(str(tmp_path / "champ"), tmp_path / "reader")["model"] == "good"


def test_cli_refusals_as_a_subprocess(candidates, tmp_path):
    """The way a user runs it: one stderr line, exit 2, nothing written (and no TensorFlow import)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    good, bad = candidates
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{repo}"}
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    cases = [
        (
            ["--eval", str(good / "evaluate"), "--model", str(bad / "train"), "--champion", str(tmp_path / "c")],
            "scored another model",
        ),
        (
            ["--eval", str(good / "evaluate"), "--model", str(good / "train"), "--champion", str(thesis)],
            "not empty and not a pcam champion",
        ),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "pcam.cli", "promote", *args, "--out", str(tmp_path / "d")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert lines[0].startswith("pcam promote: error: ")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    assert [p.name for p in thesis.iterdir()] == ["thesis.tex"]
