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

Length (over 600 lines): the split builders, the adaptation rules for few groups and the
resumable fit-predict-score loop share one notion of a split and its record; apart they would
re-derive it.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from tqdm import tqdm

from regressors.errors import InvalidInputError, RegressorError
from regressors.metrics import METRIC_NAMES, MIN_SAMPLES, evaluate_predictions, fit_logistic4
from regressors.temporal_pooling import split_pooling
from vqa_core.atomic import atomic_write
from vqa_core.registry import Registry

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

Split = tuple[np.ndarray, np.ndarray]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _group_codes(n: int, groups) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(codes [n], sizes [G])``: group index per sample and samples per group."""
    _check_int("n", n, 1)
    if groups is None:
        return np.arange(n), np.ones(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise InvalidInputError(f"groups must be 1-D with n = {n} entries, got shape {groups.shape}")
    _, codes, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    return codes.ravel(), sizes


def _as_split(codes: np.ndarray, test_groups: np.ndarray) -> Split:
    test_mask = np.isin(codes, test_groups)
    return np.flatnonzero(~test_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64)


def repeated_kfold_splits(
    n: int,
    *,
    groups=None,
    n_splits: int = 5,
    n_repeats: int = 20,
    random_state=0,
) -> list[Split]:
    """``n_repeats`` x ``n_splits``-fold cross-validation splits of ``n`` samples.

    Each repeat shuffles the groups and deals them, in that order, to the fold that
    holds the fewest samples so far: folds are as equal in size as the groups allow
    (for single-sample groups, sizes differ by at most one), and every sample is in
    exactly one test fold per repeat.

    Parameters
    ----------
    n : int
        Number of samples.
    groups : array ``[n]`` or None
        Group label per sample; a group never straddles train and test.
    random_state : int, numpy Generator or None
        Seed (None: fresh entropy, not reproducible).

    Returns
    -------
    ``n_repeats * n_splits`` pairs ``(train_idx, test_idx)``, repeat by repeat.
    """
    codes, sizes = _group_codes(n, groups)
    _check_int("n_splits", n_splits, 2)
    _check_int("n_repeats", n_repeats, 1)
    if sizes.shape[0] < n_splits:
        what = "groups" if groups is not None else "samples"
        raise InvalidInputError(f"only {sizes.shape[0]} {what}, fewer than n_splits={n_splits}")
    rng = np.random.default_rng(random_state)
    splits = []
    for _ in range(n_repeats):
        order = rng.permutation(sizes.shape[0])
        fold_of_group = np.empty(sizes.shape[0], dtype=np.int64)
        load = np.zeros(n_splits, dtype=np.int64)
        for g in order:
            fold = int(np.argmin(load))  # first of the emptiest folds
            fold_of_group[g] = fold
            load[fold] += sizes[g]
        for fold in range(n_splits):
            splits.append(_as_split(codes, np.flatnonzero(fold_of_group == fold)))
    return splits


def _grown(order: np.ndarray, start: int, sizes: np.ndarray, min_samples: int) -> int:
    """Lower ``start`` until the groups ``order[start:]`` hold ``min_samples`` samples (or 0)."""
    while start > 0 and sizes[order[start:]].sum() < min_samples:
        start -= 1
    return start


def random_splits(
    n: int,
    *,
    groups=None,
    test_size: float = 0.2,
    n_repeats: int = 10,
    random_state=0,
    min_test_samples: int = 0,
) -> list[Split]:
    """``n_repeats`` random train/test splits of ``n`` samples (A2INet: 10 x 80/20).

    Each repeat puts ``ceil(test_size * G)`` randomly chosen groups in the test set
    (G groups; without groups, G = n, as scikit-learn's ``ShuffleSplit``).
    ``min_test_samples``: a test part holding fewer samples takes the next groups of the
    same random order until it holds that many (0: never; the draws are the same either way).

    Returns
    -------
    ``n_repeats`` pairs ``(train_idx, test_idx)``.
    """
    codes, sizes = _group_codes(n, groups)
    if not 0.0 < float(test_size) < 1.0:
        raise InvalidInputError(f"test_size must lie strictly between 0 and 1, got {test_size!r}")
    _check_int("n_repeats", n_repeats, 1)
    _check_int("min_test_samples", min_test_samples, 0)
    n_groups = sizes.shape[0]
    n_test = int(np.ceil(float(test_size) * n_groups))
    if n_test >= n_groups:
        what = "groups" if groups is not None else "samples"
        raise InvalidInputError(f"test_size={test_size} of {n_groups} {what} leaves nothing to train on")
    rng = np.random.default_rng(random_state)
    splits = []
    for _ in range(n_repeats):
        # Test groups are the first n_test of a permutation; reversed, they are its tail,
        # which _grown extends with the groups that follow them in the permutation.
        order = rng.permutation(n_groups)[::-1]
        start = _grown(order, n_groups - n_test, sizes, min_test_samples)
        splits.append(_as_split(codes, order[start:]))
    return splits


# Fractions are turned into group counts with ceil(f * G - _CEIL_TOL): without the
# tolerance, 1 - 0.2 - 0.2 = 0.6000000000000001 would give ceil(720.0000000000001) = 721
# training videos out of 1200 (what lidq92/VSFA's own arithmetic does).
_CEIL_TOL = 1e-9


def train_val_test_splits(
    n: int,
    *,
    groups=None,
    fractions=(0.6, 0.2, 0.2),
    n_repeats: int = 10,
    random_state=0,
    min_test_samples: int = 0,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n_repeats`` random train/validation/test splits (VSFA: 60/20/20).

    As in lidq92/VSFA, each repeat permutes the G groups (VSFA's ``ref_ids``; without
    ``groups`` every sample is its own group, G = n) and deals them in that order: the
    first ``ceil(f_train * G)`` to training, the groups from ``ceil((f_train + f_val) *
    G)`` on to test, those between to validation. The validation part selects the
    checkpoint; the test part is scored once, with it.

    Parameters
    ----------
    n : int
        Number of samples.
    groups : array ``[n]`` or None
        Group label per sample; a group never straddles two parts.
    fractions : (train, val, test)
        Positive train and test fractions, val >= 0; they must sum to 1.
    random_state : int, numpy Generator or None
        Seed (None: fresh entropy, not reproducible).
    min_test_samples : int
        A test part holding fewer samples takes the last validation groups (then training
        groups, keeping at least one) until it holds that many; 0: never.

    Returns
    -------
    ``n_repeats`` triples ``(train_idx, val_idx, test_idx)`` of sorted ``int64`` arrays.
    Use it with :class:`regressors.sequence.SequenceRegressor`::

        for train, val, test in train_val_test_splits(len(X), groups=ref_ids):
            head = clone(proto).fit([X[i] for i in train], y[train],
                                    X_val=[X[i] for i in val], y_val=y[val])
            scores = evaluate_predictions(y[test], head.predict([X[i] for i in test]))

    :func:`evaluate` takes pairs; ``(concatenate([train, val]), test)`` with a head whose
    ``val_fraction`` is ``f_val / (f_train + f_val)`` keeps the proportions, though it
    draws its own validation groups.
    """
    codes, sizes = _group_codes(n, groups)
    _check_int("n_repeats", n_repeats, 1)
    _check_int("min_test_samples", min_test_samples, 0)
    try:
        f_train, f_val, f_test = (float(f) for f in fractions)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from exc
    if not (f_train > 0 and f_test > 0 and f_val >= 0) or abs(f_train + f_val + f_test - 1.0) > 1e-6:
        raise InvalidInputError(
            f"fractions must be train > 0, val >= 0, test > 0 summing to 1, got {tuple(fractions)!r}"
        )
    n_groups = sizes.shape[0]
    n_train = int(np.ceil(f_train * n_groups - _CEIL_TOL))
    test_start = int(np.ceil((f_train + f_val) * n_groups - _CEIL_TOL))
    if n_train < 1 or test_start >= n_groups or (f_val > 0 and test_start <= n_train):
        what = "groups" if groups is not None else "samples"
        raise InvalidInputError(
            f"fractions {tuple(fractions)!r} of {n_groups} {what} leave an empty part "
            f"({n_train} train, {test_start - n_train} val, {n_groups - test_start} test)"
        )
    rng = np.random.default_rng(random_state)
    splits = []
    for _ in range(n_repeats):
        order = rng.permutation(n_groups)
        start = max(1, _grown(order, test_start, sizes, min_test_samples))
        train_end = min(n_train, start)
        parts = (order[:train_end], order[train_end:start], order[start:])
        splits.append(tuple(np.flatnonzero(np.isin(codes, p)).astype(np.int64) for p in parts))
    return splits


def vsfa_splits(n: int, *, groups=None, n_repeats: int = 10, random_state=0, min_test_samples: int = 0) -> list[Split]:
    """VSFA's 60/20/20 as ``(train + validation, test)`` pairs for :func:`evaluate`.

    The test part is held out as in :func:`train_val_test_splits`; the head keeps its own
    validation part of the rest for the best-validation checkpoint (``val_fraction=0.25``
    of the remaining 80%, set by the ``vsfa`` head preset), so the proportions are VSFA's.
    """
    triples = train_val_test_splits(
        n, groups=groups, n_repeats=n_repeats, random_state=random_state, min_test_samples=min_test_samples
    )
    return [(np.sort(np.concatenate([train, val])), test) for train, val, test in triples]


# ---------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """A paper's evaluation protocol: a split builder and its published parameters.

    ``splits(n, *, groups, random_state, **params)`` returns ``(train_idx, test_idx)`` pairs;
    ``kind`` is ``"kfold"`` (``n_splits`` folds per repeat) or ``"random"`` (a random test
    part per repeat, grown with ``min_test_samples``), which decides how :func:`plan_splits`
    adapts it to few groups.
    """

    splits: Callable[..., list[Split]]
    params: dict
    kind: str
    description: str


#: The papers' protocols by name (REFERENCE.md, "Evaluation").
PROTOCOLS: Registry[Protocol] = Registry("protocol", error=InvalidInputError, sort=False)
PROTOCOLS.register(
    "fmc",
    Protocol(
        repeated_kfold_splits,
        {"n_splits": 5, "n_repeats": 20},
        "kfold",
        "FMC-VQA: 20 x 5-fold cross-validation, median of 100",
    ),
)
PROTOCOLS.register(
    "a2inet",
    Protocol(random_splits, {"test_size": 0.2, "n_repeats": 10}, "random", "A2INet: 10 random 80/20 splits, median"),
)
PROTOCOLS.register(
    "vsfa",
    Protocol(
        vsfa_splits, {"n_repeats": 10}, "random", "VSFA: 10 x 60/20/20, the head's validation part picks the checkpoint"
    ),
)


@dataclass
class SplitPlan:
    """What :func:`plan_splits` drew: ``splits``, the ``params`` used (after adaptation),
    ``notes`` (one sentence per adaptation or caveat) and ``n_distinct`` splits."""

    protocol: str
    splits: list[Split]
    params: dict
    notes: list[str]
    n_distinct: int


def _split_key(train: np.ndarray, test: np.ndarray) -> bytes:
    return np.asarray(train, np.int64).tobytes() + b"|" + np.asarray(test, np.int64).tobytes()


def count_distinct(splits) -> int:
    """How many of ``splits`` differ (same train and test indices count once)."""
    return len({_split_key(train, test) for train, test in splits})


class _Refused(InvalidInputError):
    """A protocol cannot evaluate the videos (raised by :func:`_plan`; :func:`plan_splits`
    adds which protocol can)."""


def plan_splits(protocol: str, n: int, *, groups=None, n_repeats: int | None = None, random_state=0) -> SplitPlan:
    """The splits of ``protocol`` (a :data:`PROTOCOLS` name) for ``n`` videos in ``groups``.

    Adapts, and says so in ``notes``, where the groups cannot support the protocol as
    published (see the module docstring): fewer groups than folds, test folds or parts
    under 3 videos. Refuses (``InvalidInputError``, naming ``--protocol`` that would work, or
    saying that none would) when no adaptation gives every split 3 test and 2 training videos.
    """
    try:
        return _plan(protocol, n, groups=groups, n_repeats=n_repeats, random_state=random_state)
    except _Refused as exc:
        for other in PROTOCOLS.names():
            if other != protocol:
                try:
                    _plan(other, n, groups=groups, n_repeats=1, random_state=random_state)
                except _Refused:
                    continue
                raise InvalidInputError(f"{exc}; --protocol {other} can evaluate them") from None
        raise InvalidInputError(f"{exc}; no protocol can: add videos (or groups)") from None


def _plan(protocol: str, n: int, *, groups, n_repeats: int | None, random_state) -> SplitPlan:
    """:func:`plan_splits` without the suggestion of another protocol (raises :class:`_Refused`)."""
    spec = PROTOCOLS.get(protocol)
    params = dict(spec.params, **({"n_repeats": n_repeats} if n_repeats is not None else {}))
    _, sizes = _group_codes(n, groups)
    n_groups = sizes.shape[0]
    what = "groups" if groups is not None else "videos"
    notes: list[str] = []
    where = f"{n} videos in {n_groups} groups" if groups is not None else f"{n} videos"
    refusal = (
        f"{where} are too few for the {protocol} protocol: every split needs {MIN_SAMPLES} test and 2 training videos"
    )
    if spec.kind == "kfold":
        asked = params["n_splits"]
        k = min(asked, n_groups)
        splits = None
        while k >= 2:
            splits = spec.splits(n, groups=groups, random_state=random_state, **dict(params, n_splits=k))
            if min(test.size for _, test in splits) >= MIN_SAMPLES and min(t.size for t, _ in splits) >= 2:
                break
            k -= 1
        else:
            raise _Refused(refusal)
        if k != asked:
            why = (
                f"only {n_groups} {what}"
                if n_groups < asked
                else f"{asked} folds would leave test folds under {MIN_SAMPLES} videos"
            )
            notes.append(
                f"{protocol}: {why}, so {k}-fold instead of {asked}-fold cross-validation "
                f"({params['n_repeats']} repeats)"
            )
            params["n_splits"] = k
    else:
        try:
            splits = spec.splits(n, groups=groups, random_state=random_state, **params)
            # The same draws with small test parts grown: equal to `splits` wherever none was small.
            grown = spec.splits(
                n, groups=groups, random_state=random_state, **dict(params, min_test_samples=MIN_SAMPLES)
            )
        except InvalidInputError as exc:  # too few groups for the protocol's parts
            raise _Refused(f"{refusal} ({exc})") from None
        n_grown = sum(a[1].size != b[1].size for a, b in zip(splits, grown, strict=True))
        if n_grown:
            notes.append(
                f"{protocol}: {n_grown} of {len(splits)} random test parts held fewer than {MIN_SAMPLES} "
                f"videos; further groups of the same random draw joined them until they held {MIN_SAMPLES}"
            )
            params["min_test_samples"] = MIN_SAMPLES
            splits = grown
        if min(test.size for _, test in splits) < MIN_SAMPLES or min(t.size for t, _ in splits) < 2:
            raise _Refused(refusal)
    n_distinct = count_distinct(splits)
    if n_distinct < len(splits):
        notes.append(
            f"{protocol}: the {n_groups} {what} allow only {n_distinct} distinct splits among the "
            f"{len(splits)} drawn; each distinct split is fitted once and its result reused where it "
            f"repeats (the median counts all {len(splits)}, as the protocol does)"
        )
    for note in notes:
        logger.info("%s", note)  # in the result's notes: callers show them
    return SplitPlan(protocol=protocol, splits=splits, params=params, notes=notes, n_distinct=n_distinct)


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
