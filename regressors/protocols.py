"""Evaluation protocols: seeded train/test splits and repeated fit-predict-score.

* :func:`repeated_kfold_splits` — FMC-VQA: 20 x 5-fold cross-validation, median of 100.
* :func:`random_splits` — A2INet / BVQA_Benchmark: 10 random 80/20 splits, median.
* :func:`train_val_test_splits` — VSFA: 60/20/20 train/validation/test, the validation
  part choosing the checkpoint (``SequenceRegressor.fit(..., X_val=, y_val=)``).
* :data:`PROTOCOLS` — the papers' protocols by name (``fmc``, ``a2inet``, ``vsfa``) and
  :func:`plan_splits`, which draws a protocol's splits for a data set and adapts them, in
  the documented way below, when its groups cannot support the protocol as published.
* :func:`evaluate` — fits a fresh ``sklearn.base.clone`` of a head per split, scores
  its test predictions with :func:`regressors.metrics.evaluate_predictions`; with a
  ``state_dir`` it records each finished split and resumes an interrupted protocol.
  ``evaluate(head, X, y, groups=..., protocol="fmc")`` runs a paper protocol from Python
  and returns what ``vqa fit`` writes to ``metrics.json`` (``result.metrics``).

Honest numbers (docs/analysis.md, "Evaluation"):

* Few groups. With G groups, a k-fold protocol can only deal whole groups: with G = 5 and
  k = 5 every repeat deals the same five folds. Splits are counted as drawn
  (``n_splits``, the median over all of them, as the protocol defines) and as distinct
  (``n_distinct_splits``); a split equal to an earlier one is not fitted again, its result
  is reused. Adaptations (each one recorded in ``notes`` and logged): fewer groups than
  folds -> as many folds as groups (leave one group out); a test fold under 3 videos ->
  fewer folds, down to 2; a random test part under 3 videos (``a2inet``, ``vsfa``) -> the
  next groups of the same random order join it until it holds 3. When even that cannot
  work, :func:`plan_splits` refuses, naming the protocol that would.
* Degenerate logistic. The 4-parameter logistic of PLCC/RMSE can collapse to a step (a
  threshold between two MOS levels): a high PLCC from predictions that barely correlate.
  A split's fit is flagged ``logistic_degenerate`` when the logistic rises from 10% to 90%
  over less than 5% of the range of its predictions; the count and the raw PLCC beside it
  are in the metrics and the notes.

``groups`` keep every sample of one group on one side of each split (LIVE-style
datasets, where several distorted videos share a source). Without groups every sample
is its own group, so both cases run through the same code. Splits are lists of
``(train_idx, test_idx)`` sorted ``int64`` index arrays, reproducible from
``random_state``.

The splits themselves (the papers' protocols, adapted to few groups) are built in
:mod:`regressors.splits`.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from tqdm import tqdm

from regressors.errors import InvalidInputError, RegressorError
from regressors.metrics import METRIC_NAMES, MIN_SAMPLES, evaluate_predictions, fit_logistic4
from regressors.splits import (  # the protocols' splits; re-exported here, where callers found them
    PROTOCOLS,
    Protocol,
    Split,
    SplitPlan,
    _split_key,
    count_distinct,
    plan_splits,
    random_splits,
    repeated_kfold_splits,
    train_val_test_splits,
    vsfa_splits,
)
from regressors.temporal_pooling import split_pooling
from vqa_core.atomic import atomic_write

__all__ = [
    "PROTOCOLS",
    "EvaluationResult",
    "Protocol",
    "SplitPlan",
    "evaluate",
    "logistic_is_degenerate",
    "plan_splits",
    "random_splits",
    "split_state_paths",
    "repeated_kfold_splits",
    "train_val_test_splits",
    "vsfa_splits",
]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    per_split : list of dict
        One dict per split: the metrics (``srcc, krcc, plcc, plcc_raw, rmse``) plus
        ``split`` (its index), ``n_train``, ``n_test``, ``logistic_degenerate`` and, for a
        split equal to an earlier one, ``same_as`` (that split's index; not refitted).
    median : dict
        Median over splits of each metric (keys ``srcc, krcc, plcc, plcc_raw, rmse``).
    predictions : array ``[n]``
        Per video, the mean of its test predictions over splits; NaN if never tested.
    n_tested : array ``[n]`` int
        How many splits tested each video.
    video_ids : list or None
        The ids passed to :func:`evaluate`, if any.
    resumed_splits : list of int
        Splits read back from ``state_dir`` (finished before an interruption), not refitted.
    protocol, protocol_params : str or None, dict
        The protocol run (None when explicit splits were given) and its parameters.
    notes : list of str
        Adaptations and caveats, one sentence each (few groups, degenerate logistic fits).
    n_distinct_splits : int
        Splits that differ from each other (``len(per_split)`` counts repeats too).
    pooled : dict or None
        The metrics of ``predictions`` against the MOS over the tested videos (what the
        scatter plot shows), or None when they are undefined (fewer than 3 tested videos,
        constant predictions).
    """

    per_split: list[dict]
    median: dict[str, float]
    predictions: np.ndarray
    n_tested: np.ndarray
    video_ids: list | None = field(default=None)
    resumed_splits: list[int] = field(default_factory=list)
    protocol: str | None = None
    protocol_params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_distinct_splits: int | None = None
    pooled: dict | None = None

    @property
    def n_degenerate_logistic(self) -> int:
        """Splits whose logistic fit collapsed to a step (see :func:`logistic_is_degenerate`)."""
        return sum(bool(m.get("logistic_degenerate")) for m in self.per_split)

    @property
    def metrics(self) -> dict:
        """What ``vqa fit`` writes to ``metrics.json``, less its ``settings``: the medians
        (``srcc, krcc, plcc, plcc_raw, rmse``), ``n_splits``, ``n_distinct_splits``,
        ``n_degenerate_logistic``, ``pooled`` (metrics of the scatter plot's points),
        ``protocol``, ``protocol_params``, ``notes`` and ``per_split``."""
        distinct = self.n_distinct_splits if self.n_distinct_splits is not None else len(self.per_split)
        return {
            **{k: self.median[k] for k in METRIC_NAMES},
            "n_splits": len(self.per_split),
            "n_distinct_splits": int(distinct),
            "n_degenerate_logistic": self.n_degenerate_logistic,
            "pooled": self.pooled,
            "protocol": self.protocol,
            "protocol_params": self.protocol_params,
            "notes": list(self.notes),
            "per_split": self.per_split,
        }


#: A logistic fit is a step when it rises from 10% to 90% of its range over less than this
#: fraction of the range of the predictions.
DEGENERATE_WIDTH = 0.05
_LOGIT_90 = float(np.log(9.0))  # |x - b3| / |b4| at which the logistic is at 10% or 90%


def logistic_is_degenerate(y, p) -> bool:
    """True when the 4-parameter logistic from predictions ``p [N]`` to MOS ``y [N]`` is a step.

    The logistic rises from 10% to 90% of its range over ``2 ln(9) |b4|``; when that is less
    than 5% of the range of the predictions, the mapping is a threshold between two MOS
    levels, and PLCC and RMSE after it can be high while raw PLCC is near 0 (or
    says otherwise). The linear fallback of :func:`regressors.metrics.fit_logistic4` is
    never a step.
    """
    p = np.asarray(p, dtype=np.float64)
    b4 = fit_logistic4(p, y)[3]
    return bool(2.0 * _LOGIT_90 * abs(b4) < DEGENERATE_WIDTH * float(np.ptp(p)))


def pooled_metrics(y: np.ndarray, predictions: np.ndarray) -> dict | None:
    """Metrics of the tested videos' mean predictions ``[n]`` (NaN: never tested) against
    their MOS ``y [n]``, with ``logistic_degenerate`` and ``n_videos``; None when undefined."""
    tested = np.isfinite(predictions)
    try:
        metrics = evaluate_predictions(y[tested], predictions[tested])
        metrics["logistic_degenerate"] = logistic_is_degenerate(y[tested], predictions[tested])
    except InvalidInputError as exc:
        logger.info("no pooled metrics: %s", exc)
        return None
    return {**metrics, "n_videos": int(tested.sum())}


def _subset(X, idx: np.ndarray):
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def _check_splits(splits, n: int) -> list[Split]:
    checked = []
    for i, split in enumerate(splits):
        try:
            train, test = split
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"split {i} is not a (train_idx, test_idx) pair") from exc
        train = np.asarray(train, dtype=np.int64).ravel()
        test = np.asarray(test, dtype=np.int64).ravel()
        for name, idx in (("train", train), ("test", test)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InvalidInputError(f"split {i}: {name} indices outside [0, {n})")
        if test.size < MIN_SAMPLES:
            raise InvalidInputError(f"split {i} has {test.size} test samples; the metrics need at least {MIN_SAMPLES}")
        if train.size < 2:
            raise InvalidInputError(f"split {i} has {train.size} training samples; need at least 2")
        if np.intersect1d(train, test).size:
            raise InvalidInputError(f"split {i}: some samples are in both train and test")
        checked.append((train, test))
    if not checked:
        raise InvalidInputError("no splits given")
    return checked


_SPLIT_FORMAT = "vqa-split-result"


def split_state_paths(state_dir, index: int) -> tuple[Path, Path, Path]:
    """``(result JSON, predictions .npz, training checkpoint folder)`` of split ``index`` in ``state_dir``."""
    base = Path(state_dir) / f"split-{index:04d}"
    return base.with_suffix(".json"), base.with_suffix(".npz"), base


def _load_split(state_dir: Path, index: int, test: np.ndarray, key: str):
    """The recorded ``(metrics, predictions)`` of a finished split, or None if it did not finish."""
    meta_path, arrays_path, _ = split_state_paths(state_dir, index)
    if not meta_path.is_file():  # written last: without it the split did not finish
        return None
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as arrays:
            saved_test, pred = np.asarray(arrays["test"]), np.asarray(arrays["pred"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"the recorded result of split {index} in {state_dir} is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != _SPLIT_FORMAT or doc.get("key") != key:
        raise InvalidInputError(
            f"{meta_path} belongs to another run (its configuration key differs); "
            f"delete {state_dir} or use another state folder"
        )
    if not np.array_equal(saved_test, test) or pred.shape != test.shape:
        raise InvalidInputError(f"{meta_path} was recorded for other test videos than split {index} has now")
    return {k: v if isinstance(v, bool) else float(v) for k, v in doc["metrics"].items()}, pred


def _save_split(
    state_dir: Path, index: int, test: np.ndarray, pred: np.ndarray, metrics: dict, key: str, n_train: int
) -> None:
    """Record a finished split: predictions (.npz) first, then the JSON that marks it finished."""
    meta_path, arrays_path, _ = split_state_paths(state_dir, index)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(arrays_path, lambda fh: np.savez(fh, test=test, pred=pred))
    doc = {
        "format": _SPLIT_FORMAT,
        "split": index,
        "key": key,
        "n_train": n_train,
        "n_test": int(test.size),
        "metrics": {k: bool(v) if isinstance(v, (bool, np.bool_)) else float(v) for k, v in metrics.items()},
    }
    atomic_write(meta_path, json.dumps(doc, indent=1) + "\n")


def evaluate(
    head,
    X,
    y,
    *,
    protocol: str | None = None,
    groups=None,
    splits=None,
    n_repeats: int | None = None,
    random_state=0,
    video_ids=None,
    progress: bool = False,
    state_dir=None,
    state_key: str | None = None,
) -> EvaluationResult:
    """Fit and score a fresh clone of ``head`` on every split of a protocol.

    ``evaluate(head, X, y, groups=sources, protocol="fmc").metrics`` is what ``vqa fit``
    writes to ``metrics.json`` (without its ``settings``).

    Parameters
    ----------
    head : estimator
        Unfitted head following the scikit-learn contract; never modified. A pipeline that
        starts with :class:`~regressors.temporal_pooling.TemporalPooling` (or a head that
        pools inside, ``SVRHead``) has its videos pooled once, not once per split: pooling
        is stateless, so the result is the same.
    X : list of ``[T_i, D]`` arrays, or an array whose first axis indexes videos
        Features of the n videos.
    y : array ``[n]``
        MOS.
    protocol : str or None
        A :data:`PROTOCOLS` name (``fmc``, ``a2inet``, ``vsfa``); the splits are drawn by
        :func:`plan_splits` (which adapts them to few groups and says so in ``notes``).
        Default ``fmc`` when ``splits`` is not given either.
    groups : array ``[n]`` or None
        Source/content id per video for ``protocol``: a group never straddles train and test.
    splits : list of ``(train_idx, test_idx)`` or None
        Explicit splits instead of a protocol (e.g. from :func:`repeated_kfold_splits`).
    n_repeats : int or None
        Override the protocol's number of repeats.
    random_state : int
        Seed of the protocol's splits.
    video_ids : sequence ``[n]`` or None
        Kept in the result (and used in messages).
    progress : bool
        Show a tqdm progress bar on stderr (off by default: no bars inside other loops).
    state_dir : path or None
        Resumable run: each finished split's test predictions and metrics are recorded
        there (``split-NNNN.npz`` with ``test``/``pred`` arrays, then ``split-NNNN.json``;
        no pickle) and read back instead of refitting when found; a head whose ``fit``
        takes ``checkpoint_dir`` (:class:`~regressors.sequence.SequenceRegressor`) saves
        its per-epoch training state in ``split-NNNN/`` and resumes from it, the folder
        being removed once the split is recorded.
    state_key : str or None
        Identity of the run (e.g. a hash of its configuration); records and training
        checkpoints made under another key are refused, never mixed in.

    Returns
    -------
    :class:`EvaluationResult`. Raises :class:`~regressors.errors.InvalidInputError` before
    any fitting if a split has fewer than 3 test or 2 training samples; a metric failure
    on one split (e.g. constant predictions) is re-raised naming the split. A split equal
    to an earlier one is not fitted again: its predictions and metrics are reused.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise InvalidInputError(f"y must be 1-D [n], got shape {y.shape}")
    n = y.shape[0]
    if len(X) != n:
        raise InvalidInputError(f"X has {len(X)} videos but y has {n} scores")
    if not np.all(np.isfinite(y)):
        raise InvalidInputError("y contains NaN or infinite values")
    if video_ids is not None:
        video_ids = list(video_ids)
        if len(video_ids) != n:
            raise InvalidInputError(f"video_ids has {len(video_ids)} entries, expected {n}")
    notes: list[str] = []
    if splits is not None:
        if protocol is not None or groups is not None or n_repeats is not None:
            raise InvalidInputError("pass either splits, or a protocol (with groups and n_repeats), not both")
        protocol_params: dict = {}
        n_distinct = count_distinct(_check_splits(splits, n))
    else:
        protocol = protocol or "fmc"
        plan = plan_splits(protocol, n, groups=groups, n_repeats=n_repeats, random_state=random_state)
        splits, protocol_params, notes, n_distinct = plan.splits, plan.params, list(plan.notes), plan.n_distinct
    checked = _check_splits(splits, n)

    pooling, head = split_pooling(head)
    if pooling is not None:  # stateless: pooling every video once equals pooling in every split
        X = pooling.fit_transform(X)

    key = "" if state_key is None else str(state_key)
    state_dir = None if state_dir is None else Path(state_dir)
    checkpoints = "checkpoint_dir" in inspect.signature(head.fit).parameters
    pred_sum = np.zeros(n, dtype=np.float64)
    n_tested = np.zeros(n, dtype=np.int64)
    per_split, resumed = [], []
    first_of: dict[bytes, int] = {}  # split content -> index of its first occurrence
    results: dict[int, tuple[dict, np.ndarray]] = {}
    bar = tqdm(total=len(checked), desc="evaluate", unit="split", file=sys.stderr, disable=not progress, leave=False)
    try:
        for i, (train, test) in enumerate(checked):
            same_as = first_of.setdefault(_split_key(train, test), i)
            recorded = _load_split(state_dir, i, test, key) if state_dir is not None else None
            if same_as != i:
                metrics, pred = results[same_as]
                if state_dir is not None and recorded is None:  # recorded too: progress counts it
                    _save_split(state_dir, i, test, pred, metrics, key, int(train.size))
            elif recorded is not None:
                metrics, pred = recorded
                resumed.append(i)
            else:
                fit_kwargs = {}
                if state_dir is not None and checkpoints:
                    fit_kwargs = {
                        "checkpoint_dir": split_state_paths(state_dir, i)[2],
                        "checkpoint_key": f"{key}/split-{i}",
                    }
                model = clone(head).fit(_subset(X, train), y[train], **fit_kwargs)
                pred = np.asarray(model.predict(_subset(X, test)), dtype=np.float64).ravel()
                try:
                    metrics = evaluate_predictions(y[test], pred)
                    metrics["logistic_degenerate"] = logistic_is_degenerate(y[test], pred)
                except RegressorError as exc:
                    raise type(exc)(f"split {i} ({test.size} test videos): {exc}") from exc
                if state_dir is not None:
                    _save_split(state_dir, i, test, pred, metrics, key, int(train.size))
                    shutil.rmtree(split_state_paths(state_dir, i)[2], ignore_errors=True)
            if "logistic_degenerate" not in metrics:  # recorded by an older version
                metrics = {**metrics, "logistic_degenerate": logistic_is_degenerate(y[test], pred)}
            results[i] = (metrics, pred)
            pred_sum[test] += pred
            n_tested[test] += 1
            row = {**metrics, "split": i, "n_train": int(train.size), "n_test": int(test.size)}
            if same_as != i:
                row["same_as"] = same_as
            per_split.append(row)
            bar.update(1)
            bar.set_postfix(srcc=f"{metrics['srcc']:.4f}")
    finally:
        bar.close()

    median = {k: float(np.median([m[k] for m in per_split])) for k in METRIC_NAMES}
    with np.errstate(invalid="ignore", divide="ignore"):
        predictions = np.where(n_tested > 0, pred_sum / np.maximum(n_tested, 1), np.nan)
    result = EvaluationResult(
        per_split=per_split,
        median=median,
        predictions=predictions,
        n_tested=n_tested,
        video_ids=video_ids,
        resumed_splits=resumed,
        protocol=protocol,
        protocol_params=protocol_params,
        notes=notes,
        n_distinct_splits=n_distinct,
        pooled=pooled_metrics(y, predictions),
    )
    degenerate = result.n_degenerate_logistic
    if degenerate:
        note = (
            f"the 4-parameter logistic collapsed to a step in {degenerate} of {len(per_split)} splits "
            f"(from 10% to 90% within 5% of the predictions' range): PLCC and RMSE there measure "
            f"a threshold, not a fit; raw PLCC (median {median['plcc_raw']:.4f}) is the safer number"
        )
        logger.info("%s", note)  # in the result's notes: callers show them
        result.notes.append(note)
    logger.info(
        "evaluated %d splits (%d distinct): median SRCC %.4f, PLCC %.4f",
        len(per_split),
        n_distinct,
        median["srcc"],
        median["plcc"],
    )
    return result
