"""The champion store: versioned model folders and one pointer, swapped by compare-and-swap.

Layout at a champion location (a local directory, a shared volume, or a ``gs://``
prefix; all through :mod:`pcam.storage`)::

    champion.json                  the pointer: which version is champion, its score, provenance
    versions/<id>/model.keras
    versions/<id>/metrics.json     the evaluation that crowned it (its model_sha256 names the model)
    versions/<id>/version.json     written last: the folder is complete only with it

A writer uploads a complete new version folder first, then replaces ``champion.json``
only if it is still the generation it read (:func:`pcam.storage.write_if_generation`:
``if_generation_match`` on gs://, an ``fcntl`` lock locally). A reader reads the
pointer and then that version's files: it always finds one complete champion, never a
mix of two and never none. Old versions are deleted only when they have dropped out of
the pointer's ``history`` (the last :data:`KEEP_VERSIONS`), never the current one, and
never another writer's unpublished upload; a reader whose version vanished under it
re-reads the pointer (:func:`fetch`).

A ``champion.json`` without ``version`` is the layout before versioning (files at the
top level): it is read as the champion, and replaced by the first promotion.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pcam import storage
from pcam.artifacts import METRICS_FILE, MODEL_FILE
from pcam.errors import DataError
from pcam.fsutil import file_sha256, write_json

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
VERSIONS_DIR = "versions"
SERVING_DIR = "serving"
VERSION_MARKER = "version.json"
KIND = "pcam-champion"
KEEP_VERSIONS = 3
"""Versions kept after they were replaced (readers of an older pointer still find them)."""


def read_pointer(uri: str) -> tuple[dict[str, Any] | None, Any]:
    """(pointer, generation) of the champion at ``uri``; (None, ABSENT) when there is none."""
    pointer_uri = storage.join(uri, CHAMPION_FILE)
    raw, generation = storage.read_versioned(pointer_uri)
    if raw is None:
        return None, generation
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{pointer_uri}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not (data.get("kind") == KIND or "model_sha256" in data):
        raise DataError(f"{pointer_uri}: not a pcam champion pointer")
    return data, generation


def check_location(uri: str, pointer: dict[str, Any] | None, force: bool = False) -> None:
    """Refuse a champion location that holds something else: a non-empty folder without champion.json.

    Leftovers of our own (``versions/`` from a promotion that never published, the
    local lock file) do not count. ``force`` writes beside whatever is there (nothing
    of it is deleted either way: a promotion only adds ``versions/`` and ``champion.json``).
    """
    if pointer is not None or force:
        return
    foreign = [n for n in storage.list_dir(uri) if n not in (VERSIONS_DIR, CHAMPION_FILE + ".lock")]
    if foreign:
        raise DataError(
            f"{uri}: not empty and not a pcam champion (no {CHAMPION_FILE}; holds {foreign[0]!r}); "
            "choose another --champion, or pass --force to write one beside those files"
        )


def version_uri(uri: str, version: str) -> str:
    """The folder of one champion version under the champion location ``uri``."""
    return storage.join(uri, VERSIONS_DIR, version)


def serving_uri(uri: str, version: str) -> str:
    """The TF Serving folder of a champion version (what KServe's storageUri names)."""
    return storage.join(version_uri(uri, version), SERVING_DIR)


def champion_files(uri: str, pointer: dict[str, Any] | None) -> tuple[str, str]:
    """(model, metrics) URIs of the current champion (top-level files for the pre-versioning layout)."""
    base = version_uri(uri, pointer["version"]) if pointer and pointer.get("version") else uri
    return storage.join(base, MODEL_FILE), storage.join(base, METRICS_FILE)


def legacy_champion(uri: str) -> bool:
    """A pre-versioning champion without a pointer: model.keras / metrics.json at the top level."""
    names = storage.list_dir(uri)
    return MODEL_FILE in names or METRICS_FILE in names


def upload_version(
    uri: str, model_file: Path, metrics_file: Path, info: dict[str, Any], serving_views: tuple[str, ...] | None = None
) -> str:
    """Upload a complete version folder (marker last); returns its id. Nothing points at it yet.

    With ``serving_views`` the version also holds ``serving/1/``: the model as a TF Serving
    SavedModel with those TTA views in its graph (:func:`pcam.export.export_serving`), the
    folder a KServe InferenceService serves (``storageUri``).
    """
    now = dt.datetime.now(dt.timezone.utc)
    version = f"{now:%Y%m%dT%H%M%S}-{str(info.get('model_sha256', ''))[:12]}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="pcam-version-") as tmp:
        shutil.copyfile(model_file, Path(tmp) / MODEL_FILE)  # umask permissions, not the source's
        shutil.copyfile(metrics_file, Path(tmp) / METRICS_FILE)
        if serving_views:
            from pcam.export import export_serving

            export_serving(model_file, Path(tmp) / SERVING_DIR, serving_views, version=1)
        write_json(Path(tmp) / VERSION_MARKER, {**info, "version": version})
        storage.upload_tree(tmp, version_uri(uri, version), marker=VERSION_MARKER)
    return version


def swap_pointer(uri: str, pointer: dict[str, Any], generation: Any) -> bool:
    """Publish ``pointer`` if champion.json is still at ``generation``; False when another writer got there first."""
    data = (json.dumps({**pointer, "kind": KIND}, indent=2, sort_keys=True, default=str) + "\n").encode()
    return storage.write_if_generation(storage.join(uri, CHAMPION_FILE), data, generation)


def discard_version(uri: str, version: str) -> None:
    """Delete a version this writer uploaded but did not publish (it lost the comparison)."""
    storage.delete_tree(version_uri(uri, version))


def collect_garbage(uri: str, dropped: list[str], legacy: bool) -> None:
    """Delete versions that dropped out of the pointer's history, and the pre-versioning top-level files.

    Called only by the writer whose swap published the new pointer, so each dropped
    version is deleted once.
    """
    for version in dropped:
        storage.delete_tree(version_uri(uri, version))
    if legacy:
        for name in (MODEL_FILE, METRICS_FILE):
            storage.delete(storage.join(uri, name))


def fetch(uri: str, dest: str | Path, attempts: int = 5) -> dict[str, Any]:
    """Download the current champion's model.keras and metrics.json into ``dest``; returns its pointer.

    The model is checked against the pointer's sha256. A version deleted between reading
    the pointer and its files (it was replaced and aged out) makes the reader re-read
    the pointer.
    """
    dest = Path(dest)
    for _ in range(attempts):
        pointer, _ = read_pointer(uri)
        if pointer is None:
            raise DataError(f"{storage.join(uri, CHAMPION_FILE)}: no champion yet")
        model_uri, metrics_uri = champion_files(uri, pointer)
        try:
            storage.download_file(model_uri, dest / MODEL_FILE)
            storage.download_file(metrics_uri, dest / METRICS_FILE)
        except DataError as exc:
            if "does not exist" not in str(exc):
                raise
            log.info("champion version gone while reading it (%s); re-reading the pointer", exc)
            continue
        if file_sha256(dest / MODEL_FILE) != pointer.get("model_sha256"):
            raise DataError(f"{model_uri}: sha256 differs from {CHAMPION_FILE}'s model_sha256 (corrupted?)")
        return pointer
    raise DataError(f"{uri}: the champion kept changing while it was read ({attempts} attempts)")
