"""Download the official PCam files (Zenodo record 2546921), md5-verified and resumable.

Each file is streamed into ``<name>.part`` next to its final name. An interrupted
transfer keeps the ``.part`` file; the next attempt (an automatic retry, or a rerun)
asks the server for the rest with an HTTP ``Range`` header and appends, falling back
to a fresh download if the server ignores ranges. The md5 is checked before the
rename, so a file with its final name is always complete and verified; a mismatch
deletes the bad file and stops with both checksums in the message.

Only the standard library (``urllib``) is used, so the same code runs in a bare
container image.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from tqdm import tqdm

from pcam.errors import DataError
from pcam.fsutil import CHUNK, file_digest

log = logging.getLogger(__name__)

ZENODO_URL = "https://zenodo.org/record/2546921/files"
"""The official record; ``<ZENODO_URL>/<name>`` is each file."""

OFFICIAL_MD5: dict[str, str] = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_test_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_train_meta.csv": "5a3dd671e465cfd74b5b822125e65b0a",
    "camelyonpatch_level_2_split_valid_meta.csv": "3455fd69135b66734e1008f3af684566",
    "camelyonpatch_level_2_split_test_meta.csv": "67589e00a4a37ec317f2d1932c7502ca",
}
"""md5 checksums published by the dataset's authors (github.com/basveeling/pcam)."""

TIMEOUT_S = 60.0
RETRIES = 3


def file_md5(path: str | os.PathLike[str]) -> str:
    """The checksum PCam's authors publish."""
    return file_digest(path, "md5")


def download_official(
    dest_dir: str | os.PathLike[str],
    base_url: str = ZENODO_URL,
    files: Mapping[str, str | None] | Iterable[str] | None = None,
    *,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Fetch ``files`` from ``base_url`` into ``dest_dir``; return ``dest_dir``.

    ``files``: None for all official files; a list of official names (their published
    md5 is used); or a mapping ``name -> md5`` (``None`` skips the check, e.g. for a
    private mirror of other files). Files already present with the right md5 are kept.
    """
    if files is None:
        wanted: dict[str, str | None] = dict(OFFICIAL_MD5)
    elif isinstance(files, Mapping):
        wanted = dict(files)
    else:
        wanted = {}
        for name in files:
            if name not in OFFICIAL_MD5:
                raise DataError(f"{name}: not an official PCam file; expected one of {', '.join(OFFICIAL_MD5)}")
            wanted[name] = OFFICIAL_MD5[name]
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in wanted.items():
        fetch(f"{base_url.rstrip('/')}/{name}", dest / name, md5, retries=retries, timeout=timeout)
    return dest


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    retries: int = RETRIES,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with HTTP Range), verifying ``md5``."""
    dest = Path(dest)
    if dest.exists():
        if md5 is None or file_md5(dest) == md5:
            log.info("%s: already downloaded", dest)
            return dest
        log.warning("%s: md5 does not match %s; downloading again", dest, md5)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError) and exc.filename:  # local file
                raise DataError(f"{exc.filename}: {exc.strerror}") from None
            have = part.stat().st_size if part.exists() else 0
            if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) and not have:
                raise DataError(f"{url}: cannot reach the server ({exc.reason})") from None
            reason = getattr(exc, "reason", exc)
            if attempt == retries:
                kept = f"; {have} bytes kept in {part}, rerun to resume" if have else ""
                verb = "download interrupted" if have else "cannot reach the server"
                raise DataError(f"{url}: {verb} ({reason}){kept}") from None
            log.warning("%s: %s; retry %d of %d from byte %d", url, reason, attempt + 1, retries, have)
            time.sleep(min(2.0**attempt, 10.0) * 0.5)
    if md5 is not None:
        got = file_md5(part)
        if got != md5:
            part.unlink()
            raise DataError(f"{url}: md5 {got} does not match the expected {md5}; deleted the bad file {part}")
    os.replace(part, dest)
    log.info("%s: downloaded to %s", url, dest)
    return dest


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Append the missing bytes of ``url`` to ``part`` (a fresh download if no range is honoured)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pcam-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is already complete
            return
        raise
    with response:
        if have and response.status == 206:
            first = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if first != str(have):
                raise http.client.HTTPException(f"server resumed at byte {first}, expected {have}")
            mode = "ab"
        else:
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                leave=False,
                disable=None,
            ) as bar,
        ):
            received = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < int(length):
            raise http.client.IncompleteRead(b"", int(length) - received)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam download`` options on ``parser``."""
    parser.add_argument("--dest", required=True, help="directory for the downloaded files")
    parser.add_argument("--base-url", default=ZENODO_URL, help="where the files live (a mirror works)")
    parser.add_argument("--files", nargs="+", choices=sorted(OFFICIAL_MD5), help="only these files (default: all)")
    parser.add_argument("--retries", type=int, default=RETRIES)


def run(args: argparse.Namespace) -> int:
    """Run ``pcam download`` (download the official PCam files from Zenodo, verifying md5); returns the exit code."""
    dest = download_official(args.dest, args.base_url, args.files, retries=args.retries)
    print(dest)
    return 0
