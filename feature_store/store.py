"""The feature store: per-video feature matrices in a Zarr v3 directory store.

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
                                            "provenance", "set_provenance_sha256", ...}
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

Concurrency: any number of processes may write *different* videos at once (one writer per
array). Two writers of the same video race safely: with ``overwrite=False`` the first rename
wins and the other discards its copy. Writers never touch shared nodes' attributes and
metadata is never consolidated.
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
from zarr.storage import LocalStore

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


def _read_meta(node_dir: Path) -> dict | None:
    """Parsed ``zarr.json`` of a node, or ``None`` if absent or unreadable (half-written)."""
    try:
        with open(node_dir / _META, "rb") as fh:
            meta = json.load(fh)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        return None  # damaged or hand-edited: not metadata this code can use
    return meta


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
    )


def _well_formed_set(attrs: dict) -> bool:
    """Whether a feature set's group attributes hold what the store relies on."""
    if not (isinstance(attrs.get("spec"), dict) and isinstance(attrs.get("sampling"), dict)):
        return False
    try:  # compared as canonical JSON with what callers pass
        _canonical_json([attrs["spec"], attrs["sampling"]])
    except ValueError:  # NaN/Infinity in a hand-edited file
        return False
    return _set_dtype(attrs) in DTYPES


def _dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # deleted by a concurrent writer meanwhile
                pass
    return total


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


# --------------------------------------------------------------------------- the store


class FeatureStore:
    """A directory of feature sets, each holding one [steps, dims] array per video.

    Args:
        path: local directory of the store.
        create: create the store if it does not exist (``False``: raise
            :class:`FeatureNotFoundError` instead).

    Raises:
        FeatureNotFoundError: ``create=False`` and there is no store at ``path``.
        FeatureStoreError: ``path`` is a file, a non-empty directory that is not a feature
            store, or a store written by a newer format version.

    The object holds only its path: it is cheap to create and safe to pickle to workers.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).expanduser().absolute()
        if not (self.path / _META).is_file():
            if not create:
                raise FeatureNotFoundError(f"no feature store at {self.path}")
            self._create_root()
        meta = _read_meta(self.path)
        attrs = (meta or {}).get("attributes") or {}
        if (meta or {}).get("node_type") != "group" or _FORMAT_ATTR not in attrs:
            raise FeatureStoreError(f"{self.path} is a Zarr node but not a feature store")
        if not isinstance(attrs[_FORMAT_ATTR], int) or attrs[_FORMAT_ATTR] > FORMAT_VERSION:
            raise FeatureStoreError(
                f"{self.path} has store format {attrs[_FORMAT_ATTR]!r}; this code reads "
                f"format <= {FORMAT_VERSION}: update the project"
            )

    @property
    def runs_dir(self) -> Path:
        """Folder for run records (extraction summaries, generated manifests); not features."""
        return self.path / RUNS_DIR

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    def _create_root(self) -> None:
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
        renamed into place; losers of the race keep the winner's group.

        Raises:
            ProvenanceMismatchError: the set exists with another explicit ``dtype``.
        """
        set_id = self.feature_set_id(spec, sampling)
        spec_c, sampling_c = _validated_spec_sampling(spec, sampling)
        dtype = None if dtype is None else _check_dtype(dtype)
        set_dir = self._set_dir(set_id)
        if self._set_meta(set_id) is None:
            tmp = self.path / _STAGING / _staging_name("new")
            try:
                _write_group(
                    tmp,
                    {
                        "id": set_id,
                        "spec": spec_c,
                        "sampling": sampling_c,
                        "created": _now(),
                        _FORMAT_ATTR: FORMAT_VERSION,
                        "dtype": dtype or "float32",
                    },
                )
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
        for entry in os.scandir(self.path):
            if entry.name.startswith(("_", ".")) or not entry.is_dir():
                continue
            meta = _read_meta(Path(entry.path))
            attrs = (meta or {}).get("attributes") or {}
            set_id = attrs.get("id")
            if isinstance(set_id, str) and encode_node_name(set_id) == entry.name and _well_formed_set(attrs):
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

    def _set_dir(self, set_id: str) -> Path:
        return self.path / encode_node_name(set_id)

    def _set_meta(self, set_id: str) -> dict | None:
        meta = _read_meta(self._set_dir(set_id))
        attrs = (meta or {}).get("attributes") or {}
        if attrs.get("id") != set_id or not _well_formed_set(attrs):
            return None
        return meta

    def _set_attrs(self, set_id: str) -> dict:
        """Attributes of an existing set; FeatureNotFoundError (with hints) otherwise."""
        meta = self._set_meta(set_id)
        if meta is None and (self._set_dir(set_id) / _META).is_file():
            raise InvalidMetadataError(
                f"feature set {set_id!r} in {self.path} has damaged metadata: "
                f"{self._set_dir(set_id) / _META} does not describe it (hand-edited or corrupt); "
                "repair or remove that folder"
            )
        if meta is None:
            ids = self.feature_sets() if isinstance(set_id, str) else []
            close = difflib.get_close_matches(str(set_id), ids, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise FeatureNotFoundError(
                f"no feature set {set_id!r} in {self.path}.{hint} "
                "(use resolve() for names and prefixes; ensure_feature_set() creates sets)"
            )
        return meta.get("attributes") or {}

    # ------------------------------------------------------------------ videos

    def _video_dir(self, set_id: str, video_id: str) -> Path:
        return self._set_dir(set_id) / encode_node_name(video_id)

    def _complete_meta(self, set_id: str, video_id: str) -> dict | None:
        meta = _read_meta(self._video_dir(set_id, video_id))
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
        dest = self._video_dir(set_id, video_id)
        if not overwrite and _is_complete(_read_meta(dest), video_id):
            logger.debug("%s / %s already stored; not overwriting", set_id, video_id)
            return
        set_hash = _sha256(prov["set"])
        self._warn_if_mixed(set_id, set_hash, video_id)

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
                attributes={"video_id": video_id, "status": "writing"},
                zarr_format=3,
            )
            arr[...] = data
            # Attributes last: "complete" is only ever written after all chunks are.
            arr.attrs.update(
                {
                    "video_id": video_id,
                    # unique per write: lets caches notice a replaced video (dataset stats)
                    "write_id": uuid.uuid4().hex,
                    "provenance": prov,
                    "set_provenance_sha256": set_hash,
                    "written": _now(),
                    _FORMAT_ATTR: FORMAT_VERSION,
                    "status": _COMPLETE,
                }
            )
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
                meta = _read_meta(dest)
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

    def _warn_if_mixed(self, set_id: str, set_hash: str, video_id: str) -> None:
        """Log a warning if another stored video of the set has other set-level provenance
        (cheap: looks at the first complete video found)."""
        try:
            entries = os.scandir(self._set_dir(set_id))
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if entry.name.startswith("_"):
                    continue
                meta = _read_meta(Path(entry.path))
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
                store=LocalStore(self._video_dir(set_id, video_id), read_only=True),
                mode="r",
                zarr_format=3,
            )
        except _DAMAGE_ERRORS as exc:  # zarr's reaction to malformed array metadata
            raise self._damaged(set_id, video_id, exc) from exc

    def _damaged(self, set_id: str, video_id: str, exc: Exception) -> InvalidMetadataError:
        return InvalidMetadataError(
            f"video {video_id!r} of feature set {set_id!r} is damaged "
            f"({self._video_dir(set_id, video_id)}: {type(exc).__name__}: {exc}); "
            "re-extract it with overwrite"
        )

    def read_video(self, set_id: str, video_id: str) -> np.ndarray:
        """Features of one video, float32 [steps, dims].

        Raises:
            FeatureNotFoundError: the set or the (complete) video does not exist.
            InvalidMetadataError: its metadata or data is damaged (malformed metadata,
                undecodable or missing chunks).
        """
        array = self._open_video(set_id, video_id)
        try:
            data = np.asarray(array[...], dtype=np.float32)
        except _DAMAGE_ERRORS as exc:
            raise self._damaged(set_id, video_id, exc) from exc
        if not np.isfinite(data).all():  # finite at write time, so a chunk went missing
            missing = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise self._damaged(set_id, video_id, ValueError(f"{missing} of {data.size} values are NaN/Inf"))
        return data

    def read_video_dask(self, set_id: str, video_id: str) -> "dask.array.Array":
        """Lazy features of one video, float32 [steps, dims], one dask chunk per Zarr chunk.

        The graph reads files by path when computed: do not overwrite the video meanwhile.
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
        set_dir = self._set_dir(set_id)
        metas: dict[str, dict] = {}
        incomplete = 0
        for entry in os.scandir(set_dir):
            if entry.name == _STAGING:
                incomplete += sum(1 for e in os.scandir(entry.path) if e.name != _META)
                continue
            if entry.name.startswith("_") or entry.name == _META:
                continue
            meta = _read_meta(Path(entry.path))
            video_id = ((meta or {}).get("attributes") or {}).get("video_id")
            if _is_complete(meta) and isinstance(video_id, str):
                if encode_node_name(video_id) == entry.name:
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
        empty), ``total_steps``, ``bytes_on_disk`` (all files under the set's directory),
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
            "bytes_on_disk": _dir_bytes(self._set_dir(set_id)),
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
        """
        removed = 0
        staging_dirs = [self.path / _STAGING] + [
            self._set_dir(s) / _STAGING for s in self.feature_sets()
        ]
        root_inits = [e for e in os.scandir(self.path) if e.name.startswith(".init.")]
        now = time.time()
        for staging in [None, *staging_dirs]:
            try:
                entries = root_inits if staging is None else list(os.scandir(staging))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name == _META:
                    continue
                alive = _owner_alive(entry.name.lstrip("."))
                if alive is None:
                    try:
                        alive = now - entry.stat(follow_symlinks=False).st_mtime < min_age_s
                    except FileNotFoundError:
                        continue
                if alive:
                    logger.debug("keeping %s: its writer may still run", entry.path)
                    continue
                _rmtree(Path(entry.path))
                removed += 1
        for set_id in self.feature_sets():
            set_dir = self._set_dir(set_id)
            for entry in os.scandir(set_dir):
                if entry.name.startswith("_") or entry.name == _META or not entry.is_dir():
                    continue
                meta = _read_meta(Path(entry.path))
                if meta is None or (meta.get("node_type") == "array" and not _is_complete(meta)):
                    _rmtree(Path(entry.path))
                    removed += 1
        if removed:
            logger.info("removed %d incomplete entries from %s", removed, self.path)
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
                "(remove_incomplete() cleans leftovers of killed runs)"
            )
    n_sets = len(infos)
    n_videos = sum(i["n_videos"] for i in infos)
    total = sum(i["bytes_on_disk"] for i in infos)
    lines.append(f"{n_sets} feature set(s), {n_videos} video(s), {_human_bytes(total)} on disk")
    return "\n".join(lines)
