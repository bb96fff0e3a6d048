"""Replace the champion model only when a candidate beats it on the same test data.

The champion location (a local directory, or a ``gs://`` prefix through
``tf.io.gfile``) holds ``model.keras``, its ``metrics.json`` and ``champion.json``
(provenance: when, from which run, on which data, with what score).

Scores are compared on the candidate's test data. When ``shards_dir`` and ``cfg`` are
given, the champion model is re-evaluated on those shards instead of trusting its
stored number: the test data may have changed since it was crowned (a retraining
pipeline usually runs on fresher data), and a score on other data is no comparison.
Only a strictly better candidate wins; a tie keeps the champion (no churn for
nothing). With no champion yet, the candidate is promoted.

Replacement is atomic. Locally: the new champion is assembled in a temporary
directory beside the champion's, then swapped in with two renames (the old one
renamed aside first and removed after). On object stores, which have no directory
rename, ``champion.json`` is removed first, ``model.keras`` and ``metrics.json``
written next and ``champion.json`` last: a location without it is mid-update, and its
``model_sha256`` lets a reader verify the model it finds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcam.errors import ConfigError, DataError
from pcam.fsutil import file_sha256, read_json, write_json
from pcam.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CHAMPION_FILE = "champion.json"


# ---------------------------------------------------------------- locations

def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()


def _join(uri: str, name: str) -> str:
    return str(_local(uri) / name) if _is_local(uri) else uri.rstrip("/") + "/" + name


def _exists(uri: str) -> bool:
    if _is_local(uri):
        return _local(uri).exists()
    import tensorflow as tf

    return bool(tf.io.gfile.exists(uri))


def _read_text(uri: str) -> str:
    if _is_local(uri):
        return _local(uri).read_text()
    import tensorflow as tf

    with tf.io.gfile.GFile(uri, "r") as handle:
        return handle.read()


def _read_json_uri(uri: str) -> Any:
    try:
        return json.loads(_read_text(uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri}: not valid JSON ({exc})") from None


# ---------------------------------------------------------------- scores

def parse_metric(metric: str) -> tuple[str, str]:
    """``auc`` → (``tta``, ``auc``); ``single.auc`` → (``single``, ``auc``)."""
    mode, _, name = metric.rpartition(".")
    mode = mode or "tta"
    if mode not in ("tta", "single") or name not in METRIC_NAMES:
        raise ConfigError(f"promote metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}, "
                          "optionally prefixed by 'single.' for the single-view score")
    return mode, name


def score(metrics: Any, metric: str, where: str) -> float | None:
    """The metric from a metrics.json mapping; None when undefined (null/NaN), DataError when malformed."""
    mode, name = parse_metric(metric)
    section = metrics.get(mode) if isinstance(metrics, dict) else None
    if not isinstance(section, dict) or name not in section:
        raise DataError(f"{where}: no {mode}.{name} score (is this an evaluate metrics.json?)")
    value = section[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {mode}.{name} is {value!r}, not a number")
    return None if math.isnan(value) else float(value)


def best_run(run_dirs: Sequence[str | os.PathLike[str]], metric: str = "auc") -> Path:
    """The evaluated run directory with the highest ``metric`` (the first among equals).

    Runs without ``evaluate/metrics.json`` or with an undefined score are skipped.
    """
    parse_metric(metric)
    best: tuple[float, Path] | None = None
    for run_dir in map(Path, run_dirs):
        path = run_dir / "evaluate" / METRICS_FILE
        if not path.exists():
            log.warning("%s: not evaluated, skipped", run_dir)
            continue
        value = score(read_json(path), metric, str(path))
        if value is not None and (best is None or value > best[0]):
            best = (value, run_dir)
    if best is None:
        raise DataError(f"no evaluated run with a defined {metric} among: {', '.join(map(str, run_dirs))}")
    return best[1]


def final_model_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The fine-tuned model when there is one, else the stage-1 model."""
    run_dir = Path(run_dir)
    finetune = run_dir / "finetune"
    return finetune if (finetune / MODEL_FILE).exists() else run_dir / "train"


# ---------------------------------------------------------------- champion

def _champion_score(champion_uri: str, metric: str, shards_dir: Any, cfg: Any,
                    candidate: dict[str, Any]) -> dict[str, Any]:
    """Score the champion: re-evaluated on ``shards_dir`` when possible, else its stored metrics."""
    model_uri, metrics_uri = _join(champion_uri, MODEL_FILE), _join(champion_uri, METRICS_FILE)
    has_model, has_metrics = _exists(model_uri), _exists(metrics_uri)
    if not has_model and not has_metrics:
        return {"exists": False}
    if shards_dir is not None and cfg is not None:
        if not has_model:
            raise DataError(f"{model_uri}: champion model missing, cannot re-evaluate it on {shards_dir}")
        from pcam import evaluate

        with tempfile.TemporaryDirectory(prefix="pcam-champion-") as tmp:
            local_model = Path(tmp) / "model"
            local_model.mkdir()
            if _is_local(champion_uri):
                shutil.copy2(_local(model_uri), local_model / MODEL_FILE)
            else:
                import tensorflow as tf

                tf.io.gfile.copy(model_uri, str(local_model / MODEL_FILE), overwrite=True)
            fresh = evaluate.evaluate(local_model, shards_dir, Path(tmp) / "eval", cfg,
                                      split=candidate.get("split"), progress=False)
        fp_c, fp_champ = candidate.get("data_fingerprint"), fresh.get("data_fingerprint")
        if fp_c and fp_champ and fp_c != fp_champ:
            raise DataError(f"the candidate's metrics.json was computed on other data than {shards_dir} "
                            f"({candidate.get('split')} split); re-evaluate the candidate on these shards")
        return {"exists": True, "score": score(fresh, metric, f"re-evaluation of {model_uri}"),
                "source": f"re-evaluated on {shards_dir}", "same_test_data": True}
    if not has_metrics:
        raise DataError(f"{metrics_uri}: missing; pass shards_dir and cfg to re-evaluate the champion model")
    stored = _read_json_uri(metrics_uri)
    value = score(stored, metric, metrics_uri)
    fp_c, fp_s = candidate.get("data_fingerprint"), stored.get("data_fingerprint")
    same = None if not (fp_c and fp_s) else fp_c == fp_s
    if same is False:
        log.warning("champion's stored %s is from other test data than the candidate's", metric)
    return {"exists": True, "score": value, "source": f"stored {metrics_uri}", "same_test_data": same}


def _replace_local(champion: Path, files: dict[str, Path], provenance: dict[str, Any]) -> None:
    champion = champion.resolve()
    champion.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{champion.name}.new-", dir=champion.parent))
    try:
        for name, src in files.items():
            shutil.copyfile(src, staging / name)  # umask permissions, not the source's
        write_json(staging / CHAMPION_FILE, provenance)
        os.chmod(staging, 0o755)
        if champion.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{champion.name}.old-", dir=champion.parent))
            old.rmdir()
            os.replace(champion, old)
            try:
                os.replace(staging, champion)
            except OSError:
                os.replace(old, champion)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, champion)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_remote(champion_uri: str, files: dict[str, Path], provenance: dict[str, Any]) -> None:
    """Object-store replacement: champion.json removed first and written last.

    A champion location without champion.json is mid-update. Each object is removed
    before it is written: object stores replace whole objects anyway, and some
    filesystems behind tf.io.gfile (TensorFlow's ram://) append on overwrite.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(champion_uri)
    marker = _join(champion_uri, CHAMPION_FILE)
    for name, src in [(CHAMPION_FILE, None), *files.items()]:
        target = _join(champion_uri, name)
        if tf.io.gfile.exists(target):
            tf.io.gfile.remove(target)
        if src is not None:
            tf.io.gfile.copy(str(src), target)
    with tf.io.gfile.GFile(marker, "w") as handle:
        handle.write(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")


def promote(
    candidate_eval_dir: str | os.PathLike[str],
    candidate_model_dir: str | os.PathLike[str],
    champion_uri: str,
    metric: str = "auc",
    *,
    shards_dir: str | os.PathLike[str] | None = None,
    cfg: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Promote the candidate if it strictly beats the champion on ``metric``; returns the decision.

    ``metric`` names a TTA score (``auc``, ``f1``, ...; ``single.auc`` for single view).
    ``decision.json`` goes to ``out_dir`` (default: ``<candidate_eval_dir>/../promote``).
    """
    if not champion_uri:
        raise ConfigError("promote.champion_uri is empty: say where the champion model lives")
    champion_uri = str(champion_uri)
    parse_metric(metric)
    eval_dir, model_dir = Path(candidate_eval_dir), Path(candidate_model_dir)
    candidate_metrics = read_json(eval_dir / METRICS_FILE)
    candidate_score = score(candidate_metrics, metric, str(eval_dir / METRICS_FILE))
    model_file = model_dir / MODEL_FILE
    if not model_file.is_file():
        raise DataError(f"{model_file}: candidate model file missing")
    champ = _champion_score(champion_uri, metric, shards_dir, cfg, candidate_metrics)
    champion_score = champ.get("score")

    if candidate_score is None:
        promoted, reason = False, f"candidate's {metric} is undefined (one-class test data?)"
    elif not champ["exists"]:
        promoted, reason = True, "no champion yet: the first evaluated candidate becomes champion"
    elif champion_score is None:
        promoted, reason = True, f"champion's {metric} is undefined ({champ['source']})"
    elif candidate_score > champion_score:
        promoted, reason = True, f"candidate {metric} {candidate_score:.4f} > champion {champion_score:.4f}"
    else:
        relation = "=" if candidate_score == champion_score else "<"
        promoted, reason = False, (f"candidate {metric} {candidate_score:.4f} {relation} champion "
                                   f"{champion_score:.4f}: the champion stays (only a strictly better one wins)")
    if champ.get("source"):
        reason += f"; champion score {champ['source']}"

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if promoted:
        previous = None
        if champ["exists"] and _exists(_join(champion_uri, CHAMPION_FILE)):
            try:
                previous = _read_json_uri(_join(champion_uri, CHAMPION_FILE))
            except DataError as exc:
                log.warning("previous champion.json unreadable, not kept in the history: %s", exc)
        provenance = {
            "promoted_at": now,
            "metric": metric,
            "score": candidate_score,
            "model": candidate_metrics.get("model"),
            "policy": candidate_metrics.get("policy"),
            "split": candidate_metrics.get("split"),
            "n": candidate_metrics.get("n"),
            "data_fingerprint": candidate_metrics.get("data_fingerprint"),
            "config_digest": candidate_metrics.get("config_digest"),
            "model_sha256": file_sha256(model_file),
            "candidate_eval_dir": str(eval_dir),
            "candidate_model_dir": str(model_dir),
            "replaced": None if previous is None else {k: previous.get(k) for k in
                                                       ("promoted_at", "score", "model", "policy", "model_sha256")},
            "replaced_score": champion_score,
        }
        files = {MODEL_FILE: model_file, METRICS_FILE: eval_dir / METRICS_FILE}
        if _is_local(champion_uri):
            _replace_local(_local(champion_uri), files, provenance)
        else:
            _replace_remote(champion_uri, files, provenance)
    decision = {
        "promoted": promoted,
        "reason": reason,
        "metric": metric,
        "candidate_score": candidate_score,
        "champion_score": champion_score,
        "champion_uri": champion_uri,
        "champion_score_source": champ.get("source"),
        "same_test_data": champ.get("same_test_data"),
        "candidate_eval_dir": str(eval_dir),
        "candidate_model_dir": str(model_dir),
        "decided_at": now,
    }
    out = Path(out_dir) if out_dir is not None else eval_dir.parent / "promote"
    write_json(out / "decision.json", decision)
    log.info("%s: %s", "promoted" if promoted else "kept champion", reason)
    return decision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--eval", help="candidate's evaluate directory (metrics.json)")
    which.add_argument("--runs", nargs="+", help="run directories: promote the best evaluated one")
    parser.add_argument("--model", help="candidate's model directory (model.keras); needed with --eval")
    parser.add_argument("--champion", help="champion location, local dir or gs:// (default: promote.champion_uri)")
    parser.add_argument("--metric", help="metric to compare (default: promote.metric, else auc)")
    parser.add_argument("--shards", help="re-evaluate the champion on these shards (needs --config)")
    parser.add_argument("--config", help="experiment YAML")
    parser.add_argument("--out", help="where decision.json goes (default: beside the evaluate directory)")


def run(args: argparse.Namespace) -> int:
    from pcam.config import load_config

    cfg = load_config(args.config) if args.config else None
    if args.shards and cfg is None:
        raise ConfigError("--shards needs --config (the evaluation settings for the re-evaluation)")
    metric = args.metric or (cfg.promote.metric if cfg else "auc")
    champion = args.champion or (cfg.promote.champion_uri if cfg else "")
    if args.runs:
        best = best_run(args.runs, metric)
        eval_dir, model_dir = best / "evaluate", Path(args.model) if args.model else final_model_dir(best)
    else:
        if not args.model:
            raise ConfigError("--eval needs --model (the candidate's model directory)")
        eval_dir, model_dir = Path(args.eval), Path(args.model)
    decision = promote(eval_dir, model_dir, champion, metric, shards_dir=args.shards, cfg=cfg, out_dir=args.out)
    print(("promoted: " if decision["promoted"] else "not promoted: ") + decision["reason"])
    return 0
