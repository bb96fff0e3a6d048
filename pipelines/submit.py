r"""Submit a compiled pipeline to a KFP server: one run, or a recurring retraining run.

Either package works: ``pcam_training.yaml`` or ``pcam_inference.yaml`` (``make submit
PIPELINE=inference PARAMS='source_uri=gs://bucket/slides'``); parameters are checked
against the package given.

    python -m pipelines.submit run --host URL --experiment NAME --package YAML [--param k=v ...]
    python -m pipelines.submit schedule --host URL --experiment NAME --package YAML --cron '0 0 3 * * 0'

Parameters are checked against the package's parameter list and converted to the
types it declares (``--param seed=7``, ``--param 'grid=[{"model": "cnn", "policy": "onecycle"}]'``),
so a typo fails here instead of in the cluster. Runs use the ``pcam.cluster`` service
account. The same calls with the raw kfp v2 CLI (``kfp run submit`` was v1)::

    kfp --endpoint URL run create --experiment-name NAME --run-name RUN \
        --package-file pipelines/compiled/pcam_training.yaml seed=7
    kfp --endpoint URL recurring-run create --experiment-name NAME --job-name JOB \
        --cron-expression '0 0 3 * * 0' --max-concurrency 1 --no-catchup \
        --pipeline-package-path pipelines/compiled/pcam_training.yaml seed=7
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pcam import cluster
from pcam.config import load_config
from pcam.errors import ConfigError

EPILOG = __doc__[__doc__.index("The same calls") :]


def package_parameters(package: str | Path) -> dict[str, str]:
    """``{name: parameterType}`` of the compiled pipeline's inputs."""
    try:
        spec = next(yaml.safe_load_all(Path(package).read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{package}: pipeline package not found (run `make compile`)") from None
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: info["parameterType"] for name, info in params.items()}


def parse_params(pairs: list[str], types: dict[str, str]) -> dict[str, Any]:
    """``["k=v", ...]`` into typed pipeline arguments, rejecting unknown names."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param {pair!r}: expected NAME=VALUE")
        kind = types.get(name)
        if kind is None:
            raise ConfigError(f"--param {name!r}: not a pipeline parameter; known: {', '.join(sorted(types))}")
        try:
            if kind == "STRING":
                value: Any = raw
            elif kind == "NUMBER_INTEGER":
                value = int(raw)
            elif kind == "NUMBER_DOUBLE":
                value = float(raw)
            elif kind == "BOOLEAN":
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                value = raw.lower() == "true"
            else:  # LIST, STRUCT
                value = json.loads(raw)
        except ValueError:
            raise ConfigError(f"--param {name!r}: {raw!r} is not a valid {kind}") from None
        out[name] = value
    return out


def required_parameters(package: str | Path) -> list[str]:
    """Inputs of the compiled pipeline without a default (e.g. the inference pipeline's source_uri)."""
    spec = next(yaml.safe_load_all(Path(package).read_text()))
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return sorted(name for name, info in params.items() if "defaultValue" not in info and not info.get("isOptional"))


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    types = package_parameters(args.package)
    arguments = parse_params(args.param, types)
    missing = [name for name in required_parameters(args.package) if name not in arguments]
    if missing:
        raise ConfigError(f"{args.package}: needs --param {'=... --param '.join(missing)}=...")
    if args.config and "config_yaml" not in types:
        raise ConfigError(f"--config: {args.package} takes no experiment config (it has no config_yaml parameter)")
    if args.config:  # validated here, sent as the one-line YAML the pipeline expects
        from pipelines.pcam_training import config_param

        arguments["config_yaml"] = config_param(load_config(args.config))
    return arguments


def _client(args: argparse.Namespace):
    import kfp

    return kfp.Client(host=args.host, namespace=args.namespace)


def submit_run(args: argparse.Namespace) -> str:
    """Create one run (``kfp run create``); returns the run id."""
    arguments = _arguments(args)
    result = _client(args).create_run_from_pipeline_package(
        str(args.package),
        arguments=arguments,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
    )
    return result.run_id


def schedule_run(args: argparse.Namespace) -> str:
    """Create a recurring run (``kfp recurring-run create``); returns its id.

    One run at a time and no catch-up: a retraining that fell behind (cluster down
    for a week) runs once, not once per missed slot. Caching is off unless --cache:
    a scheduled retrain must re-read the source, whose URI stays the same while its
    content changes, and cached steps are keyed on the URI.
    """
    arguments = _arguments(args)
    client = _client(args)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    recurring = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=args.job_name,
        description="pcam scheduled retraining",
        cron_expression=args.cron,
        max_concurrency=1,
        no_catchup=True,
        params=arguments,
        pipeline_package_path=str(args.package),
        pipeline_root=args.pipeline_root,
        enable_caching=True if args.cache else False,
        service_account=args.service_account,
    )
    return recurring.recurring_run_id


def build_parser() -> argparse.ArgumentParser:
    """The ``run`` and ``schedule`` subcommands and their options."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.submit",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "create one run"), ("schedule", "create a recurring retraining run")):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        p.add_argument("--experiment", default="pcam", help="experiment name (created if missing)")
        p.add_argument("--package", required=True, help="compiled pipeline YAML (make compile)")
        p.add_argument(
            "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter (repeatable)"
        )
        p.add_argument("--config", help="experiment YAML sent as the config_yaml parameter")
        p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user only)")
        p.add_argument("--service-account", default=cluster.SERVICE_ACCOUNT)
        p.add_argument("--pipeline-root", default=None, help="artifact root for this run")
        if name == "run":
            p.add_argument("--run-name", default=None)
        else:
            p.add_argument(
                "--cron", required=True, help="six-field cron (seconds first), e.g. '0 0 3 * * 0' = Sundays 03:00"
            )
            p.add_argument("--job-name", default="pcam-retraining")
            p.add_argument("--cache", action="store_true", help="allow cached steps in scheduled runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.submit``: create the run or recurring run; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            print(f"run {submit_run(args)}")
        else:
            print(f"recurring run {schedule_run(args)}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
