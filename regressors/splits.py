"""Evaluation splits: the papers' protocols as seeded train/test index pairs, and the plan
that adapts them to few groups or videos.

``plan_splits(protocol, n, groups=...)`` returns a :class:`SplitPlan`: the splits, the
parameters used, notes on any adaptation and the number of distinct splits. A group never
straddles train and test. :mod:`regressors.protocols` fits and scores over these splits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from regressors.errors import InvalidInputError
from regressors.metrics import MIN_SAMPLES
from vqa_core.registry import Registry

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
