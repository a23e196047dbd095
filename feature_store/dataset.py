"""Training-side view of a store: several feature sets joined by video id, read lazily.

::

    store ──> FeatureDataset(store, ["resnet50--uniform-16--..", "slowfast--clips-32--.."],
                             ["A001.mp4", "A002.mp4", ...])
                 ds[i]          -> [np [T_a, D_a] float32, np [T_b, D_b] float32]  (one read)
                 ds.to_dask()   -> [[da [T_a, D_a], da [T_b, D_b]], ...]  (nothing read yet)
                 ds.stats(set)  -> (mean [D], std [D]) over every step of the set's videos,
                                   computed once and cached in the store (<set>/_stats)

Feature sets may differ in steps per video (different sampling); they are aligned by
video, not by step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from feature_store._commit import ArrayDraft
from feature_store._format import DAMAGE_ERRORS, check_one_provenance, json_sha256, now
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
)
from feature_store.store import FeatureStore

if TYPE_CHECKING:
    import dask.array

__all__ = ["FeatureDataset", "feature_stats"]

logger = logging.getLogger(__name__)

_STATS = "_stats"
_STATS_VERSION = 1


class FeatureDataset:
    """Videos x feature sets, aligned by video id; nothing is read until asked.

    Args:
        store: the feature store.
        set_ids: feature sets to join (at least one, no repeats).
        video_ids: videos, in the order of the dataset (index ``i`` is ``video_ids[i]``).

    Construction only reads metadata: it checks that every (set, video) pair is completely
    stored and that the videos of each set share one set-level provenance.

    Raises:
        FeatureNotFoundError: some (set, video) pairs are not stored; the message lists all
            of them by set, and ``missing`` holds them as ``(set_id, video_id)`` tuples.
        ProvenanceMismatchError: the videos of a set were made differently.
        InvalidMetadataError: no set ids, or a set id given twice.
    """

    def __init__(self, store: FeatureStore, set_ids: Sequence[str], video_ids: Sequence[str]):
        set_ids = list(set_ids)
        video_ids = list(video_ids)
        if not set_ids:
            raise InvalidMetadataError("FeatureDataset needs at least one feature set id")
        if len(set(set_ids)) != len(set_ids):
            raise InvalidMetadataError(f"feature set ids given twice: {set_ids}")
        self.store = store
        self.set_ids = set_ids
        self.video_ids = video_ids
        self._shapes: dict[str, list[tuple[int, int]]] = {}
        self._stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        known = set(store.feature_sets())
        missing: list[tuple[str, str]] = []
        lines: list[str] = []
        unique = list(dict.fromkeys(video_ids))
        for set_id in set_ids:
            if set_id not in known:
                missing += [(set_id, v) for v in unique]
                lines.append(
                    f"  feature set {set_id!r} does not exist (all {len(unique)} videos): "
                    + ", ".join(map(repr, unique))
                )
                continue
            metas = store.layout.videos(set_id).complete_metas(unique)
            absent = [v for v, m in metas.items() if m is None]
            if absent:
                missing += [(set_id, v) for v in absent]
                lines.append(
                    f"  feature set {set_id!r}: {len(absent)} of {len(unique)} videos: " + ", ".join(map(repr, absent))
                )
                continue
            check_one_provenance(set_id, metas)
            self._shapes[set_id] = [tuple(metas[v]["shape"]) for v in video_ids]
        if missing:
            err = FeatureNotFoundError(
                f"{len(missing)} (feature set, video) pairs are not stored in {store.location}:\n" + "\n".join(lines)
            )
            err.missing = missing
            raise err

    def __repr__(self) -> str:
        return (
            f"FeatureDataset({len(self.video_ids)} videos x {len(self.set_ids)} feature sets "
            f"{self.set_ids}, store={self.store.location!r})"
        )

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def dims(self) -> list[int]:
        """Feature dims of each set, in ``set_ids`` order (of the first video when mixed)."""
        return [self._shapes[s][0][1] if self._shapes[s] else None for s in self.set_ids]

    def shapes(self, i: int) -> list[tuple[int, int]]:
        """Shapes [steps, dims] of video ``i`` in each set, from metadata (no data read)."""
        return [self._shapes[s][i] for s in self.set_ids]

    def __getitem__(self, i: int) -> list[np.ndarray]:
        """Features of video ``i``: one float32 [steps_s, dims_s] array per set.

        Raises:
            IndexError: ``i`` out of range. TypeError: ``i`` is not an int.
            FeatureNotFoundError: the video was removed since the dataset was made.
        """
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"FeatureDataset indices are ints, got {type(i).__name__}")
        video_id = self.video_ids[i]  # IndexError, negative indices as for lists
        return [self.store.read_video(s, video_id) for s in self.set_ids]

    def to_dask(self) -> list[list[dask.array.Array]]:
        """Lazy features: ``out[i][k]`` is video ``i`` in set ``set_ids[k]``, a float32
        dask array [steps, dims] with one dask chunk per Zarr chunk. Building it reads only
        metadata; computing reads the files (do not overwrite those videos meanwhile)."""
        return [[self.store.read_video_dask(s, v) for s in self.set_ids] for v in self.video_ids]

    def stats(self, set_id: str, *, recompute: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-dim mean and std, float64 [D] each, over all steps of all complete videos of
        the set (not only this dataset's videos); see :func:`feature_stats`."""
        if set_id not in self.set_ids:
            raise FeatureNotFoundError(f"feature set {set_id!r} is not part of this dataset ({self.set_ids})")
        if recompute or set_id not in self._stats:
            self._stats[set_id] = feature_stats(self.store, set_id, recompute=recompute)
        mean, std = self._stats[set_id]
        return mean.copy(), std.copy()


def _stats_key(metas: dict[str, dict]) -> tuple[str, str]:
    """(cache key, hash of the sorted video ids). The key also covers each video's write id
    so that a replaced video invalidates the cache as an added or removed one does."""
    ids = sorted(metas)
    key = json_sha256(
        {
            "version": _STATS_VERSION,
            "videos": [
                [v, metas[v]["attributes"].get("write_id") or metas[v]["attributes"].get("written")] for v in ids
            ],
        }
    )
    return key, json_sha256(ids)


def _read_cached(store: FeatureStore, stats_key: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        arr = store.layout.open_array(stats_key)
        if arr is None or arr.attrs.get("key") != key:
            return None
        data = np.asarray(arr[...], dtype=np.float64)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return None  # absent, or being replaced right now: recompute
    except Exception:  # noqa: BLE001 -- zarr raises various errors on a damaged node
        logger.warning("cached statistics at %s are unreadable; recomputing", store.layout.fs.url(stats_key))
        return None
    if data.ndim != 2 or data.shape[0] != 2:
        return None
    return data[0], data[1]


def feature_stats(store: FeatureStore, set_id: str, *, recompute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim mean and (population, ddof=0) std of a feature set, float64 [D] each.

    Computed over every step of every complete video of the set, streaming one Zarr chunk
    at a time with float64 accumulators (Chan et al.'s pairwise update, stable for large
    means), then cached in the store as a [2, D] float64 array ``<set>/_stats`` whose
    attribute ``key`` hashes the sorted video ids and each video's write id. A later call
    returns the cache while the set's videos are unchanged; adding, removing or replacing a
    video makes it recompute. Dims with constant values get std 0: guard before dividing.

    Raises:
        FeatureNotFoundError: the set does not exist or has no complete video.
        ProvenanceMismatchError: the set's videos were made differently.
        InvalidFeaturesError: the videos disagree in dims, or one is damaged.
    """
    videos = store.layout.videos(set_id)
    metas, _incomplete = videos.video_metas()
    if not metas:
        raise FeatureNotFoundError(f"feature set {set_id!r} has no complete video")
    check_one_provenance(set_id, metas)
    dims = {m["shape"][1] for m in metas.values()}
    if len(dims) != 1:
        raise InvalidFeaturesError(f"videos of feature set {set_id!r} disagree in dims ({sorted(dims)}); run verify")
    key, ids_hash = _stats_key(metas)
    if not recompute:
        cached = _read_cached(store, _stats_node(store, set_id), key)
        if cached is not None:
            logger.debug("statistics of %s from the cache", set_id)
            return cached

    (d,) = dims
    count = 0
    mean = np.zeros(d, np.float64)
    m2 = np.zeros(d, np.float64)
    for video_id in sorted(metas):
        digest = hashlib.sha256()  # whole rows in order: the C-order bytes of the array
        expected, blocks = _blocks(videos, set_id, video_id)
        for stored in blocks:
            digest.update(np.ascontiguousarray(stored).tobytes())
            block = np.asarray(stored, dtype=np.float64)
            if not np.isfinite(block).all():
                raise InvalidFeaturesError(
                    f"{set_id} / {video_id}: NaN/Inf in stored features (a chunk file may be missing); run verify"
                )
            n_b = block.shape[0]
            mean_b = block.mean(axis=0)
            m2_b = np.square(block - mean_b).sum(axis=0)
            total = count + n_b
            delta = mean_b - mean
            mean += delta * (n_b / total)
            m2 += m2_b + np.square(delta) * (count * n_b / total)
            count = total
        if expected is not None and expected != digest.hexdigest():
            raise InvalidFeaturesError(
                f"{set_id} / {video_id}: stored data does not match its data_sha256 checksum; "
                "run verify, re-extract it with overwrite"
            )
    std = np.sqrt(m2 / count)
    logger.info("statistics of %s: %d videos, %d steps", set_id, len(metas), count)
    _write_cache(
        store,
        set_id,
        np.stack([mean, std]),
        {
            "key": key,
            "video_ids_sha256": ids_hash,
            "n_videos": len(metas),
            "n_steps": count,
            "ddof": 0,
            "rows": ["mean", "std"],
            "computed": now(),
            "version": _STATS_VERSION,
        },
    )
    return mean, std


def _blocks(videos, set_id: str, video_id: str):
    """``(data_sha256, row blocks)`` of a video (stored dtype, one chunk of rows at a time),
    with decoding errors turned into :class:`InvalidFeaturesError`."""
    try:
        expected, blocks = videos.row_blocks(video_id)
    except FeatureStoreError:
        raise  # not stored any more, or metadata zarr cannot open: as it is
    except DAMAGE_ERRORS as exc:
        raise InvalidFeaturesError(f"{set_id} / {video_id}: chunks do not decode ({exc}); run verify") from exc

    def checked():
        iterator = iter(blocks)
        while True:
            try:
                block = next(iterator)
            except StopIteration:
                return
            except DAMAGE_ERRORS as exc:
                raise InvalidFeaturesError(f"{set_id} / {video_id}: chunks do not decode ({exc}); run verify") from exc
            yield block

    return expected, checked()


def _stats_node(store: FeatureStore, set_id: str) -> str:
    return f"{store.layout.set_key(set_id)}/{_STATS}"


def _write_cache(store: FeatureStore, set_id: str, data: np.ndarray, attrs: dict) -> None:
    """Atomically put ``data`` [2, D] at ``<set>/_stats`` (replacing it) through the store's
    commit strategy: readers see the previous cache, the new one, or none (then they
    recompute); the ``key`` attribute is only in the completed node."""
    draft = ArrayDraft(data, chunks=data.shape, dimension_names=("stat", "dim"), attributes=attrs)
    try:
        store.layout.write_array(_stats_node(store, set_id), draft)
    except OSError as exc:  # a read-only store still gives statistics, just uncached
        logger.warning("could not cache statistics of %s: %s", set_id, exc)
