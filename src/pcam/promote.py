"""Replace the champion model only when a candidate beats it on the same test data.

The champion location (a local directory, a shared volume or a ``gs://`` prefix) is a
:mod:`pcam.champion` store: versioned model folders and a ``champion.json`` pointer.

Scores are compared on the candidate's test data. When ``shards_dir`` and ``cfg`` are
given, the champion model is re-evaluated on those shards instead of trusting its
stored number: the test data may have changed since it was crowned (a retraining
pipeline usually runs on fresher data), and a score on other data is no comparison.
Only a strictly better candidate wins; a tie keeps the champion (no churn for
nothing). With no champion yet, the candidate is promoted.

Promotion is a compare-and-swap, so a scheduled retraining and a manual run can
overlap: read the pointer (and its generation), score the champion it names, decide;
to promote, upload the candidate as a new complete version, then replace the pointer
only if it is still the generation read (``if_generation_match`` on gs://, an
``fcntl`` lock locally). If another promotion got there first, re-read, re-score and
re-decide; a loser deletes its unpublished version. The best candidate always ends
as champion, and readers always see one complete champion (:func:`pcam.champion.fetch`).

The candidate's metrics.json must carry the sha256 of the model being crowned (as
``pcam evaluate`` writes it): a score is never attached to another model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from pcam import champion as C
from pcam import storage
from pcam.artifacts import METRICS_FILE, MODEL_FILE, final_model_dir
from pcam.champion import CHAMPION_FILE  # noqa: F401 - re-exported
from pcam.config import EvaluateConfig
from pcam.errors import ConfigError, DataError
from pcam.fsutil import file_sha256, read_json, write_json
from pcam.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 50
"""Compare-and-swap rounds before giving up (each lost round means another promotion won)."""


class ChampionScore(TypedDict, total=False):
    """The champion's side of a comparison."""

    exists: bool
    score: float | None
    source: str
    """Where the score came from: re-evaluated on the candidate's shards, or its stored metrics.json."""
    same_test_data: bool | None


class Decision(TypedDict):
    """``decision.json``: whether the candidate was crowned, why, and the numbers behind it."""

    promoted: bool
    reason: str
    metric: str
    candidate_score: float | None
    champion_score: float | None
    champion_uri: str
    champion_score_source: str | None
    same_test_data: bool | None
    candidate_eval_dir: str
    candidate_model_dir: str
    version: str | None
    serving: str | None
    attempts: int
    decided_at: str


# ---------------------------------------------------------------- scores


def parse_metric(metric: str) -> tuple[str, str]:
    """``auc`` → (``tta``, ``auc``); ``single.auc`` → (``single``, ``auc``)."""
    mode, _, name = metric.rpartition(".")
    mode = mode or "tta"
    if mode not in ("tta", "single") or name not in METRIC_NAMES:
        raise ConfigError(
            f"promote metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}, "
            "optionally prefixed by 'single.' for the single-view score"
        )
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


# ---------------------------------------------------------------- champion score


def _champion_score(
    champion_uri: str, pointer: dict[str, Any] | None, metric: str, shards_dir: Any, cfg: Any, candidate: dict[str, Any]
) -> ChampionScore:
    """Score the champion: re-evaluated on ``shards_dir`` when possible, else its stored metrics."""
    if pointer is None and not C.legacy_champion(champion_uri):
        return {"exists": False}
    model_uri, metrics_uri = C.champion_files(champion_uri, pointer)
    if shards_dir is not None and cfg is not None:
        from pcam import evaluate

        with tempfile.TemporaryDirectory(prefix="pcam-champion-") as tmp:
            local_model = Path(tmp) / "model"
            try:
                storage.download_file(model_uri, local_model / MODEL_FILE)
            except DataError:
                raise DataError(f"{model_uri}: champion model missing, cannot re-evaluate it on {shards_dir}") from None
            fresh = evaluate.evaluate(
                local_model, shards_dir, Path(tmp) / "eval", cfg, split=candidate.get("split"), progress=False
            )
        fp_c, fp_champ = candidate.get("data_fingerprint"), fresh.get("data_fingerprint")
        if fp_c and fp_champ and fp_c != fp_champ:
            raise DataError(
                f"the candidate's metrics.json was computed on other data than {shards_dir} "
                f"({candidate.get('split')} split); re-evaluate the candidate on these shards"
            )
        return {
            "exists": True,
            "score": score(fresh, metric, f"re-evaluation of {model_uri}"),
            "source": f"re-evaluated on {shards_dir}",
            "same_test_data": True,
        }
    if not storage.is_file(metrics_uri):
        raise DataError(f"{metrics_uri}: missing; pass shards_dir and cfg to re-evaluate the champion model")
    try:
        stored = json.loads(storage.read_bytes(metrics_uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{metrics_uri}: not valid JSON ({exc})") from None
    value = score(stored, metric, metrics_uri)
    fp_c, fp_s = candidate.get("data_fingerprint"), stored.get("data_fingerprint")
    same = None if not (fp_c and fp_s) else fp_c == fp_s
    if same is False:
        log.warning("champion's stored %s is from other test data than the candidate's", metric)
    return {"exists": True, "score": value, "source": f"stored {metrics_uri}", "same_test_data": same}


def _decide(metric: str, candidate_score: float | None, champ: ChampionScore) -> tuple[bool, str]:
    champion_score = champ.get("score")
    if candidate_score is None:
        return False, f"candidate's {metric} is undefined (one-class test data?)"
    if not champ["exists"]:
        return True, "no champion yet: the first evaluated candidate becomes champion"
    if champion_score is None:
        return True, f"champion's {metric} is undefined ({champ['source']})"
    if candidate_score > champion_score:
        return True, f"candidate {metric} {candidate_score:.4f} > champion {champion_score:.4f}"
    relation = "=" if candidate_score == champion_score else "<"
    return False, (
        f"candidate {metric} {candidate_score:.4f} {relation} champion {champion_score:.4f}: "
        "the champion stays (only a strictly better one wins)"
    )


def _check_candidate(eval_dir: Path, model_file: Path, metrics: dict[str, Any]) -> str:
    """The model's sha256, after checking it is the model the evaluation scored (issue 15: identity)."""
    if not model_file.is_file():
        raise DataError(f"{model_file}: candidate model file missing")
    sha = file_sha256(model_file)
    recorded = metrics.get("model_sha256")
    if not isinstance(recorded, str):
        raise DataError(
            f"{eval_dir / METRICS_FILE}: no model_sha256 (not written by pcam evaluate?); "
            "cannot tell which model it scored"
        )
    if recorded != sha:
        raise DataError(
            f"{eval_dir / METRICS_FILE} scored another model (sha256 {recorded[:12]}...) than "
            f"{model_file} (sha256 {sha[:12]}...); evaluate this model first"
        )
    return sha


_REPLACED_KEYS = ("promoted_at", "score", "model", "policy", "model_sha256", "version")
"""What the new pointer records of the champion it replaced."""


def _check_outside(champion_uri: str, eval_dir: Path, model_dir: Path) -> None:
    """A local champion location must be a directory outside the run it crowns (it would replace its inputs)."""
    if storage.is_gcs(champion_uri):
        return
    where = storage.local(champion_uri).resolve()
    if where.is_file():
        raise DataError(f"{champion_uri}: is a file; the champion location must be a directory")
    for given in (eval_dir, model_dir):
        if where == given.resolve() or given.resolve() in where.parents:
            raise DataError(
                f"--champion {champion_uri}: inside the candidate's {given}; "
                "choose a location outside the run it crowns"
            )


def _pointer_info(
    metric: str, score_: float | None, metrics: dict[str, Any], sha: str, eval_dir: Path, model_dir: Path
) -> dict[str, Any]:
    """What the champion pointer and the version's marker record about the candidate."""
    return {
        "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metric": metric,
        "score": score_,
        **{k: metrics.get(k) for k in ("model", "policy", "split", "n", "data_fingerprint", "config_digest")},
        "model_sha256": sha,
        "candidate_eval_dir": str(eval_dir),
        "candidate_model_dir": str(model_dir),
    }


def _new_pointer(
    champion_uri: str,
    info: dict[str, Any],
    version: str,
    pointer: dict[str, Any] | None,
    champ: ChampionScore,
    serving: bool,
) -> tuple[dict[str, Any], list[str]]:
    """The pointer crowning ``version`` over ``pointer``, and every older version, newest first."""
    previous = pointer or {}
    history = [*([previous["version"]] if previous.get("version") else []), *previous.get("history", [])]
    new_pointer = {
        **info,
        "version": version,
        "serving": C.serving_uri(champion_uri, version) if serving else None,
        "replaced": None if pointer is None else {k: previous.get(k) for k in _REPLACED_KEYS},
        "replaced_score": champ.get("score"),
        "history": history[: C.KEEP_VERSIONS],
    }
    return new_pointer, history


def promote(
    candidate_eval_dir: str | os.PathLike[str],
    candidate_model_dir: str | os.PathLike[str],
    champion_uri: str,
    metric: str = "auc",
    *,
    shards_dir: str | os.PathLike[str] | None = None,
    cfg: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    serving: bool = True,
) -> Decision:
    """Promote the candidate if it strictly beats the champion on ``metric``; returns the decision.

    ``metric`` names a TTA score (``auc``, ``f1``, ...; ``single.auc`` for single view).
    ``decision.json`` goes to ``out_dir`` (default: ``<candidate_eval_dir>/../promote``).
    The candidate's metrics.json must name the candidate model's sha256. Concurrent
    promotions are safe: the pointer is swapped only if nobody replaced it since it was
    read; otherwise the new champion is re-read and compared again. ``force`` allows a
    champion location that already holds other files. ``serving`` also writes the new
    version's TF Serving SavedModel (``versions/<id>/serving/1``, the evaluation's TTA
    views in its graph) before the pointer moves, so whatever deploys the champion
    finds it complete.
    """
    if not champion_uri:
        raise ConfigError("promote.champion_uri is empty: say where the champion model lives")
    champion_uri = str(champion_uri)
    parse_metric(metric)
    eval_dir, model_dir = Path(candidate_eval_dir), Path(candidate_model_dir)
    candidate_metrics = read_json(eval_dir / METRICS_FILE)
    candidate_score = score(candidate_metrics, metric, str(eval_dir / METRICS_FILE))
    model_file = model_dir / MODEL_FILE
    sha = _check_candidate(eval_dir, model_file, candidate_metrics)
    _check_outside(champion_uri, eval_dir, model_dir)

    version: str | None = None
    committed = False
    scored: dict[str, ChampionScore] = {}  # champion version -> its score (re-evaluated once per version)
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            pointer, generation = C.read_pointer(champion_uri)
            if attempt == 1:
                C.check_location(champion_uri, pointer, force)
            key = json.dumps(pointer, sort_keys=True, default=str)
            if key not in scored:
                scored[key] = _champion_score(champion_uri, pointer, metric, shards_dir, cfg, candidate_metrics)
            champ = scored[key]
            promoted, reason = _decide(metric, candidate_score, champ)
            if not promoted:
                break
            info = _pointer_info(metric, candidate_score, candidate_metrics, sha, eval_dir, model_dir)
            if version is None:
                views = tuple((cfg.evaluate if cfg is not None else EvaluateConfig()).tta_views) if serving else None
                version = C.upload_version(champion_uri, model_file, eval_dir / METRICS_FILE, info, serving_views=views)
            new_pointer, history = _new_pointer(champion_uri, info, version, pointer, champ, serving)
            if C.swap_pointer(champion_uri, new_pointer, generation):
                committed = True
                C.collect_garbage(
                    champion_uri, history[C.KEEP_VERSIONS :], legacy=bool(pointer and not pointer.get("version"))
                )
                break
            log.info("the champion changed while this promotion decided (attempt %d): comparing again", attempt)
        else:
            raise DataError(f"{champion_uri}: the champion kept changing; gave up after {MAX_ATTEMPTS} attempts")
    finally:
        if version is not None and not committed:
            C.discard_version(champion_uri, version)
    if champ.get("source"):
        reason += f"; champion score {champ['source']}"
    decision: Decision = {
        "promoted": committed,
        "reason": reason,
        "metric": metric,
        "candidate_score": candidate_score,
        "champion_score": champ.get("score"),
        "champion_uri": champion_uri,
        "champion_score_source": champ.get("source"),
        "same_test_data": champ.get("same_test_data"),
        "candidate_eval_dir": str(eval_dir),
        "candidate_model_dir": str(model_dir),
        "version": version if committed else None,
        "serving": C.serving_uri(champion_uri, version) if committed and version and serving else None,
        "attempts": attempt,
        "decided_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out_dir) if out_dir is not None else eval_dir.parent / "promote"
    write_json(out / "decision.json", decision)
    log.info("%s: %s", "promoted" if committed else "kept champion", reason)
    return decision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``pcam promote`` options on ``parser``."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--eval", help="candidate's evaluate directory (metrics.json)")
    which.add_argument("--runs", nargs="+", help="run directories: promote the best evaluated one")
    parser.add_argument("--model", help="candidate's model directory (model.keras); needed with --eval")
    parser.add_argument("--champion", help="champion location, local dir or gs:// (default: promote.champion_uri)")
    parser.add_argument("--metric", help="metric to compare (default: promote.metric, else auc)")
    parser.add_argument("--shards", help="re-evaluate the champion on these shards (needs --config)")
    parser.add_argument("--config", help="experiment YAML")
    parser.add_argument("--out", help="where decision.json goes (default: beside the evaluate directory)")
    parser.add_argument(
        "--force", action="store_true", help="allow a --champion directory that holds other files (they are left alone)"
    )
    parser.add_argument(
        "--no-serving-export",
        dest="serving",
        action="store_false",
        help="skip the SavedModel export of a new champion (it then cannot be deployed)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``pcam promote`` (replace the champion model only if the candidate wins); returns the exit code."""
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
    decision = promote(
        eval_dir,
        model_dir,
        champion,
        metric,
        shards_dir=args.shards,
        cfg=cfg,
        out_dir=args.out,
        force=args.force,
        serving=args.serving,
    )
    print(("promoted: " if decision["promoted"] else "not promoted: ") + decision["reason"])
    return 0
