"""Video collections in, padded batches out: what the sequence heads read their features through.

::

    X: N videos, each [T_i, D]  (numpy, dask, zarr, nested lists; checked by shape, not read)
        |  Batcher.read: one video as float32 [T, D] (np.asarray materialises dask/zarr items)
        |  standardise (optional; per-dim mean/std of the training steps, Batcher.feature_stats)
        v
    x [B, T_max, D] float32 zero-padded past each length, lengths [B] int64 (torch, on the device)

Reading is synchronous (no prefetching); :attr:`Batcher.wait_seconds` adds up the time spent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import column_or_1d

from regressors.errors import InvalidInputError
from regressors.metrics import _as_vector

__all__ = ["Batcher", "MIN_STD", "check_source", "check_y", "chunks"]

#: Feature dims whose training std is below this are left unscaled (std 1), not blown up.
MIN_STD = 1e-12


def _item_shape(item, index: int, where: str) -> tuple[int, int]:
    """``(T, D)`` of one video without reading it when it has a ``shape`` (dask, zarr)."""
    shape = getattr(item, "shape", None)
    if shape is None:
        shape = np.shape(item)  # nested lists: small, materialising them is harmless
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        shape = (1,) + shape  # a vector is a one-step video
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise InvalidInputError(f"{where}[{index}] must be a non-empty [T, D] matrix, got shape {shape}")
    return shape


def check_source(X, where: str):
    """Validate a video collection; returns ``(source, lengths [N] int64, D)``.

    ``X`` is anything with ``len()`` and ``X[i]`` giving ``[T_i, D]`` (a list of numpy or
    dask arrays, a 3-D array); a 2-D array means N one-step videos. Refused with
    scikit-learn's wording (its estimator checks test it): sparse matrices, complex values,
    a 1-D array (one video's vector: reshape it), zero features.
    """
    if sp.issparse(X):
        raise InvalidInputError(f"{where} is a sparse matrix; sparse input is not supported: pass dense arrays")
    if not isinstance(X, np.ndarray) and hasattr(X, "__array__"):
        X = np.asarray(X)  # one array-like (a DataFrame, sklearn's _NotAnArray), not a collection of videos
    if isinstance(X, np.ndarray):
        if np.iscomplexobj(X):
            raise InvalidInputError(f"Complex data not supported: {where} has dtype {X.dtype}")
        if X.ndim == 1:
            raise InvalidInputError(
                f"Expected 2D array, got 1D array instead: {where} has shape {X.shape}. Reshape your data: "
                "[N, D] for N one-step videos, or a list of [T_i, D] arrays"
            )
        if X.ndim == 2 and X.shape[1] == 0:
            raise InvalidInputError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if isinstance(X, np.ndarray) and X.ndim == 2:
        X = X[:, None, :]
    if isinstance(X, (str, bytes)) or not (hasattr(X, "__len__") and hasattr(X, "__getitem__")):
        raise InvalidInputError(
            f"{where} must be a sequence of [T_i, D] arrays (list, 3-D array), got {type(X).__name__}"
        )
    n = len(X)
    if n == 0:
        raise InvalidInputError(f"{where} is empty (0 videos)")
    shapes = [_item_shape(X[i], i, where) for i in range(n)]
    dims = {d for _, d in shapes}
    if len(dims) > 1:
        raise InvalidInputError(f"{where}: videos have different feature dims D: {sorted(dims)}")
    return X, np.array([t for t, _ in shapes], dtype=np.int64), dims.pop()


def check_y(y, n: int, where: str) -> np.ndarray:
    """MOS as float64 ``[n]`` (a column ``[n, 1]`` is accepted, with scikit-learn's
    DataConversionWarning), finite."""
    if y is None:
        raise InvalidInputError(f"this head requires y to be passed, but the target y is None ({where})")
    if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    y = _as_vector(y, where)
    if y.shape[0] != n:
        raise InvalidInputError(f"{where} must be 1-D with {n} entries (one per video), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise InvalidInputError(f"{where} contains NaN or infinite values")
    return y


class Batcher:
    """Reads, standardises and pads batches; adds the time spent to ``wait_seconds``."""

    def __init__(self, dims: int, mean=None, std=None):
        self.dims = dims
        self.mean = mean
        self.std = std
        self.wait_seconds = 0.0

    def read(self, source, i: int, where: str) -> np.ndarray:
        """One video as float32 ``[T, D]`` (np.asarray materialises dask/zarr items)."""
        item = source[i]
        if np.iscomplexobj(item):
            raise InvalidInputError(f"Complex data not supported: {where}[{i}] has complex values")
        arr = np.asarray(item, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dims or arr.shape[0] < 1:
            raise InvalidInputError(f"{where}[{i}] has shape {arr.shape}, expected [T, {self.dims}]")
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"{where}[{i}] contains NaN or infinite values")
        return arr

    def batch(self, source, idx, where: str, device):
        """``(x [B, T_max, D] float32, lengths [B] int64)`` tensors on ``device``."""
        start = time.perf_counter()
        items = [self.read(source, int(i), where) for i in idx]
        lengths = np.array([a.shape[0] for a in items], dtype=np.int64)
        x = np.zeros((len(items), int(lengths.max()), self.dims), dtype=np.float32)
        for b, arr in enumerate(items):
            if self.mean is not None:
                arr = (arr - self.mean) / self.std
            x[b, : arr.shape[0]] = arr  # zero padding past the length
        self.wait_seconds += time.perf_counter() - start
        return torch.from_numpy(x).to(device), torch.from_numpy(lengths).to(device)

    def feature_stats(self, source, idx, where: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dim mean and population std over every step of the videos ``idx``.

        Streams one video at a time (Chan et al.'s pairwise merge), so memory stays at
        one video whatever the data set size.
        """
        start = time.perf_counter()
        count = 0
        mean = np.zeros(self.dims, dtype=np.float64)
        m2 = np.zeros(self.dims, dtype=np.float64)
        for i in idx:
            arr = self.read(source, int(i), where).astype(np.float64)
            n_b = arr.shape[0]
            mean_b = arr.mean(axis=0)
            delta = mean_b - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += ((arr - mean_b) ** 2).sum(axis=0) + delta**2 * (count * n_b / total)
            count = total
        std = np.sqrt(m2 / count)
        std[std < MIN_STD] = 1.0
        self.wait_seconds += time.perf_counter() - start
        return mean.astype(np.float32), std.astype(np.float32)


def chunks(idx: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``idx`` of ``size`` entries (the last may be shorter)."""
    for start in range(0, idx.shape[0], size):
        yield idx[start : start + size]
