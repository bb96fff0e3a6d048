"""The ``pcam`` command line.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int | None``. Modules are imported only when their command runs, so
``pcam --help`` answers without loading TensorFlow.

Any :class:`pcam.errors.PcamError` becomes one line on stderr and exit code 2.
An environment fault (disk full, quota, a TensorFlow I/O or corrupt-record error)
becomes one line naming the output or file too, exit code 2, instead of a traceback.
Anything else is a bug: one line saying so, exit code 1, and the traceback only with ``-v``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import typing

from pcam import __version__
from pcam.errors import PcamError

# (command, module, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("synth", "pcam.synth", "write synthetic PCam files in the official HDF5 format"),
    ("download", "pcam.download", "download the official PCam files from Zenodo, verifying md5"),
    ("ingest", "pcam.ingest", "read PCam in any format into a validated canonical dataset"),
    ("split", "pcam.split", "split a dataset: stratified random (grouped by slide) or official"),
    ("shard", "pcam.shard", "augment and write TFRecord shards with index.json"),
    ("lr-find", "pcam.lr_find", "sweep the learning rate exponentially and plot loss vs LR"),
    ("train", "pcam.train", "train one model under one learning-rate policy"),
    ("finetune", "pcam.train_finetune", "fine-tune a trained transfer model with top layers unfrozen"),
    ("evaluate", "pcam.evaluate", "evaluate a model with test-time augmentation"),
    ("report", "pcam.report", "build the comparison report from evaluations"),
    ("promote", "pcam.promote", "replace the champion model only if the candidate wins"),
    ("export", "pcam.export", "export a model as a TF Serving SavedModel (image bytes in, TTA inside)"),
    ("serve", "pcam.serve", "serve an exported model over HTTP (KServe v1 and v2 protocols)"),
    ("deploy", "pcam.deploy", "create or update the KServe InferenceService serving the champion"),
    ("run", "pcam.study", "run the whole study in-process: ingest to report"),
    ("doctor", "pcam.doctor", "check a cluster before a submit: context, RBAC, PVC, GPU nodes, KFP, pipeline root"),
    ("predict", "pcam.predict", "apply a model or the champion to patches and whole-slide images"),
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level ``pcam`` parser: global flags and the list of subcommands."""
    parser = argparse.ArgumentParser(
        prog="pcam",
        description="Train, compare and retrain metastatic-cancer classifiers on PatchCamelyon.",
        epilog="Run `pcam COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pcam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, _module, help_text in COMMANDS:
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``pcam train: error: ...``) and exit code 2, like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        """Print the usage error as one ``pcam <cmd>: error:`` line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _command_parser(name: str, module_name: str, help_text: str) -> tuple[argparse.ArgumentParser, typing.Any]:
    module = importlib.import_module(module_name)
    parser = OneLineParser(prog=f"pcam {name}", description=help_text)
    module.add_arguments(parser)
    return parser, module


WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
"""Errors that mean "the output could not be written" (disk full, file size limit, quota, read-only)."""
TF_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "[Op:")


def _tensorflow_error(exc: BaseException) -> bool:
    """Is ``exc`` a TensorFlow runtime error? Checked without importing TensorFlow."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return errors is not None and isinstance(exc, errors.OpError)


def environment_error(exc: BaseException, args: argparse.Namespace | None) -> str:
    """One line for an OSError or TensorFlow error escaping a command: what failed, naming the path.

    A write that fails for lack of space names the command's ``--out`` (the temp file
    the step was writing is gone by now). TensorFlow's corrupt-record error names no
    file, so with a ``--shards`` input the shards are re-checked against index.json
    (sha256), which names the damaged shard.
    """
    out = getattr(args, "out", None)
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        where = exc.filename
    else:
        # Graph-mode errors wrap the message in a node traceback; keep the message line.
        lines = [
            line.strip()
            for line in str(getattr(exc, "message", exc)).splitlines()
            if line.strip() and not line.strip().startswith(TF_NOISE)
        ]
        text = lines[-1] if lines else type(exc).__name__
        where = None
        if type(exc).__name__ == "DataLossError" and args is not None and getattr(args, "shards", None):
            from pcam.shard import load_index

            try:
                load_index(args.shards, verify=True)
            except PcamError as damage:
                return str(damage)
            text = f"{args.shards}: corrupt TFRecord data ({text})"
    if out and any(os.strerror(code) in text for code in WRITE_ERRNOS):
        return f"cannot write {out}: {text}" + (f" ({where})" if where else "")
    return f"{where}: {text}" if where else text


def main(argv: list[str] | None = None) -> int:
    """Run ``pcam`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code, 2 for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    known = {name: (module, text) for name, module, text in COMMANDS}
    # Split global flags from the subcommand so each module owns its own parser.
    position = next((i for i, a in enumerate(argv) if a in known), None)
    if position is None:
        top.parse_args(argv)  # handles --help / --version / errors
        top.print_help()
        return 2
    args_top = top.parse_args(argv[:position])
    logging.basicConfig(
        level=logging.DEBUG if args_top.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # TensorFlow's C++ start-up lines (absl, cpu_feature_guard) would precede every error
    # line of a command that loads it; -v shows them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args_top.verbose else "3")
    name = argv[position]
    module_name, help_text = known[name]
    args = None
    try:
        parser, module = _command_parser(name, module_name, help_text)
        args = parser.parse_args(argv[position + 1 :])
        result = module.run(args)
    except PcamError as exc:
        print(f"pcam {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pcam {name}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"pcam {name}: error: {environment_error(exc, args)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _tensorflow_error(exc):
            print(f"pcam {name}: error: {environment_error(exc, args)}", file=sys.stderr)
            return 2
        if args_top.verbose:
            raise
        # Every input error is a PcamError with its own message; reaching here is a bug.
        # Still one line for the user, and the way to the traceback.
        text = " ".join(str(exc).split())[:300]
        print(
            f"pcam {name}: internal error: {type(exc).__name__}: {text} (a bug in pcam; "
            f"rerun as `pcam -v {name} ...` for the traceback)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
