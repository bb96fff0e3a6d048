"""pcam.storage against a real GCS-protocol server (fake-gcs-server on 127.0.0.1) and locally.

Same API, same answers.
"""

from __future__ import annotations

import os

import pytest

from pcam import storage
from pcam.errors import DataError
from tests.storage.gcs_server import is_object


def _object_statuses(proxy) -> list[int]:
    return [status for _, path, status in proxy.requests if is_object(path)]


@pytest.fixture(params=["gcs", "local"])
def root(request, tmp_path) -> str:
    if request.param == "gcs":
        return request.getfixturevalue("gcs") + "/area"
    return str(tmp_path / "area")


def test_same_api_on_gcs_and_local(root, tmp_path):
    assert not storage.exists(root) and storage.list_dir(root) == [] and storage.walk(root) == []
    storage.write_bytes(storage.join(root, "a.txt"), b"alpha")
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.bin").write_bytes(os.urandom(3000))
    (src / "DONE").write_text("ok")
    storage.upload_tree(src, storage.join(root, "t"), marker="DONE")
    assert storage.list_dir(root) == ["a.txt", "t"]
    assert storage.walk(root) == ["a.txt", "t/DONE", "t/sub/b.bin"]
    assert storage.exists(storage.join(root, "t")) and storage.is_file(storage.join(root, "a.txt"))
    assert not storage.is_file(storage.join(root, "t"))
    assert storage.read_bytes(storage.join(root, "a.txt")) == b"alpha"
    back = storage.download_tree(storage.join(root, "t"), tmp_path / "back")
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    with pytest.raises(DataError, match="marker file missing"):
        storage.upload_tree(src, storage.join(root, "u"), marker="nope")
    storage.delete_tree(storage.join(root, "t"))
    storage.delete(storage.join(root, "never-there"))
    assert storage.list_dir(root) == ["a.txt"]
    with pytest.raises(DataError, match=r"missing.txt: does not exist"):
        storage.read_bytes(storage.join(root, "missing.txt"))


def test_write_if_generation_is_a_compare_and_swap(root):
    uri = storage.join(root, "pointer.json")
    data, gen = storage.read_versioned(uri)
    assert data is None and gen == storage.ABSENT
    assert storage.write_if_generation(uri, b"one", gen)
    assert not storage.write_if_generation(uri, b"two", gen)  # someone (we) moved it on
    data, gen1 = storage.read_versioned(uri)
    assert data == b"one" and gen1 != gen
    assert storage.write_if_generation(uri, b"three", gen1)
    assert not storage.write_if_generation(uri, b"four", gen1)
    assert storage.read_versioned(uri)[0] == b"three"


def test_missing_bucket_is_one_line(gcs):
    uri = "gs://pcam-no-such-bucket/x/y.bin"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.list_dir(uri),
        lambda: storage.write_bytes(uri, b"x"),
    ):
        with pytest.raises(
            DataError,
            match=r"^gs://pcam-no-such-bucket/x/y.bin: bucket gs://pcam-no-such-bucket "
            r"does not exist$",
        ):
            call()


def test_burst_of_503_is_retried_with_backoff(faulty_gcs):
    _, proxy, bucket = faulty_gcs
    proxy.faults = [503, 503, 503]
    storage.write_bytes(f"{bucket}/a.bin", b"payload")
    proxy.faults = [503, 429, 500]
    assert storage.read_bytes(f"{bucket}/a.bin") == b"payload"
    assert _object_statuses(proxy) == [503, 503, 503, 200, 503, 429, 500, 200]


def test_503_beyond_the_deadline_is_one_line_and_nothing_written(faulty_gcs, tmp_path):
    _, proxy, bucket = faulty_gcs
    proxy.faults = [503] * 1000
    with pytest.raises(
        DataError,
        match=r"^gs://faulty/b.bin: write failed after retrying for 3 s "
        r"\(last error: HTTP 503: injected 503\)$",
    ):
        storage.write_bytes(f"{bucket}/b.bin", b"x")
    proxy.faults = []
    assert storage.list_dir(bucket) == []


def test_403_names_the_identity_and_is_not_retried(faulty_gcs):
    _, proxy, bucket = faulty_gcs
    proxy.faults = [403, 403]
    with pytest.raises(
        DataError,
        match=r"^gs://faulty/c.bin: permission denied to write for anonymous "
        r"\(STORAGE_EMULATOR_HOST=.*\) \(HTTP 403\); grant it roles/storage",
    ):
        storage.write_bytes(f"{bucket}/c.bin", b"x")
    assert _object_statuses(proxy) == [403]  # not transient: not retried


def test_server_stopped_mid_upload_leaves_no_complete_tree(faulty_gcs, tmp_path):
    server, proxy, bucket = faulty_gcs
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "variables.npz").write_bytes(os.urandom(3 << 20))
    (src / "state.json").write_text("{}")
    proxy.on_body_bytes = (1 << 20, server.stop)  # kill the server 1 MiB into the first upload
    with pytest.raises(
        DataError,
        match=r"^gs://faulty/run/epoch-00001/variables.npz: upload failed after "
        r"retrying for 3 s \(last error: .*\)$",
    ):
        storage.upload_tree(src, f"{bucket}/run/epoch-00001", marker="state.json")
    server.start()  # same filesystem root: what was stored survives the restart
    assert storage.walk(f"{bucket}/run") == []  # no partial object, no marker
    storage.upload_tree(src, f"{bucket}/run/epoch-00001", marker="state.json")
    assert storage.walk(f"{bucket}/run") == ["epoch-00001/state.json", "epoch-00001/variables.npz"]


def test_server_gone_is_one_line(faulty_gcs):
    server, _, bucket = faulty_gcs
    server.stop()
    with pytest.raises(
        DataError,
        match=r"^gs://faulty/x: list failed after retrying for 3 s "
        r"\(last error: .*\)$",
    ):
        storage.list_dir(f"{bucket}/x")


def test_no_credentials_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(DataError, match=r"^gs://somewhere/x: no Google Cloud credentials"):
        storage.read_bytes("gs://somewhere/x")
