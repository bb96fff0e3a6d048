"""Bench: `pcam serve` over loopback HTTP vs calling the same SavedModel in-process.

    python -m bench.serve_bench [--quick] [--steady-seconds 300] [--model SERVING_DIR]

The model is the study's CNN (seeded, untrained: latency does not depend on the
weights), exported by `pcam export` with the 5 TTA views in the graph; the images are
real PCam JPEGs from the sample's valid split. In-process means
:meth:`pcam.serve.Scorer.score` on the same bytes (decode + 5 views + model, in the
graph); over HTTP adds the server (kserve's ModelServer: JSON, base64, request checks)
and the client. Bounded loops, one client, keep-alive, sequential requests.

Goals (issue 13): at batch 32, HTTP throughput >= 0.8 of in-process; at batch 1, HTTP
p50 <= 2x in-process p50 + 5 ms. Then a steady-load run at the server's measured
capacity (one client sending batch-32 requests back to back, for --steady-seconds;
the issue asks 300): no errors, and server RSS at the end within 10% of RSS after the
first tenth of the run (warm-up excluded).
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import OUT, Figure, loadavg, quiet_tf, sample_dir

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot270")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def _images(n: int) -> list[bytes]:
    files = sorted((sample_dir() / "valid" / "1").glob("*.jpg"))[: n // 2]
    files += sorted((sample_dir() / "valid" / "0").glob("*.jpg"))[: n - len(files)]
    return [f.read_bytes() for f in files]


def _export_cnn(out: Path) -> Path:
    from pcam.config import ModelConfig
    from pcam.export import export_serving
    from pcam.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    build_model("cnn", ModelConfig(), seed=0).save(out / "model.keras")
    export_serving(out, out / "serving", VIEWS, version=1)
    return out / "serving"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(serving: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    import requests

    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pcam.cli",
            "serve",
            "--model",
            str(serving),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-body-mb",
            "64",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pcam serve exited: see {log_path}")
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("pcam serve not ready in 300 s")


def _timed(call, batches: list[list[bytes]]) -> list[float]:
    times = []
    for batch in batches:
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
    return times


def _loops(images: list[bytes], batch: int, n: int) -> list[list[bytes]]:
    return [[images[(i * batch + j) % len(images)] for j in range(batch)] for i in range(n)]


def run(quick: bool = False, steady_seconds: float = 300.0, serving: Path | None = None) -> list[Figure]:
    quiet_tf()
    import psutil
    import requests

    from pcam.serve import Scorer, resolve_model

    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-", dir=OUT if OUT.exists() else None))
    serving = serving or _export_cnn(workdir / "cnn")
    images = _images(256)
    n1, n32 = (30, 6) if quick else (300, 40)
    scorer = Scorer(resolve_model(str(serving)))
    session = requests.Session()
    proc, url = _start_server(serving, workdir / "serve.log")
    predict = url + "/v1/models/pcam:predict"

    def over_http(batch: list[bytes]) -> None:
        body = {"instances": [{"b64": base64.b64encode(b).decode()} for b in batch]}
        answer = session.post(predict, json=body, timeout=120)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
        answer.json()

    figures: list[Figure] = []
    try:
        for call in (scorer.score, over_http):  # warm-up: trace the batch sizes, open the connection
            _timed(call, _loops(images, 1, 5) + _loops(images, 32, 3))
        results = {}
        for batch, n in ((1, n1), (32, n32)):
            # Interleaved halves, so both sides see the same machine load.
            half = _loops(images, batch, n // 2)
            inproc = _timed(scorer.score, half) + _timed(scorer.score, half)
            http = _timed(over_http, half) + _timed(over_http, half)
            results[batch] = (inproc, http)
        load = loadavg()
        in1, http1 = results[1]
        goal_p50 = 2 * _percentile(in1, 50) + 5
        figures += [
            Figure("serve_b1_inprocess_p50", _percentile(in1, 50), "ms", load=load),
            Figure(
                "serve_b1_http_p50",
                _percentile(http1, 50),
                "ms",
                f"<={goal_p50:.1f}",
                _percentile(http1, 50) <= goal_p50,
                load,
            ),
            Figure("serve_b1_http_p99", _percentile(http1, 99), "ms", load=load),
            Figure("serve_b1_inprocess_p99", _percentile(in1, 99), "ms", load=load),
            Figure("serve_b1_http_rps", len(http1) / sum(http1), "req/s", load=load),
            Figure("serve_b1_inprocess_rps", len(in1) / sum(in1), "req/s", load=load),
        ]
        in32, http32 = results[32]
        ratio = sum(in32) / sum(http32)
        figures += [
            Figure("serve_b32_inprocess_images_per_s", 32 * len(in32) / sum(in32), "img/s", load=load),
            Figure("serve_b32_http_images_per_s", 32 * len(http32) / sum(http32), "img/s", load=load),
            Figure("serve_b32_http_p50", _percentile(http32, 50), "ms", load=load),
            Figure("serve_b32_http_p99", _percentile(http32, 99), "ms", load=load),
            Figure("serve_b32_throughput_ratio", ratio, "x", ">=0.8", ratio >= 0.8, load),
        ]
        figures += _steady(over_http, images, psutil.Process(proc.pid), 20.0 if quick else steady_seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    figures.append(Figure("serve_sigterm_exit_code", code, "code", "==0", code == 0))
    return figures


def _steady(call, images: list[bytes], server, seconds: float) -> list[Figure]:
    """Back-to-back batch-32 requests for ``seconds``; errors and server RSS over time."""
    batches = _loops(images, 32, 8)
    rss: list[tuple[float, float]] = []
    errors = requests_done = 0
    start = last_sample = time.monotonic()
    rss.append((0.0, server.memory_info().rss / 2**20))
    while (now := time.monotonic()) - start < seconds:
        try:
            call(batches[requests_done % len(batches)])
        except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
            errors += 1
            print(f"steady: request {requests_done} failed: {exc}", file=sys.stderr)
        requests_done += 1
        if now - last_sample >= 2:
            rss.append((now - start, server.memory_info().rss / 2**20))
            last_sample = now
    rss.append((time.monotonic() - start, server.memory_info().rss / 2**20))
    after_warmup = next(r for t, r in rss if t >= seconds / 10)
    end = rss[-1][1]
    growth = 100 * (end / after_warmup - 1)
    load = loadavg()
    return [
        Figure("serve_steady_seconds", rss[-1][0], "s", load=load),
        Figure("serve_steady_requests", requests_done, "req", load=load),
        Figure("serve_steady_images_per_s", 32 * requests_done / rss[-1][0], "img/s", load=load),
        Figure("serve_steady_errors", errors, "req", "==0", errors == 0, load),
        Figure("serve_steady_rss_after_warmup", after_warmup, "MiB", load=load),
        Figure("serve_steady_rss_end", end, "MiB", load=load),
        Figure("serve_steady_rss_growth", growth, "%", "<=10", growth <= 10, load),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short loops and 20 s of steady load")
    parser.add_argument("--steady-seconds", type=float, default=300.0, help="steady-load duration (default 300)")
    parser.add_argument("--model", type=Path, help="serving folder to use (default: export the study's CNN)")
    args = parser.parse_args(argv)
    for fig in run(args.quick, args.steady_seconds, args.model):
        print(fig.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
