"""Sources: bring a local path, ``gs://`` folder or file, ``http(s)://`` archive or mirror to a local directory.

Archives (``.zip``, ``.tar[.gz]``, ``.tgz``) are unpacked into scratch space under the
cache, refusing members that would land outside it; a single top folder is entered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pcam.config import SyntheticConfig
from pcam.errors import ConfigError, DataError
from pcam.fsutil import is_remote, local_path
from pcam.ingest.common import H5_PREFIX, first_line

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
GCS_TIMEOUT_S = float(os.environ.get("PCAM_GCS_TIMEOUT", "120"))
"""How long the first contact with a gs:// URI may take before it counts as unreachable."""


def default_cache_dir() -> Path:
    """Where downloads land: ``$PCAM_CACHE``, else ``~/.cache/pcam``."""
    return Path(os.environ.get("PCAM_CACHE", Path.home() / ".cache" / "pcam")).expanduser()


def resolve(
    source: str, fmt: str, cache: Path, seed: int, sizes: SyntheticConfig, stack: contextlib.ExitStack
) -> tuple[Path, str, bool]:
    """A local directory for ``source``, downloading, copying or generating it if needed.

    Args:
        source: A local path, ``gs://`` or ``http(s)://`` URI, ``official`` or ``synthetic``.
        fmt: The requested format (``official`` downloads).
        cache: Downloads and scratch directories go here.
        seed: Seeds the synthetic data.
        sizes: How much synthetic data to generate.
        stack: Owns the temporary directories (deleted when it closes).

    Returns:
        The data root, its format (``hdf5`` for downloaded or generated data), and whether it is synthetic.

    Raises:
        ConfigError: ``official`` with a source that is not a URL.
        DataError: The source does not exist or cannot be read.
    """
    if source == "synthetic":
        from pcam.synth import write_synthetic

        tmp = Path(stack.enter_context(scratch_dir(cache)))
        return write_synthetic(tmp / "synthetic", sizes, seed), "hdf5", True
    if source == "official" or fmt == "official":
        from pcam.download import ZENODO_URL, download_official

        if source != "official" and not source.startswith(("http://", "https://")):
            raise ConfigError(
                f"format 'official' downloads; the source must be 'official' or an https:// mirror, not {source!r}"
            )
        base = ZENODO_URL if source == "official" else source
        return download_official(cache / "official", base_url=base), "hdf5", False
    if source.startswith("gs://"):
        tmp = Path(stack.enter_context(scratch_dir(cache)))
        return copy_gcs(source, tmp / "gcs"), fmt, False
    if source.startswith(("http://", "https://")):
        return _fetch_http(source, cache, stack), fmt, False
    if is_remote(source):
        raise DataError(f"{source}: unsupported URI scheme; use a local path, gs:// or https://")
    root = local_path(source)
    if not root.exists():
        raise DataError(f"{root}: does not exist")
    if root.is_file():
        if root.name.startswith(H5_PREFIX):
            return root.parent, fmt, False
        raise DataError(f"{root}: is a file; point ingest at the directory holding the data")
    return root, fmt, False


@contextlib.contextmanager
def scratch_dir(cache: Path) -> Iterator[str]:
    """A temporary directory under ``cache`` (same file system as the downloads), deleted on exit."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ingest-", dir=cache) as tmp:
        yield tmp


def copy_gcs(uri: str, dest: Path) -> Path:
    """Copy a gs:// file or folder tree to ``dest`` through :mod:`pcam.storage`.

    The first call (what is there?) runs in a daemon thread with a timeout: without
    network the client retries with backoff up to its deadline, and one clear error
    naming the URI is more useful than a long wait. Errors arrive as one DataError line.
    """
    from pcam import storage

    answer: dict[str, Any] = {}

    def probe() -> None:
        try:
            answer["isfile"] = storage.is_file(uri)
            answer["files"] = [] if answer["isfile"] else storage.walk(uri)
        except Exception as exc:  # noqa: BLE001 - re-raised below in the caller's thread
            answer["error"] = exc

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(GCS_TIMEOUT_S)
    if worker.is_alive():
        raise DataError(
            f"{uri}: no answer from Google Cloud Storage within {GCS_TIMEOUT_S:.0f} s (no network or credentials?)"
        )
    if "error" in answer:
        if isinstance(answer["error"], DataError):
            raise answer["error"]
        raise DataError(f"{uri}: cannot read ({first_line(answer['error'])})")
    if answer["isfile"]:
        target = dest / uri.rstrip("/").rsplit("/", 1)[-1]
        storage.download_file(uri, target)
        return _unpack_if_archive(target, dest)
    if not answer["files"]:
        raise DataError(f"{uri}: does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    for name in tqdm(answer["files"], desc=f"copy {uri}", unit="file", disable=len(answer["files"]) < 100):
        storage.download_file(storage.join(uri, *name.split("/")), dest / name)
    return dest


def _fetch_http(url: str, cache: Path, stack: contextlib.ExitStack) -> Path:
    """Download an archive (and unpack it), or treat the URL as a mirror of the official files."""
    from pcam.download import download_official, fetch

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(ARCHIVE_SUFFIXES):
        archive = fetch(url, cache / "downloads" / f"{key}-{name}", None, retries=1)
        tmp = Path(stack.enter_context(scratch_dir(cache)))
        return _unpack_if_archive(archive, tmp)
    return download_official(cache / "mirror" / key, base_url=url, retries=1)


def _unpack_if_archive(path: Path, dest: Path) -> Path:
    """Unpack a .zip/.tar[.gz] into ``dest``; return the data root (a single top folder is entered)."""
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        return path.parent
    out = dest / "unpacked"
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"{path}: unsafe member path {member!r} in archive")
                archive.extractall(out)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(out, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot unpack archive ({exc})") from None
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out
