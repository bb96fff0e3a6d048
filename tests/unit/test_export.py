"""pcam.export: the TF Serving layout, and a SavedModel that scores like `pcam evaluate`'s TTA."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcam.config import EvaluateConfig
from pcam.errors import ConfigError, DataError
from tests.fixtures_serving import png, real_jpegs

VIEWS = EvaluateConfig().tta_views
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(cnn_champion) -> Path:
    return cnn_champion / "serving" / "1"


def test_layout_is_what_tf_serving_loads(exported):
    from pcam.export import graph_ops, read_meta

    assert exported.name == "1"
    assert (exported / "saved_model.pb").is_file()
    assert (
        list((exported / "variables").glob("variables.data-*"))
        and (exported / "variables" / "variables.index").is_file()
    )
    meta = read_meta(exported)
    assert meta["views"] == list(VIEWS) and meta["input"]["encodings"] == ["png", "jpeg"]
    assert meta["ops"] == graph_ops(exported)
    # Explicit decoders only: no DecodeImage/DecodeWebP that an older serving build may lack.
    assert {"DecodePng", "DecodeJpeg"} <= set(meta["ops"])
    assert not {o for o in meta["ops"] if o.startswith("Decode")} - {"DecodePng", "DecodeJpeg"}


def test_savedmodel_equals_keras_tta_on_real_patches(exported, cnn_model_dir, pcam_sample):
    import tensorflow as tf

    from pcam.artifacts import load_model
    from pcam.evaluate import predict_views

    jpegs, pixels = real_jpegs(pcam_sample)
    probs = predict_views(load_model(cnn_model_dir), pixels, VIEWS, progress=False)  # (V, N), identity first
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    for encoded in (jpegs, [png(p) for p in pixels]):
        out = serve(image_bytes=tf.constant(encoded))
        np.testing.assert_allclose(out["probability"].numpy(), probs.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(out["single_probability"].numpy(), probs[0], atol=1e-5)
    # Guards: the scores differ between patches and the views change them, so equality above means something.
    assert probs.mean(axis=0).std() > 1e-3
    assert np.abs(probs.mean(axis=0) - probs[0]).max() > 1e-4


def test_signature_rejects_other_encodings_and_sizes(exported, pcam_sample):
    import tensorflow as tf

    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    _, pixels = real_jpegs(pcam_sample, per_class=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a PNG or JPEG"):
        serve(image_bytes=tf.constant([b"GIF89a not a patch"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 96x96"):
        serve(image_bytes=tf.constant([png(pixels[0][:64, :64])]))


def test_second_export_is_a_new_version_and_views_are_checked(exported, cnn_model_dir, tmp_path):
    from pcam.export import export_serving, latest_version, read_meta

    shutil.copytree(exported, tmp_path / "serving" / "1")  # the shared champion stays as it is
    second = export_serving(cnn_model_dir, tmp_path / "serving", ("identity", "hflip"))
    assert Path(second).name == "2" and latest_version(tmp_path / "serving") == Path(second)
    assert read_meta(second)["views"] == ["identity", "hflip"]
    with pytest.raises(ConfigError, match="unknown TTA view 'sideways'"):
        export_serving(cnn_model_dir, tmp_path / "serving", ("identity", "sideways"))


def test_unreadable_model_leaves_no_version_folder(tmp_path):
    from pcam.export import export_serving

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="model.keras"):
        export_serving(tmp_path / "model", tmp_path / "serving", VIEWS)
    assert not (tmp_path / "serving").exists() or not any((tmp_path / "serving").iterdir())


def test_cli_bad_view_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pcam.cli",
            "export",
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "serving"),
            "--views",
            "identity",
            "upside",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pcam export: error: export: unknown TTA view 'upside'; expected one of "
        "identity, hflip, vflip, rot90, rot180, rot270, transpose, transverse"
    ]
