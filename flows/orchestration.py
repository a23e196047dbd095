"""Where and how flows run: a real Prefect server, Dask task runners (local, remote, Slurm),
artifacts that never fail a run, and scheduled deployments.

::

    vqa extract ... --dask-workers N | --dask-address tcp://host:8786
        |-- ensure_api_server(): PREFECT_API_URL if set, else prefect_server() (a subprocess)
        |-- make_task_runner():  DaskTaskRunner(LocalCluster(N processes)) | DaskTaskRunner(address)
        |                        (with CUDA devices: worker rank pinned to GPU rank % GPUs, GPU=1 each)
        '-- extract_flow.with_options(task_runner=...): one extract_video_task per video,
            each worker builds its extractors once and writes its own videos to the store

Why a real server: with no ``PREFECT_API_URL`` Prefect starts a temporary server in a child
process that outlives a SIGKILLed parent, and under a multi-process task runner every worker
would start its own (port clashes, hangs, orphaned processes). :func:`prefect_server` starts
``prefect server start`` on a free local port, tied to this process's life
(:mod:`flows.lifeline`), waits for its health endpoint and exports ``PREFECT_API_URL`` to this
process and to every worker process started afterwards; it stops the server on exit. ``vqa``
runs every flow this way (or against ``PREFECT_API_URL``).

Slurm GPU nodes: :func:`slurm_cluster_kwargs` / :func:`slurm_task_runner` (dask-jobqueue's
``SLURMCluster``, one GPU and one Dask worker per job, the worker declaring the Dask resource
``GPU=1``); extraction tasks then ask for it with ``resources={"GPU": 1}`` (``dask.annotate``).
:func:`slurm_job_script` renders the batch script without Slurm, for review.

Deployments: :func:`build_deployment` turns a flow named in :data:`DEPLOYABLE` into a
``RunnerDeployment`` (cron schedule, default parameters); ``vqa serve`` serves it.
See ``docs/orchestration.md``.

Length (over 600 lines): the Prefect server's lifecycle, the Dask runners and the deployments
share the server-address and environment handling.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import prefect_env  # noqa: F401  (must precede the prefect import)
from .errors import FlowError, PrefectServerError
from .lifeline import guarded

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect_dask import DaskTaskRunner

logger = logging.getLogger(__name__)

SERVER_STARTUP_TIMEOUT_S = 120.0  # a fresh SQLite database takes ~15-20 s on 2 busy cores
SERVER_STOP_TIMEOUT_S = 20.0
HEALTH_POLL_S = 0.25
LOG_TAIL_CHARS = 3000

GPU_RESOURCE = "GPU"


# --------------------------------------------------------------------------------------------
# A real Prefect server
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefectServer:
    """A running ``prefect server start`` subprocess (from :func:`prefect_server`)."""

    api_url: str
    port: int
    pid: int
    log_path: Path


def configured_api_url() -> str | None:
    """The Prefect API URL this process uses (``PREFECT_API_URL`` or a profile), or ``None``
    when Prefect would start its temporary in-process server. Imports Prefect."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a local http URL we built)
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


def _drain_prefect_workers() -> None:
    """Send the logs and events this process has queued for the current API, and stop the
    workers holding them, so that none talks to a server that is about to stop (or keeps a
    connection to a previous one)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for call in (APILogWorker.drain_all, EventsWorker.drain_all):
            result = call()
            if inspect.isawaitable(result):
                await result

    try:
        run_coro_as_sync(drain())
    except Exception as exc:  # noqa: BLE001  (best effort: the server is going away anyway)
        logger.debug("draining Prefect log/event workers failed: %s", exc)


def _stop(process: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM (uvicorn shuts down cleanly), then SIGKILL to the server's own process group."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("prefect server (pid %d) ignored SIGTERM for %.0f s; killing it", process.pid, timeout)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: start_new_session=True
        except ProcessLookupError:
            pass
        process.wait()


@contextmanager
def prefect_server(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    database: str | os.PathLike[str] | None = None,
    ui: bool = False,
    startup_timeout: float = SERVER_STARTUP_TIMEOUT_S,
) -> Iterator[PrefectServer]:
    """Run ``prefect server start`` for the duration of the ``with`` block.

    Starts the server as a subprocess (argument list, no shell) on ``port`` (default: a free
    port) that dies with this process even if it is SIGKILLed (:mod:`flows.lifeline`; start
    it from the main thread), waits until ``/api/health`` answers, then sets ``PREFECT_API_URL`` both in
    ``os.environ`` (inherited by Dask workers and other child processes started inside the
    block) and in Prefect's settings of this process. On exit the previous values are restored
    and the server is stopped (SIGTERM, then SIGKILL after ``SERVER_STOP_TIMEOUT_S``).

    Args:
        host: address to bind. ``127.0.0.1`` (default) serves this machine only; ``0.0.0.0``
            serves other nodes too (Slurm workers), and the exported URL then names this host.
        port: TCP port; ``None`` picks a free one.
        database: SQLite file for the server's database; ``None`` uses Prefect's configured
            database (``PREFECT_SERVER_DATABASE_CONNECTION_URL``, default ``~/.prefect/prefect.db``),
            so runs stay visible afterwards.
        ui: serve the web UI as well.
        startup_timeout: seconds to wait for the health endpoint.

    Raises:
        PrefectServerError: the server exited or did not answer in time (with its log's end).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    public_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    if port is None:
        port = _free_port(local_host)
    elif not _port_free(local_host, port):  # else the health check would find the other server
        raise PrefectServerError(
            f"port {port} on {local_host} is in use (another Prefect server? then set "
            f"PREFECT_API_URL=http://{public_host}:{port}/api instead); choose another port"
        )
    api_url = f"http://{public_host}:{port}/api"
    health_url = f"http://{local_host}:{port}/api/health"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server itself is no client of another server
    env.update(
        {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        }
    )
    if database is not None:
        db = Path(database).expanduser().resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the old name of the setting below
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{db}"
    fd, log_name = tempfile.mkstemp(prefix=f"prefect-server-{port}-", suffix=".log")
    log_path = Path(log_name)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    started = time.perf_counter()
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            guarded(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    clean = False
    try:
        deadline = started + startup_timeout
        while not _healthy(health_url):
            if process.poll() is not None:
                raise PrefectServerError(
                    f"prefect server start exited with status {process.returncode} "
                    f"(log {log_path}):\n{_log_tail(log_path)}"
                )
            if time.perf_counter() > deadline:
                raise PrefectServerError(
                    f"prefect server did not answer {health_url} within {startup_timeout:.0f} s "
                    f"(log {log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(HEALTH_POLL_S)
        logger.info(
            "prefect server up at %s after %.1f s (pid %d, log %s)",
            api_url,
            time.perf_counter() - started,
            process.pid,
            log_path,
        )
        previous = os.environ.get("PREFECT_API_URL")
        _drain_prefect_workers()  # nothing queued for another server gets sent to this one
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                try:
                    yield PrefectServer(api_url=api_url, port=port, pid=process.pid, log_path=log_path)
                finally:
                    _drain_prefect_workers()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
        clean = True
    finally:
        _stop(process, timeout=SERVER_STOP_TIMEOUT_S)
        logger.info("prefect server at %s stopped", api_url)
        if clean:
            log_path.unlink(missing_ok=True)


@contextmanager
def ensure_api_server(**server_options: Any) -> Iterator[str]:
    """Yield the configured Prefect API URL, or start :func:`prefect_server` (with
    ``server_options``) for the block when there is none. Multi-process task runners and
    deployments need this: the temporary in-process server cannot be shared."""
    url = configured_api_url()
    if url:
        logger.info("using the Prefect server at %s", url)
        yield url
        return
    logger.info("no PREFECT_API_URL: starting a Prefect server for this run")
    with prefect_server(**server_options) as server:
        yield server.api_url


def require_api_server(what: str) -> str:
    """The configured API URL; ``FlowError`` explaining what to do when there is none."""
    url = configured_api_url()
    if not url:
        raise FlowError(
            f"{what} needs a real Prefect server: the temporary in-process one breaks under "
            "multi-process task runners. Run inside `with flows.orchestration.prefect_server():`, "
            "or start `prefect server start` and set PREFECT_API_URL "
            "(`vqa extract --dask-...` does this for you)"
        )
    return url


# --------------------------------------------------------------------------------------------
# Task runners
# --------------------------------------------------------------------------------------------


def make_task_runner(
    *,
    address: str | None = None,
    n_workers: int | None = None,
    resources: Mapping[str, float] | None = None,
    device: str | None = "auto",
) -> DaskTaskRunner | None:
    """A Dask task runner for these options, or ``None`` (Prefect's default: in this process).

    Args:
        address: connect to an existing Dask scheduler (``tcp://host:8786``). Its workers need
            this project installed and ``PREFECT_API_URL`` pointing at a server they can reach.
        n_workers: start a ``LocalCluster`` of this many worker processes (one thread each,
            the machine's cores shared out to each worker's torch/OpenMP threads).
        resources: Dask resources each LocalCluster worker declares (e.g. ``{"GPU": 1}``), so
            that tasks annotated with them can run; ignored with ``address`` (declared by the
            workers you started).
        device: the extraction device. On a machine with CUDA devices and ``device`` ``"auto"``
            or ``"cuda"``, LocalCluster worker ``rank`` is pinned to GPU ``rank % gpus``
            (``CUDA_VISIBLE_DEVICES``, :func:`pipeline.runner.gpu_worker_envs`, via
            :func:`gpu_pinned_nanny`) and declares ``GPU=1``, so that video tasks annotated with
            it (:func:`task_resources`) run one per GPU. ``"cpu"``, ``"cuda:N"`` or no CUDA:
            no pinning (unchanged CPU behaviour).

    Raises:
        FlowError: both or invalid options, or prefect-dask is not installed.
    """
    if address and n_workers is not None:
        raise FlowError("choose --dask-address (an existing cluster) or --dask-workers (a local one), not both")
    if n_workers is not None and n_workers < 1:
        raise FlowError(f"--dask-workers must be at least 1, got {n_workers}")
    if not address and n_workers is None:
        if resources:
            raise FlowError("--dask-resource needs a Dask task runner: add --dask-workers N or --dask-address")
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise FlowError("Dask task runners need prefect-dask: pip install prefect-dask") from exc
    if address:
        return DaskTaskRunner(address=address)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": n_workers,
        "threads_per_worker": 1,  # one video at a time per worker: its extractors are not thread-safe
        "processes": True,
        "dashboard_address": None,
        "silence_logs": logging.ERROR,  # e.g. the nanny's "still alive after 4 s, killing" at shutdown
        # distributed pins OMP/MKL threads to 1 in workers; share the cores out instead
        "env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
    }
    if resources:
        cluster_kwargs["resources"] = dict(resources)
    from pipeline.runner import gpu_worker_envs

    gpu_ids = [env["CUDA_VISIBLE_DEVICES"] for env in gpu_worker_envs(n_workers, device=device) if env]
    if gpu_ids:  # one worker per GPU: pinned, declaring GPU=1 (an explicit --dask-resource GPU=... wins)
        cluster_kwargs["worker_class"] = f"{__name__}.gpu_pinned_nanny"
        cluster_kwargs["gpu_ids"] = gpu_ids
        cluster_kwargs["resources"] = {GPU_RESOURCE: 1.0, **(resources or {})}
        logger.info("local Dask cluster: %d worker(s) pinned to GPU(s) %s", n_workers, ", ".join(gpu_ids))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)


def gpu_pinned_nanny(
    scheduler_address: str, *, name: Any, gpu_ids: Sequence[str], env: Mapping[str, str] | None = None, **options: Any
):
    """A ``distributed.Nanny`` whose worker process sees one GPU: ``CUDA_VISIBLE_DEVICES`` =
    ``gpu_ids[rank % len(gpu_ids)]`` with ``rank`` the worker's name (``LocalCluster`` names its
    workers 0, 1, ...; a restarted or added worker keeps the scheme). The LocalCluster's
    ``worker_class`` in :func:`make_task_runner` on a machine with GPUs; ``gpu_ids`` arrives
    as a worker keyword of ``LocalCluster``. The nanny sets the variable before it spawns the
    worker process, so CUDA never sees the other GPUs there."""
    from distributed import Nanny

    rank = int(name)
    env = {**(env or {}), "CUDA_VISIBLE_DEVICES": str(gpu_ids[rank % len(gpu_ids)])}
    return Nanny(scheduler_address, name=name, env=env, **options)


def task_resources(runner: Any, resources: Mapping[str, float] | None = None) -> dict[str, float] | None:
    """The Dask resources each video task asks for: ``resources`` when given, else ``GPU=1``
    when ``runner`` is a local cluster of GPU-pinned workers (:func:`make_task_runner`), so that
    each task takes one GPU; else ``None`` (no annotation)."""
    if resources:
        return dict(resources)
    cluster_kwargs = getattr(runner, "cluster_kwargs", None) or {}
    return {GPU_RESOURCE: 1.0} if cluster_kwargs.get("gpu_ids") else None


@contextmanager
def dask_session(
    *,
    address: str | None = None,
    n_workers: int | None = None,
    resources: Mapping[str, float] | None = None,
    device: str | None = "auto",
    **server_options: Any,
) -> Iterator[DaskTaskRunner | None]:
    """The task runner of :func:`make_task_runner`, with a Prefect server it can use for the
    block (:func:`ensure_api_server`); yields ``None`` and starts nothing without Dask options."""
    runner = make_task_runner(address=address, n_workers=n_workers, resources=resources, device=device)
    if runner is None:
        yield None
        return
    if address and not configured_api_url() and not _is_local_address(address):
        logger.warning(
            "the Dask cluster at %s cannot reach a Prefect server started on 127.0.0.1: start "
            "`prefect server start --host 0.0.0.0` and set PREFECT_API_URL here and on the workers",
            address,
        )
    with ensure_api_server(**server_options):
        yield runner


def _is_local_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1", socket.gethostname())


def parse_resources(values: Sequence[str]) -> dict[str, float]:
    """``NAME=AMOUNT`` pairs (``GPU=1``) -> ``{"GPU": 1.0}``; ``FlowError`` for anything else."""
    resources = {}
    for value in values:
        name, _, amount = value.partition("=")
        try:
            number = float(amount)
        except ValueError:
            number = 0.0
        if not name.strip() or not number > 0:
            raise FlowError(f"--dask-resource {value!r}: expected NAME=AMOUNT with AMOUNT > 0, e.g. GPU=1")
        resources[name.strip()] = number
    return resources


# --------------------------------------------------------------------------------------------
# Slurm GPU nodes (dask-jobqueue)
# --------------------------------------------------------------------------------------------


def slurm_cluster_kwargs(
    *,
    queue: str | None = None,
    account: str | None = None,
    cores: int = 8,
    memory: str = "32GB",
    walltime: str = "04:00:00",
    gpu: bool = True,
    python: str | os.PathLike[str] | None = None,
    api_url: str | None = None,
    job_extra_directives: Sequence[str] = (),
    job_script_prologue: Sequence[str] = (),
    log_directory: str | os.PathLike[str] | None = None,
    local_directory: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster``: one Dask worker per Slurm job.

    With ``gpu`` each job asks Slurm for one GPU (``#SBATCH --gres=gpu:1``) and its worker
    declares the Dask resource ``GPU=1`` (``--resources GPU=1``), so a task annotated with
    ``resources={"GPU": 1}`` runs one at a time per GPU and never on a CPU-only worker.
    ``python`` (default: this interpreter, i.e. the project's venv, which must be visible on
    the nodes) starts the workers. ``api_url`` (default: the configured ``PREFECT_API_URL``)
    is exported in the job script so that task runs report to the server; it must be
    reachable from the compute nodes (``prefect server start --host 0.0.0.0``). ``extra``
    goes to ``SLURMCluster`` unchanged (``interface="ib0"``, ``scheduler_options``, ...).
    """
    api_url = api_url or configured_api_url()
    prologue = [f"export PREFECT_API_URL={shlex.quote(api_url)}"] if api_url else []
    prologue += ["export DASK_LOGGING__DISTRIBUTED=warning", *job_script_prologue]
    kwargs: dict[str, Any] = {
        "cores": cores,
        "memory": memory,
        "processes": 1,  # one worker per job: it owns the job's GPU
        "walltime": walltime,
        "python": str(python or sys.executable),
        "job_extra_directives": (["--gres=gpu:1"] if gpu else []) + list(job_extra_directives),
        "worker_extra_args": ["--resources", f"{GPU_RESOURCE}=1"] if gpu else [],
        "job_script_prologue": prologue,
    }
    for key, value in (
        ("queue", queue),
        ("account", account),
        ("local_directory", local_directory),
        ("log_directory", None if log_directory is None else str(log_directory)),
    ):
        if value is not None:
            kwargs[key] = value
    kwargs.update(extra)
    return kwargs


def slurm_cluster(**cluster_kwargs: Any):
    """``dask_jobqueue.SLURMCluster(**cluster_kwargs)``, imported when called: the task
    runner's cluster factory, so that building a runner does not need dask-jobqueue."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise FlowError("the Slurm recipe needs dask-jobqueue: pip install dask-jobqueue") from exc
    return SLURMCluster(**cluster_kwargs)


def slurm_task_runner(*, minimum_jobs: int = 0, maximum_jobs: int = 4, **cluster_options: Any) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` that starts a ``SLURMCluster`` (:func:`slurm_cluster_kwargs` with
    ``cluster_options``) when the flow starts and scales it adaptively between
    ``minimum_jobs`` and ``maximum_jobs`` Slurm jobs. dask-jobqueue and ``sbatch`` are needed
    when the flow runs, not to build the runner."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_class=slurm_cluster,
        cluster_kwargs=slurm_cluster_kwargs(**cluster_options),
        adapt_kwargs={"minimum": minimum_jobs, "maximum": maximum_jobs},
    )


def slurm_job_script(**cluster_options: Any) -> str:
    """The batch script ``SLURMCluster`` would submit for :func:`slurm_cluster_kwargs`
    (``cluster_options``); rendering needs dask-jobqueue but no Slurm."""
    cluster = slurm_cluster(**slurm_cluster_kwargs(**cluster_options))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


# --------------------------------------------------------------------------------------------
# Artifacts: best effort, never the reason a run fails
# --------------------------------------------------------------------------------------------


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _publish(kind: str, content: Any, *, key: str | None, description: str | None):
    if not _in_run():  # e.g. flow.fn(): creating one would start a temporary server for nothing
        logger.debug("not in a Prefect run: %s artifact %s not created", kind, key)
        return None
    from prefect import artifacts

    create = artifacts.create_table_artifact if kind == "table" else artifacts.create_markdown_artifact
    try:
        return create(content, key=key, description=description)
    except Exception as exc:  # noqa: BLE001  (API down, bad key, ...: the results are on disk anyway)
        logger.warning("could not create the Prefect %s artifact %s: %s: %s", kind, key, type(exc).__name__, exc)
        return None


def publish_table(table: list[dict] | dict[str, list], *, key: str | None = None, description: str | None = None):
    """Attach a table artifact to the current flow/task run; returns its id, or ``None`` when
    not in a run or when the API refused (logged as a warning, never raised). ``key``:
    lowercase letters, digits and dashes; runs with the same key form its history in the UI."""
    return _publish("table", table, key=key, description=description)


def publish_markdown(markdown: str, *, key: str | None = None, description: str | None = None):
    """Attach a markdown artifact to the current run; best effort like :func:`publish_table`."""
    return _publish("markdown", markdown, key=key, description=description)


# --------------------------------------------------------------------------------------------
# Deployments
# --------------------------------------------------------------------------------------------

# name used by `vqa serve` -> (module, flow object name)
DEPLOYABLE = {
    "extract": ("flows.extract", "extract_flow"),
    "extract-folder": ("flows.jobs", "extract_folder_flow"),
    "fit": ("flows.jobs", "fit_flow"),
    "evaluate": ("flows.jobs", "evaluate_flow"),
    "predict": ("flows.jobs", "predict_flow"),
}


def deployable_flow(name: str):
    """The flow object registered under ``name`` in :data:`DEPLOYABLE`."""
    if name not in DEPLOYABLE:
        raise FlowError(f"no deployable flow {name!r}; choose from {', '.join(DEPLOYABLE)}")
    module, attribute = DEPLOYABLE[name]
    return getattr(importlib.import_module(module), attribute)


def build_deployment(
    flow_name: str,
    *,
    name: str,
    parameters: Mapping[str, Any],
    cron: str | None = None,
    timezone: str | None = None,
    description: str | None = None,
) -> RunnerDeployment:
    """A deployment of the flow ``flow_name`` (a key of :data:`DEPLOYABLE`) with default
    ``parameters`` and, with ``cron``, a cron schedule (in ``timezone``, default UTC).

    Nothing is registered: serve it (``prefect.serve(deployment)``, what ``vqa serve`` does)
    or ``deployment.apply()`` it against a running server. Its entrypoint is a module path
    (``flows.jobs.extract_folder_flow``), so runs load the flow wherever the project is
    installed, whatever the working directory.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    flow = deployable_flow(flow_name)
    try:
        schedules = [Cron(cron, timezone=timezone)] if cron else None
        return flow.to_deployment(
            name=name,
            schedules=schedules,
            parameters=dict(parameters),
            description=description,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    except ValueError as exc:  # a malformed cron string, unknown parameters
        raise FlowError(f"cannot build deployment {flow.name}/{name}: {exc}") from exc


def serve_deployments(*deployments: RunnerDeployment) -> None:
    """Register ``deployments`` with the configured server and run their schedules and
    triggered runs in this process until interrupted (what ``prefect.serve`` does).

    SIGTERM stops it as Ctrl-C does (the runner's tasks are cancelled and its connections
    closed) and the function returns: Prefect's own SIGTERM handler calls the runner's
    asynchronous ``stop()`` without awaiting it and exits from inside the event loop
    ("coroutine ... was never awaited")."""
    import asyncio

    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            signal.raise_signal(signal.SIGINT)  # asyncio cancels the running task, as for Ctrl-C

    require_api_server("serving deployments")
    runner = _Runner()
    for deployment in deployments:
        runner.add_deployment(deployment)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        logger.info("stopped serving %s", ", ".join(d.name for d in deployments))


__all__ = [
    "DEPLOYABLE",
    "PrefectServer",
    "PrefectServerError",
    "build_deployment",
    "configured_api_url",
    "dask_session",
    "deployable_flow",
    "ensure_api_server",
    "gpu_pinned_nanny",
    "make_task_runner",
    "parse_resources",
    "task_resources",
    "prefect_server",
    "publish_markdown",
    "publish_table",
    "require_api_server",
    "serve_deployments",
    "slurm_cluster",
    "slurm_cluster_kwargs",
    "slurm_job_script",
    "slurm_task_runner",
]
