"""``pcam finetune``: stage 2 of a transfer model (the work is :func:`pcam.train.finetune`)."""

from __future__ import annotations

import argparse

from pcam.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam finetune`` options on ``parser``."""
    from pcam.train import add_common_arguments

    parser.add_argument("--trained", required=True, help="output directory of `pcam train` (model.keras, history.json)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``pcam finetune`` (fine-tune a trained transfer model with top layers unfrozen); returns the exit code."""
    from pcam.train import finetune, summary_line

    cfg = load_config(args.config)
    summary = finetune(
        args.trained, args.shards, args.out, cfg, args.model, args.policy, resume=args.resume, force=args.force
    )
    print(summary_line("fine-tuned", summary))
    return 0
