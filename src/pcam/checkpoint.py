"""Per-epoch training checkpoints, local or on gs://, through :mod:`pcam.storage`.

A checkpoint is a folder ``<root>/epoch-NNNNN/`` holding ``variables.npz`` (every
model and optimizer variable, in order) and ``state.json`` (epoch, history, LR-policy
state, best metric), written last as the commit marker: a folder without it is
ignored. Locally the folder is built under a temporary name and renamed; on gs:// the
objects are uploaded one by one, each atomic, ``state.json`` last. The previous
checkpoint is deleted only once the new one is complete, so a kill at any moment
leaves at least one complete checkpoint (after the first).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pcam import storage
from pcam.errors import DataError

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "epoch-"
STATE_FILE = "state.json"
VARIABLES_FILE = "variables.npz"


def checkpoint_root(out_dir: str | os.PathLike[str], cfg: Any, model_name: str, policy: str, stage: str) -> str:
    """``<out>/checkpoint`` or ``<train.checkpoint_uri>/<model>-<policy>-<stage>``."""
    if cfg.train.checkpoint_uri:
        return storage.join(cfg.train.checkpoint_uri, f"{model_name}-{policy}-{stage}")
    return str(Path(out_dir) / "checkpoint")


def complete_checkpoints(root: str) -> list[tuple[int, str]]:
    """(epoch, folder) of every committed checkpoint, oldest first; temp and half-written folders skipped."""
    files = set(storage.walk(root))
    found = []
    for name in {f.split("/", 1)[0] for f in files}:
        if not name.startswith(CHECKPOINT_PREFIX):
            continue  # ".epoch-00003.*.tmp" and other leftovers
        try:
            epoch = int(name[len(CHECKPOINT_PREFIX) :])
        except ValueError:
            continue
        if f"{name}/{STATE_FILE}" in files and f"{name}/{VARIABLES_FILE}" in files:
            found.append((epoch, storage.join(root, name)))
    return sorted(found)


def _variables(model: Any) -> list[Any]:
    """Every variable that carries training state: model (incl. seed generators) then optimizer."""
    return list(model.variables) + list(model.optimizer.variables)


def _ensure_optimizer_built(model: Any) -> None:
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def save_checkpoint(root: str, model: Any, state: dict[str, Any]) -> str:
    """Write epoch ``state['epoch']``'s checkpoint; drop older ones once it is complete."""
    epoch = int(state["epoch"])
    name = f"{CHECKPOINT_PREFIX}{epoch:05d}"
    final = storage.join(root, name)
    _ensure_optimizer_built(model)
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(_variables(model))}
    state = {**state, "variable_paths": [v.path for v in _variables(model)]}
    with tempfile.TemporaryDirectory(prefix="pcam-ckpt-") as scratch:
        # numpy's stub types **kwds like its allow_pickle flag (bool); the arrays are what savez stores
        np.savez(Path(scratch) / VARIABLES_FILE, **arrays)  # type: ignore[arg-type]
        (Path(scratch) / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
        if storage.is_gcs(root):
            # A rewrite of the same epoch (a rerun after a kill during its upload):
            # remove the marker first so the folder is never "complete" with mixed files.
            storage.delete(storage.join(final, STATE_FILE))
        storage.upload_tree(scratch, final, marker=STATE_FILE)
    # Only now that this one is complete: drop older checkpoints and the leftovers of
    # writes killed half-way (".epoch-N.*.tmp" dirs, epoch dirs without state.json).
    for entry in storage.list_dir(root):
        if entry != name and entry.lstrip(".").startswith(CHECKPOINT_PREFIX):
            storage.delete_tree(storage.join(root, entry))
    return final


def read_state(path: str) -> dict[str, Any]:
    """``state.json`` of one checkpoint folder (local or gs://; no TensorFlow needed)."""
    state_uri = storage.join(path, STATE_FILE)
    try:
        state = json.loads(storage.read_bytes(state_uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{state_uri}: not valid JSON ({exc})") from None
    if not isinstance(state, dict):
        raise DataError(f"{state_uri}: not a checkpoint state (expected a JSON object)")
    return state


def load_checkpoint(root: str, model: Any) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint into ``model``; its state, or None if there is none."""
    checkpoints = complete_checkpoints(root)
    if not checkpoints:
        return None
    epoch, path = checkpoints[-1]
    state = read_state(path)
    arrays = np.load(io.BytesIO(storage.read_bytes(storage.join(path, VARIABLES_FILE))))
    values = [arrays[f"v{i:05d}"] for i in range(len(arrays.files))]
    _ensure_optimizer_built(model)
    variables = _variables(model)
    shapes_ok = len(values) == len(variables) and all(
        tuple(v.shape) == a.shape for v, a in zip(variables, values, strict=False)
    )
    if not shapes_ok:
        raise DataError(
            f"{path}: checkpoint does not match this model ({len(values)} saved variables, "
            f"{len(variables)} in the model); delete it or pass --no-resume"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    log.info("resuming from checkpoint %s (epoch %d done)", path, epoch)
    return state
