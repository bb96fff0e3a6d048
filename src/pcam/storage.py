"""Object storage: the one module that reads and writes ``gs://`` (local paths share its API).

Every other module that may meet a ``gs://`` URI (ingest's source, weights files,
checkpoints, the champion) calls these functions; a plain path or ``file://`` URI
goes to the local filesystem through the same calls.

Client: google-cloud-storage. It honours ``STORAGE_EMULATOR_HOST`` (a GCS-protocol
server such as fake-gcs-server; the tests start one on 127.0.0.1), where it uses
anonymous credentials; otherwise Application Default Credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, Workload Identity, the metadata server).
TensorFlow's own gs:// filesystem has its endpoint built in, which is why nothing here
uses ``tf.io.gfile``.

Retries follow GCS's retry strategy (google-cloud-storage's ``DEFAULT_RETRY``
predicate: 408/429/5xx, connection resets and timeouts), with exponential backoff from
``PCAM_GCS_RETRY_INITIAL`` seconds (default 1, doubling, at most 30) for at most
``PCAM_GCS_RETRY_DEADLINE`` seconds (default 120). Every call here is idempotent in
effect: reads, deletes, uploads of the same bytes to the same name, and the
conditional pointer write (``if_generation_match`` makes a retry safe: GCS's
``ConditionalRetryPolicy`` rule). Failures become one :class:`~pcam.errors.DataError`
line naming the URI: missing bucket or object, 401/403 (with the identity used),
retries exhausted, server unreachable.

Completeness: an uploaded object appears whole or not at all (GCS finalizes an
upload atomically). A multi-file tree (a checkpoint, a champion version) is complete
only once its marker file, written last by :func:`upload_tree`, exists; readers
check the marker. Locally the tree is built under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pcam.errors import DataError
from pcam.fsutil import atomic_path, temp_dir_beside
from pcam.fsutil import local_path as local  # the one rule for plain paths and file:// URIs

log = logging.getLogger(__name__)

ABSENT = 0
"""The generation of an object that does not exist (GCS's ``if_generation_match=0``)."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise DataError(f"environment variable {name}={os.environ[name]!r}: not a number") from None


# ---------------------------------------------------------------- URIs


def is_gcs(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is a ``gs://`` URI (everything else is a local path here)."""
    return str(uri).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, key = uri[len("gs://") :].partition("/")
    if not bucket:
        raise DataError(f"{uri}: no bucket name in the gs:// URI")
    return bucket, key.strip("/")


def join(uri: str | os.PathLike[str], *names: str) -> str:
    """``uri`` with ``names`` appended (``/``-joined for gs://, path-joined locally)."""
    if is_gcs(uri):
        return "/".join([str(uri).rstrip("/"), *(n.strip("/") for n in names)])
    return str(local(uri).joinpath(*names))


# ---------------------------------------------------------------- client and errors

_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def _client() -> Any:
    """One client per process (clients hold sessions that must not cross a fork)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    key = (os.getpid(), emulator)
    with _clients_lock:
        if key not in _clients:
            from google.cloud import storage

            if emulator:
                client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "pcam"))
            else:
                import google.auth

                credentials, project = google.auth.default()  # DefaultCredentialsError: see _gcs_errors
                client = storage.Client(project=project or "pcam", credentials=credentials)
            _clients[key] = client
        return _clients[key]


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(
        initial=_env_float("PCAM_GCS_RETRY_INITIAL", 1.0), maximum=30.0, multiplier=2.0
    ).with_timeout(_env_float("PCAM_GCS_RETRY_DEADLINE", 120.0))


def _identity() -> str:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return f"anonymous (STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']})"
    credentials = getattr(_client(), "_credentials", None)
    who = getattr(credentials, "service_account_email", None) or getattr(credentials, "signer_email", None)
    return who or f"{type(credentials).__name__} from Application Default Credentials"


def _first_line(exc: BaseException) -> str:
    """A short description of a transport or HTTP error (the status and the server's message)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "code", None)
    if isinstance(status, int):
        message = getattr(exc, "message", "") or ""
        try:
            message = response.json()["error"]["message"] if response is not None else message
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return f"HTTP {status}" + (f": {str(message).splitlines()[0][:200]}" if message else "")
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^\"')]+", text)  # urllib3 nests the OS error in a long repr
    if errno:
        return errno.group(0).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


@contextlib.contextmanager
def _gcs_errors(uri: str, action: str) -> Iterator[None]:
    """Turn google-cloud-storage and transport errors into one DataError line naming ``uri``."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError

    try:
        yield
    except DataError:
        raise
    except DefaultCredentialsError:
        raise DataError(
            f"{uri}: no Google Cloud credentials (set GOOGLE_APPLICATION_CREDENTIALS to a "
            "service-account key file, or run with Workload Identity)"
        ) from None
    except gexc.NotFound:
        bucket = split_gcs(uri)[0]
        if not _bucket_exists(bucket):
            raise DataError(f"{uri}: bucket gs://{bucket} does not exist") from None
        raise DataError(f"{uri}: does not exist") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise DataError(
            f"{uri}: permission denied to {action} for {_identity()} (HTTP {exc.code}); grant it "
            "roles/storage.objectAdmin on the bucket"
        ) from None
    except gexc.RetryError as exc:
        deadline = _env_float("PCAM_GCS_RETRY_DEADLINE", 120.0)
        raise DataError(
            f"{uri}: {action} failed after retrying for {deadline:g} s "
            f"(last error: {_first_line(exc.cause) if exc.cause else 'timeout'})"
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise DataError(f"{uri}: {action} failed ({_first_line(exc)})") from None
    except GoogleAuthError as exc:
        raise DataError(f"{uri}: {action} failed: credentials problem ({_first_line(exc)})") from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise DataError(f"{uri}: {action} failed: storage server unreachable ({_first_line(exc)})") from None
    except ValueError as exc:  # e.g. requests' InvalidURL for a malformed STORAGE_EMULATOR_HOST
        raise DataError(f"{uri}: {action} failed ({_first_line(exc)})") from None


def _bucket_exists(bucket: str) -> bool:
    from google.api_core import exceptions as gexc

    try:
        return _client().bucket(bucket).exists(retry=_retry())
    except gexc.GoogleAPIError:
        return True  # cannot tell: say "object does not exist", not a wrong bucket message


def _blob(uri: str) -> Any:
    bucket, key = split_gcs(uri)
    if not key:
        raise DataError(f"{uri}: names a bucket, not an object")
    return _client().bucket(bucket).blob(key)


def _list(uri: str, delimiter: str | None) -> tuple[list[Any], set[str]]:
    bucket, key = split_gcs(uri)
    prefix = f"{key}/" if key else ""
    with _gcs_errors(uri, "list"):
        pages = _client().list_blobs(bucket, prefix=prefix, delimiter=delimiter, retry=_retry())
        blobs = list(pages)  # a missing bucket answers 404 here
        return blobs, set(pages.prefixes)


# ---------------------------------------------------------------- queries


def is_file(uri: str) -> bool:
    """True when ``uri`` is one object (gs://) or a regular file."""
    if not is_gcs(uri):
        return local(uri).is_file()
    with _gcs_errors(uri, "read"):
        return bool(split_gcs(uri)[1]) and _blob(uri).exists(retry=_retry())


def exists(uri: str) -> bool:
    """True when ``uri`` is a file/object or a directory/prefix holding at least one object."""
    if not is_gcs(uri):
        return local(uri).exists()
    if is_file(uri):
        return True
    blobs, prefixes = _list(uri, "/")
    return bool(blobs or prefixes)


def list_dir(uri: str) -> list[str]:
    """Sorted names of the files and sub-folders directly under ``uri`` (empty if there are none)."""
    if not is_gcs(uri):
        path = local(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    blobs, prefixes = _list(uri, "/")
    key = split_gcs(uri)[1]
    cut = len(key) + 1 if key else 0
    names = {b.name[cut:] for b in blobs} | {p[cut:].rstrip("/") for p in prefixes}
    return sorted(n for n in names if n)


def sizes(uri: str) -> dict[str, int]:
    """{name: bytes} of the files directly under ``uri`` (sub-folders are left out)."""
    if not is_gcs(uri):
        path = local(uri)
        return {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()} if path.is_dir() else {}
    key = split_gcs(uri)[1]
    cut = len(key) + 1 if key else 0
    return {b.name[cut:]: int(b.size or 0) for b in _list(uri, "/")[0] if b.name[cut:]}


def walk(uri: str) -> list[str]:
    """Every file under ``uri``, as sorted ``/``-separated paths relative to it."""
    if not is_gcs(uri):
        root = local(uri)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    key = split_gcs(uri)[1]
    cut = len(key) + 1 if key else 0
    return sorted(b.name[cut:] for b in _list(uri, None)[0] if not b.name.endswith("/"))


# ---------------------------------------------------------------- bytes


def read_bytes(uri: str) -> bytes:
    """The content of a local file or a gs:// object; DataError naming it when missing."""
    if not is_gcs(uri):
        try:
            return local(uri).read_bytes()
        except FileNotFoundError:
            raise DataError(f"{uri}: does not exist") from None
        except OSError as exc:
            raise DataError(f"{uri}: cannot read ({exc.strerror or exc})") from None
    with _gcs_errors(uri, "read"):
        return _blob(uri).download_as_bytes(retry=_retry())


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file/object whole: a reader sees the old content or the new, never a part."""
    if not is_gcs(uri):
        with atomic_path(local(uri)) as tmp:
            tmp.write_bytes(data)
        return
    with _gcs_errors(uri, "write"):
        # Same bytes to the same name: retrying is safe, so retry unconditionally.
        _blob(uri).upload_from_string(data, retry=_retry())


def read_versioned(uri: str) -> tuple[bytes | None, Any]:
    """(content, generation) of ``uri``; (None, ABSENT) when it does not exist.

    The generation is GCS's object generation, locally a digest of the content:
    pass it to :func:`write_if_generation`.
    """
    if not is_gcs(uri):
        try:
            data = local(uri).read_bytes()
        except FileNotFoundError:
            return None, ABSENT
        except OSError as exc:
            raise DataError(f"{uri}: cannot read ({exc.strerror or exc})") from None
        return data, hashlib.sha256(data).hexdigest()
    from google.api_core import exceptions as gexc

    with _gcs_errors(uri, "read"):
        blob = _blob(uri).bucket.get_blob(split_gcs(uri)[1], retry=_retry())
        if blob is None:
            return None, ABSENT
        try:
            # Pin the read to that generation: content and generation belong together.
            return blob.download_as_bytes(if_generation_match=blob.generation, retry=_retry()), blob.generation
        except (gexc.NotFound, gexc.PreconditionFailed):
            return read_versioned(uri)  # replaced between the two calls: read the new one


def write_if_generation(uri: str, data: bytes, generation: Any) -> bool:
    """Replace ``uri`` with ``data`` only if it is still at ``generation``; False when it moved on.

    gs://: ``if_generation_match`` (the server decides). Locally: an ``fcntl`` lock on
    ``<uri>.lock`` held while the current content is compared and the new file renamed
    into place, so two writers on one filesystem (also a shared NFS volume with
    working locks) never both win.
    """
    if not is_gcs(uri):
        path = local(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if read_versioned(uri)[1] != generation:
                    return False
                write_bytes(uri, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    from google.api_core import exceptions as gexc

    with _gcs_errors(uri, "write"):
        try:
            _blob(uri).upload_from_string(data, if_generation_match=int(generation), retry=_retry())
            return True
        except gexc.PreconditionFailed:
            # A retried request whose first attempt did land also gets 412: it is ours if
            # the content now is exactly what we wrote.
            return read_versioned(uri)[0] == data


# ---------------------------------------------------------------- files and trees


def upload_file(src: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to ``uri`` (whole object, or a temp file renamed locally)."""
    if not is_gcs(uri):
        with atomic_path(local(uri)) as tmp:
            shutil.copyfile(src, tmp)
        return
    with _gcs_errors(uri, "upload"):
        _blob(uri).upload_from_filename(str(src), retry=_retry())


def download_file(uri: str, dest: str | os.PathLike[str]) -> Path:
    """Copy ``uri`` to the local file ``dest`` (written under a temp name, renamed when complete)."""
    dest = Path(dest)
    if not is_gcs(uri):
        if not local(uri).is_file():
            raise DataError(f"{uri}: does not exist")
        with atomic_path(dest) as tmp:
            shutil.copyfile(local(uri), tmp)
        return dest
    with _gcs_errors(uri, "download"), atomic_path(dest) as tmp:
        _blob(uri).download_to_filename(str(tmp), retry=_retry())
    return dest


def upload_tree(src: str | os.PathLike[str], uri: str, marker: str | None = None) -> None:
    """Copy the local directory ``src`` to ``uri``; ``marker`` (a file in ``src``) goes last.

    Locally the copy is built beside ``uri`` under a temporary name and renamed (an
    existing ``uri`` is replaced). On gs:// the objects are uploaded one by one and the
    marker last: the tree counts as complete only when the marker exists.
    """
    src = Path(src)
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    if marker is not None:
        if marker not in files:
            raise DataError(f"{src / marker}: marker file missing")
        files = [f for f in files if f != marker] + [marker]
    if not is_gcs(uri):
        final = local(uri)
        tmp = temp_dir_beside(final)
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    for name in files:
        upload_file(src / name, join(uri, name))


def download_tree(uri: str, dest: str | os.PathLike[str]) -> Path:
    """Copy every file under ``uri`` into the local directory ``dest``; DataError when there is none."""
    names = walk(uri)
    if not names:
        raise DataError(f"{uri}: does not exist or holds no files")
    dest = Path(dest)
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        download_file(join(uri, *name.split("/")), dest / name)
    return dest


def delete(uri: str) -> None:
    """Remove one file/object; absent is fine."""
    if not is_gcs(uri):
        local(uri).unlink(missing_ok=True)
        return
    from google.api_core import exceptions as gexc

    with _gcs_errors(uri, "delete"), contextlib.suppress(gexc.NotFound):
        _blob(uri).delete(retry=_retry())


def delete_tree(uri: str) -> None:
    """Remove ``uri`` and everything under it; absent is fine."""
    if not is_gcs(uri):
        shutil.rmtree(local(uri), ignore_errors=True)
        return
    for name in walk(uri):
        delete(join(uri, name))
