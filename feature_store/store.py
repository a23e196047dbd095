"""The feature store: per-video feature matrices in a Zarr v3 directory store.

The store is a local directory (a plain path) or an fsspec URL (``s3://``, ``gs://``,
``file://``, ``memory://``, ...): see "Remote stores" below for what differs.

Layout on disk (one local directory; every ``zarr.json`` is plain Zarr v3)::

    <store>/
      zarr.json                      root group, attrs {"feature_store_format": 1}
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

Node names: video ids (and set ids) are user data, so they are escaped with
:func:`encode_node_name` (percent-encoding of UTF-8 bytes outside ``[A-Za-z0-9._-]``, plus a
leading ``.``/``_`` and the name ``zarr.json``). The mapping is injective and reversible
(:func:`decode_node_name`); escaped names longer than 185 characters are shortened with a
hash (then only the ``video_id`` attribute holds the original). Names starting with ``_``
never come from user data: they are the store's own.

Atomic completion: a video is written completely into ``_staging/new.*`` (data first, then
the attributes with ``"status": "complete"``), then renamed into place with ``os.rename``,
which is atomic on one POSIX filesystem and fails if the destination exists. Readers count
a video only if its node is in place *and* says ``"status": "complete"`` for the same video
id, so a process killed at any point leaves either the complete video or nothing (plus a
staging leftover that :meth:`FeatureStore.remove_incomplete` deletes). Power loss is not
covered: nothing is fsynced.

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
store uses another completion protocol, the same for every protocol (``file://`` included:
that is how several processes or machines share a POSIX folder through it; a plain path
keeps the rename protocol above):

1. the video's ``zarr.json`` is PUT at its final node with ``"status": "writing"`` and the
   writer's ``<pid>.<uuid>.<host>``; from then on the node does not count as stored;
2. chunks of an earlier array at that node that the new one does not overwrite are deleted,
   and the new chunks are PUT (NaN fill value: a missing chunk reads as NaN, never as data);
3. the ``zarr.json`` with ``"status": "complete"`` and ``data_sha256`` is PUT last.

Each PUT replaces one object atomically (S3, GCS and Azure guarantee that, and read-after-
write consistency; in memory it is a dict assignment; on ``file://`` it is emulated with a
temporary file in ``<store>/_staging`` and ``os.replace``). Hence, as in the local mode, a
killed writer leaves either the previous state or a node that does not count as stored; it
is re-extracted by the next run (re-writing the node works), reported by ``verify`` as a
leftover (writer dead on this host) or in flight (writer alive, or on another host and
active within the last hour), and deleted by :meth:`FeatureStore.remove_incomplete`.

What is *not* atomic in a URL store:

* overwriting a stored video: from step 1 to step 3 the video reads as not stored; a writer
  killed meanwhile leaves it not stored (re-extract it);
* two writers of the same video at once: both write; each checks, before its last PUT,
  whether the other touched the node, and if so reads the result back against its
  ``data_sha256`` and rewrites mixed chunks (a few rounds). With ``overwrite=False`` and equal
  data the first complete copy is kept, as in local mode. A reader during the race may see
  the video as not stored, or (rarely, when the two wrote different data) get a checksum
  error; a mismatch left in the store is reported by ``verify`` (re-extract with overwrite);
* creating a feature set is one PUT of its ``zarr.json`` (two creators write the same group,
  except the ``created`` time; a race between different explicit ``dtype`` values is not
  detected);
* removing a feature set marks it ``"status": "removing"`` (it leaves every listing at once),
  then deletes its objects, its ``zarr.json`` last; a killed removal is finished by
  ``remove_incomplete`` or by ``maintenance.remove`` with the set's full id. Removing a video
  deletes its ``zarr.json`` first.

``memory://`` stores live in one process (tests, scratch work). ``runs_dir`` is a local
folder only; :meth:`FeatureStore.write_run_file` writes run records in every store.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.codecs
from zarr.storage import LocalStore, MemoryStore

from feature_store._fs import FsspecFS, LocalFS, open_fs
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    ProvenanceMismatchError,
)

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

FORMAT_VERSION = 1
"""On-disk layout version written to the root and every feature-set group."""

_FORMAT_ATTR = "feature_store_format"
_STAGING = "_staging"
RUNS_DIR = "_runs"  # run records and generated manifests of the flows that fill the store
_META = "zarr.json"
_COMPLETE = "complete"
_WRITING = "writing"
_REMOVING = "removing"  # object stores: a feature set whose removal has begun
_MAX_WRITE_ROUNDS = 5  # object stores: rewrites of a video whose racing writers mixed chunks

DTYPES = ("float32", "float16")
"""Storage dtypes a feature set may use."""

_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_MAX_CHUNK_STEPS = 256
# What zarr raises for malformed array metadata or undecodable chunks (not OSError: disk
# errors propagate as they are).
_DAMAGE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError)
# Blosc zstd level 1 with byte shuffle: on CNN-like features as small as level 5 (0.66x vs
# 0.68x of raw float32) and 1.6-3.8x faster to write, reads as fast; bitshuffle compresses
# worse (0.86x); lz4 (0.90x) and no compression (1.0x) read 1.3-2.6x faster from the page
# cache. Whole-video chunks (<= 256 steps) beat 64-step chunks on file count at equal speed.
# Measurements: bench/store_layout.py (it patches _CODEC and _MAX_CHUNK_STEPS).
_CODEC = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}
_MAX_CHUNK_BYTES = 16 * 2**20  # keeps a chunk cheap to decompress for a random read
_MAX_NODE_NAME = 185  # well below the 255-byte filename limit of common filesystems
_HASHED_PREFIX = 160
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_STALE_FOREIGN_S = 3600.0


# --------------------------------------------------------------------------- node names


def encode_node_name(name: str) -> str:
    """Escape a user-given id (video id, set id) into a safe Zarr node / file name.

    Bytes of the UTF-8 encoding outside ``[A-Za-z0-9._-]`` become ``%XX``; so do a leading
    ``.`` or ``_`` (hidden files, ``..``, the store's reserved ``_`` names, Zarr's reserved
    ``__`` prefix) and the first letter of a name equal to ``zarr.json``. The result is
    injective; :func:`decode_node_name` inverts it. Results longer than 185 characters are
    cut and suffixed with ``~`` and a 96-bit hash of the id (``~`` never occurs otherwise).

    Raises:
        InvalidMetadataError: ``name`` is not a non-empty str encodable as UTF-8.
    """
    if not isinstance(name, str) or not name:
        raise InvalidMetadataError(f"ids must be non-empty strings, got {name!r}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMetadataError(f"id {name!r} cannot be encoded as UTF-8: {exc}") from None
    parts = []
    for i, ch in enumerate(name):
        if ch in _SAFE_CHARS and not (i == 0 and ch in "._"):
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    out = "".join(parts)
    if out.lower() == _META:
        out = f"%{ord(out[0]):02X}{out[1:]}"
    if len(out) > _MAX_NODE_NAME:
        cut = _HASHED_PREFIX
        while "%" in out[cut - 2 : cut]:  # never cut an escape in half
            cut -= 1
        out = f"{out[:cut]}~{hashlib.sha256(raw).hexdigest()[:24]}"
    return out


def decode_node_name(node: str) -> str | None:
    """Invert :func:`encode_node_name`; ``None`` for shortened (hashed) names.

    Raises:
        ValueError: ``node`` is not a valid escaped name.
    """
    if "~" in node:
        return None
    out = bytearray()
    i = 0
    while i < len(node):
        ch = node[i]
        if ch == "%":
            out += bytes.fromhex(node[i + 1 : i + 3])
            i += 3
        else:
            out += ch.encode("ascii")
            i += 1
    return out.decode("utf-8")


# --------------------------------------------------------------------------- metadata


def _canonical(obj: Any, where: str) -> Any:
    """Return ``obj`` as plain JSON data, or raise :class:`InvalidMetadataError`.

    Integral floats become ints (``2.0`` and ``2`` must give one set id); numpy scalars and
    arrays become Python values; tuples become lists; paths become strings.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):
        obj = obj.item()
        if isinstance(obj, (bool, str)) or obj is None:
            return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise InvalidMetadataError(f"{where}: non-finite number {obj!r} is not JSON")
        return int(obj) if obj.is_integer() and abs(obj) < 2**53 else obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise InvalidMetadataError(f"{where}: keys must be str, got {key!r}")
            out[key] = _canonical(value, f"{where}.{key}")
        return out
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist(), where)
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise InvalidMetadataError(f"{where}: {type(obj).__name__} {obj!r} is not JSON")


def _canonical_json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _sha256(obj: Any) -> str:
    return hashlib.sha256(_canonical_json(obj).encode("ascii")).hexdigest()


def _sampling_name(sampling: Mapping[str, Any]) -> str:
    """``{"strategy": "uniform", "value": 16}`` -> ``"uniform-16"``; no value -> strategy."""
    strategy = sampling["strategy"]
    value = sampling.get("value")
    if value is None or isinstance(value, (list, dict, bool)):
        return str(strategy)
    return f"{strategy}-{value}"


def _validated_spec_sampling(spec: Any, sampling: Any) -> tuple[dict, dict]:
    if not isinstance(spec, Mapping):
        raise InvalidMetadataError(f"spec must be a dict, got {type(spec).__name__}")
    if not isinstance(sampling, Mapping):
        raise InvalidMetadataError(f"sampling must be a dict, got {type(sampling).__name__}")
    spec_c = _canonical(spec, "spec")
    sampling_c = _canonical(sampling, "sampling")
    if not isinstance(spec_c.get("name"), str) or not spec_c["name"]:
        raise InvalidMetadataError(
            f"spec needs a non-empty str 'name', got {spec_c.get('name')!r}"
        )
    if not isinstance(sampling_c.get("strategy"), str) or not sampling_c["strategy"]:
        raise InvalidMetadataError(
            f"sampling needs a non-empty str 'strategy', got {sampling_c.get('strategy')!r}"
        )
    dims = spec_c.get("dims")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidMetadataError(f"spec['dims'] must be a positive int, got {dims!r}")
    return spec_c, sampling_c


def _validated_provenance(provenance: Any, video_id: str) -> dict:
    if not isinstance(provenance, Mapping):
        raise InvalidMetadataError(
            f"video {video_id!r}: provenance must be a dict "
            f'{{"set": {{...}}, "video": {{...}}}}, got {type(provenance).__name__}'
        )
    extra = set(provenance) - {"set", "video"}
    if extra or "set" not in provenance:
        raise InvalidMetadataError(
            f"video {video_id!r}: provenance must have the keys 'set' (required) and "
            f"'video' only; got {sorted(map(str, provenance))}"
        )
    prov = _canonical(dict(provenance), "provenance")
    prov.setdefault("video", {})
    for part in ("set", "video"):
        if not isinstance(prov[part], dict):
            raise InvalidMetadataError(f"video {video_id!r}: provenance[{part!r}] must be a dict")
    return prov


def _validated_features(features: Any, video_id: str, dims: int | None) -> np.ndarray:
    """Check ``features`` [steps, dims] and return it as C-contiguous float32."""
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise InvalidFeaturesError(
            f"video {video_id!r}: features must be 2-D [steps, dims], got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iuf":
        raise InvalidFeaturesError(
            f"video {video_id!r}: features must be a real numeric array, got dtype {arr.dtype}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidFeaturesError(f"video {video_id!r}: features are empty, shape {arr.shape}")
    if dims is not None and arr.shape[1] != dims:
        raise InvalidFeaturesError(
            f"video {video_id!r}: features have {arr.shape[1]} dims, the spec says {dims}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise InvalidFeaturesError(
            f"video {video_id!r}: {bad} of {out.size} feature values are NaN/Inf "
            f"(or beyond float32 range) in shape {out.shape}; nothing was stored"
        )
    return out


def _to_storage_dtype(data: np.ndarray, dtype: str, video_id: str) -> np.ndarray:
    """Cast validated float32 features [steps, dims] to the set's storage dtype.

    Raises:
        InvalidFeaturesError: float16 storage and some |value| > 65504 (it would become inf).
    """
    if dtype == "float32":
        return data
    peak = float(np.max(np.abs(data)))
    if peak > _FLOAT16_MAX:
        n_over = int(np.count_nonzero(np.abs(data) > _FLOAT16_MAX))
        raise InvalidFeaturesError(
            f"video {video_id!r}: {n_over} of {data.size} feature values exceed the float16 "
            f"range (max |x| = {peak:.6g} > {_FLOAT16_MAX:.0f}); this feature set is stored "
            "as float16, so nothing was stored. Scale the features or use a float32 set."
        )
    return data.astype(np.float16)


def _set_dtype(attrs: Mapping[str, Any]) -> str:
    """Storage dtype of a feature set from its group attributes (float32 when absent)."""
    return attrs.get("dtype") or "float32"


def _check_dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name if isinstance(dtype, (type, np.dtype)) else dtype
    if name not in DTYPES:
        raise InvalidMetadataError(f"storage dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def _chunk_shape(steps: int, dims: int, itemsize: int = 4) -> tuple[int, int]:
    """Up to 256 steps x all dims, at most ~16 MB per chunk (dims split only if one row is
    larger than that)."""
    row_bytes = dims * itemsize
    if row_bytes > _MAX_CHUNK_BYTES:
        return 1, max(1, _MAX_CHUNK_BYTES // itemsize)
    return max(1, min(steps, _MAX_CHUNK_STEPS, _MAX_CHUNK_BYTES // row_bytes)), dims


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _parse_meta(raw: bytes | None) -> dict | None:
    """Parsed ``zarr.json`` bytes, or ``None`` if absent or unreadable (half-written)."""
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        return None  # damaged or hand-edited: not metadata this code can use
    return meta


def _read_meta(fs: "LocalFS | FsspecFS", node: str) -> dict | None:
    """Parsed ``zarr.json`` of the node at key ``node`` (``""``: the root), or ``None`` if
    absent or unreadable (half-written)."""
    return _parse_meta(fs.read_bytes(f"{node}/{_META}" if node else _META))


def _data_sha256(data: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (stored dtype): the ``data_sha256`` attribute."""
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _checksum_problem(array: zarr.Array, stored: np.ndarray) -> str | None:
    """Why ``stored`` (all of ``array``, in its stored dtype) does not match the array's
    ``data_sha256`` attribute; None if it does or the video predates checksums."""
    expected = array.attrs.get("data_sha256")
    if expected is None:
        return None
    if not isinstance(expected, str) or _data_sha256(stored) != expected:
        return (
            "its data does not match its data_sha256 checksum (a chunk was damaged or "
            "replaced, or two writers of this video mixed their chunks)"
        )
    return None


def _is_complete(meta: dict | None, video_id: str | None = None) -> bool:
    if meta is None or meta.get("node_type") != "array":
        return False
    attrs = meta.get("attributes") or {}
    if attrs.get("status") != _COMPLETE:
        return False
    if video_id is not None and attrs.get("video_id") != video_id:
        return False
    return _well_formed_video(meta)


def _well_formed_video(meta: dict) -> bool:
    """Whether a complete video's metadata holds what readers index into. A damaged or
    hand-edited node counts as not stored (it is re-extracted) instead of crashing readers."""
    shape, attrs = meta.get("shape"), meta.get("attributes") or {}
    provenance = attrs.get("provenance")
    return (
        isinstance(attrs.get("video_id"), str)
        and isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        and isinstance(provenance, dict)
        and isinstance(provenance.get("set"), dict)
        and isinstance(attrs.get("set_provenance_sha256"), (str, type(None)))
        and isinstance(attrs.get("data_sha256"), (str, type(None)))
    )


def _live_set(attrs: dict) -> bool:
    """A well-formed feature set that is not being removed (object stores)."""
    return attrs.get("status") != _REMOVING and _well_formed_set(attrs)


def _well_formed_set(attrs: dict) -> bool:
    """Whether a feature set's group attributes hold what the store relies on."""
    if not (isinstance(attrs.get("spec"), dict) and isinstance(attrs.get("sampling"), dict)):
        return False
    try:  # compared as canonical JSON with what callers pass
        _canonical_json([attrs["spec"], attrs["sampling"]])
    except ValueError:  # NaN/Infinity in a hand-edited file
        return False
    return _set_dtype(attrs) in DTYPES


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _host_tag() -> str:
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    return host[:64] or "host"


def _staging_name(kind: str) -> str:
    """``<kind>.<pid>.<uuid>.<host>``: the owner can be checked for liveness later."""
    return f"{kind}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{_host_tag()}"


def _owner_alive(name: str) -> bool | None:
    """True/False if the staging entry's owner process is alive on this host; None if the
    entry is from another host or has an unknown name."""
    parts = name.split(".", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False  # not ours: a leftover by definition
    if parts[3] != _host_tag():
        return None
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _diff_keys(a: Mapping, b: Mapping) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, object()) != b.get(k, object()))


def _write_group(path: Path, attributes: dict) -> None:
    zarr.open_group(store=LocalStore(path), mode="w", attributes=attributes, zarr_format=3)


def _group_meta_bytes(attributes: dict) -> bytes:
    """The ``zarr.json`` of a Zarr v3 group with ``attributes`` (built in memory)."""
    mem: dict = {}
    zarr.open_group(store=MemoryStore(mem), mode="w", attributes=attributes, zarr_format=3)
    return mem[_META].to_bytes()


def _encode_array(
    data: np.ndarray,
    *,
    dtype: str,
    chunks: tuple[int, int],
    dimension_names: tuple[str, str],
    attributes: dict,
    compressors: Any = "auto",
) -> tuple[bytes, dict[str, bytes]]:
    """Encode ``data`` as a Zarr v3 array in memory (NaN fill value): its ``zarr.json`` with
    ``attributes``, and its chunk objects by key (``c/<i>/<j>``)."""
    mem: dict = {}
    arr = zarr.create_array(
        store=MemoryStore(mem),
        shape=data.shape,
        chunks=chunks,
        dtype=dtype,
        compressors=compressors,
        fill_value=float("nan"),
        dimension_names=dimension_names,
        attributes=attributes,
        zarr_format=3,
    )
    arr[...] = data
    meta = mem.pop(_META).to_bytes()
    return meta, {key: value.to_bytes() for key, value in mem.items()}


def _with_attributes(meta_bytes: bytes, attributes: dict) -> bytes:
    """A node's ``zarr.json`` bytes with its attributes replaced."""
    meta = json.loads(meta_bytes)
    meta["attributes"] = attributes
    return json.dumps(meta, indent=2).encode("utf-8")


# --------------------------------------------------------------------------- the store


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

    Raises:
        FeatureNotFoundError: ``create=False`` and there is no store at ``path``.
        FeatureStoreError: ``path`` is a file, a non-empty directory that is not a feature
            store, or a store written by a newer format version; a URL with an unknown
            protocol or one whose package is not installed (the message says what to install).

    Attributes:
        path: the store's directory (:class:`~pathlib.Path`) for a local store; the URL
            (str) for a remote one.
        location: the directory or URL as a str, for messages.

    The object holds only its location: it is cheap to create and safe to pickle to workers
    (a ``memory://`` store is per process: other processes see an empty one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._fs = open_fs(path, storage_options)
        self.storage_options = dict(storage_options) if storage_options else None
        self.location = self._fs.location
        self.path: Path | str = self._fs.root if self._fs.local else self.location
        try:
            raw = self._fs.read_bytes(_META)
            if raw is None:
                if not create:
                    raise FeatureNotFoundError(f"no feature store at {self.location}")
                self._create_root()
                raw = self._fs.read_bytes(_META)
        except FeatureStoreError:
            raise
        except Exception as exc:
            if self._fs.local:
                raise
            # The first access to a URL: wrong credentials, bucket, endpoint, network.
            raise FeatureStoreError(
                f"cannot open the feature store at {self.location}: {type(exc).__name__}: "
                f"{exc} (check the URL, credentials and storage_options)"
            ) from exc
        meta = _parse_meta(raw)
        attrs = (meta or {}).get("attributes") or {}
        if (meta or {}).get("node_type") != "group" or _FORMAT_ATTR not in attrs:
            raise FeatureStoreError(f"{self.location} is a Zarr node but not a feature store")
        if not isinstance(attrs[_FORMAT_ATTR], int) or attrs[_FORMAT_ATTR] > FORMAT_VERSION:
            raise FeatureStoreError(
                f"{self.location} has store format {attrs[_FORMAT_ATTR]!r}; this code reads "
                f"format <= {FORMAT_VERSION}: update the project"
            )

    @property
    def is_local(self) -> bool:
        """True for a local directory (rename protocol), False for a URL (object protocol)."""
        return self._fs.local

    @property
    def runs_dir(self) -> Path:
        """Folder for run records (extraction summaries, generated manifests); not features.

        Local stores only; use :meth:`write_run_file`, which works for every store.

        Raises:
            FeatureStoreError: the store is a URL, not a local directory.
        """
        if not self._fs.local:
            raise FeatureStoreError(
                f"{self.location} is not a local directory: write run records with "
                "FeatureStore.write_run_file()"
            )
        return self.path / RUNS_DIR

    def write_run_file(self, name: str, text: str) -> str:
        """Write (or replace, atomically) the run record ``_runs/<name>``; return where it is
        (a path for a local store, a URL otherwise).

        Raises:
            InvalidMetadataError: ``name`` is not a plain file name.
        """
        if (
            not isinstance(name, str)
            or not name
            or name.startswith((".", "_"))
            or any(c in name for c in "/\\\0")
        ):
            raise InvalidMetadataError(f"run record names are plain file names, got {name!r}")
        key = f"{RUNS_DIR}/{name}"
        self._fs.write_bytes(key, text.encode("utf-8"))
        return self._fs.url(key)

    def __repr__(self) -> str:
        return f"FeatureStore({self.location!r})"

    def _create_root(self) -> None:
        if not self._fs.local:
            self._create_root_in_place()
            return
        if self.path.exists() and not self.path.is_dir():
            raise FeatureStoreError(f"{self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        foreign = [
            p.name
            for p in self.path.iterdir()
            if p.name != _STAGING and not p.name.startswith(".init.")
        ]
        if foreign:
            raise FeatureStoreError(
                f"{self.path} is a non-empty directory and not a feature store "
                f"(contains {sorted(foreign)[:5]}); choose an empty or new directory"
            )
        # Build the metadata aside and move each file in with an atomic replace, root last,
        # so concurrent creators never expose a half-written zarr.json.
        tmp = self.path / f".{_staging_name('init')}"
        try:
            _write_group(tmp, {_FORMAT_ATTR: FORMAT_VERSION})
            _write_group(tmp / _STAGING, {})
            (self.path / _STAGING).mkdir(exist_ok=True)
            os.replace(tmp / _STAGING / _META, self.path / _STAGING / _META)
            os.replace(tmp / _META, self.path / _META)
        finally:
            _rmtree(tmp)
        logger.info("created feature store at %s", self.path)

    def _create_root_in_place(self) -> None:
        """Object stores: one PUT of the root ``zarr.json`` (concurrent creators write
        identical bytes)."""
        if self._fs.is_file(""):
            raise FeatureStoreError(f"{self.location} exists and is a file, not a folder")
        names = {e.name for e in self._fs.list("")}
        if _META in names:
            return  # created concurrently (anything else listed is that store's)
        foreign = sorted(names - {_STAGING})
        if foreign:
            raise FeatureStoreError(
                f"{self.location} is not empty and not a feature store "
                f"(contains {foreign[:5]}); choose an empty or new location"
            )
        self._fs.write_bytes(f"{_STAGING}/{_META}", _group_meta_bytes({}))  # as a local store
        self._fs.write_bytes(_META, _group_meta_bytes({_FORMAT_ATTR: FORMAT_VERSION}))
        logger.info("created feature store at %s", self.location)

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
        spec_c, sampling_c = _validated_spec_sampling(spec, sampling)
        digest = _sha256({"spec": spec_c, "sampling": sampling_c})[:10]
        return f"{spec_c['name']}--{_sampling_name(sampling_c)}--{digest}"

    def ensure_feature_set(
        self, *, spec: dict, sampling: dict, dtype: str | None = None
    ) -> str:
        """Create the feature set's group (once; atomically) and return its id.

        Args:
            spec, sampling: identify the set (see :meth:`feature_set_id`).
            dtype: storage dtype, ``"float32"`` or ``"float16"``. ``None``: the existing
                set's dtype, or float32 for a new set. The dtype is not part of the set id:
                one store holds a set in one dtype.

        Safe to call from many processes at once: the group is built in ``_staging`` and
        renamed into place; losers of the race keep the winner's group. (Object stores: the
        group is one PUT of its ``zarr.json``; concurrent creators with the same ``dtype``
        write the same group.)

        Raises:
            ProvenanceMismatchError: the set exists with another explicit ``dtype``.
        """
        set_id = self.feature_set_id(spec, sampling)
        spec_c, sampling_c = _validated_spec_sampling(spec, sampling)
        dtype = None if dtype is None else _check_dtype(dtype)
        set_dir = self._set_dir(set_id)
        group_attrs = {
            "id": set_id,
            "spec": spec_c,
            "sampling": sampling_c,
            "created": _now(),
            _FORMAT_ATTR: FORMAT_VERSION,
            "dtype": dtype or "float32",
        }
        if not self._fs.local:
            meta_key = f"{self._set_key(set_id)}/{_META}"
            if self._fs.read_bytes(meta_key) is None:  # present but damaged: reported below
                # the same layout as a local store (readable as one), the set's group last
                self._fs.write_bytes(f"{self._set_key(set_id)}/{_STAGING}/{_META}", _group_meta_bytes({}))
                self._fs.write_bytes(meta_key, _group_meta_bytes(group_attrs))
                logger.info("created feature set %s", set_id)
        elif self._set_meta(set_id) is None:
            tmp = self.path / _STAGING / _staging_name("new")
            try:
                _write_group(tmp, group_attrs)
                _write_group(tmp / _STAGING, {})
                os.rename(tmp, set_dir)
                logger.info("created feature set %s", set_id)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                logger.debug("feature set %s was created concurrently", set_id)
            finally:
                _rmtree(tmp)
        attrs = self._set_attrs(set_id)
        if _canonical_json(attrs.get("spec")) != _canonical_json(spec_c) or _canonical_json(
            attrs.get("sampling")
        ) != _canonical_json(sampling_c):
            raise ProvenanceMismatchError(
                f"feature set {set_id!r} exists with a different spec/sampling "
                "(a 10-hex-digit hash collision or a hand-edited store)"
            )
        if dtype is not None and _set_dtype(attrs) != dtype:
            raise ProvenanceMismatchError(
                f"feature set {set_id!r} is stored as {_set_dtype(attrs)}, not {dtype}; "
                "remove it first (vqa store rm) or use another store"
            )
        return set_id

    def feature_sets(self) -> list[str]:
        """Ids of all feature sets, sorted (sets with damaged metadata are left out)."""
        ids = []
        nodes = [e.name for e in self._fs.list("") if e.is_dir and not e.name.startswith(("_", "."))]
        for name, raw in self._fs.read_many([f"{n}/{_META}" for n in nodes]).items():
            attrs = (_parse_meta(raw) or {}).get("attributes") or {}
            set_id = attrs.get("id")
            node = name[: -len(_META) - 1]
            if isinstance(set_id, str) and encode_node_name(set_id) == node and _live_set(attrs):
                ids.append(set_id)
        return sorted(ids)

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
        by_extractor = [s for s in ids if self._set_attrs(s).get("spec", {}).get("name") == name]
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
        raise FeatureNotFoundError(
            f"no feature set matches {name!r}.{hint} Known feature sets: {known}"
        )

    def _set_key(self, set_id: str) -> str:
        return encode_node_name(set_id)

    def _set_dir(self, set_id: str) -> Path | str:
        """The set's folder: a Path for a local store, a URL (str) for a remote one."""
        key = self._set_key(set_id)
        return self._fs.path(key) if self._fs.local else self._fs.url(key)

    def _set_meta(self, set_id: str) -> dict | None:
        meta = _read_meta(self._fs, self._set_key(set_id))
        attrs = (meta or {}).get("attributes") or {}
        if attrs.get("id") != set_id or not _live_set(attrs):
            return None
        return meta

    def _set_attrs(self, set_id: str) -> dict:
        """Attributes of an existing set; FeatureNotFoundError (with hints) otherwise."""
        meta = self._set_meta(set_id)
        meta_key = f"{self._set_key(set_id)}/{_META}"
        if meta is None:
            raw = self._fs.read_bytes(meta_key)
            attrs = (_parse_meta(raw) or {}).get("attributes") or {}
            if raw is not None and attrs.get("id") == set_id and attrs.get("status") == _REMOVING:
                raise FeatureNotFoundError(
                    f"feature set {set_id!r} in {self.location} is being removed (if that "
                    "removal was killed, remove() with its full id or remove_incomplete() "
                    "finishes it)"
                )
            if raw is not None:
                raise InvalidMetadataError(
                    f"feature set {set_id!r} in {self.location} has damaged metadata: "
                    f"{self._fs.url(meta_key)} does not describe it (hand-edited or corrupt); "
                    "repair or remove that folder"
                )
            ids = self.feature_sets() if isinstance(set_id, str) else []
            close = difflib.get_close_matches(str(set_id), ids, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise FeatureNotFoundError(
                f"no feature set {set_id!r} in {self.location}.{hint} "
                "(use resolve() for names and prefixes; ensure_feature_set() creates sets)"
            )
        return meta.get("attributes") or {}

    # ------------------------------------------------------------------ videos

    def _video_key(self, set_id: str, video_id: str) -> str:
        return f"{self._set_key(set_id)}/{encode_node_name(video_id)}"

    def _video_dir(self, set_id: str, video_id: str) -> Path | str:
        """The video's node: a Path for a local store, a URL (str) for a remote one."""
        key = self._video_key(set_id, video_id)
        return self._fs.path(key) if self._fs.local else self._fs.url(key)

    def _complete_meta(self, set_id: str, video_id: str) -> dict | None:
        meta = _read_meta(self._fs, self._video_key(set_id, video_id))
        return meta if _is_complete(meta, video_id) else None

    def has_video(self, set_id: str, video_id: str) -> bool:
        """True only if the video is completely stored in the set.

        Raises:
            FeatureNotFoundError: the feature set does not exist.
        """
        self._set_attrs(set_id)
        return self._complete_meta(set_id, video_id) is not None

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
        attrs = self._set_attrs(set_id)
        encode_node_name(video_id)  # validates the id before any work
        spec = attrs.get("spec") or {}
        dtype = _set_dtype(attrs)
        data = _to_storage_dtype(
            _validated_features(features, video_id, spec.get("dims")), dtype, video_id
        )
        prov = _validated_provenance(provenance, video_id)
        for key in ("spec", "sampling"):
            if key in prov["set"] and _canonical_json(prov["set"][key]) != _canonical_json(
                attrs.get(key)
            ):
                raise ProvenanceMismatchError(
                    f"video {video_id!r}: provenance['set'][{key!r}] differs from the "
                    f"{key} of feature set {set_id!r}"
                )
        if not overwrite and self._complete_meta(set_id, video_id) is not None:
            logger.debug("%s / %s already stored; not overwriting", set_id, video_id)
            return
        set_hash = _sha256(prov["set"])
        self._warn_if_mixed(set_id, set_hash, video_id)
        attributes = {
            "video_id": video_id,
            # unique per write: lets caches notice a replaced video (dataset stats)
            "write_id": uuid.uuid4().hex,
            "provenance": prov,
            "set_provenance_sha256": set_hash,
            "data_sha256": _data_sha256(data),
            "written": _now(),
            _FORMAT_ATTR: FORMAT_VERSION,
            "status": _COMPLETE,
        }
        if not self._fs.local:
            self._write_in_place(set_id, video_id, data, dtype, attributes, overwrite=overwrite)
            logger.debug("stored %s / %s shape %s", set_id, video_id, data.shape)
            return

        dest = self._video_dir(set_id, video_id)
        staging_root = self._set_dir(set_id) / _STAGING
        staging = staging_root / _staging_name("new")
        try:
            arr = zarr.create_array(
                store=LocalStore(staging),
                shape=data.shape,
                chunks=_chunk_shape(*data.shape, data.dtype.itemsize),
                dtype=dtype,
                compressors=zarr.codecs.BloscCodec(**_CODEC),
                fill_value=float("nan"),
                dimension_names=("step", "dim"),
                attributes={"video_id": video_id, "status": _WRITING},
                zarr_format=3,
            )
            arr[...] = data
            # Attributes last: "complete" is only ever written after all chunks are.
            arr.attrs.update(attributes)
            self._place(staging, dest, video_id, overwrite=overwrite)
        finally:
            _rmtree(staging)  # no-op once renamed into place
        logger.debug("stored %s / %s shape %s", set_id, video_id, data.shape)

    def _place(self, staging: Path, dest: Path, video_id: str, *, overwrite: bool) -> None:
        """Rename a finished staging array to ``dest`` (see write_video for the rules)."""
        aside: list[Path] = []
        placed = False
        try:
            for _attempt in range(10):
                try:
                    os.rename(staging, dest)
                    placed = True
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                meta = _read_meta(LocalFS(dest), "")
                if meta is not None and (meta.get("attributes") or {}).get(
                    "video_id", video_id
                ) != video_id:
                    raise FeatureStoreError(
                        f"video ids {video_id!r} and "
                        f"{meta['attributes']['video_id']!r} map to the same node {dest.name!r} "
                        "(case-insensitive filesystem?); rename one of them"
                    )
                if not overwrite and _is_complete(meta, video_id):
                    logger.debug("%s stored concurrently; keeping the first copy", video_id)
                    placed = True
                    return
                # Replace: move the old node aside (the video is briefly absent), then retry.
                old = staging.parent / _staging_name("old")
                try:
                    os.rename(dest, old)
                    aside.append(old)
                except FileNotFoundError:
                    pass  # someone else moved it; just retry
            raise FeatureStoreError(
                f"could not place video {video_id!r} at {dest}: too many concurrent writers"
            )
        finally:
            if aside and not placed:
                # Failed mid-replace: put the previous copy back rather than lose it.
                try:
                    os.rename(aside.pop(), dest)
                except OSError:
                    logger.warning("could not restore the previous copy of %r", video_id)
            for old in aside:
                _rmtree(old)

    def _write_in_place(
        self,
        set_id: str,
        video_id: str,
        data: np.ndarray,
        dtype: str,
        attributes: dict,
        *,
        overwrite: bool,
    ) -> None:
        """Object-store write (no rename): see "Remote stores" in the module docstring.

        The node's ``zarr.json`` is first a marker (``"status": "writing"``, this write's id
        and writer), then the chunks are PUT, then the complete ``zarr.json`` is the last PUT.
        If another writer touched the node meanwhile (the marker is not ours any more), the
        result is read back and checked against its ``data_sha256``; mixed chunks are
        rewritten (a few rounds at most).
        """
        key = self._video_key(set_id, video_id)
        meta_key = f"{key}/{_META}"
        write_id = attributes["write_id"]
        marker, chunks = _encode_array(
            data,
            dtype=dtype,
            chunks=_chunk_shape(*data.shape, data.dtype.itemsize),
            dimension_names=("step", "dim"),
            attributes={
                "video_id": video_id,
                "status": _WRITING,
                "write_id": write_id,
                "writer": _staging_name("write"),  # lets verify/remove_incomplete check liveness
            },
            compressors=zarr.codecs.BloscCodec(**_CODEC),
        )
        final = _with_attributes(marker, attributes)
        for _round in range(_MAX_WRITE_ROUNDS):
            current = _read_meta(self._fs, key)
            other = ((current or {}).get("attributes") or {}).get("video_id", video_id)
            if other != video_id:
                raise FeatureStoreError(
                    f"video ids {video_id!r} and {other!r} map to the same node "
                    f"{self._fs.url(key)!r} (case-insensitive filesystem?); rename one of them"
                )
            stale = set(self._fs.files(key)) - set(chunks) - {_META}
            self._put_in_place(key, marker, chunks, stale)
            current = _read_meta(self._fs, key)
            now_attrs = (current or {}).get("attributes") or {}
            raced = now_attrs.get("write_id") != write_id
            if (
                raced
                and not overwrite
                and _is_complete(current, video_id)
                and now_attrs.get("data_sha256") == attributes["data_sha256"]
            ):
                logger.debug("%s stored concurrently with equal data; keeping that copy", video_id)
                return
            self._fs.write_bytes(meta_key, final)  # the completing PUT: always the last one
            if not raced or self._consistent(set_id, video_id):
                return
            logger.info(
                "video %r of %s was written concurrently and its chunks got mixed; rewriting",
                video_id,
                set_id,
            )
        raise FeatureStoreError(
            f"could not store video {video_id!r} at {self._fs.url(key)}: too many concurrent "
            "writers of the same video"
        )

    def _put_in_place(
        self, key: str, marker: bytes, chunks: Mapping[str, bytes], stale: Iterable[str] = ()
    ) -> None:
        """Object stores: PUT an incomplete ``zarr.json`` (from now on the node does not
        count), delete ``stale`` keys of an earlier array, then PUT the chunks. The caller
        completes the node with a last PUT of its ``zarr.json``."""
        self._fs.write_bytes(f"{key}/{_META}", marker)
        self._fs.delete_many([f"{key}/{k}" for k in sorted(stale)])
        self._fs.write_many({f"{key}/{k}": v for k, v in chunks.items()})

    def _consistent(self, set_id: str, video_id: str) -> bool:
        """After a race: False only if the stored video is complete but its data does not
        match its checksum (an incomplete node belongs to a writer still at work)."""
        try:
            self.read_video(set_id, video_id)
        except FeatureNotFoundError:
            return True
        except FeatureStoreError:
            return False
        return True

    def _node_in_flight(self, key: str, meta: dict | None, now: float, min_age_s: float) -> bool:
        """Object stores: whether an incomplete node in place may still be being written.

        Its marker names the writer: a dead process on this host means a leftover, a live
        one a write in flight; writers on other hosts cannot be checked, so the node is in
        flight until its newest object is ``min_age_s`` old. A node without a readable
        ``zarr.json`` is a leftover (writers PUT their marker first; removals delete it
        first).
        """
        if meta is None:
            return False
        writer = (meta.get("attributes") or {}).get("writer")
        alive = _owner_alive(writer) if isinstance(writer, str) else None
        if alive is not None:
            return alive
        mtime = self._fs.mtime(key)
        return mtime is not None and now - mtime < min_age_s

    def _remove_node_in_place(self, key: str) -> None:
        """Object stores: delete a video (or other array) node: its ``zarr.json`` first (it
        stops counting at once), then everything else. Killed part-way, it leaves a node
        without metadata, which :meth:`remove_incomplete` deletes."""
        self._fs.delete(f"{key}/{_META}")
        self._fs.rmtree(key)

    def _remove_set_in_place(self, set_id: str) -> None:
        """Object stores: mark the set ``"status": "removing"`` (it leaves every listing at
        once), delete its files, its ``zarr.json`` last. Killed part-way, it leaves a marked
        set that :meth:`remove_incomplete` (or another removal) finishes."""
        key = self._set_key(set_id)
        raw = self._fs.read_bytes(f"{key}/{_META}")
        attrs = (_parse_meta(raw) or {}).get("attributes") or {}
        if raw is not None and attrs.get("status") != _REMOVING:
            attrs = {**attrs, "status": _REMOVING, "remover": _staging_name("rm")}
            self._fs.write_bytes(f"{key}/{_META}", _with_attributes(raw, attrs))
        self._finish_set_removal(key)

    def _finish_set_removal(self, key: str) -> None:
        self._fs.delete_many([f"{key}/{k}" for k in sorted(self._fs.files(key)) if k != _META])
        self._fs.delete(f"{key}/{_META}")
        self._fs.rmtree(key)

    def _removing_sets(self) -> dict[str, dict]:
        """Object stores: root nodes marked ``"status": "removing"``, by node name."""
        nodes = [e.name for e in self._fs.list("") if e.is_dir and not e.name.startswith(("_", "."))]
        out = {}
        for name, raw in self._fs.read_many([f"{n}/{_META}" for n in nodes]).items():
            meta = _parse_meta(raw)
            if ((meta or {}).get("attributes") or {}).get("status") == _REMOVING:
                out[name[: -len(_META) - 1]] = meta
        return out

    def _warn_if_mixed(self, set_id: str, set_hash: str, video_id: str) -> None:
        """Log a warning if another stored video of the set has other set-level provenance
        (cheap: looks at the first complete video found)."""
        set_key = self._set_key(set_id)
        for entry in self._fs.list(set_key):
            if entry.name.startswith("_"):
                continue
            meta = _read_meta(self._fs, f"{set_key}/{entry.name}")
            if _is_complete(meta):
                other = meta["attributes"].get("set_provenance_sha256")
                if other != set_hash:
                    logger.warning(
                        "video %r gets set-level provenance that differs from stored "
                        "video %r of feature set %s; reading them together will fail",
                        video_id,
                        meta["attributes"].get("video_id"),
                        set_id,
                    )
                return

    def _open_video(self, set_id: str, video_id: str) -> zarr.Array:
        self._set_attrs(set_id)
        if self._complete_meta(set_id, video_id) is None:
            raise FeatureNotFoundError(
                f"video {video_id!r} is not stored in feature set {set_id!r}"
            )
        try:
            return zarr.open_array(
                store=self._fs.zarr_store(self._video_key(set_id, video_id), read_only=True),
                mode="r",
                zarr_format=3,
            )
        except _DAMAGE_ERRORS as exc:  # zarr's reaction to malformed array metadata
            raise self._damaged(set_id, video_id, exc) from exc

    def _damaged(self, set_id: str, video_id: str, exc: Exception) -> InvalidMetadataError:
        return InvalidMetadataError(
            f"video {video_id!r} of feature set {set_id!r} is damaged "
            f"({self._fs.url(self._video_key(set_id, video_id))}: {type(exc).__name__}: {exc}); "
            "re-extract it with overwrite"
        )

    def read_video(self, set_id: str, video_id: str) -> np.ndarray:
        """Features of one video, float32 [steps, dims].

        Raises:
            FeatureNotFoundError: the set or the (complete) video does not exist.
            InvalidMetadataError: its metadata or data is damaged (malformed metadata,
                undecodable or missing chunks, data that does not match its ``data_sha256``).
        """
        array = self._open_video(set_id, video_id)
        try:
            stored = array[...]
            data = np.asarray(stored, dtype=np.float32)
        except _DAMAGE_ERRORS as exc:
            raise self._damaged(set_id, video_id, exc) from exc
        if not np.isfinite(data).all():  # finite at write time, so a chunk went missing
            missing = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise self._damaged(set_id, video_id, ValueError(f"{missing} of {data.size} values are NaN/Inf"))
        problem = _checksum_problem(array, stored)
        if problem:
            raise self._damaged(set_id, video_id, ValueError(problem))
        return data

    def read_video_dask(self, set_id: str, video_id: str) -> "dask.array.Array":
        """Lazy features of one video, float32 [steps, dims], one dask chunk per Zarr chunk.

        The graph reads files by path when computed: do not overwrite the video meanwhile.
        Lazy reads do not check ``data_sha256`` (:meth:`read_video` and ``verify`` do).
        """
        import dask.array as da  # imported here: dask is only needed for lazy reads

        arr = da.from_zarr(self._open_video(set_id, video_id))
        return arr if arr.dtype == np.float32 else arr.astype(np.float32)

    def read_videos(self, set_id: str, video_ids: Iterable[str]) -> list[np.ndarray]:
        """Features of several videos, each float32 [steps_i, dims], in the given order.

        Checks everything before reading any data.

        Raises:
            FeatureNotFoundError: some videos are not stored; the message lists all of them
                and the exception's ``missing`` attribute holds them.
            ProvenanceMismatchError: the videos do not share one set-level provenance.
        """
        self._set_attrs(set_id)
        video_ids = list(video_ids)
        metas = {v: self._complete_meta(set_id, v) for v in dict.fromkeys(video_ids)}
        missing = [v for v, m in metas.items() if m is None]
        if missing:
            err = FeatureNotFoundError(
                f"{len(missing)} of {len(metas)} videos are not stored in feature set "
                f"{set_id!r}: " + ", ".join(map(repr, missing))
            )
            err.missing = missing
            raise err
        self._check_one_provenance(set_id, metas)
        return [self.read_video(set_id, v) for v in video_ids]

    def _check_one_provenance(self, set_id: str, metas: Mapping[str, dict]) -> None:
        groups: dict[str, list[str]] = {}
        for video_id, meta in metas.items():
            set_hash = meta["attributes"].get("set_provenance_sha256")
            groups.setdefault(set_hash, []).append(video_id)
        if len(groups) <= 1:
            return
        (h1, g1), (h2, g2) = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:2]
        p1 = metas[g1[0]]["attributes"]["provenance"]["set"]
        p2 = metas[g2[0]]["attributes"]["provenance"]["set"]
        lines = [
            f"  {len(g)} videos with provenance {h[:10] if h else None} (e.g. {g[0]!r})"
            for h, g in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        ]
        raise ProvenanceMismatchError(
            f"videos of feature set {set_id!r} were made differently; refusing to mix "
            f"{len(groups)} set-level provenances (differing keys: {_diff_keys(p1, p2)}):\n"
            + "\n".join(lines)
            + "\nre-extract the odd ones with overwrite=True"
        )

    def _video_metas(self, set_id: str) -> tuple[dict[str, dict], int]:
        """Complete videos' metadata by id, and the number of incomplete nodes."""
        set_key = self._set_key(set_id)
        metas: dict[str, dict] = {}
        incomplete = 0
        nodes = []
        for entry in self._fs.list(set_key):
            if entry.name == _STAGING:
                staged = self._fs.list(f"{set_key}/{_STAGING}")
                incomplete += sum(1 for e in staged if e.name != _META)
                continue
            if entry.name.startswith("_") or entry.name == _META:
                continue
            nodes.append(entry.name)
        raws = self._fs.read_many([f"{set_key}/{n}/{_META}" for n in nodes])
        for name in nodes:
            meta = _parse_meta(raws[f"{set_key}/{name}/{_META}"])
            video_id = ((meta or {}).get("attributes") or {}).get("video_id")
            if _is_complete(meta) and isinstance(video_id, str):
                if encode_node_name(video_id) == name:
                    metas[video_id] = meta
                    continue
            incomplete += 1
        return metas, incomplete

    def video_ids(self, set_id: str) -> list[str]:
        """Ids of the completely stored videos of a set, sorted."""
        self._set_attrs(set_id)
        return sorted(self._video_metas(set_id)[0])

    def video_provenance(self, set_id: str, video_id: str) -> dict:
        """Provenance stored with a video: ``{"set": {...}, "video": {...}}``."""
        self._set_attrs(set_id)
        meta = self._complete_meta(set_id, video_id)
        if meta is None:
            raise FeatureNotFoundError(
                f"video {video_id!r} is not stored in feature set {set_id!r}"
            )
        return meta["attributes"]["provenance"]

    def feature_set_info(self, set_id: str) -> dict:
        """Summary of one feature set.

        Returns a dict with ``id``, ``spec``, ``sampling``, ``created``, ``n_videos``,
        ``dims`` (int; a sorted list if videos disagree; ``spec["dims"]`` or None when
        empty), ``total_steps``, ``bytes_on_disk`` (all files under the set's directory or prefix),
        ``dtype``, ``provenance`` (``{"consistent", "n_distinct", "set", "groups"}``, where
        ``set`` is the common set-level provenance when consistent) and ``incomplete``
        (staging leftovers and in-flight writes).
        """
        attrs = self._set_attrs(set_id)
        metas, incomplete = self._video_metas(set_id)
        dims = sorted({m["shape"][1] for m in metas.values()})
        groups: dict[str, list[str]] = {}
        for video_id, meta in sorted(metas.items()):
            set_hash = meta["attributes"].get("set_provenance_sha256")
            groups.setdefault(set_hash, []).append(video_id)
        first = {h: metas[g[0]]["attributes"]["provenance"]["set"] for h, g in groups.items()}
        return {
            "id": set_id,
            "spec": attrs.get("spec"),
            "sampling": attrs.get("sampling"),
            "created": attrs.get("created"),
            "n_videos": len(metas),
            "dims": dims[0] if len(dims) == 1 else (dims or (attrs.get("spec") or {}).get("dims")),
            "total_steps": int(sum(m["shape"][0] for m in metas.values())),
            "bytes_on_disk": self._fs.size(self._set_key(set_id)),
            "dtype": _set_dtype(attrs),
            "provenance": {
                "consistent": len(groups) <= 1,
                "n_distinct": len(groups),
                "set": next(iter(first.values())) if len(groups) == 1 else None,
                "groups": [
                    {"sha256": h, "n_videos": len(g), "example": g[0], "set": first[h]}
                    for h, g in sorted(groups.items(), key=lambda kv: -len(kv[1]))
                ],
            },
            "incomplete": incomplete,
        }

    def info(self) -> list[dict]:
        """:meth:`feature_set_info` of every feature set, sorted by id."""
        return [self.feature_set_info(s) for s in self.feature_sets()]

    def remove_incomplete(self, *, min_age_s: float = _STALE_FOREIGN_S) -> int:
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
        removed = 0
        now = time.time()
        set_ids = self.feature_sets()
        root = self._fs.list("")
        staging_dirs = [_STAGING] + [f"{self._set_key(s)}/{_STAGING}" for s in set_ids]
        root_inits = [e.name for e in root if e.name.startswith(".init.")]
        for staging in [None, *staging_dirs]:
            names = root_inits if staging is None else [e.name for e in self._fs.list(staging)]
            for name in names:
                if name == _META:
                    continue
                key = name if staging is None else f"{staging}/{name}"
                alive = _owner_alive(name.lstrip("."))
                if alive is None:
                    mtime = self._fs.mtime(key)
                    if mtime is None:
                        continue
                    alive = now - mtime < min_age_s
                if alive:
                    logger.debug("keeping %s: its writer may still run", self._fs.url(key))
                    continue
                self._fs.rmtree(key)
                removed += 1
        for set_id in set_ids:
            set_key = self._set_key(set_id)
            for entry in self._fs.list(set_key):
                if entry.name.startswith("_") or entry.name == _META or not entry.is_dir:
                    continue
                key = f"{set_key}/{entry.name}"
                meta = _read_meta(self._fs, key)
                if meta is None or (meta.get("node_type") == "array" and not _is_complete(meta)):
                    if self._fs.local:
                        _rmtree(self._fs.path(key))
                    elif self._node_in_flight(key, meta, now, min_age_s):
                        logger.debug("keeping %s: its writer may still run", self._fs.url(key))
                        continue
                    else:
                        self._remove_node_in_place(key)
                    removed += 1
        if not self._fs.local:
            for node, meta in self._removing_sets().items():
                remover = meta["attributes"].get("remover")
                alive = _owner_alive(remover) if isinstance(remover, str) else None
                if alive is None:
                    mtime = self._fs.mtime(f"{node}/{_META}")
                    alive = mtime is not None and now - mtime < min_age_s
                if not alive:
                    self._finish_set_removal(node)
                    removed += 1
        if removed:
            logger.info("removed %d incomplete entries from %s", removed, self.location)
        return removed


# --------------------------------------------------------------------------- reporting


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``("a.b", leaf)`` pairs, in key order, for one-line-per-field display."""
    if isinstance(value, Mapping) and value:
        return [pair for k, v in value.items() for pair in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def format_store_info(infos: Sequence[dict]) -> str:
    """Human-readable listing of :meth:`FeatureStore.info` for ``vqa store info``."""
    if not infos:
        return "no feature sets"
    lines = []
    for info in infos:
        lines.append(info["id"])
        lines.append(
            f"  videos: {info['n_videos']}   dims: {info['dims']}   steps: {info['total_steps']}"
            f"   {info['dtype']}   on disk: {_human_bytes(info['bytes_on_disk'])}"
        )
        lines.append(f"  created: {info.get('created')}")
        for key, value in _flatten({"sampling": info["sampling"], "spec": info["spec"]}):
            lines.append(f"  {key}: {_short(value, 90)}")
        prov = info["provenance"]
        if prov["n_distinct"] == 0:
            lines.append("  provenance: (no videos)")
        elif prov["consistent"]:
            lines.append("  provenance: consistent across all videos")
        else:
            groups = prov["groups"]
            keys = _diff_keys(groups[0]["set"], groups[1]["set"])
            lines.append(
                f"  provenance: MIXED, {prov['n_distinct']} set-level provenances "
                f"(differ in {', '.join(keys)}); training will refuse to mix them"
            )
            for g in groups:
                lines.append(f"    {g['n_videos']} videos, e.g. {g['example']!r}")
        if info["incomplete"]:
            lines.append(
                f"  incomplete: {info['incomplete']} staging leftovers or in-flight writes "
                "(`vqa store clean` deletes leftovers of killed runs)"
            )
    n_sets = len(infos)
    n_videos = sum(i["n_videos"] for i in infos)
    total = sum(i["bytes_on_disk"] for i in infos)
    lines.append(f"{n_sets} feature set(s), {n_videos} video(s), {_human_bytes(total)} on disk")
    return "\n".join(lines)
