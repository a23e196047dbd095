"""How a node of the store becomes visible atomically: two commit strategies behind one
interface, chosen once per store by :func:`commit_for`.

:class:`RenameCommit` (a local directory): a node is written completely into a
``_staging/new.<pid>.<uuid>.<host>`` folder (data first, then the attributes with
``"status": "complete"``), then renamed into place with ``os.rename``, which is atomic on one
POSIX filesystem and fails if the destination exists. A replaced node is first renamed aside
into ``_staging/old.*``; a removed one too. A process killed at any point leaves either the
complete node or nothing in place, plus a staging leftover. Power loss is not covered:
nothing is fsynced.

:class:`PutCommit` (an fsspec URL; object stores have no rename), for every protocol:

1. the node's ``zarr.json`` is PUT in place with ``"status": "writing"``, a ``write_id`` and
   the writer's ``<pid>.<uuid>.<host>``; from then on the node does not count as stored;
2. chunks of an earlier array at that node that the new one does not overwrite are deleted,
   and the new chunks are PUT (NaN fill value: a missing chunk reads as NaN, never as data);
3. the final ``zarr.json`` (``"status": "complete"``, ``data_sha256``) is PUT last.

If another writer touched the node meanwhile (its ``write_id`` is not ours any more), the
result is read back against its checksum and mixed chunks are rewritten (a few rounds). A
node is removed by deleting its ``zarr.json`` first; a feature set by marking it
``"status": "removing"`` first (it leaves every listing at once), then deleting its objects,
its ``zarr.json`` last. Leftovers of killed writers and removals name their owner, so
``remove_incomplete`` and ``verify`` can tell them from work in flight. What this does and
does not make atomic: docs/remote_stores.md.

Keys are ``/``-separated paths relative to the store's root (see :mod:`feature_store._fs`).
These strategies commit the nodes of the ``"nodes"`` layout (and groups, the statistics
cache). Packed sets (:mod:`feature_store._packs`) commit a video by appending one record to
the writer's own segment (local) or by one PUT of a new object (URL).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, MemoryStore

from feature_store._format import META, REMOVING, STAGING, attributes, is_complete, parse_meta, read_meta
from feature_store._fs import FsspecFS, LocalFS
from feature_store._naming import may_be_running, staging_name
from feature_store.errors import FeatureStoreError

__all__ = ["ArrayDraft", "Commit", "PutCommit", "RenameCommit", "commit_for", "with_attributes"]

logger = logging.getLogger(__name__)

_MAX_PLACE_ATTEMPTS = 10  # local: renames of a video whose node other writers keep replacing
_MAX_WRITE_ROUNDS = 5  # object stores: rewrites of a video whose racing writers mixed chunks


@dataclass(frozen=True, eq=False)
class ArrayDraft:
    """A Zarr v3 array to commit at one node.

    Attributes:
        data: the values [rows, cols] in their stored dtype.
        chunks: chunk shape.
        dimension_names: names of the two axes (``("step", "dim")`` for videos).
        attributes: the final attributes (a video's say ``"status": "complete"``).
        marker: the attributes while it is being written; its ``video_id``, if any, names the
            node's owner (two ids mapping to one node are refused).
        compressors: zarr ``compressors`` argument.
    """

    data: np.ndarray
    chunks: tuple[int, int]
    dimension_names: tuple[str, str]
    attributes: dict
    marker: dict = field(default_factory=dict)
    compressors: Any = "auto"

    @property
    def name(self) -> str | None:
        return self.marker.get("video_id")


class Commit(ABC):
    """One commit strategy: how groups and arrays are created, replaced and removed so that
    readers see each node either complete or not at all."""

    def __init__(self, fs: LocalFS | FsspecFS) -> None:
        self.fs = fs

    @abstractmethod
    def create_root(self, root_attributes: dict) -> None:
        """Create the store's root group (and its ``_staging`` group) in an empty location.

        Raises:
            FeatureStoreError: the location is a file, or not empty and not a store.
        """

    def create_group(self, key: str, group_attributes: dict) -> bool:
        """Create a group with a ``_staging`` subgroup at ``key`` unless a ``zarr.json`` is
        there; True if this call created it (concurrent creators: one wins, or all write the
        same group)."""
        if self.fs.read_bytes(f"{key}/{META}") is not None:
            return False
        return self._create_group(key, group_attributes)

    @abstractmethod
    def _create_group(self, key: str, group_attributes: dict) -> bool: ...

    @abstractmethod
    def write_array(
        self, key: str, draft: ArrayDraft, *, overwrite: bool, check: Callable[[], bool] | None = None
    ) -> None:
        """Commit ``draft`` at ``key``, replacing an array there if ``overwrite``; with
        ``overwrite=False`` a complete array of the same owner that another writer committed
        first is kept. ``check()`` (object stores, after a race) says whether the stored
        result is consistent; False makes the write go round again.

        Raises:
            FeatureStoreError: another owner's array is at ``key`` (case-insensitive
                filesystem), or too many concurrent writers.
        """

    @abstractmethod
    def remove_node(self, key: str) -> bool:
        """Remove the node at ``key`` (an array, or a feature set's group with everything in
        it) so that it stops counting at once; False if it was already gone."""

    def pending_removals(self) -> dict[str, dict]:
        """Root nodes whose removal began and was not finished, with their metadata."""
        return {}

    def in_flight(self, key: str, meta: dict | None, *, now: float, min_age_s: float) -> bool:
        """Whether an incomplete array in place (metadata ``meta``) may still be written."""
        return False


class RenameCommit(Commit):
    """Local directories: build in ``_staging``, then ``os.rename`` into place."""

    fs: LocalFS

    def create_root(self, root_attributes: dict) -> None:
        root = self.fs.root
        if root.exists() and not root.is_dir():
            raise FeatureStoreError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        foreign = [p.name for p in root.iterdir() if p.name != STAGING and not p.name.startswith(".init.")]
        if foreign:
            raise FeatureStoreError(
                f"{root} is a non-empty directory and not a feature store "
                f"(contains {sorted(foreign)[:5]}); choose an empty or new directory"
            )
        # Build the metadata aside and move each file in with an atomic replace, root last,
        # so concurrent creators never expose a half-written zarr.json.
        tmp = root / f".{staging_name('init')}"
        try:
            _write_group(tmp, root_attributes)
            _write_group(tmp / STAGING, {})
            (root / STAGING).mkdir(exist_ok=True)
            os.replace(tmp / STAGING / META, root / STAGING / META)
            os.replace(tmp / META, root / META)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _create_group(self, key: str, group_attributes: dict) -> bool:
        tmp = self.fs.path(STAGING) / staging_name("new")
        try:
            _write_group(tmp, group_attributes)
            _write_group(tmp / STAGING, {})
            os.rename(tmp, self.fs.path(key))
            return True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            logger.debug("%s was created concurrently", key)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def write_array(
        self, key: str, draft: ArrayDraft, *, overwrite: bool, check: Callable[[], bool] | None = None
    ) -> None:
        dest = self.fs.path(key)
        staging = dest.parent / STAGING / staging_name("new")
        try:
            arr = zarr.create_array(
                store=LocalStore(staging),
                shape=draft.data.shape,
                chunks=draft.chunks,
                dtype=draft.data.dtype,
                compressors=draft.compressors,
                fill_value=float("nan"),
                dimension_names=draft.dimension_names,
                attributes=draft.marker,
                zarr_format=3,
            )
            arr[...] = draft.data
            arr.attrs.update(draft.attributes)  # "complete" is only ever written after all chunks
            self._place(staging, dest, draft.name, overwrite=overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # no-op once renamed into place

    def _place(self, staging: Path, dest: Path, name: str | None, *, overwrite: bool) -> None:
        """Rename a finished staging array to ``dest``; an existing node is kept (same owner,
        complete, ``overwrite=False``) or moved aside and deleted."""
        aside: list[Path] = []
        placed = False
        try:
            for _attempt in range(_MAX_PLACE_ATTEMPTS):
                try:
                    os.rename(staging, dest)
                    placed = True
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                meta = parse_meta(LocalFS(dest).read_bytes(META))
                _refuse_other_owner(name, meta, dest.name)
                if not overwrite and is_complete(meta, name):
                    logger.debug("%s stored concurrently; keeping the first copy", name)
                    placed = True
                    return
                # Replace: move the old node aside (the video is briefly absent), then retry.
                old = staging.parent / staging_name("old")
                try:
                    os.rename(dest, old)
                    aside.append(old)
                except FileNotFoundError:
                    pass  # someone else moved it; just retry
            raise FeatureStoreError(f"could not place {name or dest.name!r} at {dest}: too many concurrent writers")
        finally:
            if aside and not placed:
                # Failed mid-replace: put the previous copy back rather than lose it.
                try:
                    os.rename(aside.pop(), dest)
                except OSError:
                    logger.warning("could not restore the previous copy of %r", name)
            for old in aside:
                shutil.rmtree(old, ignore_errors=True)

    def remove_node(self, key: str) -> bool:
        node = self.fs.path(key)
        aside = node.parent / STAGING / staging_name("old")
        try:
            os.rename(node, aside)  # atomic: the node is in place or gone
        except FileNotFoundError:
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True


class PutCommit(Commit):
    """Object stores (every fsspec URL): write in place, complete with one last PUT."""

    fs: FsspecFS

    def create_root(self, root_attributes: dict) -> None:
        """One PUT of the root ``zarr.json`` (concurrent creators write identical bytes)."""
        if self.fs.is_file(""):
            raise FeatureStoreError(f"{self.fs.location} exists and is a file, not a folder")
        names = {e.name for e in self.fs.list("")}
        if META in names:
            return  # created concurrently (anything else listed is that store's)
        foreign = sorted(names - {STAGING})
        if foreign:
            raise FeatureStoreError(
                f"{self.fs.location} is not empty and not a feature store "
                f"(contains {foreign[:5]}); choose an empty or new location"
            )
        self.fs.write_bytes(f"{STAGING}/{META}", _group_meta_bytes({}))  # as a local store
        self.fs.write_bytes(META, _group_meta_bytes(root_attributes))

    def _create_group(self, key: str, group_attributes: dict) -> bool:
        # the same layout as a local store (readable as one), the group's zarr.json last
        self.fs.write_bytes(f"{key}/{STAGING}/{META}", _group_meta_bytes({}))
        self.fs.write_bytes(f"{key}/{META}", _group_meta_bytes(group_attributes))
        return True

    def write_array(
        self, key: str, draft: ArrayDraft, *, overwrite: bool, check: Callable[[], bool] | None = None
    ) -> None:
        meta_key = f"{key}/{META}"
        marker_attrs = {**draft.marker, "writer": staging_name("write")}  # lets others check liveness
        write_id = marker_attrs.setdefault("write_id", uuid.uuid4().hex)
        marker, chunks = _encode_array(draft, marker_attrs)
        final = with_attributes(marker, draft.attributes)
        for _round in range(_MAX_WRITE_ROUNDS):
            _refuse_other_owner(draft.name, read_meta(self.fs, key), self.fs.url(key))
            self._put_incomplete(key, marker, chunks)
            current = read_meta(self.fs, key)
            now_attrs = attributes(current)
            raced = now_attrs.get("write_id") != write_id
            if (
                raced
                and not overwrite
                and is_complete(current, draft.name)
                and now_attrs.get("data_sha256") == draft.attributes.get("data_sha256")
            ):
                logger.debug("%s stored concurrently with equal data; keeping that copy", draft.name)
                return
            self.fs.write_bytes(meta_key, final)  # the completing PUT: always the last one
            if not raced or check is None or check():
                return
            logger.info("%s was written concurrently and its chunks got mixed; rewriting", self.fs.url(key))
        raise FeatureStoreError(
            f"could not store {draft.name or key!r} at {self.fs.url(key)}: too many concurrent "
            "writers of the same video"
        )

    def _put_incomplete(self, key: str, marker: bytes, chunks: dict[str, bytes]) -> None:
        """Steps 1 and 2: PUT the marker ``zarr.json`` (from now on the node does not count),
        delete chunks of an earlier array that the new one does not overwrite, PUT the new
        chunks. The caller completes the node with a last PUT of its ``zarr.json``."""
        stale = set(self.fs.files(key)) - set(chunks) - {META}
        self.fs.write_bytes(f"{key}/{META}", marker)
        self.fs.delete_many([f"{key}/{k}" for k in sorted(stale)])
        self.fs.write_many({f"{key}/{k}": v for k, v in chunks.items()})

    def remove_node(self, key: str) -> bool:
        """A group is first marked ``"status": "removing"``, then its objects are deleted,
        its ``zarr.json`` last; an array loses its ``zarr.json`` first. Either stops counting
        at once; a killed removal is finished by removing again (or ``remove_incomplete``)."""
        raw = self.fs.read_bytes(f"{key}/{META}")
        meta = parse_meta(raw)
        if (meta or {}).get("node_type") != "group":
            self.fs.delete(f"{key}/{META}")
            self.fs.rmtree(key)
            return True
        attrs = attributes(meta)
        if attrs.get("status") != REMOVING:
            attrs = {**attrs, "status": REMOVING, "remover": staging_name("rm")}
            self.fs.write_bytes(f"{key}/{META}", with_attributes(raw, attrs))
        self._delete_group(key)
        return True

    def _delete_group(self, key: str) -> None:
        """Delete a group marked as being removed: its objects, then its ``zarr.json``."""
        self.fs.delete_many([f"{key}/{k}" for k in sorted(self.fs.files(key)) if k != META])
        self.fs.delete(f"{key}/{META}")
        self.fs.rmtree(key)

    def pending_removals(self) -> dict[str, dict]:
        nodes = [e.name for e in self.fs.list("") if e.is_dir and not e.name.startswith(("_", "."))]
        out = {}
        for name, raw in self.fs.read_many([f"{n}/{META}" for n in nodes]).items():
            meta = parse_meta(raw)
            if attributes(meta).get("status") == REMOVING:
                out[name[: -len(META) - 1]] = meta
        return out

    def in_flight(self, key: str, meta: dict | None, *, now: float, min_age_s: float) -> bool:
        """The marker names the writer: dead on this host means a leftover, alive a write in
        flight; writers on other hosts cannot be checked, so the node is in flight until its
        newest object is ``min_age_s`` old. A node without a readable ``zarr.json`` is a
        leftover (writers PUT their marker first; removals delete it first)."""
        if meta is None:
            return False
        return may_be_running(attributes(meta).get("writer"), partial(self.fs.mtime, key), now=now, min_age_s=min_age_s)


def commit_for(fs: LocalFS | FsspecFS) -> Commit:
    """The commit strategy of a store's filesystem: rename for a plain path, PUT for a URL
    (``file://`` included: several machines may share a POSIX folder through it)."""
    return RenameCommit(fs) if fs.local else PutCommit(fs)


def _refuse_other_owner(name: str | None, meta: dict | None, where: str) -> None:
    other = attributes(meta).get("video_id")
    if name is not None and other is not None and other != name:
        raise FeatureStoreError(
            f"video ids {name!r} and {other!r} map to the same node {where!r} "
            "(case-insensitive filesystem?); rename one of them"
        )


def _write_group(path: Path, group_attributes: dict) -> None:
    zarr.open_group(store=LocalStore(path), mode="w", attributes=group_attributes, zarr_format=3)


def _group_meta_bytes(group_attributes: dict) -> bytes:
    """The ``zarr.json`` of a Zarr v3 group with ``group_attributes`` (built in memory)."""
    mem: dict = {}
    zarr.open_group(store=MemoryStore(mem), mode="w", attributes=group_attributes, zarr_format=3)
    return mem[META].to_bytes()


def _encode_array(draft: ArrayDraft, marker_attrs: dict) -> tuple[bytes, dict[str, bytes]]:
    """Encode a draft as a Zarr v3 array in memory (NaN fill value): its ``zarr.json`` with
    ``marker_attrs``, and its chunk objects by key (``c/<i>/<j>``)."""
    mem: dict = {}
    arr = zarr.create_array(
        store=MemoryStore(mem),
        shape=draft.data.shape,
        chunks=draft.chunks,
        dtype=draft.data.dtype,
        compressors=draft.compressors,
        fill_value=float("nan"),
        dimension_names=draft.dimension_names,
        attributes=marker_attrs,
        zarr_format=3,
    )
    arr[...] = draft.data
    meta = mem.pop(META).to_bytes()
    return meta, {key: value.to_bytes() for key, value in mem.items()}


def with_attributes(meta_bytes: bytes, new_attributes: dict) -> bytes:
    """A node's ``zarr.json`` bytes with its attributes replaced."""
    meta = json.loads(meta_bytes)
    meta["attributes"] = new_attributes
    return json.dumps(meta, indent=2).encode("utf-8")
