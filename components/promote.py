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
    import json
    import logging
    import tempfile
    from pathlib import Path

    import yaml

    from pcam.config import config_from_dict

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(yaml.safe_load(config_yaml))
    if not cfg.promote.champion_uri:
        result = {"promoted": False, "reason": "no champion location (promote.champion_uri) configured"}
    else:
        from pcam import promote as champion
        from pcam.artifacts import final_model_dir

        run_dirs = [Path(r.path) for r in [*scratch_runs, *transfer_runs]]
        best = champion.best_run(run_dirs, cfg.promote.metric)
        model_dir = final_model_dir(best)
        with tempfile.TemporaryDirectory() as tmp:  # decision.json: returned, not written into an input
            result = champion.promote(
                best / "evaluate",
                model_dir,
                cfg.promote.champion_uri,
                cfg.promote.metric,
                shards_dir=shards.path,
                cfg=cfg,
                out_dir=tmp,
            )
        result = {**result, "candidate": json.loads((best / "pair.json").read_text())}
    lines = ["# Champion decision", ""]
    lines += [f"- **{key}**: {value}" for key, value in result.items()]
    Path(decision.path).write_text("\n".join(lines) + "\n")
    return json.dumps(result, default=str)


promote_op = make_component(promote)
