"""Labelled reads for analysts: a feature set as a pandas DataFrame or a lazy xarray Dataset.

::

    store = FeatureStore.open("features.zarr")
    df = store.to_frame("resnet50", pooling="meanmax", manifest="konvid.csv")
        # index video_id; columns mos, group, mean_resnet50_0000 .. max_resnet50_7679 (float64)
    steps = store.to_frame("resnet50", pooling=None)
        # index (video_id, step); columns resnet50_0000 .. resnet50_7679 (float32, as read)
    ds = store.to_xarray("resnet50", manifest="konvid.csv")
        # features (video, step, feature) float32, lazy (dask), NaN past each video's length;
        # length (video); mos, group (video); ds.sel(video="A001.mp4") reads that video only

Only the store's public read API is used (``resolve``, ``feature_set_info``, ``video_ids``
and :class:`feature_store.dataset.FeatureDataset`, which checks that every video is stored
with one provenance before anything is read). Pooling is :mod:`vqa_core.pooling`, the very
functions ``vqa fit`` and ``regressors.TemporalPooling`` use, in float64: a pooled frame holds
the numbers an SVR fit sees.

Memory: a pooled frame reads one video at a time (``N x D'`` float64 in the end); a frame per
step holds every step (``sum T x D`` float32); :func:`to_xarray` reads nothing when it opens
(metadata only), so a set larger than memory opens at once and is read as it is computed.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feature_store.dataset import FeatureDataset
from feature_store.errors import InvalidFeaturesError, InvalidMetadataError
from vqa_core.manifest import ManifestEntry, read_manifest
from vqa_core.pooling import POOLING_METHODS, pool_steps, pooled_names

if TYPE_CHECKING:
    import pandas
    import xarray

    from feature_store.store import FeatureStore

__all__ = ["feature_names", "to_frame", "to_xarray"]


def _entries(manifest) -> list[ManifestEntry] | None:
    """Manifest rows from a path or a sequence of :class:`ManifestEntry` (None: no manifest)."""
    if manifest is None:
        return None
    if isinstance(manifest, (str, Path)):
        return read_manifest(manifest)
    entries = list(manifest)
    if not all(isinstance(e, ManifestEntry) for e in entries):
        raise InvalidMetadataError("manifest must be a path or a sequence of vqa_core.manifest.ManifestEntry")
    return entries


def _open(store: FeatureStore, feature_set: str, manifest):
    """``(set id, spec, video ids, manifest entries, dataset, dims)``: the manifest's videos
    in its order, else the set's stored videos (sorted), checked by :class:`FeatureDataset`."""
    set_id = store.resolve(feature_set)
    entries = _entries(manifest)
    ids = [e.video_id for e in entries] if entries is not None else store.video_ids(set_id)
    dataset = FeatureDataset(store, [set_id], ids)  # every video checked before any is read
    spec = store.feature_set_info(set_id).get("spec") or {}
    dims = {dataset.shapes(i)[0][1] for i in range(len(ids))} or {int(spec.get("dims") or 0)}
    if len(dims) > 1:
        raise InvalidFeaturesError(f"videos of feature set {set_id!r} disagree in dims ({sorted(dims)}); run verify")
    return set_id, spec, ids, entries, dataset, dims.pop()


def feature_names(name: str, dims: int) -> list[str]:
    """Column names of ``dims`` features of extractor ``name``: ``<name>_<index>``, zero-padded
    (``resnet50_0000`` .. ``resnet50_7679``)."""
    width = len(str(max(dims - 1, 0)))
    return [f"{name}_{i:0{width}d}" for i in range(dims)]


def _names(set_id: str, spec: dict, dims: int) -> list[str]:
    return feature_names(spec.get("name") or set_id.split("--", 1)[0], dims)


def _labels(entries: Sequence[ManifestEntry]) -> tuple[np.ndarray, list[str | None]]:
    mos = np.array([np.nan if e.mos is None else e.mos for e in entries], dtype=np.float64)
    return mos, [e.group for e in entries]


def to_frame(store: FeatureStore, feature_set: str, *, pooling: str | None = "mean", manifest=None) -> pandas.DataFrame:
    """A feature set as a DataFrame indexed by ``video_id``.

    Args:
        store: the feature store.
        feature_set: set id, extractor name or id prefix (:meth:`FeatureStore.resolve`).
        pooling: ``"mean"``, ``"max"``, ``"meanmax"``: one row per video, float64 columns
            ``<extractor>_<i>`` (``mean_``/``max_`` prefixed for meanmax); None: one row per
            step, float32 as stored values read, with an index ``(video_id, step)``.
        manifest: a manifest path or its entries; its videos, in its order, with ``mos`` and
            ``group`` columns first (NaN / None where the manifest has none). Without it:
            every stored video of the set, sorted.

    The frame's ``attrs`` hold ``feature_set`` (the id), ``pooling`` and ``feature_columns``.

    Raises:
        FeatureNotFoundError: unknown set, or manifest videos that are not stored (all listed).
        ProvenanceMismatchError: the videos were made differently.
        InvalidMetadataError: unknown pooling (with a did-you-mean hint), or a bad manifest.
    """
    import pandas as pd

    if pooling is not None and pooling not in POOLING_METHODS:
        close = difflib.get_close_matches(str(pooling), POOLING_METHODS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise InvalidMetadataError(f"unknown pooling {pooling!r}.{hint} Known: {', '.join(POOLING_METHODS)}, None")
    set_id, spec, ids, entries, dataset, dims = _open(store, feature_set, manifest)
    names = _names(set_id, spec, dims)
    if pooling is None:
        lengths = [dataset.shapes(i)[0][0] for i in range(len(ids))]
        values = np.empty((sum(lengths), dims), dtype=np.float32)
        row = 0
        for i, length in enumerate(lengths):  # one video at a time into the preallocated block
            values[row : row + length] = dataset[i][0]
            row += length
        index = pd.MultiIndex.from_arrays(
            [
                np.repeat(np.asarray(ids, dtype=object), lengths),
                np.concatenate([np.arange(n) for n in lengths]) if lengths else np.array([], dtype=np.int64),
            ],
            names=["video_id", "step"],
        )
        columns = names
    else:
        columns = pooled_names(names, pooling)
        values = np.empty((len(ids), len(columns)), dtype=np.float64)
        for i in range(len(ids)):
            values[i] = pool_steps(dataset[i][0], pooling)
        index = pd.Index(ids, name="video_id", dtype=object)
        lengths = None
    frame = pd.DataFrame(values, index=index, columns=columns, copy=False)
    if entries is not None:
        mos, group = _labels(entries)
        if lengths is not None:
            mos, group = np.repeat(mos, lengths), [g for g, n in zip(group, lengths, strict=True) for _ in range(n)]
        frame.insert(0, "group", pd.array(group, dtype=object))
        frame.insert(0, "mos", mos)
    frame.attrs.update(feature_set=set_id, pooling=pooling, feature_columns=list(columns))
    return frame


def to_xarray(store: FeatureStore, feature_set: str, *, manifest=None) -> xarray.Dataset:
    """A feature set as a lazy xarray Dataset, dims ``(video, step, feature)``.

    Variables: ``features`` float32 ``[video, step, feature]`` backed by dask (one chunk per
    video and stored chunk), NaN past each video's length (``step`` runs to the longest
    video); ``length`` int64 ``[video]``; with a manifest also ``mos`` and ``group``
    ``[video]``. Coordinates: ``video`` (ids; ``ds.sel(video="A001.mp4")``), ``step``
    (0..), ``feature`` (0..D-1; ``ds.attrs["feature_names"]`` holds the frame's column
    names). Opening reads metadata only: nothing is read until values are computed.

    Raises:
        FeatureNotFoundError, ProvenanceMismatchError, InvalidMetadataError: as :func:`to_frame`.
    """
    import dask.array as da
    import xarray as xr

    set_id, spec, ids, entries, dataset, dims = _open(store, feature_set, manifest)
    lengths = np.array([dataset.shapes(i)[0][0] for i in range(len(ids))], dtype=np.int64)
    longest = int(lengths.max()) if ids else 0
    if ids:
        padded = [
            da.pad(
                video[0],
                ((0, longest - video[0].shape[0]), (0, 0)),
                mode="constant",
                constant_values=np.float32(np.nan),
            )
            for video in dataset.to_dask()
        ]
        data = da.stack(padded, axis=0)
    else:
        data = da.zeros((0, 0, dims), dtype=np.float32)
    variables = {"features": (("video", "step", "feature"), data), "length": (("video",), lengths)}
    if entries is not None:
        mos, group = _labels(entries)
        variables.update(mos=(("video",), mos), group=(("video",), np.array(group, dtype=object)))
    coords = {"video": np.array(ids, dtype=object), "step": np.arange(longest), "feature": np.arange(dims)}
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={"feature_set": set_id, "feature_names": _names(set_id, spec, dims), "store": store.location},
    )
