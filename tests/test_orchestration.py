"""Orchestration: a real Prefect server, Dask task runners, the Slurm recipe, flows for every
job, artifacts, folder extraction and scheduled deployments.

One ``prefect server start`` (fresh SQLite database, ~15-20 s) serves the whole module; a
Dask LocalCluster of 2 worker processes must write the same store as an in-process run.
"""

import contextlib
import csv
import json
import logging
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import flows.extract
import flows.orchestration as orchestration
from feature_store import FeatureStore
from flows.cli import main as vqa
from flows.errors import FlowError
from flows.extract import extract_flow
from flows.jobs import evaluate_flow, fit_flow, predict_flow, scan_video_folder, write_folder_manifest
from flows.orchestration import (
    build_deployment,
    configured_api_url,
    dask_session,
    make_task_runner,
    parse_resources,
    prefect_server,
    publish_table,
    slurm_cluster_kwargs,
    slurm_task_runner,
)
from tests.helpers import tiny_demo_dataset
from vqa_core.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # same thread count as the 1-thread Dask workers

EXTRACTOR = "resnet50-vsfa"
SAMPLING = "uniform:2"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 photos x (reference + 3 blur levels) = 8 tiny clips."""
    root = tmp_path_factory.mktemp("orch_data")
    return tiny_demo_dataset(root, n_sources=2)


@pytest.fixture(scope="module")
def with_broken(dataset):
    """The dataset's manifest plus a file that is not a video."""
    (dataset.parent / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    manifest = dataset.parent / "with_broken.csv"
    manifest.write_text(dataset.read_text() + "broken,videos/broken.mp4,3.0,brokensrc,blur,1\n")
    return manifest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server on a free port with its own database; checks that it is stopped and that
    PREFECT_API_URL is restored afterwards."""
    before_env, before_setting = os.environ.get("PREFECT_API_URL"), configured_api_url()
    with prefect_server(database=tmp_path_factory.mktemp("prefect") / "prefect.db") as srv:
        assert os.environ["PREFECT_API_URL"] == srv.api_url == configured_api_url()
        with urllib.request.urlopen(srv.api_url + "/health", timeout=5) as response:
            assert response.status == 200
        yield srv
    assert os.environ.get("PREFECT_API_URL") == before_env and configured_api_url() == before_setting
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.api_url + "/health", timeout=2)
    with pytest.raises(ProcessLookupError):
        os.kill(srv.pid, 0)
    assert not srv.log_path.exists()  # removed after a clean run


@pytest.fixture(scope="module")
def local_store(with_broken, server, tmp_path_factory):
    """The dataset (and the broken file) extracted in this process (Prefect's default task runner)."""
    store = tmp_path_factory.mktemp("orch_local") / "store"
    summary = extract_flow(
        manifest=str(with_broken),
        store=str(store),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling=SAMPLING,
        device="cpu",
        progress=False,
    )
    assert (summary["done"], summary["failed"]) == (8, 1)
    return store


def _store_contents(path: Path) -> dict:
    store = FeatureStore(path, create=False)
    return {s: {v: store.read_video(s, v) for v in store.video_ids(s)} for s in store.feature_sets()}


def _last_run_record(store: Path) -> dict:
    return json.loads(sorted((store / "_runs").glob("extract-*.json"))[-1].read_text())


@pytest.mark.slow
def test_dask_local_cluster_writes_the_same_store_as_a_local_run(with_broken, local_store, tmp_path, monkeypatch):
    """`vqa extract --dask-workers 2`: one task per video on 2 worker processes, each annotated
    with the resource the workers declare; the store equals the in-process one, and the broken
    file is reported the same way."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner
    from prefect_dask.client import PrefectDaskClient

    seen = {"runners": [], "annotations": []}
    original_submitted, original_submit = flows.extract._extract_submitted, PrefectDaskClient.submit

    def spy_submitted(*args, **kwargs):
        # plain data only: the flow (and so this spy) is pickled into every task's context
        runner = FlowRunContext.get().task_runner
        seen["runners"].append((type(runner).__name__, dict(runner.cluster_kwargs)))
        return original_submitted(*args, **kwargs)

    def spy_submit(self, *args, **kwargs):
        import dask

        seen["annotations"].append(dask.get_annotations())
        return original_submit(self, *args, **kwargs)

    monkeypatch.setattr(flows.extract, "_extract_submitted", spy_submitted)
    monkeypatch.setattr(PrefectDaskClient, "submit", spy_submit)
    store = tmp_path / "dask_store"
    assert (
        vqa(
            [
                "extract",
                str(with_broken),
                "--store",
                str(store),
                "--extractor",
                EXTRACTOR,
                "--weights",
                "random",
                "--sampling",
                SAMPLING,
                "--device",
                "cpu",
                "--dask-workers",
                "2",
                "--dask-resource",
                "GPU=1",
                "-q",
            ]
        )
        == 1
    )  # the broken file
    ((runner_type, cluster_kwargs),) = seen["runners"]
    assert runner_type == DaskTaskRunner.__name__ and cluster_kwargs["n_workers"] == 2
    assert cluster_kwargs["resources"] == {"GPU": 1.0}
    assert seen["annotations"] == [{"resources": {"GPU": 1.0}}] * 9
    record = _last_run_record(store)
    assert (record["done"], record["skipped"], record["failed"]) == (8, 0, 1)
    assert record["failures"] == _last_run_record(local_store)["failures"]
    assert "VideoDecodeError" in record["failures"]["broken"]

    local, dask = _store_contents(local_store), _store_contents(store)
    assert list(local) == list(dask) and len(local) == 1
    (set_id,) = local
    assert sorted(local[set_id]) == sorted(dask[set_id]) and len(local[set_id]) == 8
    for video_id, features in local[set_id].items():
        assert features.shape == (2, 4096)
        np.testing.assert_array_equal(dask[set_id][video_id], features, err_msg=video_id)


def test_dask_session_starts_a_server_only_for_dask_without_api_url(monkeypatch):
    started = []

    @contextlib.contextmanager
    def fake_server(**options):
        started.append(options)
        yield orchestration.PrefectServer(api_url="http://127.0.0.1:1/api", port=1, pid=0, log_path=Path("x"))

    monkeypatch.setattr(orchestration, "prefect_server", fake_server)
    monkeypatch.setattr(orchestration, "configured_api_url", lambda: None)
    with dask_session() as runner:
        assert runner is None and not started
    with dask_session(n_workers=2, ui=False) as runner:
        assert runner.cluster_class == "distributed.LocalCluster" and started == [{"ui": False}]
    monkeypatch.setattr(orchestration, "configured_api_url", lambda: "http://elsewhere:4200/api")
    with dask_session(address="tcp://10.0.0.5:8786") as runner:
        assert runner.address == "tcp://10.0.0.5:8786" and len(started) == 1
    with pytest.raises(FlowError, match="not both"):
        make_task_runner(address="tcp://x:1", n_workers=2)
    with pytest.raises(FlowError, match="at least 1"):
        make_task_runner(n_workers=0)
    with pytest.raises(FlowError, match="needs a Dask task runner"):
        make_task_runner(resources={"GPU": 1})
    assert parse_resources(["GPU=1", "MEM=2.5"]) == {"GPU": 1.0, "MEM": 2.5}
    for bad in ("GPU", "GPU=x", "=1", "GPU=0"):
        with pytest.raises(FlowError, match="NAME=AMOUNT"):
            parse_resources([bad])


def test_prefect_server_refuses_a_busy_port():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(orchestration.PrefectServerError, match="in use"):
            with prefect_server(port=busy.getsockname()[1]):
                pass


def test_folder_manifest_ids_are_relative_paths(tmp_path):
    folder = tmp_path / "incoming"
    for name in ("b.mp4", "sub/a clip.MKV", "sub/deeper/c.webm", "notes.txt", ".hidden.mp4", ".cache/d.mp4"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    (folder / "link.mp4").symlink_to(outside)
    entries = scan_video_folder(folder)
    assert [e.video_id for e in entries] == ["b.mp4", "sub/a clip.MKV", "sub/deeper/c.webm"]
    assert all(e.path.is_absolute() and e.path.is_file() for e in entries)
    manifest, n = write_folder_manifest(folder, out=tmp_path / "m" / "manifest.csv")
    assert n == 3
    read = read_manifest(manifest, root=folder)
    assert [(e.video_id, e.path) for e in read] == [(e.video_id, e.path) for e in entries]
    with pytest.raises(FlowError, match="not a directory"):
        scan_video_folder(tmp_path / "missing")


@pytest.mark.slow
def test_extract_folder_extracts_only_videos_not_yet_stored(dataset, server, tmp_path, capsys):
    videos = sorted((dataset.parent / "videos").glob("*.mp4"))
    folder, store = tmp_path / "incoming", tmp_path / "store"
    (folder / "day1").mkdir(parents=True)
    for video in videos[:2]:
        shutil.copy(video, folder / "day1" / video.name)
    args = [
        "extract-folder",
        str(folder),
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
        "-q",
    ]
    assert vqa(args) == 0
    assert "done 2  skipped 0  failed 0" in capsys.readouterr().out
    (folder / "day2").mkdir()
    shutil.copy(videos[2], folder / "day2" / videos[2].name)
    assert vqa(args) == 0
    assert "done 1  skipped 2  failed 0" in capsys.readouterr().out
    fs = FeatureStore(store, create=False)
    assert fs.video_ids(fs.resolve(EXTRACTOR)) == sorted(
        [f"day1/{v.name}" for v in videos[:2]] + [f"day2/{videos[2].name}"]
    )
    assert len(list((store / "_runs").glob("extract-folder-*.csv"))) == 2


@pytest.mark.slow
def test_evaluate_flow_fits_every_head_and_compares_them(dataset, local_store, tmp_path, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    out = tmp_path / "eval"
    assert (
        vqa(
            [
                "evaluate",
                "--store",
                str(local_store),
                "--manifest",
                str(dataset),
                "--features",
                EXTRACTOR,
                "--head",
                "svr",
                "--head",
                "svr-bvqa",
                "--head-param",
                "gamma=1e-5",
                "--head-param",
                "svr-bvqa:inner_cv=2",
                "--head-param",
                "svr:C=2.0",
                "--protocol",
                "a2inet",
                "--repeats",
                "2",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    for head in ("svr", "svr-bvqa"):
        metrics = json.loads((out / head / "metrics.json").read_text())
        assert metrics["settings"]["head"] == head and metrics["n_splits"] == 2
        assert (out / head / "model").is_dir()
    assert json.loads((out / "svr" / "metrics.json").read_text())["settings"]["head_params"]["C"] == 2.0
    table = (out / "comparison.md").read_text()
    assert "| svr | svr |" in table and "| svr-bvqa | svr-bvqa |" in table
    with open(out / "comparison.csv") as fh:
        assert [r["head"] for r in csv.DictReader(fh)] == ["svr", "svr-bvqa"]
    assert "svr-bvqa" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["vqa-evaluate"])))
    assert artifacts and {r["head"] for r in json.loads(artifacts[0].data)} == {"svr", "svr-bvqa"}

    # a head that fails is reported, the others still compared; refitting needs overwrite
    result = evaluate_flow(
        store=str(local_store),
        manifest=str(dataset),
        features=[EXTRACTOR],
        out=str(out),
        heads=["svr", "a2inet"],
        protocol="a2inet",
        n_repeats=1,
        overwrite=True,
        head_params={"svr": {"gamma": 1e-5}},
    )
    assert set(result["heads"]) == {"svr"} and "takes 2 feature sets" in result["failures"]["a2inet"]
    assert "| a2inet | a2inet |" not in (out / "comparison.md").read_text()  # run | head columns


@pytest.mark.slow
def test_fit_and_predict_flows(dataset, local_store, tmp_path):
    out = tmp_path / "fit"
    metrics = fit_flow(
        store=str(local_store),
        manifest=str(dataset),
        features=[EXTRACTOR],
        out=str(out),
        protocol="a2inet",
        n_repeats=1,
        head_params={"gamma": 1e-5},
    )
    assert {"srcc", "plcc", "rmse"} <= set(metrics) and (out / "metrics.json").is_file()
    scores = predict_flow(
        model=str(out / "model"), store=str(local_store), manifest=str(dataset), out=str(tmp_path / "scores.csv")
    )
    with open(scores) as fh:
        assert len(list(csv.DictReader(fh))) == 8
    # `vqa fit` (plain job, options shared with `vqa evaluate`) writes the same metrics
    assert (
        vqa(
            [
                "fit",
                "--store",
                str(local_store),
                "--manifest",
                str(dataset),
                "--features",
                EXTRACTOR,
                "--protocol",
                "a2inet",
                "--repeats",
                "1",
                "--head-param",
                "gamma=1e-5",
                "--out",
                str(tmp_path / "cli"),
                "-q",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["srcc"] == metrics["srcc"]


@pytest.mark.slow
def test_artifacts_never_fail_a_flow(server, monkeypatch, caplog):
    from prefect import artifacts, flow

    assert publish_table([{"a": 1}], key="outside-a-run") is None  # no run: nothing created, no server asked

    def refuse(*args, **kwargs):
        raise ConnectionError("API unavailable")

    @flow
    def publishes() -> str:
        publish_table([{"a": 1}], key="vqa-test")
        return "finished"

    monkeypatch.setattr(artifacts, "create_table_artifact", refuse)
    with caplog.at_level(logging.WARNING, logger="flows.orchestration"):
        assert publishes() == "finished"
    assert "API unavailable" in caplog.text


def test_slurm_recipe_kwargs_and_task_runner():
    kwargs = slurm_cluster_kwargs(
        queue="gpu", account="vqa", api_url="http://login1:4200/api", job_extra_directives=["--constraint=a100"]
    )
    assert kwargs["job_extra_directives"] == ["--gres=gpu:1", "--constraint=a100"]
    assert kwargs["worker_extra_args"] == ["--resources", "GPU=1"]
    assert kwargs["python"] == sys.executable and kwargs["processes"] == 1
    assert "export PREFECT_API_URL=http://login1:4200/api" in kwargs["job_script_prologue"]
    assert slurm_cluster_kwargs(gpu=False)["worker_extra_args"] == []
    runner = slurm_task_runner(maximum_jobs=8, queue="gpu", api_url="http://login1:4200/api")
    assert runner.cluster_class is orchestration.slurm_cluster  # dask_jobqueue imported only when the flow runs
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": 8}
    assert runner.cluster_kwargs["job_extra_directives"] == ["--gres=gpu:1"]


def test_slurm_job_script_renders_gpu_directives(tmp_path):
    """dask-jobqueue is pinned in requirements.txt: SLURMCluster(...).job_script() of the recipe,
    rendered without Slurm."""
    import dask_jobqueue

    assert dask_jobqueue.__version__ == "0.9.0"
    script = orchestration.slurm_job_script(
        queue="gpu",
        account="vqa",
        api_url="http://login1:4200/api",
        python="/opt/vqa/.venv/bin/python",
        log_directory=tmp_path,
    )
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script and "#SBATCH -A vqa" in script
    assert "/opt/vqa/.venv/bin/python -m distributed.cli.dask_worker" in script
    assert "--resources GPU=1" in script and "export PREFECT_API_URL=http://login1:4200/api" in script
    worker_line = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--nthreads 8" in worker_line and "--nanny" in worker_line  # one worker (process) per job: its GPU
    # by default the workers start with the interpreter running the recipe: this venv's python
    default = orchestration.slurm_job_script(api_url="http://login1:4200/api", log_directory=tmp_path)
    assert f"{sys.executable} -m distributed.cli.dask_worker" in default and "--gres=gpu:1" in default
    cpu_only = orchestration.slurm_job_script(gpu=False, api_url="http://login1:4200/api", log_directory=tmp_path)
    assert "--gres" not in cpu_only and "--resources" not in cpu_only


@pytest.mark.slow
def test_serve_builds_a_cron_deployment_without_blocking(server, tmp_path, monkeypatch, capsys):
    from prefect.client.orchestration import get_client

    params = {
        "folder": str(tmp_path),
        "store": str(tmp_path / "store"),
        "extractors": [EXTRACTOR],
        "weights": {EXTRACTOR: "random"},
        "sampling": SAMPLING,
    }
    deployment = build_deployment("extract-folder", name="nightly-test", cron="0 2 * * *", parameters=params)
    assert deployment.flow_name == "vqa-extract-folder" and deployment.entrypoint == "flows.jobs.extract_folder_flow"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"] and deployment.parameters == params
    deployment.apply()  # registers it with the server, as serve does before it starts polling
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("vqa-extract-folder/nightly-test")
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"] and stored.parameters["folder"] == str(tmp_path)
    with pytest.raises(FlowError, match="Invalid cron"):
        build_deployment("extract", name="x", cron="every night", parameters={})

    served = []
    monkeypatch.setattr(orchestration, "serve_deployments", lambda *deps: served.extend(deps))
    assert (
        vqa(
            [
                "serve",
                "extract-folder",
                str(tmp_path),
                "--store",
                str(tmp_path / "store"),
                "--extractor",
                EXTRACTOR,
                "--weights",
                "random",
                "--dask-workers",
                "2",
                "--cron",
                "0 2 * * *",
                "--timezone",
                "Europe/Paris",
            ]
        )
        == 0
    )
    (dep,) = served
    assert dep.name == "nightly" and dep.schedules[0].schedule.timezone == "Europe/Paris"
    assert dep.parameters["dask_workers"] == 2 and dep.parameters["weights"] == {EXTRACTOR: "random"}
    assert "prefect deployment run 'vqa-extract-folder/nightly'" in capsys.readouterr().out
