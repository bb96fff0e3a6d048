"""Fixtures: a real GCS-protocol server (fake-gcs-server) on 127.0.0.1 for the storage tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.storage.gcs_server import FakeGcs, FaultProxy

_buckets = itertools.count()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcs]:
    """One in-memory fake-gcs-server for the session (tests use their own buckets)."""
    server = FakeGcs().start()
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_server: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's server, with STORAGE_EMULATOR_HOST pointing at it; returns gs://bucket."""
    name = f"pcam-test-{next(_buckets)}"
    gcs_server.create_bucket(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    monkeypatch.setenv("PCAM_GCS_RETRY_INITIAL", "0.05")
    monkeypatch.setenv("PCAM_GCS_RETRY_DEADLINE", "20")
    return f"gs://{name}"


@pytest.fixture
def faulty_gcs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeGcs, FaultProxy, str]]:
    """A filesystem-backed server (survives a restart) behind a FaultProxy; the client talks to the proxy."""
    proxy = FaultProxy()
    server = FakeGcs(root=tmp_path / "gcs-root", public_port=proxy.port).start()
    proxy.upstream_port = server.port
    proxy.start()
    server.create_bucket("faulty")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    monkeypatch.setenv("PCAM_GCS_RETRY_INITIAL", "0.05")
    monkeypatch.setenv("PCAM_GCS_RETRY_DEADLINE", "3")
    yield server, proxy, "gs://faulty"
    proxy.stop()
    server.stop()
