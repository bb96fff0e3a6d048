"""Atomic file writes and URI helpers shared by every step.

Every artifact file is written under a temporary name in the same directory and
renamed into place, so a killed step never leaves a file a rerun would take for
complete. Directory outputs are filled first and their index/manifest JSON is
written last, then checked on read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pcam.errors import DataError

CHUNK = 1 << 20


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def temp_dir_beside(final: Path) -> Path:
    """A fresh hidden directory next to ``final`` (same filesystem, so rename is atomic).

    mkdtemp creates it 0700; artifacts are read by other users (the container's
    non-root user, KFP's launcher), so give it the normal umask-derived mode.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix (Keras refuses files without ``.keras``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if tmp.is_dir():
            raise AssertionError("atomic_path is for files")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temporary name, then rename)."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def read_json(path: str | os.PathLike[str], schema: Any = None) -> Any:
    """Parse a JSON file; with ``schema``, check its shape too (see :func:`check_shape`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing (was the step that writes it interrupted?)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if schema is not None:
        check_shape(data, schema, path)
    return data


_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


def check_shape(data: Any, schema: Any, path: str | os.PathLike[str], key: str = "") -> None:
    """Check that JSON ``data`` has the shape ``schema`` describes; a DataError names the file and the key.

    A schema is a type or tuple of types (``int``, ``(int, float)``), a list holding one
    schema (every item matches it), a dict of keys to schemas (a key ending in ``?`` is
    optional; other keys are allowed), or a dict ``{str: schema}`` (any keys, every
    value matches). An artifact a
    reader cannot use fails here, in one line, instead of as a KeyError deep in the reader.
    """
    where = key or "the top level"
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            raise DataError(f"{path}: {where}: expected an object, got {_describe(data)}")
        if set(schema) == {str}:
            for name, value in data.items():
                check_shape(value, schema[str], path, f"{key}.{name}" if key else str(name))
            return
        for name, sub in schema.items():
            optional = name.endswith("?")
            name = name.removesuffix("?")
            if name not in data:
                if optional:
                    continue
                raise DataError(
                    f"{path}: missing key {(key + '.' if key else '') + name!r} "
                    "(not written by this version of pcam, or edited?)"
                )
            check_shape(data[name], sub, path, f"{key}.{name}" if key else name)
    elif isinstance(schema, list):
        if not isinstance(data, list):
            raise DataError(f"{path}: {where}: expected a list, got {_describe(data)}")
        for i, item in enumerate(data):
            check_shape(item, schema[0], path, f"{key}[{i}]")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        ok = isinstance(data, types) and not (isinstance(data, bool) and bool not in types)
        if not ok:
            wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise DataError(f"{path}: {where}: expected {wanted}, got {_describe(data)}")


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {text[:40]}{'...' if len(text) > 40 else ''}"


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (bounded memory on multi-GB files)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    return file_digest(path, "sha256")


KIND_FILE = ".pcam-kind"
"""Marks a directory pcam wrote, and what it is (``dataset``, ``split``, ``shards``, ...)."""


def _local_inputs(inputs: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    found = []
    for item in inputs:
        if item is None or str(item) == "" or is_remote(str(item)):
            continue
        found.append(local_path(item).resolve())
    return found


def directory_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind pcam recorded in ``path`` (its :data:`KIND_FILE`), or None."""
    try:
        return (Path(path) / KIND_FILE).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeDecodeError):
        return None


def check_output(
    out: str | os.PathLike[str], kind: str, *, inputs: Iterable[str | os.PathLike[str] | None] = (), force: bool = False
) -> Path:
    """Refuse an output path whose replacement would destroy something pcam did not write there.

    A command may replace ``out`` only if it does not exist, is an empty directory, or is a
    directory pcam wrote as the same ``kind`` (its :data:`KIND_FILE`); anything else needs
    ``force``. An output equal to, inside, or holding one of the command's ``inputs`` is
    refused even with ``force``: writing it would destroy the input. Returns the resolved path.
    """
    final = Path(out).expanduser().resolve()
    for source in _local_inputs(inputs):
        if final == source:
            raise DataError(f"{out}: the output is the input {source}; choose another output path")
        if source in final.parents:
            raise DataError(f"{out}: the output lies inside the input {source}; choose a path outside it")
        if final in source.parents:
            raise DataError(
                f"{out}: the output holds the input {source}, which replacing it would delete; "
                "choose another output path"
            )
    if force or not final.exists() and not final.is_symlink():
        return final
    if not final.is_dir():
        raise DataError(f"{out}: exists and is not a directory; remove it or pass --force to replace it")
    found = directory_kind(final)
    if found == kind or not any(final.iterdir()):
        return final
    what = f"a pcam {found} directory" if found else "not a directory pcam wrote"
    raise DataError(
        f"{out}: {what}, refusing to replace it with a {kind}; choose an empty or new path, or pass --force"
    )


def mark_directory(path: str | os.PathLike[str], kind: str) -> None:
    """Record that pcam wrote ``path`` as a ``kind`` (see :func:`check_output`)."""
    (Path(path) / KIND_FILE).write_text(f"{kind}\n")


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    force: bool = False,
) -> Iterator[Path]:
    """Build a ``kind`` directory under a temporary name and swap it into place on success.

    :func:`check_output` decides first whether ``path`` may be replaced (and again just
    before the swap, in case something else wrote there meanwhile).
    """
    final = Path(path)
    check_output(final, kind, inputs=inputs, force=force)
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        mark_directory(tmp, kind)
        check_output(final, kind, inputs=inputs, force=force)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names an object store or web location rather than a local file."""
    return str(uri).startswith(("gs://", "https://", "http://", "s3://"))


def local_path(uri: str | os.PathLike[str]) -> Path:
    """A local path for a ``file://`` URI or a plain path (``~`` expanded); remote URIs are an error here."""
    text = str(uri).removeprefix("file://")
    if is_remote(text):
        raise DataError(f"{text}: expected a local path here, not a remote URI")
    return Path(text).expanduser()
