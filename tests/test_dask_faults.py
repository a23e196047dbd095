"""A worker lost from a Dask cluster during extraction (issue 8).

A Dask LocalCluster of 2 worker processes runs `vqa extract --dask-address` over 4 tiny clips.
A worker plugin makes the worker that opens the victim clip SIGKILL itself, exactly once (an
O_EXCL marker file): the nanny restarts the worker process, and the scheduler either retries
the task on a live worker (default ``allowed-failures`` 3: every video is stored) or, when it
gives up (``allowed-failures`` 0 here), fails the tasks of the lost worker with
``KilledWorker``: those videos are recorded failed with a reason naming the lost worker, and
the next run stores them without redoing the others. Either way the store verifies clean.

One Prefect server (fresh database) and one cluster serve the module (~25-35 s in all on 2
busy cores, most of it starting them).
"""

import json
import logging
import os
import signal
from pathlib import Path

import pytest
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
from prefect.client.schemas.objects import StateType

from feature_store import FeatureStore
from feature_store.maintenance import verify
from flows.cli import main as vqa
from flows.orchestration import prefect_server
from tests.helpers import tiny_demo_dataset

EXTRACTOR = "resnet50-vsfa"


class KillOnce(WorkerPlugin):
    """In every worker: the first worker process that opens ``victim`` (a file name) creates
    ``marker`` (holding its pid) and SIGKILLs itself; later openings go through."""

    def __init__(self, victim: str, marker: Path):
        self.victim, self.marker = victim, str(marker)
        self.name = f"kill-once-{victim}"

    def setup(self, worker):
        import pipeline.runner

        self._original = original = pipeline.runner.open_video
        victim, marker = self.victim, self.marker

        def open_video(path, *args, **kwargs):
            if os.path.basename(str(path)) == victim:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass  # killed once already
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(path, *args, **kwargs)

        pipeline.runner.open_video = open_video

    def teardown(self, worker):
        import pipeline.runner

        pipeline.runner.open_video = self._original


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """1 photo x (reference + 3 blur levels) = 4 tiny clips."""
    root = tmp_path_factory.mktemp("faults_data")
    return tiny_demo_dataset(root, n_sources=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real Prefect server (exported to the workers), then a LocalCluster of 2 worker processes."""
    from distributed import Client, LocalCluster

    with prefect_server(database=tmp_path_factory.mktemp("prefect") / "prefect.db"):
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
                env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            ) as lc,
            Client(lc) as client,
        ):
            client.wait_for_workers(2, timeout=120)
            yield lc, client


def _extract(manifest: Path, store: Path, address: str) -> int:
    return vqa(
        [
            "extract",
            str(manifest),
            "--store",
            str(store),
            "--extractor",
            EXTRACTOR,
            "--weights",
            "random",
            "--sampling",
            "uniform:1",
            "--device",
            "cpu",
            "--dask-address",
            address,
            "-q",
        ]
    )


def _last_record(store: Path) -> dict:
    return json.loads(sorted((store / "_runs").glob("extract-*.json"))[-1].read_text())


def _kill_one_worker(client, manifest: Path, marker: Path, video_id: str) -> KillOnce:
    plugin = KillOnce(f"{video_id}.mp4", marker)
    assert (manifest.parent / "videos" / plugin.victim).is_file()
    client.register_plugin(plugin)
    return plugin


def _all_ids(manifest: Path) -> list[str]:
    return sorted(line.split(",")[0] for line in manifest.read_text().splitlines()[1:])


@pytest.mark.slow
def test_a_lost_worker_is_replaced_and_its_video_retried(manifest, cluster, tmp_path):
    lc, client = cluster
    pids_before = set(client.run(os.getpid).values())
    marker, store = tmp_path / "killed", tmp_path / "store"
    plugin = _kill_one_worker(client, manifest, marker, "astronaut__blur_2")
    try:
        assert _extract(manifest, store, lc.scheduler_address) == 0
    finally:
        client.unregister_worker_plugin(plugin.name)
    killed = int(marker.read_text())
    assert killed in pids_before
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it
    assert killed not in client.run(os.getpid).values()

    record = _last_record(store)
    assert (record["done"], record["skipped"], record["failed"]) == (4, 0, 0), record["failures"]
    fs = FeatureStore(store, create=False)
    (set_id,) = fs.feature_sets()
    assert fs.video_ids(set_id) == _all_ids(manifest)
    report = verify(fs)
    assert report.ok, report
    assert _extract(manifest, store, lc.scheduler_address) == 0
    assert (_last_record(store)["done"], _last_record(store)["skipped"]) == (0, 4)


@pytest.mark.slow
def test_when_dask_gives_up_the_video_is_recorded_failed_and_the_next_run_stores_it(manifest, cluster, tmp_path):
    lc, client = cluster
    marker, store = tmp_path / "killed", tmp_path / "store"
    before = lc.scheduler.allowed_failures
    lc.scheduler.allowed_failures = 0  # the first lost worker fails its tasks (KilledWorker)
    plugin = _kill_one_worker(client, manifest, marker, "astronaut__blur_1")
    try:
        assert _extract(manifest, store, lc.scheduler_address) == 1
        assert marker.exists()
        record = _last_record(store)
        failed = sorted(record["failures"])
        assert "astronaut__blur_1" in failed and record["done"] + record["failed"] == 4
        for reason in record["failures"].values():
            assert reason.startswith("lost Dask worker: the worker process running this video died"), reason
            assert "KilledWorker" in reason
        fs = FeatureStore(store, create=False)
        (set_id,) = fs.feature_sets()
        stored = fs.video_ids(set_id)
        assert sorted(stored + failed) == _all_ids(manifest)
        report = verify(fs)
        assert report.ok, report
        # Marking them Crashed in Prefect is best effort: a task run's creation reaches the API as an
        # event, so one killed right after it started may not exist there yet. Those marked carry the
        # reason.
        with get_client(sync_client=True) as api:
            crashed = api.read_task_runs(
                task_run_filter=TaskRunFilter(
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.CRASHED]))
                )
            )
        assert len(crashed) <= len(failed) and all("lost Dask worker" in r.state.message for r in crashed)
        finished = {v: fs.video_provenance(set_id, v)["video"]["extracted_at"] for v in stored}

        client.wait_for_workers(2, timeout=120)
        assert _extract(manifest, store, lc.scheduler_address) == 0  # the marker is there: no second kill
        again = _last_record(store)
        assert (again["done"], again["skipped"], again["failed"]) == (len(failed), len(stored), 0)
        assert fs.video_ids(set_id) == _all_ids(manifest)
        assert {v: fs.video_provenance(set_id, v)["video"]["extracted_at"] for v in stored} == finished
        assert verify(fs).ok
    finally:
        client.unregister_worker_plugin(plugin.name)
        lc.scheduler.allowed_failures = before
