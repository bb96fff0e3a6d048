"""Checkpoints that outlive a preempted pod: one location per pipeline run and per pair.

The KFP launcher uploads a task's output directory only after the step succeeds, so
checkpoints kept there are lost with a preempted pod and the retry starts at epoch 0.
The pipeline therefore resolves ``train.checkpoint_uri`` to a root that outlives the
pod (by default ``/mnt/pcam/checkpoints`` on the shared ``pcam-data`` volume, or a
gs:// prefix) and the train, fine-tune and evaluate steps append KFP's run id
(``dsl.PIPELINE_JOB_ID_PLACEHOLDER``, the same for every retry of a task in a run)::

    <root>/<run id>/<model>-<policy>-<stage>/epoch-NNNNN/

``<model>-<policy>-<stage>`` is the layout ``pcam.train`` writes under
``train.checkpoint_uri``; :func:`pair_checkpoint_uris` names the same directories.

Lifetime: a retried task (same run id) resumes from them; a new run (new id) never
sees another run's checkpoints. Once a pair's evaluate step has succeeded its
checkpoints are deleted (:func:`remove_pair_checkpoints`): the model artifact is in
the pipeline root by then, and keeping every epoch of every pair of every scheduled
run would fill the volume. A run that fails leaves its checkpoints, so KFP's "retry
run" (same run id) resumes from them; docs/cluster.md shows how to expire those.

No TensorFlow import at module level: the pipeline's CPU steps import this too.
"""

from __future__ import annotations

import dataclasses
import logging

from pcam.config import ExperimentConfig
from pcam.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("train", "finetune")


def for_run(cfg: ExperimentConfig, run_id: str) -> ExperimentConfig:
    """``cfg`` with ``train.checkpoint_uri`` narrowed to this run: ``<checkpoint_uri>/<run_id>``.

    Unchanged when either is empty (no root configured: checkpoints stay in the output
    directory, as ``pcam train`` does on its own).

    Args:
        cfg: The resolved experiment config.
        run_id: KFP's run id (the resolved ``{{$.pipeline_job_uuid}}``).

    Returns:
        The config every checkpointing step of this run uses.

    Raises:
        ConfigError: ``run_id`` is an unresolved placeholder or not one path segment.
    """
    root = cfg.train.checkpoint_uri
    if not root or not run_id:
        return cfg
    if "{{" in run_id or "/" in run_id or run_id in (".", ".."):
        raise ConfigError(f"run_id: {run_id!r} is not a resolved KFP run id; it must be one path segment")
    train = dataclasses.replace(cfg.train, checkpoint_uri=f"{root.rstrip('/')}/{run_id}")
    return dataclasses.replace(cfg, train=train)


def pair_checkpoint_uris(cfg: ExperimentConfig, model_name: str, policy: str) -> list[str]:
    """The checkpoint directories of one pair's stages under ``train.checkpoint_uri`` (may not exist)."""
    root = cfg.train.checkpoint_uri.rstrip("/")
    if not root:
        return []
    return [f"{root}/{model_name}-{policy}-{stage}" for stage in STAGES]


def remove_pair_checkpoints(cfg: ExperimentConfig, model_name: str, policy: str) -> list[str]:
    """Delete one pair's checkpoints (every stage) once its evaluation has succeeded.

    Args:
        cfg: The run's config (after :func:`for_run`).
        model_name: The pair's model.
        policy: The pair's LR policy.

    Returns:
        The directories that existed and were deleted.
    """
    from pcam import storage

    removed = []
    for uri in pair_checkpoint_uris(cfg, model_name, policy):
        if storage.exists(uri):
            storage.delete_tree(uri)
            removed.append(uri)
    for uri in removed:
        log.info("evaluation done: deleted checkpoints %s", uri)
    return removed
