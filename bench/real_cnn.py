"""Real-data figure through the product path: ``pcam run`` on the real sample, scored once.

    python -m bench.real_cnn                                  # configs/sample.yaml and the study's recipe
    python -m bench.real_cnn --variant sample                 # only configs/sample.yaml
    python -m bench.real_cnn --set defaults.epochs=2           # a reduced budget (not the shipped recipe)
    python -m bench.real_cnn --variant sample --proxy /tmp/stain-groups --seed 42 --seed 7 --seed 3 \
        --set defaults.epochs=5                               # tune on train's pseudo-slides, not valid

Each variant is ``configs/sample.yaml`` run by :func:`pcam.study.run_study` (ingest,
split, shard, train, evaluate, report: what ``pcam run --config configs/sample.yaml``
does), with ``data.source`` pointed at ``$PCAM_SHARED/pcam-sample``:

``sample``
    the shipped recipe, unchanged;
``study``
    the same data, split, model and schedule with the study's own choices only (its
    block order, so 8 epochs in the same minutes; flips, quarter turns, 2% noise; no
    stain jitter, no label smoothing; the study's 5 test-time views): what sample.yaml's
    additions are measured against.

The sample has no test folder, so the split evaluates on ``pcam-sample/valid``
(3,000 patches of slides train never saw) and picks epochs on 10% of train: the figure
is the report's own AUC, on unseen slides, from one run per variant. Ends with
``name value unit goal`` lines, including wall and process CPU minutes and the load.

``--proxy DIR`` tunes without touching valid: it reads DIR, the stain-grouped
pseudo-slides of train that ``python -m bench.stain_groups`` writes, and holds out whole
groups (random split 70/10/20 by group), so the AUC is on stains training never saw.
One seed of it cannot rank close recipes (bench/RESULTS.md, round 3): give several
``--seed``s (each holds out other groups and starts from other weights) and compare the
``proxy_<variant>_auc_tta_mean`` lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import OUT, REPO, Figure, loadavg, quiet_tf, sample_dir

CONFIG = REPO / "configs" / "sample.yaml"
STUDY_OVERRIDES: dict[str, Any] = {
    # The study's block order, and the 8 epochs it fits in sample.yaml's training minutes.
    "defaults.cnn_pool_first": False,
    "defaults.epochs": 8,
    "augment.hed": 0.0,
    "augment.hed_shift": 0.0,
    "defaults.label_smoothing": 0.0,
    "evaluate.tta_views": ["identity", "hflip", "vflip", "rot90", "rot270"],
}
VARIANTS = {"sample": {}, "study": STUDY_OVERRIDES}
GOAL_AUC = 0.95
PROXY_RATIOS = (0.7, 0.1, 0.2)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proxy_overrides(groups: Path) -> dict[str, Any]:
    """Overrides that train and score on ``bench.stain_groups``' pseudo-slides instead of the sample."""
    return {"data.source": str(groups), "split.mode": "random", "split.ratios": list(PROXY_RATIOS)}


def run_variant(
    name: str, config: Path, out: Path, extra: dict[str, Any] | None = None, prefix: str = "real"
) -> list[Figure]:
    """Run one variant through :func:`pcam.study.run_study`; its figures.

    Args:
        name: ``sample`` or ``study`` (:data:`VARIANTS`).
        config: The recipe's YAML file.
        out: The variant's run directory.
        extra: Further dotted overrides (the smoke test shrinks the run with them).
        prefix: Figure names start with it: ``real[_seedN]`` (scored on valid, the 0.95 goal
            applies) or ``proxy[_seedN]`` (held-out pseudo-slides of train, no goal).
    """
    from pcam.config import load_config
    from pcam.study import run_study

    cfg = load_config(config, {"data.source": str(sample_dir()), **VARIANTS[name], **(extra or {})})
    load_before, cpu0, t0 = loadavg(), _cpu_seconds(), time.perf_counter()
    summary = run_study(cfg, out)
    wall, cpu, load = time.perf_counter() - t0, _cpu_seconds() - cpu0, max(load_before, loadavg())
    row = summary["rows"][0]
    steps = json.loads((out / "steps.json").read_text())
    print(f"{name}: report {summary['report_html']}; split warnings: {summary['split_warnings'] or 'none'}")
    goal = prefix.startswith("real")
    return [
        Figure(
            f"{prefix}_{name}_auc_tta",
            row["auc"],
            "auc",
            f">={GOAL_AUC}" if goal else "-",
            row["auc"] >= GOAL_AUC if goal else None,
            load,
        ),
        Figure(f"{prefix}_{name}_auc_single", row["auc_single"], "auc", "-", None, load),
        Figure(f"{prefix}_{name}_accuracy_tta", row["accuracy"], "fraction", "-", None, load),
        Figure(
            f"{prefix}_{name}_train_minutes",
            steps.get("train", 0.0) / 60,
            "min",
            "<=20",
            steps.get("train", 0.0) <= 1200,
            load,
        ),
        Figure(f"{prefix}_{name}_wall_minutes", wall / 60, "min", "-", None, load),
        Figure(f"{prefix}_{name}_process_cpu_minutes", cpu / 60, "min", "-", None, load),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe (default configs/sample.yaml)")
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), action="append", help="sample and/or study (default: both)"
    )
    parser.add_argument("--out", type=Path, default=OUT / "real-sample")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted override for both variants, value in YAML (a reduced-budget check: "
        "--set defaults.epochs=2 --set data.limit_per_split=10000)",
    )
    parser.add_argument(
        "--proxy",
        type=Path,
        metavar="DIR",
        help="tune on bench.stain_groups' pseudo-slides of train in DIR (whole groups held out), not on valid",
    )
    parser.add_argument(
        "--seed", type=int, action="append", help="the config's seed; repeat to run each variant once per seed"
    )
    args = parser.parse_args(argv)
    if args.proxy and not (args.proxy / "labels.csv").is_file():
        parser.error(f"--proxy {args.proxy}: no labels.csv there; write it with python -m bench.stain_groups --out DIR")
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)
    if args.proxy:
        extra = {**proxy_overrides(args.proxy), **extra}
    quiet_tf()
    figures = []
    seeds = args.seed or [None]
    kind = "proxy" if args.proxy else "real"
    for name in args.variant or ["sample", "study"]:
        aucs = []
        for seed in seeds:
            run_extra = extra if seed is None else {**extra, "seed": seed}
            out = args.out / (name if seed is None else f"{name}-seed{seed}")
            prefix = kind if seed is None else f"{kind}_seed{seed}"
            got = run_variant(name, args.config, out, run_extra, prefix)
            figures += got
            aucs.append(got[0].value)
        if len(seeds) > 1:
            figures.append(Figure(f"{kind}_{name}_auc_tta_mean", sum(aucs) / len(aucs), "auc", load=loadavg()))
    for figure in figures:
        print(figure.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
