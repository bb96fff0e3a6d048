import functools
import gzip
import os
import shutil
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pcam.ingest.hdf5 as ingest_hdf5
import pcam.ingest.sources as ingest_sources
from pcam.cli import main
from pcam.config import SyntheticConfig
from pcam.dataset import open_dataset
from pcam.errors import ConfigError, DataError, PcamError
from pcam.ingest import detect_format, ingest, select
from tests.fixtures_data import TINY_LIMIT, closed_port_url

PREFIX = "camelyonpatch_level_2_split"


def _pillow(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@functools.cache
def _names(folder):
    return sorted(os.listdir(folder))


def _first(folder, n):
    """The first ``n`` files of a sample folder (listed once: the folders hold 10,000 files)."""
    return [folder / name for name in _names(folder)[:n]]


def _real_patches(pcam_sample, n_per_label, split="train"):
    """Real PCam pixels (as Pillow decodes them) and labels from the class-folder sample."""
    images, labels, names = [], [], []
    for label in (0, 1):
        for path in _first(pcam_sample / split / str(label), n_per_label):
            images.append(_pillow(path))
            labels.append(label)
            names.append(path)
    return np.stack(images), np.asarray(labels, dtype=np.uint8), names


def _write_h5(root, split, x, y, slides=None, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    for kind, key, data in (("x", "x", x), ("y", "y", y.reshape(-1, 1, 1, 1))):
        path = root / f"{PREFIX}_{split}_{kind}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset(key, data=data)
        if gz:
            with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
    if slides is not None:
        pd.DataFrame(
            {"coord_y": 0, "coord_x": 0, "tumor_patch": y == 1, "center_tumor_patch": y == 1, "wsi": slides}
        ).to_csv(root / f"{PREFIX}_{split}_meta.csv")


def _no_leftovers(out, cache=None):
    assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []
    if cache is not None and cache.exists():
        assert [p.name for p in cache.iterdir() if p.name.startswith("ingest-")] == []


# ----------------------------------------------------------------------------- readers


def test_tiny_dataset_is_real_balanced_and_pixel_exact(tiny_dataset, pcam_sample):
    ds = open_dataset(tiny_dataset)
    assert len(ds) == 2 * TINY_LIMIT
    assert ds.manifest["counts"] == {"train": {"0": 80, "1": 80}, "valid": {"0": 80, "1": 80}}
    assert ds.manifest["format"] == "folders" and ds.manifest["synthetic"] is False
    assert ds.slides is None and ds.meta["id"].is_unique
    for i, rel in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.images[i], _pillow(pcam_sample / rel))
        assert ds.labels[i] == int(rel.split("/")[1])
        assert ds.meta["source_split"][i] == rel.split("/")[0]


def test_limit_is_deterministic_and_seeded(pcam_sample, tmp_path):
    a = ingest(str(pcam_sample), tmp_path / "a", limit_per_split=10, seed=1, cache_dir=tmp_path / "c")
    b = ingest(str(pcam_sample), tmp_path / "b", limit_per_split=10, seed=1, cache_dir=tmp_path / "c")
    assert a["files"] == b["files"] and a["counts"] == {"train": {"0": 5, "1": 5}, "valid": {"0": 5, "1": 5}}
    labels = np.repeat(np.uint8([0, 1, 0]), [50, 30, 20])
    picked = select(labels, 10, seed=1, split="train")
    assert picked.tolist() == sorted(picked.tolist()) and labels[picked].sum() == 5
    assert not np.array_equal(picked, select(labels, 10, seed=2, split="train"))
    short = select(np.uint8([1, 1, 1, 0]), 3, seed=0, split="valid")  # one label runs out: fill with the other
    assert len(short) == 3 and 3 in short


def test_folders_without_csv_and_val_alias(pcam_sample, tmp_path):
    root = tmp_path / "tree"
    for split, target in (("train", "train"), ("valid", "val")):
        for label in (0, 1):
            (root / target / str(label)).mkdir(parents=True)
            for path in _first(pcam_sample / split / str(label), 3):
                shutil.copy(path, root / target / str(label) / path.name)
    assert detect_format(root) == "folders"
    manifest = ingest(str(root), tmp_path / "out", cache_dir=tmp_path / "c")
    assert manifest["counts"] == {"train": {"0": 3, "1": 3}, "valid": {"0": 3, "1": 3}}
    ds = open_dataset(tmp_path / "out")
    for i, rel in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.images[i], _pillow(root / rel))


def test_kaggle_sample(kaggle_sample, tmp_path):
    manifest = ingest(str(kaggle_sample), tmp_path / "k", cache_dir=tmp_path / "c")
    table = pd.read_csv(kaggle_sample / "train_labels.csv", dtype={"id": str})
    # The full sample has 10 + 5 rows, the committed fixture 5 + 2: count what the CSV says.
    expected = {str(k): int((table["label"] == k).sum()) for k in (0, 1)}
    assert min(expected.values()) > 0
    assert manifest["format"] == "kaggle" and manifest["counts"] == {"train": expected}
    ds = open_dataset(tmp_path / "k")
    assert ds.ids.tolist() == table["id"].tolist()
    np.testing.assert_array_equal(ds.labels, table["label"].to_numpy())
    for i, name in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.images[i], _pillow(kaggle_sample / "train" / f"{name}.tif"))


@pytest.mark.parametrize("gz", [False, True], ids=["h5", "h5.gz"])
def test_official_hdf5_from_real_pixels_round_trips(pcam_sample, tmp_path, monkeypatch, gz):
    monkeypatch.setattr(ingest_hdf5, "BLOCK", 7)  # exercise block boundaries and sparse reads
    x_train, y_train, _ = _real_patches(pcam_sample, 12)
    x_valid, y_valid, _ = _real_patches(pcam_sample, 4, "valid")
    slides = np.asarray([f"camelyon16_train_tumor_{i % 5:03d}" for i in range(len(y_train))])
    root = tmp_path / "official"
    _write_h5(root, "train", x_train, y_train, slides, gz=gz)
    _write_h5(root, "valid", x_valid, y_valid, [f"camelyon16_test_{i % 2}" for i in range(len(y_valid))], gz=gz)
    cache = tmp_path / "cache"
    manifest = ingest(str(root), tmp_path / "ds", cache_dir=cache)
    assert manifest["format"] == "hdf5" and manifest["slides_known"] and manifest["num_slides"] == 7
    ds = open_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images, np.concatenate([x_train, x_valid]))
    np.testing.assert_array_equal(ds.labels, np.concatenate([y_train, y_valid]))
    assert ds.ids[:2].tolist() == ["train/0", "train/1"] and ds.slides[3] == slides[3]
    assert (cache.exists() == gz) and (not gz or not list(cache.iterdir()))  # gunzipped copies removed
    # A limit picks a balanced, seeded subset: every row equals the h5py row it names.
    sub = ingest(str(root), tmp_path / "sub", limit_per_split=6, seed=3, cache_dir=cache)
    assert sub["counts"]["train"] == {"0": 3, "1": 3}
    small = open_dataset(tmp_path / "sub")
    for i, ident in enumerate(small.ids):
        split, row = ident.split("/")
        source = x_train if split == "train" else x_valid
        np.testing.assert_array_equal(small.images[i], source[int(row)])


def test_synthetic_dir_and_literal(synthetic_dataset, tmp_path):
    ds = open_dataset(synthetic_dataset)
    assert ds.manifest["synthetic"] is True and ds.manifest["format"] == "synthetic"
    assert ds.manifest["counts"]["train"] == {"0": 48, "1": 48} and ds.slides is not None
    manifest = ingest(
        "synthetic",
        tmp_path / "s",
        seed=5,
        cache_dir=tmp_path / "c",
        synthetic=SyntheticConfig(train=8, valid=4, test=4, slides=6),
    )
    assert manifest["synthetic"] is True and manifest["count"] == 16
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("ingest-")] == []


def test_https_archive_source(http_server, pcam_sample, tmp_path):
    x, y, _ = _real_patches(pcam_sample, 2)
    _write_h5(tmp_path / "pkg" / "pcam", "test", x, y)
    archive = shutil.make_archive(str(tmp_path / "pcam"), "gztar", tmp_path / "pkg")
    http_server.files = {"pcam.tar.gz": open(archive, "rb").read()}
    manifest = ingest(f"{http_server.base_url}/data/pcam.tar.gz", tmp_path / "ds", cache_dir=tmp_path / "c")
    assert manifest["counts"] == {"test": {"0": 2, "1": 2}}
    np.testing.assert_array_equal(open_dataset(tmp_path / "ds").images, x)


def test_convert_fixes_mode_and_size(pcam_sample, tmp_path):
    root = tmp_path / "odd"
    src = _first(pcam_sample / "train" / "0", 1)[0]
    (root / "train" / "0").mkdir(parents=True)
    (root / "train" / "1").mkdir(parents=True)
    with Image.open(src) as image:
        image.convert("L").save(root / "train" / "0" / "gray.png")
        image.convert("RGBA").save(root / "train" / "1" / "rgba.png")
        image.resize((64, 64)).save(root / "train" / "1" / "small.png")
    manifest = ingest(str(root), tmp_path / "ds", convert=True, cache_dir=tmp_path / "c")
    assert manifest["converted"] == 3
    ds = open_dataset(tmp_path / "ds")
    by_id = dict(zip(ds.ids, ds.images, strict=True))
    with Image.open(root / "train" / "0" / "gray.png") as g:
        np.testing.assert_array_equal(by_id["train/0/gray.png"], np.asarray(g.convert("RGB")))
    with Image.open(root / "train" / "1" / "small.png") as s:
        np.testing.assert_array_equal(
            by_id["train/1/small.png"], np.asarray(s.resize((96, 96), Image.Resampling.BILINEAR))
        )


# ----------------------------------------------------------------------------- bad input


def _folder_with(pcam_sample, root, name, mutate):
    """A valid class-folder tree of real images, plus one image changed by ``mutate``."""
    for label in (0, 1):
        (root / "train" / str(label)).mkdir(parents=True)
        for path in _first(pcam_sample / "train" / str(label), 2):
            shutil.copy(path, root / "train" / str(label) / path.name)
    with Image.open(_first(pcam_sample / "train" / "1", 1)[0]) as image:
        mutate(image).save(root / "train" / "1" / name)
    return root / "train" / "1" / name


def _labels_csv(pcam_sample, root, bad_label):
    root.mkdir()
    rows = []
    for label in (0, 1):
        for path in _first(pcam_sample / "train" / str(label), 2):
            (root / "train" / str(label)).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "train" / str(label) / path.name)
            rows.append((f"train/{label}/{path.name}", "train", label))
    rows[1] = (rows[1][0], "train", bad_label)
    pd.DataFrame(rows, columns=["path", "split", "label"]).to_csv(root / "labels.csv", index=False)
    return rows[1][0]


def _truncated_h5(pcam_sample, root, gz):
    x, y, _ = _real_patches(pcam_sample, 3)
    _write_h5(root, "train", x, y, gz=gz)
    path = root / f"{PREFIX}_train_x.h5{'.gz' if gz else ''}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


def _kaggle(pcam_sample, root, *, drop=False, duplicate=False):
    (root / "train").mkdir(parents=True)
    rows = []
    for label in (0, 1):
        for path in _first(pcam_sample / "train" / str(label), 2):
            ident = f"{label}{path.stem}"
            with Image.open(path) as image:
                image.save(root / "train" / f"{ident}.tif")
            rows.append((ident, label))
    if drop:
        (root / "train" / f"{rows[2][0]}.tif").unlink()
    if duplicate:
        rows.append(rows[0])
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train_labels.csv", index=False)
    return rows[2][0] if drop else rows[0][0]


BAD_INPUTS = {
    "truncated_h5": lambda s, r: _truncated_h5(s, r, gz=False),
    "truncated_h5_gz": lambda s, r: _truncated_h5(s, r, gz=True),
    "64x64": lambda s, r: _folder_with(s, r, "small.png", lambda im: im.resize((64, 64))).name,
    "rgba": lambda s, r: _folder_with(s, r, "alpha.png", lambda im: im.convert("RGBA")).name,
    "grayscale": lambda s, r: _folder_with(s, r, "gray.png", lambda im: im.convert("L")).name,
    "label_2": lambda s, r: _labels_csv(s, r, 2),
    "label_nan": lambda s, r: _labels_csv(s, r, float("nan")),
    "kaggle_missing_file": lambda s, r: _kaggle(s, r, drop=True),
    "kaggle_duplicate_id": lambda s, r: _kaggle(s, r, duplicate=True),
    "empty_folder": lambda s, r: r.mkdir() or r.name,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_nothing(case, pcam_sample, tmp_path):
    root = tmp_path / "src"
    name = BAD_INPUTS[case](pcam_sample, root)
    out, cache = tmp_path / "out" / "ds", tmp_path / "cache"
    with pytest.raises(DataError) as info:
        ingest(str(root), out, cache_dir=cache)
    message = str(info.value)
    assert name in message, message
    if case.startswith("label"):
        assert "row" in message
    _no_leftovers(out, cache)


def test_bad_hdf5_contents_name_dataset_and_row(pcam_sample, tmp_path):
    x, y, _ = _real_patches(pcam_sample, 2)
    y[3] = 2
    _write_h5(tmp_path / "a", "train", x, y)
    with pytest.raises(DataError, match=r"train_y\.h5: dataset 'y' row 3: label 2 is not 0 or 1"):
        ingest(str(tmp_path / "a"), tmp_path / "out", cache_dir=tmp_path / "c")
    _write_h5(tmp_path / "b", "train", x.astype(np.float32), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"train_x\.h5: dataset 'x' is float32 \(96, 96, 3\); expected uint8"):
        ingest(str(tmp_path / "b"), tmp_path / "out", cache_dir=tmp_path / "c")
    _no_leftovers(tmp_path / "out", tmp_path / "c")


def test_unknown_format_lists_the_valid_ones(tmp_path, pcam_sample):
    with pytest.raises(ConfigError, match="unknown format 'parquet'; expected one of auto, hdf5, kaggle, folders"):
        ingest(str(pcam_sample), tmp_path / "out", fmt="parquet")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_https_names_the_uri(tmp_path):
    uri = f"{closed_port_url()}/pcam/data.tar.gz"
    with pytest.raises(DataError, match=f"{uri}: cannot reach"):
        ingest(uri, tmp_path / "out", cache_dir=tmp_path / "c")
    _no_leftovers(tmp_path / "out", tmp_path / "c")


def test_unreachable_gcs_names_the_uri_quickly(tmp_path, monkeypatch):
    # Without network tf.io.gfile fails at once; with network but no credentials it may
    # retry for minutes, so ingest gives the first contact GCS_TIMEOUT_S seconds.
    monkeypatch.setattr(ingest_sources, "GCS_TIMEOUT_S", 30.0)
    uri = "gs://pcam-no-such-bucket-7c1e0d9a-cannot-exist/pcam"
    start = time.monotonic()
    with pytest.raises(DataError, match=uri):
        ingest(uri, tmp_path / "out", cache_dir=tmp_path / "c")
    assert time.monotonic() - start < 40
    _no_leftovers(tmp_path / "out", tmp_path / "c")


def test_gfile_copy_of_a_tree(kaggle_sample, tmp_path):
    """The gs:// copy code, run by tf.io.gfile on a local tree (gfile treats both alike)."""
    copied = ingest_sources.copy_gcs(str(kaggle_sample), tmp_path / "copy")
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*.tif")) == sorted(
        p.relative_to(kaggle_sample).as_posix() for p in kaggle_sample.rglob("*.tif")
    )
    assert (copied / "train_labels.csv").read_bytes() == (kaggle_sample / "train_labels.csv").read_bytes()


def test_https_mirror_is_md5_checked(http_server, tmp_path):
    http_server.files = {f"{PREFIX}_train_y.h5.gz": b"not the official file"}
    with pytest.raises(DataError, match=f"{http_server.base_url}/mirror/{PREFIX}_train_x.h5.gz: HTTP 404"):
        ingest(f"{http_server.base_url}/mirror/", tmp_path / "out", cache_dir=tmp_path / "c")
    http_server.files[f"{PREFIX}_train_x.h5.gz"] = b"not the official file either"
    with pytest.raises(DataError, match=f"{PREFIX}_train_x.h5.gz: md5 .* does not match the expected 1571f514"):
        ingest(f"{http_server.base_url}/mirror/", tmp_path / "out", cache_dir=tmp_path / "c")
    _no_leftovers(tmp_path / "out", tmp_path / "c")
    assert not list((tmp_path / "c").rglob(f"{PREFIX}_train_x.h5.gz*"))


def test_cli_bad_input_exits_2_with_one_line(pcam_sample, tmp_path, capsys):
    bad = _folder_with(pcam_sample, tmp_path / "src", "gray.png", lambda im: im.convert("L"))
    code = main(
        [
            "ingest",
            "--source",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_cli_ingests(kaggle_sample, tmp_path, capsys):
    assert (
        main(
            [
                "ingest",
                "--source",
                str(kaggle_sample),
                "--out",
                str(tmp_path / "k"),
                "--limit-per-split",
                "6",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert "6 patches" in capsys.readouterr().out
    assert isinstance(open_dataset(tmp_path / "k").manifest, dict)


def test_errors_are_pcam_errors():
    assert issubclass(DataError, PcamError) and issubclass(ConfigError, PcamError)
