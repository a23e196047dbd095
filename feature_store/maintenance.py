"""Maintenance of a feature store: verify, remove, export to / import from HDF5, import
VSFA-style ``.npy`` folders.

Pure functions taking a :class:`~feature_store.store.FeatureStore`; the ``vqa store``
commands (verify, rm, export, import) are thin wrappers around them.

HDF5 export layout (plain HDF5, readable by h5py, MATLAB, HDFView; gzip-compressed)::

    /                         attrs {"feature_store_hdf5_format": 1, "exported_from",
                                     "exported"}
    /<set node>               group, one per feature set; node = escaped set id
                              attrs {"id", "spec" (JSON), "sampling" (JSON), "dtype",
                                     "created"}
      /<video node>           dataset [steps, dims] in the set's dtype
                              attrs {"video_id", "provenance" (JSON), "written"}

Node names are :func:`~feature_store.store.encode_node_name` of the ids; the attributes hold
the ids themselves. Import checks the whole file first and writes nothing if any part of it
is malformed; the values round-trip exactly (same dtype, same provenance).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    OutputExistsError,
)
from feature_store.store import (
    _COMPLETE,
    _DAMAGE_ERRORS,
    _META,
    DTYPES,
    _STAGING,
    _STALE_FOREIGN_S,
    RUNS_DIR,
    FeatureStore,
    _canonical_json,
    _checksum_problem,
    _chunk_shape,
    _diff_keys,
    _now,
    _owner_alive,
    _read_meta,
    _rmtree,
    _set_dtype,
    _sha256,
    _staging_name,
    _validated_provenance,
    _validated_spec_sampling,
    encode_node_name,
)

__all__ = [
    "HDF5_FORMAT_VERSION",
    "ImportCounts",
    "VerifyReport",
    "export_hdf5",
    "format_verify_report",
    "import_hdf5",
    "import_npy_folder",
    "remove",
    "verify",
]

logger = logging.getLogger(__name__)

HDF5_FORMAT_VERSION = 1
"""Layout version of HDF5 exports, in the root attribute ``feature_store_hdf5_format``."""

_HDF5_FORMAT_ATTR = "feature_store_hdf5_format"
_MAX_LISTED = 20  # problems listed in one exception message
_PROGRESS_EVERY = 200  # videos between progress log lines


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`.

    Attributes:
        n_videos: complete videos checked, by set id.
        problems: one line per problem, each naming the set and, where it applies, the
            video (``"<set> / <video>: <what>"``). Empty when the store is sound.
        leftovers: entries left by killed writers or removals (paths relative to the
            store); harmless to readers, deleted by :meth:`FeatureStore.remove_incomplete`.
        in_flight: staging entries of writers that are still running (not problems).
    """

    n_videos: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (leftovers and in-flight writes are allowed)."""
        return not self.problems

    def __str__(self) -> str:
        return format_verify_report(self)


def format_verify_report(report: VerifyReport, *, max_lines: int = 50) -> str:
    """Human-readable summary of a :class:`VerifyReport` for ``vqa store verify``.

    At most ``max_lines`` problems and leftovers are listed each; the counts are exact.
    """
    lines = []
    for set_id, n in sorted(report.n_videos.items()):
        n_bad = sum(1 for p in report.problems if p.startswith(f"{set_id} "))
        state = "ok" if n_bad == 0 else f"{n_bad} problem(s)"
        lines.append(f"{set_id}: {n} complete video(s) checked, {state}")
    n_videos = sum(report.n_videos.values())
    if report.problems:
        lines.append(f"PROBLEMS ({len(report.problems)}):")
        lines.extend(f"  {p}" for p in report.problems[:max_lines])
        if len(report.problems) > max_lines:
            lines.append(f"  ... and {len(report.problems) - max_lines} more")
    if report.leftovers:
        lines.append(
            f"leftovers of killed runs ({len(report.leftovers)}; harmless, "
            "`vqa store clean STORE` deletes them):"
        )
        lines.extend(f"  {p}" for p in report.leftovers[:max_lines])
        if len(report.leftovers) > max_lines:
            lines.append(f"  ... and {len(report.leftovers) - max_lines} more")
    if report.in_flight:
        lines.append(f"writes in progress: {len(report.in_flight)}")
    verdict = "OK" if report.ok else "FAILED"
    lines.append(
        f"verify {verdict}: {len(report.n_videos)} feature set(s), {n_videos} video(s), "
        f"{len(report.problems)} problem(s), {len(report.leftovers)} leftover(s)"
    )
    return "\n".join(lines)


def verify(
    store: FeatureStore, *, set_ids: Sequence[str] | None = None, read_data: bool = True
) -> VerifyReport:
    """Check a store (or some of its feature sets) for damage.

    For every feature set: its attributes are valid; every complete video node is named
    after its ``video_id``, is a 2-D [steps, dims] array of the set's dtype with ``dims``
    equal to ``spec["dims"]`` (or, without it, to the other videos'), carries a provenance
    whose stored hash matches it and whose spec/sampling are the set's; all videos share
    one set-level provenance; and (``read_data=True``) every chunk decodes, holds no
    NaN/Inf (a missing chunk reads as NaN, the fill value) and the data matches the video's
    ``data_sha256`` checksum where it has one. Nodes of killed writers are listed as
    leftovers, staging entries of live writers as in flight (object stores: incomplete
    nodes whose writer is alive, or runs on another host and wrote within the last hour).
    Without ``set_ids`` unknown entries at the store's root are reported too.

    Args:
        store: the store to check.
        set_ids: the feature sets to check (default: all).
        read_data: read and check every value (the slow part); ``False`` checks metadata
            only.

    Raises:
        FeatureNotFoundError: a set in ``set_ids`` does not exist.
    """
    report = VerifyReport()
    if set_ids is None:
        set_ids = store.feature_sets()
        _check_root(store, report)
    else:
        set_ids = list(set_ids)
        for set_id in set_ids:
            store._set_attrs(set_id)  # raises with hints for unknown sets
    for set_id in set_ids:
        _verify_set(store, set_id, report, read_data=read_data)
    logger.info("verified %s: %d problem(s)", store.location, len(report.problems))
    return report


def _classify_staging(name: str, rel: str, report: VerifyReport) -> None:
    if _owner_alive(name.lstrip(".")) is False:
        report.leftovers.append(rel)
    else:  # alive, or from another host: cannot tell, do not call it a leftover yet
        report.in_flight.append(rel)


def _check_root(store: FeatureStore, report: VerifyReport) -> None:
    set_nodes = {encode_node_name(s) for s in store.feature_sets()}
    removing = {} if store.is_local else store._removing_sets()
    for entry in store._fs.list(""):
        if entry.name in (_META, RUNS_DIR) or entry.name in set_nodes:
            continue
        if entry.name == _STAGING:
            for sub in store._fs.list(_STAGING):
                if sub.name != _META:
                    _classify_staging(sub.name, f"{_STAGING}/{sub.name}", report)
        elif entry.name.startswith(".init."):
            _classify_staging(entry.name, entry.name, report)
        elif entry.name.startswith("."):
            continue  # hidden files (.DS_Store, ...) are not the store's
        elif entry.name in removing:
            report.leftovers.append(entry.name)  # a killed removal of a whole feature set
        else:
            report.problems.append(
                f"(store) {entry.name}: not a feature set of this store (foreign or damaged)"
            )


def _verify_set(
    store: FeatureStore, set_id: str, report: VerifyReport, *, read_data: bool
) -> None:
    attrs = store._set_attrs(set_id)
    node = store._set_key(set_id)
    dtype = _set_dtype(attrs)
    now = time.time()
    where = f"{set_id} (set)"
    try:
        spec, sampling = _validated_spec_sampling(attrs.get("spec"), attrs.get("sampling"))
        if store.feature_set_id(spec, sampling) != set_id:
            report.problems.append(f"{where}: id does not match its spec and sampling")
    except InvalidMetadataError as exc:
        report.problems.append(f"{where}: invalid spec/sampling: {exc}")
        spec, sampling = None, None  # then videos are not compared with them
    if dtype not in DTYPES:
        report.problems.append(f"{where}: unknown storage dtype {dtype!r}")
    if not store._fs.is_file(f"{node}/{_STAGING}/{_META}"):
        report.problems.append(f"{where}: its {_STAGING} group is missing")

    metas: dict[str, dict] = {}
    for entry in sorted(store._fs.list(node), key=lambda e: e.name):
        rel = f"{node}/{entry.name}"
        if entry.name == _META:
            continue
        if entry.name == _STAGING:
            for sub in store._fs.list(rel):
                if sub.name != _META:
                    _classify_staging(sub.name, f"{rel}/{sub.name}", report)
            continue
        if entry.name.startswith("_"):
            continue  # the store's own nodes (cached statistics)
        if not entry.is_dir:
            report.problems.append(f"{set_id} / {entry.name}: stray file in the feature set")
            continue
        meta = _read_meta(store._fs, rel)
        attrs_v = (meta or {}).get("attributes") or {}
        if meta is None and not store._fs.is_dir(rel):
            continue  # moved aside by a concurrent overwrite or removal
        if meta is None or (
            meta.get("node_type") == "array" and attrs_v.get("status") != _COMPLETE
        ):
            # torn or unfinished: what remove_incomplete deletes (object stores: unless its
            # writer may still be at work)
            if not store.is_local and store._node_in_flight(rel, meta, now, _STALE_FOREIGN_S):
                report.in_flight.append(rel)
            else:
                report.leftovers.append(rel)
            continue
        video_id = attrs_v.get("video_id")
        if meta.get("node_type") != "array" or not isinstance(video_id, str):
            report.problems.append(f"{set_id} / {entry.name}: not a video array")
            continue
        try:
            expected = encode_node_name(video_id)
        except InvalidMetadataError as exc:
            report.problems.append(f"{set_id} / {entry.name}: invalid video id ({exc})")
            continue
        if expected != entry.name:
            report.problems.append(
                f"{set_id} / {video_id}: stored under node {entry.name!r}, expected "
                f"{expected!r} (renamed by hand?); readers cannot find it"
            )
            continue
        metas[video_id] = meta

    dims_expected = (spec or {}).get("dims")
    if dims_expected is None and metas:
        shapes = [m.get("shape") for m in metas.values()]
        widths = [
            s[1] for s in shapes if isinstance(s, list) and len(s) == 2 and isinstance(s[1], int)
        ]
        if widths:
            dims_expected = max(set(widths), key=widths.count)
    groups: dict[str, list[str]] = {}
    set_parts = {"spec": spec, "sampling": sampling}
    for i, (video_id, meta) in enumerate(sorted(metas.items())):
        bad = _check_video_meta(set_id, video_id, meta, set_parts, dtype, dims_expected)
        report.problems.extend(bad)
        if not bad:
            groups.setdefault(meta["attributes"]["set_provenance_sha256"], []).append(video_id)
            if read_data:
                problem = _check_video_data(store, set_id, video_id)
                if problem:
                    report.problems.append(problem)
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("%s: %d of %d videos checked", set_id, i + 1, len(metas))
    report.n_videos[set_id] = len(metas)

    if len(groups) > 1:
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        main_hash, main_videos = ranked[0]
        main_prov = metas[main_videos[0]]["attributes"]["provenance"]["set"]
        for _hash, videos in ranked[1:]:
            keys = _diff_keys(main_prov, metas[videos[0]]["attributes"]["provenance"]["set"])
            for video_id in videos:
                report.problems.append(
                    f"{set_id} / {video_id}: set-level provenance differs from that of "
                    f"{len(main_videos)} other video(s), e.g. {main_videos[0]!r} (keys: "
                    f"{', '.join(keys)}); reading them together is refused"
                )


def _check_video_meta(
    set_id: str, video_id: str, meta: dict, set_parts: dict, dtype: str, dims: int | None
) -> list[str]:
    """Problems of one complete video's metadata; ``set_parts`` holds the set's canonical
    spec and sampling (``None`` when those are invalid)."""
    where = f"{set_id} / {video_id}"
    out = []
    shape = meta.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
    ):
        return [f"{where}: shape {shape} is not 2-D [steps, dims]"]
    if shape[0] < 1 or shape[1] < 1:
        out.append(f"{where}: empty shape {shape}")
    if dims is not None and shape[1] != dims:
        out.append(f"{where}: {shape[1]} dims, the set has {dims}")
    if meta.get("data_type") != dtype:
        out.append(f"{where}: dtype {meta.get('data_type')}, the set stores {dtype}")
    attrs = meta["attributes"]
    if not isinstance(attrs.get("data_sha256"), (str, type(None))):
        out.append(f"{where}: data_sha256 {attrs.get('data_sha256')!r} is not a checksum string")
    try:
        prov = _validated_provenance(attrs.get("provenance"), video_id)
    except InvalidMetadataError as exc:
        return [*out, f"{where}: invalid provenance: {exc}"]
    if attrs.get("set_provenance_sha256") != _sha256(prov["set"]):
        out.append(f"{where}: provenance does not match its stored hash (edited by hand?)")
    for key, value in set_parts.items():
        if (
            value is not None
            and key in prov["set"]
            and _canonical_json(prov["set"][key]) != _canonical_json(value)
        ):
            out.append(f"{where}: provenance names another {key} than the set's")
    return out


def _read_stored(store: FeatureStore, set_id: str, video_id: str) -> np.ndarray:
    """A complete video's features in their stored dtype, [steps, dims].

    Raises:
        FeatureNotFoundError: the video is not (completely) stored.
        InvalidFeaturesError: chunks do not decode, or values are NaN/Inf (never stored:
            NaN is the fill value of a missing chunk).
    """
    where = f"{set_id} / {video_id}"
    array = store._open_video(set_id, video_id)
    try:
        data = array[...]
    except _DAMAGE_ERRORS as exc:
        raise InvalidFeaturesError(
            f"{where}: chunks do not decode ({type(exc).__name__}: {exc})"
        ) from exc
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InvalidFeaturesError(
            f"{where}: {bad} of {data.size} values are NaN/Inf (NaN is the fill value: "
            "a chunk file may be missing)"
        )
    problem = _checksum_problem(array, data)
    if problem:
        raise InvalidFeaturesError(f"{where}: damaged: {problem}; re-extract it with overwrite")
    return data


def _check_video_data(store: FeatureStore, set_id: str, video_id: str) -> str | None:
    try:
        _read_stored(store, set_id, video_id)
    except FeatureNotFoundError:
        logger.debug("%s / %s was replaced or removed while verifying", set_id, video_id)
    except FeatureStoreError as exc:
        text = str(exc)
        prefix = f"{set_id} / {video_id}: "
        return text if text.startswith(prefix) else f"{prefix}damaged: {text}"
    return None


# --------------------------------------------------------------------------- remove


def remove(store: FeatureStore, set_id: str, *, video_ids: Sequence[str] | None = None) -> int:
    """Delete a whole feature set, or some of its videos; return the number of videos removed.

    Each node is first renamed into a staging area (atomic), then deleted, so a killed
    removal leaves either the node in place or a leftover for
    :meth:`FeatureStore.remove_incomplete`, never a half-deleted video. Object stores (no
    rename): a video's ``zarr.json`` is deleted first (it stops counting at once), a whole
    set is first marked ``"status": "removing"`` (it leaves every listing at once); a killed
    removal leaves a leftover that ``remove_incomplete`` (or removing again) finishes. Do not
    remove what concurrent writers are writing. Asking for a confirmation is the caller's
    job.

    Args:
        store: the store.
        set_id: an existing feature set id.
        video_ids: videos to remove (complete or not); ``None`` removes the whole set.

    Raises:
        FeatureNotFoundError: the set does not exist, or some of ``video_ids`` have no node
            in it (then nothing is removed; the message and ``missing`` list all of them).
    """
    if video_ids is None and not store.is_local and encode_node_name(set_id) in store._removing_sets():
        store._remove_set_in_place(set_id)  # finish a killed removal
        logger.info("finished removing feature set %s", set_id)
        return 0
    store._set_attrs(set_id)
    set_dir = store._set_dir(set_id)
    if video_ids is None:
        n_videos = len(store.video_ids(set_id))
        if store.is_local:
            aside = store.path / _STAGING / _staging_name("old")
            os.rename(set_dir, aside)
            _rmtree(aside)
        else:
            store._remove_set_in_place(set_id)
        logger.info("removed feature set %s (%d videos)", set_id, n_videos)
        return n_videos
    video_ids = list(dict.fromkeys(video_ids))
    for video_id in video_ids:
        encode_node_name(video_id)  # validates
    missing = [v for v in video_ids if not store._fs.is_dir(store._video_key(set_id, v))]
    if missing:
        err = FeatureNotFoundError(
            f"{len(missing)} of {len(video_ids)} videos are not in feature set {set_id!r}; "
            "nothing was removed: " + ", ".join(map(repr, missing))
        )
        err.missing = missing
        raise err
    for video_id in video_ids:
        if not store.is_local:
            store._remove_node_in_place(store._video_key(set_id, video_id))
            continue
        aside = set_dir / _STAGING / _staging_name("old")
        try:
            os.rename(store._video_dir(set_id, video_id), aside)
        except FileNotFoundError:
            logger.warning("%s / %s vanished while removing it", set_id, video_id)
            continue
        _rmtree(aside)
    logger.info("removed %d videos from feature set %s", len(video_ids), set_id)
    return len(video_ids)


# --------------------------------------------------------------------------- HDF5


def _temp_sibling(path: Path) -> Path:
    """``.<name>.tmp.<pid>.<uuid>.<host>`` next to ``path``; deletes such files of dead
    processes on this host first (exports killed part-way)."""
    prefix = f".{path.name}."
    for entry in os.scandir(path.parent):
        if entry.name.startswith(prefix + "tmp."):
            if _owner_alive(entry.name[len(prefix):]) is False:
                logger.info("removing %s, left by a killed export", entry.path)
                Path(entry.path).unlink(missing_ok=True)
    return path.with_name(prefix + _staging_name("tmp"))


def export_hdf5(
    store: FeatureStore,
    path: str | os.PathLike[str],
    *,
    set_ids: Sequence[str] | None = None,
    overwrite: bool = False,
    compression: str | None = "gzip",
) -> dict[str, int]:
    """Write feature sets (default: all) to one HDF5 file; return videos written per set.

    The file is written under a temporary name next to ``path`` and renamed into place, so
    ``path`` is either absent, the previous file, or the complete export (a killed export
    leaves a hidden ``.<name>.tmp.*`` file, deleted by the next export to that path). Only
    complete videos are exported, in their stored dtype. See the module docstring for the
    layout.

    Args:
        store: the store to read.
        path: the ``.h5`` file to write.
        set_ids: feature sets to export (default: all).
        overwrite: replace an existing file.
        compression: ``"gzip"`` (level 1 with byte shuffle; readable everywhere), ``"lzf"``
            (faster, h5py only) or ``None``.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        FeatureNotFoundError: a set in ``set_ids`` does not exist.
        InvalidFeaturesError: a video is damaged (run :func:`verify`); nothing is written.
    """
    import h5py  # imported here: only export/import need it

    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    set_ids = store.feature_sets() if set_ids is None else list(set_ids)
    for set_id in set_ids:
        store._set_attrs(set_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    counts: dict[str, int] = {}
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs[_HDF5_FORMAT_ATTR] = HDF5_FORMAT_VERSION
            h5.attrs["exported_from"] = store.location
            h5.attrs["exported"] = _now()
            for set_id in set_ids:
                counts[set_id] = _export_set(store, set_id, h5, compression)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "exported %d videos of %d feature sets to %s", sum(counts.values()), len(counts), path
    )
    return counts


def _export_set(store: FeatureStore, set_id: str, h5: Any, compression: str | None) -> int:
    attrs = store._set_attrs(set_id)
    group = h5.create_group(encode_node_name(set_id))
    group.attrs["id"] = set_id
    group.attrs["spec"] = _canonical_json(attrs.get("spec"))
    group.attrs["sampling"] = _canonical_json(attrs.get("sampling"))
    group.attrs["dtype"] = _set_dtype(attrs)
    group.attrs["created"] = str(attrs.get("created"))
    options: dict[str, Any] = {}
    if compression == "gzip":
        options = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    elif compression is not None:
        options = {"compression": compression, "shuffle": True}
    video_ids = store.video_ids(set_id)
    for i, video_id in enumerate(video_ids):
        meta = store._complete_meta(set_id, video_id)
        if meta is None:
            logger.warning("%s / %s was removed during the export; skipped", set_id, video_id)
            continue
        data = _read_stored(store, set_id, video_id)
        chunks = _chunk_shape(*data.shape, data.dtype.itemsize) if options else None
        ds = group.create_dataset(encode_node_name(video_id), data=data, chunks=chunks, **options)
        ds.attrs["video_id"] = video_id
        ds.attrs["provenance"] = _canonical_json(meta["attributes"]["provenance"])
        ds.attrs["written"] = str(meta["attributes"].get("written"))
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("%s: %d of %d videos exported", set_id, i + 1, len(video_ids))
    return len(group)


@dataclass
class ImportCounts:
    """Videos stored and skipped by an import, by feature set id.

    ``skipped`` counts videos that were already stored and kept (``overwrite=False``).
    """

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_written(self) -> int:
        return sum(self.written.values())

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        lines = [
            f"{s}: {self.written.get(s, 0)} written, {self.skipped.get(s, 0)} already stored"
            for s in sorted(set(self.written) | set(self.skipped))
        ]
        lines.append(
            f"imported {self.n_written} video(s) into {len(lines)} feature set(s); "
            f"{self.n_skipped} already stored (kept)"
        )
        return "\n".join(lines)


def _raise_all(problems: list[str], what: str, exc_type: type[Exception]) -> None:
    if not problems:
        return
    listed = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise exc_type(
        f"{what}: {len(problems)} problem(s), nothing was imported:\n  "
        + "\n  ".join(listed)
        + more
    )


def _json_attr(obj: Any, key: str, where: str, problems: list[str]) -> Any:
    raw = obj.attrs.get(key)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        problems.append(f"{where}: attribute {key!r} missing or not a JSON string")
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        problems.append(f"{where}: attribute {key!r} is not valid JSON ({exc})")
        return None


def _str_attr(obj: Any, key: str) -> str | None:
    raw = obj.attrs.get(key)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return raw if isinstance(raw, str) else None


def import_hdf5(
    store: FeatureStore,
    path: str | os.PathLike[str],
    *,
    set_ids: Sequence[str] | None = None,
    overwrite: bool = False,
) -> ImportCounts:
    """Import an :func:`export_hdf5` file into ``store``; return the counts per set.

    The whole file is checked first (format version, set ids against their spec and
    sampling, 2-D real arrays with the spec's dims, JSON provenance of the form
    ``{"set", "video"}``); if anything is malformed nothing is imported and the error lists
    every problem. Then each video goes through :meth:`FeatureStore.write_video` (so NaN/Inf
    and float16 range are checked as for any write). New sets get the file's dtype; existing
    sets keep theirs. Data, dtype and provenance round-trip exactly.

    Args:
        store: the store to write into.
        path: an HDF5 file written by :func:`export_hdf5`.
        set_ids: import only these sets of the file (default: all).
        overwrite: replace videos already stored (default: keep them, counted as skipped).

    Raises:
        InvalidMetadataError: not an export of this format, or malformed metadata.
        InvalidFeaturesError: arrays of the wrong shape/dtype, or NaN/Inf.
        FeatureNotFoundError: a set in ``set_ids`` is not in the file.
        ProvenanceMismatchError: provenance contradicts the set's spec/sampling.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeatureNotFoundError(f"no HDF5 file at {path}")
    counts = ImportCounts()
    with h5py.File(path, "r") as h5:
        version = h5.attrs.get(_HDF5_FORMAT_ATTR)
        if not isinstance(version, (int, np.integer)) or version > HDF5_FORMAT_VERSION:
            raise InvalidMetadataError(
                f"{path} is not a feature-store export of format <= {HDF5_FORMAT_VERSION} "
                f"(root attribute {_HDF5_FORMAT_ATTR!r} = {version!r})"
            )
        plan, problems, shape_problems = _plan_hdf5(h5, path)
        if set_ids is not None:
            absent = [s for s in set_ids if s not in plan]
            if absent:
                raise FeatureNotFoundError(
                    f"feature sets not in {path}: {', '.join(map(repr, absent))}; it holds "
                    + (", ".join(plan) or "(none)")
                )
            plan = {s: plan[s] for s in set_ids}
        _raise_all(problems, f"cannot import {path}", InvalidMetadataError)
        _raise_all(shape_problems, f"cannot import {path}", InvalidFeaturesError)
        for set_id, (spec, sampling, dtype, videos) in plan.items():
            exists = set_id in store.feature_sets()
            got = store.ensure_feature_set(
                spec=spec, sampling=sampling, dtype=None if exists else dtype
            )
            if got != set_id:  # the plan checked this; guards against a changed id scheme
                raise InvalidMetadataError(f"{path}: set {set_id!r} is {got!r} in this store")
            counts.written[set_id] = counts.skipped[set_id] = 0
            for video_id, (ds, prov) in videos.items():
                if not overwrite and store.has_video(set_id, video_id):
                    counts.skipped[set_id] += 1
                    continue
                store.write_video(set_id, video_id, ds[...], provenance=prov, overwrite=overwrite)
                counts.written[set_id] += 1
    logger.info("imported %s: %d written, %d kept", path, counts.n_written, counts.n_skipped)
    return counts


def _plan_hdf5(h5: Any, path: Path) -> tuple[dict, list[str], list[str]]:
    """Check an export's metadata; return ({set_id: (spec, sampling, dtype, {video_id:
    (dataset, provenance)})}, metadata problems, shape/dtype problems)."""
    import h5py

    plan: dict[str, tuple] = {}
    problems: list[str] = []
    shape_problems: list[str] = []
    for name, group in h5.items():
        where = f"group {name!r}"
        if not isinstance(group, h5py.Group):
            problems.append(f"{where}: not a group")
            continue
        set_id = _str_attr(group, "id")
        spec = _json_attr(group, "spec", where, problems)
        sampling = _json_attr(group, "sampling", where, problems)
        dtype = _str_attr(group, "dtype") or "float32"
        if set_id is None or spec is None or sampling is None:
            problems.append(f"{where}: needs the attributes 'id', 'spec' and 'sampling'")
            continue
        try:
            if FeatureStore.feature_set_id(spec, sampling) != set_id:
                problems.append(f"{where}: id {set_id!r} does not match its spec and sampling")
                continue
        except InvalidMetadataError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if dtype not in DTYPES:
            problems.append(f"{where}: unknown dtype {dtype!r}")
        dims = spec.get("dims")
        videos: dict[str, tuple] = {}
        for vname, ds in group.items():
            vwhere = f"{set_id} / {vname}"
            if not isinstance(ds, h5py.Dataset):
                problems.append(f"{vwhere}: not a dataset")
                continue
            video_id = _str_attr(ds, "video_id")
            if video_id is None:
                problems.append(f"{vwhere}: attribute 'video_id' missing")
                continue
            vwhere = f"{set_id} / {video_id}"
            prov = _json_attr(ds, "provenance", vwhere, problems)
            if prov is not None:
                try:
                    prov = _validated_provenance(prov, video_id)
                except InvalidMetadataError as exc:
                    problems.append(f"{vwhere}: {exc}")
            if ds.ndim != 2 or 0 in ds.shape:
                shape_problems.append(f"{vwhere}: shape {ds.shape} is not 2-D [steps, dims]")
            elif dims is not None and ds.shape[1] != dims:
                shape_problems.append(f"{vwhere}: {ds.shape[1]} dims, the spec says {dims}")
            if ds.dtype.kind not in "iuf":
                shape_problems.append(f"{vwhere}: dtype {ds.dtype} is not real numeric")
            if video_id in videos:
                problems.append(f"{vwhere}: stored twice in the group")
            videos[video_id] = (ds, prov)
        plan[set_id] = (spec, sampling, dtype, videos)
    return plan, problems, shape_problems


# --------------------------------------------------------------------------- .npy folders


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    if pattern.count("{video_id}") != 1:
        raise InvalidMetadataError(
            f"pattern must contain '{{video_id}}' exactly once, got {pattern!r}"
        )
    head, tail = pattern.split("{video_id}")
    return re.compile(re.escape(head) + r"(?P<id>[^/]+)" + re.escape(tail))


def import_npy_folder(
    store: FeatureStore,
    folder: str | os.PathLike[str],
    *,
    spec: dict,
    sampling: dict,
    pattern: str = "{video_id}.npy",
    id_map: Mapping[str, str] | None = None,
    set_provenance: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> ImportCounts:
    """Import per-video ``.npy`` feature files (VSFA style) as one feature set.

    Every file under ``folder`` whose relative path matches ``pattern`` is one video; the
    ``{video_id}`` part of its name is the video id (it cannot contain ``/``). VSFA names
    its files by dataset index (``pattern="{video_id}_resnet-50_res5c.npy"``): pass
    ``id_map`` (``{"0": "A001.mp4", ...}``) to store them under the real names; then exactly
    the keys of ``id_map`` are imported and a missing file is an error.

    Files are loaded with ``np.load(allow_pickle=False)`` and must hold 2-D real arrays
    [steps, dims] (a pooled vector must be saved as [1, dims]) with ``spec["dims"]`` columns
    (or, without it, all the same number). All files are checked before anything is stored.
    Provenance: ``{"set": {"spec", "sampling", "origin": "imported npy", **set_provenance},
    "video": {"imported_from": <folder>, "file": <relative path>, "sha256": <of the file>,
    "imported_at"}}``; the set-level ``origin`` keeps imported features from being mixed
    with features extracted by this project under the same spec.

    Args:
        store: the store to write into.
        folder: the directory holding the files.
        spec, sampling: describe how the features were made (identify the feature set).
        pattern: relative file path with one ``{video_id}`` placeholder.
        id_map: file id -> video id, for files named by index.
        set_provenance: more set-level provenance (code version, weights, paper...).
        dtype: storage dtype of a new set (see :meth:`FeatureStore.ensure_feature_set`).
        overwrite: replace videos already stored.

    Raises:
        FeatureNotFoundError: ``folder`` is missing, no file matches, or ``id_map`` names
            files that do not exist (all listed).
        InvalidFeaturesError: files that are not 2-D real arrays or disagree in dims (all
            listed); NaN/Inf values.
        InvalidMetadataError: bad pattern, spec, sampling or provenance.
    """
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise FeatureNotFoundError(f"no folder {folder}")
    regex = _pattern_regex(pattern)
    spec_c, sampling_c = _validated_spec_sampling(spec, sampling)
    files: dict[str, Path] = {}
    if id_map is not None:
        paths = {vid: folder / pattern.replace("{video_id}", key) for key, vid in id_map.items()}
        missing = [str(p.relative_to(folder)) for p in paths.values() if not p.is_file()]
        if missing:
            raise FeatureNotFoundError(
                f"{len(missing)} of {len(paths)} files of id_map are missing in {folder}: "
                + ", ".join(missing)
            )
        files = paths
    else:
        head, tail = pattern.split("{video_id}")
        for p in sorted(folder.glob(glob.escape(head) + "*" + glob.escape(tail))):
            m = regex.fullmatch(p.relative_to(folder).as_posix())
            if m and p.is_file():
                files[m.group("id")] = p
    if not files:
        raise FeatureNotFoundError(f"no file in {folder} matches {pattern!r}")

    problems: list[str] = []
    widths: dict[str, int] = {}
    for video_id, p in files.items():
        rel = p.relative_to(folder).as_posix()
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            problems.append(f"{rel}: not a plain .npy array ({exc})")
            continue
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or 0 in arr.shape:
            hint = " (save a pooled vector as [1, dims])" if getattr(arr, "ndim", 0) == 1 else ""
            shape = getattr(arr, "shape", "?")
            problems.append(f"{rel}: shape {shape} is not 2-D [steps, dims]{hint}")
        elif arr.dtype.kind not in "iuf":
            problems.append(f"{rel}: dtype {arr.dtype} is not real numeric")
        else:
            widths[rel] = arr.shape[1]
        del arr
    dims = spec_c.get("dims")
    if dims is None and widths:
        dims = max(set(widths.values()), key=list(widths.values()).count)
    problems += [f"{rel}: {w} dims, expected {dims}" for rel, w in widths.items() if w != dims]
    _raise_all(problems, f"cannot import {folder}", InvalidFeaturesError)

    set_prov = {"spec": spec_c, "sampling": sampling_c, "origin": "imported npy"}
    set_prov.update(set_provenance or {})
    set_id = store.ensure_feature_set(spec=spec_c, sampling=sampling_c, dtype=dtype)
    counts = ImportCounts(written={set_id: 0}, skipped={set_id: 0})
    for i, (video_id, p) in enumerate(files.items()):
        if not overwrite and store.has_video(set_id, video_id):
            counts.skipped[set_id] += 1
            continue
        raw = p.read_bytes()  # one read: hashed and parsed from the same bytes
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        video_prov = {
            "imported_from": str(folder),
            "file": p.relative_to(folder).as_posix(),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "imported_at": _now(),
        }
        store.write_video(
            set_id, video_id, data, provenance={"set": set_prov, "video": video_prov},
            overwrite=overwrite,
        )
        counts.written[set_id] += 1
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("%s: %d of %d files imported", folder, i + 1, len(files))
    logger.info("imported %d files from %s into %s", counts.n_written, folder, set_id)
    return counts
