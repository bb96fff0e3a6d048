"""`pcam serve`: a real KServe ModelServer on 127.0.0.1, real HTTP, real PCam patches.

The server runs as a subprocess (`python -m pcam.cli serve`), exactly as a user or the
image starts it; every answer is compared with the Keras model scored through
`pcam.evaluate`'s TTA code on the same pixels.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pcam.config import EvaluateConfig
from tests.fixtures_serving import png, real_jpegs

VIEWS = EvaluateConfig().tta_views
REPO = Path(__file__).resolve().parents[2]
MAX_BODY_MB = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dirs(cnn_model_dir, cnn_champion) -> tuple[Path, Path]:
    """(Keras model dir, champion-like folder holding serving/1) of the same model."""
    return cnn_model_dir, cnn_champion


@pytest.fixture(scope="module")
def reference(model_dirs, pcam_sample):
    """Real JPEG bytes and the Keras model's (V, N) view probabilities on their Pillow pixels."""
    from pcam.artifacts import load_model
    from pcam.evaluate import predict_views

    jpegs, pixels = real_jpegs(pcam_sample, per_class=16)
    return jpegs, pixels, predict_views(load_model(model_dirs[0]), pixels, VIEWS, progress=False)


@pytest.fixture(scope="module")
def server(model_dirs):
    port = free_port()
    log = open(model_dirs[1].parent / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pcam.cli",
            "serve",
            "--model",
            str(model_dirs[1]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-body-mb",
            str(MAX_BODY_MB),
            "--grace-seconds",
            "90",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (model_dirs[1].parent / "serve.log").read_text()[-3000:]
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "server not ready in 180 s"
        time.sleep(0.5)
    yield url, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    log.close()


def v1(images: list[bytes]) -> dict:
    return {"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}


def post(url: str, path: str, **kwargs) -> requests.Response:
    return requests.post(url + path, timeout=120, **kwargs)


def test_health_and_readiness(server):
    url, _ = server
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v1/models/pcam", "/v2/models/pcam/ready"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    assert requests.get(url + "/v1/models", timeout=10).json() == {"models": ["pcam"]}


def test_v1_predict_equals_keras_tta_on_real_patches(server, reference):
    url, _ = server
    jpegs, pixels, probs = reference
    for encoded in (jpegs, [png(p) for p in pixels]):
        answer = post(url, "/v1/models/pcam:predict", json=v1(encoded))
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        np.testing.assert_allclose([p["probability"] for p in predictions], probs.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose([p["single_probability"] for p in predictions], probs[0], atol=1e-5)
    assert probs.mean(axis=0).std() > 1e-3  # the scores differ, so the equality above means something


def test_server_answers_equal_pcam_predict(server, model_dirs, pcam_sample, tmp_path):
    """The two ways to apply the champion agree: `pcam predict` on files and the server on their bytes."""
    import csv

    from pcam.cli import main

    url, _ = server
    jpegs, _ = real_jpegs(pcam_sample, per_class=8)
    folder = tmp_path / "patches"
    folder.mkdir()
    for i, data in enumerate(jpegs):
        (folder / f"p{i:02d}.jpg").write_bytes(data)
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dirs[0]),
                "--input",
                str(folder),
                "--out",
                str(tmp_path / "pred"),
                "--views",
                str(len(VIEWS)),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(tmp_path / "pred" / "predictions.csv") as handle:
        rows = {Path(r["id"]).stem: r for r in csv.DictReader(handle)}
    answer = post(url, "/v1/models/pcam:predict", json=v1(jpegs))
    assert answer.status_code == 200, answer.text
    for i, served in enumerate(answer.json()["predictions"]):
        row = rows[f"p{i:02d}"]
        assert float(row["probability"]) == pytest.approx(served["probability"], abs=1e-5)
        assert float(row["single_probability"]) == pytest.approx(served["single_probability"], abs=1e-5)


def test_v2_infer_equals_keras_tta(server, reference):
    url, _ = server
    jpegs, _, probs = reference
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [len(jpegs)],
                "datatype": "BYTES",
                "data": [base64.b64encode(b).decode() for b in jpegs],
            }
        ]
    }
    answer = post(url, "/v2/models/pcam/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["probability"]["shape"] == [len(jpegs)] and outputs["probability"]["datatype"] == "FP32"
    np.testing.assert_allclose(outputs["probability"]["data"], probs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(outputs["single_probability"]["data"], probs[0], atol=1e-5)


def _bad_requests(pixels: np.ndarray) -> dict[str, tuple[str, dict, int, str]]:
    """name -> (path, requests kwargs, expected status, expected words in the error)."""
    big = b"x" * (MAX_BODY_MB * 2**20 + 1)
    return {
        "not an image": ("/v1/models/pcam:predict", {"json": v1([b"%PDF-1.4 not a patch"])}, 400, "not an image"),
        "wrong size": ("/v1/models/pcam:predict", {"json": v1([png(pixels[0][:64, :64])])}, 400, "64x64"),
        "empty instances": ("/v1/models/pcam:predict", {"json": {"instances": []}}, 400, "no instances"),
        "not base64": ("/v1/models/pcam:predict", {"json": {"instances": [{"b64": "***"}]}}, 400, "base64"),
        "not json": (
            "/v1/models/pcam:predict",
            {"data": b"{oops", "headers": {"Content-Type": "application/json"}},
            400,
            "request format",
        ),
        "huge body": (
            "/v1/models/pcam:predict",
            {"data": big, "headers": {"Content-Type": "application/json"}},
            413,
            "limit",
        ),
        "huge chunked body": (
            "/v1/models/pcam:predict",
            {"data": iter([big[: 2**19]] * 5), "headers": {"Content-Type": "application/json"}},
            413,
            "limit",
        ),
        "wrong content type": (
            "/v1/models/pcam:predict",
            {"data": b"instances=1", "headers": {"Content-Type": "text/plain"}},
            400,
            "content type",
        ),
        "v2 binary extension": (
            "/v2/models/pcam/infer",
            {
                "data": b"\x00" * 16,
                "headers": {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "8"},
            },
            400,
            "content type",
        ),
        "v2 wrong datatype": (
            "/v2/models/pcam/infer",
            {"json": {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "FP32", "data": [1.0]}]}},
            400,
            "BYTES",
        ),
        "unknown model": ("/v1/models/nope:predict", {"json": v1([png(pixels[0])])}, 400, "nope"),
    }


@pytest.mark.parametrize("case", list(_bad_requests(np.zeros((1, 96, 96, 3), np.uint8))))
def test_bad_request_gets_json_error_and_server_keeps_serving(server, reference, case):
    url, proc = server
    jpegs, _, probs = reference
    path, kwargs, status, words = _bad_requests(reference[1])[case]
    answer = post(url, path, **kwargs)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    good = post(url, "/v1/models/pcam:predict", json=v1(jpegs[:2]))
    assert good.status_code == 200 and proc.poll() is None
    np.testing.assert_allclose(
        [p["probability"] for p in good.json()["predictions"]], probs.mean(axis=0)[:2], atol=1e-5
    )


def test_resize_only_when_asked(model_dirs, pcam_sample):
    from pcam.serve import BadRequest, Scorer, resolve_model

    _, pixels = real_jpegs(pcam_sample, per_class=1)
    small = png(np.asarray(Image.fromarray(pixels[0]).resize((48, 48))))
    version = resolve_model(str(model_dirs[1]))
    with pytest.raises(BadRequest, match="48x48"):
        Scorer(version).check([small])
    (fixed,) = Scorer(version, resize=True).check([small])
    assert Image.open(io.BytesIO(fixed)).size == (96, 96)


def test_model_folder_without_savedmodel_is_one_clear_line(model_dirs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pcam.cli", "serve", "--model", str(model_dirs[0]), "--port", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"pcam serve: error: {model_dirs[0]}: holds a Keras")


def test_port_in_use_is_one_clear_line(model_dirs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pcam.cli",
                "serve",
                "--model",
                str(model_dirs[1]),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"pcam serve: error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"
    )


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, reference):
    """Runs last: it stops the module's server."""
    url, proc = server
    jpegs = reference[0] * 4  # 128 images: still in flight when the signal lands
    answers = []
    worker = threading.Thread(target=lambda: answers.append(post(url, "/v1/models/pcam:predict", json=v1(jpegs))))
    worker.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    worker.join(150)
    assert proc.wait(150) == 0
    assert answers and answers[0].status_code == 200 and len(answers[0].json()["predictions"]) == len(jpegs)
