"""RBF support-vector regression that scales: Nystroem features + a linear epsilon-SVR.

The exact head (:class:`regressors.svr.SVRHead`, libsvm) costs about n^2 kernel rows: 27 s at
4,000 videos of 4,096 dims, 105 s at 8,000, about 21 min at LSVQ's 28,000. This head solves
the same epsilon-insensitive problem with the same scaling, C, epsilon and gamma, but with the
RBF kernel replaced by its rank-m Nystroem approximation ``K ~ K_NL K_LL^+ K_LN`` over ``m``
landmarks ``L`` (training videos drawn at random), which turns it into a linear SVR on ``m``
features::

    X [N, D']  --scale (as SVRHead)-->  Xs [N, D'] float32
      --k(x, L) K_LL^-1/2-->  Z [N, r]          (r <= m: eigenvalues of K_LL above 1e-6 x the largest)
      --liblinear L1-loss epsilon-SVR (dual CD)-->  w [r], b
    f(x) = sum_j beta_j exp(-gamma |x - l_j|^2) + b,   beta = K_LL^-1/2 w   [m]

The fitted head is therefore an RBF kernel expansion over the ``m`` landmarks, stored in the
attributes of ``SVRHead`` (``support_vectors_`` = landmarks, ``dual_coef_`` = beta): it
predicts, saves and loads through the same code. Costs: O(N m D') for the kernel rows plus
O(m^3) for ``K_LL``, then O(N m) per liblinear pass; memory O(N D') float32 for the scaled
features and O(N m) float64 for Z (liblinear keeps a second copy). At 28,000 x 4,096 with
m = 2,048: about 0.46 GB (Xs) + 0.46 GB (Z) + 0.92 GB (liblinear's copy); measured peak RSS
2.4 GiB with the float32 data, fit in 1-3 min on 2 cores (``bench/svr_scale.py``).

Differences from the exact SVR, all small on data whose kernel spectrum decays
(``bench/svr_scale.py`` measures them): the kernel is rank m; liblinear penalises the
intercept like a weight, so y is re-centred on the intercept found and fitted again (up to 4
fits); liblinear stops after ``max_iter`` passes (logged when it does). With m >= N the
kernel is exact and the predictions are libsvm's to about 1e-3.
"""

from __future__ import annotations

import logging
import time
import warnings
from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy.linalg import eigh
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import KFold
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import LinearSVR
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from regressors.errors import InvalidInputError, ModelFormatError
from regressors.persistence import register_head
from regressors.svr import BVQA_C_GRID, BVQA_GAMMA_GRID, SVRHead
from regressors.temporal_pooling import is_sequence_input, require_finite

__all__ = ["DEFAULT_N_COMPONENTS", "EXACT_SVR_MAX_VIDEOS", "NystroemSVRHead", "scalable_svr_preset"]

logger = logging.getLogger(__name__)

#: Landmarks of the Nystroem approximation by default (fit at 28,000 x 4,096: about 2 GB).
DEFAULT_N_COMPONENTS = 2048
#: Videos in a fit above which ``svr`` and ``svr-bvqa`` switch to their Nystroem presets:
#: an exact fit of 5,000 x 4,096 takes about 45 s on one core and grows as n^2.
EXACT_SVR_MAX_VIDEOS = 5000
#: Exact preset -> its scalable counterpart (same scaling, C, epsilon, gamma and grid).
SCALABLE_PRESETS = {"svr": "svr-fast", "svr-bvqa": "svr-bvqa-fast"}
# Eigenvalues of K_LL below this fraction of the largest are dropped (their inverse square
# roots would amplify float32 rounding in the kernel rows).
_EIG_RCOND = 1e-6
# Rows per block when scaling X and computing kernel rows (bounds temporaries to a few MB x m).
_ROW_BLOCK = 2048
# liblinear fits of the final model at most (see _linear_svr: re-centring for the intercept).
_MAX_FITS = 4


def scalable_svr_preset(name: str, *, n_videos: int, max_exact: int | None = None) -> str | None:
    """The Nystroem preset that replaces the exact SVR preset ``name`` for a fit on ``n_videos``.

    Returns ``"svr-fast"`` / ``"svr-bvqa-fast"`` when ``name`` is ``"svr"`` / ``"svr-bvqa"`` and
    ``n_videos > max_exact`` (default :data:`EXACT_SVR_MAX_VIDEOS`); None otherwise (keep
    ``name``). ``vqa fit`` decides once per run, on all its videos, so that every split and the
    saved model use the same head.
    """
    limit = EXACT_SVR_MAX_VIDEOS if max_exact is None else max_exact
    if name in SCALABLE_PRESETS and n_videos > limit:
        return SCALABLE_PRESETS[name]
    return None


def _row_blocks(n: int):
    for start in range(0, n, _ROW_BLOCK):
        yield slice(start, min(n, start + _ROW_BLOCK))


@register_head("svr-nystroem", version=1)
class NystroemSVRHead(SVRHead):
    """RBF epsilon-SVR through a rank-m Nystroem approximation; see the module docstring.

    Parameters
    ----------
    pooling, preset, C, epsilon, gamma, inner_cv, random_state
        As :class:`~regressors.svr.SVRHead` (same presets, same grid for ``bvqa``).
        ``random_state`` also draws the landmarks and seeds liblinear's coordinate order.
    n_components : int
        Landmarks m (capped at the number of training videos, where the kernel is exact).
    max_iter, tol : int, float
        liblinear's passes and stopping tolerance; a fit that stops at ``max_iter`` says so
        in the log and in ``converged_``.
    n_jobs : int or None
        Parallel jobs (processes) of the ``bvqa`` grid search, one per (inner fold, gamma);
        joblib semantics: None is 1, -1 is every core this process may use (affinity and
        cgroup quota respected), capped at the number of tasks.

    Inputs are those of ``SVRHead``; a 2-D float32 ``[N, D]`` array is used without a float64 copy.

    Learned attributes
    ------------------
    Those of ``SVRHead`` (``support_vectors_ [m, D']`` are the landmarks, ``dual_coef_ [m]``
    their weights), plus ``n_components_`` (m used), ``rank_`` (r), ``n_iter_`` (liblinear
    passes of the final fit, re-centring fits included) and ``converged_``.
    """

    def __init__(
        self,
        pooling="mean",
        preset="fmc",
        C=None,
        epsilon=None,
        gamma=None,
        n_components=DEFAULT_N_COMPONENTS,
        max_iter=1000,
        tol=1e-4,
        inner_cv=5,
        random_state=0,
        n_jobs=None,
    ):
        super().__init__(
            pooling=pooling,
            preset=preset,
            C=C,
            epsilon=epsilon,
            gamma=gamma,
            inner_cv=inner_cv,
            random_state=random_state,
            n_jobs=n_jobs,
        )
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol

    # ------------------------------------------------------------------ inputs
    def _features(self, X, *, reset: bool, y=None):
        """As ``SVRHead._features``, but a 2-D float32 ``X`` stays float32 (no 2x copy)."""
        if is_sequence_input(X) or y is None and reset:
            return super()._features(X, reset=reset, y=y)
        dtypes = (np.float32, np.float64)
        if reset:
            X, y = validate_data(self, X, y, dtype=dtypes, y_numeric=True, ensure_all_finite=False)
            y = np.asarray(y, dtype=np.float64)
        else:
            X = validate_data(self, X, dtype=dtypes, reset=False, ensure_all_finite=False)
        require_finite(X)  # each row is one video
        if self.pooling == "meanmax":
            X = np.concatenate([X, X], axis=1)  # mean and max of a single step
        return X, y

    def _check_solver_params(self) -> None:
        m = self.n_components
        if isinstance(m, bool) or not isinstance(m, Integral) or m < 1:
            raise InvalidInputError(f"n_components must be a positive integer, got {m!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, Integral) or self.max_iter < 1:
            raise InvalidInputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.tol, Real) and self.tol > 0):
            raise InvalidInputError(f"tol must be a positive number, got {self.tol!r}")

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fit on ``X`` (list of ``[T_i, D]`` or ``[N, D]``) and MOS ``y [N]``; returns self."""
        start = time.perf_counter()
        cfg = self._settings()
        self._check_solver_params()
        Xp, y = self._features(X, reset=True, y=y)
        n = Xp.shape[0]
        if n < 2:
            raise InvalidInputError(f"{type(self).__name__} needs at least 2 videos to fit, got n_samples={n}")

        # Scaler statistics in float64 (partial_fit per block: no float64 copy of X).
        scaler = StandardScaler() if cfg["x_scaler"] == "standard" else MinMaxScaler()
        for rows in _row_blocks(n):
            scaler.partial_fit(Xp[rows])
        if cfg["x_scaler"] == "standard":
            x_center, x_scale = scaler.mean_, scaler.scale_
        else:
            x_center, x_scale = scaler.data_min_, 1.0 / scaler.scale_  # zero range -> 1, as SVRHead
        Xs = np.empty(Xp.shape, dtype=np.float32)
        for rows in _row_blocks(n):
            Xs[rows] = (Xp[rows] - x_center) / x_scale
        del Xp
        if cfg["scale_y"]:
            y_scaler = StandardScaler().fit(y[:, None])
            y_center, y_scale = float(y_scaler.mean_[0]), float(y_scaler.scale_[0])
        else:
            y_center, y_scale = 0.0, 1.0
        ys = (y - y_center) / y_scale

        best = None
        # liblinear warns at max_iter; candidates of the grid would flood the output, so the
        # final fit's outcome is logged once below (and kept in converged_).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if cfg["C"] is None or cfg["gamma"] is None:
                best = self._grid_search(Xs, ys, cfg)
                cfg.update(best)
            gamma = self._numeric_gamma(cfg["gamma"], Xs)
            fitted = _fit_nystroem_svr(
                Xs,
                ys,
                gamma=gamma,
                C=float(cfg["C"]),
                epsilon=float(cfg["epsilon"]),
                n_components=self.n_components,
                max_iter=self.max_iter,
                tol=self.tol,
                seed=self._seed(),
            )
        landmarks, beta, intercept, rank, n_iter, converged = fitted

        self.x_center_ = np.asarray(x_center, dtype=np.float64).copy()
        self.x_scale_ = np.asarray(x_scale, dtype=np.float64).copy()
        self.support_vectors_ = np.ascontiguousarray(landmarks, dtype=np.float64)
        self.dual_coef_ = beta
        self.intercept_ = intercept
        self.gamma_ = float(gamma)
        self.C_ = float(cfg["C"])
        self.epsilon_ = float(cfg["epsilon"])
        self.y_center_ = y_center
        self.y_scale_ = y_scale
        self.best_params_ = best
        self.n_components_ = int(landmarks.shape[0])
        self.rank_ = int(rank)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        if not converged:
            logger.warning(
                "Nystroem SVR: liblinear stopped at max_iter=%d before reaching tol=%g "
                "(C=%g); raise max_iter for a closer match to the exact SVR",
                self.max_iter,
                self.tol,
                self.C_,
            )
        logger.info(
            "Nystroem SVR fitted in %.1f s: %d videos, %d features, %d landmarks (rank %d), "
            "C=%g gamma=%g, %d liblinear passes",
            time.perf_counter() - start,
            n,
            Xs.shape[1],
            self.n_components_,
            self.rank_,
            self.C_,
            self.gamma_,
            self.n_iter_,
        )
        return self

    def _seed(self) -> int:
        """One integer seed from ``random_state`` (landmarks and liblinear's order)."""
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _grid_search(self, Xs: np.ndarray, ys: np.ndarray, cfg: dict) -> dict:
        """The BVQA grid (C x gamma) by inner K-fold R^2, as ``SVRHead``, on Nystroem fits.

        One task per (fold, gamma) builds that fold's features once and fits every C on them;
        tasks run in ``n_jobs`` processes.
        """
        Cs = list(BVQA_C_GRID) if cfg["C"] is None else [float(cfg["C"])]
        gammas = list(BVQA_GAMMA_GRID) if cfg["gamma"] is None else [self._numeric_gamma(cfg["gamma"], Xs)]
        folds = self.inner_cv
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise InvalidInputError(f"inner_cv must be an integer >= 2, got {folds!r}")
        if Xs.shape[0] < 2 * folds:
            raise InvalidInputError(
                f"grid search with inner_cv={folds} needs at least {2 * folds} training videos, got {Xs.shape[0]}"
            )
        splits = list(KFold(n_splits=folds, shuffle=True, random_state=self.random_state).split(Xs))
        tasks = [(f, g) for f in range(len(splits)) for g in range(len(gammas))]
        n_jobs = max(1, min(effective_n_jobs(self.n_jobs), len(tasks)))
        # Processes, not threads: liblinear draws its coordinate order from one process-wide
        # generator, so threads would make the result depend on timing. joblib memory-maps Xs
        # for the workers and gives each a share of the BLAS threads.
        kw = {
            "Cs": Cs,
            "epsilon": float(cfg["epsilon"]),
            "n_components": self.n_components,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "seed": self._seed(),
        }
        results = Parallel(n_jobs=n_jobs)(
            delayed(_score_cs)(Xs, ys, splits[f][0], splits[f][1], gamma=gammas[g], **kw) for f, g in tasks
        )
        scores = np.zeros((len(splits), len(Cs), len(gammas)))
        for (fold, g), (per_c, _) in zip(tasks, results, strict=True):
            scores[fold, :, g] = per_c
        stopped = sum(r[1] for r in results)
        if stopped:
            logger.info(
                "Nystroem SVR grid search: %d of %d inner fits stopped at max_iter=%d (large C)",
                stopped,
                scores.size,
                self.max_iter,
            )
        mean = scores.mean(axis=0)
        # First best in GridSearchCV's candidate order (C outer, gamma inner).
        c_best, g_best = np.unravel_index(int(np.argmax(mean)), mean.shape)
        best = {"C": float(Cs[c_best]), "gamma": float(gammas[g_best])}
        logger.info(
            "Nystroem SVR grid search (%d candidates x %d folds, %d jobs) chose C=%g gamma=%g",
            len(Cs) * len(gammas),
            len(splits),
            n_jobs,
            best["C"],
            best["gamma"],
        )
        return best

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict, dict]:
        meta, arrays = super()._state()
        meta.update(
            n_components_used=self.n_components_, rank=self.rank_, n_iter=self.n_iter_, converged=self.converged_
        )
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict) -> NystroemSVRHead:
        head = super()._from_state(meta, arrays)  # shapes, scales, gamma checked there
        head.n_components_ = int(meta["n_components_used"])
        head.rank_ = int(meta["rank"])
        head.n_iter_ = int(meta["n_iter"])
        head.converged_ = bool(meta["converged"])
        if head.support_vectors_.shape[0] != head.n_components_ or not 1 <= head.rank_ <= head.n_components_:
            raise ModelFormatError(
                f"{head.support_vectors_.shape[0]} landmarks stored, the head declares "
                f"{head.n_components_} (rank {head.rank_})"
            )
        return head


# ---------------------------------------------------------------------- the numerics
def _nystroem_map(Xs: np.ndarray, *, gamma: float, n_components: int, seed: int):
    """Landmarks ``L [m, D']`` (rows of ``Xs``) and the map ``N [m, r]`` with Z = k(X, L) N."""
    n = Xs.shape[0]
    m = min(int(n_components), n)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    landmarks = Xs[idx]
    k_ll = rbf_kernel(landmarks.astype(np.float64), gamma=gamma)  # float64: its small eigenvalues matter
    evals, evecs = eigh(k_ll)
    keep = evals > evals[-1] * _EIG_RCOND
    return landmarks, evecs[:, keep] / np.sqrt(evals[keep])


def _features_z(Xs: np.ndarray, landmarks: np.ndarray, proj: np.ndarray, *, gamma: float) -> np.ndarray:
    """Nystroem features ``Z [N, r]`` float64 (C order, as liblinear takes it without a copy).

    Kernel rows in float32 (``|x|^2 + |l|^2 - 2 x.l`` with one sgemm per block: 5x faster than
    scikit-learn's float64-upcasting ``rbf_kernel``, within ~1e-6 of it), projected in float64.
    """
    xs = np.asarray(Xs, dtype=np.float32)
    lm = np.asarray(landmarks, dtype=np.float32)
    lm_sq = np.einsum("ij,ij->i", lm, lm)
    z = np.empty((xs.shape[0], proj.shape[1]), dtype=np.float64)
    for rows in _row_blocks(xs.shape[0]):
        xb = xs[rows]
        sq = np.einsum("ij,ij->i", xb, xb)[:, None] + lm_sq[None, :] - 2.0 * (xb @ lm.T)
        np.maximum(sq, 0.0, out=sq)  # rounding can go below 0
        z[rows] = np.exp(-np.float32(gamma) * sq) @ proj
    return z


def _linear_svr(
    z: np.ndarray,
    y: np.ndarray,
    *,
    C: float,
    epsilon: float,
    max_iter: int,
    tol: float,
    seed: int,
    recentre: bool = True,
) -> tuple[np.ndarray, float, int, bool]:
    """L1-loss epsilon-SVR on ``z``; returns ``(w [r], b, liblinear passes, converged)``.

    libsvm's intercept is free; liblinear's is penalised like a weight, so it captures only a
    fraction of the offset it should (w bends to make up the rest). ``y`` is therefore centred
    on its mean and, with ``recentre``, fitted again centred on the intercept found so far
    until the penalised part is below 1e-3 of y's spread (at most :data:`_MAX_FITS` fits; the
    shortfall shrinks geometrically, so from the second fit on the offset jumps to the limit
    of that sequence). With a landmark per video this gives libsvm's predictions to about
    1e-3; the grid search ranks candidates with one fit each.
    Stopping at ``max_iter`` is what scikit-learn's ConvergenceWarning reports; it is returned
    instead (callers silence the warning: they may run in threads, where catching it is unsafe).
    """
    offset, previous, passes, converged = float(np.mean(y)), None, 0, True
    close_enough = 1e-3 * max(float(np.std(y)), np.finfo(np.float64).tiny)
    svr = LinearSVR(
        C=C, epsilon=epsilon, loss="epsilon_insensitive", dual=True, tol=tol, max_iter=max_iter, random_state=seed
    )
    for _ in range(_MAX_FITS if recentre else 1):
        svr.fit(z, y - offset)
        passes += int(svr.n_iter_)
        converged &= int(svr.n_iter_) < max_iter
        b = float(svr.intercept_[0])
        if abs(b) <= close_enough:
            break
        ratio = b / previous if previous else 0.0
        offset, previous = offset + (b / (1.0 - ratio) if 0.0 < ratio < 1.0 else b), b
    return svr.coef_, b + offset, passes, converged


def _fit_nystroem_svr(Xs, ys, *, gamma, C, epsilon, n_components, max_iter, tol, seed):
    """Fit on scaled ``Xs [N, D']`` and ``ys [N]``; returns ``(landmarks, beta [m], intercept,
    rank, passes, converged)``: ``f(x) = sum_j beta_j k(x, l_j) + intercept``."""
    landmarks, proj = _nystroem_map(Xs, gamma=gamma, n_components=n_components, seed=seed)
    z = _features_z(Xs, landmarks, proj, gamma=gamma)
    w, b, n_iter, converged = _linear_svr(z, ys, C=C, epsilon=epsilon, max_iter=max_iter, tol=tol, seed=seed)
    return landmarks, proj @ w, b, proj.shape[1], n_iter, converged


def _score_cs(Xs, ys, train, val, *, gamma, Cs, epsilon, n_components, max_iter, tol, seed):
    """Validation R^2 of a Nystroem SVR fitted on rows ``train`` for each C in ``Cs`` (features
    built once), and how many of those fits stopped at ``max_iter``."""
    X_train, y_train, X_val, y_val = Xs[train], ys[train], Xs[val], ys[val]
    landmarks, proj = _nystroem_map(X_train, gamma=gamma, n_components=n_components, seed=seed)
    z_train = _features_z(X_train, landmarks, proj, gamma=gamma)
    z_val = _features_z(X_val, landmarks, proj, gamma=gamma)
    scores, stopped = [], 0
    with warnings.catch_warnings():  # counted instead; one task at a time per worker process
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in Cs:
            w, b, _, converged = _linear_svr(
                z_train, y_train, C=C, epsilon=epsilon, max_iter=max_iter, tol=tol, seed=seed, recentre=False
            )
            scores.append(float(r2_score(y_val, z_val @ w + b)))
            stopped += not converged
    return scores, stopped
