"""Support-vector regression head on temporally pooled features.

::

    X: list of [T_i, D]  --pool_features(pooling)-->  [N, D']  --scale X-->  RBF SVR  --unscale y-->  [N]

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

import logging
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR
from sklearn.utils.validation import check_array, check_consistent_length, column_or_1d, validate_data

from regressors.errors import InvalidInputError, ModelFormatError, NotFittedError
from regressors.persistence import register_head
from regressors.temporal_pooling import POOLINGS, pool_features

__all__ = ["PRESETS", "SVRHead"]

logger = logging.getLogger(__name__)

#: Defaults of each preset. ``C``/``gamma`` of None in ``grid`` mean "searched".
PRESETS = {
    "fmc": {"x_scaler": "standard", "scale_y": True, "C": 1.0, "epsilon": 0.3, "gamma": "scale"},
    "bvqa": {"x_scaler": "minmax", "scale_y": False, "C": None, "epsilon": 0.1, "gamma": None},
}
#: BVQA_Benchmark grids: np.logspace(1, 10, 10, base=2) and np.logspace(-8, 1, 10, base=2).
BVQA_C_GRID = tuple(2.0 ** k for k in range(1, 11))
BVQA_GAMMA_GRID = tuple(2.0 ** k for k in range(-8, 2))
# Rows of the kernel matrix computed at once in predict (bounds memory to ~32 MB).
_KERNEL_BLOCK_ELEMENTS = 4_000_000
_LEARNED = ("x_center_", "x_scale_", "support_vectors_", "dual_coef_", "intercept_", "gamma_")


def _ndim(x) -> int:
    """Dimensions of an array or of nested lists (judged by their first items)."""
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return int(ndim)
    if isinstance(x, (list, tuple)):
        return 1 + (_ndim(x[0]) if len(x) else 0)
    return 0


def _is_sequence_input(X) -> bool:
    """True for a 3-D array or a list/tuple holding at least one 2-D ``[T, D]`` item."""
    if isinstance(X, np.ndarray):
        return X.ndim == 3
    if isinstance(X, (list, tuple)):
        return any(_ndim(x) == 2 for x in X)
    return False


def _require_finite(videos) -> None:
    """Refuse NaN/inf features with a message naming the videos (``X[i]``) that hold them."""
    bad = [(i, int(np.isnan(v).sum()), int(np.isinf(v).sum()))
           for i, v in enumerate(videos) if not np.isfinite(v).all()]
    if bad:
        shown = ", ".join(f"X[{i}] has {n} NaN and {k} inf" for i, n, k in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InvalidInputError(
            f"features of {len(bad)} of {len(videos)} videos contain NaN or inf values ({shown}{more}); "
            "features must be finite: re-extract those videos"
        )


def _check_sequence(x, index: int) -> np.ndarray:
    """Validate one video's features; a 1-D vector counts as one step ``[1, D]``."""
    arr = check_array(x, ensure_2d=False, dtype=np.float64, input_name=f"X[{index}]", ensure_all_finite=False)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"X[{index}] must be a non-empty [T, D] matrix, got shape {arr.shape}")
    return arr


@register_head("svr", version=1)
class SVRHead(RegressorMixin, BaseEstimator):
    """RBF support-vector regression on temporally pooled features.

    Parameters
    ----------
    pooling : {"mean", "max", "meanmax"}
        Temporal pooling of each ``[T_i, D]`` input (``meanmax`` gives ``2D`` features).
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
        Parallel jobs of the grid search.

    Inputs
    ------
    ``X`` is a list of ``[T_i, D]`` arrays (a 3-D ``[N, T, D]`` array also works), or a
    2-D ``[N, D]`` array, which means N one-step videos (each row is a ``[1, D]``
    sequence, so its pooling is the row itself, duplicated for ``meanmax``). ``y [N]``.

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
            raise InvalidInputError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        if _is_sequence_input(X):
            seqs = [_check_sequence(x, i) for i, x in enumerate(X)]
            if not seqs:
                raise InvalidInputError("X is empty (0 videos)")
            _require_finite(seqs)
            dims = {s.shape[1] for s in seqs}
            if len(dims) > 1:
                raise InvalidInputError(f"videos have different feature dims D: {sorted(dims)}")
            n_features = dims.pop()
            if reset:
                self.n_features_in_ = n_features
            elif n_features != self.n_features_in_:
                raise InvalidInputError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input"
                )
            pooled = np.stack([pool_features(s, self.pooling) for s in seqs])
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

    def _settings(self) -> dict:
        """Preset values with the overrides applied; validates the parameters."""
        if self.preset not in PRESETS:
            raise InvalidInputError(f"unknown preset {self.preset!r}, expected one of {sorted(PRESETS)}")
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
            n, Xp.shape[1], self.support_vectors_.shape[0], self.C_, self.gamma_,
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
                f"grid search with inner_cv={folds} needs at least {2 * folds} training videos, "
                f"got {Xs.shape[0]}"
            )
        cv = KFold(n_splits=folds, shuffle=True, random_state=self.random_state)
        search = GridSearchCV(
            SVR(kernel="rbf", epsilon=float(cfg["epsilon"])), grid, cv=cv, n_jobs=self.n_jobs
        )
        search.fit(Xs, ys)
        best = {k: float(v) for k, v in search.best_params_.items()}
        logger.info("SVRHead grid search chose C=%g gamma=%g", best["C"], best["gamma"])
        return best

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        missing = [a for a in _LEARNED if not hasattr(self, a)]
        if missing:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call fit() first"
            )

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
            xb = Xs[start:start + block]
            # |x - s|^2 = |x|^2 + |s|^2 - 2 x.s, as libsvm computes it; clip rounding below 0.
            sq = np.einsum("ij,ij->i", xb, xb)[:, None] + sv_sq[None, :] - 2.0 * (xb @ sv.T)
            np.maximum(sq, 0.0, out=sq)
            out[start:start + block] = np.exp(-self.gamma_ * sq) @ self.dual_coef_
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
        return head

