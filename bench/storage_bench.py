"""Object storage figures against fake-gcs-server on 127.0.0.1: transfer speed and promotion latency.

``python -m bench.storage_bench [--quick]``. The server is the same binary the tests use
(memory backend, over loopback), so the figures measure the client path (google-cloud-storage,
pcam.storage, the promotion protocol), not a real bucket's network.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Figure, loadavg, main


def _candidate(root: Path, name: str, auc: float) -> Path:
    from pcam.fsutil import file_sha256

    (root / name / "train").mkdir(parents=True)
    model = root / name / "train" / "model.keras"
    model.write_bytes(os.urandom(1 << 20))  # 1 MiB: a small CNN's .keras file is a few MiB
    (root / name / "evaluate").mkdir()
    (root / name / "evaluate" / "metrics.json").write_text(
        json.dumps({"tta": {"auc": auc}, "model": name, "model_sha256": file_sha256(model)})
    )
    return root / name


def run(quick: bool = False) -> list[Figure]:
    from tests.storage.gcs_server import FakeGcs

    server = FakeGcs().start()
    server.create_bucket("bench")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    from pcam import promote, storage

    figures = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            mib = 8 if quick else 64
            big = tmp_path / "big.bin"
            big.write_bytes(os.urandom(mib << 20))
            start = time.perf_counter()
            storage.upload_file(big, "gs://bench/big.bin")
            figures.append(
                Figure("gcs_upload_throughput", mib / (time.perf_counter() - start), "MiB/s", load=loadavg())
            )
            start = time.perf_counter()
            storage.download_file("gs://bench/big.bin", tmp_path / "back.bin")
            figures.append(
                Figure("gcs_download_throughput", mib / (time.perf_counter() - start), "MiB/s", load=loadavg())
            )
            rounds = 3 if quick else 10
            for where, uri in (("local", str(tmp_path / "champion")), ("gcs", "gs://bench/champion")):
                seconds = []
                for i in range(rounds):  # each strictly better: every promotion publishes
                    run_dir = _candidate(tmp_path / where, f"c{i}", 0.5 + i / 100)
                    start = time.perf_counter()
                    promote.promote(run_dir / "evaluate", run_dir / "train", uri, out_dir=run_dir / "d")
                    seconds.append(time.perf_counter() - start)
                figures.append(
                    Figure(f"promote_{where}_median", 1000 * statistics.median(seconds), "ms", load=loadavg())
                )
                race = []
                for r in range(rounds):
                    runs = [_candidate(tmp_path / where, f"r{r}-{k}", 0.6 + r / 100 + k / 1000) for k in range(3)]
                    start = time.perf_counter()
                    with ThreadPoolExecutor(3) as pool:
                        decisions = list(
                            pool.map(
                                lambda d, u=uri: promote.promote(d / "evaluate", d / "train", u, out_dir=d / "d"), runs
                            )
                        )
                    race.append((time.perf_counter() - start, sum(d["attempts"] for d in decisions)))
                figures.append(
                    Figure(
                        f"promote_{where}_3_racing_median",
                        1000 * statistics.median(s for s, _ in race),
                        "ms",
                        load=loadavg(),
                    )
                )
                figures.append(
                    Figure(
                        f"promote_{where}_3_racing_attempts_per_round",
                        statistics.mean(a for _, a in race),
                        "attempts",
                        "3 = no conflict",
                        load=loadavg(),
                    )
                )
    finally:
        server.stop()
    return figures


if __name__ == "__main__":
    main(run)
