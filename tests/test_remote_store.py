"""Stores under fsspec URLs (GitHub issue 5, "Remote stores"): the object-store protocol
(marker, chunks, completing zarr.json last) on ``memory://`` and on ``file://`` with several
processes, killed writers, racing writers, checksums, maintenance and the CLI/flows."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import pickle
import signal
import time
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
    _naming,
    export_hdf5,
    feature_stats,
    format_store_info,
    import_hdf5,
    remove,
    verify,
)
from feature_store import _fs as fs_mod
from feature_store._commit import PutCommit
from flows.cli import main as vqa
from tests.helpers import writer_values

SPEC = {"name": "remote", "dims": 8}
SAMPLING = {"strategy": "all"}
SET_PROV = {"code": "1"}
CTX = mp.get_context("spawn")


def values(writer: int, video: str, steps: int = 12) -> np.ndarray:
    return writer_values(writer, video, steps, SPEC["dims"])


def prov(writer: int = 0) -> dict:
    return {"set": SET_PROV, "video": {"writer": writer}}


_COUNTER = iter(range(10**6))


@pytest.fixture
def url(request) -> str:
    """A fresh ``memory://`` store URL (memory stores live as long as the process)."""
    return f"memory://vqa-tests/{request.node.name}-{next(_COUNTER)}"


@pytest.fixture
def file_url(tmp_path) -> str:
    return (tmp_path / "store").as_uri()  # file:///...


def _open(url: str) -> tuple[FeatureStore, str]:
    store = FeatureStore(url)
    return store, store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)


# --------------------------------------------------------------------------- one process


def test_memory_round_trip(url, tmp_path):
    store, set_id = _open(url)
    assert not store.is_local and store.path == store.location == url.replace("://", ":///")
    ids = ["a.mp4", "dir/b c.mp4", "ü"]
    for i, video_id in enumerate(ids):
        store.write_video(set_id, video_id, values(0, video_id, 5 + i), provenance=prov())
    assert store.feature_sets() == [set_id] and store.video_ids(set_id) == sorted(ids)
    for i, video_id in enumerate(ids):
        np.testing.assert_array_equal(store.read_video(set_id, video_id), values(0, video_id, 5 + i))
        lazy = store.read_video_dask(set_id, video_id)
        np.testing.assert_array_equal(lazy.compute(), values(0, video_id, 5 + i))
    meta = store.layout.complete_meta(set_id, "a.mp4")
    assert meta["attributes"]["data_sha256"] == _format.data_sha256(values(0, "a.mp4", 5))
    assert "writer" not in meta["attributes"]  # the marker's fields are gone once complete

    # same video again without overwrite: kept; with overwrite: replaced (other shape)
    store.write_video(set_id, "a.mp4", values(1, "a.mp4", 7), provenance=prov(1))
    np.testing.assert_array_equal(store.read_video(set_id, "a.mp4"), values(0, "a.mp4", 5))
    store.write_video(set_id, "a.mp4", values(1, "a.mp4", 300), provenance=prov(1), overwrite=True)
    np.testing.assert_array_equal(store.read_video(set_id, "a.mp4"), values(1, "a.mp4", 300))
    store.write_video(set_id, "a.mp4", values(2, "a.mp4", 3), provenance=prov(2), overwrite=True)
    np.testing.assert_array_equal(store.read_video(set_id, "a.mp4"), values(2, "a.mp4", 3))
    chunks = [k for k in store.layout.fs.files(store.layout.video_key(set_id, "a.mp4")) if k.startswith("c/")]
    assert chunks == ["c/0/0"]  # chunks of the longer earlier copy were deleted
    assert store.video_provenance(set_id, "a.mp4")["video"] == {"writer": 2}

    (info,) = store.info()
    assert (info["n_videos"], info["dims"], info["total_steps"], info["incomplete"]) == (3, 8, 3 + 6 + 7, 0)
    assert 0 < info["bytes_on_disk"] == store.layout.fs.size(store.layout.set_key(set_id))
    assert "3 video(s)" in format_store_info([info])
    report = verify(store)
    assert report.ok and report.n_videos == {set_id: 3} and not report.leftovers, str(report)

    # float16 sets, dataset + cached statistics
    f16 = store.ensure_feature_set(spec={"name": "half", "dims": 8}, sampling=SAMPLING, dtype="float16")
    store.write_video(f16, "a.mp4", values(0, "x"), provenance=prov())
    assert np.abs(store.read_video(f16, "a.mp4") - values(0, "x")).max() < 2e-3
    ds = FeatureDataset(store, [set_id], ids)
    mean, std = ds.stats(set_id)
    ref = np.concatenate([store.read_video(set_id, v) for v in sorted(ids)]).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-12)
    assert store.layout.fs.is_file(f"{store.layout.set_key(set_id)}/_stats/zarr.json")
    cached_store = FeatureStore(url, create=False)
    cached_store.layout.open_video = None  # any video read would fail: the cache must answer
    m2, _ = feature_stats(cached_store, set_id)
    np.testing.assert_array_equal(m2, mean)
    assert url.split("://")[1] in repr(ds)

    # export / import round trip (into another memory store)
    counts = export_hdf5(store, tmp_path / "x.h5")
    assert counts == {f16: 1, set_id: 3}
    other = FeatureStore(url + "-copy")
    assert import_hdf5(other, tmp_path / "x.h5").n_written == 4
    for video_id in ids:
        np.testing.assert_array_equal(other.read_video(set_id, video_id), store.read_video(set_id, video_id))
    assert other.video_provenance(set_id, "a.mp4") == store.video_provenance(set_id, "a.mp4")

    # run records, pickling (same process: same memory filesystem)
    where = store.write_run_file("extract-1.json", '{"done": 3}')
    assert where == f"{store.location}/_runs/extract-1.json"
    assert store.layout.fs.read_bytes("_runs/extract-1.json") == b'{"done": 3}'
    with pytest.raises(FeatureStoreError, match="write_run_file"):
        _ = store.runs_dir
    with pytest.raises(InvalidMetadataError):
        store.write_run_file("../escape", "x")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.video_ids(set_id) == sorted(ids)
    assert verify(store).ok  # run records and statistics are not mistaken for features

    # removal: videos, then whole sets
    assert remove(store, set_id, video_ids=["a.mp4"]) == 1
    assert store.video_ids(set_id) == sorted(ids[1:])
    assert not store.layout.fs.is_dir(store.layout.video_key(set_id, "a.mp4"))
    with pytest.raises(FeatureNotFoundError):
        remove(store, set_id, video_ids=["a.mp4"])
    assert remove(store, set_id) == 2 and remove(store, f16) == 1
    assert store.feature_sets() == []
    assert {e.name for e in store.layout.fs.list("")} == {"zarr.json", "_runs", "_staging"}
    assert verify(store).ok


def test_reopen_and_refuse_foreign_locations(url):
    with pytest.raises(FeatureNotFoundError, match="no feature store"):
        FeatureStore(url, create=False)
    store, set_id = _open(url)
    assert FeatureStore(url, create=False).feature_sets() == [set_id]
    store.layout.fs.write_bytes("zarr.json", b'{"node_type": "group", "attributes": {}}')
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore(url)
    fs_mod.open_fs(url + "-foreign").write_bytes("data/x.bin", b"1")  # not a store, not empty
    with pytest.raises(FeatureStoreError, match="not empty and not a feature store"):
        FeatureStore(url + "-foreign")


def test_bad_urls_give_clear_errors(capsys):
    with pytest.raises(FeatureStoreError, match="unknown protocol 'nosuchproto'"):
        FeatureStore("nosuchproto://bucket/x")
    with pytest.raises(FeatureStoreError, match="needs a path"):
        FeatureStore("memory://")
    with pytest.raises(FeatureStoreError, match="storage_options apply to fsspec URLs"):
        FeatureStore("/tmp/local", storage_options={"anon": True})
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(FeatureStoreError, match="pip install s3fs"):
            FeatureStore("s3://bucket/features")
        assert vqa(["store", "info", "s3://bucket/features"]) == 2
        assert "pip install s3fs" in capsys.readouterr().err
    assert vqa(["store", "verify", "nosuchproto://x/y"]) == 2
    assert "unknown protocol" in capsys.readouterr().err


def test_first_access_failure_is_a_clear_error(url, monkeypatch, capsys):
    def denied(self, key):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(fs_mod.FsspecFS, "read_bytes", denied)  # like wrong S3 credentials
    with pytest.raises(FeatureStoreError, match="cannot open the feature store.*Access Denied.*credentials"):
        FeatureStore(url)
    assert vqa(["store", "info", url]) == 2
    assert "Access Denied" in capsys.readouterr().err


def test_tampered_chunk_is_detected(url, tmp_path):
    for store in (FeatureStore(url), FeatureStore(tmp_path / "local")):  # both modes checksum
        set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
        store.write_video(set_id, "v1", values(0, "v1"), provenance=prov())
        store.write_video(set_id, "v2", values(0, "v2"), provenance=prov())
        assert verify(store).ok
        # a valid chunk of the same shape, but the other video's: decodes fine, wrong data
        good = store.layout.fs.read_bytes(f"{store.layout.video_key(set_id, 'v2')}/c/0/0")
        store.layout.fs.write_bytes(f"{store.layout.video_key(set_id, 'v1')}/c/0/0", good)
        with pytest.raises(InvalidMetadataError, match="data_sha256.*re-extract it with overwrite"):
            store.read_video(set_id, "v1")
        report = verify(store)
        assert not report.ok and len(report.problems) == 1, str(report)
        assert report.problems[0].startswith(f"{set_id} / v1: ") and "data_sha256" in report.problems[0]
        assert "re-extract it with overwrite" in report.problems[0]
        with pytest.raises(InvalidFeaturesError, match="data_sha256"):
            feature_stats(store, set_id)
        store.write_video(set_id, "v1", values(0, "v1"), provenance=prov(), overwrite=True)
        np.testing.assert_array_equal(store.read_video(set_id, "v1"), values(0, "v1"))
        assert verify(store).ok


def test_videos_without_checksum_still_read(url):
    """Stores written before data_sha256 existed read as before."""
    store, set_id = _open(url)
    store.write_video(set_id, "old", values(0, "old"), provenance=prov())
    key = f"{store.layout.video_key(set_id, 'old')}/zarr.json"
    meta = json.loads(store.layout.fs.read_bytes(key))
    del meta["attributes"]["data_sha256"]
    store.layout.fs.write_bytes(key, json.dumps(meta).encode())
    np.testing.assert_array_equal(store.read_video(set_id, "old"), values(0, "old"))
    assert verify(store).ok


def test_race_with_different_data_is_repaired(url, monkeypatch):
    """Deterministic interleaving: writer B writes the whole video while writer A is between
    its chunks and its completing PUT. A notices (its marker is gone), completes, reads back,
    finds B's chunks under its checksum and rewrites: the result is A's data, consistent."""
    store, set_id = _open(url)
    real_put = PutCommit._put_incomplete
    calls = []

    def put_then_race(self, key, marker, chunks):
        real_put(self, key, marker, chunks)
        calls.append(key)
        if len(calls) == 1:  # only during A's first round
            other = FeatureStore(url)
            other.write_video(set_id, "v", values(2, "v"), provenance=prov(2))

    monkeypatch.setattr(PutCommit, "_put_incomplete", put_then_race)
    store.write_video(set_id, "v", values(1, "v"), provenance=prov(1))
    # A's first round, B's write, A's second round (after a checksum mismatch)
    assert len(calls) == 3
    np.testing.assert_array_equal(store.read_video(set_id, "v"), values(1, "v"))
    assert store.video_provenance(set_id, "v")["video"] == {"writer": 1}
    assert verify(store).ok


def test_race_with_equal_data_keeps_the_first_copy(url, monkeypatch):
    store, set_id = _open(url)
    real_put = PutCommit._put_incomplete
    calls = []

    def put_then_race(self, key, marker, chunks):
        real_put(self, key, marker, chunks)
        calls.append(key)
        if len(calls) == 1:
            FeatureStore(url).write_video(set_id, "v", values(1, "v"), provenance=prov(2))

    monkeypatch.setattr(PutCommit, "_put_incomplete", put_then_race)
    store.write_video(set_id, "v", values(1, "v"), provenance=prov(1))
    assert len(calls) == 2  # no rewrite: the data were equal
    assert store.video_provenance(set_id, "v")["video"] == {"writer": 2}  # the first complete copy
    np.testing.assert_array_equal(store.read_video(set_id, "v"), values(1, "v"))


def test_leftovers_of_other_hosts_wait_for_min_age(url):
    store, set_id = _open(url)
    store.write_video(set_id, "v", values(0, "v"), provenance=prov())
    key = f"{store.layout.video_key(set_id, 'v')}/zarr.json"
    meta = json.loads(store.layout.fs.read_bytes(key))
    meta["attributes"] = {"video_id": "v", "status": "writing", "writer": "write.12.ab.another-host"}
    store.layout.fs.write_bytes(key, json.dumps(meta).encode())
    assert not store.has_video(set_id, "v") and store.feature_set_info(set_id)["incomplete"] == 1
    report = verify(store)
    assert report.ok and report.leftovers == [] and len(report.in_flight) == 1
    assert store.remove_incomplete() == 0  # another host, written just now: may still run
    assert store.remove_incomplete(min_age_s=0) == 1
    assert not store.layout.fs.is_dir(store.layout.video_key(set_id, "v")) and verify(store).in_flight == []


def test_killed_set_removal_is_finished(url, monkeypatch):
    store, set_id = _open(url)
    store.write_video(set_id, "v", values(0, "v"), provenance=prov())

    def killed(self, key):
        raise KeyboardInterrupt  # stands for SIGKILL right after the "removing" mark

    monkeypatch.setattr(PutCommit, "_delete_group", killed)
    with pytest.raises(KeyboardInterrupt):
        remove(store, set_id)
    monkeypatch.undo()
    assert store.feature_sets() == []
    with pytest.raises(FeatureNotFoundError, match="being removed"):
        store.video_ids(set_id)
    node = store.layout.set_key(set_id)
    meta_key = f"{node}/zarr.json"
    meta = json.loads(store.layout.fs.read_bytes(meta_key))
    assert _naming.owner_alive(meta["attributes"]["remover"]) is True  # ours: still "running"
    assert store.remove_incomplete() == 0
    meta["attributes"]["remover"] = f"rm.999999999.ab.{_naming.host_tag()}"  # a dead remover
    store.layout.fs.write_bytes(meta_key, json.dumps(meta).encode())
    report = verify(store)
    assert report.ok and report.leftovers == [node], str(report)
    assert store.remove_incomplete() == 1
    assert not store.layout.fs.is_dir(node) and verify(store).leftovers == []
    assert store.ensure_feature_set(spec=SPEC, sampling=SAMPLING) == set_id  # can be made again

    # removing again also finishes a killed removal
    store.write_video(set_id, "v", values(0, "v"), provenance=prov())
    monkeypatch.setattr(PutCommit, "_delete_group", killed)
    with pytest.raises(KeyboardInterrupt):
        remove(store, set_id)
    monkeypatch.undo()
    assert store.feature_sets() == [] and store.layout.fs.is_dir(node)
    assert remove(store, set_id) == 0 and not store.layout.fs.is_dir(node)


# --------------------------------------------------------------------------- several processes


def _writer(
    url: str, writer: int, video_ids: list[str], barrier, overwrite: bool, rounds: int, data_of: int | None
) -> None:
    """Process body: wait for the others, then write ``video_ids`` ``rounds`` times."""
    store = FeatureStore(url)
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    barrier.wait(timeout=120)
    for _ in range(rounds):
        for vid in video_ids:
            data = values(writer if data_of is None else data_of, vid)
            store.write_video(set_id, vid, data, provenance=prov(writer), overwrite=overwrite)


def _run_writers(url: str, jobs: list[tuple], timeout: float = 180) -> list[int]:
    barrier = CTX.Barrier(len(jobs))
    procs = [CTX.Process(target=_writer, args=(url, job[0], job[1], barrier, *job[2:])) for job in jobs]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join()
    assert not stuck, "writers did not finish"
    return [p.exitcode for p in procs]


@pytest.mark.slow
def test_disjoint_writers_into_one_file_url(file_url):
    jobs = [(w, [f"w{w}/v{i}" for i in range(8)], False, 1, None) for w in range(3)]
    assert _run_writers(file_url, jobs) == [0, 0, 0]
    store = FeatureStore(file_url, create=False)
    (set_id,) = store.feature_sets()
    assert len(store.video_ids(set_id)) == 24
    for w in range(3):
        for i in range(8):
            np.testing.assert_array_equal(store.read_video(set_id, f"w{w}/v{i}"), values(w, f"w{w}/v{i}"))
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    assert store.feature_set_info(set_id)["incomplete"] == 0
    staging = Path(store.layout.fs.root) / "_staging"
    assert [p.name for p in staging.iterdir()] == ["zarr.json"]  # no temporary files left
    # the same layout as a local store: the folder opened as a plain path reads the same
    local = FeatureStore(Path(store.layout.fs.root), create=False)
    assert local.is_local and local.video_ids(set_id) == store.video_ids(set_id)
    assert verify(local).ok, str(verify(local))


@pytest.mark.slow
def test_two_processes_racing_on_the_same_videos(file_url):
    """Two runs of the same extraction on the same videos (equal data), both overwriting in a
    loop: every video ends complete, consistent with its checksum."""
    videos = [f"v{i}" for i in range(4)]
    jobs = [(w, videos, True, 4, 0) for w in range(2)]
    assert _run_writers(file_url, jobs) == [0, 0]
    store = FeatureStore(file_url, create=False)
    (set_id,) = store.feature_sets()
    assert store.video_ids(set_id) == videos
    for video_id in videos:
        np.testing.assert_array_equal(store.read_video(set_id, video_id), values(0, video_id))
        meta = store.layout.complete_meta(set_id, video_id)
        assert meta["attributes"]["data_sha256"] == _format.data_sha256(values(0, video_id))
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)


def _killed_writer(url: str, video_id: str, overwrite: bool) -> None:
    """Write ``video_id`` but SIGKILL this process right before the completing PUT (after
    every chunk is written)."""
    real = fs_mod.FsspecFS.write_bytes

    def write_bytes(self, key, data):
        if key.endswith("/zarr.json") and json.loads(data).get("attributes", {}).get("status") == "complete":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, key, data)

    fs_mod.FsspecFS.write_bytes = write_bytes
    store = FeatureStore(url)
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    store.write_video(set_id, video_id, values(9, video_id, 300), provenance=prov(9), overwrite=overwrite)


def _kill_during_write(url: str, video_id: str, overwrite: bool) -> None:
    proc = CTX.Process(target=_killed_writer, args=(url, video_id, overwrite))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL


@pytest.mark.slow
def test_writer_killed_before_the_completing_put(file_url):
    store, set_id = _open(file_url)
    store.write_video(set_id, "kept", values(0, "kept"), provenance=prov())
    _kill_during_write(file_url, "new", False)  # a new video
    _kill_during_write(file_url, "kept", True)  # an overwrite: not atomic in object stores
    node = store.layout.set_key(set_id)
    assert store.video_ids(set_id) == [] and not store.has_video(set_id, "new")
    with pytest.raises(FeatureNotFoundError):
        store.read_video(set_id, "kept")
    assert store.feature_set_info(set_id)["incomplete"] == 2
    new_files = store.layout.fs.files(store.layout.video_key(set_id, "new"))
    assert sum(k.startswith("c/") for k in new_files) == 2  # all chunks were there (300 steps)
    report = verify(store)
    assert report.ok and sorted(report.leftovers) == [f"{node}/kept", f"{node}/new"], str(report)
    assert report.in_flight == [] and "leftovers of killed runs (2" in str(report)

    # re-extraction over the leftover works without cleaning first ...
    store.write_video(set_id, "new", values(0, "new"), provenance=prov())
    np.testing.assert_array_equal(store.read_video(set_id, "new"), values(0, "new"))
    assert sum(k.startswith("c/") for k in store.layout.fs.files(store.layout.video_key(set_id, "new"))) == 1
    # ... and remove_incomplete deletes the other leftover (its writer is dead)
    assert store.remove_incomplete() == 1
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.n_videos == {set_id: 1}, str(report)
    store.write_video(set_id, "kept", values(0, "kept"), provenance=prov())
    np.testing.assert_array_equal(store.read_video(set_id, "kept"), values(0, "kept"))


# --------------------------------------------------------------------------- CLI and flows


@pytest.mark.slow
def test_cli_store_commands_and_fit_accept_urls(url, tmp_path, capsys):
    store, set_id = _open(url)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        mos = float(i % 5) + 1.0
        store.write_video(set_id, f"v{i}", rng.standard_normal((4, 8)).astype(np.float32) + mos, provenance=prov())
        rows.append([f"v{i}", f"v{i}.mp4", mos])
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["video_id", "path", "mos"], *rows])

    assert vqa(["store", "info", url]) == 0
    assert set_id in capsys.readouterr().out
    assert vqa(["store", "verify", url]) == 0
    assert vqa(["store", "export", url, "--out", str(tmp_path / "e.h5")]) == 0
    assert (tmp_path / "e.h5").is_file()
    assert (
        vqa(
            [
                "fit",
                "--store",
                url,
                "--manifest",
                str(manifest),
                "--features",
                "remote",
                "--out",
                str(tmp_path / "fit"),
                "--repeats",
                "1",
                "-q",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "fit" / "metrics.json").read_text())["srcc"] > 0.5
    assert vqa(["store", "rm", url, "remote", "--video", "v0", "--yes"]) == 0
    assert len(store.video_ids(set_id)) == 19
    capsys.readouterr()


def test_extract_flows_into_a_file_url(tmp_path, prefect_harness, capsys):
    from .helpers import make_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rows = [f"v{i},{make_video(videos / f'v{i}.mp4', 4, width=64, height=48)}" for i in range(2)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video_id,path\n" + "\n".join(rows) + "\n")
    url = (tmp_path / "store").as_uri()
    options = [
        "--store",
        url,
        "--extractor",
        "resnet50-vsfa",
        "--weights",
        "random",
        "--sampling",
        "uniform:2",
        "--device",
        "cpu",
        "-q",
    ]
    assert vqa(["extract", str(manifest), *options]) == 0
    assert "done 2" in capsys.readouterr().out
    store = FeatureStore(url, create=False)
    (set_id,) = store.feature_sets()
    assert store.video_ids(set_id) == ["v0", "v1"]
    assert store.read_video(set_id, "v1").shape == (2, 4096)
    runs = tmp_path / "store" / "_runs"
    records = sorted(runs.glob("extract-*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["done"] == 2
    assert vqa(["store", "verify", url]) == 0
    assert vqa(["extract", str(manifest), *options]) == 0  # resumable: everything is skipped
    assert "skipped 2" in capsys.readouterr().out

    # the folder job: its manifest is read from a local file and copied into the store
    assert vqa(["extract-folder", str(videos), *options]) == 0
    assert "done 2  skipped 0  failed 0" in capsys.readouterr().out
    assert store.video_ids(set_id) == ["v0", "v0.mp4", "v1", "v1.mp4"]
    (copy,) = runs.glob("extract-folder-*.csv")
    assert copy.read_text().splitlines()[0] == "video_id,path" and len(copy.read_text().splitlines()) == 3
    assert len(list(runs.glob("extract-*.json"))) == 3
