"""Smoke test of the benchmarks (not the benchmarks themselves: `make bench` runs those).

Runs `bench.run_all --quick --only memory` at two tiny sizes, end to end (official-format
HDF5 written from real sample pixels, `pcam ingest` in a subprocess, peak RSS read
back), and checks the output ends with `name value unit goal` lines, so the bench
plumbing cannot rot unnoticed. The TensorFlow benches need tens of seconds even at
their --quick sizes on this machine and are left to `make bench`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LINE = re.compile(r"^(\S+) (\S+) (\S+) (\S+)(  ok|  MISSED)?(  \(load [\d.]+\))?$")


def test_run_all_quick_memory_prints_figure_lines(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import memory_bench
    from bench.demo_bench import step_times

    monkeypatch.setenv("PCAM_SHARED", str(shared_dir))
    # The figures themselves and the line each prints (read from the objects, not from a
    # captured stdout, which other tests' libraries may have re-wrapped in a full run).
    got = memory_bench.run(quick=True, sizes=(96, 192))
    figures = {m.group(1): m for m in (LINE.match(fig.line()) for fig in got) if m}
    assert set(figures) == {
        "ingest_peak_rss_96",
        "ingest_peak_anon_rss_96",
        "ingest_hdf5_96_images_per_s",
        "ingest_peak_rss_192",
        "ingest_peak_anon_rss_192",
        "ingest_hdf5_192_images_per_s",
        "ingest_peak_rss_growth_96_to_192",
    }
    rss = float(figures["ingest_peak_rss_192"].group(2))
    assert 10 < rss < 1536, rss  # a real child's peak, in MiB
    assert figures["ingest_peak_rss_192"].group(3) == "MiB"
    # run_local's step table is what the demo bench parses.
    assert step_times(
        "step times (kfp.local, one subprocess per step):\n  ingest      12.5 s\n"
        "  train       40.0 s (4 runs)\n  total      99.0 s\n"
    ) == {"ingest": 12.5, "train": 40.0}


@pytest.mark.slow
def test_real_cnn_runs_sample_yaml_through_the_product_path(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/sample.yaml end to end (shrunk: 40 patches per source split, 1 epoch) via bench.real_cnn."""
    from bench import real_cnn
    from pcam.fsutil import read_json

    monkeypatch.setenv("PCAM_SHARED", str(shared_dir))
    extra = {
        "data.limit_per_split": 40,
        "defaults.epochs": 1,
        "defaults.batch_size": 16,
        "shard.records_per_shard": 64,
        "split.ratios": [0.75, 0.25, 0.0],
    }
    figures = {f.name: f for f in real_cnn.run_variant("sample", real_cnn.CONFIG, tmp_path / "sample", extra)}
    assert {"real_sample_auc_tta", "real_sample_train_minutes", "real_sample_process_cpu_minutes"} <= set(figures)
    assert 0 <= figures["real_sample_auc_tta"].value <= 1 and figures["real_sample_process_cpu_minutes"].value > 0
    assert LINE.match(figures["real_sample_auc_tta"].line())
    # the sample's valid folder (other slides) is what was evaluated, with all 8 views
    split = read_json(tmp_path / "sample" / "split" / "split.json")
    assert split["origin"]["test"]["text"] == "source valid" and split["pairs"]["train|test"]["slide_disjoint"]
    metrics = read_json(tmp_path / "sample" / "runs" / "cnn-onecycle" / "evaluate" / "metrics.json")
    assert metrics["split"] == "test" and metrics["n"] == 40 and metrics["n_views"] == 8
    page = (tmp_path / "sample" / "report" / "report.html").read_text()
    assert "test (slide-disjoint from train: yes)" in page and "NOT slide-disjoint" not in page


def test_stain_groups_writes_pseudo_slides_that_split_keeps_apart(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench.stain_groups: a labels.csv whose `slide` is the stain group, and a split that holds whole groups out."""
    import csv

    import numpy as np

    from bench import stain_groups
    from pcam.ingest import ingest
    from pcam.split import split_dataset

    monkeypatch.setenv("PCAM_SHARED", str(shared_dir))
    out = tmp_path / "stain"
    written = stain_groups.build(out, patches=80, groups=4, seed=1)
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == written and len(rows) == 80 and {r["label"] for r in rows} == {"0", "1"}
    assert sorted({r["slide"] for r in rows}) == ["stain00", "stain01", "stain02", "stain03"]
    # patches of one group are closer in stain than patches at large
    features = stain_groups.stain_features([shared_dir / "pcam-sample" / r["path"] for r in rows])
    features = (features - features.mean(0)) / features.std(0)
    groups = np.array([r["slide"] for r in rows])
    within = np.mean([features[groups == g].var(0).sum() for g in set(groups) if (groups == g).sum() > 1])
    assert within < features.var(0).sum() * 0.7
    ingest(str(out), tmp_path / "dataset", fmt="folders")
    result = split_dataset(tmp_path / "dataset", tmp_path / "split", "random", (0.5, 0.25, 0.25), seed=0)
    assert result["grouped_by_slide"] and all(pair["slide_disjoint"] for pair in result["pairs"].values())


@pytest.mark.slow
def test_real_cnn_proxy_tunes_on_pseudo_slides_once_per_seed(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench.real_cnn --proxy: the stain-grouped train patches, whole groups held out, one run per --seed, a mean."""
    from bench import real_cnn, stain_groups
    from pcam.fsutil import read_json

    monkeypatch.setenv("PCAM_SHARED", str(shared_dir))
    groups = tmp_path / "stain"
    with pytest.raises(SystemExit):  # no labels.csv yet: a clear usage error, not a run on the wrong data
        real_cnn.main(["--variant", "sample", "--proxy", str(groups)])
    assert "python -m bench.stain_groups" in capsys.readouterr().err
    stain_groups.build(groups, patches=160, groups=10, seed=1)
    small = ["defaults.epochs=1", "defaults.batch_size=16", "shard.records_per_shard=64"]
    small.append("evaluate.tta_views=[identity]")
    argv = ["--variant", "sample", "--proxy", str(groups), "--seed", "1", "--seed", "2"]
    argv += ["--out", str(tmp_path / "runs"), *(f"--set={item}" for item in small)]
    assert real_cnn.main(argv) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if LINE.match(line)}
    assert {"proxy_seed1_sample_auc_tta", "proxy_seed2_sample_auc_tta", "proxy_sample_auc_tta_mean"} <= set(lines)
    assert not any(name.startswith("real_") or "MISSED" in line for name, line in lines.items())  # no valid goal here
    mean = float(lines["proxy_sample_auc_tta_mean"].split()[1])
    each = [float(lines[f"proxy_seed{s}_sample_auc_tta"].split()[1]) for s in (1, 2)]
    assert mean == pytest.approx(sum(each) / 2, abs=1e-3)
    for seed in (1, 2):
        split = read_json(tmp_path / "runs" / f"sample-seed{seed}" / "split" / "split.json")
        assert split["seed"] == seed and split["grouped_by_slide"]
        assert all(pair["slide_disjoint"] for pair in split["pairs"].values())
