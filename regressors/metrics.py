"""Correlation and error metrics between subjective scores (MOS) and predictions.

Conventions (REFERENCE.md, "Evaluation"):

* SRCC (Spearman) and KRCC (Kendall tau-b) are computed on the raw predictions. These are
  the names of DOVER / FAST-VQA and of ``metrics.json``; VSFA-era papers write SROCC/KROCC.
* PLCC and RMSE are computed after mapping the predictions onto the MOS scale with the
  4-parameter logistic of SimpleVQA / BVQA_Benchmark::

      f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|)),  start [max y, min y, mean p, 0.5]

* ``plcc_raw`` is the Pearson correlation on raw predictions (VSFA, FMC, KVQ report it).

Fallback of the logistic fit (documented choice, not in the reference code): when
``scipy.optimize.curve_fit`` does not converge within :data:`LOGISTIC_MAXFEV` function
evaluations, returns non-finite parameters, or ends in a worse least-squares fit than a
straight line (the logistic family contains the line as a limit, so a converged fit can
never be worse: such a result is a bad local minimum), the mapping falls back to the
least-squares line and a warning is logged. The line is returned *as logistic
parameters* (a logistic whose centre is the mean prediction and whose width is
:data:`LINEAR_WIDTH_FACTOR` times the prediction range, so that it is linear to about
1e-9 relative over the data), which keeps one code path: ``logistic4(x, *params)``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import optimize, stats

from regressors.errors import InvalidInputError

__all__ = [
    "LOGISTIC_MAXFEV",
    "METRIC_NAMES",
    "MIN_SAMPLES",
    "evaluate_predictions",
    "fit_logistic4",
    "krcc",
    "logistic4",
    "plcc",
    "plcc_raw",
    "rmse",
    "srcc",
]

logger = logging.getLogger(__name__)

#: Keys of :func:`evaluate_predictions`, in report order.
METRIC_NAMES = ("srcc", "krcc", "plcc", "plcc_raw", "rmse")
#: Fewest samples for which the metrics are computed (a correlation of 2 points is +-1).
MIN_SAMPLES = 3
#: Function-evaluation budget of the logistic fit. BVQA_Benchmark passes 1e8, which
#: turns a non-converging fit into minutes of work; 1e5 is ample for a 4-parameter fit.
LOGISTIC_MAXFEV = 100_000
#: Width of the logistic that stands in for a straight line, in units of the
#: prediction range: curvature relative to the slope is about (1 / factor)**2 / 12.
LINEAR_WIDTH_FACTOR = 1e4


def _as_vector(a, name: str) -> np.ndarray:
    """Return ``a`` as a float64 vector ``[N]``; a column ``[N, 1]`` is accepted."""
    try:
        v = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be numeric, got {type(a).__name__}: {exc}") from exc
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise InvalidInputError(f"{name} must be 1-D [N], got shape {v.shape}")
    return v


def _check_pair(y, p) -> tuple[np.ndarray, np.ndarray]:
    """Validate MOS ``y [N]`` and predictions ``p [N]``; return both as float64."""
    y = _as_vector(y, "y (MOS)")
    p = _as_vector(p, "p (predictions)")
    if y.shape != p.shape:
        raise InvalidInputError(f"y and p differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.shape[0] < MIN_SAMPLES:
        raise InvalidInputError(f"need at least {MIN_SAMPLES} samples for correlation metrics, got {y.shape[0]}")
    for name, v in (("y (MOS)", y), ("p (predictions)", p)):
        bad = ~np.isfinite(v)
        if bad.any():
            raise InvalidInputError(
                f"{name} contains {int(bad.sum())} NaN or infinite value(s), "
                f"first at index {int(np.flatnonzero(bad)[0])}"
            )
        if np.ptp(v) == 0:
            # Every correlation is undefined for a constant vector.
            raise InvalidInputError(f"{name} is constant (all values {v[0]!r}); metrics are undefined")
    return y, p


def srcc(y, p) -> float:
    """Spearman rank correlation between MOS ``y [N]`` and predictions ``p [N]``."""
    y, p = _check_pair(y, p)
    return float(stats.spearmanr(y, p)[0])


def krcc(y, p) -> float:
    """Kendall rank correlation (tau-b, ties handled) between ``y [N]`` and ``p [N]``."""
    y, p = _check_pair(y, p)
    return float(stats.kendalltau(y, p, variant="b")[0])


def plcc_raw(y, p) -> float:
    """Pearson correlation between ``y [N]`` and the raw predictions ``p [N]``."""
    y, p = _check_pair(y, p)
    return float(stats.pearsonr(y, p)[0])


def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """4-parameter logistic ``f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``.

    ``x`` is any array; the result has its shape (float64).
    """
    x = np.asarray(x, dtype=np.float64)
    # exp overflows to inf far from the centre, which gives the correct limit b2.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return b2 + (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4)))


def _linear_as_logistic4(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares line ``y ~ a p + c`` expressed as logistic parameters ``[4]``."""
    a, c0 = np.polyfit(p, y, 1)
    width = LINEAR_WIDTH_FACTOR * float(np.ptp(p))
    centre = float(p.mean())
    c = a * centre + c0
    # Around its centre the logistic is b2 + (b1 - b2) (1/2 + z/4), z = (x - b3) / b4.
    return np.array([c + 2.0 * width * a, c - 2.0 * width * a, centre, width])


def _sse(params, p: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((y - logistic4(p, *params)) ** 2))


def _fit_checked(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic fit of validated ``p [N] -> y [N]`` with the documented fallback."""
    start = [float(y.max()), float(y.min()), float(p.mean()), 0.5]
    linear = _linear_as_logistic4(p, y)
    reason = None
    try:
        with warnings.catch_warnings():
            # "Covariance could not be estimated" is irrelevant: only the fit is used.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic4, p, y, p0=start, maxfev=LOGISTIC_MAXFEV)
    except RuntimeError as exc:  # raised by curve_fit when it does not converge
        reason = f"did not converge ({exc})"
    else:
        if not np.all(np.isfinite(params)) or params[3] == 0:
            reason = f"returned unusable parameters {params.tolist()}"
        elif _sse(params, p, y) > _sse(linear, p, y) * (1.0 + 1e-9):
            reason = "ended in a worse fit than a straight line (local minimum)"
    if reason is not None:
        logger.warning("4-parameter logistic fit %s; falling back to a linear mapping", reason)
        return linear
    return np.asarray(params, dtype=np.float64)


def fit_logistic4(p, y) -> np.ndarray:
    """Fit the logistic mapping from predictions ``p [N]`` to MOS ``y [N]``.

    Returns ``params [4] = (b1, b2, b3, b4)`` for :func:`logistic4`. Falls back to a
    linear mapping (encoded as logistic parameters, see the module docstring) with a
    logged warning when the fit does not converge.
    """
    y, p = _check_pair(y, p)
    return _fit_checked(p, y)


def plcc(y, p) -> float:
    """Pearson correlation between ``y [N]`` and the logistic-mapped ``p [N]``."""
    return evaluate_predictions(y, p)["plcc"]


def rmse(y, p) -> float:
    """Root-mean-square error between ``y [N]`` and the logistic-mapped ``p [N]``."""
    return evaluate_predictions(y, p)["rmse"]


def evaluate_predictions(y, p) -> dict[str, float]:
    """All metrics between MOS ``y [N]`` and predictions ``p [N]``.

    Returns a dict with exactly the keys ``srcc, krcc, plcc, plcc_raw, rmse`` (floats).
    Raises :class:`~regressors.errors.InvalidInputError` for fewer than 3 samples,
    NaN/inf values, constant inputs or mismatched lengths.
    """
    y, p = _check_pair(y, p)
    mapped = logistic4(p, *_fit_checked(p, y))
    if np.ptp(mapped) == 0:
        # Cannot happen after a successful fit of a non-constant p; guard anyway so a
        # NaN never reaches a report silently.
        raise InvalidInputError("logistic mapping collapsed to a constant; PLCC undefined")
    return {
        "srcc": float(stats.spearmanr(y, p)[0]),
        "krcc": float(stats.kendalltau(y, p, variant="b")[0]),
        "plcc": float(stats.pearsonr(y, mapped)[0]),
        "plcc_raw": float(stats.pearsonr(y, p)[0]),
        "rmse": float(np.sqrt(np.mean((y - mapped) ** 2))),
    }
