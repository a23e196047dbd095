"""The ``vqa`` commands that run Prefect flows: ``extract``, ``extract-folder``, ``serve``, and the
Prefect session every flow command shares (``flows.cli`` parses the arguments).

Each extraction command checks everything it can before Prefect is imported, cheapest first::

    manifest (vqa_core.manifest), samplings, store and output locations   (flows.preflight; no torch)
      --> extractor names, compute options, weights of every extractor   (flows.extract_plan; torch)
      --> feature sets and the videos still to do; their files (os.stat)
      --> nothing to do: summary + run record, exit 0 -- Prefect never imported
      --> prefect_session(): PREFECT_API_URL, or a server that dies with this process
          --> the flow; one summary line, one line per failed video

Nothing is written before the checks pass (the store is created just before the flow).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import FlowError

logger = logging.getLogger(__name__)


def _note(message: str) -> None:
    """A status line on stderr (stdout holds the results)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Prefect, when there is work for it
# --------------------------------------------------------------------------------------------


@contextmanager
def prefect_session(dask: dict | None = None, *, announce: bool = True, **server_options) -> Iterator[object]:
    """Prefect for one command: the configured server (``PREFECT_API_URL``, a long-lived one),
    else a ``prefect server start`` that dies with this process even when it is SIGKILLed
    (``flows.orchestration.prefect_server``); with ``dask`` options, the Dask task runner too.

    Yields the task runner (``None`` without Dask options). Imports Prefect.
    """
    from .orchestration import configured_api_url, dask_session, ensure_api_server

    if announce and not configured_api_url():
        _note(
            "starting a Prefect server for this run (10-20 s; a long-lived one set in PREFECT_API_URL "
            "saves that, see docs/orchestration.md) ..."
        )
    with ensure_api_server(**server_options):
        with dask_session(**(dask or {})) as runner:
            yield runner


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _dask_options(args) -> dict:
    from .orchestration import parse_resources

    n_workers = args.dask_workers
    if n_workers == "auto":  # one worker per GPU (1 without GPUs)
        from pipeline.runner import gpu_worker_count

        n_workers = gpu_worker_count(args.device)
    return {
        "address": args.dask_address,
        "n_workers": n_workers,
        "resources": parse_resources(args.dask_resource or []) or None,
        "device": args.device,
    }


def _sampling_option(args, extractors: list[str]) -> str | dict[str, str]:
    """One sampling for every extractor, or NAME=STRATEGY per extractor."""
    from .extract_plan import parse_per_extractor_option

    samplings = args.sampling or ["all"]
    if len(samplings) == 1 and "=" not in samplings[0]:
        return samplings[0]
    return parse_per_extractor_option(samplings, extractors)


def _flow_params(args) -> dict:
    """extract_flow keyword arguments shared by extract, extract-folder and serve."""
    from .extract_plan import parse_extractor_options, parse_per_extractor_option

    params = {
        "store": args.store,
        "extractors": args.extractor,
        "weights": parse_per_extractor_option(args.weights or [], args.extractor),
        "sampling": _sampling_option(args, args.extractor),
        "device": args.device,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
    }
    if args.prefetch is not None:
        params["prefetch"] = args.prefetch
    if args.extractor_option:
        params["options"] = parse_extractor_options(args.extractor_option, args.extractor)
    return params


def _check_cheap(args) -> None:
    """What needs neither torch nor Prefect: samplings, store location, Dask options."""
    from .preflight import check_folder_location, check_prefect_api, check_samplings

    check_samplings(args.sampling or [])
    if "://" not in args.store:  # a URL is checked when the store is opened
        check_folder_location(args.store, what="--store")
    check_prefect_api()
    if args.batch_size < 1:
        raise FlowError(f"--batch-size must be at least 1, got {args.batch_size}")
    if getattr(args, "dask_workers", None) is not None and args.dask_workers != "auto" and args.dask_workers < 1:
        raise FlowError(f"--dask-workers must be at least 1 (or auto), got {args.dask_workers}")


def _check_weights_choice(name: str, choice: str | None) -> None:
    """A weights choice is a named one of the extractor, random[:SEED], or an existing file."""
    import difflib
    from pathlib import Path

    from pipeline.errors import WeightsUnavailableError
    from pipeline.extractors import get_entry

    entry = get_entry(name)
    if choice is None or choice in entry.weights_choices or choice.split(":", 1)[0] == "random":
        return
    if not Path(choice).expanduser().is_file():
        close = difflib.get_close_matches(choice, entry.weights_choices, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise WeightsUnavailableError(
            f"--weights {choice} for {name}: no such file, and not one of its named weights "
            f"({', '.join(entry.weights_choices)}); {hint}pass a named choice, random[:SEED] or a checkpoint file"
        )


def _prepare(args, *, root: str | None = None):
    """Extractor names, compute options and every extractor's weights (torch imported here);
    returns the extraction config (``root``: the dataset root, as the flow gets it) and the
    built extractors (cached: the flow in this process reuses them)."""
    from pipeline.errors import UnknownExtractorError
    from pipeline.extractors import get_entry

    from .extract_plan import build_extractors, extraction_config

    for name in args.extractor:
        try:
            get_entry(name)
        except UnknownExtractorError as exc:
            raise UnknownExtractorError(f"--extractor {name}: {exc}") from None
    params = _flow_params(args)
    for name in args.extractor:
        _check_weights_choice(name, params["weights"].get(name))
    options = {k: v for k, v in params.items() if k != "store"}
    config = extraction_config(**options, root=root)
    return config, build_extractors(config)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_summary(summary: dict, *, verbose: bool = False, note: str = "") -> int:
    """The run's counts and every extractor's steps in one line, then one line per failed
    video (tracebacks with ``verbose``; the run record has them). Returns the exit status:
    1 when a video failed."""
    parts = []
    if summary["done"]:
        steps = summary.get("steps") or {}
        counted = ", ".join(f"{n} {'steps of' if i == 0 else 'of'} {name}" for i, (name, n) in enumerate(steps.items()))
        parts.append(f"{counted} in {summary.get('seconds', 0)} s, {summary.get('frames_per_second', 0)} steps/s")
    if note:
        parts.append(note)
    print(
        f"done {summary['done']}  skipped {summary['skipped']}  failed {summary['failed']}"
        + (f"  ({'; '.join(parts)})" if parts else "")
    )
    for video_id, reason in summary["failures"].items():
        print(f"  failed {video_id}: {reason}")
    if summary["failures"]:
        if verbose:
            for video_id, trace in (summary.get("tracebacks") or {}).items():
                _note(f"--- {video_id}\n{trace.rstrip()}")
        if summary.get("run_record"):
            _note(f"{summary['failed']} video(s) failed; reasons and tracebacks: {summary['run_record']}")
    return 1 if summary["failed"] else 0


# --------------------------------------------------------------------------------------------
# vqa extract / extract-folder
# --------------------------------------------------------------------------------------------


def _plan(args, entries, config, built, *, manifest: str):
    """The videos still to do (after ``--redo-damaged`` removed the damaged ones); their
    files are checked here."""
    from .extract_plan import damaged_videos, plan_extraction, remove_damaged
    from .preflight import check_media_files

    plan = plan_extraction(entries, args.store, built, config)
    if getattr(args, "redo_damaged", False) and plan.stored:
        damaged = damaged_videos(args.store, plan.set_ids, [e.video_id for e in entries])
        if damaged:
            ids = sorted({v for videos in damaged.values() for v in videos})
            _note(
                f"re-extracting {len(ids)} damaged video(s): {', '.join(ids[:10])}"
                + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            )
            remove_damaged(args.store, damaged)
            plan = plan_extraction(entries, args.store, built, config)
    check_media_files(plan.pending, manifest=manifest)
    return plan


def _nothing_to_do(args, plan, config, started: float) -> int:
    """Every video is stored already: record the run and say so, without Prefect."""
    from .extract_plan import empty_summary, write_run_record

    summary = empty_summary(plan.set_ids, config.extractors)
    summary.update(skipped=plan.stored, seconds=round(time.perf_counter() - started, 2), frames_per_second=0.0)
    write_run_record(args.store, summary, config)
    return print_summary(summary, note=f"nothing to do: every video is stored in {', '.join(plan.set_ids)}")


def extract(args) -> int:
    """``vqa extract``."""
    from vqa_core.manifest import read_manifest

    started = time.perf_counter()
    entries = read_manifest(args.manifest, root=args.root)  # nothing is written before the manifest validates
    _check_cheap(args)
    dask = _dask_options(args)
    config, built = _prepare(args, root=args.root)
    plan = _plan(args, entries, config, built, manifest=args.manifest)
    if not plan.pending:
        return _nothing_to_do(args, plan, config, started)
    from feature_store import FeatureStore

    FeatureStore(args.store)  # created (or found foreign) now, before a server starts
    with prefect_session(dask, announce=not args.quiet) as runner:
        from .extract import extract_flow

        flow = extract_flow if runner is None else extract_flow.with_options(task_runner=runner)
        summary = flow(
            manifest=args.manifest,
            **_flow_params(args),
            progress=not args.quiet,
            root=args.root,
            resources=dask["resources"],
        )
    return print_summary(summary, verbose=args.verbose)


def extract_folder(args) -> int:
    """``vqa extract-folder``: lists the folder once here (skip warnings printed once), and
    again in the flow when there is work (its warnings then come from there)."""
    from pathlib import Path

    from feature_store import FeatureStore

    from .extract_plan import scan_video_folder, write_folder_listing
    from .preflight import check_file_location

    started = time.perf_counter()
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise FlowError(f"video folder {args.folder} is not a directory")
    _check_cheap(args)
    if args.manifest_out:
        check_file_location(args.manifest_out, what="--manifest-out")
    dask = _dask_options(args)
    config, built = _prepare(args, root=str(folder.resolve()))
    skipped: list[str] = []
    entries = scan_video_folder(folder, on_skip=skipped.append)
    plan = _plan(args, entries, config, built, manifest=args.folder)
    if not plan.pending:  # every file stored (or none found): no Prefect, and the warnings from here
        for message in skipped:
            logger.warning(message)
        if not entries:
            print(f"0 video files in {args.folder}; nothing to do")
            return 0
        manifest, n_videos = write_folder_listing(
            folder, FeatureStore(args.store, create=False), manifest_out=args.manifest_out, entries=entries
        )
        print(f"{n_videos} video file(s) in {args.folder}; manifest {manifest}")
        return _nothing_to_do(args, plan, config, started)
    FeatureStore(args.store)
    with prefect_session(dask, announce=not args.quiet):
        from .jobs import extract_folder_flow

        summary = extract_folder_flow(
            folder=args.folder,
            **_flow_params(args),
            manifest_out=args.manifest_out,
            dask_address=dask["address"],
            dask_workers=dask["n_workers"],
            resources=dask["resources"],
            progress=not args.quiet,
        )
    print(f"{summary['videos']} video file(s) in {args.folder}; manifest {summary['manifest']}")
    return print_summary(summary, verbose=args.verbose)


# --------------------------------------------------------------------------------------------
# vqa serve
# --------------------------------------------------------------------------------------------


def serve(args) -> int:
    """``vqa serve``: the same checks as the extraction itself (weights included: a nightly
    run should not be the first to find them missing), then serve until Ctrl-C or SIGTERM."""
    from pathlib import Path

    from vqa_core.manifest import read_manifest

    if args.flow == "extract":
        read_manifest(args.source)
    elif not Path(args.source).expanduser().is_dir():
        raise FlowError(f"video folder {args.source} is not a directory")
    _check_cheap(args)
    _prepare(args)
    from .extract_plan import _build

    _build.cache_clear()  # checked; the runs build their own, in their own processes
    params = _flow_params(args)
    if args.flow == "extract":
        params["manifest"] = args.source
    else:
        dask = _dask_options(args)
        params.update(
            folder=args.source,
            dask_address=dask["address"],
            dask_workers=dask["n_workers"],
            resources=dask["resources"],
        )
    params["progress"] = False
    params = {k: v for k, v in params.items() if v is not None}
    from .orchestration import build_deployment, serve_deployments

    deployment = build_deployment(args.flow, name=args.name, cron=args.cron, timezone=args.timezone, parameters=params)
    from .orchestration import ensure_api_server

    with ensure_api_server(port=args.server_port, ui=True) as url:
        full_name = f"{deployment.flow_name}/{deployment.name}"
        print(
            f"serving {full_name} (cron {args.cron!r}, {args.timezone or 'UTC'}) against {url}\n"
            f"run it now:  PREFECT_API_URL={url} prefect deployment run '{full_name}'\n"
            "stop with Ctrl-C or SIGTERM",
            flush=True,
        )
        serve_deployments(deployment)
    print(f"stopped serving {full_name}", flush=True)
    return 0
