"""Temporal pooling: from per-step features or per-frame scores to one value per video.

Two families live here:

* Feature pooling turns a feature matrix ``[T, D]`` into one vector (``mean``, ``max``, or
  ``meanmax`` = mean then max, as in FMC-VQA): :func:`pool_features` for one video, and
  :class:`TemporalPooling`, the scikit-learn transformer that makes it the first step of a
  pipeline on videos (``make_pipeline(TemporalPooling("meanmax"), StandardScaler(), Ridge())``).
  The reductions themselves are :mod:`vqa_core.pooling`, shared with ``feature_store``'s
  pooled DataFrames.
* The subjectively-inspired temporal pooling of VSFA (:func:`subjective_tp_torch`,
  batched and differentiable, and :func:`subjective_tp`, its float64 numpy front end).
  One implementation of the maths: the numpy function runs the torch one in float64.

:func:`split_pooling` takes a head apart into its pooling and the rest (a pipeline that
starts with :class:`TemporalPooling`, or a head that pools inside, such as ``SVRHead``), so
that a protocol pools every video once instead of once per split; :func:`join_pooling` puts
a fitted rest back together with its pooling.

torch is imported lazily, inside the TP functions, so feature pooling (used by the SVR
head and the command line) does not pay for importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from regressors.errors import InvalidInputError
from vqa_core.pooling import REDUCTIONS, pool_steps, pooled_names, pooling_width
from vqa_core.registry import Registry

__all__ = [
    "POOLINGS",
    "POOLING_METHODS",
    "TemporalPooling",
    "is_sequence_input",
    "join_pooling",
    "pool_features",
    "split_pooling",
    "subjective_tp",
    "subjective_tp_torch",
]

#: Feature poolings by name: ``[T, D]`` float array -> ``[D']``, in the order they are listed
#: (:data:`vqa_core.pooling.REDUCTIONS`, with this package's error for unknown names).
POOLINGS: Registry = Registry("pooling method", error=InvalidInputError, sort=False)
for _name, _reduce in REDUCTIONS.items():
    POOLINGS.register(_name, _reduce)
#: Names accepted by :func:`pool_features`.
POOLING_METHODS = tuple(POOLINGS.names())
#: VSFA defaults (lidq92/VSFA ``TP``): window length and memory/current weight.
TP_TAU = 12
TP_BETA = 0.5


def pool_features(x, method: str = "mean") -> np.ndarray:
    """Pool a feature matrix over time.

    Parameters
    ----------
    x : array ``[T, D]``
        Features of one video, one row per step (T >= 1).
    method : {"mean", "max", "meanmax"}
        ``meanmax`` concatenates the mean and then the max.

    Returns
    -------
    ``[D]`` for ``mean``/``max``, ``[2D]`` for ``meanmax``; float64 unless ``x`` is
    float32, whose dtype is kept.
    """
    pool = POOLINGS.get(method)  # unknown: InvalidInputError with a "did you mean" hint
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInputError(f"features must be 2-D [T, D], got shape {x.shape}")
    if x.shape[0] == 0:
        raise InvalidInputError("features have no time steps (T = 0)")
    if x.dtype != np.float32:
        x = x.astype(np.float64, copy=False)
    return pool(x)


# ---------------------------------------------------------------------------- video inputs
def _ndim(x) -> int:
    """Dimensions of an array or of nested lists (judged by their first items)."""
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return int(ndim)
    if isinstance(x, (list, tuple)):
        return 1 + (_ndim(x[0]) if len(x) else 0)
    return 0


def is_sequence_input(X) -> bool:
    """True for videos: a 3-D array, or a sequence (list, tuple, a lazy collection) holding at
    least one 2-D ``[T, D]`` item (judged by ``ndim`` or nesting; items are not read).

    A 2-D array ``[N, D]`` is not: it means N already pooled (or one-step) videos.
    """
    if isinstance(X, np.ndarray):
        return X.ndim == 3
    if isinstance(X, Sequence) and not isinstance(X, (str, bytes)):  # lists, lazy video collections
        return any(_ndim(x) == 2 for x in X)
    return False


def _nonfinite_counts(v) -> tuple[int, int] | None:
    """``(NaN count, inf count)`` of an array, or None when it is finite."""
    if np.isfinite(v).all():
        return None
    return int(np.isnan(v).sum()), int(np.isinf(v).sum())


def _refuse_nonfinite(bad: list[tuple[int, int, int]], n: int) -> None:
    """Raise for the videos ``(index, NaN count, inf count)`` that hold non-finite values."""
    if bad:
        shown = ", ".join(f"X[{i}] has {k_nan} NaN and {k_inf} inf" for i, k_nan, k_inf in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InvalidInputError(
            f"features of {len(bad)} of {n} videos contain NaN or inf values ({shown}{more}); "
            "features must be finite: re-extract those videos"
        )


def require_finite(videos) -> None:
    """Refuse NaN/inf features with a message naming the videos (``X[i]``) that hold them."""
    bad = [(i, *counts) for i, v in enumerate(videos) if (counts := _nonfinite_counts(v)) is not None]
    _refuse_nonfinite(bad, len(videos))


def check_video(x, index: int) -> np.ndarray:
    """Validate one video's features as float64 ``[T, D]``; a 1-D vector counts as one step."""
    arr = check_array(x, ensure_2d=False, dtype=np.float64, input_name=f"X[{index}]", ensure_all_finite=False)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"X[{index}] must be a non-empty [T, D] matrix, got shape {arr.shape}")
    return arr


class TemporalPooling(TransformerMixin, BaseEstimator):
    """Pool each video's features over time: N videos ``[T_i, D]`` -> ``[N, D']`` float64.

    The first step of a scikit-learn pipeline on videos::

        make_pipeline(TemporalPooling("meanmax"), StandardScaler(), Ridge())

    Stateless (``fit`` only records ``n_features_in_``, D), so pooling the whole data set
    once and then cross-validating the rest of the pipeline gives the same result as pooling
    inside every split (:func:`split_pooling`; ``regressors.evaluate`` does that). Each
    video is converted to float64 before pooling, one video at a time.

    Parameters
    ----------
    method : {"mean", "max", "meanmax"}
        ``meanmax`` gives ``2D`` values per video: the means, then the maxima.

    Inputs
    ------
    ``X`` is a list of ``[T_i, D]`` arrays (numpy, or anything ``np.asarray`` reads: dask,
    zarr, float16 as stored), or a 3-D ``[N, T, D]`` array, or a 2-D ``[N, D]`` array,
    which means N one-step videos (each row pools to itself; twice for ``meanmax``).

    Learned attributes
    ------------------
    ``n_features_in_`` (D), ``feature_names_in_`` (a DataFrame's columns, 2-D input only).
    """

    def __init__(self, method="mean"):
        self.method = method

    def _check_method(self) -> None:
        POOLINGS.get(self.method)  # unknown: InvalidInputError with a "did you mean" hint

    def pool_one(self, x, index: int = 0) -> np.ndarray:
        """One video ``[T, D]`` (or a vector ``[D]``, one step) -> ``[D']`` float64, validated
        and checked finite; ``index`` names it in messages."""
        self._check_method()
        arr = check_video(x, index)
        counts = _nonfinite_counts(arr)
        if counts is not None:
            _refuse_nonfinite([(index, *counts)], 1)
        return pool_steps(arr, self.method)

    def _pool(self, X, *, reset: bool) -> np.ndarray:
        self._check_method()
        if is_sequence_input(X):
            if len(X) == 0:
                raise InvalidInputError("X is empty (0 videos)")
            pooled, dims, bad = [], set(), []
            for i, x in enumerate(X):  # one video in float64 at a time: memory O(N x D')
                arr = check_video(x, i)
                dims.add(arr.shape[1])
                counts = _nonfinite_counts(arr)
                if counts is not None:
                    bad.append((i, *counts))
                elif not bad:
                    pooled.append(pool_steps(arr, self.method))
            _refuse_nonfinite(bad, len(X))
            if len(dims) > 1:
                raise InvalidInputError(f"videos have different feature dims D: {sorted(dims)}")
            n_features = dims.pop()
            if reset:
                self.n_features_in_ = n_features
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif n_features != self.n_features_in_:
                raise InvalidInputError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input"
                )
            return np.stack(pooled)
        X = validate_data(self, X, dtype=np.float64, reset=reset, ensure_all_finite=False)
        require_finite(X)  # each row is one video
        return np.concatenate([X] * pooling_width(self.method), axis=1)  # pooling one step

    def fit(self, X, y=None):
        """Record ``n_features_in_`` (D) of videos ``X``; returns self. ``y`` is ignored."""
        self._pool(X, reset=True)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """``fit`` and ``transform`` in one pass over the videos: ``[N, D']`` float64."""
        return self._pool(X, reset=True)

    def transform(self, X) -> np.ndarray:
        """Pooled features ``[N, D']`` float64 of videos ``X``."""
        check_is_fitted(self, "n_features_in_")
        return self._pool(X, reset=False)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``x0 .. x{D-1}`` (or the DataFrame's columns), prefixed ``mean_``/``max_`` for meanmax."""
        check_is_fitted(self, "n_features_in_")
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", None)
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_in_)]
        elif len(input_features) != self.n_features_in_:
            raise InvalidInputError(f"input_features has {len(input_features)} names, expected {self.n_features_in_}")
        return np.asarray(pooled_names([str(n) for n in input_features], self.method), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # videos [N, T, D]
        return tags


def split_pooling(head):
    """``(pooling, rest)``: the temporal pooling a head starts with, and the head without it.

    * a :class:`~sklearn.pipeline.Pipeline` whose first step is :class:`TemporalPooling`:
      that step, and a pipeline of the remaining steps (or the single remaining estimator);
    * a head that pools inside and says how to take it apart (``head.split_pooling()``,
      e.g. ``SVRHead(pooling="mean")``): what it returns;
    * anything else: ``(None, head)``.

    Both parts are unfitted clones. Pooling is stateless, so fitting ``rest`` on
    ``pooling.fit_transform(X)`` equals fitting ``head`` on ``X``; :func:`join_pooling`
    rebuilds a head that takes videos from the fitted ``rest``.
    """
    if isinstance(head, Pipeline) and len(head.steps) > 1 and isinstance(head.steps[0][1], TemporalPooling):
        rest = head.steps[1:]
        return clone(head.steps[0][1]), clone(rest[0][1] if len(rest) == 1 else Pipeline(rest))
    split = getattr(head, "split_pooling", None)
    if callable(split):
        return split()
    return None, head


def join_pooling(pooling, fitted):
    """A fitted head that takes videos: ``fitted`` (the rest, fitted on pooled features)
    preceded by ``pooling``. Heads that pool inside rebuild themselves
    (``fitted.with_pooling(method)``); anything else becomes a pipeline.
    ``pooling=None`` returns ``fitted``."""
    if pooling is None:
        return fitted
    rebuild = getattr(fitted, "with_pooling", None)
    if callable(rebuild):
        return rebuild(pooling.method)
    steps = fitted.steps if isinstance(fitted, Pipeline) else [(type(fitted).__name__.lower(), fitted)]
    pooling = clone(pooling)
    n_pooled = getattr(fitted, "n_features_in_", None)
    if n_pooled is not None:  # fitted: what the pooling step would have recorded
        pooling.n_features_in_ = int(n_pooled) // pooling_width(pooling.method)
    return Pipeline([("temporalpooling", pooling), *steps])


def _check_tp_params(tau: int, beta: float) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, np.integer)) or tau < 1:
        raise InvalidInputError(f"tau must be a positive integer, got {tau!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise InvalidInputError(f"beta must lie in [0, 1], got {beta!r}")


def _tp_frames(q, lengths, tau: int, beta: float):
    """Per-frame pooled scores ``q' [B, T]`` (zero past each length) and mask ``[B, T]``.

    ``q [B, T]`` float tensor, ``lengths [B]`` long tensor on the same device.
    """
    import torch
    import torch.nn.functional as F

    B, T = q.shape
    steps = torch.arange(T, device=q.device)
    valid = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    # Padding may hold anything; make it finite so that no NaN reaches a gradient.
    q = torch.where(valid, q, torch.zeros((), dtype=q.dtype, device=q.device))

    # Memory l_t = min(q[t-tau+1 .. t]): +inf on the left never wins the min.
    left = F.pad(q, (tau - 1, 0), value=float("inf"))
    memory = left.unfold(1, tau, 1).amin(dim=2)  # [B, T]

    # Current m_t = softmin-weighted mean of q[t .. t+tau-1] within the valid length.
    right = F.pad(q, (0, tau - 1), value=0.0).unfold(1, tau, 1)  # [B, T, tau]
    in_seq = (steps.unsqueeze(1) + torch.arange(tau, device=q.device)).unsqueeze(0) < lengths.view(
        B, 1, 1
    )  # [B, T, tau]
    logits = torch.where(in_seq, -right, torch.full((), float("-inf"), dtype=q.dtype, device=q.device))
    # Rows past the length have no valid entry; give them finite logits (ignored later)
    # so that softmax stays finite there. softmax is the shift-stable form of
    # e^{-q_k} / sum e^{-q_k}.
    logits = torch.where(valid.unsqueeze(2), logits, torch.zeros((), dtype=q.dtype, device=q.device))
    current = (torch.softmax(logits, dim=2) * right).sum(dim=2)  # [B, T]

    frames = beta * current + (1.0 - beta) * memory
    frames = torch.where(valid, frames, torch.zeros((), dtype=q.dtype, device=q.device))
    return frames, valid


def _check_batch(q, lengths):
    import torch

    if not isinstance(q, torch.Tensor) or q.ndim != 2:
        raise InvalidInputError(f"q must be a 2-D tensor [B, T], got {getattr(q, 'shape', type(q))}")
    if not q.is_floating_point():
        raise InvalidInputError(f"q must be a floating-point tensor, got {q.dtype}")
    lengths = torch.as_tensor(lengths, device=q.device)
    if lengths.ndim != 1 or lengths.shape[0] != q.shape[0]:
        raise InvalidInputError(f"lengths must be 1-D [B] with B = {q.shape[0]}, got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex():
        raise InvalidInputError(f"lengths must be integers, got {lengths.dtype}")
    lengths = lengths.long()
    if q.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > q.shape[1]):
        raise InvalidInputError(
            f"lengths must lie in [1, T={q.shape[1]}], got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return lengths


def subjective_tp_torch(q, lengths, tau: int = TP_TAU, beta: float = TP_BETA):
    """Subjectively-inspired temporal pooling (VSFA) of a zero-padded batch.

    For each sequence b with length n = ``lengths[b]`` and frame scores ``q[b, :n]``::

        l_t  = min(q[max(0, t - tau + 1) .. t])                        (memory)
        m_t  = sum_{k=t}^{min(n-1, t+tau-1)} q_k e^{-q_k} / sum e^{-q_k}  (current)
        q'_t = beta m_t + (1 - beta) l_t
        out  = mean_{t < n} q'_t

    Padding (``t >= n``) is masked and receives zero gradient, whatever it holds.
    Differentiable with respect to ``q``; runs on ``q``'s device and dtype.

    Parameters
    ----------
    q : tensor ``[B, T]``
        Frame scores, zero-padded past each length.
    lengths : tensor or sequence ``[B]``
        True lengths, 1 <= n <= T.

    Returns
    -------
    tensor ``[B]``: pooled score per sequence.
    """
    _check_tp_params(tau, beta)
    lengths = _check_batch(q, lengths)
    frames, _ = _tp_frames(q, lengths, int(tau), float(beta))
    return frames.sum(dim=1) / lengths.to(q.dtype)


def subjective_tp(q, tau: int = TP_TAU, beta: float = TP_BETA) -> tuple[np.ndarray, float]:
    """Subjectively-inspired temporal pooling of one sequence, in float64 numpy.

    Same maths as :func:`subjective_tp_torch` (which it calls, on the CPU in float64).

    Parameters
    ----------
    q : array ``[T]``
        Frame scores, T >= 1, finite.

    Returns
    -------
    ``(frames, score)``: per-frame pooled scores ``q' [T]`` (float64) and their mean.
    """
    import torch

    _check_tp_params(tau, beta)
    arr = np.asarray(q, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise InvalidInputError(f"q must be a non-empty 1-D array [T], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("q contains NaN or infinite values")
    t = torch.from_numpy(arr).unsqueeze(0)
    lengths = torch.tensor([arr.shape[0]])
    with torch.no_grad():
        frames, _ = _tp_frames(t, lengths, int(tau), float(beta))
    frames = frames[0].numpy().copy()
    return frames, float(frames.mean())
