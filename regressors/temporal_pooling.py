"""Temporal pooling: from per-step features or per-frame scores to one value per video.

Two families live here:

* :func:`pool_features` turns a feature matrix ``[T, D]`` into one vector (``mean``,
  ``max``, or ``meanmax`` = mean then max, as in FMC-VQA), for heads like the SVR.
* The subjectively-inspired temporal pooling of VSFA (:func:`subjective_tp_torch`,
  batched and differentiable, and :func:`subjective_tp`, its float64 numpy front end).
  One implementation of the maths: the numpy function runs the torch one in float64.

torch is imported lazily, inside the TP functions, so feature pooling (used by the SVR
head and the command line) does not pay for importing torch.
"""

from __future__ import annotations

import numpy as np

from regressors.errors import InvalidInputError
from vqa_core.registry import Registry

__all__ = ["POOLINGS", "POOLING_METHODS", "pool_features", "subjective_tp", "subjective_tp_torch"]

#: Feature poolings by name: ``[T, D]`` float array -> ``[D']``, in the order they are listed.
POOLINGS: Registry = Registry("pooling method", error=InvalidInputError, sort=False)
POOLINGS.register("mean", lambda x: x.mean(axis=0))
POOLINGS.register("max", lambda x: x.max(axis=0))
POOLINGS.register("meanmax", lambda x: np.concatenate([x.mean(axis=0), x.max(axis=0)]))
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
        raise InvalidInputError(
            f"lengths must be 1-D [B] with B = {q.shape[0]}, got shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex():
        raise InvalidInputError(f"lengths must be integers, got {lengths.dtype}")
    lengths = lengths.long()
    if q.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > q.shape[1]):
        raise InvalidInputError(
            f"lengths must lie in [1, T={q.shape[1]}], got min {int(lengths.min())}, "
            f"max {int(lengths.max())}"
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
