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
    import yaml

    from pcam.config import POLICY_NAMES, TRANSFER_MODELS, config_from_dict
    from pcam.errors import ConfigError

    cfg = config_from_dict(yaml.safe_load(config_yaml))
    if not grid:
        raise ConfigError("grid: needs at least one {model, policy} pair")
    chosen = []
    for i, pair in enumerate(grid):
        if not isinstance(pair, dict) or set(pair) != {"model", "policy"}:
            raise ConfigError(f"grid[{i}]: expected a mapping with keys model and policy, got {pair!r}")
        model_cfg = cfg.model(pair["model"])  # ConfigError naming the model when unknown
        if pair["policy"] not in POLICY_NAMES:
            raise ConfigError(
                f"grid[{i}].policy: unknown policy {pair['policy']!r}; expected one of {', '.join(POLICY_NAMES)}"
            )
        finetuned = pair["model"] in TRANSFER_MODELS and model_cfg.finetune_epochs > 0
        if finetuned == transfer:
            chosen.append({"model": pair["model"], "policy": pair["policy"], "config_yaml": config_yaml})
    return chosen


select_pairs_op = make_component(select_pairs)
