"""The ``vqa`` command line. Thin: checks arguments, calls flows and jobs, prints results.

Answers fast and plainly: everything checkable is checked before Prefect is imported
(``flows.cli_flows``: the extraction commands, ``flows.preflight``); a user error is one line
on stderr (``vqa CMD: error: what, where, what to do``) and exit status 2, with its traceback
only under ``-v``; library logs (Prefect, Dask, HTTP) stay off the console unless ``-v``.
Exit statuses: :data:`EPILOG`. Run as a program (``main()`` without ``argv``), a command that
started nothing leaves without the interpreter's teardown (about a second once torch is
loaded).

Length (over 600 lines): about half is the argparse definition and help text of every
subcommand; what the commands do lives in ``flows.cli_flows``, ``flows.preflight`` and the jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from . import prefect_env  # noqa: F401  (before anything imports prefect)
from .cli_flows import extract as _extract
from .cli_flows import extract_folder as _extract_folder
from .cli_flows import prefect_session
from .cli_flows import serve as _serve
from .errors import FlowError

EXIT_OK = 0
EXIT_FAILED = 1  # it ran, and something failed
EXIT_USAGE = 2  # a user error, found before anything was written
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away (`vqa store info S | head`)
EXIT_TERMINATED = 143  # 128 + SIGTERM

EPILOG = """\
exit status:
  0    done (also when there was nothing left to do)
  1    it ran, and something failed: a video could not be extracted (one line each; reasons
       and tracebacks in STORE/_runs/), `store verify` found a problem, a head failed in
       `evaluate`, or an unexpected error (-v shows its traceback)
  2    user error, one line on stderr, before anything is written: arguments, manifest and
       its files, store or output location, extractor names, samplings, compute options,
       weights
  130  interrupted (Ctrl-C); 143: terminated (SIGTERM)
  141  the output was closed early (e.g. `vqa store info S | head`)

-v shows library logs (Prefect, Dask) and tracebacks. Commands that run Prefect flows start a
Prefect server for the run (10-20 s) unless PREFECT_API_URL names a running one
(docs/orchestration.md).
"""

# Loggers whose records stay off the console unless -v (the run's results say what matters).
LIBRARY_LOGGERS = frozenset(
    {
        "prefect",
        "distributed",
        "httpx",
        "httpcore",
        "uvicorn",
        "fastapi",
        "asyncio",
        "alembic",
        "aiosqlite",
        "docket",
        "websockets",
        "urllib3",
        "fsspec",
        "tornado",
        "numcodecs",
        "h5py",
        "PIL",
        "matplotlib",
        "filelock",
    }
)
# The same for the child processes (Prefect's server, Dask workers), which read the environment;
# a user's own settings win.
QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",  # Prefect's console handler in Dask workers
    "DASK_LOGGING__DISTRIBUTED": "error",
}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that the same cleanup runs (servers stopped)."""


def _library_record(record: logging.LogRecord) -> bool:
    """False for a library's record below CRITICAL (a logging filter)."""
    return record.name.split(".", 1)[0] not in LIBRARY_LOGGERS or record.levelno >= logging.CRITICAL


@contextmanager
def _console(verbose: bool) -> Iterator[None]:
    """Logging for one command: INFO with ``verbose``, else WARNING with library loggers (and
    those of child processes, through :data:`QUIET_ENV`) kept quiet; SIGTERM raises like Ctrl-C.
    Restores the environment and the SIGTERM handler afterwards (``main`` may run in-process)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_library_record)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])  # no-op if configured
    added = {} if verbose else {k: v for k, v in QUIET_ENV.items() if k not in os.environ}
    os.environ.update(added)

    def terminate(signum, frame):
        raise _Terminated()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        for key in added:
            os.environ.pop(key, None)


def _user_error_types() -> tuple[type, ...]:
    """The project's error bases, from the packages this command imported (an error of a
    package never imported cannot have been raised; importing them all would cost seconds)."""
    bases = [FlowError]
    for module, name in (
        ("pipeline.errors", "PipelineError"),
        ("feature_store.errors", "FeatureStoreError"),
        ("regressors.errors", "RegressorError"),
        ("vqa_core.errors", "CoreError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            bases.append(getattr(loaded, name))
    return tuple(bases)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _silence_stdout() -> None:
    """The reader of stdout is gone: point stdout at /dev/null, so that the interpreter's last
    flush does not fail again (Python's documented recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _leave(code: int) -> None:
    """End the process now, skipping the interpreter's teardown (about a second once torch is
    loaded), when the command started nothing that needs it: no Prefect, no Dask, no thread."""
    if any(m in sys.modules for m in ("prefect", "distributed")) or threading.active_count() > 1:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _extractors(args) -> int:
    from pipeline.extractors import extractor_options, list_extractors

    rows = [
        (
            e.name,
            str(e.dims),
            e.default_weights,
            ", ".join(e.weights_choices),
            ", ".join(extractor_options(e.name)) or "-",
            e.description,
        )
        for e in list_extractors()
    ]
    header = ("name", "dims", "default", "weights", "options", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _weights(args) -> int:
    from pipeline.extractors import list_extractors
    from pipeline.weights import known_checkpoints

    print("extractor weights choices (default first):")
    for e in list_extractors():
        others = [c for c in e.weights_choices if c != e.default_weights]
        print(f"  {e.name:<32} {e.default_weights}  |  {', '.join(others)}")
    rows = known_checkpoints()
    missing = [r for r in rows if not r["present"]]
    print(f"\npublished checkpoints ({len(rows) - len(missing)} of {len(rows)} available locally):")
    for r in rows:
        print(
            f"  [{'x' if r['present'] else ' '}] {r['title']}  ->  {r['path']}\n      used by {', '.join(r['used_by'])}"
        )
        if not r["present"]:
            print(f"      how to get it: {r['how_to_get']}")
    return 0


def _store_verify(args) -> int:
    from feature_store import FeatureStore, verify

    store = FeatureStore(args.store, create=False)
    report = verify(store, set_ids=[store.resolve(s) for s in args.set] if args.set else None)
    print(report)
    return 0 if report.ok else 1


def _store_clean(args) -> int:
    from feature_store import FeatureStore

    store = FeatureStore(args.store, create=False)
    removed = store.remove_incomplete(min_age_s=args.min_age)
    print(f"removed {removed} leftover(s) of killed writers from {args.store}")
    return 0


def _store_rm(args) -> int:
    from feature_store import FeatureStore, remove

    store = FeatureStore(args.store, create=False)
    set_id = store.resolve(args.feature_set)
    what = (
        f"{len(args.video)} video(s) of {set_id}"
        if args.video
        else f"the whole feature set {set_id} ({len(store.video_ids(set_id))} videos)"
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise FlowError(f"refusing to remove {what} without confirmation: pass --yes")
        if input(f"remove {what} from {args.store}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    print(f"removed {remove(store, set_id, video_ids=args.video or None)} item(s)")
    return 0


def _store_export(args) -> int:
    from feature_store import FeatureStore, export_hdf5

    store = FeatureStore(args.store, create=False)
    counts = export_hdf5(
        store, args.out, set_ids=[store.resolve(s) for s in args.set] if args.set else None, overwrite=args.overwrite
    )
    for set_id, n in counts.items():
        print(f"{set_id}: {n} videos")
    print(f"written: {args.out}")
    return 0


def _store_import(args) -> int:
    from feature_store import FeatureStore, import_hdf5, import_npy_folder

    store = FeatureStore(args.store)
    if args.format == "hdf5":
        print(import_hdf5(store, args.source, overwrite=args.overwrite))
        return 0
    if not (args.spec and args.sampling):
        raise FlowError(
            "importing a .npy folder needs --spec (JSON file describing how the features were made) "
            "and --sampling (e.g. all)"
        )
    from pipeline.sampling import parse_sampling

    spec = json.loads(open(args.spec, encoding="utf-8").read())
    print(
        import_npy_folder(
            store,
            args.source,
            spec=spec,
            sampling=parse_sampling(args.sampling).to_dict(),
            pattern=args.pattern,
            overwrite=args.overwrite,
        )
    )
    return 0


def _store_migrate(args) -> int:
    from feature_store import FeatureStore, migrate

    store = FeatureStore(args.store, create=args.create, default_layout="packed" if args.create else None)
    print(migrate(store, set_ids=[store.resolve(s) for s in args.set] if args.set else None, min_age_s=args.min_age))
    print(f"{args.store}: new feature sets are packed (docs/store_layout.md)")
    return 0


def _dataset_list(args) -> int:
    from pipeline.datasets import list_datasets

    for name, layout in list_datasets():
        print(f"{name:<16} {layout}")
    return 0


def _dataset_make(args) -> int:
    from pipeline.datasets import make_manifest

    report = make_manifest(
        args.name,
        args.root,
        out=args.out,
        check_files=not args.no_check_files,
        overwrite=args.overwrite,
        label_file=args.labels,
        split=args.split,
        skip_missing=args.skip_missing,
    )
    print(f"{report.name}: {report.n_videos} rows -> {report.manifest}")
    if report.splits:
        print(f"split permutations: {report.splits}")
    for problem in report.problems:
        print(f"  warning: {problem}")
    return 0


def _store_info(args) -> int:
    from feature_store import FeatureStore, format_store_info

    print(format_store_info(FeatureStore(args.store, create=False).info()))
    return 0


def _parse_params(values: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values are JSON when they parse (numbers, true, lists), else strings."""
    params = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FlowError(f"--head-param {item!r}: expected KEY=VALUE, e.g. epochs=20")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _fit(args) -> int:
    from regressors.report import format_metrics_table

    from .fit import fit_job
    from .preflight import check_folder_location

    check_folder_location(args.out, what="--out")
    metrics = fit_job(
        store=args.store,
        manifest=args.manifest,
        features=args.features,
        out=args.out,
        head=args.head,
        protocol=args.protocol,
        pooling=args.pooling,
        n_repeats=args.repeats,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
        head_params=_parse_params(args.head_param or []),
        paper_schedule=args.paper_schedule,
        test_manifest=args.test_manifest,
        test_store=args.test_store,
        restart=args.restart,
        notify=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(format_metrics_table(metrics))
    print(f"report: {args.out}")
    return 0


def _report(args) -> int:
    from regressors.report import compare_runs, write_comparison

    from .preflight import check_folder_location

    check_folder_location(args.out, what="--out")
    paths = write_comparison(args.out, compare_runs(args.runs))
    table, settings_diff = paths["markdown"].read_text().split("\n\n")[:2]  # the table, then what differs
    print(table + "\n\n" + settings_diff)
    print(f"\nwritten: {paths['markdown']}, {paths['csv']}")
    return 0


def _parse_head_params(values: list[str], heads: list[str]) -> dict[str, dict]:
    """``HEAD:KEY=VALUE`` for one head, ``KEY=VALUE`` for every head (values as in --head-param of fit)."""
    params: dict[str, dict] = {}
    for item in values:
        head, sep, rest = item.partition(":")
        targets = [head] if sep and head in heads else heads
        pair = _parse_params([rest if sep and head in heads else item])
        for target in targets:
            params.setdefault(target, {}).update(pair)
    return params


def _evaluate(args) -> int:
    from .preflight import check_folder_location

    check_folder_location(args.out, what="--out")
    heads = args.head or ["svr"]
    head_params = _parse_head_params(args.head_param or [], heads)
    with prefect_session(announce=not args.quiet):
        from .jobs import evaluate_flow

        result = evaluate_flow(
            store=args.store,
            manifest=args.manifest,
            features=args.features,
            out=args.out,
            heads=heads,
            protocol=args.protocol or "fmc",  # one protocol: same splits for all
            pooling=args.pooling,
            n_repeats=args.repeats,
            seed=args.seed,
            overwrite=args.overwrite,
            head_params=head_params,
            test_manifest=args.test_manifest,
            test_store=args.test_store,
            progress=not args.quiet,
        )
    print(open(result["comparison"]["markdown"], encoding="utf-8").read().split("\n\n")[0])
    print(
        f"\nwritten: {result['comparison']['markdown']}, {result['comparison']['csv']}; "
        f"one report folder per head in {args.out}"
    )
    for head, reason in result["failures"].items():
        print(f"  failed {head}: {reason}")
    return 1 if result["failures"] else 0


def _predict(args) -> int:
    from .preflight import check_file_location

    check_file_location(args.out, what="--out", not_same_as=[("input manifest (--manifest)", args.manifest)])
    from .fit import predict_job

    print(predict_job(model=args.model, store=args.store, manifest=args.manifest, out=args.out))
    return 0


def _finetune(args) -> int:
    from vqa_core.manifest import read_manifest

    from .preflight import check_folder_location

    read_manifest(args.manifest, require_mos=True)
    check_folder_location(args.out, what="--out")
    with prefect_session(announce=not args.quiet):
        from .finetune import finetune_flow

        result = finetune_flow(
            manifest=args.manifest,
            out=args.out,
            recipe=args.recipe,
            start=args.start,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            image_size=args.image_size,
            device=args.device,
            seed=args.seed,
            resume=not args.no_resume,
            progress=not args.quiet,
        )
    print(f"best epoch {result['best_epoch']}: {result['best']}")
    print(
        f"checkpoint: {result['checkpoint']}  (use with: vqa extract ... --weights {result['extractor']}="
        f"{result['checkpoint']})"
    )
    return 0


def _demo(args) -> int:
    from regressors.report import format_metrics_table

    from .demo import run_demo
    from .preflight import check_folder_location

    check_folder_location(args.out, what="--out")
    with prefect_session(announce=not args.quiet):
        result = run_demo(out=args.out, weights=args.weights, n_sources=args.sources, progress=not args.quiet)
    ex = result["extraction"]
    print(
        f"\nextraction: done {ex['done']}, skipped {ex['skipped']}, failed {ex['failed']}, "
        f"{ex['frames_per_second']} frames/s  (weights: {result['weights']})"
    )
    print(format_metrics_table(result["metrics"]))
    print(f"report folder: {result['report']}  (metrics.json, predictions.csv, scatter.png)")
    return 0


def _add_extraction_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="feature store directory or URL (s3://...; created if missing)")
    p.add_argument("--extractor", action="append", required=True, help="registered extractor name (repeatable)")
    p.add_argument(
        "--weights",
        action="append",
        help="imagenet | random[:SEED] | PATH, or NAME=CHOICE for one extractor (repeatable)",
    )
    p.add_argument(
        "--sampling",
        action="append",
        help="all | uniform:N | fps:K | clips:L, or NAME=STRATEGY for one extractor (repeatable; "
        "default all; clip extractors keep their clips)",
    )
    p.add_argument(
        "--extractor-option",
        action="append",
        metavar="NAME:KEY=VALUE",
        help="builder option of one extractor, recorded in its spec (repeatable), e.g. "
        "unique:resampler=pil, resnet50:short_side=540; `vqa extractors` lists them",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    _add_compute_options(p)


def _add_dask_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--dask-address",
        help="run one task per video on an existing Dask cluster (tcp://HOST:PORT; its workers need PREFECT_API_URL)",
    )
    group.add_argument(
        "--dask-workers",
        type=_worker_count,
        metavar="N|auto",
        help="run one task per video on a local Dask cluster of N worker processes; with CUDA "
        "devices each worker is pinned to one GPU (round-robin) and takes GPU=1; "
        "auto: one worker per GPU (1 without GPUs)",
    )
    p.add_argument(
        "--dask-resource",
        action="append",
        metavar="NAME=AMOUNT",
        help="Dask resource each video task needs, e.g. GPU=1 (repeatable; local workers declare it)",
    )


def _worker_count(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or auto, got {text!r}") from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    """Compute options of the extraction commands: precision and layout (own feature sets), decode-ahead depth."""
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="precision the networks run in (autocast; fp16 on CUDA only). Recorded in the feature "
        "set's spec: fp16/bf16 features form their own feature sets (default fp32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory layout for the networks (own feature set, like --precision)",
    )
    p.add_argument(
        "--prefetch",
        type=_non_negative_int,
        metavar="N",
        help="batches decoded ahead of the model per video, in a worker thread (0: no decode "
        "thread; default 2). Does not change the features; recorded in the run record",
    )


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """What fit and evaluate share: the data, the protocol and its splits."""
    p.add_argument("--store", required=True)
    p.add_argument("--manifest", required=True, help="manifest with mos (and optional group)")
    p.add_argument(
        "--features",
        action="append",
        required=True,
        help="feature set id or extractor name (repeatable: sets are concatenated)",
    )
    p.add_argument(
        "--protocol",
        help="fmc (20x5-fold) | a2inet (10x 80/20) | vsfa (10x 60/20/20); default: the head's paper "
        "protocol for fit (svr: fmc, vsfa: vsfa, a2inet: a2inet), fmc for evaluate",
    )
    p.add_argument("--test-manifest", help="cross-dataset: train on --manifest, test on this manifest")
    p.add_argument("--test-store", help="store holding the test manifest's features (default --store)")
    p.add_argument("--pooling", default="mean", help="temporal pooling: mean | max | meanmax")
    p.add_argument("--repeats", type=int, help="override the protocol's number of repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqa",
        description="Video quality assessment feature-store pipeline",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show library logs (Prefect, Dask) and the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract features for a manifest into a store (Prefect flow)")
    p.add_argument("manifest", help="CSV with video_id,path[,mos][,group]")
    _add_extraction_options(p)
    p.add_argument("--root", help="refuse manifest paths that resolve outside this folder (the dataset root)")
    p.add_argument(
        "--redo-damaged",
        action="store_true",
        help="re-extract stored videos that `vqa store verify` finds damaged (reads every stored "
        "value of the feature sets first); by default stored videos are skipped",
    )
    _add_dask_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)

    p = sub.add_parser(
        "extract-folder",
        help="extract the video files of a folder not yet in the store (ids: paths relative to the folder)",
    )
    p.add_argument("folder", help="folder searched recursively for video files")
    _add_extraction_options(p)
    p.add_argument(
        "--manifest-out", help="where to write the folder's manifest (default STORE/_runs/extract-folder-<time>.csv)"
    )
    _add_dask_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract_folder)

    p = sub.add_parser("serve", help="serve a scheduled extraction deployment (runs until Ctrl-C)")
    serve_sub = p.add_subparsers(dest="flow", required=True)
    for flow_name, source_help in (("extract", "manifest CSV"), ("extract-folder", "folder of video files")):
        q = serve_sub.add_parser(flow_name, help=f"schedule `vqa {flow_name}`")
        q.add_argument("source", help=source_help)
        _add_extraction_options(q)
        if flow_name == "extract-folder":
            _add_dask_options(q)
        q.add_argument("--cron", required=True, help='cron schedule, e.g. "0 2 * * *" (02:00 every day)')
        q.add_argument("--timezone", help="time zone of the schedule, e.g. Europe/Paris (default UTC)")
        q.add_argument("--name", default="nightly", help="deployment name (default nightly)")
        q.add_argument(
            "--server-port",
            type=int,
            default=4200,
            help="port of the Prefect server started when PREFECT_API_URL is not set (default 4200)",
        )
        q.set_defaults(func=_serve)

    p = sub.add_parser("extractors", help="list registered extractors")
    p.set_defaults(func=_extractors)

    p = sub.add_parser("weights", help="which published weights are available locally, and how to get the rest")
    p.set_defaults(func=_weights)

    p = sub.add_parser("dataset", help="manifests for the public VQA/IQA datasets")
    dataset_sub = p.add_subparsers(dest="dataset_command", required=True)
    q = dataset_sub.add_parser("list", help="supported datasets and the folder layout each expects")
    q.set_defaults(func=_dataset_list)
    q = dataset_sub.add_parser("make", help="read a dataset as it ships and write a manifest")
    q.add_argument("name", help="dataset name (vqa dataset list)")
    q.add_argument("root", help="the dataset's folder")
    q.add_argument("--out", required=True, help="manifest CSV to write")
    q.add_argument("--labels", help="label file to read instead of the default one")
    q.add_argument("--split", help="lsvq: train | test | test-1080p")
    q.add_argument("--no-check-files", action="store_true", help="do not check that the media files exist")
    q.add_argument(
        "--skip-missing",
        action="store_true",
        help="keep only the videos whose files are present (each one left out is listed as a warning)",
    )
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_dataset_make)

    p = sub.add_parser("store", help="inspect a feature store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("info", help="feature sets with video counts, dims, bytes and provenance")
    q.add_argument("store")
    q.set_defaults(func=_store_info)
    q = store_sub.add_parser("verify", help="check every stored video; exit status 1 when anything is wrong")
    q.add_argument("store")
    q.add_argument("--set", action="append", help="only these feature sets (repeatable)")
    q.set_defaults(func=_store_verify)
    q = store_sub.add_parser(
        "clean",
        help="delete leftovers of killed writers (staging entries, unfinished "
        "videos, interrupted removals); stored videos are never touched",
    )
    q.add_argument("store")
    q.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="leftovers whose writer cannot be checked (another host, object stores) are deleted "
        "only when this old; live writers on this host are always kept (default 3600)",
    )
    q.set_defaults(func=_store_clean)
    q = store_sub.add_parser("rm", help="remove a feature set, or some of its videos (asks first)")
    q.add_argument("store")
    q.add_argument("feature_set", help="feature set id or extractor name")
    q.add_argument("--video", action="append", help="only these video ids (repeatable)")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    q.set_defaults(func=_store_rm)
    q = store_sub.add_parser("export", help="write feature sets to one HDF5 file")
    q.add_argument("store")
    q.add_argument("--out", required=True, help="HDF5 file to write")
    q.add_argument("--format", default="hdf5", choices=["hdf5"])
    q.add_argument("--set", action="append", help="only these feature sets (repeatable)")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_store_export)
    q = store_sub.add_parser("import", help="bring in features from an HDF5 export or a VSFA-style .npy folder")
    q.add_argument("store")
    q.add_argument("source", help="HDF5 file, or folder of per-video .npy files")
    q.add_argument("--format", default="hdf5", choices=["hdf5", "npy"])
    q.add_argument("--spec", help="npy: JSON file with the extractor spec (name, dims, ...)")
    q.add_argument("--sampling", help="npy: the sampling the features were made with")
    q.add_argument("--pattern", default="{video_id}.npy", help="npy: file name pattern")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_store_import)
    q = store_sub.add_parser(
        "migrate",
        help="convert feature sets to the packed layout (few files, for large "
        "collections) and compact packed ones; new sets are packed too",
    )
    q.add_argument("store")
    q.add_argument("--set", action="append", help="only these feature sets (repeatable)")
    q.add_argument(
        "--create", action="store_true", help="create the store if it does not exist (packed from the start)"
    )
    q.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="files of writers on other hosts are compacted only when this old (default 3600)",
    )
    q.set_defaults(func=_store_migrate)

    p = sub.add_parser("fit", help="fit and evaluate a head on stored features")
    _add_evaluation_options(p)
    p.add_argument(
        "--head",
        default="svr",
        help="svr (default) | svr-bvqa | svr-fast | svr-bvqa-fast | vsfa | a2inet | dualpath; "
        "svr and svr-bvqa switch to their -fast (Nystroem) form above 5,000 videos",
    )
    p.add_argument(
        "--head-param", action="append", help="override a head setting, KEY=VALUE (repeatable), e.g. epochs=20 lr=1e-4"
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace a report and model already in --out")
    p.add_argument(
        "--paper-schedule",
        action="store_true",
        help="train sequence heads with their paper's full schedule (vsfa: 2000 epochs at lr 1e-5, no "
        "early stopping) instead of the quick default that finishes in minutes (docs/analysis.md)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the progress of an interrupted run in --out and start over (by default a run "
        "with the same configuration is resumed, and one with another configuration refused)",
    )
    p.set_defaults(func=_fit)

    p = sub.add_parser("evaluate", help="fit several heads on the same features and compare them (Prefect flow)")
    _add_evaluation_options(p)
    p.add_argument("--head", action="append", help="head to evaluate (repeatable; default svr)")
    p.add_argument(
        "--head-param",
        action="append",
        help="HEAD:KEY=VALUE for one head, KEY=VALUE for all (repeatable), e.g. vsfa:epochs=20",
    )
    p.add_argument("--out", required=True, help="folder: OUT/<head>/ per head, OUT/comparison.{md,csv}")
    p.add_argument("--overwrite", action="store_true", help="replace reports and models already in OUT/<head>/")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="score videos with a saved head")
    p.add_argument("--model", required=True, help="the model folder written by vqa fit (REPORT/model)")
    p.add_argument("--store", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="CSV to write")
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="put several `vqa fit` runs side by side (markdown + CSV table)")
    p.add_argument("runs", nargs="+", help="report folders written by vqa fit")
    p.add_argument("--out", default="comparison", help="folder for comparison.md and comparison.csv")
    p.set_defaults(func=_report)

    p = sub.add_parser("finetune", help="fine-tune a backbone on an image-quality manifest (Prefect flow)")
    p.add_argument("manifest", help="CSV video_id,path,mos[,group] whose paths are images")
    p.add_argument("--out", required=True, help="folder for model.pt, model.json and the resumable state.pt")
    p.add_argument("--recipe", default="fmc-inception", help="fmc-inception | quality-resnet | quality-resnet50")
    p.add_argument("--start", default="imagenet", help="start weights: imagenet | random[:SEED] | PATH")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int, help="input size override (recorded in the sidecar)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming out/state.pt")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("demo", help="synthetic dataset -> extract -> fit -> report")
    p.add_argument("--out", default="demo-output", help="folder for data, store and report (default demo-output)")
    p.add_argument("--weights", help="imagenet | random | PATH (default: imagenet, else random with a warning)")
    p.add_argument("--sources", type=int, default=6, help="number of source photographs (default 6)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_demo)
    _accept_verbose_anywhere(parser)
    return parser


def _accept_verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (``vqa extract ... -v``), not only before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                sub.add_argument(
                    "-v",
                    "--verbose",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help="as vqa -v: library logs and tracebacks",
                )
                _accept_verbose_anywhere(sub)


def main(argv: list[str] | None = None) -> int:
    """Run one ``vqa`` command; returns its exit status (:data:`EPILOG`).

    Without ``argv`` (the ``vqa`` program) the arguments come from ``sys.argv`` and a command
    that started no Prefect, Dask or thread ends the process directly (:func:`_leave`).
    """
    args = build_parser().parse_args(argv)
    command = " ".join(
        ["vqa", args.command]
        + [getattr(args, a) for a in ("store_command", "dataset_command", "flow") if getattr(args, a, None)]
    )
    with _console(args.verbose):
        try:
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        except BrokenPipeError:
            _silence_stdout()
            code = EXIT_BROKEN_PIPE
        except _Terminated:
            print(f"{command}: terminated", file=sys.stderr)
            code = EXIT_TERMINATED
        except KeyboardInterrupt:
            print(f"{command}: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001  (every error ends as one line; -v adds the traceback)
            if args.verbose:
                traceback.print_exc()
            if isinstance(exc, _user_error_types()):
                print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
                code = EXIT_USAGE
            else:
                hint = "" if args.verbose else " (run with -v for the traceback)"
                print(f"{command}: failed: {type(exc).__name__}: {_one_line(exc)}{hint}", file=sys.stderr)
                code = EXIT_FAILED
    if argv is None:
        _leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
