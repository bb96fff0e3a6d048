"""Pick the (model, policy) pairs of one branch of the grid."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from components._common import make_component


def select_pairs(grid: list, config_yaml: str, transfer: bool) -> list:
    """Validate the grid and return the pairs that do (or do not) get fine-tuned.

    The pipeline runs two ``ParallelFor`` loops over the grid, one for models that are
    trained only (logreg, cnn) and one for transfer models that are fine-tuned
    afterwards. Splitting the grid here, instead of branching with ``dsl.If`` inside
    one loop, is what lets both kfp.local and a cluster collect every evaluation:
    kfp 2.17 cannot ``dsl.Collected`` an artifact produced under a condition, and
    kfp.local cannot resolve a ``dsl.OneOf`` of artifacts.

    Each pair carries the resolved config along (``config_yaml``): kfp.local 2.17
    replaces every task-output parameter that enters a ``ParallelFor`` body with the
    loop item, so the loop's steps read the config from the item instead.

    Args:
        grid: List of ``{"model": ..., "policy": ...}`` mappings.
        config_yaml: The resolved config (decides which transfer models are fine-tuned).
        transfer: True for the fine-tuned branch, False for the train-only branch.

    Returns:
        The pairs of this branch in grid order, as ``{"model", "policy", "config_yaml"}``.
    """
    from pcam import step

    return step.select_pairs(grid, config_yaml, transfer)


select_pairs_op = make_component(select_pairs)
