"""Where feature sets and videos are in a store's files: the node-level interface that
:class:`~feature_store.store.FeatureStore`, verify, maintenance, transfer and dataset share.

Layout of format 1: a Zarr group per feature set at ``encode_node_name(set_id)``, one Zarr
array per video at ``<set node>/encode_node_name(video_id)``; writes and removals go through
the store's commit strategy (:mod:`feature_store._commit`). A packed layout for large
collections (many videos per file) would be another class with these methods, chosen by
the store's format version.

Not public API: users go through ``FeatureStore``.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import zarr

from feature_store._commit import ArrayDraft, commit_for
from feature_store._format import (
    DAMAGE_ERRORS,
    META,
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
    stored_data_problem,
)
from feature_store._fs import FsspecFS, LocalFS
from feature_store._naming import encode_node_name, may_be_running
from feature_store.errors import FeatureNotFoundError, InvalidMetadataError

__all__ = ["NodeLayout"]

logger = logging.getLogger(__name__)


class NodeLayout:
    """One group per feature set, one array per video, in the filesystem ``fs``.

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

    def create_set(self, set_id: str, group_attributes: dict) -> bool:
        """Create a feature set's group unless one is there; True if this call created it."""
        return self.commit.create_group(self.set_key(set_id), group_attributes)

    def removal_pending(self, set_id: str) -> bool:
        """Whether a removal of the set began and was not finished (object stores)."""
        return self.set_key(set_id) in self.commit.pending_removals()

    def remove_set(self, set_id: str) -> None:
        """Remove a feature set with all its videos (or finish a killed removal)."""
        self.commit.remove_node(self.set_key(set_id))

    # ------------------------------------------------------------------ videos

    def complete_meta(self, set_id: str, video_id: str) -> dict | None:
        """Metadata of a completely stored video; None if it is absent or incomplete."""
        meta = self.read_meta(self.video_key(set_id, video_id))
        return meta if is_complete(meta, video_id) else None

    def video_nodes(self, set_id: str) -> tuple[list[str], int]:
        """Names of a set's video nodes in place (complete or not), and the number of
        entries in its staging area (writes in flight or leftovers)."""
        set_key = self.set_key(set_id)
        nodes, staged = [], 0
        for entry in self.fs.list(set_key):
            if entry.name == STAGING:
                staged += sum(1 for e in self.fs.list(f"{set_key}/{STAGING}") if e.name != META)
            elif not entry.name.startswith("_") and entry.name != META:
                nodes.append(entry.name)
        return nodes, staged

    def video_metas(self, set_id: str) -> tuple[dict[str, dict], int]:
        """Complete videos' metadata by id, and the number of incomplete nodes."""
        set_key = self.set_key(set_id)
        nodes, incomplete = self.video_nodes(set_id)
        raws = self.fs.read_many([f"{set_key}/{n}/{META}" for n in nodes])
        metas: dict[str, dict] = {}
        for name in nodes:
            meta = parse_meta(raws[f"{set_key}/{name}/{META}"])
            video_id = attributes(meta).get("video_id")
            if is_complete(meta) and isinstance(video_id, str) and encode_node_name(video_id) == name:
                metas[video_id] = meta
            else:
                incomplete += 1
        return metas, incomplete

    def any_complete_meta(self, set_id: str) -> dict | None:
        """Metadata of the first complete video listed in the set (cheap), or None."""
        set_key = self.set_key(set_id)
        for entry in self.fs.list(set_key):
            if not entry.name.startswith("_"):
                meta = self.read_meta(f"{set_key}/{entry.name}")
                if is_complete(meta):
                    return meta
        return None

    def open_video(self, set_id: str, video_id: str) -> zarr.Array:
        """The Zarr array of a complete video (read-only).

        Raises:
            FeatureNotFoundError: the set or the (complete) video does not exist.
            InvalidMetadataError: zarr cannot open the array (malformed metadata).
        """
        self.set_attrs(set_id)
        if self.complete_meta(set_id, video_id) is None:
            raise FeatureNotFoundError(f"video {video_id!r} is not stored in feature set {set_id!r}")
        try:
            return zarr.open_array(
                store=self.fs.zarr_store(self.video_key(set_id, video_id), read_only=True), mode="r", zarr_format=3
            )
        except DAMAGE_ERRORS as exc:  # zarr's reaction to malformed array metadata
            raise self.damaged(set_id, video_id, f"{type(exc).__name__}: {exc}") from exc

    def damaged(self, set_id: str, video_id: str, what: str) -> InvalidMetadataError:
        """The error for a stored video that cannot be read as it was written."""
        return InvalidMetadataError(
            f"video {video_id!r} of feature set {set_id!r} is damaged "
            f"({self.fs.url(self.video_key(set_id, video_id))}: {what}); re-extract it with overwrite"
        )

    def read_stored(self, set_id: str, video_id: str) -> tuple[np.ndarray | None, str | None]:
        """All of a complete video, [steps, dims] in its stored dtype, and why it is damaged
        (None when sound): chunks that do not decode, NaN/Inf, or data not matching its
        ``data_sha256``. The data is None when chunks do not decode.

        Raises:
            FeatureNotFoundError, InvalidMetadataError: as :meth:`open_video`.
        """
        array = self.open_video(set_id, video_id)
        try:
            data = array[...]
        except DAMAGE_ERRORS as exc:
            return None, f"chunks do not decode ({type(exc).__name__}: {exc})"
        return data, stored_data_problem(data, array.attrs.get("data_sha256"))

    def write_video(
        self,
        set_id: str,
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
        self.commit.write_array(self.video_key(set_id, video_id), draft, overwrite=overwrite, check=check)

    def has_video_node(self, set_id: str, video_id: str) -> bool:
        """Whether a node (complete or not) is in place for the video."""
        return self.fs.is_dir(self.video_key(set_id, video_id))

    def remove_video(self, set_id: str, video_id: str) -> bool:
        """Remove a video's node; False if it was already gone."""
        return self.commit.remove_node(self.video_key(set_id, video_id))

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
            for entry in self.fs.list(set_key):
                if entry.name.startswith("_") or entry.name == META or not entry.is_dir:
                    continue
                key = f"{set_key}/{entry.name}"
                meta = self.read_meta(key)
                if meta is not None and (meta.get("node_type") != "array" or is_complete(meta)):
                    continue
                if self.commit.in_flight(key, meta, now=now, min_age_s=min_age_s):
                    logger.debug("keeping %s: its writer may still run", self.fs.url(key))
                    continue
                self.commit.remove_node(key)
                removed += 1
        for key, meta in self.commit.pending_removals().items():
            remover = attributes(meta).get("remover")
            if not may_be_running(remover, partial(self.fs.mtime, f"{key}/{META}"), now=now, min_age_s=min_age_s):
                self.commit.remove_node(key)  # finishes the killed removal
                removed += 1
        return removed
