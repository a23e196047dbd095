"""The feature store: per-video feature matrices in a Zarr v3 directory store.

The store is a local directory (a plain path) or an fsspec URL (``s3://``, ``gs://``,
``file://``, ``memory://``, ...): see "Remote stores" below for what differs.

Each feature set keeps its videos in one of two layouts (its ``"layout"`` attribute):
``"nodes"``, one Zarr array per video (below; the default), or ``"packed"``, videos appended
as records to a few files shared by many videos, for large collections (per-write cost
independent of the number of videos, well under one filesystem entry per video; see
:mod:`feature_store._packs` and docs/store_layout.md). Choose it per set
(``ensure_feature_set(..., layout="packed")``), per store (``FeatureStore(path,
default_layout="packed")`` when creating it, :meth:`FeatureStore.set_default_layout`), or
convert existing sets with ``vqa store migrate`` (:func:`feature_store.migrate.migrate`).
Both layouts give the same API, guarantees and provenance; the rest of this docstring
describes the ``"nodes"`` layout.

Layout on disk (one local directory; every ``zarr.json`` is plain Zarr v3)::

    <store>/
      zarr.json                      root group, attrs {"feature_store_format": 1 (2 once a
                                       set is packed), "default_layout" (absent: "nodes")}
      _staging/                      group: feature sets being created
      <set node>/                    group, one per feature set; node = escaped set id
        zarr.json                    attrs {"id", "spec", "sampling", "created",
                                            "feature_store_format", "dtype"}
        _stats/                      optional: cached per-dim mean/std (feature_store.dataset)
        _staging/                    group: video arrays being written or replaced
          new.<pid>.<uuid>.<host>/   array under construction
          old.<pid>.<uuid>.<host>/   replaced array waiting for deletion
        <video node>/                array [steps, dims] of the set's dtype, one per video
          zarr.json                  attrs {"video_id", "status": "complete", "write_id",
                                            "provenance", "set_provenance_sha256",
                                            "data_sha256", ...}
          c/<i>/<j>                  Blosc-zstd chunks of up to 256 steps x all dims

Storage dtype: a feature set stores float32 (default) or float16, chosen when the set is
created (``ensure_feature_set(..., dtype="float16")``) and recorded in its ``"dtype"``
attribute (absent = float32). float16 halves the size on disk (0.34x of raw float32 on
CNN-like features, against 0.66x for compressed float32; ``bench/store_layout.py``) at a
relative error of at most 2**-11 (absolute 3e-8 below 6e-5, where float16 is subnormal);
values beyond +-65504 are refused, not turned into inf. Reads always return float32.

Node names: video ids (and set ids) are user data, escaped with :func:`encode_node_name`
(injective, reversible with :func:`decode_node_name`; long names are shortened with a hash,
then only the ``video_id`` attribute holds the original). Names starting with ``_`` are the
store's own.

Atomic completion: a video is written completely into ``_staging/new.*`` (data first, then
the attributes with ``"status": "complete"``), then renamed into place with ``os.rename``.
Readers count a video only if its node is in place *and* says ``"status": "complete"`` for
the same video id, so a process killed at any point leaves either the complete video or
nothing (plus a staging leftover that :meth:`FeatureStore.remove_incomplete` deletes). Power
loss is not covered: nothing is fsynced. The protocols are in :mod:`feature_store._commit`.

Provenance passed to :meth:`FeatureStore.write_video` has two parts::

    provenance = {
        "set":   {...},  # how features of this set are made: spec, sampling, code version,
                         # weights identity/hash, ... -- must be identical across the videos
                         # of a set; reading several videos refuses to mix different ones.
        "video": {...},  # this video only: source path, size, mtime, num_frames, fps,
                         # extraction time, ... -- may differ between videos.
    }

Checksums: every video written since checksums exist records ``data_sha256``, the sha256 of
its array's bytes in the stored dtype, C order. :meth:`FeatureStore.read_video`, the dataset
statistics and ``verify`` check it (a mismatch reads as a damaged video: re-extract it with
overwrite); lazy dask reads do not. Videos without the attribute are read as before.

Concurrency: any number of processes may write *different* videos at once (one writer per
array). Two writers of the same video race safely: with ``overwrite=False`` the first rename
wins and the other discards its copy. Writers never touch shared nodes' attributes and
metadata is never consolidated.

Remote stores (fsspec URLs)
---------------------------
``FeatureStore("s3://bucket/features", storage_options={...})`` (any fsspec protocol; the
protocol's package must be installed: ``s3fs``, ``gcsfs``, ``adlfs``, ...; credentials come
from ``storage_options`` or the usual environment). Object stores have no rename, so a URL
store writes each video in place and completes it with one last PUT of its ``zarr.json``,
the same for every protocol (``file://`` included: that is how several processes or
machines share a POSIX folder through it; a plain path keeps the rename protocol above).
As in the local mode, a killed writer leaves either the previous state or a node that does
not count as stored; ``verify`` reports it as a leftover or in flight, and
:meth:`FeatureStore.remove_incomplete` deletes it. Overwriting a stored video is not atomic
there (the video reads as not stored meanwhile), nor are two writers of one video (each
checks the result against its checksum). The protocol and its limits:
:mod:`feature_store._commit` and docs/remote_stores.md.

``memory://`` stores live in one process (tests, scratch work). ``runs_dir`` is a local
folder only; :meth:`FeatureStore.write_run_file` writes run records in every store.

Length (over 600 lines): the public ``FeatureStore`` class and, in this docstring, the reference
of the layout and commit protocol (about 90 lines).
"""

from __future__ import annotations

import difflib
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feature_store._commit import with_attributes
from feature_store._format import (
    COMPLETE,
    DEFAULT_LAYOUT_ATTR,
    DTYPES,
    FORMAT_ATTR,
    FORMAT_VERSION,
    LAYOUT_ATTR,
    META,
    NODES,
    NODES_FORMAT,
    PACKED,
    PACKED_FORMAT,
    RUNS_DIR,
    STALE_FOREIGN_S,
    canonical_json,
    check_dtype,
    check_layout,
    check_one_provenance,
    data_sha256,
    json_sha256,
    now,
    parse_meta,
    provenance_groups,
    sampling_name,
    set_dtype,
    set_layout,
    to_storage_dtype,
    validated_features,
    validated_provenance,
    validated_spec_sampling,
)
from feature_store._fs import open_fs
from feature_store._layout import StoreLayout
from feature_store._naming import decode_node_name, encode_node_name
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidMetadataError,
    ProvenanceMismatchError,
)
from feature_store.info import format_store_info

if TYPE_CHECKING:
    import dask.array

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "FeatureStore",
    "decode_node_name",
    "encode_node_name",
    "format_store_info",
]

logger = logging.getLogger(__name__)


class FeatureStore:
    """A directory (or object-store prefix) of feature sets, each holding one [steps, dims]
    array per video.

    Args:
        path: local directory of the store, or an fsspec URL (``s3://bucket/features``,
            ``gs://...``, ``file:///shared/features``, ``memory://name``, any fsspec
            protocol); see "Remote stores" in the module docstring.
        create: create the store if it does not exist (``False``: raise
            :class:`FeatureNotFoundError` instead).
        storage_options: options of the URL's fsspec filesystem (credentials, endpoint,
            ...); only with a URL.
        default_layout: the layout of the feature sets this object creates, ``"nodes"``
            or ``"packed"`` (None: the store's default, see :attr:`default_layout`). When
            this call creates the store, it is also recorded as the store's default.

    Raises:
        FeatureNotFoundError: ``create=False`` and there is no store at ``path``.
        FeatureStoreError: ``path`` is a file, a non-empty directory that is not a feature
            store, or a store written by a newer format version; a URL with an unknown
            protocol or one whose package is not installed (the message says what to install).

    Attributes:
        path: the store's directory (:class:`~pathlib.Path`) for a local store; the URL
            (str) for a remote one.
        location: the directory or URL as a str, for messages.
        layout: where sets and videos are in the files and how they are committed
            (:class:`feature_store._layout.StoreLayout`); the node-level interface that the
            package's maintenance, verify, transfer, migrate and dataset modules use. Not
            public API.

    The object holds only its location: it is cheap to create and safe to pickle to workers
    (a ``memory://`` store is per process: other processes see an empty one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        default_layout: str | None = None,
    ) -> None:
        fs = open_fs(path, storage_options)
        self._default_layout = None if default_layout is None else check_layout(default_layout)
        self.layout = StoreLayout(fs)
        self.storage_options = dict(storage_options) if storage_options else None
        self.location = fs.location
        self.path: Path | str = fs.root if fs.local else self.location
        try:
            raw = fs.read_bytes(META)
            if raw is None:
                if not create:
                    raise FeatureNotFoundError(f"no feature store at {self.location}")
                self.layout.commit.create_root(_root_attributes(self._default_layout or NODES))
                logger.info("created feature store at %s", self.location)
                raw = fs.read_bytes(META)
        except FeatureStoreError:
            raise
        except Exception as exc:
            if fs.local:
                raise
            # The first access to a URL: wrong credentials, bucket, endpoint, network.
            raise FeatureStoreError(
                f"cannot open the feature store at {self.location}: {type(exc).__name__}: "
                f"{exc} (check the URL, credentials and storage_options)"
            ) from exc
        meta = parse_meta(raw)
        attrs = (meta or {}).get("attributes") or {}
        if (meta or {}).get("node_type") != "group" or FORMAT_ATTR not in attrs:
            raise FeatureStoreError(f"{self.location} is a Zarr node but not a feature store")
        if not isinstance(attrs[FORMAT_ATTR], int) or attrs[FORMAT_ATTR] > FORMAT_VERSION:
            raise FeatureStoreError(
                f"{self.location} has store format {attrs[FORMAT_ATTR]!r}; this code reads "
                f"format <= {FORMAT_VERSION}: update the project"
            )

    @property
    def default_layout(self) -> str:
        """The layout of new feature sets: the one given to this object, else the store's
        (its root attribute ``default_layout``), else ``"nodes"``."""
        if self._default_layout is not None:
            return self._default_layout
        attrs = (self.layout.read_meta("") or {}).get("attributes") or {}
        return attrs.get(DEFAULT_LAYOUT_ATTR) if attrs.get(DEFAULT_LAYOUT_ATTR) in (NODES, PACKED) else NODES

    def set_default_layout(self, layout: str) -> None:
        """Record ``layout`` as the store's default for new feature sets (root attribute;
        ``"packed"`` raises the store to format 2, which older code refuses to open).

        Raises:
            InvalidMetadataError: not a layout name.
        """
        layout = check_layout(layout)
        raw = self.layout.fs.read_bytes(META)
        attrs = dict((parse_meta(raw) or {}).get("attributes") or {})
        wanted = {**attrs, **_root_attributes(layout, attrs.get(FORMAT_ATTR))}
        if layout == NODES:
            wanted.pop(DEFAULT_LAYOUT_ATTR, None)
        if wanted != attrs:
            self.layout.fs.write_bytes(META, with_attributes(raw, wanted))
        self._default_layout = None

    def _allow_packed_sets(self) -> None:
        """Raise the store to format 2 before its first packed set exists."""
        raw = self.layout.fs.read_bytes(META)
        attrs = (parse_meta(raw) or {}).get("attributes") or {}
        if attrs.get(FORMAT_ATTR, NODES_FORMAT) < PACKED_FORMAT:
            self.layout.fs.write_bytes(META, with_attributes(raw, {**attrs, FORMAT_ATTR: PACKED_FORMAT}))

    @property
    def is_local(self) -> bool:
        """True for a local directory (rename protocol), False for a URL (object protocol)."""
        return self.layout.fs.local

    @property
    def runs_dir(self) -> Path:
        """Folder for run records (extraction summaries, generated manifests); not features.

        Local stores only; use :meth:`write_run_file`, which works for every store.

        Raises:
            FeatureStoreError: the store is a URL, not a local directory.
        """
        if not self.is_local:
            raise FeatureStoreError(
                f"{self.location} is not a local directory: write run records with FeatureStore.write_run_file()"
            )
        return self.path / RUNS_DIR

    def write_run_file(self, name: str, text: str) -> str:
        """Write (or replace, atomically) the run record ``_runs/<name>``; return where it is
        (a path for a local store, a URL otherwise).

        Raises:
            InvalidMetadataError: ``name`` is not a plain file name.
        """
        if not isinstance(name, str) or not name or name.startswith((".", "_")) or any(c in name for c in "/\\\0"):
            raise InvalidMetadataError(f"run record names are plain file names, got {name!r}")
        key = f"{RUNS_DIR}/{name}"
        self.layout.fs.write_bytes(key, text.encode("utf-8"))
        return self.layout.fs.url(key)

    def __repr__(self) -> str:
        return f"FeatureStore({self.location!r})"

    # ------------------------------------------------------------------ analysts' entry points

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> FeatureStore:
        """Open an existing store for reading and analysis (docs/analysis.md).

        Unlike ``FeatureStore(path)``, which creates a missing store (what extraction
        wants), a missing store is refused: a typo does not leave an empty store behind.
        Creating one is explicit: ``FeatureStore(path, create=True)``.

        Raises:
            FeatureNotFoundError: there is no store at ``path`` (nothing is created).
            FeatureStoreError: as :class:`FeatureStore` (not a store, newer format, bad URL).
        """
        return cls(path, create=False, storage_options=storage_options)

    def to_frame(self, feature_set: str, *, pooling: str | None = "mean", manifest=None):
        """A feature set as a pandas DataFrame indexed by ``video_id``, one row per video
        (pooled) or per step (``pooling=None``); see :func:`feature_store.frames.to_frame`."""
        from feature_store.frames import to_frame  # pandas is imported on first use

        return to_frame(self, feature_set, pooling=pooling, manifest=manifest)

    def to_xarray(self, feature_set: str, *, manifest=None):
        """A feature set as a lazy xarray Dataset with dims (video, step, feature); see
        :func:`feature_store.frames.to_xarray`."""
        from feature_store.frames import to_xarray  # xarray is imported on first use

        return to_xarray(self, feature_set, manifest=manifest)

    # ------------------------------------------------------------------ feature sets

    @staticmethod
    def feature_set_id(spec: dict, sampling: dict) -> str:
        """Readable, content-addressed id of a feature set.

        ``f"{spec['name']}--{sampling_name}--{sha256(canonical JSON of spec+sampling)[:10]}"``
        where ``sampling_name`` is ``"uniform-16"`` for ``{"strategy": "uniform", "value": 16}``
        and just the strategy (``"all"``) when there is no scalar value. Canonical JSON sorts
        keys and writes integral floats as ints, so equal content gives an equal id.

        Raises:
            InvalidMetadataError: spec lacks ``name``, sampling lacks ``strategy``, or either
                is not JSON.
        """
        spec_c, sampling_c = validated_spec_sampling(spec, sampling)
        digest = json_sha256({"spec": spec_c, "sampling": sampling_c})[:10]
        return f"{spec_c['name']}--{sampling_name(sampling_c)}--{digest}"

    def ensure_feature_set(
        self, *, spec: dict, sampling: dict, dtype: str | None = None, layout: str | None = None
    ) -> str:
        """Create the feature set's group (once; atomically) and return its id.

        Args:
            spec, sampling: identify the set (see :meth:`feature_set_id`).
            dtype: storage dtype, ``"float32"`` or ``"float16"``. ``None``: the existing
                set's dtype, or float32 for a new set. The dtype is not part of the set id:
                one store holds a set in one dtype.
            layout: ``"nodes"`` or ``"packed"`` for a new set (None: :attr:`default_layout`);
                an existing set keeps its layout (``vqa store migrate`` converts it).

        Safe to call from many processes at once: the group is built in ``_staging`` and
        renamed into place; losers of the race keep the winner's group. (Object stores: the
        group is one PUT of its ``zarr.json``; concurrent creators with the same ``dtype``
        write the same group.)

        Raises:
            ProvenanceMismatchError: the set exists with another explicit ``dtype``.
            InvalidMetadataError: an unknown ``layout``.
        """
        set_id = self.feature_set_id(spec, sampling)
        spec_c, sampling_c = validated_spec_sampling(spec, sampling)
        dtype = None if dtype is None else check_dtype(dtype)
        layout = self.default_layout if layout is None else check_layout(layout)
        group_attrs = {
            "id": set_id,
            "spec": spec_c,
            "sampling": sampling_c,
            "created": now(),
            FORMAT_ATTR: NODES_FORMAT,
            "dtype": dtype or "float32",
        }
        if layout == PACKED:
            if self.layout.fs.read_bytes(f"{self.layout.set_key(set_id)}/{META}") is None:
                self._allow_packed_sets()  # before the set exists: older code must refuse the store
            group_attrs.update({LAYOUT_ATTR: PACKED, FORMAT_ATTR: PACKED_FORMAT})
        if self.layout.create_set(set_id, group_attrs):
            logger.info("created feature set %s", set_id)
        attrs = self.layout.set_attrs(set_id)
        if canonical_json([attrs.get("spec"), attrs.get("sampling")]) != canonical_json([spec_c, sampling_c]):
            raise ProvenanceMismatchError(
                f"feature set {set_id!r} exists with a different spec/sampling "
                "(a 10-hex-digit hash collision or a hand-edited store)"
            )
        if dtype is not None and set_dtype(attrs) != dtype:
            raise ProvenanceMismatchError(
                f"feature set {set_id!r} is stored as {set_dtype(attrs)}, not {dtype}; "
                "remove it first (vqa store rm) or use another store"
            )
        return set_id

    def feature_sets(self) -> list[str]:
        """Ids of all feature sets, sorted (sets with damaged metadata are left out)."""
        return self.layout.feature_sets()

    def resolve(self, name: str) -> str:
        """Find a feature set by exact id, extractor name, or id prefix.

        Order: exact id; else the sets whose ``spec["name"]`` equals ``name``; else the
        sets whose id starts with ``name``. Exactly one match is returned.

        Raises:
            FeatureNotFoundError: no match (with "did you mean" suggestions and the list of
                sets) or several matches (listing them).
        """
        ids = self.feature_sets()
        if name in ids:
            return name
        by_extractor = [s for s in ids if self.layout.set_attrs(s).get("spec", {}).get("name") == name]
        matches = by_extractor or [s for s in ids if s.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise FeatureNotFoundError(
                f"{name!r} is ambiguous: it matches {len(matches)} feature sets: "
                + ", ".join(matches)
                + "; pass a full id"
            )
        names = sorted({s.split("--", 1)[0] for s in ids})
        close = difflib.get_close_matches(name, ids + names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        known = ", ".join(ids) if ids else "(none)"
        raise FeatureNotFoundError(f"no feature set matches {name!r}.{hint} Known feature sets: {known}")

    # ------------------------------------------------------------------ writing videos

    def has_video(self, set_id: str, video_id: str) -> bool:
        """True only if the video is completely stored in the set.

        Raises:
            FeatureNotFoundError: the feature set does not exist.
        """
        return self.layout.videos(set_id).complete_meta(video_id) is not None

    def write_video(
        self,
        set_id: str,
        video_id: str,
        features: np.ndarray,
        *,
        provenance: dict,
        overwrite: bool = False,
    ) -> None:
        """Store one video's features [steps, dims] atomically.

        Args:
            set_id: an existing feature set id (see :meth:`ensure_feature_set`).
            video_id: any non-empty string (paths, spaces, unicode are fine).
            features: real numeric array [steps, dims], finite; stored in the set's dtype
                (float32, or float16 with |values| <= 65504).
            provenance: ``{"set": {...}, "video": {...}}`` (see the module docstring).
                ``"spec"``/``"sampling"`` inside ``"set"``, if given, must equal the set's.
            overwrite: replace a stored video. If ``False`` and the video is stored (also
                by a concurrent writer that finished first), keep it and return quietly.

        Raises:
            FeatureNotFoundError: the set does not exist.
            InvalidFeaturesError: not 2-D, not numeric, empty, NaN/Inf, dims differ from
                ``spec["dims"]``, or beyond float16 range in a float16 set. Nothing is stored.
            InvalidMetadataError: bad video id or provenance.
            ProvenanceMismatchError: provenance names another spec or sampling than the set.
            FeatureStoreError: two ids map to one node name (case-insensitive filesystem).
        """
        attrs = self.layout.set_attrs(set_id)
        videos = self.layout.videos(set_id, attrs)
        encode_node_name(video_id)  # validates the id before any work
        spec = attrs.get("spec") or {}
        data = to_storage_dtype(validated_features(features, video_id, spec.get("dims")), set_dtype(attrs), video_id)
        prov = validated_provenance(provenance, video_id)
        for key in ("spec", "sampling"):
            if key in prov["set"] and canonical_json(prov["set"][key]) != canonical_json(attrs.get(key)):
                raise ProvenanceMismatchError(
                    f"video {video_id!r}: provenance['set'][{key!r}] differs from the {key} of feature set {set_id!r}"
                )
        if not overwrite and videos.complete_meta(video_id) is not None:
            logger.debug("%s / %s already stored; not overwriting", set_id, video_id)
            return
        set_hash = json_sha256(prov["set"])
        self._warn_if_mixed(videos, set_hash, video_id)
        attributes = {
            "video_id": video_id,
            # unique per write: lets caches notice a replaced video (dataset stats)
            "write_id": uuid.uuid4().hex,
            "provenance": prov,
            "set_provenance_sha256": set_hash,
            "data_sha256": data_sha256(data),
            "written": now(),
            FORMAT_ATTR: NODES_FORMAT if videos.layout == NODES else PACKED_FORMAT,
            "status": COMPLETE,
        }
        videos.write(video_id, data, attributes, overwrite=overwrite, check=lambda: self._consistent(set_id, video_id))
        logger.debug("stored %s / %s shape %s", set_id, video_id, data.shape)

    def _consistent(self, set_id: str, video_id: str) -> bool:
        """After a race (object stores): False only if the stored video is complete but its
        data does not match its checksum (an incomplete node belongs to a writer at work)."""
        try:
            self.read_video(set_id, video_id)
        except FeatureNotFoundError:
            return True
        except FeatureStoreError:
            return False
        return True

    def _warn_if_mixed(self, videos: Any, set_hash: str, video_id: str) -> None:
        """Log a warning if another stored video of the set has other set-level provenance
        (cheap: looks at the first complete video found, without listing the set)."""
        meta = videos.any_complete_meta()
        if meta is not None and meta["attributes"].get("set_provenance_sha256") != set_hash:
            logger.warning(
                "video %r gets set-level provenance that differs from stored video %r of "
                "feature set %s; reading them together will fail",
                video_id,
                meta["attributes"].get("video_id"),
                videos.set_id,
            )

    # ------------------------------------------------------------------ reading videos

    def read_video(self, set_id: str, video_id: str) -> np.ndarray:
        """Features of one video, float32 [steps, dims].

        Raises:
            FeatureNotFoundError: the set or the (complete) video does not exist.
            InvalidMetadataError: its metadata or data is damaged (malformed metadata,
                undecodable or missing chunks, data that does not match its ``data_sha256``).
        """
        data, problem = self.layout.read_stored(set_id, video_id)
        if problem:
            raise self.layout.damaged(set_id, video_id, problem)
        return np.asarray(data, dtype=np.float32)

    def read_video_dask(self, set_id: str, video_id: str) -> dask.array.Array:
        """Lazy features of one video, float32 [steps, dims], one dask chunk per Zarr chunk.

        The graph reads files by path when computed: do not overwrite the video meanwhile.
        Lazy reads do not check ``data_sha256`` (:meth:`read_video` and ``verify`` do).
        """
        arr = self.layout.videos(set_id).dask_array(video_id)
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)

    def read_videos(self, set_id: str, video_ids: Iterable[str]) -> list[np.ndarray]:
        """Features of several videos, each float32 [steps_i, dims], in the given order.

        Checks everything before reading any data.

        Raises:
            FeatureNotFoundError: some videos are not stored; the message lists all of them
                and the exception's ``missing`` attribute holds them.
            ProvenanceMismatchError: the videos do not share one set-level provenance.
        """
        videos = self.layout.videos(set_id)
        video_ids = list(video_ids)
        metas = videos.complete_metas(video_ids)
        missing = [v for v, m in metas.items() if m is None]
        if missing:
            err = FeatureNotFoundError(
                f"{len(missing)} of {len(metas)} videos are not stored in feature set "
                f"{set_id!r}: " + ", ".join(map(repr, missing))
            )
            err.missing = missing
            raise err
        check_one_provenance(set_id, metas)
        return [self.read_video(set_id, v) for v in video_ids]

    def video_ids(self, set_id: str) -> list[str]:
        """Ids of the completely stored videos of a set, sorted."""
        return self.layout.videos(set_id).video_ids()

    def video_provenance(self, set_id: str, video_id: str) -> dict:
        """Provenance stored with a video: ``{"set": {...}, "video": {...}}``."""
        meta = self.layout.videos(set_id).complete_meta(video_id)
        if meta is None:
            raise FeatureNotFoundError(f"video {video_id!r} is not stored in feature set {set_id!r}")
        return meta["attributes"]["provenance"]

    # ------------------------------------------------------------------ summaries, cleaning

    def feature_set_info(self, set_id: str) -> dict:
        """Summary of one feature set.

        Returns a dict with ``id``, ``spec``, ``sampling``, ``created``, ``n_videos``,
        ``dims`` (int; a sorted list if videos disagree; ``spec["dims"]`` or None when
        empty), ``total_steps``, ``bytes_on_disk`` (all files under the set's directory or prefix),
        ``dtype``, ``layout`` (``"nodes"`` or ``"packed"``), ``provenance`` (``{"consistent",
        "n_distinct", "set", "groups"}``, where ``set`` is the common set-level provenance
        when consistent), ``incomplete`` (staging leftovers and in-flight writes; packed:
        torn or damaged records) and, for a packed set, ``packs`` (``{"files", "bytes",
        "live_bytes"}``: its segment files, their bytes, and the bytes of the records that
        are read; the rest is freed by ``vqa store migrate``).
        """
        attrs = self.layout.set_attrs(set_id)
        videos = self.layout.videos(set_id, attrs)
        metas, incomplete = videos.video_metas()
        dims = sorted({m["shape"][1] for m in metas.values()})
        groups = provenance_groups(dict(sorted(metas.items())))
        first = {h: metas[g[0]]["attributes"]["provenance"]["set"] for h, g in groups}
        info = {
            "id": set_id,
            "spec": attrs.get("spec"),
            "sampling": attrs.get("sampling"),
            "created": attrs.get("created"),
            "n_videos": len(metas),
            "dims": dims[0] if len(dims) == 1 else (dims or (attrs.get("spec") or {}).get("dims")),
            "total_steps": int(sum(m["shape"][0] for m in metas.values())),
            "bytes_on_disk": self.layout.fs.size(self.layout.set_key(set_id)),
            "dtype": set_dtype(attrs),
            "layout": set_layout(attrs),
            "provenance": {
                "consistent": len(groups) <= 1,
                "n_distinct": len(groups),
                "set": next(iter(first.values())) if len(groups) == 1 else None,
                "groups": [{"sha256": h, "n_videos": len(g), "example": g[0], "set": first[h]} for h, g in groups],
            },
            "incomplete": incomplete,
        }
        if videos.layout == PACKED:
            info["packs"] = videos.stats()
        return info

    def info(self) -> list[dict]:
        """:meth:`feature_set_info` of every feature set, sorted by id."""
        return [self.feature_set_info(s) for s in self.feature_sets()]

    def remove_incomplete(self, *, min_age_s: float = STALE_FOREIGN_S) -> int:
        """Delete leftovers of killed runs; return how many entries were removed.

        Removes staging entries (root and per set) whose owner process is dead on this host,
        and video nodes in place that are not complete. Entries of live processes on this
        host are kept. Entries written from other hosts (shared filesystems) cannot be
        checked, so they are removed only when older than ``min_age_s`` seconds.

        Object stores (URLs): incomplete video nodes are written in place, so they are
        judged by the writer named in their marker (dead on this host: removed; alive:
        kept; another host: removed when its newest object is ``min_age_s`` old); nodes
        without metadata (killed removals) are removed, and so are feature sets whose
        removal was killed.
        """
        removed = self.layout.remove_incomplete(min_age_s=min_age_s)
        if removed:
            logger.info("removed %d incomplete entries from %s", removed, self.location)
        return removed


def _root_attributes(layout: str, current_format: Any = None) -> dict:
    """Root attributes for a store whose new sets get ``layout``: format 2 and the
    ``default_layout`` attribute for ``"packed"``; format 1 (or the current one) otherwise."""
    if layout == PACKED:
        return {FORMAT_ATTR: PACKED_FORMAT, DEFAULT_LAYOUT_ATTR: PACKED}
    return {FORMAT_ATTR: current_format if isinstance(current_format, int) else NODES_FORMAT}
