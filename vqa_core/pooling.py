"""Temporal pooling of one video's features, ``[T, D] -> [D']``: the one implementation.

``feature_store`` (pooled DataFrames for analysts) and ``regressors`` (the ``TemporalPooling``
transformer, the SVR heads) both pool with these functions, so a frame an analyst reads and
the features ``vqa fit`` trains on are the same numbers. Each package checks the method name
and raises its own error; here an unknown name is a ``KeyError`` of :data:`REDUCTIONS`.

``mean`` and ``max`` give ``D`` values, ``meanmax`` the mean then the max (``2D``, FMC-VQA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["POOLING_METHODS", "REDUCTIONS", "pool_steps", "pooled_names", "pooling_width"]

#: Pooling methods by name: ``[T, D]`` array -> ``[D * width]``, in the order they are listed.
REDUCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=0),
    "max": lambda x: x.max(axis=0),
    "meanmax": lambda x: np.concatenate([x.mean(axis=0), x.max(axis=0)]),
}
POOLING_METHODS = tuple(REDUCTIONS)
# Output values per input feature.
_WIDTH = {"mean": 1, "max": 1, "meanmax": 2}


def pool_steps(x: np.ndarray, method: str) -> np.ndarray:
    """Pool a validated ``[T, D]`` array (T >= 1) over its steps; returns ``[D * width]`` float64.

    Computed in float64 whatever the input dtype (float16 as stored, float32 as read), so
    every caller gets the same numbers.
    """
    return REDUCTIONS[method](np.asarray(x, dtype=np.float64))


def pooling_width(method: str) -> int:
    """Pooled values per feature: 1 (``mean``, ``max``) or 2 (``meanmax``)."""
    return _WIDTH[method]


def pooled_names(names: Sequence[str], method: str) -> list[str]:
    """Names of the pooled values of features ``names``: unchanged for ``mean``/``max``;
    ``mean_<name>`` then ``max_<name>`` for ``meanmax`` (the order of :func:`pool_steps`)."""
    if method == "meanmax":
        return [f"mean_{n}" for n in names] + [f"max_{n}" for n in names]
    return list(names)
