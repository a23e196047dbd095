"""Stage-2 library: heads on cached features, temporal pooling, metrics, protocols, reports.

The analyst's names, importable from here::

    from regressors import TemporalPooling, SVRHead, SequenceRegressor, make_head, evaluate

* heads: :class:`SVRHead` (RBF SVR on pooled features), :class:`SequenceRegressor` (VSFA GRU,
  A2INet, dual-path: torch modules on ``[T_i, D]`` sequences), :func:`make_head` and
  :data:`HEAD_PRESETS` (the papers' settings by name, as ``vqa fit --head``);
* :class:`TemporalPooling`, the scikit-learn transformer that makes pooling the first step of
  a pipeline (``make_pipeline(TemporalPooling("meanmax"), StandardScaler(), Ridge())``);
* :func:`evaluate` (a paper protocol from Python: ``evaluate(head, X, y, groups=...,
  protocol="fmc").metrics`` is ``vqa fit``'s metrics.json), :data:`PROTOCOLS`,
  :func:`evaluate_predictions` and the single metrics;
* :func:`save_head` / :func:`load_head` (JSON + ``.npz``, no pickle).

Names are imported on first use (PEP 562), so ``import regressors`` stays cheap and torch is
loaded only with the sequence heads.
"""

from __future__ import annotations

import importlib

# name -> module that defines it
_EXPORTS = {
    "SVRHead": "regressors.svr",
    "SequenceRegressor": "regressors.sequence",
    "TemporalPooling": "regressors.temporal_pooling",
    "pool_features": "regressors.temporal_pooling",
    "HEAD_PRESETS": "regressors.presets",
    "HeadPreset": "regressors.presets",
    "make_head": "regressors.presets",
    "PROTOCOLS": "regressors.protocols",
    "EvaluationResult": "regressors.protocols",
    "evaluate": "regressors.protocols",
    "plan_splits": "regressors.protocols",
    "evaluate_predictions": "regressors.metrics",
    "srcc": "regressors.metrics",
    "krcc": "regressors.metrics",
    "plcc": "regressors.metrics",
    "plcc_raw": "regressors.metrics",
    "rmse": "regressors.metrics",
    "save_head": "regressors.persistence",
    "load_head": "regressors.persistence",
    "RegressorError": "regressors.errors",
    "InvalidInputError": "regressors.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'regressors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
