"""Saving and loading fitted heads without pickle.

A saved head is a directory with two files::

    head.json   {"format": "vqa-head", "format_version": 1,
                 "type": "svr", "version": 1,          # registered head type and its version
                 "params": {...},                      # get_params()-style constructor args
                 "state": {...},                       # learned scalars (JSON)
                 "feature_info": {...},                # what the head was trained on
                 "arrays": {"name": {"shape": [...], "dtype": "float64"}, ...}}
    head.npz    the learned arrays (np.savez), read back with allow_pickle=False

Heads join through a registry keyed by type name. A head class provides::

    head._state() -> (meta: dict, arrays: dict[str, np.ndarray])   # meta has "params"
    cls._from_state(meta, arrays) -> head                          # inverse of _state

and is registered with ``@register_head("name", version=1)``. ``head.npz`` is written
before ``head.json`` (each atomically, :mod:`vqa_core.atomic`), so a directory with a
``head.json`` is complete.

Loading trusts nothing in the folder (docs/hardening.md, "Tampered models"): ``head.json``
must hold finite numbers only; each array's ``.npy`` header is read first and checked against
``head.json``'s declaration and the bytes its (uncompressed) member holds, so no array is
allocated larger than the file; a class may check the declared shapes against its parameters
before anything is built (optional classmethod ``_check_state(meta, shapes)``); every float
array must be finite, except those whose names start with one of the class's
``_nonfinite_arrays`` prefixes (NaN there means "not recorded").
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from regressors.errors import HeadExistsError, ModelFormatError, RegressorError
from vqa_core.atomic import atomic_write
from vqa_core.registry import Registry

__all__ = [
    "ARRAYS_FILE",
    "FORMAT_VERSION",
    "HEAD_TYPES",
    "META_FILE",
    "list_heads",
    "load_head",
    "register_head",
    "save_head",
    "to_json",
]

logger = logging.getLogger(__name__)

META_FILE = "head.json"
ARRAYS_FILE = "head.npz"
FORMAT_NAME = "vqa-head"
FORMAT_VERSION = 1

#: Head classes by type name. The modules of the built-in heads are imported on the first
#: lookup, so that ``load_head`` works without the caller importing the head class first.
HEAD_TYPES: Registry[type] = Registry(
    "head type",
    error=ModelFormatError,
    lazy_modules=("regressors.svr", "regressors.svr_scalable", "regressors.sequence"),
)


def register_head(name: str, *, version: int):
    """Class decorator: register a head class under ``name`` with a format ``version``.

    The class must implement ``_state()`` and the classmethod ``_from_state(meta,
    arrays)``. Bump ``version`` whenever the saved state changes meaning; files of
    another version are refused on load.
    """

    def decorator(cls):
        for method in ("_state", "_from_state"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"{cls.__name__} cannot be registered: it lacks {method}()")
        HEAD_TYPES.register(name, cls)  # another class under a taken name is refused
        cls._head_type = name
        cls._head_version = int(version)
        return cls

    return decorator


def list_heads() -> list[str]:
    """Names of the registered head types."""
    return HEAD_TYPES.names()


def to_json(value, *, where: str = "value", strict: bool = True):
    """Convert ``value`` to plain JSON types (numpy scalars and arrays, paths included).

    ``strict`` (saved heads): refuse NaN/inf and any other type with a
    :class:`RegressorError` naming ``where``. Lenient (reports): NaN/inf become None and
    other objects their ``str()``.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            if strict:
                raise RegressorError(f"{where}: non-finite float {value!r} cannot be saved in JSON")
            return None
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return to_json(value.tolist(), where=where, strict=strict)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                if strict:
                    raise RegressorError(f"{where}: JSON keys must be strings, got {k!r}")
                k = str(k)
            out[k] = to_json(v, where=f"{where}.{k}", strict=strict)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(v, where=f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if strict:
        raise RegressorError(f"{where}: {type(value).__name__} value {value!r} cannot be saved in JSON")
    return str(value)


def save_head(head, directory, *, feature_info: dict, overwrite: bool = False) -> Path:
    """Save a fitted, registered head to ``directory`` (created if needed).

    Parameters
    ----------
    head
        A fitted head whose class is registered with :func:`register_head`.
    directory : path
        Target directory; receives ``head.json`` and ``head.npz``.
    feature_info : dict
        JSON-serialisable description of the training features (feature set name,
        dims, pooling, provenance ...), returned again by :func:`load_head`.
    overwrite : bool
        Replace an existing saved head; otherwise :class:`HeadExistsError`.

    Returns
    -------
    The directory, as a :class:`~pathlib.Path`.
    """
    cls = type(head)
    name = getattr(cls, "_head_type", None)
    if name is None or name not in HEAD_TYPES or HEAD_TYPES.get(name) is not cls:
        raise RegressorError(f"{cls.__qualname__} is not a registered head type; known: {', '.join(list_heads())}")
    if not isinstance(feature_info, dict):
        raise RegressorError(f"feature_info must be a dict, got {type(feature_info).__name__}")
    directory = Path(directory)
    meta_path = directory / META_FILE
    if meta_path.exists() and not overwrite:
        raise HeadExistsError(f"{meta_path} already exists (pass overwrite=True to replace it)")

    meta, arrays = head._state()  # raises NotFittedError for an unfitted head
    meta = dict(meta)
    params = meta.pop("params", None)
    if not isinstance(params, dict):
        raise RegressorError(f"{cls.__qualname__}._state() must return meta with a 'params' dict")
    array_info = {}
    clean_arrays = {}
    for key, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            # Object arrays would need pickle; only plain numbers are allowed.
            raise RegressorError(f"array {key!r} has dtype {arr.dtype}; only numeric arrays can be saved")
        clean_arrays[key] = arr
        array_info[key] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "type": name,
        "version": cls._head_version,
        "params": to_json(params, where="params"),
        "state": to_json(meta, where="state"),
        "feature_info": to_json(feature_info, where="feature_info"),
        "arrays": array_info,
    }
    text = json.dumps(doc, indent=2, allow_nan=False, sort_keys=False) + "\n"

    directory.mkdir(parents=True, exist_ok=True)
    if overwrite:
        # Remove the marker first: a crash between the two writes leaves no half head.
        meta_path.unlink(missing_ok=True)
    # fsync: a saved model is kept for good, it should survive a power loss too.
    atomic_write(directory / ARRAYS_FILE, lambda fh: np.savez(fh, **clean_arrays), fsync=True)
    atomic_write(meta_path, text, fsync=True)
    logger.info("saved %s head to %s", name, directory)
    return directory


class _NonFiniteNumber(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):  # 1e999
        raise _NonFiniteNumber(text)
    return value


def _refuse_constant(text: str):
    raise _NonFiniteNumber(text)  # NaN, Infinity, -Infinity: json.dumps(allow_nan=False) never writes them


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise ModelFormatError(f"{meta_path}: no saved head here (file missing)")
    try:
        doc = json.loads(
            meta_path.read_text(encoding="utf-8"), parse_float=_finite_float, parse_constant=_refuse_constant
        )
    except _NonFiniteNumber as exc:
        raise ModelFormatError(
            f"{meta_path}: non-finite number {exc} (a saved head holds finite numbers only)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{meta_path}: not a readable JSON file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{meta_path}: not a saved head (format is not {FORMAT_NAME!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{meta_path}: format version {doc.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    for key, kind in (
        ("type", str),
        ("version", int),
        ("params", dict),
        ("state", dict),
        ("feature_info", dict),
        ("arrays", dict),
    ):
        if not isinstance(doc.get(key), kind):
            raise ModelFormatError(f"{meta_path}: field {key!r} is missing or not a {kind.__name__}")
    return doc


def _array_headers(npz_path: Path, expected: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of ``head.npz``'s arrays, from their ``.npy`` headers, before any array is read.

    Each member must be stored uncompressed (``np.savez``) and hold exactly the bytes its header
    declares, so reading it never allocates more than the file; shapes must equal those
    declared in ``head.json``. Returns ``{name: shape}``."""
    if not npz_path.is_file():
        raise ModelFormatError(f"{npz_path}: array file missing")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(npz_path) as npz:
            for member in npz.infolist():
                key = member.filename.removesuffix(".npy")
                if member.compress_type != zipfile.ZIP_STORED:
                    raise ModelFormatError(
                        f"{npz_path}: array {key!r} is compressed; saved heads are written uncompressed (np.savez)"
                    )
                with npz.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in ((1, 0), (2, 0)):
                        raise ModelFormatError(f"{npz_path}: array {key!r} has .npy format version {version}")
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(fh)
                    header_bytes = fh.tell()
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise ModelFormatError(
                        f"{npz_path}: unreadable array file (array {key!r} has dtype {dtype}; "
                        "only plain numbers are loaded, never pickled objects)"
                    )
                declared = math.prod(shape) * dtype.itemsize
                held = member.file_size - header_bytes
                if declared != held:
                    raise ModelFormatError(
                        f"{npz_path}: array {key!r} declares shape {list(shape)} ({declared} bytes) "
                        f"but its file holds {held} bytes"
                    )
                shapes[key] = tuple(shape)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"{npz_path}: unreadable array file ({exc})") from exc
    if set(shapes) != set(expected):
        raise ModelFormatError(
            f"{npz_path}: arrays {sorted(shapes)} do not match those declared in {META_FILE}: {sorted(expected)}"
        )
    for key, info in expected.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if shape is None or list(shapes[key]) != list(shape):
            raise ModelFormatError(f"{npz_path}: array {key!r} has shape {list(shapes[key])}, declared {shape}")
    return shapes


def _read_arrays(npz_path: Path, shapes: dict, *, nonfinite_ok: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of ``head.npz`` (checked by :func:`_array_headers`), each finite unless its
    name starts with one of ``nonfinite_ok``."""
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # ValueError also covers an object array, which would need pickle.
        raise ModelFormatError(f"{npz_path}: unreadable array file ({exc})") from exc
    for key, arr in arrays.items():
        if arr.shape != shapes.get(key) or arr.dtype.kind != "f" or key.startswith(nonfinite_ok):
            continue
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        if nan or inf:
            raise ModelFormatError(
                f"{npz_path}: array {key!r} has {nan} NaN and {inf} inf value(s); "
                "a saved head holds finite numbers only"
            )
    return arrays


def load_head(directory):
    """Load a head saved by :func:`save_head`.

    Returns
    -------
    ``(head, feature_info)``: the fitted head and the ``feature_info`` dict it was saved with.

    Raises :class:`~regressors.errors.ModelFormatError` (naming the offending file) when
    a file is missing or corrupt, the type or version is unknown, or the content is not what
    a saved head can hold (non-finite numbers, arrays that disagree with their declaration or
    the head's parameters; see the module docstring).
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    doc = _read_meta(meta_path)
    name = doc["type"]
    cls = HEAD_TYPES.get(name, where=str(meta_path))  # unknown: ModelFormatError with a hint
    if doc["version"] != cls._head_version:
        raise ModelFormatError(
            f"{meta_path}: {name} head version {doc['version']} cannot be read by this code, "
            f"which reads version {cls._head_version}"
        )
    shapes = _array_headers(directory / ARRAYS_FILE, doc["arrays"])
    meta = {"params": doc["params"], **doc["state"]}
    check = getattr(cls, "_check_state", None)
    if check is not None:  # declared shapes against the parameters, before anything is built
        try:
            check(meta, shapes)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{meta_path}: inconsistent {name} head state ({exc})") from exc
    arrays = _read_arrays(directory / ARRAYS_FILE, shapes, nonfinite_ok=tuple(getattr(cls, "_nonfinite_arrays", ())))
    try:
        head = cls._from_state(meta, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{meta_path}: inconsistent {name} head state ({exc})") from exc
    logger.info("loaded %s head from %s", name, directory)
    return head, doc["feature_info"]
