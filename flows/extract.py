"""Stage 1 as a Prefect flow: one task per video, decode once, every extractor, into the store."""

from __future__ import annotations

import datetime as dt
import errno
import functools
import logging
import os
import pickle
import platform
import time
import traceback
from contextlib import nullcontext

import dask
import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

import pipeline
from feature_store import FeatureStore
from pipeline.runner import DEFAULT_PREFETCH, extract_video, release_accelerator_memory
from pipeline.sampling import parse_sampling
from vqa_core.manifest import read_manifest

from . import prefect_env  # noqa: F401  (must precede the prefect import)
from .errors import PortableTaskError

# What a run decides before it starts lives in extract_plan (no Prefect there); re-exported
# here, where the flow's users have always found it.
from .extract_plan import (  # noqa: F401
    ExtractionConfig,
    _build,
    build_extractors,
    empty_summary,
    extraction_config,
    feature_set_ids,
    parse_per_extractor_option,
    resolve_samplings,
    write_run_record,
)
from .orchestration import publish_table, task_resources

logger = logging.getLogger(__name__)

# errno values that mean "the filesystem is full" (no space; disk quota exceeded).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _portable_exceptions(fn):
    """Re-raise an exception of ``fn`` that does not round-trip through pickle (e.g. one whose
    ``__init__`` takes other arguments than its ``args``) as a :class:`PortableTaskError` with the
    same type name and message; others pass unchanged. Either way the exception carries its
    traceback as text in ``task_traceback``: the run record keeps it, and it crosses process
    boundaries where a traceback object does not."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            try:
                pickle.loads(pickle.dumps(exc))
            except Exception:  # noqa: BLE001  (any failure to round-trip)
                portable = PortableTaskError(type(exc).__name__, str(exc))
                portable.task_traceback = text
                raise portable from exc
            try:
                exc.task_traceback = text
            except AttributeError:  # an exception type with __slots__: the record names it without traceback
                pass
            raise

    return wrapper


@task(name="extract-video", cache_policy=NO_CACHE)
@_portable_exceptions
def extract_video_task(video_id: str, path: str, store_path: str, config: ExtractionConfig) -> dict:
    """Extract every feature set still missing for one video and store each atomically.

    Returns a small summary (never feature arrays: Prefect records task results).
    """
    store = FeatureStore(store_path)
    extractors = build_extractors(config)
    set_ids = feature_set_ids(store, extractors, config)
    todo = [i for i, set_id in enumerate(set_ids) if not store.has_video(set_id, video_id)]
    if not todo:
        return {"video_id": video_id, "status": "skipped"}
    samplings = [parse_sampling(config.sampling[config.extractors[i]]) for i in todo]
    started = time.perf_counter()
    features, info = extract_video(
        path,
        [extractors[i] for i in todo],
        sampling=samplings,
        batch_size=config.batch_size,
        video_key=video_id,
        prefetch=config.prefetch,
        root=config.root,
    )
    seconds = time.perf_counter() - started
    video_provenance = {
        "source": info.to_dict(),
        "steps": int(features[0].shape[0]),
        "extracted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "code_version": pipeline.__version__,
        "torch": torch.__version__,
        "device": str(extractors[0].device),
        "host": platform.node(),
    }
    if extractors[0].device.type == "cuda" and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        video_provenance["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]  # the physical GPU
    for i, feats, sampling in zip(todo, features, samplings, strict=True):
        set_provenance = {"spec": extractors[i].spec.to_dict(), "sampling": sampling.to_dict()}
        try:
            store.write_video(
                set_ids[i], video_id, feats, provenance={"set": set_provenance, "video": video_provenance}
            )
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise OSError(
                exc.errno,
                f"disk full ({exc.strerror}) while writing features of {video_id!r} "
                f"(feature set {set_ids[i]}) to the store {store_path}: they were not stored; "
                "free some space and re-run (whatever is complete is skipped)",
            ) from exc
    return {
        "video_id": video_id,
        "status": "done",
        "frames": int(features[0].shape[0]),
        "seconds": seconds,
        "steps": {config.extractors[i]: int(feats.shape[0]) for i, feats in zip(todo, features, strict=True)},
    }


@flow(name="vqa-extract")
def extract_flow(
    manifest: str,
    store: str,
    extractors: list[str],
    weights: dict[str, str] | None = None,
    sampling: str | dict[str, str] = "all",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    root: str | None = None,
    resources: dict[str, float] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    prefetch: int = DEFAULT_PREFETCH,
    options: dict[str, dict] | None = None,
) -> dict:
    """Extract features for every video of ``manifest`` into ``store``.

    Each video is decoded once for all extractors. ``sampling`` is one strategy for all (clip
    extractors keep their clips) or a name -> strategy dict. Finished videos are skipped, a
    failing video is recorded with its reason and the run goes on. ``root``: refuse manifest
    paths that resolve outside this folder. Returns ``{"done": n, "skipped": n, "failed": n,
    "failures": {video_id: one-line reason}, "steps": {extractor: n}, ...}``
    (:func:`flows.extract_plan.empty_summary`) and writes the same summary, with each failure's
    traceback, to ``<store>/_runs/`` and the counts to a Prefect table artifact.

    Task runner: with Prefect's default (threads) the videos run one after the other in this
    process. With a multi-process runner (``extract_flow.with_options(task_runner=
    DaskTaskRunner(...))``, see ``flows.orchestration``) every pending video is submitted as
    its own task; each worker builds its extractors once and writes its own videos to the
    store. ``resources`` (e.g. ``{"GPU": 1}``) are Dask resources each video task needs
    (``dask.annotate``); only the workers that declare them run the tasks. On a local cluster
    of GPU-pinned workers (``make_task_runner`` on a machine with GPUs) they default to
    ``{"GPU": 1}``. A video whose Dask worker died (killed, out of host memory) is retried on
    another worker by Dask; when Dask gives up (``KilledWorker``) it is recorded as failed with
    a reason saying the worker was lost, and the next run retries it.

    ``precision`` / ``channels_last``: compute options of every extractor (their own feature
    sets: ``bf16`` features never mix with ``fp32`` ones); ``prefetch``: batches decoded ahead
    per video (run record only); ``options``: builder options per extractor
    (``{"unique": {"resampler": "pil"}}``). See :class:`ExtractionConfig`.
    """
    entries = read_manifest(manifest, root=root)  # validated before anything touches the store
    config = extraction_config(
        extractors=extractors,
        weights=weights,
        sampling=sampling,
        device=device,
        batch_size=batch_size,
        precision=precision,
        channels_last=channels_last,
        prefetch=prefetch,
        root=root,
        options=options,
    )
    built = build_extractors(config)  # fail fast here if weights cannot be had, before the store is created
    feature_store = FeatureStore(store)
    set_ids = feature_set_ids(feature_store, built, config)
    summary = empty_summary(set_ids, config.extractors)
    started = time.perf_counter()
    if _runner_distributes():
        if any(e.device.type == "cuda" for e in built):  # the workers build their own: free this GPU's memory
            del built
            _build.cache_clear()
            release_accelerator_memory()
        _extract_submitted(
            entries,
            feature_store,
            set_ids,
            str(store),
            config,
            summary,
            resources=task_resources(FlowRunContext.get().task_runner, resources),
            progress=progress,
        )
    else:
        bar = tqdm(entries, desc="extract", unit="video", disable=not progress)
        for entry in bar:
            if all(feature_store.has_video(s, entry.video_id) for s in set_ids):
                summary["skipped"] += 1
                continue
            state = extract_video_task(entry.video_id, str(entry.path), str(store), config, return_state=True)
            _record(summary, entry.video_id, state)
            bar.set_postfix(done=summary["done"], skipped=summary["skipped"], failed=summary["failed"])
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["frames_per_second"] = round(summary["frames"] / summary["seconds"], 2) if summary["seconds"] else 0.0
    summary["run_record"] = write_run_record(store, summary, config)
    _publish_summary(summary, store)
    return summary


def _publish_summary(summary: dict, store: str) -> None:
    """The run's counts (and its failures, if any) as Prefect table artifacts."""
    counts = {k: summary[k] for k in ("done", "skipped", "failed", "frames", "seconds", "frames_per_second")}
    publish_table(
        [counts],
        key="vqa-extract",
        description=f"extraction into {store}; feature sets: {', '.join(summary['feature_sets'])}",
    )
    if summary["failures"]:
        publish_table(
            [{"video_id": v, "reason": r} for v, r in summary["failures"].items()],
            key="vqa-extract-failures",
            description=f"videos that failed (extraction into {store})",
        )


def _runner_distributes() -> bool:
    """Whether this flow run's task runner runs tasks outside this process (Dask, Ray, ...)."""
    context = FlowRunContext.get()
    return context is not None and not isinstance(context.task_runner, ThreadPoolTaskRunner)


def _extract_submitted(
    entries,
    feature_store: FeatureStore,
    set_ids: list[str],
    store: str,
    config: ExtractionConfig,
    summary: dict,
    *,
    resources: dict[str, float] | None,
    progress: bool,
) -> None:
    """Submit one task per pending video to the flow's task runner; record results as they finish."""
    pending = []
    for entry in entries:
        if all(feature_store.has_video(s, entry.video_id) for s in set_ids):
            summary["skipped"] += 1
        else:
            pending.append(entry)
    with dask.annotate(resources=dict(resources)) if resources else nullcontext():
        futures = {extract_video_task.submit(e.video_id, str(e.path), store, config): e.video_id for e in pending}
    logger.info("submitted %d video task(s); %d already stored", len(futures), summary["skipped"])
    with tqdm(total=len(futures), desc="extract", unit="video", disable=not progress) as bar:
        for future in as_completed(list(futures)):
            future.wait()
            _record(summary, futures[future], future.state, reason=_lost_worker_reason(future))
            bar.update()
            bar.set_postfix(done=summary["done"], skipped=summary["skipped"], failed=summary["failed"])


def _record(summary: dict, video_id: str, state, *, reason: str | None = None) -> None:
    """Add one finished video task's final state to the run summary (``reason``: why it failed,
    when the state cannot say, e.g. its worker was lost)."""
    if state.is_completed():
        result = state.result()
        summary[result["status"]] += 1
        summary["frames"] += result.get("frames", 0)
        for name, steps in result.get("steps", {}).items():
            summary["steps"][name] = summary["steps"].get(name, 0) + steps
    else:
        summary["failed"] += 1
        failure, trace = (reason, None) if reason else _failure_details(state)
        summary["failures"][video_id] = " ".join(failure.split())  # one line: the CLI prints one per video
        if trace:
            summary["tracebacks"][video_id] = trace
        # the summary lists every failure at the end; a live warning would print each twice
        logger.info("failed %s: %s", video_id, summary["failures"][video_id])


def _lost_worker_reason(future) -> str | None:
    """Why a Dask-run video task ended without a final Prefect state, or ``None`` when it has one.

    A task whose worker process died (SIGKILL, out of host memory, a crash in native code) is
    rescheduled by Dask on another worker; after ``distributed.scheduler.allowed-failures``
    (default 3) lost workers, or for tasks queued on a worker that died, Dask gives up with
    ``KilledWorker`` and the task run stays Running/Pending in Prefect. The reason says so,
    and the task run is marked Crashed (best effort)."""
    state = future.state
    if state.is_final():
        return None
    wrapped = getattr(future, "wrapped_future", None)
    if getattr(wrapped, "status", None) not in ("error", "cancelled"):  # not a Dask future, or no Dask failure
        return None
    try:
        exc = wrapped.exception(timeout=30)  # done already: a round trip to the client's event loop
    except Exception as error:  # noqa: BLE001  (cancelled, timed out: report what we know)
        exc = error
    if exc is None:
        return None
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        reason = (
            f"lost Dask worker: the worker process running this video died (killed, out of memory or "
            f"crashed) and Dask gave up on the task; no half-written features count, re-run to retry it "
            f"({type(exc).__name__}: {exc})"
        )
    else:  # e.g. cancelled, or the task could not even start on its worker
        reason = f"Dask could not run the task ({type(exc).__name__}: {exc}); re-run to retry it"
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_task_run_state(future.task_run_id, Crashed(message=reason), force=True)
    except Exception as error:  # noqa: BLE001  (the API's view is a convenience; the summary has the reason)
        logger.debug("could not mark task run %s crashed: %s", future.task_run_id, error)
    return reason


def _failure_details(state) -> tuple[str, str | None]:
    """A failed task's reason (``"<type>: <message>"``) and its traceback text, when known."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by Prefect
        # PortableTaskError prints as "<original type>: <message>" already
        reason = str(exc) if isinstance(exc, PortableTaskError) else f"{type(exc).__name__}: {exc}"
        return reason, getattr(exc, "task_traceback", None)
    return state.message or state.name, None
