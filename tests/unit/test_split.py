import json

import numpy as np
import pytest

from pcam.cli import main
from pcam.config import SyntheticConfig
from pcam.dataset import open_dataset
from pcam.errors import ConfigError, DataError
from pcam.fsutil import KIND_FILE
from pcam.ingest import ingest
from pcam.split import SPLIT_FILE, load_split, split_dataset
from pcam.synth import write_synthetic

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def slide_dataset(tmp_path_factory):
    """Synthetic data with 30 slides: enough for a slide-grouped 70/20/10 split."""
    root = tmp_path_factory.mktemp("slides")
    write_synthetic(root / "h5", SyntheticConfig(train=300, valid=60, test=60, slides=30), seed=1)
    ingest(str(root / "h5"), root / "ds", cache_dir=root / "cache")
    return root / "ds"


def test_same_seed_same_bytes_other_seed_other_split(tiny_dataset, tmp_path):
    split_dataset(tiny_dataset, tmp_path / "a", seed=7)
    split_dataset(tiny_dataset, tmp_path / "b", seed=7)
    split_dataset(tiny_dataset, tmp_path / "c", seed=8)
    a, b, c = ((tmp_path / n / SPLIT_FILE).read_bytes() for n in "abc")
    assert a == b and a != c
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [KIND_FILE, SPLIT_FILE]


def test_random_split_is_stratified_with_exact_ratio_counts(tiny_dataset, tmp_path):
    result = split_dataset(tiny_dataset, tmp_path / "s", mode="random", ratios=(0.7, 0.2, 0.1), seed=3)
    # 160 patches per label -> 112 / 32 / 16 per label.
    assert result["counts"] == {"train": {"0": 112, "1": 112}, "valid": {"0": 32, "1": 32}, "test": {"0": 16, "1": 16}}
    assert result["grouped_by_slide"] is False and result["mode"] == "random"
    indices = load_split(tmp_path / "s")
    labels = open_dataset(tiny_dataset).labels
    together = np.concatenate([indices[s] for s in SPLITS])
    assert sorted(together.tolist()) == list(range(len(labels)))  # a partition
    for s in SPLITS:
        assert indices[s].tolist() == sorted(indices[s].tolist())
        assert int(labels[indices[s]].sum()) == result["counts"][s]["1"]


def test_random_split_groups_by_slide(slide_dataset, tmp_path):
    result = split_dataset(slide_dataset, tmp_path / "s", mode="random", seed=0)
    assert result["grouped_by_slide"] is True
    ds = open_dataset(slide_dataset)
    indices = load_split(tmp_path / "s")
    slides = {s: set(ds.slides[indices[s]]) for s in SPLITS}
    assert not (
        slides["train"] & slides["valid"] or slides["train"] & slides["test"] or slides["valid"] & slides["test"]
    )
    n = len(ds)
    for s, ratio in zip(SPLITS, (0.7, 0.2, 0.1), strict=True):
        count = result["counts"][s]
        share = (count["0"] + count["1"]) / n
        assert abs(share - ratio) < 0.05, (s, share)
        assert 0.35 < count["1"] / (count["0"] + count["1"]) < 0.65, (s, count)


def test_official_mode_keeps_source_splits(slide_dataset, tmp_path):
    result = split_dataset(slide_dataset, tmp_path / "s", mode="official")
    meta = open_dataset(slide_dataset).meta
    for s in SPLITS:
        assert result["indices"][s] == meta.index[meta["source_split"] == s].tolist()
    assert result["notes"] == []


def test_held_out_source_split_is_evaluated_and_valid_is_carved_from_train(tiny_split, tiny_dataset):
    data = json.loads((tiny_split / SPLIT_FILE).read_text())
    meta = open_dataset(tiny_dataset).meta
    source = meta["source_split"].to_numpy()
    assert data["mode"] == "official"
    # the source's slide-disjoint held-out split (valid) is what gets evaluated: test
    assert (source[data["indices"]["test"]] == "valid").all() and len(data["indices"]["test"]) == 160
    assert (source[data["indices"]["valid"]] == "train").all() and (source[data["indices"]["train"]] == "train").all()
    # valid = 0.2 / (0.7 + 0.2) of source train, stratified: 18 + 18 of 80 + 80.
    assert data["counts"]["valid"] == {"0": 18, "1": 18} and data["counts"]["train"] == {"0": 62, "1": 62}
    assert "evaluated as test" in data["notes"][0] and "carved" in data["notes"][1]
    assert data["origin"]["test"]["text"] == "source valid" and data["origin"]["valid"]["carved"] is True
    pairs = data["pairs"]
    assert pairs["train|test"]["slide_disjoint"] and pairs["valid|test"]["slide_disjoint"]
    assert "no slide ids to check" in pairs["train|test"]["basis"]
    assert not pairs["train|valid"]["slide_disjoint"] and "may share slides" in pairs["train|valid"]["basis"]
    assert all(len(v) for v in load_split(tiny_split).values())


def test_random_split_without_slide_ids_says_every_pair_may_share_slides(tiny_dataset, tmp_path):
    pairs = split_dataset(tiny_dataset, tmp_path / "s", mode="random", seed=3)["pairs"]
    assert set(pairs) == {"train|valid", "train|test", "valid|test"}
    assert not any(p["slide_disjoint"] for p in pairs.values())


def test_slide_ids_are_checked_not_assumed(slide_dataset, tmp_path):
    grouped = split_dataset(slide_dataset, tmp_path / "g", mode="random", seed=0)["pairs"]
    assert all(p["slide_disjoint"] and "(checked)" in p["basis"] for p in grouped.values())
    official = split_dataset(slide_dataset, tmp_path / "o", mode="official")["pairs"]
    assert all(p["slide_disjoint"] for p in official.values())
    # a split that mixes slides is caught by the ids, whatever its mode
    from pcam.split import split_facts

    ds = open_dataset(slide_dataset)
    first = int(np.flatnonzero(ds.slides == ds.slides[0])[0])
    shared = [i for i in range(len(ds)) if ds.slides[i] == ds.slides[first] and i != first][:1]
    origin = {s: {"from": s, "carved": False, "text": s} for s in SPLITS}
    facts = split_facts({"train": [first], "valid": [], "test": shared}, origin, ds.slides, "hdf5")
    assert facts["train|test"]["slide_disjoint"] is False and "1 slide(s) in both" in facts["train|test"]["basis"]


def test_official_files_without_meta_are_disjoint_by_construction(tmp_path):
    write_synthetic(tmp_path / "h5", SyntheticConfig(train=40, valid=20, test=20, slides=8), seed=0)
    for meta in (tmp_path / "h5").glob("*_meta.csv"):
        meta.unlink()
    ingest(str(tmp_path / "h5"), tmp_path / "ds", cache_dir=tmp_path / "c")
    assert open_dataset(tmp_path / "ds").slides is None
    pairs = split_dataset(tmp_path / "ds", tmp_path / "s", mode="official")["pairs"]
    assert all(p["slide_disjoint"] and "by construction" in p["basis"] for p in pairs.values())


def test_train_only_source_carves_both_and_says_they_may_share_slides(pcam_sample, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train").symlink_to(pcam_sample / "train")
    ingest(str(tmp_path / "src"), tmp_path / "ds", fmt="folders", limit_per_split=100, seed=0, cache_dir=tmp_path / "c")
    data = split_dataset(tmp_path / "ds", tmp_path / "s", mode="official", seed=0)
    assert data["origin"]["test"]["carved"] and data["origin"]["valid"]["carved"]
    assert not any(p["slide_disjoint"] for p in data["pairs"].values())
    assert len(data["notes"]) == 2


def test_zero_ratio_may_be_empty(tiny_dataset, tmp_path):
    result = split_dataset(tiny_dataset, tmp_path / "s", ratios=(0.8, 0.2, 0.0))
    assert result["indices"]["test"] == []
    assert len(load_split(tmp_path / "s")["test"]) == 0


def test_too_small_gives_error_and_no_output(tmp_path):
    write_synthetic(tmp_path / "h5", SyntheticConfig(train=4, valid=2, test=2, slides=6), seed=0)
    ingest(str(tmp_path / "h5"), tmp_path / "ds", limit_per_split=2, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="split '(valid|test)'"):
        split_dataset(tmp_path / "ds", tmp_path / "out", mode="random", ratios=(0.98, 0.01, 0.01))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["indices"].update(valid=[]) or d["counts"].update(valid={"0": 0, "1": 0}),
            "split 'valid' is empty",
        ),
        (
            lambda d: d["counts"]["test"].update({"0": d["counts"]["test"]["0"] + d["counts"]["test"]["1"], "1": 0}),
            "split 'test' has no patches with label 1",
        ),
        (
            lambda d: (
                d["indices"]["test"].append(d["indices"]["train"][0])
                or d["counts"]["test"].update({"0": d["counts"]["test"]["0"] + 1})
            ),
            "is in split 'test' and an earlier split",
        ),
        (lambda d: d.pop("indices"), "missing key 'indices'"),
    ],
)
def test_load_split_rejects_bad_files(tiny_split, tmp_path, edit, message):
    data = json.loads((tiny_split / SPLIT_FILE).read_text())
    edit(data)
    (tmp_path / SPLIT_FILE).write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_split(tmp_path)


def test_bad_mode_and_ratios_name_the_key(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="split.mode"):
        split_dataset(tiny_dataset, tmp_path / "s", mode="kfold")
    with pytest.raises(ConfigError, match="split.ratios"):
        split_dataset(tiny_dataset, tmp_path / "s", ratios=(0.5, 0.2, 0.2))
    assert not (tmp_path / "s").exists()


def test_cli(tiny_dataset, tmp_path, capsys):
    assert (
        main(
            [
                "split",
                "--dataset",
                str(tiny_dataset),
                "--out",
                str(tmp_path / "s"),
                "--mode",
                "random",
                "--ratios",
                "0.5",
                "0.25",
                "0.25",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "s" / SPLIT_FILE).read_text())["ratios"] == [0.5, 0.25, 0.25]
    assert main(["split", "--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")]) == 2
    assert "nothing" in capsys.readouterr().err
