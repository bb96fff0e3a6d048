"""Promote step: replace the champion model only if this run's best model beats it."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.

from kfp.dsl import Dataset, Input, Markdown, Output

from components._common import make_component


def promote(
    scratch_runs: Input[list[Dataset]],
    transfer_runs: Input[list[Dataset]],
    shards: Input[Dataset],
    config_yaml: str,
    decision: Output[Markdown],
) -> str:
    """Compare the run's best model (promote.metric) with the champion at promote.champion_uri.

    The first run promotes (there is no champion yet). Without a champion location
    nothing is compared and the decision says so. The champion is swapped by
    compare-and-swap (pcam.promote), so overlapping runs cannot overwrite a better one.

    Args:
        scratch_runs: Run directories of the train-only pairs.
        transfer_runs: Run directories of the fine-tuned pairs.
        shards: The shards the candidate was evaluated on (the champion is re-scored on them).
        config_yaml: The resolved experiment config.
        decision: The decision and the numbers behind it, as Markdown.

    Returns:
        The decision as JSON (``decision.json``), or ``{"promoted": false, "reason": ...}``.
    """
    from pcam import step

    return step.promote([r.path for r in [*scratch_runs, *transfer_runs]], shards.path, config_yaml, decision.path)


promote_op = make_component(promote)
