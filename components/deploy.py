"""Deploy step: serve the new champion as a KServe InferenceService (runs only after a promotion)."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.

from components._common import make_component


def deploy_gate(decision: str, serving_name: str) -> bool:
    """Whether to deploy: promote promoted and an InferenceService name is set.

    kfp's ``dsl.If`` compares parameters, not fields of promote's JSON decision; this
    step turns the decision into the boolean the condition reads.

    Args:
        decision: promote's output (decision.json as a string).
        serving_name: InferenceService name; empty turns deployment off.

    Returns:
        True when the decision says promoted and a name is set.
    """
    from pcam.deploy import should_deploy

    return should_deploy(decision, serving_name)


def deploy(
    decision: str,
    config_yaml: str,
    serving_name: str,
    serving_namespace: str,
    canary_traffic_percent: int,
    gpu: bool,
    timeout_seconds: int,
) -> str:
    """Server-side apply the InferenceService for ``<promote.champion_uri>/serving`` and wait for Ready.

    Args:
        decision: promote's output (decision.json as a string).
        config_yaml: The resolved experiment config (promote.champion_uri).
        serving_name: InferenceService name.
        serving_namespace: Namespace of the InferenceService.
        canary_traffic_percent: Traffic share of the new revision (100 = full rollout).
        gpu: One GPU for the predictor.
        timeout_seconds: How long to wait for Ready.

    Returns:
        The InferenceService's URL.
    """
    from pcam import step

    return step.deploy(
        decision,
        config_yaml,
        serving_name,
        namespace=serving_namespace,
        canary_percent=canary_traffic_percent,
        gpu=gpu,
        timeout=timeout_seconds,
    )


deploy_gate_op = make_component(deploy_gate)
deploy_op = make_component(deploy)
