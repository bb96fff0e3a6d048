import hashlib
import time

import pytest

from pcam.cli import main
from pcam.download import OFFICIAL_MD5, ZENODO_URL, download_official, fetch
from pcam.errors import DataError
from tests.fixtures_data import closed_port_url

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MB: several read chunks


def _md5(data):
    return hashlib.md5(data).hexdigest()


def test_official_table():
    assert ZENODO_URL == "https://zenodo.org/record/2546921/files"
    assert len(OFFICIAL_MD5) == 9
    assert OFFICIAL_MD5["camelyonpatch_level_2_split_train_x.h5.gz"] == "1571f514728f59376b705fc836ff4b63"
    assert OFFICIAL_MD5["camelyonpatch_level_2_split_test_meta.csv"] == "67589e00a4a37ec317f2d1932c7502ca"


def test_download_verifies_md5_and_skips_what_is_there(http_server, tmp_path):
    http_server.files = {"a.h5.gz": PAYLOAD, "b.csv": b"x,y\n1,2\n"}
    files = {name: _md5(data) for name, data in http_server.files.items()}
    dest = download_official(tmp_path / "dl", base_url=http_server.base_url + "/record/files", files=files)
    assert (dest / "a.h5.gz").read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.iterdir()) == ["a.h5.gz", "b.csv"]
    assert [path for path, _ in http_server.requests] == ["/record/files/a.h5.gz", "/record/files/b.csv"]
    download_official(dest, base_url=http_server.base_url, files=files)
    assert len(http_server.requests) == 2  # verified from disk, nothing fetched again


def test_interrupted_download_resumes_with_range(http_server, tmp_path):
    http_server.files = {"x.h5.gz": PAYLOAD}
    half = len(PAYLOAD) // 2
    http_server.drop_after = {"x.h5.gz": half}
    target = tmp_path / "x.h5.gz"
    with pytest.raises(DataError, match=r"x\.h5\.gz: download interrupted.*rerun to resume"):
        fetch(f"{http_server.base_url}/x.h5.gz", target, _md5(PAYLOAD), retries=0)
    part = tmp_path / "x.h5.gz.part"
    assert part.stat().st_size == half and not target.exists()
    fetch(f"{http_server.base_url}/x.h5.gz", target, _md5(PAYLOAD), retries=0)
    assert target.read_bytes() == PAYLOAD and not part.exists()
    assert http_server.requests[-1][1] == f"bytes={half}-"


def test_automatic_retry_resumes_in_one_call(http_server, tmp_path):
    http_server.files = {"y.h5.gz": PAYLOAD}
    http_server.drop_after = {"y.h5.gz": 1000}
    fetch(f"{http_server.base_url}/y.h5.gz", tmp_path / "y.h5.gz", _md5(PAYLOAD), retries=1)
    assert (tmp_path / "y.h5.gz").read_bytes() == PAYLOAD
    assert [r for _, r in http_server.requests] == [None, "bytes=1000-"]


def test_server_without_range_support_restarts_cleanly(http_server, tmp_path):
    http_server.files = {"z.bin": PAYLOAD}
    http_server.ignore_range = True
    (tmp_path / "z.bin.part").write_bytes(b"stale bytes from somewhere else")
    fetch(f"{http_server.base_url}/z.bin", tmp_path / "z.bin", _md5(PAYLOAD), retries=0)
    assert (tmp_path / "z.bin").read_bytes() == PAYLOAD


def test_md5_mismatch_deletes_the_bad_file(http_server, tmp_path):
    http_server.files = {"bad.h5.gz": PAYLOAD}
    with pytest.raises(DataError, match=r"bad\.h5\.gz: md5 [0-9a-f]{32} does not match the expected 0{32}"):
        download_official(tmp_path, base_url=http_server.base_url, files={"bad.h5.gz": "0" * 32})
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_unreachable_host_name_the_url(http_server, tmp_path):
    with pytest.raises(DataError, match=r"/nothing\.gz: HTTP 404"):
        fetch(f"{http_server.base_url}/nothing.gz", tmp_path / "n.gz")
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"{url}/camelyonpatch_level_2_split_valid_y\.h5\.gz: cannot reach"):
        download_official(tmp_path, base_url=url, files=["camelyonpatch_level_2_split_valid_y.h5.gz"])
    assert time.monotonic() - start < 5
    with pytest.raises(DataError, match="not an official PCam file"):
        download_official(tmp_path, files=["other.h5"])


def test_cli_unreachable_exits_2(tmp_path, capsys):
    url = closed_port_url()
    code = main(
        [
            "download",
            "--dest",
            str(tmp_path),
            "--base-url",
            url,
            "--files",
            "camelyonpatch_level_2_split_test_y.h5.gz",
            "--retries",
            "0",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and url in err
