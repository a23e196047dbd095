"""Moving features in and out of a store: export to / import from HDF5, and import of
VSFA-style ``.npy`` folders.

``vqa store export`` and ``vqa store import`` are thin wrappers around these functions.

HDF5 export layout (plain HDF5, readable by h5py, MATLAB, HDFView; gzip-compressed)::

    /                         attrs {"feature_store_hdf5_format": 1, "exported_from",
                                     "exported"}
    /<set node>               group, one per feature set; node = escaped set id
                              attrs {"id", "spec" (JSON), "sampling" (JSON), "dtype",
                                     "created"}
      /<video node>           dataset [steps, dims] in the set's dtype
                              attrs {"video_id", "provenance" (JSON), "written"}

Node names are :func:`~feature_store.encode_node_name` of the ids; the attributes hold
the ids themselves. Import checks the whole file first and writes nothing if any part of it
is malformed; the values round-trip exactly (same dtype, same provenance).

Imports are all or nothing per feature set (docs/hardening.md, "Imports"): every array's
declared size is checked against the bytes the file holds for it and against
``max_video_bytes`` before anything is read (a 250 KB file declaring 57 GiB is refused without
allocating it), every video's values (NaN/Inf, float16 range) are checked before anything is
written, and a write that fails part-way (disk full) removes the videos this import added and
the set if this import created it. A killed import leaves only complete videos (a re-run skips
them); with ``overwrite`` a video replaced before a failure stays replaced.

Length (over 600 lines): HDF5 export, HDF5 import and ``.npy`` import share the size checks,
the all-or-nothing staging and the provenance mapping that make imports safe.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_store._format import (
    DTYPES,
    canonical_json,
    chunk_shape,
    now,
    set_dtype,
    to_storage_dtype,
    validated_features,
    validated_provenance,
    validated_spec_sampling,
)
from feature_store._naming import encode_node_name, owner_alive, staging_name
from feature_store.errors import (
    FeatureNotFoundError,
    InvalidFeaturesError,
    InvalidMetadataError,
    OutputExistsError,
)
from feature_store.store import FeatureStore

__all__ = [
    "HDF5_FORMAT_VERSION",
    "ImportCounts",
    "export_hdf5",
    "import_hdf5",
    "import_npy_folder",
]

logger = logging.getLogger(__name__)

HDF5_FORMAT_VERSION = 1
"""Layout version of HDF5 exports, in the root attribute ``feature_store_hdf5_format``."""

_HDF5_FORMAT_ATTR = "feature_store_hdf5_format"

DEFAULT_MAX_VIDEO_BYTES = 8 * 2**30
"""Largest array an import reads for one video (bytes its shape declares), checked before it
is read: 8 GiB (one hour of 30 fps frames at 7680 float32 dims is 3.3 GB)."""
# Deflate expands data at most about 1032:1; an HDF5 dataset declaring more than that times the
# bytes stored for it holds unwritten chunks (fill values) or lies about its size.
_MAX_EXPANSION = 1032
_MAX_LISTED = 20  # problems listed in one exception message
_PROGRESS_EVERY = 200  # videos between progress log lines


# --------------------------------------------------------------------------- HDF5


def _temp_sibling(path: Path) -> Path:
    """``.<name>.tmp.<pid>.<uuid>.<host>`` next to ``path``; deletes such files of dead
    processes on this host first (exports killed part-way).

    Not ``vqa_core.atomic``: h5py writes the file itself, and the owner-tagged name is what
    lets a later export tell a killed export's temporary file from a running one's, also on
    a folder shared by several hosts.
    """
    prefix = f".{path.name}."
    for entry in os.scandir(path.parent):
        if entry.name.startswith(prefix + "tmp."):
            if owner_alive(entry.name[len(prefix) :]) is False:
                logger.info("removing %s, left by a killed export", entry.path)
                Path(entry.path).unlink(missing_ok=True)
    return path.with_name(prefix + staging_name("tmp"))


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
        InvalidFeaturesError: a video is damaged (run ``verify``); nothing is written.
    """
    import h5py  # imported here: only export/import need it

    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    set_ids = store.feature_sets() if set_ids is None else list(set_ids)
    for set_id in set_ids:
        store.layout.set_attrs(set_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    counts: dict[str, int] = {}
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs[_HDF5_FORMAT_ATTR] = HDF5_FORMAT_VERSION
            h5.attrs["exported_from"] = store.location
            h5.attrs["exported"] = now()
            for set_id in set_ids:
                counts[set_id] = _export_set(store, set_id, h5, compression)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %d videos of %d feature sets to %s", sum(counts.values()), len(counts), path)
    return counts


def _export_set(store: FeatureStore, set_id: str, h5: Any, compression: str | None) -> int:
    attrs = store.layout.set_attrs(set_id)
    group = h5.create_group(encode_node_name(set_id))
    group.attrs["id"] = set_id
    group.attrs["spec"] = canonical_json(attrs.get("spec"))
    group.attrs["sampling"] = canonical_json(attrs.get("sampling"))
    group.attrs["dtype"] = set_dtype(attrs)
    group.attrs["created"] = str(attrs.get("created"))
    options: dict[str, Any] = {}
    if compression == "gzip":
        options = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    elif compression is not None:
        options = {"compression": compression, "shuffle": True}
    video_ids = store.video_ids(set_id)
    for i, video_id in enumerate(video_ids):
        meta = store.layout.complete_meta(set_id, video_id)
        if meta is None:
            logger.warning("%s / %s was removed during the export; skipped", set_id, video_id)
            continue
        data, problem = store.layout.read_stored(set_id, video_id)
        if problem:
            raise InvalidFeaturesError(f"{set_id} / {video_id}: {problem}; re-extract it with overwrite")
        chunks = chunk_shape(*data.shape, data.dtype.itemsize) if options else None
        ds = group.create_dataset(encode_node_name(video_id), data=data, chunks=chunks, **options)
        ds.attrs["video_id"] = video_id
        ds.attrs["provenance"] = canonical_json(meta["attributes"]["provenance"])
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
    raise exc_type(f"{what}: {len(problems)} problem(s), nothing was imported:\n  " + "\n  ".join(listed) + more)


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
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
) -> ImportCounts:
    """Import an :func:`export_hdf5` file into ``store``; return the counts per set.

    The whole file is checked first (format version, set ids against their spec and
    sampling, 2-D real arrays with the spec's dims, JSON provenance of the form
    ``{"set", "video"}``); if anything is malformed nothing is imported and the error lists
    every problem; so is every array's declared size (against the bytes the file holds for it
    and ``max_video_bytes``), before any array is read. Then every video's values are checked
    (NaN/Inf, float16 range) before any is written, and each set is written all or nothing
    (see the module docstring). New sets get the file's dtype; existing sets keep theirs.
    Data, dtype and provenance round-trip exactly.

    Args:
        store: the store to write into.
        path: an HDF5 file written by :func:`export_hdf5`.
        set_ids: import only these sets of the file (default: all).
        overwrite: replace videos already stored (default: keep them, counted as skipped).
        max_video_bytes: refuse an array whose shape declares more bytes than this.

    Raises:
        InvalidMetadataError: not an export of this format, or malformed metadata.
        InvalidFeaturesError: arrays of the wrong shape/dtype or size, or NaN/Inf.
        FeatureNotFoundError: a set in ``set_ids`` is not in the file.
        ProvenanceMismatchError: provenance contradicts the set's spec/sampling.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeatureNotFoundError(f"no HDF5 file at {path}")
    if not h5py.is_hdf5(path):
        raise InvalidMetadataError(f"{path} is not an HDF5 file (expected an export of `vqa store export`)")
    counts = ImportCounts()
    with h5py.File(path, "r") as h5:
        version = h5.attrs.get(_HDF5_FORMAT_ATTR)
        if not isinstance(version, (int, np.integer)) or version > HDF5_FORMAT_VERSION:
            raise InvalidMetadataError(
                f"{path} is not a feature-store export of format <= {HDF5_FORMAT_VERSION} "
                f"(root attribute {_HDF5_FORMAT_ATTR!r} = {version!r})"
            )
        plan, problems, shape_problems = _plan_hdf5(h5, path, max_video_bytes=max_video_bytes)
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
        existing = set(store.feature_sets())
        todo: dict[str, dict] = {}
        value_problems: list[str] = []
        for set_id, (spec, _, dtype, videos) in plan.items():
            storage = set_dtype(store.layout.set_attrs(set_id)) if set_id in existing else dtype
            todo[set_id] = {}
            for video_id, (ds, prov) in videos.items():
                if not overwrite and set_id in existing and store.has_video(set_id, video_id):
                    continue
                # Read and checked now, read again to write: one video in memory at a time.
                value_problems += _value_problems(
                    lambda ds=ds: ds[...], video_id, spec.get("dims"), storage, where=f"{set_id} / {video_id}"
                )
                todo[set_id][video_id] = (ds, prov)
        _raise_all(value_problems, f"cannot import {path}", InvalidFeaturesError)
        for set_id, (spec, sampling, dtype, videos) in plan.items():
            exists = set_id in existing
            got = store.ensure_feature_set(spec=spec, sampling=sampling, dtype=None if exists else dtype)
            if got != set_id:  # the plan checked this; guards against a changed id scheme
                raise InvalidMetadataError(f"{path}: set {set_id!r} is {got!r} in this store")
            counts.skipped[set_id] = len(videos) - len(todo[set_id])
            counts.written[set_id] = _write_set(
                store,
                set_id,
                ((v, lambda ds=ds: ds[...], prov) for v, (ds, prov) in todo[set_id].items()),
                created=not exists,
                overwrite=overwrite,
            )
    logger.info("imported %s: %d written, %d kept", path, counts.n_written, counts.n_skipped)
    return counts


def _plan_hdf5(h5: Any, path: Path, *, max_video_bytes: int) -> tuple[dict, list[str], list[str]]:
    """Check an export's metadata and declared sizes (nothing is read); return ({set_id:
    (spec, sampling, dtype, {video_id: (dataset, provenance)})}, metadata problems,
    shape/dtype/size problems)."""
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
                    prov = validated_provenance(prov, video_id)
                except InvalidMetadataError as exc:
                    problems.append(f"{vwhere}: {exc}")
            if ds.ndim != 2 or 0 in ds.shape:
                shape_problems.append(f"{vwhere}: shape {ds.shape} is not 2-D [steps, dims]")
            elif dims is not None and ds.shape[1] != dims:
                shape_problems.append(f"{vwhere}: {ds.shape[1]} dims, the spec says {dims}")
            if ds.dtype.kind not in "iuf":
                shape_problems.append(f"{vwhere}: dtype {ds.dtype} is not real numeric")
            else:
                shape_problems += _hdf5_size_problems(ds, vwhere, max_video_bytes)
            if video_id in videos:
                problems.append(f"{vwhere}: stored twice in the group")
            videos[video_id] = (ds, prov)
        plan[set_id] = (spec, sampling, dtype, videos)
    return plan, problems, shape_problems


def _hdf5_size_problems(ds: Any, where: str, max_video_bytes: int) -> list[str]:
    """A dataset's declared size against the limit and the bytes the file stores for it."""
    declared = math.prod(ds.shape) * ds.dtype.itemsize
    if declared > max_video_bytes:
        return [
            f"{where}: shape {ds.shape} declares {declared} bytes, over the import limit of "
            f"{max_video_bytes} bytes per video (max_video_bytes)"
        ]
    stored = ds.id.get_storage_size()
    filtered = ds.id.get_create_plist().get_nfilters() > 0  # compressed: up to deflate's ratio
    if declared > stored * (_MAX_EXPANSION if filtered else 1):
        return [f"{where}: shape {ds.shape} declares {declared} bytes but the file holds {stored} bytes for it"]
    return []


def _value_problems(load: Callable[[], Any], video_id: str, dims: int | None, storage: str, *, where: str) -> list[str]:
    """What :meth:`FeatureStore.write_video` would refuse in one video's values (NaN/Inf,
    float16 range), checked before an import writes anything."""
    try:
        to_storage_dtype(validated_features(load(), video_id, dims), storage, video_id)
    except InvalidFeaturesError as exc:
        return [f"{where}: {exc}"]
    return []


def _write_set(
    store: FeatureStore,
    set_id: str,
    videos: Iterable[tuple[str, Callable[[], Any], dict]],
    *,
    created: bool,
    overwrite: bool,
) -> int:
    """Write ``(video_id, load, provenance)`` items into ``set_id``, all or nothing: when one
    write fails (disk full), the videos this call added are removed, and the set if ``created``
    (by this import), before the error propagates. Returns the number written."""
    added: list[str] = []
    written = 0
    try:
        for video_id, load, prov in videos:
            new = not store.has_video(set_id, video_id)
            store.write_video(set_id, video_id, load(), provenance=prov, overwrite=overwrite)
            written += 1
            if new:
                added.append(video_id)
            if written % _PROGRESS_EVERY == 0:
                logger.info("%s: %d videos imported", set_id, written)
    except BaseException:
        logger.warning(
            "import into %s failed after %d videos; removing the %d it added%s",
            set_id,
            written,
            len(added),
            " and the set" if created else "",
        )
        if created:
            store.layout.remove_set(set_id)
        else:
            for video_id in added:
                store.layout.remove_video(set_id, video_id)
        raise
    return written


# --------------------------------------------------------------------------- .npy folders


def _npy_size_problem(path: Path, max_video_bytes: int) -> str | None:
    """A ``.npy`` file's declared size (from its header) against the limit and the file's bytes."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                return None  # np.load says what is wrong
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError):
        return None  # not a .npy file: np.load's message names the problem
    declared = math.prod(shape) * dtype.itemsize
    if declared > max_video_bytes:
        return (
            f"shape {shape} declares {declared} bytes, over the import limit of {max_video_bytes} bytes per "
            "video (max_video_bytes)"
        )
    held = path.stat().st_size - offset
    if declared > held:
        return f"shape {shape} declares {declared} bytes but the file holds {held}"
    return None


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    if pattern.count("{video_id}") != 1:
        raise InvalidMetadataError(f"pattern must contain '{{video_id}}' exactly once, got {pattern!r}")
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
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
) -> ImportCounts:
    """Import per-video ``.npy`` feature files (VSFA style) as one feature set.

    Every file under ``folder`` whose relative path matches ``pattern`` is one video; the
    ``{video_id}`` part of its name is the video id (it cannot contain ``/``). VSFA names
    its files by dataset index (``pattern="{video_id}_resnet-50_res5c.npy"``): pass
    ``id_map`` (``{"0": "A001.mp4", ...}``) to store them under the real names; then exactly
    the keys of ``id_map`` are imported and a missing file is an error.

    Files are loaded with ``np.load(allow_pickle=False)`` and must hold 2-D real arrays
    [steps, dims] (a pooled vector must be saved as [1, dims]) with ``spec["dims"]`` columns
    (or, without it, all the same number), and hold exactly the bytes their header declares,
    at most ``max_video_bytes``. All files are checked (values too: NaN/Inf, float16 range)
    before anything is stored, and the set is written all or nothing (module docstring).
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
        max_video_bytes: refuse a file whose header declares more bytes than this.

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
    spec_c, sampling_c = validated_spec_sampling(spec, sampling)
    files: dict[str, Path] = {}
    if id_map is not None:
        paths = {vid: folder / pattern.replace("{video_id}", key) for key, vid in id_map.items()}
        missing = [str(p.relative_to(folder)) for p in paths.values() if not p.is_file()]
        if missing:
            raise FeatureNotFoundError(
                f"{len(missing)} of {len(paths)} files of id_map are missing in {folder}: " + ", ".join(missing)
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
    for p in files.values():
        rel = p.relative_to(folder).as_posix()
        size_problem = _npy_size_problem(p, max_video_bytes)
        if size_problem:
            problems.append(f"{rel}: {size_problem}")
            continue
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
    set_id = FeatureStore.feature_set_id(spec_c, sampling_c)
    exists = set_id in store.feature_sets()
    storage = set_dtype(store.layout.set_attrs(set_id)) if exists else (dtype or "float32")
    todo = {v: p for v, p in files.items() if overwrite or not exists or not store.has_video(set_id, v)}
    problems = []
    for video_id, p in todo.items():  # values, before anything is written
        problems += _value_problems(
            lambda p=p: np.load(p, mmap_mode="r", allow_pickle=False),
            video_id,
            dims,
            storage,
            where=p.relative_to(folder).as_posix(),
        )
    _raise_all(problems, f"cannot import {folder}", InvalidFeaturesError)
    if store.ensure_feature_set(spec=spec_c, sampling=sampling_c, dtype=dtype) != set_id:
        raise InvalidMetadataError(f"{folder}: set {set_id!r} has another id in this store")

    def items():
        for video_id, p in todo.items():
            raw = p.read_bytes()  # one read: hashed and parsed from the same bytes
            video_prov = {
                "imported_from": str(folder),
                "file": p.relative_to(folder).as_posix(),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "imported_at": now(),
            }
            data = np.load(io.BytesIO(raw), allow_pickle=False)
            yield video_id, (lambda data=data: data), {"set": set_prov, "video": video_prov}

    written = _write_set(store, set_id, items(), created=not exists, overwrite=overwrite)
    counts = ImportCounts(written={set_id: written}, skipped={set_id: len(files) - len(todo)})
    logger.info("imported %d files from %s into %s", counts.n_written, folder, set_id)
    return counts
