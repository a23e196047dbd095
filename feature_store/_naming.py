"""Names in a feature store: escaped node names for user ids, and owner-tagged names for
temporary entries (staging arrays, temporary files, removal markers).

Node names: video ids (and set ids) are user data, so they are escaped with
:func:`encode_node_name` (percent-encoding of UTF-8 bytes outside ``[A-Za-z0-9._-]``, plus a
leading ``.``/``_`` and the name ``zarr.json``). The mapping is injective and reversible
(:func:`decode_node_name`); escaped names longer than 185 characters are shortened with a
hash (then only the ``video_id`` attribute holds the original). Names starting with ``_``
never come from user data: they are the store's own.

Owner tags: ``<kind>.<pid>.<uuid>.<host>`` (:func:`staging_name`) let a later process tell a
leftover of a killed writer from a write in flight (:func:`owner_alive`, :func:`may_be_running`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable

from feature_store._format import META
from feature_store.errors import InvalidMetadataError

__all__ = [
    "decode_node_name",
    "encode_node_name",
    "host_tag",
    "may_be_running",
    "owner_alive",
    "staging_name",
]

MAX_NODE_NAME = 185  # well below the 255-byte filename limit of common filesystems
_HASHED_PREFIX = 160
SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


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
        if ch in SAFE_CHARS and not (i == 0 and ch in "._"):
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    out = "".join(parts)
    if out.lower() == META:
        out = f"%{ord(out[0]):02X}{out[1:]}"
    if len(out) > MAX_NODE_NAME:
        cut = _HASHED_PREFIX
        while "%" in out[cut - 2 : cut]:  # never cut an escape in half
            cut -= 1
        out = f"{out[:cut]}~{hashlib.sha256(raw).hexdigest()[:24]}"
    return out


def decode_node_name(node: str) -> str | None:
    """Invert :func:`encode_node_name`; ``None`` for shortened (hashed) names.

    Raises:
        InvalidMetadataError: ``node`` is not a valid escaped name (a ``ValueError``).
    """
    if "~" in node:
        return None
    out = bytearray()
    i = 0
    try:
        while i < len(node):
            ch = node[i]
            if ch == "%":
                out += bytes.fromhex(node[i + 1 : i + 3])
                i += 3
            else:
                out += ch.encode("ascii")
                i += 1
        return out.decode("utf-8")
    except ValueError as exc:  # bad escape, non-ASCII character, invalid UTF-8
        raise InvalidMetadataError(f"{node!r} is not an escaped node name ({exc})") from None


def host_tag() -> str:
    """This host's name, reduced to ``[A-Za-z0-9-]`` (the last part of owner tags)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
    return host[:64] or "host"


def staging_name(kind: str) -> str:
    """``<kind>.<pid>.<uuid>.<host>``: the owner can be checked for liveness later."""
    return f"{kind}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{host_tag()}"


def owner_alive(name: str) -> bool | None:
    """True/False if the owner process of a :func:`staging_name` is alive on this host; None
    if it runs on another host (cannot be checked). Other names are leftovers (False)."""
    parts = name.split(".", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False  # not ours: a leftover by definition
    if parts[3] != host_tag():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def may_be_running(owner: str | None, mtime: Callable[[], float | None], *, now: float, min_age_s: float) -> bool:
    """Whether the writer or remover tagged ``owner`` may still be at work.

    Alive or dead on this host: known. Another host (or no tag): running while the entry's
    newest modification (``mtime()``, called only then) is younger than ``min_age_s``.
    """
    alive = owner_alive(owner) if isinstance(owner, str) else None
    if alive is not None:
        return alive
    stamp = mtime()
    return stamp is not None and now - stamp < min_age_s
