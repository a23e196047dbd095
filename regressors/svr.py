"""Support-vector regression head on temporally pooled features.

::

    X: list of [T_i, D]  --TemporalPooling(pooling)-->  [N, D']  --scale X-->  RBF SVR  --unscale y-->  [N]

Pooling is the composable :class:`~regressors.temporal_pooling.TemporalPooling` step. With
``pooling="mean"`` (or ``max``, ``meanmax``) the head runs it first and takes videos; with
``pooling=None`` it takes already pooled ``[N, D']`` features, e.g. as the last step of
``make_pipeline(TemporalPooling("meanmax"), SVRHead(pooling=None))``. Both give the same
numbers: a protocol pools every video once (``SVRHead.split_pooling``) and refits only the
SVR per split, and :meth:`SVRHead.with_pooling` turns the head fitted on pooled features
back into one that takes videos (what ``vqa fit`` saves; heads saved before keep loading).

Presets (REFERENCE.md, "Evaluation"):

``fmc``  (FMC-VQA)
    StandardScaler on X and on y; RBF, epsilon 0.3, C 1, gamma 'scale'.
``bvqa`` (BVQA_Benchmark)
    MinMaxScaler on X, y unscaled; RBF, epsilon 0.1 (scikit-learn's default, which the
    benchmark uses); C in 2^1..2^10 and gamma in 2^-8..2^1 chosen by a grid search with
    ``inner_cv``-fold cross-validation on the training set only (R^2 score, as
    GridSearchCV's default in the benchmark). Unlike the benchmark's unshuffled
    ``cv=5``, the inner folds are shuffled with ``random_state`` so that the choice does
    not depend on the order of the files. An explicit ``C`` or ``gamma`` removes that
    parameter from the grid; with both given there is no search.

After ``fit`` the head keeps only plain arrays and numbers (scaler offsets and scales,
support vectors, dual coefficients, intercept, numeric gamma, y offset and scale);
``predict`` computes the RBF kernel sum from those, so a head loaded from ``head.npz``
predicts exactly like the one that was fitted (no pickle anywhere).
"""

from __future__ import annotations

import copy
import logging
from numbers import Real

import numpy as np
from joblib import parallel_config
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR
from sklearn.utils.validation import check_consistent_length, column_or_1d, validate_data

from regressors.errors import InvalidInputError, ModelFormatError, NotFittedError
from regressors.persistence import register_head
from regressors.temporal_pooling import (
    POOLINGS,
    TemporalPooling,
    is_sequence_input,
    require_finite,
)
from vqa_core.pooling import pooling_width

__all__ = ["PRESETS", "SVRHead"]

logger = logging.getLogger(__name__)

#: Defaults of each preset. ``C``/``gamma`` of None in ``grid`` mean "searched".
PRESETS = {
    "fmc": {"x_scaler": "standard", "scale_y": True, "C": 1.0, "epsilon": 0.3, "gamma": "scale"},
    "bvqa": {"x_scaler": "minmax", "scale_y": False, "C": None, "epsilon": 0.1, "gamma": None},
}
#: BVQA_Benchmark grids: np.logspace(1, 10, 10, base=2) and np.logspace(-8, 1, 10, base=2).
BVQA_C_GRID = tuple(2.0**k for k in range(1, 11))
BVQA_GAMMA_GRID = tuple(2.0**k for k in range(-8, 2))
# Rows of the kernel matrix computed at once in predict (bounds memory to ~32 MB).
_KERNEL_BLOCK_ELEMENTS = 4_000_000
_LEARNED = ("x_center_", "x_scale_", "support_vectors_", "dual_coef_", "intercept_", "gamma_")


# The video-input helpers live with the pooling; these names stay for the heads built on this one.
_is_sequence_input = is_sequence_input
_require_finite = require_finite


@register_head("svr", version=1)
class SVRHead(RegressorMixin, BaseEstimator):
    """RBF support-vector regression on temporally pooled features.

    Parameters
    ----------
    pooling : {"mean", "max", "meanmax"} or None
        Temporal pooling of each ``[T_i, D]`` input (``meanmax`` gives ``2D`` features);
        None: ``X`` is already pooled ``[N, D']`` (after a ``TemporalPooling`` step).
    preset : {"fmc", "bvqa"}
        Scaling and hyper-parameter defaults; see the module docstring.
    C, epsilon, gamma : float, float, float or {"scale", "auto"}; None
        Overrides; None keeps the preset's value (for ``bvqa``, None means "searched"
        for C and gamma).
    inner_cv : int
        Folds of the ``bvqa`` grid search (on the training set only).
    random_state : int or None
        Seeds the shuffling of the inner folds (the SVR itself is deterministic).
    n_jobs : int or None
        Parallel jobs (threads) of the grid search; -1: every core this process may use.

    Inputs
    ------
    ``X`` is a list of ``[T_i, D]`` arrays (a 3-D ``[N, T, D]`` array also works), or a
    2-D ``[N, D]`` array, which means N one-step videos (each row is a ``[1, D]``
    sequence, so its pooling is the row itself, duplicated for ``meanmax``); with
    ``pooling=None`` only the 2-D form, the pooled features themselves. ``y [N]``.

    Learned attributes
    ------------------
    ``n_features_in_`` (D), ``x_center_``/``x_scale_`` ``[D']`` (X_scaled = (X - center) /
    scale), ``support_vectors_ [S, D']``, ``dual_coef_ [S]``, ``intercept_``, ``gamma_``,
    ``C_``, ``epsilon_``, ``y_center_``/``y_scale_`` (y = f * scale + center), and
    ``best_params_`` (the grid-search choice, or None).
    """

    def __init__(
        self,
        pooling="mean",
        preset="fmc",
        C=None,
        epsilon=None,
        gamma=None,
        inner_cv=5,
        random_state=0,
        n_jobs=None,
    ):
        self.pooling = pooling
        self.preset = preset
        self.C = C
        self.epsilon = epsilon
        self.gamma = gamma
        self.inner_cv = inner_cv
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ inputs
    def _features(self, X, *, reset: bool, y=None):
        """Pool and validate ``X``; returns ``(X_pooled [N, D'], y [N] or None)``."""
        if y is None and reset:
            # Same wording as scikit-learn so that its estimator checks recognise it.
            raise InvalidInputError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if is_sequence_input(X):
            if self.pooling is None:
                raise InvalidInputError(
                    f"{type(self).__name__}(pooling=None) takes pooled [N, D] features, got videos [T_i, D]: "
                    "set pooling='mean' (or 'max', 'meanmax'), or put TemporalPooling before it"
                )
            pooling = TemporalPooling(self.pooling)
            pooled = pooling.fit_transform(X)  # validates, one video in float64 at a time
            if reset:
                self.n_features_in_ = pooling.n_features_in_
            elif pooling.n_features_in_ != self.n_features_in_:
                raise InvalidInputError(
                    f"X has {pooling.n_features_in_} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input"
                )
            if y is not None:
                y = column_or_1d(y, warn=True).astype(np.float64)
                check_consistent_length(pooled, y)
                if not np.all(np.isfinite(y)):
                    raise InvalidInputError("y contains NaN or inf values")
            return pooled, y
        if reset:
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, ensure_all_finite=False)
        else:
            X = validate_data(self, X, dtype=np.float64, reset=False, ensure_all_finite=False)
        _require_finite(X)  # each row is one video
        if self.pooling == "meanmax":
            X = np.concatenate([X, X], axis=1)  # mean and max of a single step
        return X, y

    # ------------------------------------------------------------------ pooling as a step
    def split_pooling(self):
        """``(TemporalPooling(pooling), unfitted copy of this head with pooling=None)``, or
        ``(None, self)`` without pooling (:func:`regressors.temporal_pooling.split_pooling`)."""
        if self.pooling is None:
            return None, self
        POOLINGS.get(self.pooling)  # unknown: InvalidInputError with a "did you mean" hint
        return TemporalPooling(self.pooling), clone(self).set_params(pooling=None)

    def with_pooling(self, method: str):
        """This head, fitted with ``pooling=None`` on ``TemporalPooling(method)`` features, as a
        fitted head with ``pooling=method`` that takes videos and predicts the same values.

        Returns a new head (this one is not changed).
        """
        self._check_fitted()
        if self.pooling is not None:
            raise InvalidInputError(
                f"with_pooling needs a head fitted with pooling=None, this one pools {self.pooling!r}"
            )
        POOLINGS.get(method)
        width = pooling_width(method)
        if self.n_features_in_ % width:
            raise InvalidInputError(f"{self.n_features_in_} pooled features cannot come from {method!r} pooling")
        head = copy.deepcopy(self)
        head.pooling = method
        head.n_features_in_ = self.n_features_in_ // width
        if hasattr(head, "feature_names_in_"):
            del head.feature_names_in_
        return head

    def _settings(self) -> dict:
        """Preset values with the overrides applied; validates the parameters."""
        if self.preset not in PRESETS:
            raise InvalidInputError(f"unknown preset {self.preset!r}, expected one of {sorted(PRESETS)}")
        if self.pooling is not None:
            POOLINGS.get(self.pooling)  # unknown: InvalidInputError with a "did you mean" hint
        cfg = dict(PRESETS[self.preset])
        for name in ("C", "epsilon", "gamma"):
            value = getattr(self, name)
            if value is not None:
                cfg[name] = value
        if cfg["C"] is not None and not (isinstance(cfg["C"], Real) and cfg["C"] > 0):
            raise InvalidInputError(f"C must be a positive number, got {cfg['C']!r}")
        if not (isinstance(cfg["epsilon"], Real) and cfg["epsilon"] >= 0):
            raise InvalidInputError(f"epsilon must be a number >= 0, got {cfg['epsilon']!r}")
        g = cfg["gamma"]
        if g is not None and g not in ("scale", "auto") and not (isinstance(g, Real) and g > 0):
            raise InvalidInputError(f"gamma must be 'scale', 'auto' or a positive number, got {g!r}")
        return cfg

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fit on ``X`` (list of ``[T_i, D]`` or ``[N, D]``) and MOS ``y [N]``; returns self."""
        cfg = self._settings()
        Xp, y = self._features(X, reset=True, y=y)
        n = Xp.shape[0]
        if n < 2:
            raise InvalidInputError(f"SVRHead needs at least 2 videos to fit, got n_samples={n}")

        scaler = StandardScaler() if cfg["x_scaler"] == "standard" else MinMaxScaler()
        scaler.fit(Xp)
        if cfg["x_scaler"] == "standard":
            x_center, x_scale = scaler.mean_, scaler.scale_
        else:
            # MinMaxScaler: X * scale_ + min_ == (X - data_min_) / (1 / scale_); zero range -> 1.
            x_center, x_scale = scaler.data_min_, 1.0 / scaler.scale_
        Xs = (Xp - x_center) / x_scale
        if cfg["scale_y"]:
            y_scaler = StandardScaler().fit(y[:, None])
            y_center, y_scale = float(y_scaler.mean_[0]), float(y_scaler.scale_[0])
        else:
            y_center, y_scale = 0.0, 1.0
        ys = (y - y_center) / y_scale

        best = None
        if cfg["C"] is None or cfg["gamma"] is None:
            best = self._grid_search(Xs, ys, cfg)
            cfg.update(best)
        gamma = self._numeric_gamma(cfg["gamma"], Xs)
        svr = SVR(kernel="rbf", C=float(cfg["C"]), epsilon=float(cfg["epsilon"]), gamma=gamma)
        svr.fit(Xs, ys)

        self.x_center_ = np.asarray(x_center, dtype=np.float64).copy()
        self.x_scale_ = np.asarray(x_scale, dtype=np.float64).copy()
        self.support_vectors_ = np.ascontiguousarray(svr.support_vectors_, dtype=np.float64)
        self.dual_coef_ = np.asarray(svr.dual_coef_, dtype=np.float64).ravel().copy()
        self.intercept_ = float(svr.intercept_[0])
        self.gamma_ = float(gamma)
        self.C_ = float(cfg["C"])
        self.epsilon_ = float(cfg["epsilon"])
        self.y_center_ = y_center
        self.y_scale_ = y_scale
        self.best_params_ = best
        logger.debug(
            "SVRHead fitted: %d videos, %d features, %d support vectors, C=%g gamma=%g",
            n,
            Xp.shape[1],
            self.support_vectors_.shape[0],
            self.C_,
            self.gamma_,
        )
        return self

    @staticmethod
    def _numeric_gamma(gamma, Xs: np.ndarray) -> float:
        """Resolve 'scale'/'auto' exactly as scikit-learn's SVR does, on scaled X."""
        if gamma == "scale":
            var = Xs.var()
            return 1.0 / (Xs.shape[1] * var) if var != 0 else 1.0
        if gamma == "auto":
            return 1.0 / Xs.shape[1]
        return float(gamma)

    def _grid_search(self, Xs: np.ndarray, ys: np.ndarray, cfg: dict) -> dict:
        grid = {}
        if cfg["C"] is None:
            grid["C"] = list(BVQA_C_GRID)
        else:
            grid["C"] = [float(cfg["C"])]
        if cfg["gamma"] is None:
            grid["gamma"] = list(BVQA_GAMMA_GRID)
        else:
            grid["gamma"] = [self._numeric_gamma(cfg["gamma"], Xs)]
        folds = self.inner_cv
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise InvalidInputError(f"inner_cv must be an integer >= 2, got {folds!r}")
        if Xs.shape[0] < 2 * folds:
            raise InvalidInputError(
                f"grid search with inner_cv={folds} needs at least {2 * folds} training videos, got {Xs.shape[0]}"
            )
        cv = KFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        search = GridSearchCV(SVR(kernel="rbf", epsilon=float(cfg["epsilon"])), grid, cv=cv, n_jobs=self.n_jobs)
        # Threads: libsvm releases the GIL and draws no random numbers for SVR, so candidates run
        # side by side, deterministically, sharing Xs, and no worker processes outlive the search.
        with parallel_config(backend="threading"):
            search.fit(Xs, ys)
        best = {k: float(v) for k, v in search.best_params_.items()}
        logger.info("SVRHead grid search chose C=%g gamma=%g", best["C"], best["gamma"])
        return best

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        missing = [a for a in _LEARNED if not hasattr(self, a)]
        if missing:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit() first")

    def predict(self, X) -> np.ndarray:
        """Predict MOS for ``X`` (list of ``[T_i, D]`` or ``[N, D]``); returns ``[N]`` float64.

        The RBF kernel sum ``sum_s a_s exp(-gamma |x - sv_s|^2) + b`` is computed from the
        stored arrays only, then mapped back to the MOS scale.
        """
        self._check_fitted()
        Xp, _ = self._features(X, reset=False)
        Xs = (Xp - self.x_center_) / self.x_scale_
        sv = self.support_vectors_
        sv_sq = np.einsum("ij,ij->i", sv, sv)
        out = np.empty(Xs.shape[0], dtype=np.float64)
        block = max(1, _KERNEL_BLOCK_ELEMENTS // max(1, sv.shape[0]))
        for start in range(0, Xs.shape[0], block):
            xb = Xs[start : start + block]
            # |x - s|^2 = |x|^2 + |s|^2 - 2 x.s, as libsvm computes it; clip rounding below 0.
            sq = np.einsum("ij,ij->i", xb, xb)[:, None] + sv_sq[None, :] - 2.0 * (xb @ sv.T)
            np.maximum(sq, 0.0, out=sq)
            out[start : start + block] = np.exp(-self.gamma_ * sq) @ self.dual_coef_
        return (out + self.intercept_) * self.y_scale_ + self.y_center_

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict, dict]:
        """``(meta, arrays)`` for :func:`regressors.persistence.save_head`."""
        self._check_fitted()
        meta = {
            "params": self.get_params(deep=False),
            "n_features_in": int(self.n_features_in_),
            "intercept": self.intercept_,
            "gamma": self.gamma_,
            "C": self.C_,
            "epsilon": self.epsilon_,
            "y_center": self.y_center_,
            "y_scale": self.y_scale_,
            "best_params": self.best_params_,
        }
        arrays = {
            "x_center": self.x_center_,
            "x_scale": self.x_scale_,
            "support_vectors": self.support_vectors_,
            "dual_coef": self.dual_coef_,
        }
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict) -> SVRHead:
        """Inverse of :meth:`_state`."""
        head = cls(**meta["params"])
        head.n_features_in_ = int(meta["n_features_in"])
        head.intercept_ = float(meta["intercept"])
        head.gamma_ = float(meta["gamma"])
        head.C_ = float(meta["C"])
        head.epsilon_ = float(meta["epsilon"])
        head.y_center_ = float(meta["y_center"])
        head.y_scale_ = float(meta["y_scale"])
        head.best_params_ = meta.get("best_params")
        head.x_center_ = np.asarray(arrays["x_center"], dtype=np.float64)
        head.x_scale_ = np.asarray(arrays["x_scale"], dtype=np.float64)
        head.support_vectors_ = np.asarray(arrays["support_vectors"], dtype=np.float64)
        head.dual_coef_ = np.asarray(arrays["dual_coef"], dtype=np.float64)
        n_pooled = head.x_center_.shape[0]
        if (
            head.x_scale_.shape != (n_pooled,)
            or head.support_vectors_.ndim != 2
            or head.support_vectors_.shape[1] != n_pooled
            or head.dual_coef_.shape != (head.support_vectors_.shape[0],)
        ):
            raise ModelFormatError(
                f"array shapes disagree: x_center {head.x_center_.shape}, x_scale "
                f"{head.x_scale_.shape}, support_vectors {head.support_vectors_.shape}, "
                f"dual_coef {head.dual_coef_.shape}"
            )
        # Tampered or damaged values that would give NaN/inf or misaligned predictions.
        expected = head.n_features_in_ * (pooling_width(head.pooling) if head.pooling else 1)
        if n_pooled != expected:
            raise ModelFormatError(
                f"x_center has {n_pooled} features, the head declares n_features_in "
                f"{head.n_features_in_} ({expected} after {head.pooling!r} pooling)"
            )
        if not np.all(head.x_scale_ > 0):
            raise ModelFormatError(f"x_scale must be positive; {int(np.sum(~(head.x_scale_ > 0)))} entries are not")
        for key in ("y_scale_", "gamma_"):
            if not getattr(head, key) > 0:
                raise ModelFormatError(f"{key.rstrip('_')} must be positive, got {getattr(head, key)}")
        return head
