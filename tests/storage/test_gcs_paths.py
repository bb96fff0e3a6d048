"""Every gs:// use of the library against a real GCS-protocol server: ingest, weights, checkpoints, champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pcam import champion as C
from pcam import models, storage
from pcam import promote as P
from pcam.errors import ConfigError, DataError
from pcam.fsutil import file_sha256
from pcam.ingest import ingest

REPO = Path(__file__).resolve().parents[2]
H5 = "camelyonpatch_level_2_split"


def _manifest(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return {k: manifest[k] for k in ("counts", "files") if k in manifest}


@pytest.fixture(scope="module")
def folder_tree(pcam_sample, tmp_path_factory) -> Path:
    """A small class-folder tree of real patches (no labels.csv: it lists all 23,000)."""
    root = tmp_path_factory.mktemp("folders") / "pcam"
    for split, n in (("train", 24), ("valid", 12)):
        for label in ("0", "1"):
            (root / split / label).mkdir(parents=True)
            for path in sorted((pcam_sample / split / label).glob("*.jpg"))[:n]:
                (root / split / label / path.name).write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def h5_tree(folder_tree, tmp_path_factory) -> Path:
    """The same real patches in the official HDF5 layout (x: N,96,96,3 uint8; y: N,1,1,1)."""
    root = tmp_path_factory.mktemp("h5") / "pcam"
    root.mkdir()
    for split, source in (("train", "train"), ("valid", "valid"), ("test", "valid")):
        paths = sorted((folder_tree / source).glob("*/*.jpg"))
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        y = np.array([int(p.parent.name) for p in paths], dtype=np.uint8).reshape(-1, 1, 1, 1)
        with h5py.File(root / f"{H5}_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(root / f"{H5}_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y)
    return root


@pytest.mark.parametrize("layout", ["folders", "hdf5"])
def test_ingest_from_gcs_equals_ingest_from_disk(layout, folder_tree, h5_tree, gcs, tmp_path):
    local = folder_tree if layout == "folders" else h5_tree
    storage.upload_tree(local, f"{gcs}/{layout}")
    from_gcs = ingest(f"{gcs}/{layout}", tmp_path / "from-gcs", fmt=layout, cache_dir=tmp_path / "c1")
    from_disk = ingest(str(local), tmp_path / "from-disk", fmt=layout, cache_dir=tmp_path / "c2")
    assert from_gcs["counts"] == from_disk["counts"] and from_gcs["count"] == 72 + (24 if layout == "hdf5" else 0)
    assert _manifest(tmp_path / "from-gcs") == _manifest(tmp_path / "from-disk")
    assert list((tmp_path / "c1").iterdir()) == []  # the scratch copy is gone


def test_ingest_from_a_missing_gcs_source_is_one_line(gcs, tmp_path):
    with pytest.raises(DataError, match=rf"^{gcs}/nothing-here: does not exist$"):
        ingest(f"{gcs}/nothing-here", tmp_path / "out", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"^gs://pcam-no-bucket-here/x: bucket gs://pcam-no-bucket-here does not "):
        ingest("gs://pcam-no-bucket-here/x", tmp_path / "out", cache_dir=tmp_path / "c")
    assert not (tmp_path / "out").exists()


def test_weights_file_from_gcs(gcs, tmp_path):
    source = tmp_path / "base.weights.h5"
    source.write_bytes(os.urandom(5000))
    storage.upload_file(source, f"{gcs}/weights/base.weights.h5")
    local, tmp = models._local_copy(f"{gcs}/weights/base.weights.h5")
    try:
        assert local.name.endswith(".weights.h5") and local.read_bytes() == source.read_bytes()
    finally:
        tmp.unlink()
    with pytest.raises(ConfigError, match=rf"^weights file {gcs}/weights/other.weights.h5: does not exist$"):
        models._local_copy(f"{gcs}/weights/other.weights.h5")


# ------------------------------------------------------------ checkpoints on gs://, SIGKILL, resume

EPOCHS = 4
CONFIG = """
seed: 3
defaults: {{epochs: {epochs}, batch_size: 32}}
models:
  logreg: {{optimizer: sgd, learning_rate: 0.0001, max_learning_rate: 0.001, weight_decay: 0.0001}}
augment: {{online: true, noise: 0.02}}
train: {{shuffle_buffer: 256, checkpoint_uri: "{uri}"}}
"""


def _train(shards: Path, out: Path, config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pcam.cli",
        "train",
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--config",
        str(config),
        "--model",
        "logreg",
        "--policy",
        "onecycle",
    ]


def _epochs(root: str) -> list[int]:
    from pcam.checkpoint import complete_checkpoints

    return [epoch for epoch, _ in complete_checkpoints(root)]


@pytest.mark.slow
def test_sigkill_with_checkpoints_on_gcs_then_resume_equals_uninterrupted(tiny_shards, gcs, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    runs = {}
    for name in ("killed", "clean"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(CONFIG.format(epochs=EPOCHS, uri=f"{gcs}/ckpt-{name}"))
        runs[name] = (config, tmp_path / name, f"{gcs}/ckpt-{name}/logreg-onecycle-train")
    config, out, root = runs["killed"]
    proc = subprocess.Popen(
        _train(tiny_shards, out, config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not _epochs(root) or _epochs(root)[-1] < 2:
        assert proc.poll() is None, "training ended before its second checkpoint"
        assert time.monotonic() < deadline, "no second checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _epochs(root)[-1]
    assert 2 <= killed_at < EPOCHS and not (out / "train.json").exists()
    assert not (out / "checkpoint").exists()  # checkpoints went to gs://, not into the output directory

    resumed = subprocess.run(_train(tiny_shards, out, config), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"epoch {killed_at} done" in resumed.stderr and root in resumed.stderr
    assert json.loads((out / "train.json").read_text())["resumed_from"] == [killed_at]
    clean = subprocess.run(
        _train(tiny_shards, runs["clean"][1], runs["clean"][0]), env=env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-2000:]

    keys = ("epoch", "lr", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")
    histories = [json.loads((runs[n][1] / "history.json").read_text()) for n in ("killed", "clean")]
    assert [[r[k] for k in keys] for r in histories[0]] == [[r[k] for k in keys] for r in histories[1]]
    weights = []
    for name in ("killed", "clean"):
        assert _epochs(runs[name][2]) == [EPOCHS]  # older checkpoints were deleted
        npz = np.load(__import__("io").BytesIO(storage.read_bytes(f"{runs[name][2]}/epoch-{EPOCHS:05d}/variables.npz")))
        weights.append([npz[k] for k in sorted(npz.files)])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical: weights, optimizer slots, RNG states


# ------------------------------------------------------------ champion on gs:// through faults


def _candidate(root: Path, name: str, auc: float, size: int = 2048) -> Path:
    from pcam.fsutil import file_sha256

    (root / name / "train").mkdir(parents=True)
    model = root / name / "train" / "model.keras"
    model.write_bytes(os.urandom(size))
    (root / name / "evaluate").mkdir()
    (root / name / "evaluate" / "metrics.json").write_text(
        json.dumps({"tta": {"auc": auc}, "model": name, "model_sha256": file_sha256(model)})
    )
    return root / name


def test_server_stopped_mid_promotion_keeps_the_old_champion(faulty_gcs, tmp_path):
    server, proxy, bucket = faulty_gcs
    uri = f"{bucket}/champion"
    old = _candidate(tmp_path, "old", 0.6)
    new = _candidate(tmp_path, "new", 0.9, size=3 << 20)
    assert P.promote(old / "evaluate", old / "train", uri, out_dir=tmp_path / "d1", serving=False)["promoted"]
    proxy.on_body_bytes = (1 << 20, server.stop)  # the server dies 1 MiB into the new model's upload
    with pytest.raises(DataError, match=rf"^{uri}/versions/.*/model.keras: upload failed after retrying for 3 s"):
        P.promote(new / "evaluate", new / "train", uri, out_dir=tmp_path / "d2", serving=False)
    server.start()
    pointer = C.fetch(uri, tmp_path / "reader")
    assert pointer["model"] == "old"  # one complete champion: the old one
    # The unpublished version folder has no marker (its cleanup failed with the server): no reader takes it
    # for complete, and nothing points at it.
    partial = [v for v in storage.list_dir(f"{uri}/versions") if v != pointer["version"]]
    assert len(partial) == 1 and "version.json" not in storage.list_dir(f"{uri}/versions/{partial[0]}")
    proxy.faults = [503, 503, 502, 429]  # a burst of transient errors is retried through
    assert P.promote(new / "evaluate", new / "train", uri, out_dir=tmp_path / "d3", serving=False)["promoted"]
    assert C.fetch(uri, tmp_path / "reader")["model"] == "new"


def test_promotion_to_a_missing_bucket_or_forbidden_is_one_line(faulty_gcs, tmp_path, capsys):
    from pcam.cli import main

    _, proxy, bucket = faulty_gcs
    cand = _candidate(tmp_path, "c", 0.7)
    args = [
        "promote",
        "--eval",
        str(cand / "evaluate"),
        "--model",
        str(cand / "train"),
        "--out",
        str(tmp_path / "d"),
        "--no-serving-export",
    ]
    assert main([*args, "--champion", "gs://pcam-no-such-bucket/champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "gs://pcam-no-such-bucket/champion: bucket gs://pcam-no-such-bucket does not exist" in err[0]
    )
    proxy.faults = [403]
    assert main([*args, "--champion", f"{bucket}/champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "permission denied to read for anonymous" in err[0]
    assert not (tmp_path / "d").exists()


def test_a_champion_on_gcs_is_served_and_predicted_from_its_promoted_version(gcs, tmp_path):
    """Promotion to gs:// exports the version's SavedModel; `pcam serve` and `pcam predict` read that version."""
    import contextlib

    from pcam.config import ModelConfig
    from pcam.models import build_model
    from pcam.scoring import resolve_model_file
    from pcam.serve import resolve_model

    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "evaluate").mkdir()
    build_model("logreg", ModelConfig(), seed=1).save(run / "train" / "model.keras")
    sha = file_sha256(run / "train" / "model.keras")
    (run / "evaluate" / "metrics.json").write_text(
        json.dumps({"tta": {"auc": 0.7}, "single": {"auc": 0.7}, "model": "logreg", "model_sha256": sha})
    )
    uri = f"{gcs}/champion"
    decision = P.promote(run / "evaluate", run / "train", uri, out_dir=tmp_path / "d")
    assert decision["promoted"] and decision["serving"] == f"{uri}/versions/{decision['version']}/serving"
    served = resolve_model(uri, str(tmp_path / "serve"))
    assert (served / "saved_model.pb").is_file() and served.name == "1"
    remote = sorted(storage.walk(f"{decision['serving']}/1"))
    assert remote == sorted(p.relative_to(served).as_posix() for p in served.rglob("*") if p.is_file())
    with contextlib.ExitStack() as stack:
        model_file, metrics = resolve_model_file(uri, stack)
        assert file_sha256(model_file) == sha and metrics is not None
