"""Per-epoch training checkpoints, local or on gs://, through :mod:`pcam.storage`.

A checkpoint is a folder ``<root>/epoch-NNNNN/`` holding ``variables.npz`` (every
model and optimizer variable, keyed by its path; a restore checks names and shapes)
and ``state.json`` (epoch, history, LR-policy state, best metric), written last as the
commit marker: a folder without it is ignored. Locally the folder is built under a
temporary name and renamed; on gs:// the objects are uploaded one by one, each atomic,
``state.json`` last. The previous checkpoint is deleted only once the new one is
complete, so a kill at any moment leaves at least one complete checkpoint (after the first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pcam import storage
from pcam.errors import DataError
from pcam.fsutil import file_sha256

if TYPE_CHECKING:
    from pcam.config import ExperimentConfig

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


def _variable_keys(variables: list[Any]) -> list[str]:
    """Each variable's path, stable across processes.

    Keras makes the first segment unique per process (``adam`` then ``adam_1``,
    ``seed_generator_3``...), so a second model built in one process, or a resume in a
    process that built other models first, would not find its own names. The key drops
    that numeric suffix and counts repeats in the (deterministic) variable order instead.
    """
    seen: dict[str, int] = {}
    keys = []
    for variable in variables:
        head, sep, rest = variable.path.partition("/")
        base = re.sub(r"_\d+$", "", head) + sep + rest
        count = seen.get(base, 0)
        seen[base] = count + 1
        keys.append(base if count == 0 else f"{base}#{count}")
    return keys


def _ensure_optimizer_built(model: Any) -> None:
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def save_checkpoint(root: str, model: Any, state: dict[str, Any]) -> str:
    """Write epoch ``state['epoch']``'s checkpoint; drop older ones once it is complete."""
    epoch = int(state["epoch"])
    name = f"{CHECKPOINT_PREFIX}{epoch:05d}"
    final = storage.join(root, name)
    _ensure_optimizer_built(model)
    # Keyed by each variable's path, so a restore matches variables by name and a changed
    # model is named, not silently misassigned (see _variable_keys).
    variables = _variables(model)
    arrays = {key: np.asarray(v.numpy()) for key, v in zip(_variable_keys(variables), variables, strict=True)}
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
    with np.load(io.BytesIO(storage.read_bytes(storage.join(path, VARIABLES_FILE)))) as npz:
        saved = {name: npz[name] for name in npz.files}
    _ensure_optimizer_built(model)
    model_variables = _variables(model)
    variables = dict(zip(_variable_keys(model_variables), model_variables, strict=True))
    _check_paths(path, saved, variables)
    for name, variable in variables.items():
        variable.assign(saved[name])
    log.info("resuming from checkpoint %s (epoch %d done)", path, epoch)
    return state


def _check_paths(path: str, saved: dict[str, np.ndarray], variables: dict[str, Any]) -> None:
    """Refuse a checkpoint whose variables are not exactly this model's, by path and shape."""
    missing, extra = sorted(set(variables) - set(saved)), sorted(set(saved) - set(variables))
    wrong = [name for name, v in variables.items() if name in saved and tuple(v.shape) != saved[name].shape]
    if missing or extra or wrong:
        raise DataError(
            f"{path}: checkpoint does not match this model (missing {missing[:3]}, unexpected {extra[:3]}, "
            f"other shapes {wrong[:3]}); delete it or pass --no-resume"
        )


# ---------------------------------------------------------------- which run made a checkpoint


def run_identity(
    cfg: ExperimentConfig,
    model_name: str,
    policy: str,
    stage: str,
    shards_dir: str | os.PathLike[str],
    start_model: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """What a checkpoint must have been made by for a rerun to resume from it.

    One digest per part, so a refusal can say which part differs: the model and its
    resolved hyper-parameters, the policy, the stage, the seed, the training and
    augmentation settings (not where checkpoints live), the data (index.json, which
    holds every shard's sha256), and for fine-tuning the stage-1 model file.
    """
    train_cfg = {
        k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in ("checkpoint_uri", "models", "policies")
    }
    settings = {
        "model": dataclasses.asdict(cfg.model(model_name)),
        "train": train_cfg,
        "augment": dataclasses.asdict(cfg.augment),
    }
    parts = {
        "model": model_name,
        "policy": policy,
        "stage": stage,
        "seed": str(cfg.seed),
        "config": _digest(settings),
        "data": file_sha256(_existing(Path(shards_dir) / "index.json")),
    }
    if start_model is not None:
        parts["start_model"] = file_sha256(start_model)
    return parts


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing (is {path.parent} a shards directory written by `pcam shard`?)")
    return path


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def check_identity(ckpt_root: str, found: dict[str, str] | None, expected: dict[str, str]) -> None:
    """Refuse to resume from a checkpoint another run made; name what differs."""
    if found == expected:
        return
    what = (
        f"{', '.join(sorted(k for k in expected if found.get(k) != expected[k]))} differ"
        if found
        else "it records no settings: an older pcam"
    )
    raise DataError(
        f"{ckpt_root}: checkpoint made by another run ({what}); "
        "pass --no-resume to train from scratch, or use a fresh --out"
    )


def check_resumable(ckpt_root: str, identity: dict[str, str]) -> None:
    """Before any work (and before TensorFlow loads, for local checkpoints): would a resume be refused?"""
    checkpoints = complete_checkpoints(ckpt_root)
    if checkpoints:
        state = read_state(checkpoints[-1][1])
        check_identity(ckpt_root, state.get("identity"), identity)
