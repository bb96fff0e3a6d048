"""``pcam predict`` on patch sources, the shared scoring function, model resolution and bad input (real CLI)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pcam.errors import DataError
from pcam.fsutil import file_sha256
from pcam.predict import predict
from pcam.scoring import load_predictor, score_images

REPO = Path(__file__).resolve().parents[2]


def _asymmetric_model():
    """A small conv model that is not flip-invariant: TTA views really differ."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(2, 5, strides=4, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def test_score_images_tta_is_the_mean_over_views(real_patches):
    model = _asymmetric_model()
    images = real_patches[0][:10]
    mean, single = score_images(model, images, views=5, batch_size=4)
    views = [
        images,
        images[:, :, ::-1],
        images[:, ::-1],
        np.rot90(images, 1, axes=(1, 2)),
        np.rot90(images, 3, axes=(1, 2)),
    ]
    each = [model.predict(np.ascontiguousarray(v).astype(np.float32), verbose=0)[:, 0] for v in views]
    np.testing.assert_allclose(single, each[0], atol=1e-5)
    np.testing.assert_allclose(mean, np.mean(each, axis=0), atol=1e-5)
    assert np.abs(mean - single).max() > 1e-4  # the views mattered
    one, same = score_images(model, images, views=1)
    np.testing.assert_array_equal(one, same)
    with pytest.raises(DataError, match="uint8"):
        score_images(model, images.astype(np.float32))


@pytest.fixture(scope="module")
def champion(mean_model_dir: Path, tmp_path_factory) -> Path:
    """The champion layout: model.keras + the metrics.json of its evaluation (threshold 0.6)."""
    out = tmp_path_factory.mktemp("champion") / "champion"
    out.mkdir()
    shutil.copy(mean_model_dir / "model.keras", out / "model.keras")
    sha = file_sha256(out / "model.keras")
    metrics = {
        "model_sha256": sha,
        "views": ["identity", "hflip", "vflip", "rot90", "rot270"],
        "tta": {"sensitivity_threshold": 0.6, "target_sensitivity": 0.95},
        "single": {"sensitivity_threshold": 0.61, "target_sensitivity": 0.95},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.fixture(scope="module")
def patch_inputs(pcam_sample: Path, kaggle_sample: Path, real_patches, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("patch_inputs")
    folders = root / "folders"
    rows = [r for r in csv.DictReader(open(pcam_sample / "labels.csv")) if r["split"] == "valid"]
    for label in ("0", "1"):
        for r in [r for r in rows if r["label"] == label][:12]:
            (folders / "valid" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(pcam_sample / r["path"], folders / r["path"])
    h5 = root / "x.h5"
    with h5py.File(h5, "w") as handle:
        handle.create_dataset("x", data=np.concatenate([real_patches[0][:5], real_patches[1][:5]]))
    return {"folders": folders, "h5": h5, "kaggle": kaggle_sample, "flat": kaggle_sample / "test"}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def test_predict_patch_sources(champion, patch_inputs, real_patches, tmp_path):
    out = tmp_path / "out"
    summary = predict(str(champion), [str(p) for p in patch_inputs.values()], out, progress=False)
    rows = _rows(out / "predictions.csv")
    assert list(rows[0]) == [
        "source",
        "id",
        "probability",
        "single_probability",
        "label_at_0.5",
        "label_at_operating_point",
        "true_label",
    ]
    kaggle_labelled = len(_rows(patch_inputs["kaggle"] / "train_labels.csv"))  # 15 in the sample, 7 in the fixture
    kaggle_test = len(list(patch_inputs["flat"].glob("*.tif")))  # 11 in the sample, 2 in the fixture
    assert len(rows) == 24 + 10 + kaggle_labelled + kaggle_test == summary["patches"]["patches"]
    assert summary["patches"]["operating_point"] == 0.6 and summary["patches"]["views"][-1] == "rot270"
    for r in rows:
        p = float(r["probability"])
        assert p == pytest.approx(float(r["single_probability"]), abs=1e-6)  # the mean is flip-invariant
        assert r["label_at_0.5"] == str(int(p >= 0.5)) and r["label_at_operating_point"] == str(int(p >= 0.6))
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    folder_rows = by_source["folders"]
    assert all(r["true_label"] == r["id"].split("/")[1] for r in folder_rows)  # valid/<label>/<file>
    h5_rows = by_source["x.h5"]
    assert [r["id"] for r in h5_rows] == [f"x.h5/{i}" for i in range(10)] and h5_rows[0]["true_label"] == ""
    expected = np.concatenate([real_patches[0][:5], real_patches[1][:5]]).astype(np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose([float(r["probability"]) for r in h5_rows], expected / 255, atol=2e-6)
    assert len(by_source["kaggle-sample"]) == kaggle_labelled
    assert {r["true_label"] for r in by_source["kaggle-sample"]} <= {"0", "1"}
    assert len(by_source["test"]) == kaggle_test and by_source["test"][0]["id"].endswith(".tif")
    assert json.loads((out / "predict.json").read_text())["model_sha256"] == file_sha256(champion / "model.keras")


def test_model_locations_and_operating_point(champion, mean_model_dir, tmp_path):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "evaluate").mkdir()
    shutil.copy(champion / "model.keras", run / "train" / "model.keras")
    shutil.copy(champion / "metrics.json", run / "evaluate" / "metrics.json")
    with contextlib.ExitStack() as stack:
        assert load_predictor(str(run), 5, stack).operating_point == 0.6  # run directory
        assert load_predictor(str(run / "train"), 1, stack).operating_point == 0.61  # train dir, single view
        assert load_predictor(str(champion / "model.keras"), 5, stack).operating_point == 0.6
        other = load_predictor(str(mean_model_dir), 5, stack)  # no evaluation beside it
        assert other.operating_point is None and "no metrics.json" in other.operating_point_source
        metrics = json.loads((champion / "metrics.json").read_text())
        (run / "evaluate" / "metrics.json").write_text(json.dumps({**metrics, "model_sha256": "f" * 64}))
        assert load_predictor(str(run), 5, stack).operating_point is None  # evaluated other bytes


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "pcam.cli", "predict", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, names: str, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("pcam predict: error: ")]
    assert len(errors) == 1 and names in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing half-written


@pytest.fixture(scope="module")
def bad_inputs(test_slide, real_patches, tmp_path_factory) -> dict[str, Path]:
    from pcam.slide_synth import write_slide

    root = tmp_path_factory.mktemp("bad")
    truncated = root / "truncated.tif"
    data = test_slide.path.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    notes = root / "notes.txt"
    notes.write_text("not a slide\n")
    garbage = root / "garbage.svs"
    garbage.write_bytes(os.urandom(4096))
    nompp = write_slide(root / "nompp.tif", lambda r, c: real_patches[0][0], 4, 4, levels=2, resolution=False)
    empty = root / "empty"
    empty.mkdir()
    return {"truncated": truncated, "notes": notes, "garbage": garbage, "nompp": nompp, "empty": empty}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("truncated", "truncated.tif: corrupt or truncated slide"),
        ("notes", "notes.txt: unsupported format"),
        ("garbage", "garbage.svs: unsupported slide format"),
        ("nompp", "nompp.tif: no resolution"),
        ("empty", "empty: empty folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, expect, bad_inputs, mean_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _cli("--model", str(mean_model_dir), "--input", str(bad_inputs[case]), "--out", str(out))
    _assert_one_line_error(result, expect, out)


def test_bad_models_are_one_line_exit_2(test_slide, pcam_sample, tmp_path):
    import keras

    out = tmp_path / "out"
    wrong_kind = _cli("--model", str(pcam_sample), "--input", str(test_slide.path), "--out", str(out))
    _assert_one_line_error(wrong_kind, f"{pcam_sample}: no model.keras here", out)
    small = tmp_path / "small"
    small.mkdir()
    inputs = keras.Input((64, 64, 3))
    keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs))).save(
        small / "model.keras"
    )
    other_size = _cli("--model", str(small), "--input", str(test_slide.path), "--out", str(out))
    _assert_one_line_error(other_size, "model.keras: model expects input (None, 64, 64, 3)", out)


def test_cli_predicts_a_folder_of_slides_and_patches(test_slide, mean_model_dir, kaggle_sample, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(test_slide.path, folder / "a.tif")
    patches = sorted((kaggle_sample / "test").iterdir())[:3]  # the fixture has 2
    for p in patches:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "out"
    result = _cli(
        "--model",
        str(mean_model_dir),
        "--input",
        str(folder),
        "--out",
        str(out),
        "--no-progress",
        "--operating-point",
        "0.55",
    )
    assert result.returncode == 0, result.stderr
    assert len(_rows(out / "predictions.csv")) == len(patches) >= 2
    slides = _rows(out / "slides.csv")
    assert [s["slide"] for s in slides] == ["a.tif"] and int(slides[0]["tiles_scored"]) > 40
    for name in ("tiles.csv", "heatmap.png", "tumour.geojson", "slide.json"):
        assert (out / "slides" / "a.tif" / name).is_file()
    assert not (out / ".partial").exists()
    tiles = _rows(out / "slides" / "a.tif" / "tiles.csv")
    assert all(int(t["x"]) % 192 == 0 and int(t["size"]) == 192 for t in tiles)


def test_mixed_order_of_checks_loads_no_model_for_bad_input(bad_inputs, tmp_path):
    # A missing model and a bad slide: the slide is named (inputs are checked before any model loads).
    out = tmp_path / "out"
    result = _cli("--model", str(tmp_path / "nope"), "--input", str(bad_inputs["nompp"]), "--out", str(out))
    _assert_one_line_error(result, "nompp.tif: no resolution", out)
