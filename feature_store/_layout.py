"""Where feature sets and videos are in a store's files: the node-level interface that
:class:`~feature_store.store.FeatureStore`, verify, maintenance, transfer, migrate and
dataset share.

:class:`StoreLayout` (one per store) knows the feature sets: a Zarr group per set at
``encode_node_name(set_id)``. Each set keeps its videos in one of two layouts, named by its
``"layout"`` group attribute, behind one per-set interface (:meth:`StoreLayout.videos`):

* ``"nodes"`` (:class:`NodeVideos`; format 1, the default): one Zarr array per video at
  ``<set node>/encode_node_name(video_id)``, written and removed through the store's commit
  strategy (:mod:`feature_store._commit`); 5 filesystem entries per video.
* ``"packed"`` (:class:`feature_store._packs.PackedVideos`; format 2): videos appended as
  records to a few segment files; about 0 entries per video (docs/store_layout.md).

The :class:`StoreLayout` methods that take ``(set_id, video_id)`` dispatch to the set's
layout. Not public API: users go through ``FeatureStore``.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import zarr

from feature_store._commit import ArrayDraft, commit_for, with_attributes
from feature_store._format import (
    DAMAGE_ERRORS,
    META,
    PACKED,
    REMOVING,
    STAGING,
    WRITING,
    attributes,
    chunk_shape,
    codec,
    is_complete,
    live_set,
    parse_meta,
    read_meta,
    set_layout,
    stored_data_problem,
)
from feature_store._fs import FsspecFS, LocalFS
from feature_store._naming import encode_node_name, may_be_running
from feature_store._packs import PackedVideos, duplicate_node
from feature_store.errors import FeatureNotFoundError, InvalidMetadataError

__all__ = ["NodeVideos", "StoreLayout"]

logger = logging.getLogger(__name__)


class StoreLayout:
    """One group per feature set in the filesystem ``fs``; each set's videos in its layout.

    Attributes:
        fs: the store's filesystem layer (:mod:`feature_store._fs`).
        commit: its commit strategy (:func:`feature_store._commit.commit_for`).
    """

    def __init__(self, fs: LocalFS | FsspecFS) -> None:
        self.fs = fs
        self.commit = commit_for(fs)

    # ------------------------------------------------------------------ keys

    def set_key(self, set_id: str) -> str:
        return encode_node_name(set_id)

    def video_key(self, set_id: str, video_id: str) -> str:
        """The node of a video in a ``"nodes"`` set."""
        return f"{self.set_key(set_id)}/{encode_node_name(video_id)}"

    def read_meta(self, key: str) -> dict | None:
        """Parsed ``zarr.json`` at ``key`` (``""``: the root); None if absent or unreadable."""
        return read_meta(self.fs, key)

    # ------------------------------------------------------------------ feature sets

    def feature_sets(self) -> list[str]:
        """Ids of all live feature sets, sorted (damaged or half-removed ones left out)."""
        ids = []
        nodes = [e.name for e in self.fs.list("") if e.is_dir and not e.name.startswith(("_", "."))]
        for name, raw in self.fs.read_many([f"{n}/{META}" for n in nodes]).items():
            attrs = attributes(parse_meta(raw))
            set_id = attrs.get("id")
            node = name[: -len(META) - 1]
            if isinstance(set_id, str) and encode_node_name(set_id) == node and live_set(attrs):
                ids.append(set_id)
        return sorted(ids)

    def set_attrs(self, set_id: str) -> dict:
        """Attributes of an existing feature set.

        Raises:
            FeatureNotFoundError: no such set (with "did you mean" hints), or it is being
                removed.
            InvalidMetadataError: its ``zarr.json`` is damaged or describes another set.
        """
        key = self.set_key(set_id)
        raw = self.fs.read_bytes(f"{key}/{META}")
        attrs = attributes(parse_meta(raw))
        if attrs.get("id") == set_id and live_set(attrs):
            return attrs
        if raw is not None and attrs.get("id") == set_id and attrs.get("status") == REMOVING:
            raise FeatureNotFoundError(
                f"feature set {set_id!r} in {self.fs.location} is being removed (if that "
                "removal was killed, remove() with its full id or remove_incomplete() "
                "finishes it)"
            )
        if raw is not None:
            raise InvalidMetadataError(
                f"feature set {set_id!r} in {self.fs.location} has damaged metadata: "
                f"{self.fs.url(f'{key}/{META}')} does not describe it (hand-edited or corrupt); "
                "repair or remove that folder"
            )
        ids = self.feature_sets()
        close = difflib.get_close_matches(str(set_id), ids, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise FeatureNotFoundError(
            f"no feature set {set_id!r} in {self.fs.location}.{hint} "
            "(use resolve() for names and prefixes; ensure_feature_set() creates sets)"
        )

    def videos(self, set_id: str, attrs: dict | None = None) -> NodeVideos | PackedVideos:
        """The videos of an existing set, in its layout (``attrs``: its attributes, if the
        caller has just read them).

        Raises:
            FeatureNotFoundError, InvalidMetadataError: as :meth:`set_attrs`.
        """
        if attrs is None:
            attrs = self.set_attrs(set_id)
        if set_layout(attrs) == PACKED:
            return PackedVideos(self.fs, set_id, self.set_key(set_id))
        return NodeVideos(self, set_id)

    def create_set(self, set_id: str, group_attributes: dict) -> bool:
        """Create a feature set's group unless one is there; True if this call created it."""
        return self.commit.create_group(self.set_key(set_id), group_attributes)

    def write_set_attrs(self, set_id: str, new_attributes: dict) -> None:
        """Replace a set's group attributes (one atomic replace or PUT of its ``zarr.json``)."""
        key = f"{self.set_key(set_id)}/{META}"
        self.fs.write_bytes(key, with_attributes(self.fs.read_bytes(key), new_attributes))

    def removal_pending(self, set_id: str) -> bool:
        """Whether a removal of the set began and was not finished (object stores)."""
        return self.set_key(set_id) in self.commit.pending_removals()

    def remove_set(self, set_id: str) -> None:
        """Remove a feature set with all its videos (or finish a killed removal)."""
        self.commit.remove_node(self.set_key(set_id))

    # ------------------------------------------------------------------ videos (dispatched)

    def complete_meta(self, set_id: str, video_id: str) -> dict | None:
        """Metadata of a completely stored video; None if it is absent or incomplete."""
        return self.videos(set_id).complete_meta(video_id)

    def video_metas(self, set_id: str) -> tuple[dict[str, dict], int]:
        """Complete videos' metadata by id, and the number of incomplete nodes or records."""
        return self.videos(set_id).video_metas()

    def open_video(self, set_id: str, video_id: str) -> zarr.Array:
        """The Zarr array of a complete video (read-only).

        Raises:
            FeatureNotFoundError: the set or the (complete) video does not exist.
            InvalidMetadataError: zarr cannot open the array (malformed metadata).
        """
        return self.videos(set_id).open_video(video_id)

    def damaged(self, set_id: str, video_id: str, what: str) -> InvalidMetadataError:
        """The error for a stored video that cannot be read as it was written."""
        try:
            where = self.videos(set_id).where(video_id)
        except FeatureNotFoundError:
            where = self.fs.url(self.set_key(set_id))
        return InvalidMetadataError(
            f"video {video_id!r} of feature set {set_id!r} is damaged ({where}: {what}); re-extract it with overwrite"
        )

    def read_stored(self, set_id: str, video_id: str) -> tuple[np.ndarray | None, str | None]:
        """All of a complete video, [steps, dims] in its stored dtype, and why it is damaged
        (None when sound); see :meth:`NodeVideos.read_stored`."""
        return self.videos(set_id).read_stored(video_id)

    def has_video_node(self, set_id: str, video_id: str) -> bool:
        """Whether a node (complete or not) is in place for the video (packed: stored)."""
        return self.videos(set_id).has_node(video_id)

    def remove_video(self, set_id: str, video_id: str) -> bool:
        """Remove a video; False if it was already gone."""
        return self.videos(set_id).remove(video_id)

    # ------------------------------------------------------------------ arrays of the store's own

    def open_array(self, key: str) -> zarr.Array | None:
        """A committed array of the store's own (``<set>/_stats``), or None if it has no
        metadata. zarr's errors for damaged arrays propagate."""
        if self.fs.read_bytes(f"{key}/{META}") is None:
            return None  # never written (zarr's errors for an absent node differ between stores)
        return zarr.open_array(store=self.fs.zarr_store(key, read_only=True), mode="r", zarr_format=3)

    def write_array(self, key: str, draft: ArrayDraft) -> None:
        """Commit an array of the store's own at ``key``, replacing what is there."""
        self.commit.write_array(key, draft, overwrite=True)

    # ------------------------------------------------------------------ leftovers

    def remove_incomplete(self, *, min_age_s: float) -> int:
        """See :meth:`feature_store.store.FeatureStore.remove_incomplete`."""
        removed = 0
        now = time.time()
        set_ids = self.feature_sets()
        staging_dirs = [STAGING] + [f"{self.set_key(s)}/{STAGING}" for s in set_ids]
        root_inits = [e.name for e in self.fs.list("") if e.name.startswith(".init.")]
        entries = root_inits + [f"{d}/{e.name}" for d in staging_dirs for e in self.fs.list(d) if e.name != META]
        for key in entries:
            owner = key.rsplit("/", 1)[-1].lstrip(".")
            if may_be_running(owner, partial(self.fs.mtime, key), now=now, min_age_s=min_age_s):
                logger.debug("keeping %s: its writer may still run", self.fs.url(key))
                continue
            self.fs.rmtree(key)
            removed += 1
        for set_id in set_ids:
            set_key = self.set_key(set_id)
            try:
                videos = self.videos(set_id)
            except FeatureNotFoundError:
                continue  # removed meanwhile
            packed_metas = videos.video_metas()[0] if isinstance(videos, PackedVideos) else None
            for entry in self.fs.list(set_key):
                if entry.name.startswith("_") or entry.name == META or not entry.is_dir:
                    continue
                key = f"{set_key}/{entry.name}"
                meta = self.read_meta(key)
                if packed_metas is not None and duplicate_node(meta, packed_metas):
                    self.commit.remove_node(key)  # a copy of a packed video (a killed migration)
                    removed += 1
                    continue
                if meta is not None and (meta.get("node_type") != "array" or is_complete(meta)):
                    continue  # (complete nodes in a packed set: `vqa store migrate` takes them in)
                if self.commit.in_flight(key, meta, now=now, min_age_s=min_age_s):
                    logger.debug("keeping %s: its writer may still run", self.fs.url(key))
                    continue
                self.commit.remove_node(key)
                removed += 1
            if isinstance(videos, PackedVideos):
                removed += videos.cut_torn_tails(min_age_s=min_age_s)
        for key, meta in self.commit.pending_removals().items():
            remover = attributes(meta).get("remover")
            if not may_be_running(remover, partial(self.fs.mtime, f"{key}/{META}"), now=now, min_age_s=min_age_s):
                self.commit.remove_node(key)  # finishes the killed removal
                removed += 1
        return removed


class NodeVideos:
    """The videos of one ``"nodes"`` set: one Zarr array per video.

    The per-set interface shared with :class:`feature_store._packs.PackedVideos`.
    """

    layout = "nodes"

    def __init__(self, store_layout: StoreLayout, set_id: str) -> None:
        self.store_layout = store_layout
        self.fs = store_layout.fs
        self.set_id = set_id
        self.set_key = store_layout.set_key(set_id)

    def key(self, video_id: str) -> str:
        return f"{self.set_key}/{encode_node_name(video_id)}"

    def where(self, video_id: str) -> str:
        return self.fs.url(self.key(video_id))

    def complete_meta(self, video_id: str) -> dict | None:
        """Metadata of a completely stored video; None if it is absent or incomplete."""
        meta = read_meta(self.fs, self.key(video_id))
        return meta if is_complete(meta, video_id) else None

    def complete_metas(self, video_ids) -> dict[str, dict | None]:
        """:meth:`complete_meta` of several videos (concurrent reads on async filesystems)."""
        video_ids = list(dict.fromkeys(video_ids))
        raws = self.fs.read_many([f"{self.key(v)}/{META}" for v in video_ids])
        out = {}
        for v in video_ids:
            meta = parse_meta(raws[f"{self.key(v)}/{META}"])
            out[v] = meta if is_complete(meta, v) else None
        return out

    def video_nodes(self) -> tuple[list[str], int]:
        """Names of the video nodes in place (complete or not), and the number of entries
        in the set's staging area (writes in flight or leftovers)."""
        nodes, staged = [], 0
        for entry in self.fs.list(self.set_key):
            if entry.name == STAGING:
                staged += sum(1 for e in self.fs.list(f"{self.set_key}/{STAGING}") if e.name != META)
            elif not entry.name.startswith("_") and entry.name != META:
                nodes.append(entry.name)
        return nodes, staged

    def video_metas(self) -> tuple[dict[str, dict], int]:
        """Complete videos' metadata by id, and the number of incomplete nodes."""
        nodes, incomplete = self.video_nodes()
        raws = self.fs.read_many([f"{self.set_key}/{n}/{META}" for n in nodes])
        metas: dict[str, dict] = {}
        for name in nodes:
            meta = parse_meta(raws[f"{self.set_key}/{name}/{META}"])
            video_id = attributes(meta).get("video_id")
            if is_complete(meta) and isinstance(video_id, str) and encode_node_name(video_id) == name:
                metas[video_id] = meta
            else:
                incomplete += 1
        return metas, incomplete

    def video_ids(self) -> list[str]:
        """Ids of the complete videos, sorted."""
        return sorted(self.video_metas()[0])

    def any_complete_meta(self) -> dict | None:
        """Metadata of the first complete video found (stops at the first: O(1) in a large
        local folder, whose listing is not built)."""
        for entry in self.fs.first_entries(self.set_key):
            if not entry.name.startswith("_") and entry.name != META:
                meta = read_meta(self.fs, f"{self.set_key}/{entry.name}")
                if is_complete(meta):
                    return meta
        return None

    def open_video(self, video_id: str) -> zarr.Array:
        """See :meth:`StoreLayout.open_video`."""
        if self.complete_meta(video_id) is None:
            raise FeatureNotFoundError(f"video {video_id!r} is not stored in feature set {self.set_id!r}")
        try:
            store = self.fs.zarr_store(self.key(video_id), read_only=True)
            return zarr.open_array(store=store, mode="r", zarr_format=3)
        except DAMAGE_ERRORS as exc:  # zarr's reaction to malformed array metadata
            raise self.store_layout.damaged(self.set_id, video_id, f"{type(exc).__name__}: {exc}") from exc

    def read_stored(self, video_id: str) -> tuple[np.ndarray | None, str | None]:
        """All of a complete video, [steps, dims] in its stored dtype, and why it is damaged
        (None when sound): chunks that do not decode, NaN/Inf, or data not matching its
        ``data_sha256``. The data is None when chunks do not decode.

        Raises:
            FeatureNotFoundError, InvalidMetadataError: as :meth:`open_video`.
        """
        array = self.open_video(video_id)
        try:
            data = array[...]
        except DAMAGE_ERRORS as exc:
            return None, f"chunks do not decode ({type(exc).__name__}: {exc})"
        return data, stored_data_problem(data, array.attrs.get("data_sha256"))

    def row_blocks(self, video_id: str):
        """The video's ``data_sha256`` and its rows one chunk at a time (stored dtype),
        read as they are consumed (zarr's decoding errors propagate from the iterator)."""
        array = self.store_layout.open_video(self.set_id, video_id)  # (tests patch this)
        step = array.chunks[0]
        return array.attrs.get("data_sha256"), (array[i : i + step] for i in range(0, array.shape[0], step))

    def dask_array(self, video_id: str):
        """Lazy [steps, dims] in the stored dtype, one dask chunk per Zarr chunk."""
        import dask.array as da

        return da.from_zarr(self.open_video(video_id))

    def write(
        self,
        video_id: str,
        data: np.ndarray,
        video_attributes: dict,
        *,
        overwrite: bool,
        check: Callable[[], bool] | None = None,
    ) -> None:
        """Commit one video's data [steps, dims] (stored dtype) with its final attributes
        (which hold ``write_id``; see :meth:`feature_store._commit.Commit.write_array`)."""
        marker = {"video_id": video_id, "status": WRITING, "write_id": video_attributes["write_id"]}
        draft = ArrayDraft(
            data,
            chunks=chunk_shape(*data.shape, data.dtype.itemsize),
            dimension_names=("step", "dim"),
            attributes=video_attributes,
            marker=marker,
            compressors=codec(),
        )
        self.store_layout.commit.write_array(self.key(video_id), draft, overwrite=overwrite, check=check)

    def has_node(self, video_id: str) -> bool:
        """Whether a node (complete or not) is in place for the video."""
        return self.fs.is_dir(self.key(video_id))

    def remove(self, video_id: str) -> bool:
        """Remove a video's node; False if it was already gone."""
        return self.store_layout.commit.remove_node(self.key(video_id))
