"""Evaluation protocols: seeded train/test splits and repeated fit-predict-score.

* :func:`repeated_kfold_splits` — FMC-VQA: 20 x 5-fold cross-validation, median of 100.
* :func:`random_splits` — A2INet / BVQA_Benchmark: 10 random 80/20 splits, median.
* :func:`train_val_test_splits` — VSFA: 60/20/20 train/validation/test, the validation
  part choosing the checkpoint (``SequenceRegressor.fit(..., X_val=, y_val=)``).
* :func:`evaluate` — fits a fresh ``sklearn.base.clone`` of a head per split, scores
  its test predictions with :func:`regressors.metrics.evaluate_predictions`; with a
  ``state_dir`` it records each finished split and resumes an interrupted protocol.

``groups`` keep every sample of one group on one side of each split (LIVE-style
datasets, where several distorted videos share a source). Without groups every sample
is its own group, so both cases run through the same code. Splits are lists of
``(train_idx, test_idx)`` sorted ``int64`` index arrays, reproducible from
``random_state``.
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
from regressors.metrics import METRIC_NAMES, MIN_SAMPLES, evaluate_predictions
from vqa_core.atomic import atomic_write

__all__ = [
    "EvaluationResult",
    "evaluate",
    "random_splits",
    "split_state_paths",
    "repeated_kfold_splits",
    "train_val_test_splits",
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


def random_splits(
    n: int,
    *,
    groups=None,
    test_size: float = 0.2,
    n_repeats: int = 10,
    random_state=0,
) -> list[Split]:
    """``n_repeats`` random train/test splits of ``n`` samples (A2INet: 10 x 80/20).

    Each repeat puts ``ceil(test_size * G)`` randomly chosen groups in the test set
    (G groups; without groups, G = n, as scikit-learn's ``ShuffleSplit``).

    Returns
    -------
    ``n_repeats`` pairs ``(train_idx, test_idx)``.
    """
    codes, sizes = _group_codes(n, groups)
    if not 0.0 < float(test_size) < 1.0:
        raise InvalidInputError(f"test_size must lie strictly between 0 and 1, got {test_size!r}")
    _check_int("n_repeats", n_repeats, 1)
    n_groups = sizes.shape[0]
    n_test = int(np.ceil(float(test_size) * n_groups))
    if n_test >= n_groups:
        what = "groups" if groups is not None else "samples"
        raise InvalidInputError(
            f"test_size={test_size} of {n_groups} {what} leaves nothing to train on"
        )
    rng = np.random.default_rng(random_state)
    return [_as_split(codes, rng.permutation(n_groups)[:n_test]) for _ in range(n_repeats)]


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
        parts = (order[:n_train], order[n_train:test_start], order[test_start:])
        splits.append(tuple(np.flatnonzero(np.isin(codes, p)).astype(np.int64) for p in parts))
    return splits


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    per_split : list of dict
        One dict per split: the metrics (``srcc, krcc, plcc, plcc_raw, rmse``) plus
        ``split`` (its index), ``n_train`` and ``n_test``.
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
    """

    per_split: list[dict]
    median: dict[str, float]
    predictions: np.ndarray
    n_tested: np.ndarray
    video_ids: list | None = field(default=None)
    resumed_splits: list[int] = field(default_factory=list)


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
            raise InvalidInputError(
                f"split {i} has {test.size} test samples; the metrics need at least {MIN_SAMPLES}"
            )
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
    return {k: float(v) for k, v in doc["metrics"].items()}, pred


def _save_split(state_dir: Path, index: int, test: np.ndarray, pred: np.ndarray, metrics: dict,
                key: str, n_train: int) -> None:
    """Record a finished split: predictions (.npz) first, then the JSON that marks it finished."""
    meta_path, arrays_path, _ = split_state_paths(state_dir, index)
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(arrays_path, lambda fh: np.savez(fh, test=test, pred=pred))
    doc = {"format": _SPLIT_FORMAT, "split": index, "key": key, "n_train": n_train, "n_test": int(test.size),
           "metrics": {k: float(v) for k, v in metrics.items()}}
    atomic_write(meta_path, json.dumps(doc, indent=1) + "\n")


def evaluate(head, X, y, *, splits, video_ids=None, progress: bool = True, state_dir=None,
             state_key: str | None = None) -> EvaluationResult:
    """Fit and score a fresh clone of ``head`` on every split.

    Parameters
    ----------
    head : estimator
        Unfitted head following the scikit-learn contract; never modified.
    X : list of ``[T_i, D]`` arrays, or an array whose first axis indexes videos
        Features of the n videos.
    y : array ``[n]``
        MOS.
    splits : list of ``(train_idx, test_idx)``
        From :func:`repeated_kfold_splits` or :func:`random_splits`.
    video_ids : sequence ``[n]`` or None
        Kept in the result (and used in messages).
    progress : bool
        Show a tqdm progress bar on stderr.
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
    on one split (e.g. constant predictions) is re-raised naming the split.
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
    checked = _check_splits(splits, n)

    key = "" if state_key is None else str(state_key)
    state_dir = None if state_dir is None else Path(state_dir)
    checkpoints = "checkpoint_dir" in inspect.signature(head.fit).parameters
    pred_sum = np.zeros(n, dtype=np.float64)
    n_tested = np.zeros(n, dtype=np.int64)
    per_split, resumed = [], []
    bar = tqdm(total=len(checked), desc="evaluate", unit="split", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for i, (train, test) in enumerate(checked):
            recorded = _load_split(state_dir, i, test, key) if state_dir is not None else None
            if recorded is not None:
                metrics, pred = recorded
                resumed.append(i)
            else:
                fit_kwargs = {}
                if state_dir is not None and checkpoints:
                    fit_kwargs = {"checkpoint_dir": split_state_paths(state_dir, i)[2],
                                  "checkpoint_key": f"{key}/split-{i}"}
                model = clone(head).fit(_subset(X, train), y[train], **fit_kwargs)
                pred = np.asarray(model.predict(_subset(X, test)), dtype=np.float64).ravel()
                try:
                    metrics = evaluate_predictions(y[test], pred)
                except RegressorError as exc:
                    raise type(exc)(f"split {i} ({test.size} test videos): {exc}") from exc
                if state_dir is not None:
                    _save_split(state_dir, i, test, pred, metrics, key, int(train.size))
                    shutil.rmtree(split_state_paths(state_dir, i)[2], ignore_errors=True)
            pred_sum[test] += pred
            n_tested[test] += 1
            per_split.append({**metrics, "split": i, "n_train": int(train.size), "n_test": int(test.size)})
            bar.update(1)
            bar.set_postfix(srcc=f"{metrics['srcc']:.4f}")
    finally:
        bar.close()

    median = {k: float(np.median([m[k] for m in per_split])) for k in METRIC_NAMES}
    with np.errstate(invalid="ignore", divide="ignore"):
        predictions = np.where(n_tested > 0, pred_sum / np.maximum(n_tested, 1), np.nan)
    logger.info(
        "evaluated %d splits: median SRCC %.4f, PLCC %.4f", len(per_split), median["srcc"], median["plcc"]
    )
    return EvaluationResult(
        per_split=per_split, median=median, predictions=predictions, n_tested=n_tested,
        video_ids=video_ids, resumed_splits=resumed,
    )
