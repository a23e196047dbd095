"""Features for ``vqa fit`` and ``vqa predict``: read from the store once, in bounded memory.

Memory model (docs/analysis.md, "Memory"):

* Every video is read from the store exactly once per fit (decompression and checksum once),
  one video at a time, through :class:`feature_store.FeatureDataset` (several feature sets are
  aligned to the first set's steps with ``regressors.a2inet.align_steps``).
* Heads that pool (the SVR family, or any head that starts with ``TemporalPooling``) pool each
  video as it is read: what stays in memory is the pooled matrix, ``N x D'`` float64
  (5,000 videos x 7,680 dims: 0.3 GB), and every split and the final fit work on it.
* Sequence heads get the videos written, as read and in the store's dtype (float16 stays
  float16), to one flat cache file in the run's state folder (``OUT/fit-checkpoints/``,
  removed with it). Each batch reads its videos back with ``os.preadv`` into fresh arrays and
  converts them to float32 (``regressors.batching``): peak memory is one batch, whatever the
  number of videos; the file's pages live in the kernel's page cache, not in the process
  (no memory map, so they never count as its resident memory). The disk needed is the
  uncompressed size of the features in the stored dtype; a fit that lacks it is refused
  before anything is read.
* Prediction reads each video once, lazily, as the head asks for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from feature_store import FeatureDataset, FeatureStore
from regressors.a2inet import align_steps

from .errors import FlowError

log = logging.getLogger(__name__)

__all__ = ["FeatureCache", "StoredVideos", "feature_set_identity", "pool_videos"]


def feature_set_identity(store: FeatureStore, set_id: str) -> dict:
    """What a fit records about a feature set: its id, spec and sampling."""
    info = store.feature_set_info(set_id)
    return {"id": set_id, "spec": info["spec"], "sampling": info["sampling"]}


class _StoredVideo:
    """One video of a :class:`StoredVideos`, read from the store when converted to an array."""

    __slots__ = ("_owner", "_index", "shape")
    ndim = 2
    dtype = np.dtype(np.float32)  # what reads return; lets np.iscomplexobj & co. answer without a read

    def __init__(self, owner: StoredVideos, index: int, shape: tuple[int, int]):
        self._owner, self._index, self.shape = owner, index, shape

    def __array__(self, dtype=None, copy=None):
        arr = self._owner.read(self._index)
        return arr if dtype is None else arr.astype(dtype, copy=False)


class StoredVideos(Sequence):
    """The manifest's videos in one or more feature sets, lazily: ``videos[i]`` has a ``shape``
    ``(T, sum D)`` from metadata and is read from the store (float32) only when converted with
    ``np.asarray``. Construction checks that every (set, video) is stored with one provenance.

    Several sets are joined along the feature axis; when their step counts differ (128 frames
    vs 32 SlowFast steps per clip) each is resampled to the first set's count by nearest
    neighbour on normalised time (``regressors.a2inet.align_steps``).
    """

    def __init__(self, store: FeatureStore, set_ids: Sequence[str], video_ids: Sequence[str]):
        self.dataset = FeatureDataset(store, list(set_ids), list(video_ids))
        self.cache_dtype = "float32"  # what a FeatureCache of these videos stores (set by the caller)
        self.set_ids = list(set_ids)
        self.video_ids = list(video_ids)
        self._items = []
        for i in range(len(self.video_ids)):
            shapes = self.dataset.shapes(i)
            self._items.append(_StoredVideo(self, i, (int(shapes[0][0]), int(sum(s[1] for s in shapes)))))

    def read(self, i: int) -> np.ndarray:
        """Video ``i`` as float32 ``[T, sum D]`` (one read per feature set)."""
        arrays = self.dataset[i]
        return align_steps(arrays) if len(arrays) > 1 else arrays[0]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]


def pool_videos(videos: StoredVideos, pooling, *, progress: bool = False) -> np.ndarray:
    """Read every video once and pool it as it is read: ``[N, D']`` float64.

    ``pooling`` is a ``regressors.temporal_pooling.TemporalPooling``; memory is the result
    plus one video.
    """
    out = None
    for i in tqdm(
        range(len(videos)),
        desc="reading and pooling features",
        unit="video",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    ):
        row = pooling.pool_one(videos.read(i), i)
        if out is None:
            out = np.empty((len(videos), row.shape[0]), dtype=np.float64)
        out[i] = row
    return out


class _CachedVideo:
    """One video in a :class:`FeatureCache` file: ``shape`` without reading; ``np.asarray``
    reads it back (``os.preadv`` into a new array, so nothing stays mapped)."""

    __slots__ = ("_cache", "_offset", "shape")
    ndim = 2

    def __init__(self, cache: FeatureCache, offset: int, shape: tuple[int, int]):
        self._cache, self._offset, self.shape = cache, offset, shape

    @property
    def dtype(self) -> np.dtype:
        return self._cache.dtype

    def __array__(self, dtype=None, copy=None):
        arr = self._cache.read(self._offset, self.shape)
        return arr if dtype is None else arr.astype(dtype, copy=False)


class FeatureCache(Sequence):
    """Videos written once to a flat file in their stored dtype, read back per batch.

    ``FeatureCache.build(videos, path, dtype=...)`` reads every video of a :class:`StoredVideos`
    once; the cache is then a sequence of items with ``shape``/``dtype`` that
    ``np.asarray`` reads from the file. Use it as a context manager (or call :meth:`close`);
    deleting the file is the caller's business (it lives in the run's state folder).
    """

    def __init__(self, path: Path, dtype: np.dtype, entries: list[tuple[int, tuple[int, int]]]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._items = [_CachedVideo(self, offset, shape) for offset, shape in entries]

    @classmethod
    def build(
        cls,
        videos: StoredVideos,
        path: Path,
        *,
        dtype,
        progress: bool = False,
        on_video: Callable[[int], None] | None = None,
    ) -> FeatureCache:
        """Write ``videos`` (each read once from the store) to ``path`` as ``dtype``.

        Raises:
            FlowError: the folder lacks the disk space the cache needs.
        """
        dtype = np.dtype(dtype)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        need = sum(int(np.prod(v.shape)) for v in videos) * dtype.itemsize
        free = shutil.disk_usage(path.parent).free
        if need > free:
            raise FlowError(
                f"the fit caches its features uncompressed ({need / 2**30:.1f} GiB as {dtype.name}) in "
                f"{path.parent}, which has {free / 2**30:.1f} GiB free; free space or choose another --out"
            )
        entries, offset = [], 0
        with open(path, "wb") as fh:
            for i in tqdm(
                range(len(videos)),
                desc="reading features",
                unit="video",
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ):
                arr = np.ascontiguousarray(videos.read(i), dtype=dtype)  # float32 from float16: exact back
                fh.write(memoryview(arr).cast("B"))
                entries.append((offset, (int(arr.shape[0]), int(arr.shape[1]))))
                offset += arr.nbytes
                if on_video is not None:
                    on_video(i)
        log.info("cached %d videos (%.1f MiB as %s) in %s", len(entries), offset / 2**20, dtype.name, path)
        return cls(path, dtype, entries)

    def read(self, offset: int, shape: tuple[int, int]) -> np.ndarray:
        arr = np.empty(shape, dtype=self.dtype)
        view = memoryview(arr).cast("B")
        done = 0
        while done < arr.nbytes:  # preadv may return less than asked
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise FlowError(f"the feature cache {self.path} is truncated (deleted while the fit ran?)")
            done += n
        return arr

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
