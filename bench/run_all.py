"""Run every benchmark and end with one line per figure: ``name value unit goal``.

    python -m bench.run_all [--quick] [--only ingest,input,...] [--skip demo,memory]

``--quick`` runs tiny sizes (for the smoke test and for development); the recorded
figures in bench/RESULTS.md come from a full run. Each benchmark runs its baseline
in the same process and reports ratios, since the machine is shared and absolute
times drift; the 1-minute load average is printed beside every figure. All figures
are also written to ``bench/out/results-<time>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback

from bench.common import OUT, Figure, loadavg

BENCHES = {
    "ingest": "bench.ingest_bench",
    "input": "bench.input_bench",
    "train": "bench.train_bench",
    "tta": "bench.tta_bench",
    "memory": "bench.memory_bench",
    "encoding": "bench.encoding_bench",
    "startup": "bench.startup_bench",
    "demo": "bench.demo_bench",
    "predict": "bench.predict_bench",
    "serve": "bench.serve_bench",
}
QUICK_DEFAULT_SKIP = ("demo",)
"""The demo is minutes long whatever the size: not part of --quick."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds per bench (no demo)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--skip", default="", help="comma-separated benches to leave out")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = [n for n in names + args.skip.split(",") if n and n not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; expected {', '.join(BENCHES)}")
    skip = set(filter(None, args.skip.split(",")))
    if args.quick and not args.only:
        skip.update(QUICK_DEFAULT_SKIP)
    figures: list[Figure] = []
    failed = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name in names:
        if name in skip:
            continue
        print(f"== {name} (load {loadavg():.1f})", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(BENCHES[name])
            got = module.run(quick=args.quick)
        except Exception:  # noqa: BLE001 - one broken bench must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        figures += got
        print(f"== {name}: {len(got)} figures in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for fig in got:  # as they come, in case a later bench is interrupted
            print(f"   {fig.line()}", file=sys.stderr, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    record = {
        "started": started,
        "machine": f"{platform.node()} {platform.machine()} {__import__('os').cpu_count()} cpus",
        "quick": args.quick,
        "figures": [f.to_dict() for f in figures],
        "failed": failed,
    }
    (OUT / f"results-{started.replace(':', '')}.json").write_text(json.dumps(record, indent=1))
    print()
    for fig in figures:
        print(fig.line())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
