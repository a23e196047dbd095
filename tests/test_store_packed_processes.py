"""The packed layout with several processes (GitHub issue 17): writers SIGKILLed mid-record
and at random moments, writers racing on the same videos (the newest record wins for every
reader), and compaction while writers and readers run, on a local directory and ``file://``."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store import FeatureStore, _packs, encode_node_name, migrate, verify
from tests.helpers import writer_values
from tests.test_store_packed import all_records

SPEC = {"name": "packed-procs", "dims": 16}
SAMPLING = {"strategy": "all"}
SET_PROV = {"code": "1"}
CTX = mp.get_context("spawn")


def values(writer: int, video: str) -> np.ndarray:
    return writer_values(writer, video, 10 + len(video) * 3, SPEC["dims"])


def _writer(
    location: str, writer: int, ids: list[str], overwrite: bool, loop: bool, flags: str, half_at: int | None
) -> None:
    """Process body: write ``ids`` (forever if ``loop``). With ``half_at``, the record of
    that write is appended half, then the process waits to be killed."""
    store = FeatureStore(location, default_layout="packed")
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    if half_at is not None:
        real_write_all = _packs._write_all
        count = [0]

        def write_all(fd, data):
            count[0] += 1
            if count[0] == half_at:
                real_write_all(fd, data[: len(data) // 2])
                Path(flags, "half").touch()
                time.sleep(600)
            real_write_all(fd, data)

        _packs._write_all = write_all
    Path(flags, f"started-{writer}").touch()
    while True:
        for video_id in ids:
            store.write_video(
                set_id,
                video_id,
                values(writer, video_id),
                provenance={"set": SET_PROV, "video": {"writer": writer}},
                overwrite=overwrite,
            )
        if not loop:
            return


def _start(location: str, flags: Path, jobs: list[tuple], half_at: int | None = None) -> list:
    flags.mkdir(exist_ok=True)
    procs = [
        CTX.Process(target=_writer, args=(location, w, ids, overwrite, loop, str(flags), half_at), daemon=True)
        for w, ids, overwrite, loop in jobs
    ]
    for p in procs:
        p.start()
    return procs


def _wait_for(path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def _join(procs: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join()
    assert not stuck, "writers did not finish"


def _kill(proc) -> None:
    proc.kill()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def _fresh(location: str) -> tuple[FeatureStore, str]:
    """The store as a new process sees it (no cached index)."""
    _packs._indexes.clear()
    store = FeatureStore(location, create=False)
    (set_id,) = store.feature_sets()
    return store, set_id


def _assert_sound(store: FeatureStore, set_id: str) -> dict[str, int]:
    """Every stored video equals the values of the writer its provenance names; return them."""
    writers = {}
    for video_id in store.video_ids(set_id):
        writer = store.video_provenance(set_id, video_id)["video"]["writer"]
        np.testing.assert_array_equal(store.read_video(set_id, video_id), values(writer, video_id))
        writers[video_id] = writer
    return writers


@pytest.mark.slow
def test_writer_killed_mid_record_leaves_nothing_half_visible(tmp_path):
    """SIGKILL while a record is half appended: the videos before it are stored, the torn
    one is not; verify is ok and lists the torn record; a re-run stores exactly the missing
    videos; clean cuts the torn bytes off."""
    location, flags = str(tmp_path / "store"), tmp_path / "flags"
    ids = [f"v{i}" for i in range(10)]
    (proc,) = _start(location, flags, [(0, ids, False, False)], half_at=6)
    try:
        _wait_for(flags / "half")
    finally:
        _kill(proc)
    store, set_id = _fresh(location)
    assert store.video_ids(set_id) == ids[:5]
    assert _assert_sound(store, set_id) == {v: 0 for v in ids[:5]}
    report = verify(store)
    assert report.ok and report.in_flight == [], str(report)
    (leftover,) = report.leftovers
    assert leftover.startswith(f"{encode_node_name(set_id)}/_packs/w.{proc.pid}.") and "torn record" in leftover
    assert store.feature_set_info(set_id)["incomplete"] == 1

    (rerun,) = _start(location, flags, [(0, ids, False, False)])
    _join([rerun])
    assert rerun.exitcode == 0
    store, set_id = _fresh(location)
    assert store.video_ids(set_id) == ids
    assert _assert_sound(store, set_id) == {v: 0 for v in ids}
    assert len(all_records(store, set_id)) == 10  # the first five were not written again
    assert store.remove_incomplete() == 1
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    assert store.feature_set_info(set_id)["incomplete"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "file"])
def test_writers_killed_at_random_moments(kind, tmp_path):
    """Writers replacing their videos in a loop are SIGKILLed at random moments: every video
    a reader finds is whole and checks out; cleaning leaves a sound store."""
    location = str(tmp_path / "store") if kind == "local" else (tmp_path / "store").as_uri()
    rng = random.Random(17)
    for round_ in range(3):
        flags = tmp_path / f"flags{round_}"
        jobs = [(w, [f"w{w}/v{i:02d}" for i in range(8)], True, True) for w in range(2)]
        procs = _start(location, flags, jobs)
        try:
            for w in range(2):
                _wait_for(flags / f"started-{w}")
            time.sleep(rng.uniform(0.3, 1.5))
        finally:
            for p in procs:
                _kill(p)
        store, set_id = _fresh(location)
        writers = _assert_sound(store, set_id)
        assert all(v.startswith(f"w{w}/") for v, w in writers.items())
        report = verify(store)
        assert report.ok and report.in_flight == [], str(report)
    assert store.remove_incomplete() == len(report.leftovers)
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "file"])
def test_racing_writers_the_newest_record_wins(kind, tmp_path):
    """Three writers store different values under the same ids at the same time: each video
    reads as the record with the greatest (stamp, write id), with that writer's provenance,
    for every reader."""
    location = str(tmp_path / "store") if kind == "local" else (tmp_path / "store").as_uri()
    ids = [f"v{i:02d}" for i in range(18)]
    jobs = [(0, ids[:12], True, False), (1, ids[6:][::-1], True, False), (2, ids, True, False)]
    procs = _start(location, tmp_path / "flags", jobs)
    _join(procs)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    store, set_id = _fresh(location)
    assert store.video_ids(set_id) == ids
    writers = _assert_sound(store, set_id)
    records = all_records(store, set_id)
    assert len(records) == 12 + 12 + 18
    videos = store.layout.videos(set_id)
    for video_id in ids:
        newest = max((e for e in records if e.video_id == video_id), key=lambda e: e.key)
        raw = videos.fs.read_range(f"{videos.packs}/{newest.segment}", newest.offset + 20, newest.header_len)
        assert json.loads(raw)["meta"]["attributes"]["provenance"]["video"]["writer"] == writers[video_id]
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    if kind == "local":
        assert len(os.listdir(Path(location) / encode_node_name(set_id) / "_packs")) == 3  # one per writer
    migrate(store)  # compacts: the writers are gone
    assert all_records(store, set_id) and len(all_records(store, set_id)) == 18
    assert _assert_sound(*_fresh(location)) == writers


@pytest.mark.slow
def test_compaction_while_writers_and_readers_run(tmp_path):
    """file://: every write is its own object, so compaction has work while writers keep
    adding records and readers keep reading; nobody fails and nothing is lost."""
    location = (tmp_path / "store").as_uri()
    flags = tmp_path / "flags"
    jobs = [(w, [f"v{i:02d}" for i in range(6)] + [f"w{w}/{i}" for i in range(4)], True, True) for w in range(2)]
    procs = _start(location, flags, jobs)
    for w in range(2):
        _wait_for(flags / f"started-{w}")
    try:
        store = FeatureStore(location, create=False)
        (set_id,) = store.feature_sets()
        compactions = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            replaced, _written, _freed = store.layout.videos(set_id).compact(min_age_s=0)
            compactions += replaced > 0
            for video_id in store.video_ids(set_id):  # reads race the deletion of compacted objects
                got = store.read_video(set_id, video_id)
                assert any(np.array_equal(got, values(w, video_id)) for w in range(2)), video_id
    finally:
        for p in procs:
            _kill(p)
    assert compactions >= 2
    store, set_id = _fresh(location)
    assert _assert_sound(store, set_id).keys() == {f"v{i:02d}" for i in range(6)} | {
        f"w{w}/{i}" for w in range(2) for i in range(4)
    }
    store.remove_incomplete(min_age_s=0)
    migrate(store)
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == [], str(report)
    assert len(store.layout.fs.sizes(store.layout.videos(set_id).packs)) == 1
