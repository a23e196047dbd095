"""The packed layout: the videos of a feature set as records appended to a few files.

A packed set (group attribute ``"layout": "packed"``, store format 2) keeps its videos in
*segment* files under ``<set node>/_packs/``::

    <set node>/
      zarr.json                   group attrs {..., "layout": "packed", "feature_store_format": 2}
      _staging/                   compaction and migration outputs being written
      _stats/                     cached statistics (feature_store.dataset), as in "nodes" sets
      _packs/
        w.<pid>.<uuid>.<host>     appended to by one writer process (local stores)
        p.<pid>.<uuid>.<host>     one record, written by one PUT (URL stores: no append)
        c.<pid>.<uuid>.<host>     written whole by compaction or migration, then moved in

A segment is a sequence of records (little-endian)::

    prefix   20 bytes   b"VQPK", version 1, kind (0 video, 1 removal), 2 reserved bytes,
                        u32 header length, u64 data length
    header   UTF-8 JSON {"video_id", "order": [stamp_ns, write_id]} and, for a video,
                        "meta": the video's Zarr v3 array metadata (what its zarr.json would
                                hold: shape, data_type, chunk grid, codecs, attributes with
                                provenance and data_sha256),
                        "chunks": [[chunk key, offset in data, length], ...]
    data     the Zarr v3 chunks (bytes codec + Blosc, NaN-padded at the edges), concatenated
    trailer  8 bytes    u32 crc32 of prefix + header, b"VQPE"

so a record is one Zarr v3 array in a single byte range: its metadata and chunk objects.

Commit: a record counts once all of its bytes are in the file (its length fits and its
trailer is there); a writer appends each record with one ``write`` to its own segment
(``O_APPEND``; on an error it truncates back and starts a new segment), so a reader never
sees half a video and a killed writer leaves at most one torn record at the end of its own
segment. URL stores PUT each record as its own object (atomic), and compaction merges them.

Order: every record carries ``order = [stamp_ns, write_id]`` (wall-clock nanoseconds,
strictly increasing within a process). For each video id the record with the greatest
``(order, segment, offset)`` wins; a removal record wins like a video and hides it. Every
reader therefore picks the same record, and a later write supersedes an earlier one (across
hosts "later" is as good as their clocks).

Index: a process keeps one :class:`PackIndex` per (store, set), built once from the record
headers and refreshed on each lookup by listing ``_packs`` (one ``scandir`` of a few files)
and scanning only the bytes appended since. A segment that vanished or shrank (compaction,
removal of the set) makes it rebuild. Lookups are dict hits; a header is re-read (local) or
kept (URL) when its metadata is asked for.

Compaction (:meth:`PackedVideos.compact`) copies the winning records of *sealed* segments
(``c``/``p`` ones, and ``w`` ones whose writer is dead) into new ``c`` segments, sorted by
video id, then deletes them; segments of live writers are left alone.

Length (over 600 lines): the packed format is one protocol (record encoding, append, index,
compaction, crash recovery) whose invariants cross every function; this docstring is its
specification.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from feature_store._format import (
    CODEC,
    DAMAGE_ERRORS,
    PACKED,
    STAGING,
    attributes,
    canonical_json,
    chunk_shape,
    is_complete,
    stored_data_problem,
)
from feature_store._fs import FsspecFS, LocalFS
from feature_store._naming import may_be_running, staging_name
from feature_store.errors import FeatureNotFoundError

__all__ = [
    "PACKS",
    "PackIndex",
    "PackedVideos",
    "SegmentWriter",
    "build_record",
    "duplicate_node",
    "encode_video",
    "next_stamp",
    "plain_blosc",
]

logger = logging.getLogger(__name__)

PACKS = "_packs"
MAGIC = b"VQPK"
END = b"VQPE"
RECORD_VERSION = 1
KIND_VIDEO = 0
KIND_REMOVED = 1
_PREFIX = struct.Struct("<4sBBHIQ")  # magic, version, kind, reserved, header length, data length
_TRAILER = struct.Struct("<I4s")  # crc32 of prefix + header, end marker
RECORD_OVERHEAD = _PREFIX.size + _TRAILER.size
MAX_HEADER_BYTES = 64 * 2**20  # an untrusted length beyond this is damage, not a header
MAX_SEGMENT_BYTES = 2**31  # a writer starts a new segment beyond this (local stores)
REMOTE_SEGMENT_BYTES = 256 * 2**20  # compaction outputs are built in memory for a URL store
_WINDOW = 64 * 2**10  # bytes read at once while scanning headers
_SEGMENT_NAME = re.compile(r"^[wpc]\.\d+\.[0-9a-f]{12}\.[A-Za-z0-9-]+$")
_MAX_CACHED_INDEXES = 64
_RETRIES = 3  # reads that lost a race with a compaction rebuild the index and retry
_BLOSC_MAX_BYTES = 2**31 - 16  # Blosc's limit for one buffer (a chunk)


# --------------------------------------------------------------------------- records


def build_record(kind: int, header: dict, data: bytes | memoryview = b"") -> bytes:
    """One record's bytes: prefix, JSON header, data, trailer (see the module docstring)."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, RECORD_VERSION, kind, 0, len(head), len(data))
    trailer = _TRAILER.pack(zlib.crc32(head, zlib.crc32(prefix)), END)
    return b"".join((prefix, head, data, trailer))


_stamp_lock = threading.Lock()
_last_stamp = 0


def next_stamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (record order)."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1)
        return _last_stamp


def stamp_of(written: Any) -> int:
    """Record order stamp of a node video's ``written`` attribute (ISO time; 0 if absent)."""
    if isinstance(written, str):
        try:
            when = _dt.datetime.fromisoformat(written)
        except ValueError:
            return 0
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        return int(when.timestamp()) * 10**9
    return 0


# --------------------------------------------------------------------------- Zarr chunks

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@lru_cache(maxsize=16)
def _meta_template(dtype: str, codec_json: str) -> str:
    """Zarr v3 array metadata of ``dtype`` with the codec ``codec_json``, as zarr writes it
    (built once by zarr itself, so that records hold exactly what a zarr.json would)."""
    import zarr
    import zarr.codecs
    from zarr.storage import MemoryStore

    mem: dict = {}
    zarr.create_array(
        store=MemoryStore(mem),
        shape=(1, 1),
        chunks=(1, 1),
        dtype=dtype,
        compressors=zarr.codecs.BloscCodec(**json.loads(codec_json)),
        fill_value=float("nan"),
        dimension_names=("step", "dim"),
        zarr_format=3,
    )
    return mem["zarr.json"].to_bytes().decode("utf-8")


def encode_video(data: np.ndarray, video_attributes: dict) -> tuple[dict, list[list], bytes]:
    """Encode ``data`` [steps, dims] (stored dtype) as a Zarr v3 array in memory.

    Returns its metadata (with ``video_attributes``), the chunk list ``[[key, offset,
    length], ...]`` and the concatenated chunk bytes: the chunk grid of
    :func:`~feature_store._format.chunk_shape`, edge chunks padded with NaN, Blosc with the
    store's :data:`~feature_store._format.CODEC` (byte for byte what zarr writes).
    """
    import numcodecs

    steps, dims = data.shape
    rows, cols = chunk_shape(steps, dims, data.dtype.itemsize)
    meta = json.loads(_meta_template(data.dtype.name, canonical_json(CODEC)))
    meta["shape"] = [steps, dims]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [rows, cols]
    meta["attributes"] = video_attributes
    blosc = numcodecs.Blosc(
        cname=CODEC["cname"], clevel=CODEC["clevel"], shuffle=_SHUFFLES[CODEC["shuffle"]], blocksize=0
    )
    sep = meta["chunk_key_encoding"]["configuration"]["separator"]
    parts, chunks, offset = [], [], 0
    for i in range(-(-steps // rows)):
        for j in range(-(-dims // cols)):
            block = data[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            if block.shape != (rows, cols):  # zarr stores edge chunks whole, fill value around
                padded = np.full((rows, cols), np.nan, data.dtype)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            encoded = blosc.encode(np.ascontiguousarray(block))
            chunks.append([f"c{sep}{i}{sep}{j}", offset, len(encoded)])
            parts.append(encoded)
            offset += len(encoded)
    return meta, chunks, b"".join(parts)


def plain_blosc(meta: dict) -> bool:
    """Whether an array's codecs are little-endian bytes + Blosc (decoded without zarr)."""
    codecs = meta.get("codecs")
    return (
        isinstance(codecs, list)
        and len(codecs) == 2
        and codecs[0].get("name") == "bytes"
        and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
        and codecs[1].get("name") == "blosc"
        and meta.get("chunk_key_encoding", {}).get("name") == "default"
    )


def _grid(meta: dict) -> tuple[list[int], list[int], np.dtype]:
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    return shape, chunks, np.dtype(meta["data_type"]).newbyteorder("<")


def _chunk_coords(key: str) -> tuple[int, int]:
    _c, i, j = re.split(r"[./]", key)
    return int(i), int(j)


def decode_video(meta: dict, chunks: list[list], blob: bytes | memoryview) -> np.ndarray:
    """The array [steps, dims] (stored dtype) of a record's metadata, chunk list and data.

    A chunk that is not listed reads as NaN (the fill value), as in zarr. zarr's and Blosc's
    errors on damaged bytes propagate (:data:`~feature_store._format.DAMAGE_ERRORS`).
    """
    if not plain_blosc(meta):
        return _decode_with_zarr(meta, chunks, blob)
    import numcodecs

    shape, (rows, cols), dtype = _grid(meta)
    grid = -(-shape[0] // max(rows, 1)) * -(-shape[1] // max(cols, 1))
    if rows < 1 or cols < 1 or len(chunks) > grid or rows * cols * dtype.itemsize > _BLOSC_MAX_BYTES:
        raise ValueError(f"chunk grid {rows}x{cols} with {len(chunks)} chunks does not fit shape {shape}")
    coords = [_chunk_coords(key) for key, _o, _n in chunks]
    whole = len(set(coords)) == grid  # every chunk there: no fill value to write first
    out = np.empty(shape, dtype) if whole else np.full(shape, np.nan, dtype)
    view = memoryview(blob)
    chunk_bytes = rows * cols * dtype.itemsize
    for (i, j), (_key, offset, length) in zip(coords, chunks, strict=True):
        source = view[offset : offset + length]
        r, c = min(rows, shape[0] - i * rows), min(cols, shape[1] - j * cols)
        if r == rows and cols == shape[1] and _blosc_nbytes(source) == chunk_bytes:
            numcodecs.blosc.decompress(source, out[i * rows : (i + 1) * rows])  # whole rows: in place
            continue
        block = np.frombuffer(numcodecs.blosc.decompress(source), dtype).reshape(rows, cols)
        out[i * rows : i * rows + r, j * cols : j * cols + c] = block[:r, :c]
    return out


def _blosc_nbytes(source: memoryview) -> int | None:
    """Decompressed size in a Blosc chunk's header (bytes 4-7 of its 16-byte header)."""
    return struct.unpack_from("<I", source, 4)[0] if len(source) >= 16 else None


def _decode_with_zarr(meta: dict, chunks: list[list], blob: bytes | memoryview) -> np.ndarray:
    array = _zarr_array(meta, chunks, blob)
    return array[...]


def _zarr_array(meta: dict, chunks: list[list], blob: bytes | memoryview):
    """A read-only in-memory zarr array of one record (metadata + chunk objects)."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    buffer = default_buffer_prototype().buffer
    view = memoryview(blob)
    mem = {"zarr.json": buffer.from_bytes(json.dumps(meta).encode("utf-8"))}
    for key, offset, length in chunks:
        mem[key] = buffer.from_bytes(bytes(view[offset : offset + length]))
    return zarr.open_array(store=MemoryStore(mem, read_only=True), mode="r", zarr_format=3)


def _decode_chunk(read: Callable[[], bytes], rows: int, cols: int, dtype: str, r: int, c: int) -> np.ndarray:
    """One chunk of a lazy (dask) read: ``read()`` its bytes, decode, cut the edge."""
    import numcodecs

    block = np.frombuffer(numcodecs.blosc.decompress(read()), np.dtype(dtype).newbyteorder("<"))
    return block.reshape(rows, cols)[:r, :c]


# --------------------------------------------------------------------------- the index


@dataclass(slots=True)
class Entry:
    """Where one record is and what it says (enough to pick the winner without its header)."""

    video_id: str
    removed: bool
    order: tuple[int, str]
    segment: str
    offset: int
    header_len: int
    data_len: int
    header: bytes | None = None  # kept for URL stores, where re-reading costs a request

    @property
    def size(self) -> int:
        return RECORD_OVERHEAD + self.header_len + self.data_len

    @property
    def key(self) -> tuple:
        return (self.order, self.segment, self.offset)


@dataclass(slots=True)
class SegmentState:
    """What the index knows of one segment file."""

    size: int = 0  # its size at the last listing
    scanned: int = 0  # the records before this offset are indexed
    tail: tuple | None = None  # ("torn", offset) or ("damaged", offset, why): scanning stopped there


@dataclass
class PackIndex:
    """The winning record of every video of one packed set, and what scanning found.

    Attributes:
        segments: segment name -> :class:`SegmentState`.
        winners: video id -> the :class:`Entry` that wins (a removal hides the video).
        damaged: ``(segment, offset)`` -> why a record there is unreadable (skipped).
        foreign: names in ``_packs`` that are not segments.
    """

    segments: dict[str, SegmentState] = field(default_factory=dict)
    winners: dict[str, Entry] = field(default_factory=dict)
    damaged: dict[tuple[str, int], str] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def reset(self) -> None:
        self.segments, self.winners, self.damaged, self.foreign = {}, {}, {}, set()

    def add(self, entry: Entry) -> None:
        current = self.winners.get(entry.video_id)
        if current is None or entry.key > current.key:
            self.winners[entry.video_id] = entry

    def live(self) -> dict[str, Entry]:
        """Winners that are videos (not removals), by id (a copy: another thread may refresh)."""
        with self.lock:
            return {v: e for v, e in self.winners.items() if not e.removed}


_indexes: OrderedDict[tuple[str, str], PackIndex] = OrderedDict()
_indexes_lock = threading.Lock()


def _index_for(location: str, set_key: str) -> PackIndex:
    """This process's index of a packed set (shared by every FeatureStore of the location)."""
    with _indexes_lock:
        index = _indexes.get((location, set_key))
        if index is None:
            index = _indexes[(location, set_key)] = PackIndex()
            while len(_indexes) > _MAX_CACHED_INDEXES:
                _indexes.popitem(last=False)
        else:
            _indexes.move_to_end((location, set_key))
        return index


class _Window:
    """Reads of one segment through a window of ``_WINDOW`` bytes (record headers are small
    and follow each other's trailers, so scanning takes about one read per record)."""

    def __init__(self, read: Callable[[int, int], bytes], size: int, *, start: int = 0, seed: bytes = b""):
        self.read, self.size = read, size
        self.buf, self.buf_start = seed, start

    def get(self, offset: int, length: int) -> bytes:
        end = offset + length
        if self.buf_start <= offset and end <= self.buf_start + len(self.buf):
            return self.buf[offset - self.buf_start : end - self.buf_start]
        want = min(max(length, _WINDOW), self.size - offset)
        self.buf, self.buf_start = self.read(offset, want), offset
        return self.buf[:length]


def _parse_header(kind: int, head: bytes, data_len: int) -> tuple[str, tuple[int, str]]:
    """(video id, order) of a well-formed record header, or raise ValueError."""
    header = json.loads(head)
    video_id, order = header.get("video_id"), header.get("order")
    if not (
        isinstance(video_id, str)
        and video_id
        and isinstance(order, list)
        and len(order) == 2
        and isinstance(order[0], int)
        and isinstance(order[1], str)
    ):
        raise ValueError("no video id or order")
    if kind == KIND_VIDEO:
        meta = header.get("meta")
        if not is_complete(meta, video_id):
            raise ValueError("its metadata is not a complete video")
        chunks = header.get("chunks")
        if not isinstance(chunks, list) or not all(
            isinstance(c, list)
            and len(c) == 3
            and isinstance(c[0], str)
            and all(isinstance(n, int) and n >= 0 for n in c[1:])
            and c[1] + c[2] <= data_len
            for c in chunks
        ):
            raise ValueError("its chunk list does not fit its data")
    return video_id, (order[0], order[1])


def scan_segment(name: str, window: _Window, start: int, size: int, *, keep_headers: bool):
    """Index the records of segment ``name`` between ``start`` and ``size``.

    Returns ``(entries, damaged, next_offset, tail)``: the records found, the unreadable
    ones whose framing is intact (``[(offset, why)]``, skipped), where the next record
    starts, and why scanning stopped before ``size`` (None: it did not; ``("torn",
    offset)``: a record not completely written, in flight or left by a killed writer;
    ``("damaged", offset, why)``: bytes that do not frame a record).
    """
    entries: list[Entry] = []
    damaged: list[tuple[int, str]] = []
    pos = start
    while pos < size:
        if size - pos < _PREFIX.size:
            return entries, damaged, pos, ("torn", pos)
        prefix = window.get(pos, _PREFIX.size)
        magic, version, kind, _reserved, head_len, data_len = _PREFIX.unpack(prefix)
        if magic != MAGIC or version != RECORD_VERSION or kind not in (KIND_VIDEO, KIND_REMOVED):
            return entries, damaged, pos, ("damaged", pos, "no record starts there")
        if head_len > MAX_HEADER_BYTES:
            return entries, damaged, pos, ("damaged", pos, f"header length {head_len} is implausible")
        end = pos + RECORD_OVERHEAD + head_len + data_len
        if end > size:
            return entries, damaged, pos, ("torn", pos)
        head = window.get(pos + _PREFIX.size, head_len)
        crc, marker = _TRAILER.unpack(window.get(end - _TRAILER.size, _TRAILER.size))
        if marker != END:
            return entries, damaged, pos, ("damaged", pos, "the record's end marker is missing")
        if crc != zlib.crc32(head, zlib.crc32(prefix)):
            damaged.append((pos, "its header does not match its checksum"))
            pos = end
            continue
        try:
            video_id, order = _parse_header(kind, head, data_len)
        except ValueError as exc:  # also JSON and UTF-8 errors
            damaged.append((pos, f"malformed header ({exc})"))
            pos = end
            continue
        entries.append(
            Entry(video_id, kind == KIND_REMOVED, order, name, pos, head_len, data_len, head if keep_headers else None)
        )
        pos = end
    return entries, damaged, pos, None


# --------------------------------------------------------------------------- appending (local)


class _Appender:
    """This process's open segment in one packed set of a local store."""

    def __init__(self, packs_dir: Path) -> None:
        self.dir = packs_dir
        self.name: str | None = None
        self.size = 0
        self.lock = threading.Lock()

    def append(self, record: bytes) -> tuple[str, int]:
        """Append one record with one ``write``; return (segment, offset). On any failure the
        segment is cut back to where it was and abandoned: only a killed process leaves a
        torn record, and only at the end of its own segment."""
        with self.lock:
            if self.name is None or (self.size and self.size + len(record) > MAX_SEGMENT_BYTES):
                self.name, self.size = staging_name("w"), 0
            path = self.dir / self.name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except FileNotFoundError:
                try:
                    self.dir.mkdir(exist_ok=True)  # not parents: a removed set stays removed
                except FileNotFoundError:
                    raise FeatureNotFoundError(f"{self.dir.parent} was removed while writing into it") from None
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.fstat(fd).st_size
                try:
                    _write_all(fd, record)
                except BaseException:
                    self.name = None
                    try:
                        os.ftruncate(fd, start)
                    except OSError:
                        logger.warning("could not cut back %s after a failed write", path)
                    raise
                self.size = start + len(record)
                return self.name, start
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_appenders: dict[str, _Appender] = {}
_appenders_lock = threading.Lock()


def _appender_for(packs_dir: Path) -> _Appender:
    with _appenders_lock:
        appender = _appenders.get(str(packs_dir))
        if appender is None:
            appender = _appenders[str(packs_dir)] = _Appender(packs_dir)
        return appender


def _after_fork_in_child() -> None:
    """A forked child writes its own segments (owner tags carry the pid) and starts with
    fresh locks (one held by another thread at the fork would never be released)."""
    global _appenders_lock, _indexes_lock, _stamp_lock
    _appenders.clear()
    _indexes.clear()
    _appenders_lock, _indexes_lock, _stamp_lock = threading.Lock(), threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- segment outputs


class SegmentWriter:
    """Whole segments written by compaction or migration: records go to ``_staging/c.*``
    (local) or memory (URL), and :meth:`commit` moves each finished segment into
    ``_packs`` (a rename, or one PUT). New segments start beyond ``max_bytes``."""

    def __init__(self, fs: LocalFS | FsspecFS, set_key: str, *, max_bytes: int | None = None) -> None:
        self.fs, self.set_key = fs, set_key
        self.max_bytes = max_bytes or (MAX_SEGMENT_BYTES if fs.local else REMOTE_SEGMENT_BYTES)
        self.done: list[tuple[str, Any]] = []  # (name, local staging path or bytes)
        self._name: str | None = None
        self._file: Any = None
        self._parts: list[bytes] = []
        self._size = 0
        self.records = 0

    def add(self, record: bytes) -> None:
        if self._name is not None and self._size + len(record) > self.max_bytes:
            self._finish()
        if self._name is None:
            self._name = staging_name("c")
            if self.fs.local:
                staging = self.fs.path(f"{self.set_key}/{STAGING}")
                staging.mkdir(exist_ok=True)
                self._file = open(staging / self._name, "wb")  # noqa: SIM115 -- closed in _finish
        if self.fs.local:
            self._file.write(record)
        else:
            self._parts.append(record)
        self._size += len(record)
        self.records += 1

    def _finish(self) -> None:
        if self._name is None:
            return
        if self.fs.local:
            self._file.close()
            self.done.append((self._name, Path(self._file.name)))
        else:
            self.done.append((self._name, b"".join(self._parts)))
        self._name, self._file, self._parts, self._size = None, None, [], 0

    def commit(self) -> list[str]:
        """Move every segment into ``_packs``; return their names."""
        self._finish()
        names = []
        for name, payload in self.done:
            if self.fs.local:
                packs = self.fs.path(f"{self.set_key}/{PACKS}")
                packs.mkdir(exist_ok=True)
                os.rename(payload, packs / name)
            else:
                self.fs.write_bytes(f"{self.set_key}/{PACKS}/{name}", payload)
            names.append(name)
        self.done = []
        return names

    def discard(self) -> None:
        """Forget (and delete) what was written and not committed."""
        if self._file is not None:
            self._file.close()
            self.done.append((self._name, Path(self._file.name)))
        for _name, payload in self.done:
            if isinstance(payload, Path):
                payload.unlink(missing_ok=True)
        self.done, self._name, self._file, self._parts, self._size = [], None, None, [], 0


# --------------------------------------------------------------------------- one packed set


class PackedVideos:
    """The videos of one packed feature set: the per-set interface of
    :class:`feature_store._layout.NodeVideos`, over segment files.

    Args:
        fs: the store's filesystem layer.
        set_id, set_key: the set and its node name.
    """

    layout = PACKED

    def __init__(self, fs: LocalFS | FsspecFS, set_id: str, set_key: str) -> None:
        self.fs, self.set_id, self.set_key = fs, set_id, set_key
        self.packs = f"{set_key}/{PACKS}"
        self.index = _index_for(fs.location, set_key)

    # ------------------------------------------------------------------ reading the index

    def refresh(self) -> PackIndex:
        """The index, brought up to date: one listing of ``_packs`` and a scan of the bytes
        appended since the last refresh (everything again if a segment vanished or shrank)."""
        listing = self.fs.sizes(self.packs)
        index = self.index
        with index.lock:
            if any(listing.get(n, -1) < s.scanned for n, s in index.segments.items()):
                index.reset()  # compacted, truncated or removed: rebuild
            index.foreign = {n for n in listing if not _SEGMENT_NAME.match(n)}
            todo = [
                (n, size)
                for n, size in sorted(listing.items())
                if n not in index.foreign and (n not in index.segments or index.segments[n].size != size)
            ]
            seeds = self._prefetch([(n, index.segments.get(n, SegmentState()).scanned, size) for n, size in todo])
            for (name, size), seed in zip(todo, seeds, strict=True):
                state = index.segments.setdefault(name, SegmentState())
                if size > state.scanned:
                    self._scan_into(index, name, state, size, seed)
                state.size = size
        return index

    def _prefetch(self, todo: list[tuple[str, int, int]]) -> list[bytes | None]:
        """URL stores: the first window of every segment to scan, in one batch of requests."""
        if self.fs.local or len(todo) < 2:
            return [None] * len(todo)
        return self.fs.read_ranges(
            [(f"{self.packs}/{n}", start, min(_WINDOW, size - start)) for n, start, size in todo]
        )

    def _scan_into(self, index: PackIndex, name: str, state: SegmentState, size: int, seed: bytes | None) -> None:
        read = partial(self.fs.read_range, f"{self.packs}/{name}")
        if self.fs.local:
            try:
                handle = open(self.fs.path(f"{self.packs}/{name}"), "rb", buffering=0)  # noqa: SIM115
            except FileNotFoundError:
                return  # deleted since the listing: the next refresh rebuilds
            read = partial(_pread, handle.fileno())
        else:
            handle = None
        try:
            window = _Window(read, size, start=state.scanned, seed=seed or b"")
            entries, damaged, pos, tail = scan_segment(
                name, window, state.scanned, size, keep_headers=not self.fs.local
            )
        except FileNotFoundError:
            return
        finally:
            if handle is not None:
                handle.close()
        for entry in entries:
            index.add(entry)
        for offset, why in damaged:
            index.damaged[(name, offset)] = why
        state.scanned, state.tail = pos, tail

    def _entry(self, video_id: str) -> Entry | None:
        entry = self.refresh().winners.get(video_id)
        return None if entry is None or entry.removed else entry

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` again with a rebuilt index when it lost a race with a compaction (a
        segment it was reading was deleted after being copied)."""
        for _attempt in range(_RETRIES - 1):
            try:
                return fn()
            except FileNotFoundError:
                with self.index.lock:
                    self.index.reset()
        return fn()

    def _header(self, entry: Entry) -> dict:
        raw = entry.header
        if raw is None:
            raw = self.fs.read_range(f"{self.packs}/{entry.segment}", entry.offset + _PREFIX.size, entry.header_len)
            if len(raw) != entry.header_len:
                raise FileNotFoundError(entry.segment)  # cut back by a cleaner: re-read the index
        return json.loads(raw)

    def _meta(self, entry: Entry) -> dict:
        """The Zarr metadata (with attributes) of a video record."""
        return self._header(entry)["meta"]

    def complete_meta(self, video_id: str) -> dict | None:
        """Metadata of a completely stored video; None if it is not stored."""

        def get() -> dict | None:
            entry = self._entry(video_id)
            return None if entry is None else self._meta(entry)

        return self._retrying(get)

    def complete_metas(self, video_ids: Iterable[str]) -> dict[str, dict | None]:
        """:meth:`complete_meta` of several videos, with one refresh of the index."""
        video_ids = list(dict.fromkeys(video_ids))

        def get() -> dict[str, dict | None]:
            index = self.refresh()
            out: dict[str, dict | None] = {}
            with index.lock:
                entries = {v: index.winners.get(v) for v in video_ids}
            heads = self._headers([e for e in entries.values() if e is not None and not e.removed])
            for v, e in entries.items():
                out[v] = None if e is None or e.removed else heads[id(e)]["meta"]
            return out

        return self._retrying(get)

    def _headers(self, entries: list[Entry]) -> dict[int, dict]:
        """Parsed headers of ``entries`` (by ``id(entry)``), read segment by segment in file
        order through a window (local stores) or from the index (URL stores)."""
        out: dict[int, dict] = {}
        by_segment: dict[str, list[Entry]] = {}
        for e in entries:
            if e.header is not None:
                out[id(e)] = json.loads(e.header)
            else:
                by_segment.setdefault(e.segment, []).append(e)
        for segment, group in by_segment.items():
            group.sort(key=lambda e: e.offset)
            with open(self.fs.path(f"{self.packs}/{segment}"), "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                window = _Window(partial(_pread, f.fileno()), size)
                for e in group:
                    raw = window.get(e.offset + _PREFIX.size, e.header_len)
                    if len(raw) != e.header_len:
                        raise FileNotFoundError(segment)
                    out[id(e)] = json.loads(raw)
        return out

    def video_ids(self) -> list[str]:
        """Ids of the stored videos, sorted (from the index: no header is read)."""
        return sorted(self.refresh().live())

    def video_metas(self) -> tuple[dict[str, dict], int]:
        """Stored videos' metadata by id, and the number of incomplete or damaged records."""

        def get() -> tuple[dict[str, dict], int]:
            index = self.refresh()
            live = index.live()
            heads = self._headers(list(live.values()))
            incomplete = len(index.damaged) + sum(1 for s in index.segments.values() if s.tail is not None)
            return {v: heads[id(e)]["meta"] for v, e in live.items()}, incomplete

        return self._retrying(get)

    def any_complete_meta(self) -> dict | None:
        """Metadata of one stored video (cheap), or None."""

        def get() -> dict | None:
            index = self.refresh()
            with index.lock:
                entry = next((e for e in index.winners.values() if not e.removed), None)
            return None if entry is None else self._meta(entry)

        return self._retrying(get)

    def has_node(self, video_id: str) -> bool:
        """Whether the video is stored (a packed set has no incomplete videos in place)."""
        return self._entry(video_id) is not None

    def where(self, video_id: str) -> str:
        """Where a video's record is, for messages."""
        entry = self.index.winners.get(video_id)
        if entry is None:
            return self.fs.url(self.packs)
        return f"{self.fs.url(f'{self.packs}/{entry.segment}')} at byte {entry.offset}"

    # ------------------------------------------------------------------ reading data

    def _record(self, video_id: str) -> tuple[Entry, dict, memoryview]:
        entry = self._entry(video_id)
        if entry is None:
            raise FeatureNotFoundError(f"video {video_id!r} is not stored in feature set {self.set_id!r}")
        length = entry.header_len + entry.data_len
        raw = self.fs.read_range(f"{self.packs}/{entry.segment}", entry.offset + _PREFIX.size, length)
        if len(raw) != length:
            raise FileNotFoundError(entry.segment)
        return entry, json.loads(raw[: entry.header_len]), memoryview(raw)[entry.header_len :]  # (no copy)

    def read_stored(self, video_id: str) -> tuple[np.ndarray | None, str | None]:
        """All of a stored video [steps, dims] (stored dtype) and why it is damaged (None
        when sound); see :meth:`feature_store._layout.NodeVideos.read_stored`.

        Raises:
            FeatureNotFoundError: the video is not stored.
        """
        _meta, data, problem = self._load(video_id)
        return data, problem

    def _load(self, video_id: str) -> tuple[dict, np.ndarray | None, str | None]:
        _entry, header, blob = self._retrying(lambda: self._record(video_id))
        meta = header["meta"]
        try:
            data = decode_video(meta, header["chunks"], blob)
        except DAMAGE_ERRORS as exc:
            return meta, None, f"chunks do not decode ({type(exc).__name__}: {exc})"
        return meta, data, stored_data_problem(data, attributes(meta).get("data_sha256"))

    def row_blocks(self, video_id: str) -> tuple[str | None, Iterator[np.ndarray]]:
        """The video's ``data_sha256`` and its rows in blocks of one chunk (stored dtype),
        decoded at once (a packed video is read with one request).

        Raises:
            ValueError: its chunks do not decode.
        """
        meta, data, problem = self._load(video_id)
        if data is None:
            raise ValueError(problem)
        rows = max(1, int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]))
        return attributes(meta).get("data_sha256"), (data[i : i + rows] for i in range(0, len(data), rows))

    def open_video(self, video_id: str):
        """The video as a read-only zarr array held in memory (its compressed bytes)."""
        _entry, header, blob = self._retrying(lambda: self._record(video_id))
        return _zarr_array(header["meta"], header["chunks"], blob)

    def dask_array(self, video_id: str):
        """Lazy float32-or-float16 [steps, dims], one dask chunk per Zarr chunk; each chunk
        reads its byte range when computed (do not compact the set meanwhile)."""
        import dask
        import dask.array as da

        def head() -> tuple[Entry, dict]:
            entry = self._entry(video_id)
            if entry is None:
                raise FeatureNotFoundError(f"video {video_id!r} is not stored in feature set {self.set_id!r}")
            return entry, self._header(entry)

        entry, header = self._retrying(head)  # the header only: chunks are read when computed
        meta = header["meta"]
        if not plain_blosc(meta):
            return da.from_zarr(self.open_video(video_id))
        shape, (rows, cols), dtype = _grid(meta)
        key = f"{self.packs}/{entry.segment}"
        start = entry.offset + _PREFIX.size + entry.header_len
        where = {tuple(_chunk_coords(k)): (o, n) for k, o, n in header["chunks"]}
        grid = []
        for i in range(-(-shape[0] // rows)):
            row = []
            for j in range(-(-shape[1] // cols)):
                r, c = min(rows, shape[0] - i * rows), min(cols, shape[1] - j * cols)
                if (i, j) not in where:
                    row.append(da.full((r, c), np.nan, dtype=dtype))
                    continue
                offset, length = where[(i, j)]
                read = partial(self.fs.read_range, key, start + offset, length)
                chunk = dask.delayed(_decode_chunk, pure=True)(read, rows, cols, dtype.str, r, c)
                row.append(da.from_delayed(chunk, shape=(r, c), dtype=dtype))
            grid.append(row)
        return da.block(grid)

    # ------------------------------------------------------------------ writing

    def _put(self, record: bytes) -> None:
        if self.fs.local:
            _appender_for(self.fs.path(self.packs)).append(record)
        else:  # object stores cannot append: one immutable object per record
            self.fs.write_bytes(f"{self.packs}/{staging_name('p')}", record)

    def write(self, video_id: str, data: np.ndarray, video_attributes: dict, *, overwrite: bool, check=None) -> None:
        """Append one video's record (data [steps, dims] in the stored dtype; attributes with
        ``write_id`` and ``"status": "complete"``). Written whether or not the video is
        stored: the caller checks ``overwrite``; the newest record wins."""
        meta, chunks, blob = encode_video(data, video_attributes)
        header = {
            "video_id": video_id,
            "order": [next_stamp(), video_attributes["write_id"]],
            "meta": meta,
            "chunks": chunks,
        }
        self._put(build_record(KIND_VIDEO, header, blob))

    def remove(self, video_id: str) -> bool:
        """Append a removal record for a stored video; False if it is not stored."""
        if self._entry(video_id) is None:
            return False
        self._put(build_record(KIND_REMOVED, {"video_id": video_id, "order": [next_stamp(), uuid.uuid4().hex]}))
        return True

    # ------------------------------------------------------------------ maintenance

    def sealed(self, name: str, *, now: float, min_age_s: float) -> bool:
        """Whether no writer will append to segment ``name`` any more."""
        if not name.startswith("w."):
            return True  # written whole (compaction, migration) or one PUT
        return not may_be_running(name, partial(self.fs.mtime, f"{self.packs}/{name}"), now=now, min_age_s=min_age_s)

    def torn_tails(self, *, now: float, min_age_s: float) -> dict[str, tuple[int, int, bool]]:
        """Segments that end in a torn record: name -> (offset, bytes, whether its writer may
        still be at work)."""
        index = self.refresh()
        with index.lock:
            segments = dict(index.segments)
        out = {}
        for name, state in segments.items():
            if state.tail is not None and state.tail[0] == "torn":
                running = not self.sealed(name, now=now, min_age_s=min_age_s)
                out[name] = (state.tail[1], state.size - state.tail[1], running)
        return out

    def cut_torn_tails(self, *, min_age_s: float) -> int:
        """Cut the torn records of killed writers off their segments (empty ones are
        deleted); return how many segments were cut. Local stores only (objects are whole)."""
        if not self.fs.local:
            return 0
        cut = 0
        for name, (offset, _n, running) in self.torn_tails(now=time.time(), min_age_s=min_age_s).items():
            if running:
                continue
            path = self.fs.path(f"{self.packs}/{name}")
            if offset == 0:
                path.unlink(missing_ok=True)
            else:
                os.truncate(path, offset)
            cut += 1
        if cut:
            with self.index.lock:
                self.index.reset()
        return cut

    def compact(self, *, min_age_s: float) -> tuple[int, int, int]:
        """Merge the sealed segments into new ones holding only their winning records,
        sorted by video id; return (segments replaced, segments written, bytes freed).

        A removal record is kept only while an older record of its video remains in a
        segment that is not compacted (a live writer's). Segments with damaged records are
        left alone (``verify`` reports them). Readers that lose a race with the deletion of
        a compacted segment rebuild their index and retry.
        """
        index = self.refresh()
        now = time.time()
        with index.lock:
            sealed = sorted(
                n
                for n, s in index.segments.items()
                if self.sealed(n, now=now, min_age_s=min_age_s)
                and s.tail is None
                and not any(seg == n for seg, _o in index.damaged)
            )
            if not sealed:
                return 0, 0, 0
            inputs = set(sealed)
            others = [n for n in index.segments if n not in inputs]
            keep = [e for e in index.winners.values() if e.segment in inputs]
            if any(e.removed for e in keep):
                shadowed = self._video_ids_in(others)
                keep = [e for e in keep if not e.removed or e.video_id in shadowed]
            size_in = sum(index.segments[n].size for n in sealed)
            kept_bytes = sum(e.size for e in keep)
            if len(sealed) == 1 and kept_bytes == size_in:
                return 0, 0, 0  # one segment without garbage: nothing to gain
            keep.sort(key=lambda e: (e.video_id, e.key))
        writer = SegmentWriter(self.fs, self.set_key)
        try:
            for e in keep:
                raw = self.fs.read_range(f"{self.packs}/{e.segment}", e.offset, e.size)
                if len(raw) != e.size:
                    raise FileNotFoundError(e.segment)
                writer.add(raw)
            written = writer.commit()
        except BaseException:
            writer.discard()
            raise
        self.fs.delete_many([f"{self.packs}/{n}" for n in sealed])
        with index.lock:
            index.reset()
        logger.info(
            "compacted %s: %d segment(s) -> %d, %d record(s), %d bytes freed",
            self.set_id,
            len(sealed),
            len(written),
            len(keep),
            size_in - kept_bytes,
        )
        return len(sealed), len(written), size_in - kept_bytes

    def _video_ids_in(self, segments: list[str]) -> set[str]:
        """Ids of every record (not only winners) in ``segments``."""
        ids: set[str] = set()
        for name in segments:
            state = self.index.segments[name]
            try:
                read = partial(self.fs.read_range, f"{self.packs}/{name}")
                window = _Window(read, state.scanned)
                entries, _d, _p, _t = scan_segment(name, window, 0, state.scanned, keep_headers=False)
            except FileNotFoundError:
                continue
            ids.update(e.video_id for e in entries)
        return ids

    def stats(self) -> dict:
        """``{"files", "bytes", "live_bytes"}`` of the set's segments (info)."""
        index = self.refresh()
        with index.lock:
            return {
                "files": len(index.segments),
                "bytes": sum(s.size for s in index.segments.values()),
                "live_bytes": sum(e.size for e in index.winners.values() if not e.removed),
            }


def duplicate_node(meta: dict | None, packed_metas: dict[str, dict]) -> bool | None:
    """For a Zarr video node found inside a packed set: None if it is not a complete video
    (an unfinished write: a leftover), True if it is a copy of the packed record of its
    video (same ``write_id``: left by a killed migration), False if it holds a write that
    the packs do not (``vqa store migrate`` takes it in)."""
    if not is_complete(meta):
        return None
    attrs = attributes(meta)
    packed = packed_metas.get(attrs["video_id"])
    return packed is not None and attributes(packed).get("write_id") == attrs.get("write_id")


def _pread(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)
