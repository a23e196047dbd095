"""The store format: layout constants, canonical JSON, validation of what callers pass,
parsing of stored metadata, and checksums.

Functions on values and parsed ``zarr.json`` documents; nothing here lists or writes files
(see :mod:`feature_store._layout` and :mod:`feature_store._commit`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from feature_store.errors import InvalidFeaturesError, InvalidMetadataError, ProvenanceMismatchError

FORMAT_VERSION = 2
"""The newest on-disk format this code reads and writes (root attribute ``feature_store_format``).

Format 1: every feature set uses the ``"nodes"`` layout (one Zarr array per video). Format 2:
some set may use the ``"packed"`` layout (:mod:`feature_store._packs`); a store is raised to 2
only when it gets its first packed set (or a packed default), so that code which reads
format 1 refuses it instead of seeing packed sets as empty."""

NODES_FORMAT = 1  # written to the root, the groups and the videos of the nodes layout
PACKED_FORMAT = 2  # written to the root and the group of a packed set

NODES = "nodes"
PACKED = "packed"
LAYOUTS = (NODES, PACKED)
"""Layouts of a feature set: ``"nodes"`` (one Zarr array per video, 5 filesystem entries per
video) and ``"packed"`` (videos appended as records to a few files; docs/store_layout.md)."""

FORMAT_ATTR = "feature_store_format"
LAYOUT_ATTR = "layout"  # set attribute (absent: "nodes")
DEFAULT_LAYOUT_ATTR = "default_layout"  # root attribute: the layout of new sets (absent: "nodes")
META = "zarr.json"
STAGING = "_staging"
RUNS_DIR = "_runs"  # run records and generated manifests of the flows that fill the store
COMPLETE = "complete"
WRITING = "writing"
REMOVING = "removing"  # object stores: a feature set whose removal has begun
STALE_FOREIGN_S = 3600.0  # entries of writers on other hosts count as dead after this

DTYPES = ("float32", "float16")
"""Storage dtypes a feature set may use."""

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
MAX_CHUNK_STEPS = 256
MAX_CHUNK_BYTES = 16 * 2**20  # keeps a chunk cheap to decompress for a random read
# Blosc zstd level 1 with byte shuffle: on CNN-like features as small as level 5 (0.66x vs
# 0.68x of raw float32) and 1.6-3.8x faster to write, reads as fast; bitshuffle compresses
# worse (0.86x); lz4 (0.90x) and no compression (1.0x) read 1.3-2.6x faster from the page
# cache. Whole-video chunks (<= 256 steps) beat 64-step chunks on file count at equal speed.
# Measurements: bench/store_layout.py (it patches CODEC and MAX_CHUNK_STEPS of this module).
CODEC = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}
# What zarr raises for malformed array metadata or undecodable chunks (not OSError: disk
# errors propagate as they are).
DAMAGE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError)


# --------------------------------------------------------------------------- canonical JSON


def canonical(obj: Any, where: str) -> Any:
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
            out[key] = canonical(value, f"{where}.{key}")
        return out
    if isinstance(obj, np.ndarray):
        return canonical(obj.tolist(), where)
    if isinstance(obj, (list, tuple)):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise InvalidMetadataError(f"{where}: {type(obj).__name__} {obj!r} is not JSON")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, ASCII: equal content gives equal text (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def json_sha256(obj: Any) -> str:
    """sha256 of :func:`canonical_json` (set ids, provenance hashes, cache keys)."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``created``, ``written`` attributes)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def diff_keys(a: Mapping, b: Mapping) -> list[str]:
    """Sorted keys whose values differ between two mappings (missing counts as differing)."""
    return sorted(k for k in set(a) | set(b) if a.get(k, object()) != b.get(k, object()))


# --------------------------------------------------------------------------- what callers pass


def sampling_name(sampling: Mapping[str, Any]) -> str:
    """``{"strategy": "uniform", "value": 16}`` -> ``"uniform-16"``; no value -> strategy."""
    strategy = sampling["strategy"]
    value = sampling.get("value")
    if value is None or isinstance(value, (list, dict, bool)):
        return str(strategy)
    return f"{strategy}-{value}"


def validated_spec_sampling(spec: Any, sampling: Any) -> tuple[dict, dict]:
    """Canonical spec and sampling; the spec needs a str ``name`` (and positive int ``dims``
    if any), the sampling a str ``strategy``."""
    if not isinstance(spec, Mapping):
        raise InvalidMetadataError(f"spec must be a dict, got {type(spec).__name__}")
    if not isinstance(sampling, Mapping):
        raise InvalidMetadataError(f"sampling must be a dict, got {type(sampling).__name__}")
    spec_c = canonical(spec, "spec")
    sampling_c = canonical(sampling, "sampling")
    if not isinstance(spec_c.get("name"), str) or not spec_c["name"]:
        raise InvalidMetadataError(f"spec needs a non-empty str 'name', got {spec_c.get('name')!r}")
    if not isinstance(sampling_c.get("strategy"), str) or not sampling_c["strategy"]:
        raise InvalidMetadataError(f"sampling needs a non-empty str 'strategy', got {sampling_c.get('strategy')!r}")
    dims = spec_c.get("dims")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise InvalidMetadataError(f"spec['dims'] must be a positive int, got {dims!r}")
    return spec_c, sampling_c


def validated_provenance(provenance: Any, video_id: str) -> dict:
    """Canonical ``{"set": {...}, "video": {...}}`` (``"video"`` defaults to ``{}``)."""
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
    prov = canonical(dict(provenance), "provenance")
    prov.setdefault("video", {})
    for part in ("set", "video"):
        if not isinstance(prov[part], dict):
            raise InvalidMetadataError(f"video {video_id!r}: provenance[{part!r}] must be a dict")
    return prov


def validated_features(features: Any, video_id: str, dims: int | None) -> np.ndarray:
    """Check ``features`` [steps, dims] and return it as C-contiguous float32."""
    try:
        arr = np.asarray(features)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise InvalidFeaturesError(f"video {video_id!r}: features are not an array ({exc})") from None
    if arr.ndim != 2:
        raise InvalidFeaturesError(f"video {video_id!r}: features must be 2-D [steps, dims], got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise InvalidFeaturesError(f"video {video_id!r}: features must be a real numeric array, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidFeaturesError(f"video {video_id!r}: features are empty, shape {arr.shape}")
    if dims is not None and arr.shape[1] != dims:
        raise InvalidFeaturesError(f"video {video_id!r}: features have {arr.shape[1]} dims, the spec says {dims}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise InvalidFeaturesError(
            f"video {video_id!r}: {bad} of {out.size} feature values are NaN/Inf "
            f"(or beyond float32 range) in shape {out.shape}; nothing was stored"
        )
    return out


def to_storage_dtype(data: np.ndarray, dtype: str, video_id: str) -> np.ndarray:
    """Cast validated float32 features [steps, dims] to the set's storage dtype.

    Raises:
        InvalidFeaturesError: float16 storage and some |value| > 65504 (it would become inf).
    """
    if dtype == "float32":
        return data
    peak = float(np.max(np.abs(data)))
    if peak > FLOAT16_MAX:
        n_over = int(np.count_nonzero(np.abs(data) > FLOAT16_MAX))
        raise InvalidFeaturesError(
            f"video {video_id!r}: {n_over} of {data.size} feature values exceed the float16 "
            f"range (max |x| = {peak:.6g} > {FLOAT16_MAX:.0f}); this feature set is stored "
            "as float16, so nothing was stored. Scale the features or use a float32 set."
        )
    return data.astype(np.float16)


def set_dtype(attrs: Mapping[str, Any]) -> str:
    """Storage dtype of a feature set from its group attributes (float32 when absent)."""
    return attrs.get("dtype") or "float32"


def set_layout(attrs: Mapping[str, Any]) -> str:
    """Layout of a feature set from its group attributes (``"nodes"`` when absent)."""
    return attrs.get(LAYOUT_ATTR) or NODES


def check_layout(layout: Any) -> str:
    """A layout name (``"nodes"`` or ``"packed"``), or raise :class:`InvalidMetadataError`."""
    if layout not in LAYOUTS:
        raise InvalidMetadataError(f"feature-set layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_dtype(dtype: Any) -> str:
    """The name of a storage dtype (``"float32"``, ``np.float16``, ...), or raise."""
    name = np.dtype(dtype).name if isinstance(dtype, (type, np.dtype)) else dtype
    if name not in DTYPES:
        raise InvalidMetadataError(f"storage dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def chunk_shape(steps: int, dims: int, itemsize: int = 4) -> tuple[int, int]:
    """Up to 256 steps x all dims, at most ~16 MB per chunk (dims split only if one row is
    larger than that)."""
    row_bytes = dims * itemsize
    if row_bytes > MAX_CHUNK_BYTES:
        return 1, max(1, MAX_CHUNK_BYTES // itemsize)
    return max(1, min(steps, MAX_CHUNK_STEPS, MAX_CHUNK_BYTES // row_bytes)), dims


def codec() -> Any:
    """The compressor of video arrays (:data:`CODEC`, read at call time)."""
    import zarr.codecs

    return zarr.codecs.BloscCodec(**CODEC)


# --------------------------------------------------------------------------- stored metadata


def parse_meta(raw: bytes | None) -> dict | None:
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


def read_meta(fs: Any, key: str) -> dict | None:
    """Parsed ``zarr.json`` of the node at ``key`` of a :mod:`~feature_store._fs` filesystem
    (``""``: the root), or ``None`` if absent or unreadable (half-written)."""
    return parse_meta(fs.read_bytes(f"{key}/{META}" if key else META))


def attributes(meta: dict | None) -> dict:
    """The attributes of parsed metadata (``{}`` for none)."""
    return (meta or {}).get("attributes") or {}


def is_complete(meta: dict | None, video_id: str | None = None) -> bool:
    """Whether ``meta`` is a completely written, well-formed video (of ``video_id``)."""
    if meta is None or meta.get("node_type") != "array":
        return False
    attrs = attributes(meta)
    if attrs.get("status") != COMPLETE:
        return False
    if video_id is not None and attrs.get("video_id") != video_id:
        return False
    return _well_formed_video(meta)


def _well_formed_video(meta: dict) -> bool:
    """Whether a complete video's metadata holds what readers index into. A damaged or
    hand-edited node counts as not stored (it is re-extracted) instead of crashing readers."""
    shape, attrs = meta.get("shape"), attributes(meta)
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


def live_set(attrs: dict) -> bool:
    """A well-formed feature set that is not being removed (object stores)."""
    if attrs.get("status") == REMOVING:
        return False
    if not (isinstance(attrs.get("spec"), dict) and isinstance(attrs.get("sampling"), dict)):
        return False
    try:  # compared as canonical JSON with what callers pass
        canonical_json([attrs["spec"], attrs["sampling"]])
    except ValueError:  # NaN/Infinity in a hand-edited file
        return False
    return set_dtype(attrs) in DTYPES and set_layout(attrs) in LAYOUTS


def provenance_groups(metas: Mapping[str, dict]) -> list[tuple[str | None, list[str]]]:
    """Complete videos grouped by set-level provenance hash: ``[(hash, [video ids])]``, the
    largest group first (ties in the order of ``metas``)."""
    groups: dict[str | None, list[str]] = {}
    for video_id, meta in metas.items():
        groups.setdefault(meta["attributes"].get("set_provenance_sha256"), []).append(video_id)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def check_one_provenance(set_id: str, metas: Mapping[str, dict]) -> None:
    """Refuse videos (complete metadata by id) that do not share one set-level provenance.

    Raises:
        ProvenanceMismatchError: naming the differing keys and the groups.
    """
    groups = provenance_groups(metas)
    if len(groups) <= 1:
        return
    (_h1, g1), (_h2, g2) = groups[:2]
    p1 = metas[g1[0]]["attributes"]["provenance"]["set"]
    p2 = metas[g2[0]]["attributes"]["provenance"]["set"]
    lines = [f"  {len(g)} videos with provenance {h[:10] if h else None} (e.g. {g[0]!r})" for h, g in groups]
    raise ProvenanceMismatchError(
        f"videos of feature set {set_id!r} were made differently; refusing to mix "
        f"{len(groups)} set-level provenances (differing keys: {diff_keys(p1, p2)}):\n"
        + "\n".join(lines)
        + "\nre-extract the odd ones with overwrite=True"
    )


# --------------------------------------------------------------------------- checksums


def data_sha256(data: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (stored dtype): the ``data_sha256`` attribute."""
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def stored_data_problem(data: np.ndarray, expected_sha256: Any) -> str | None:
    """Why a whole stored array (stored dtype) is damaged, or None: NaN/Inf (never written:
    NaN is the fill value of a missing chunk) or a mismatch with its ``data_sha256``
    attribute (None: the video predates checksums)."""
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        return f"{bad} of {data.size} values are NaN/Inf (NaN is the fill value: a chunk file may be missing)"
    if expected_sha256 is not None and (not isinstance(expected_sha256, str) or data_sha256(data) != expected_sha256):
        return (
            "its data does not match its data_sha256 checksum (a chunk was damaged or "
            "replaced, or two writers of this video mixed their chunks)"
        )
    return None
