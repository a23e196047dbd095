"""The packed layout (GitHub issue 17): videos as records appended to a few segment files,
on a local directory, ``memory://`` and ``file://``; record order and supersession, removal,
compaction, torn and tampered records, the index refresh, and the migration of ``"nodes"``
sets (``vqa store migrate``). Several processes: tests/test_store_packed_processes.py."""

from __future__ import annotations

import json
import os
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from feature_store import (
    FeatureDataset,
    FeatureNotFoundError,
    FeatureStore,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    _format,
    _packs,
    encode_node_name,
    export_hdf5,
    feature_stats,
    format_store_info,
    import_hdf5,
    migrate,
    remove,
    verify,
)
from feature_store._fs import LocalFS
from feature_store._layout import NodeVideos, StoreLayout
from flows.cli import main as vqa
from tests.helpers import writer_values

SPEC = {"name": "packed", "dims": 8}
SAMPLING = {"strategy": "all"}
SET_PROV = {"code": "1"}
_COUNTER = iter(range(10**6))


def values(writer: int, video: str, steps: int = 12) -> np.ndarray:
    return writer_values(writer, video, steps, SPEC["dims"])


def prov(writer: int = 0) -> dict:
    return {"set": SET_PROV, "video": {"writer": writer}}


@pytest.fixture(params=["local", "memory", "file"])
def location(request, tmp_path) -> str:
    """A fresh store location of each kind."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://vqa-tests/packed-{next(_COUNTER)}"
    return (tmp_path / "store").as_uri()


def _packed(location: str, **kwargs) -> tuple[FeatureStore, str]:
    store = FeatureStore(location, default_layout="packed")
    return store, store.ensure_feature_set(spec=SPEC, sampling=SAMPLING, **kwargs)


def _forget_indexes() -> None:
    """What a new process sees: no index cached."""
    _packs._indexes.clear()


def all_records(store: FeatureStore, set_id: str) -> list[_packs.Entry]:
    """Every record of a packed set (winners or not), straight from its segments."""
    videos = store.layout.videos(set_id)
    out = []
    for name, size in videos.fs.sizes(videos.packs).items():
        window = _packs._Window(partial(videos.fs.read_range, f"{videos.packs}/{name}"), size)
        entries, _damaged, _pos, _tail = _packs.scan_segment(name, window, 0, size, keep_headers=False)
        out += entries
    return out


def record_bytes(video_id: str, data: np.ndarray, stamp: int, *, writer: int = 9) -> bytes:
    """A video record as another process would append it, with order stamp ``stamp``."""
    attrs = {
        "video_id": video_id,
        "write_id": uuid.uuid4().hex,
        "provenance": {"set": SET_PROV, "video": {"writer": writer}},
        "set_provenance_sha256": _format.json_sha256(SET_PROV),
        "data_sha256": _format.data_sha256(data),
        "written": _format.now(),
        _format.FORMAT_ATTR: _format.PACKED_FORMAT,
        "status": _format.COMPLETE,
    }
    meta, chunks, blob = _packs.encode_video(data, attrs)
    header = {"video_id": video_id, "order": [stamp, attrs["write_id"]], "meta": meta, "chunks": chunks}
    return _packs.build_record(_packs.KIND_VIDEO, header, blob)


def put_segment(store: FeatureStore, set_id: str, name: str, data: bytes) -> None:
    store.layout.fs.write_bytes(f"{store.layout.set_key(set_id)}/{_packs.PACKS}/{name}", data)


def segment_name(kind: str, pid: int) -> str:
    return f"{kind}.{pid}.{uuid.uuid4().hex[:12]}.{_packs.staging_name('x').rsplit('.', 1)[-1]}"


def dead_pid() -> int:
    """A pid that no process has (owner_alive says dead)."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def entries_under(path: Path) -> int:
    """Files and folders under ``path`` (what a shared filesystem's metadata servers hold)."""
    return sum(len(dirs) + len(files) for _root, dirs, files in os.walk(path))


# --------------------------------------------------------------------------- the API on packs


def test_round_trip(location, tmp_path):
    store, set_id = _packed(location)
    assert store.layout.videos(set_id).layout == "packed"
    assert store.feature_set_info(set_id)["layout"] == "packed"
    ids = ["a.mp4", "dir/sub/b c.mp4", "ü/zarr.json", "_x", "." + "y" * 300]
    for w, video_id in enumerate(ids):
        store.write_video(set_id, video_id, values(w, video_id, steps=5 + w), provenance=prov(w))
    assert store.video_ids(set_id) == sorted(ids)
    for w, video_id in enumerate(ids):
        np.testing.assert_array_equal(store.read_video(set_id, video_id), values(w, video_id, steps=5 + w))
        assert store.video_provenance(set_id, video_id) == {"set": SET_PROV, "video": {"writer": w}}
    got = store.read_videos(set_id, [ids[2], ids[0]])
    np.testing.assert_array_equal(got[1], values(0, ids[0], steps=5))
    # lazy reads: the graph holds no data; chunks are read when computed
    lazy = store.read_video_dask(set_id, ids[1])
    assert lazy.shape == (6, 8) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), values(1, ids[1], steps=6))

    # overwrite=False keeps the stored copy; overwrite=True replaces it (another shape too)
    store.write_video(set_id, "a.mp4", values(7, "a.mp4", steps=3), provenance=prov(7))
    np.testing.assert_array_equal(store.read_video(set_id, "a.mp4"), values(0, "a.mp4", steps=5))
    store.write_video(set_id, "a.mp4", values(7, "a.mp4", steps=300), provenance=prov(7), overwrite=True)
    np.testing.assert_array_equal(store.read_video(set_id, "a.mp4"), values(7, "a.mp4", steps=300))
    assert store.video_provenance(set_id, "a.mp4")["video"]["writer"] == 7

    assert remove(store, set_id, video_ids=[ids[3]]) == 1
    assert not store.has_video(set_id, ids[3])
    with pytest.raises(FeatureNotFoundError):
        store.read_video(set_id, ids[3])
    with pytest.raises(FeatureNotFoundError, match="nothing was removed"):
        remove(store, set_id, video_ids=[ids[3]])
    store.write_video(set_id, ids[3], values(8, ids[3]), provenance=prov(8))  # back after a removal
    np.testing.assert_array_equal(store.read_video(set_id, ids[3]), values(8, ids[3]))

    _forget_indexes()  # another process reads the same
    fresh = FeatureStore(location, create=False)
    assert fresh.video_ids(set_id) == sorted(ids)
    np.testing.assert_array_equal(fresh.read_video(set_id, "a.mp4"), values(7, "a.mp4", steps=300))
    info = fresh.feature_set_info(set_id)
    assert info["n_videos"] == 5 and info["dims"] == 8 and info["incomplete"] == 0
    assert info["total_steps"] == 300 + 6 + 7 + 12 + 9
    assert info["packs"]["bytes"] == info["bytes_on_disk"] - _meta_bytes(fresh, set_id)
    assert 0 < info["packs"]["live_bytes"] < info["packs"]["bytes"]  # the replaced and removed copies
    assert "layout: packed" in format_store_info(fresh.info())
    report = verify(fresh)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    assert report.n_videos == {set_id: 5}

    # statistics (and their cache), the training view, HDF5 out and back into a packed store
    mean, std = feature_stats(fresh, set_id)
    rows = np.concatenate([fresh.read_video(set_id, v) for v in sorted(ids)]).astype(np.float64)
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, rows.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(feature_stats(fresh, set_id)[0], mean)
    ds = FeatureDataset(fresh, [set_id], ["a.mp4", ids[1]])
    assert ds.shapes(0) == [(300, 8)]
    np.testing.assert_array_equal(ds[1][0], values(1, ids[1], steps=6))
    export_hdf5(fresh, tmp_path / "out.h5")
    other, _ = _packed(str(tmp_path / "other"))
    counts = import_hdf5(other, tmp_path / "out.h5")
    assert counts.n_written == 5 and other.feature_set_info(set_id)["layout"] == "packed"
    for video_id in ids:
        np.testing.assert_array_equal(other.read_video(set_id, video_id), fresh.read_video(set_id, video_id))
        assert other.video_provenance(set_id, video_id) == fresh.video_provenance(set_id, video_id)


def _meta_bytes(store: FeatureStore, set_id: str) -> int:
    """Bytes of a set's files outside ``_packs`` (its group metadata, statistics)."""
    files = store.layout.fs.files(store.layout.set_key(set_id))
    return sum(int(f.get("size") or 0) for k, f in files.items() if not k.startswith(_packs.PACKS + "/"))


def test_float16_and_multi_chunk_videos(location, monkeypatch):
    monkeypatch.setattr(_format, "MAX_CHUNK_STEPS", 4)  # several chunks per video, a ragged edge
    store, set_id = _packed(location, dtype="float16")
    x = values(0, "v", steps=11)
    store.write_video(set_id, "v", x, provenance=prov())
    got = store.read_video(set_id, "v")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    meta = store.layout.complete_meta(set_id, "v")
    assert meta["data_type"] == "float16" and meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 8]
    np.testing.assert_array_equal(store.read_video_dask(set_id, "v").compute(), got)
    np.testing.assert_array_equal(store.layout.open_video(set_id, "v")[...], got.astype(np.float16))
    with pytest.raises(InvalidFeaturesError, match="float16"):
        store.write_video(set_id, "w", np.full((2, 8), 1e6), provenance=prov())
    assert not store.has_video(set_id, "w")
    monkeypatch.setattr(_format, "MAX_CHUNK_BYTES", 16)  # rows wider than a chunk: dims split too
    wide = store.ensure_feature_set(spec={"name": "wide", "dims": 8}, sampling=SAMPLING)
    store.write_video(wide, "v", x, provenance=prov())
    assert store.layout.complete_meta(wide, "v")["chunk_grid"]["configuration"]["chunk_shape"] == [1, 4]
    np.testing.assert_array_equal(store.read_video(wide, "v"), x)
    np.testing.assert_array_equal(store.read_video_dask(wide, "v").compute(), x)


def test_records_are_zarr_arrays(tmp_path):
    """A record holds a video's Zarr v3 metadata and chunks, byte for byte what zarr writes
    for the same array in the "nodes" layout."""
    store, set_id = _packed(str(tmp_path / "s"))
    nodes = FeatureStore(tmp_path / "n")
    node_set = nodes.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    x = values(3, "v", steps=300)  # two chunks, the second one padded
    store.write_video(set_id, "v", x, provenance=prov())
    nodes.write_video(node_set, "v", x, provenance=prov())
    packed_meta = store.layout.complete_meta(set_id, "v")
    node_meta = nodes.layout.complete_meta(node_set, "v")
    for key in ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs"):
        assert packed_meta[key] == node_meta[key], key
    (entry,) = all_records(store, set_id)
    videos = store.layout.videos(set_id)
    header = json.loads(videos.fs.read_range(f"{videos.packs}/{entry.segment}", 20, entry.header_len))
    data_start = 20 + entry.header_len
    for key, offset, length in header["chunks"]:
        chunk = videos.fs.read_range(f"{videos.packs}/{entry.segment}", data_start + offset, length)
        assert chunk == (nodes.path / encode_node_name(node_set) / "v" / key).read_bytes(), key


# --------------------------------------------------------------------------- files and write cost


def test_few_files_and_writes_never_list_the_set(tmp_path, monkeypatch):
    store, set_id = _packed(str(tmp_path / "s"))
    set_dir = store.path / encode_node_name(set_id)
    listed = []
    monkeypatch.setattr(LocalFS, "list", lambda self, key="": listed.append(key) or [])
    monkeypatch.setattr(LocalFS, "first_entries", lambda self, key="": listed.append(key) or iter(()))
    for i in range(300):
        store.write_video(set_id, f"v{i:03d}", values(0, f"v{i:03d}", steps=2), provenance=prov())
    assert listed == []  # only _packs is looked at (one scandir of its few files)
    monkeypatch.undo()
    assert store.video_ids(set_id)[-1] == "v299"
    assert sorted(os.listdir(set_dir / "_packs")) == [n for n in os.listdir(set_dir / "_packs") if n.startswith("w.")]
    assert len(os.listdir(set_dir / "_packs")) == 1  # one segment for this writer process
    assert entries_under(store.path) / 300 < 0.05  # the "nodes" layout: 5 entries per video


def test_threads_of_one_process_share_its_segment(tmp_path):
    """Threads (Prefect's thread pool) write and read at once: one segment, every video whole."""
    from concurrent.futures import ThreadPoolExecutor

    store, set_id = _packed(str(tmp_path / "s"))

    def work(w: int) -> None:
        for i in range(25):
            video_id = f"t{w}/v{i}"
            store.write_video(set_id, video_id, values(w, video_id), provenance=prov(w))
            assert store.has_video(set_id, video_id)
            store.video_ids(set_id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    assert len(store.video_ids(set_id)) == 100
    for w in range(4):
        for i in range(25):
            np.testing.assert_array_equal(store.read_video(set_id, f"t{w}/v{i}"), values(w, f"t{w}/v{i}"))
    assert len(os.listdir(store.path / encode_node_name(set_id) / "_packs")) == 1
    assert verify(store).ok


def test_nodes_writes_do_not_list_the_set_either(tmp_path, monkeypatch):
    """The "nodes" layout's mixed-provenance check looks at the first video only."""
    store = FeatureStore(tmp_path / "s")
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    for i in range(20):
        store.write_video(set_id, f"v{i}", values(0, f"v{i}"), provenance=prov())
    set_key = encode_node_name(set_id)
    real_list = LocalFS.list

    def no_set_listing(self, key=""):
        assert key != set_key, "write_video listed the whole set"
        return real_list(self, key)

    monkeypatch.setattr(LocalFS, "list", no_set_listing)
    store.write_video(set_id, "new", values(0, "new"), provenance=prov())
    assert store.has_video(set_id, "new")


def test_default_layout_and_format(tmp_path, monkeypatch):
    plain = FeatureStore(tmp_path / "plain")
    assert plain.default_layout == "nodes"
    assert plain.layout.read_meta("")["attributes"] == {"feature_store_format": 1}
    sid = plain.ensure_feature_set(spec=SPEC, sampling=SAMPLING, layout="packed")  # one packed set
    assert plain.layout.read_meta("")["attributes"]["feature_store_format"] == 2  # older code refuses it
    assert plain.feature_set_info(sid)["layout"] == "packed"
    assert FeatureStore(tmp_path / "plain").default_layout == "nodes"
    packed = FeatureStore(tmp_path / "packed", default_layout="packed")
    assert packed.layout.read_meta("")["attributes"] == {"feature_store_format": 2, "default_layout": "packed"}
    assert FeatureStore(tmp_path / "packed", create=False).default_layout == "packed"
    assert FeatureStore(tmp_path / "packed", default_layout="nodes").default_layout == "nodes"  # this object only
    other = packed.ensure_feature_set(spec={"name": "n"}, sampling=SAMPLING, layout="nodes")
    assert packed.feature_set_info(other)["layout"] == "nodes"
    with pytest.raises(InvalidMetadataError, match="layout"):
        packed.ensure_feature_set(spec={"name": "z"}, sampling=SAMPLING, layout="zip")
    monkeypatch.setattr("feature_store.store.FORMAT_VERSION", 1)  # code that reads format 1 only
    with pytest.raises(FeatureStoreError, match="format 2"):
        FeatureStore(tmp_path / "packed", create=False)


# --------------------------------------------------------------------------- order, removal, compaction


def test_the_newest_record_wins_wherever_it_is(location):
    """Records of one video in several segments: the greatest (stamp, write id) wins for every
    reader, whatever the segments' names or the order they were written in; compaction keeps
    exactly the winners."""
    store, set_id = _packed(location)
    store.write_video(set_id, "v", values(0, "v"), provenance=prov(0))
    stamp = max(e.order[0] for e in all_records(store, set_id))
    # another writer's record, written after ours but stamped before it (a slower clock)
    put_segment(store, set_id, segment_name("p", 1), record_bytes("v", values(1, "v"), stamp - 5, writer=1))
    np.testing.assert_array_equal(store.read_video(set_id, "v"), values(0, "v"))
    # and a newer one, in a segment whose name sorts first
    put_segment(store, set_id, "c.1.000000000000.a", record_bytes("v", values(2, "v"), stamp + 5, writer=2))
    np.testing.assert_array_equal(store.read_video(set_id, "v"), values(2, "v"))
    _forget_indexes()
    fresh = FeatureStore(location, create=False)
    assert fresh.video_provenance(set_id, "v")["video"]["writer"] == 2
    winner = max(all_records(store, set_id), key=lambda e: e.key)
    assert winner.segment == "c.1.000000000000.a"
    replaced, written, freed = store.layout.videos(set_id).compact(min_age_s=0)
    assert replaced >= 2 and written == 1 and freed > 0
    # (a local store's own writer segment is live: left alone, its superseded record too)
    (kept,) = [e for e in all_records(store, set_id) if not e.segment.startswith("w.")]
    assert kept.order == winner.order
    np.testing.assert_array_equal(store.read_video(set_id, "v"), values(2, "v"))
    assert verify(store).ok


def test_removals_survive_compaction(tmp_path):
    """A removal hides older records; compaction drops it only once no older record of the
    video is left in a segment that is not compacted (a live writer's)."""
    store, set_id = _packed(str(tmp_path / "s"))
    packs_dir = store.path / encode_node_name(set_id) / "_packs"
    live = segment_name("w", os.getpid())  # a live writer's segment: never compacted
    (packs_dir).mkdir(exist_ok=True)
    (packs_dir / live).write_bytes(record_bytes("v", values(1, "v"), 100))
    removal = {"video_id": "v", "order": [200, "r"]}
    sealed = segment_name("c", os.getpid())
    (packs_dir / sealed).write_bytes(
        _packs.build_record(_packs.KIND_REMOVED, removal) + record_bytes("w", values(1, "w"), 150)
    )
    assert store.video_ids(set_id) == ["w"]
    videos = store.layout.videos(set_id)
    assert videos.compact(min_age_s=0)[0] == 0  # one sealed segment, nothing to drop
    (packs_dir / segment_name("c", os.getpid())).write_bytes(record_bytes("x", values(1, "x"), 160))
    assert videos.compact(min_age_s=0)[:2] == (2, 1)
    assert store.video_ids(set_id) == ["w", "x"]  # the removal was kept: v is still removed
    assert {(e.video_id, e.removed) for e in all_records(store, set_id)} == {
        ("v", False),
        ("v", True),
        ("w", False),
        ("x", False),
    }
    (packs_dir / live).rename(packs_dir / segment_name("w", dead_pid()))  # its writer died
    videos.compact(min_age_s=0)
    assert store.video_ids(set_id) == ["w", "x"]
    assert {(e.video_id, e.removed) for e in all_records(store, set_id)} == {("w", False), ("x", False)}


# --------------------------------------------------------------------------- damage and leftovers


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_tampered_records_are_detected(kind, tmp_path):
    location = str(tmp_path / "s") if kind == "local" else f"memory://vqa-tests/tamper-{next(_COUNTER)}"
    store, set_id = _packed(location)
    for video_id in ("a", "b", "c"):
        store.write_video(set_id, video_id, values(0, video_id, steps=40), provenance=prov())
    videos = store.layout.videos(set_id)
    records = {e.video_id: e for e in all_records(store, set_id)}

    def flip(entry: _packs.Entry, offset: int) -> None:
        key = f"{videos.packs}/{entry.segment}"
        raw = bytearray(videos.fs.read_bytes(key))
        raw[offset] ^= 0x5A
        videos.fs.write_bytes(key, bytes(raw))

    b, c = records["b"], records["c"]
    flip(b, b.offset + 20 + b.header_len + b.data_len // 2)  # data: its checksum catches it
    flip(c, c.offset + 20 + c.header_len // 2)  # header: its crc catches it
    _forget_indexes()
    with pytest.raises(InvalidMetadataError, match="'b'.*damaged"):
        store.read_video(set_id, "b")
    assert not store.has_video(set_id, "c")  # a damaged header is no video
    np.testing.assert_array_equal(store.read_video(set_id, "a"), values(0, "a", steps=40))
    report = verify(store)
    assert not report.ok
    assert any(p.startswith(f"{set_id} / b: ") for p in report.problems), report.problems
    assert any("damaged record" in p and "checksum" in p for p in report.problems), report.problems
    with pytest.raises(InvalidFeaturesError):
        feature_stats(store, set_id)
    store.write_video(set_id, "b", values(1, "b"), provenance=prov(1), overwrite=True)  # the repair
    store.write_video(set_id, "c", values(1, "c"), provenance=prov(1))
    problems = verify(store).problems
    assert problems and all("damaged record" in p for p in problems)  # the old bytes stay until compaction


def test_torn_records_are_invisible_and_cleaned(tmp_path):
    """A record cut short (a writer killed mid-append) is not a video; verify lists it as a
    leftover of a dead writer or as in flight for a live one; remove_incomplete cuts it off."""
    store, set_id = _packed(str(tmp_path / "s"))
    store.write_video(set_id, "whole", values(0, "whole"), provenance=prov())
    packs_dir = store.path / encode_node_name(set_id) / "_packs"
    full = record_bytes("torn", values(1, "torn"), 10**18)
    dead = segment_name("w", dead_pid())
    (packs_dir / dead).write_bytes(record_bytes("ok", values(1, "ok"), 10**18) + full[: len(full) // 2])
    live = segment_name("w", os.getpid())
    (packs_dir / live).write_bytes(full[:7])
    assert store.video_ids(set_id) == ["ok", "whole"]
    report = verify(store)
    assert report.ok, str(report)
    assert len(report.leftovers) == 1 and report.leftovers[0].startswith(f"{encode_node_name(set_id)}/_packs/{dead}")
    assert len(report.in_flight) == 1 and live in report.in_flight[0]
    assert store.feature_set_info(set_id)["incomplete"] == 2
    assert store.remove_incomplete() == 1
    assert (packs_dir / dead).stat().st_size == len(record_bytes("ok", values(1, "ok"), 10**18))
    assert (packs_dir / live).stat().st_size == 7  # a live writer's: kept
    assert verify(store).leftovers == []
    np.testing.assert_array_equal(store.read_video(set_id, "ok"), values(1, "ok"))


def test_failed_append_is_cut_back(tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves nothing: the segment is cut back and
    the writer moves on to a new one."""
    store, set_id = _packed(str(tmp_path / "s"))
    store.write_video(set_id, "a", values(0, "a"), provenance=prov())
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space"):
        store.write_video(set_id, "b", values(0, "b"), provenance=prov())
    monkeypatch.undo()
    assert store.video_ids(set_id) == ["a"]
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    store.write_video(set_id, "b", values(0, "b"), provenance=prov())
    assert len(os.listdir(store.path / encode_node_name(set_id) / "_packs")) == 2
    np.testing.assert_array_equal(store.read_video(set_id, "b"), values(0, "b"))


def test_index_follows_other_writers_and_compaction(location):
    """A reader's index picks up records appended by others and rebuilds itself when the
    segments it read from were compacted away (a read in the middle of that retries)."""
    store, set_id = _packed(location)
    assert not store.has_video(set_id, "late")
    put_segment(store, set_id, segment_name("p", 1), record_bytes("late", values(1, "late"), 5))
    assert store.has_video(set_id, "late")  # no reopening needed
    for i in range(3):
        put_segment(store, set_id, segment_name("p", 1), record_bytes(f"v{i}", values(1, f"v{i}"), 10 + i))
    videos = store.layout.videos(set_id)
    index = videos.refresh()
    before = dict(index.segments)
    # another process compacts: same records in one new segment, the old ones deleted
    merged = b"".join(
        videos.fs.read_range(f"{videos.packs}/{e.segment}", e.offset, e.size)
        for e in sorted(index.winners.values(), key=lambda e: e.video_id)
    )
    put_segment(store, set_id, segment_name("c", 1), merged)
    videos.fs.delete_many([f"{videos.packs}/{n}" for n in before])
    np.testing.assert_array_equal(store.read_video(set_id, "v2"), values(1, "v2"))
    assert store.video_ids(set_id) == ["late", "v0", "v1", "v2"]
    assert len(videos.refresh().segments) == 1


# --------------------------------------------------------------------------- migration


def _nodes_store(location: str) -> tuple[FeatureStore, str, str]:
    """A "nodes" store: a float32 set (one video replaced, one removed, statistics cached,
    one unfinished node) and a float16 set."""
    store = FeatureStore(location)
    sid = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    half = store.ensure_feature_set(spec={"name": "half", "dims": 8}, sampling=SAMPLING, dtype="float16")
    for i in range(6):
        store.write_video(sid, f"dir/v{i}.mp4", values(i, f"v{i}", steps=3 + 100 * i), provenance=prov(i))
        store.write_video(half, f"h{i}", values(i, f"h{i}"), provenance=prov(i))
    store.write_video(sid, "dir/v1.mp4", values(9, "v1"), provenance=prov(9), overwrite=True)
    remove(store, sid, video_ids=["dir/v2.mp4"])
    feature_stats(store, sid)
    marker = {"video_id": "unfinished", "status": _format.WRITING, "write_id": "x"}
    store.layout.commit.write_array(
        store.layout.video_key(sid, "unfinished"),
        _format_draft(values(0, "u"), marker),
        overwrite=False,
    )
    return store, sid, half


def _format_draft(data: np.ndarray, marker: dict):
    from feature_store._commit import ArrayDraft

    return ArrayDraft(data, chunks=data.shape, dimension_names=("step", "dim"), attributes=marker, marker=marker)


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_migrate_converts_nodes_sets_in_place(kind, tmp_path, monkeypatch):
    location = str(tmp_path / "s") if kind == "local" else f"memory://vqa-tests/migrate-{next(_COUNTER)}"
    store, sid, half = _nodes_store(location)
    before = {
        s: {v: (store.read_video(s, v), store.layout.complete_meta(s, v)["attributes"]) for v in store.video_ids(s)}
        for s in (sid, half)
    }
    stats = feature_stats(store, sid)
    entries_before = entries_under(store.path) if kind == "local" else None

    report = migrate(store)
    assert report.converted == {sid: 5, half: 6}
    assert "2 feature set(s)" in str(report)
    _forget_indexes()
    store = FeatureStore(location, create=False)
    assert store.default_layout == "packed"
    assert store.layout.read_meta("")["attributes"]["feature_store_format"] == 2
    for s in (sid, half):
        info = store.feature_set_info(s)
        assert info["layout"] == "packed" and info["incomplete"] == 0
        assert store.video_ids(s) == sorted(before[s])
        for v, (data, attrs) in before[s].items():
            np.testing.assert_array_equal(store.read_video(s, v), data)
            assert store.layout.complete_meta(s, v)["attributes"] == attrs  # provenance, write_id, checksum
    report = verify(store)
    assert report.ok, str(report)
    # an unfinished node is no video: migrate leaves it to clean (URL: its writer is unknown)
    assert report.leftovers + report.in_flight == [f"{encode_node_name(sid)}/unfinished"]
    assert store.remove_incomplete(min_age_s=0) == 1
    report = verify(store)
    assert report.leftovers == report.in_flight == []
    monkeypatch.setattr(_packs.PackedVideos, "row_blocks", None)  # the cache must answer: no video read
    np.testing.assert_array_equal(feature_stats(store, sid)[1], stats[1])
    monkeypatch.undo()
    new = store.ensure_feature_set(spec={"name": "new"}, sampling=SAMPLING)
    assert store.feature_set_info(new)["layout"] == "packed"
    if kind == "local":
        # nodes: 5 entries per video (11 videos); packed: a few per set
        assert entries_under(store.path) < entries_before - 40
        assert not list((store.path / encode_node_name(sid)).glob("dir%2F*"))
    assert migrate(store).converted == {}  # again: nothing to convert


def test_killed_migration_is_finished_by_running_it_again(tmp_path, monkeypatch):
    store, sid, _half = _nodes_store(str(tmp_path / "s"))
    expected = {v: store.read_video(sid, v) for v in store.video_ids(sid)}

    # killed before the commit point: the set is as it was (its new segment is never read)
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreLayout, "write_set_attrs", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(store, set_ids=[sid])
    monkeypatch.undo()
    assert store.feature_set_info(sid)["layout"] == "nodes"
    assert (store.path / encode_node_name(sid) / "_packs").is_dir()
    assert {v: store.read_video(sid, v) for v in store.video_ids(sid)}.keys() == expected.keys()
    assert verify(store, set_ids=[sid]).ok

    # killed while removing the copied nodes: the set is packed, the nodes left are copies
    real_remove = NodeVideos.remove
    calls = []

    def remove_one_then_die(self, video_id):
        calls.append(video_id)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_remove(self, video_id)

    monkeypatch.setattr(NodeVideos, "remove", remove_one_then_die)
    with pytest.raises(KeyboardInterrupt):
        migrate(store, set_ids=[sid])
    monkeypatch.undo()
    assert store.feature_set_info(sid)["layout"] == "packed"
    for v, data in expected.items():
        np.testing.assert_array_equal(store.read_video(sid, v), data)
    report = verify(store, set_ids=[sid])
    assert report.ok and len(report.leftovers) >= 3, str(report)  # copies left behind
    assert len(os.listdir(store.path / encode_node_name(sid) / "_packs")) == 1  # the first try's is gone
    assert store.remove_incomplete() >= 4  # the copies and the unfinished node
    report = verify(store, set_ids=[sid])
    assert report.ok and report.leftovers == [], str(report)
    assert migrate(store, set_ids=[sid]).converted == {}
    assert [p.name for p in (store.path / encode_node_name(sid)).iterdir() if not p.name.startswith("_")] == [
        "zarr.json"
    ]


def test_migrate_refuses_a_damaged_set_and_changes_nothing(tmp_path):
    store, sid, half = _nodes_store(str(tmp_path / "s"))
    chunk = store.path / encode_node_name(sid) / encode_node_name("dir/v3.mp4") / "c" / "0" / "0"
    chunk.unlink()
    with pytest.raises(InvalidFeaturesError, match=r"dir/v3\.mp4.*chunk c/0/0 is missing"):
        migrate(store, set_ids=[sid])
    assert store.feature_set_info(sid)["layout"] == "nodes"
    assert not (store.path / encode_node_name(sid) / "_packs").exists()
    assert [p.name for p in (store.path / encode_node_name(sid) / "_staging").iterdir()] == ["zarr.json"]
    assert store.has_video(sid, "dir/v4.mp4")


def test_a_node_written_during_the_migration_is_taken_in(tmp_path):
    """A writer that still wrote the old layout after the switch left a node in the packed
    set: verify says so, and the next migrate takes it in."""
    store, sid, _half = _nodes_store(str(tmp_path / "s"))
    migrate(store, set_ids=[sid])
    late = NodeVideos(store.layout, sid)
    attrs = {
        "video_id": "late",
        "write_id": uuid.uuid4().hex,
        "provenance": prov(5),
        "set_provenance_sha256": _format.json_sha256(SET_PROV),
        "data_sha256": _format.data_sha256(values(5, "late")),
        "written": _format.now(),
        _format.FORMAT_ATTR: 1,
        "status": _format.COMPLETE,
    }
    late.write("late", values(5, "late"), attrs, overwrite=False)
    assert not store.has_video(sid, "late")
    report = verify(store, set_ids=[sid])
    assert not report.ok and any("migrate" in p for p in report.problems), str(report)
    assert migrate(store, set_ids=[sid]).converted == {sid: 1}
    np.testing.assert_array_equal(store.read_video(sid, "late"), values(5, "late"))
    assert verify(store, set_ids=[sid]).ok


def test_cli_migrate_and_info(tmp_path, capsys):
    store, sid, _half = _nodes_store(str(tmp_path / "s"))
    assert vqa(["store", "migrate", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert f"{sid}: 5 video(s) moved into packs" in out and "new feature sets are packed" in out
    assert vqa(["store", "info", str(store.path)]) == 0
    assert "layout: packed, 1 segment file(s)" in capsys.readouterr().out
    assert vqa(["store", "migrate", str(tmp_path / "absent")]) == 2  # a typo creates nothing
    assert "no feature store" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()
    assert vqa(["store", "migrate", str(tmp_path / "fresh"), "--create"]) == 0
    assert FeatureStore(tmp_path / "fresh", create=False).default_layout == "packed"
