"""The bad-input matrix, end to end through the real ``pcam`` command line.

Every case feeds one fault to one command and asserts what a user sees: exit code 2,
exactly one error line on stderr that names the file, key or URI at fault, and
nothing half-written (the output path does not exist and no ``.<out>.*.tmp`` temp
name is left beside it). The modules' own tests check the same faults at the library
level (which exception, which message); this matrix is the CLI's view of each, so it
also catches what escapes the library as a traceback (an OSError, a TensorFlow error).

Disk full is simulated with RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so a
write past the limit fails with EFBIG), the only cases that need one; there the
error line is the last line and the only ``pcam ...: error:`` line, while log lines
before it are allowed.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pcam.ingest.sources as ingest_sources
from pcam.cli import main
from pcam.ingest import ingest
from tests.faults.conftest import run_pcam, temp_siblings
from tests.fixtures_data import closed_port_url
from tests.fixtures_shards import sample_patches, write_split_json

H5 = "camelyonpatch_level_2_split"


@dataclass
class Case:
    argv: list[str]
    names: list[str]
    """Substrings the error line must hold: the file, key or URI at fault."""
    out: Path
    fsize: int | None = None
    """Run in a child process whose writes fail past this many bytes (disk full)."""
    cache: Path | None = None
    extra_clean: list[Path] = field(default_factory=list)


class Env:
    """What a case builder may use: a fresh directory and the session's fixtures, built on demand."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest):
        self.tmp = tmp
        self.request = request

    def fixture(self, name: str) -> Path:
        return self.request.getfixturevalue(name)

    @property
    def patches(self) -> tuple[np.ndarray, np.ndarray]:
        """Six real patches (three per label) as uint8 arrays, and their labels."""
        images, labels, _ = sample_patches(self.fixture("pcam_sample"), "train", 3)
        return images, labels

    def config(self, text: str) -> Path:
        path = self.tmp / "config.yaml"
        path.write_text(text)
        return path

    def ingest_case(
        self, source: Path | str, *names: str, extra: tuple[str, ...] = (), fsize: int | None = None
    ) -> Case:
        out, cache = self.tmp / "out" / "dataset", self.tmp / "cache"
        return Case(
            ["ingest", "--source", str(source), "--out", str(out), "--cache-dir", str(cache), *extra],
            list(names),
            out,
            fsize=fsize,
            cache=cache,
        )


# ----------------------------------------------------------------------------- data builders


def _h5_source(env: Env, x: np.ndarray, y: np.ndarray, *, gz: bool = False) -> tuple[Path, Path, Path]:
    """The official HDF5 layout (train split only); returns (root, x file, y file)."""
    root = env.tmp / "h5"
    root.mkdir()
    paths = []
    for kind, data in (("x", x), ("y", y.reshape(-1, 1, 1, 1))):
        path = root / f"{H5}_train_{kind}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset(kind, data=data)
        if gz:
            with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
            path = path.with_name(path.name + ".gz")
        paths.append(path)
    return root, paths[0], paths[1]


def _damaged_h5(env: Env, *, gz: bool, damage: str) -> Case:
    x, y = env.patches
    root, x_path, _ = _h5_source(env, x, y, gz=gz)
    data = bytearray(x_path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif gz:  # flip bytes inside the deflate stream: the gzip CRC (or zlib) catches it
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    else:  # wipe the HDF5 superblock (raw pixel bytes carry no checksum, the header does)
        data[:64] = bytes(64)
    x_path.write_bytes(bytes(data))
    return env.ingest_case(root, x_path.name)


def _h5_pixels(env: Env, change: Callable[[np.ndarray], np.ndarray], expect: str) -> Case:
    x, y = env.patches
    root, x_path, _ = _h5_source(env, change(x), y)
    return env.ingest_case(root, x_path.name, expect)


def _h5_nan_label(env: Env) -> Case:
    x, y = env.patches
    labels = y.astype(np.float32)
    labels[4] = np.nan
    root, _, y_path = _h5_source(env, x, labels)
    return env.ingest_case(root, y_path.name, "row 4")


def _folder_image(env: Env, mode: str) -> Case:
    """A class-folder tree of real patches with one image converted to ``mode``."""
    root = env.tmp / "folders"
    images, labels = env.patches
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "train" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"p{i}.png")
    bad = root / "train" / "1" / f"bad-{mode}.png"
    Image.fromarray(images[-1]).convert(mode).save(bad)
    return env.ingest_case(root, bad.name)


def _labels_csv(env: Env, label: object) -> Case:
    root = env.tmp / "folders"
    images, labels = env.patches
    rows = []
    for i, (image, lab) in enumerate(zip(images, labels, strict=True)):
        (root / "train" / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "train" / str(lab) / f"p{i}.png")
        rows.append((f"train/{lab}/p{i}.png", "train", int(lab)))
    rows[2] = (rows[2][0], "train", label)
    pd.DataFrame(rows, columns=["path", "split", "label"]).to_csv(root / "labels.csv", index=False)
    return env.ingest_case(root, "labels.csv", rows[2][0])


def _kaggle(env: Env, fault: str) -> Case:
    root = env.tmp / "kaggle"
    (root / "train").mkdir(parents=True)
    images, labels = env.patches
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(root / "train" / f"id{i}.tif")
        rows.append([f"id{i}", int(label)])
    names = ["train_labels.csv"]
    if fault == "empty-id":
        rows[3][0] = ""
        names.append("row 5")
    elif fault == "id-without-file":
        (root / "train" / "id3.tif").unlink()
        names.append("id3")
    else:
        rows.append(list(rows[1]))
        names.append("id1")
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train_labels.csv", index=False)
    return env.ingest_case(root, *names)


def _unreachable_https(env: Env) -> Case:
    url = f"{closed_port_url()}/pcam/data.tar.gz"
    return env.ingest_case(url, url)


def _unreachable_gcs(env: Env) -> Case:
    # No network: tf.io.gfile fails at once. Network but no credentials: the probe's
    # timeout answers instead (shortened here; the default is PCAM_GCS_TIMEOUT, 120 s).
    env.request.getfixturevalue("monkeypatch").setattr(ingest_sources, "GCS_TIMEOUT_S", 20.0)
    uri = "gs://pcam-faults-no-such-bucket-5d0c2e/pcam"
    return env.ingest_case(uri, uri)


def _small_dataset(env: Env, folders: dict[str, list[int]]) -> Path:
    """A canonical dataset of real patches: {"train": [labels...], "valid": [...]} as class folders."""
    images, _ = env.patches
    root = env.tmp / "small-source"
    for split, labels in folders.items():
        for i, label in enumerate(labels):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i % len(images)]).save(folder / f"{i}.png")
    out = env.tmp / "small-dataset"
    ingest(str(root), out, cache_dir=env.tmp / "cache")
    return out


def _split_case(env: Env, dataset: Path, *extra: str, names: tuple[str, ...], fsize: int | None = None) -> Case:
    out = env.tmp / "out" / "split"
    return Case(["split", "--dataset", str(dataset), "--out", str(out), *extra], list(names), out, fsize=fsize)


def _empty_split(env: Env) -> Case:
    # 4 patches per label: 0.9 / 0.05 / 0.05 rounds valid and test down to nothing
    dataset = _small_dataset(env, {"train": [0, 0, 0, 0, 1, 1, 1, 1]})
    return _split_case(
        env, dataset, "--mode", "random", "--ratios", "0.9", "0.05", "0.05", names=("split.json", "'valid' is empty")
    )


def _split_missing_class(env: Env) -> Case:
    # the source's valid split holds label 0 only; official mode evaluates it as test, as it is
    dataset = _small_dataset(env, {"train": [0, 0, 0, 1, 1, 1], "valid": [0, 0]})
    return _split_case(env, dataset, "--mode", "official", names=("split.json", "'test'", "label 1"))


def _config_case(env: Env, yaml_text: str, key: str) -> Case:
    config = env.config(yaml_text)
    return _split_case(env, env.fixture("tiny_dataset"), "--config", str(config), names=(str(config), repr(key)))


def _shard_case(env: Env, dataset: Path, split: Path, *names: str, fsize: int | None = None) -> Case:
    out = env.tmp / "out" / "shards"
    return Case(
        ["shard", "--dataset", str(dataset), "--split", str(split), "--out", str(out)], list(names), out, fsize=fsize
    )


def _truncated_dataset(env: Env) -> Case:
    dataset = env.tmp / "dataset"
    shutil.copytree(env.fixture("tiny_dataset"), dataset)
    images = dataset / "images.npy"
    images.write_bytes(images.read_bytes()[:-27648])
    return _shard_case(env, dataset, env.fixture("tiny_split"), str(images), "truncated")


def _split_file_missing_class(env: Env) -> Case:
    from pcam.dataset import open_dataset

    dataset = env.fixture("tiny_dataset")
    labels = open_dataset(dataset, verify=False).labels
    zeros, ones = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rows = {"train": [*zeros[:4], *ones[:4]], "valid": [*zeros[4:6], *ones[4:6]], "test": list(zeros[6:8])}
    split = write_split_json(env.tmp / "split", rows, labels)
    return _shard_case(env, dataset, split, str(split / "split.json"), "'test'", "label 1")


def _train_case(env: Env, yaml_text: str, model: str, *names: str) -> Case:
    out = env.tmp / "out" / "train"
    config = env.config(yaml_text)
    return Case(
        [
            "train",
            "--shards",
            str(env.fixture("tiny_shards")),
            "--out",
            str(out),
            "--config",
            str(config),
            "--model",
            model,
            "--policy",
            "constant",
        ],
        [*names],
        out,
    )


def _weights_of_another_architecture(env: Env) -> Case:
    from pcam.config import ModelConfig
    from pcam.models import build_model

    weights = env.tmp / "cnn.weights.h5"
    build_model("cnn", ModelConfig()).save_weights(weights)
    return _train_case(
        env,
        f"defaults: {{epochs: 1, batch_size: 16}}\nmodels:\n  mobilenetv2: {{weights: '{weights}'}}\n",
        "mobilenetv2",
        str(weights),
        "mobilenetv2",
    )


def _corrupt_shard(env: Env) -> Case:
    """One flipped byte in a shard of the right size: index.json's size check passes, the
    TFRecord CRC fails while reading, and the CLI re-checks sha256s to name the shard."""
    from pcam.config import ModelConfig
    from pcam.models import build_model

    shards = env.tmp / "shards"
    shutil.copytree(env.fixture("tiny_shards"), shards)
    victim = sorted(shards.glob("test-*.tfrecord"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    model_dir = env.tmp / "model"
    model_dir.mkdir()
    build_model("logreg", ModelConfig()).save(model_dir / "model.keras")
    out = env.tmp / "out" / "evaluate"
    config = env.config("evaluate: {tta_views: [identity]}\n")
    return Case(
        ["evaluate", "--model", str(model_dir), "--shards", str(shards), "--out", str(out), "--config", str(config)],
        [victim.name, "sha256"],
        out,
    )


CASES: dict[str, Callable[[Env], Case]] = {
    # files: truncated or corrupt HDF5 and gzip
    "hdf5-truncated": lambda e: _damaged_h5(e, gz=False, damage="truncated"),
    "hdf5-corrupt-header": lambda e: _damaged_h5(e, gz=False, damage="corrupt"),
    "gzip-truncated": lambda e: _damaged_h5(e, gz=True, damage="truncated"),
    "gzip-corrupt": lambda e: _damaged_h5(e, gz=True, damage="corrupt"),
    # pixels: wrong shape, dtype or channel count; grayscale or RGBA images
    "shape-64x64": lambda e: _h5_pixels(e, lambda x: np.ascontiguousarray(x[:, :64, :64]), "(64, 64, 3)"),
    "dtype-float32": lambda e: _h5_pixels(e, lambda x: x.astype(np.float32), "float32"),
    "channels-4": lambda e: _h5_pixels(e, lambda x: np.concatenate([x, x[..., :1]], axis=-1), "(96, 96, 4)"),
    "grayscale-image": lambda e: _folder_image(e, "L"),
    "rgba-image": lambda e: _folder_image(e, "RGBA"),
    # labels outside {0, 1} or NaN
    "label-2-in-csv": lambda e: _labels_csv(e, 2),
    "label-nan-in-hdf5": _h5_nan_label,
    # a labels CSV with missing or duplicate ids
    "csv-empty-id": lambda e: _kaggle(e, "empty-id"),
    "csv-id-without-file": lambda e: _kaggle(e, "id-without-file"),
    "csv-duplicate-id": lambda e: _kaggle(e, "duplicate-id"),
    # an empty split or a split missing a class
    "split-empty": _empty_split,
    "split-missing-class": _split_missing_class,
    "split-file-missing-class": _split_file_missing_class,
    # a config with unknown keys, wrong types or negative epochs
    "config-unknown-key": lambda e: _config_case(
        e, "split:\n  mode: random\n  ratio: [0.7, 0.2, 0.1]\n", "split.ratio"
    ),
    "config-wrong-type": lambda e: _config_case(e, "split:\n  ratios: '0.7,0.2,0.1'\n", "split.ratios"),
    "config-negative-epochs": lambda e: _train_case(
        e, "models:\n  cnn: {epochs: -2}\n", "cnn", "config.yaml", "'models.cnn.epochs'"
    ),
    # a weights file for another architecture
    "weights-other-architecture": _weights_of_another_architecture,
    # unreachable gs:// or https source
    "https-unreachable": lambda e: _unreachable_https(e),
    "gs-unreachable": _unreachable_gcs,
    # artifacts checked on read
    "dataset-truncated": _truncated_dataset,
    "shard-corrupt": _corrupt_shard,
    # a disk-full write (RLIMIT_FSIZE in a child process)
    "disk-full-ingest": lambda e: e.ingest_case(
        e.fixture("pcam_sample"), "out/dataset", "File too large", extra=("--limit-per-split", "20"), fsize=256 * 1024
    ),
    "disk-full-split": lambda e: _split_case(
        e, e.fixture("tiny_dataset"), names=("out/split", "File too large"), fsize=64
    ),
    "disk-full-shard": lambda e: _shard_case(
        e, e.fixture("tiny_dataset"), e.fixture("tiny_split"), "out/shards", "File too large", fsize=256 * 1024
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_nothing_half_written(name, tmp_path, request, capsys):
    case = CASES[name](Env(tmp_path, request))
    command = case.argv[0]
    if case.fsize is None:
        capsys.readouterr()
        code = main(case.argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1, err
        line = lines[0]
    else:
        done = run_pcam(case.argv, fsize=case.fsize)
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        assert done.returncode == 2, done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        errors = [ln for ln in lines if ln.startswith(f"pcam {command}: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], done.stderr[-3000:]
        line = errors[0]
    assert line.startswith(f"pcam {command}: error: "), line
    for needle in case.names:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert not case.out.exists(), sorted(case.out.rglob("*"))
    assert temp_siblings(case.out) == []
    if case.cache is not None and case.cache.exists():
        assert sorted(p.name for p in case.cache.iterdir() if p.name.startswith("ingest-")) == []
