"""The ``vqa`` command line. Thin: parses arguments, calls flows and jobs, prints results."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import prefect_env  # noqa: F401  (before anything imports prefect)
from .errors import FlowError

EXIT_USAGE = 2


def _extraction_params(args) -> dict:
    """extract_flow keyword arguments shared by extract, extract-folder and serve."""
    from .extract import parse_per_extractor_option
    from pipeline.extractors.base import check_compute_options

    weights = parse_per_extractor_option(args.weights or [], args.extractor)
    samplings = args.sampling or ["all"]
    sampling = samplings[0] if len(samplings) == 1 and "=" not in samplings[0] \
        else parse_per_extractor_option(samplings, args.extractor)
    # a bad combination (fp16 on CPU) is reported here, before Prefect starts
    check_compute_options(precision=args.precision, channels_last=args.channels_last, device=args.device)
    params = {"store": args.store, "extractors": args.extractor, "weights": weights, "sampling": sampling,
              "device": args.device, "batch_size": args.batch_size, "precision": args.precision,
              "channels_last": args.channels_last}
    if args.prefetch is not None:
        params["prefetch"] = args.prefetch
    return params


def _dask_options(args) -> dict:
    from .orchestration import parse_resources

    n_workers = args.dask_workers
    if n_workers == "auto":  # one worker per GPU (1 without GPUs)
        from pipeline.runner import gpu_worker_count

        n_workers = gpu_worker_count(args.device)
    return {"address": args.dask_address, "n_workers": n_workers,
            "resources": parse_resources(args.dask_resource or []) or None, "device": args.device}


def _announce_server(dask: dict) -> None:
    from .orchestration import configured_api_url

    if (dask["address"] or dask["n_workers"]) and not configured_api_url():
        print("PREFECT_API_URL is not set: starting a Prefect server for the Dask workers (10-20 s) ...",
              file=sys.stderr, flush=True)


def _print_summary(summary: dict, extractor: str) -> int:
    print(f"done {summary['done']}  skipped {summary['skipped']}  failed {summary['failed']}  "
          f"({summary['frames']} steps of {extractor} in {summary.get('seconds', 0)} s, "
          f"{summary.get('frames_per_second', 0)} steps/s)")
    for video_id, reason in summary["failures"].items():
        print(f"  failed {video_id}: {reason}")
    return 1 if summary["failed"] else 0


def _extract(args) -> int:
    from .extract import extract_flow
    from .manifest import read_manifest
    from .orchestration import dask_session

    read_manifest(args.manifest, root=args.root)  # a bad manifest is reported here, before Prefect starts
    params = _extraction_params(args)
    dask = _dask_options(args)
    _announce_server(dask)
    with dask_session(**dask) as runner:  # Dask: a real Prefect server unless PREFECT_API_URL is set
        flow = extract_flow if runner is None else extract_flow.with_options(task_runner=runner)
        summary = flow(manifest=args.manifest, **params, progress=not args.quiet, root=args.root,
                       resources=dask["resources"])
    return _print_summary(summary, args.extractor[0])


def _extract_folder(args) -> int:
    from .jobs import extract_folder_flow, scan_video_folder
    from .orchestration import dask_session

    scan_video_folder(args.folder)  # a missing folder is reported here, before Prefect starts
    dask = _dask_options(args)
    _announce_server(dask)
    with dask_session(**dask):
        summary = extract_folder_flow(folder=args.folder, **_extraction_params(args), manifest_out=args.manifest_out,
                                      dask_address=dask["address"], dask_workers=dask["n_workers"],
                                      resources=dask["resources"], progress=not args.quiet)
    print(f"{summary['videos']} video file(s) in {args.folder}; manifest {summary['manifest']}")
    return _print_summary(summary, args.extractor[0])


def _serve(args) -> int:
    from .orchestration import build_deployment, ensure_api_server, serve_deployments

    params = _extraction_params(args)
    if args.flow == "extract":
        params["manifest"] = args.source
    else:
        dask = _dask_options(args)
        params.update(folder=args.source, dask_address=dask["address"], dask_workers=dask["n_workers"],
                      resources=dask["resources"])
    params["progress"] = False
    params = {k: v for k, v in params.items() if v is not None}
    deployment = build_deployment(args.flow, name=args.name, cron=args.cron, timezone=args.timezone,
                                  parameters=params)
    with ensure_api_server(port=args.server_port, ui=True) as url:
        full_name = f"{deployment.flow_name}/{deployment.name}"
        print(f"serving {full_name} (cron {args.cron!r}, {args.timezone or 'UTC'}) against {url}\n"
              f"run it now:  PREFECT_API_URL={url} prefect deployment run '{full_name}'\n"
              "stop with Ctrl-C", flush=True)
        serve_deployments(deployment)
    return 0


def _extractors(args) -> int:
    from pipeline.extractors import list_extractors

    rows = [(e.name, str(e.dims), e.default_weights, ", ".join(e.weights_choices), e.description)
            for e in list_extractors()]
    header = ("name", "dims", "default", "weights", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
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
        print(f"  [{'x' if r['present'] else ' '}] {r['title']}  ->  {r['path']}\n      used by {', '.join(r['used_by'])}")
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
    what = f"{len(args.video)} video(s) of {set_id}" if args.video else f"the whole feature set {set_id} " \
        f"({len(store.video_ids(set_id))} videos)"
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
    counts = export_hdf5(store, args.out, set_ids=[store.resolve(s) for s in args.set] if args.set else None,
                         overwrite=args.overwrite)
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
        raise FlowError("importing a .npy folder needs --spec (JSON file describing how the features were made) "
                        "and --sampling (e.g. all)")
    from pipeline.sampling import parse_sampling

    spec = json.loads(open(args.spec, encoding="utf-8").read())
    print(import_npy_folder(store, args.source, spec=spec, sampling=parse_sampling(args.sampling).to_dict(),
                            pattern=args.pattern, overwrite=args.overwrite))
    return 0


def _dataset_list(args) -> int:
    from .datasets import list_datasets

    for name, layout in list_datasets():
        print(f"{name:<16} {layout}")
    return 0


def _dataset_make(args) -> int:
    from .datasets import make_manifest

    report = make_manifest(args.name, args.root, out=args.out, check_files=not args.no_check_files,
                           overwrite=args.overwrite, label_file=args.labels, split=args.split)
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

    metrics = fit_job(store=args.store, manifest=args.manifest, features=args.features, out=args.out,
                      head=args.head, protocol=args.protocol, pooling=args.pooling, n_repeats=args.repeats,
                      seed=args.seed, progress=not args.quiet, overwrite=args.overwrite,
                      head_params=_parse_params(args.head_param or []), test_manifest=args.test_manifest,
                      test_store=args.test_store, restart=args.restart,
                      notify=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_metrics_table(metrics))
    print(f"report: {args.out}")
    return 0


def _report(args) -> int:
    from regressors.report import compare_runs, write_comparison

    paths = write_comparison(args.out, compare_runs(args.runs))
    print(paths["markdown"].read_text().split("\n\n")[0])
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
    from .jobs import evaluate_flow

    heads = args.head or ["svr"]
    result = evaluate_flow(store=args.store, manifest=args.manifest, features=args.features, out=args.out,
                           heads=heads, protocol=args.protocol, pooling=args.pooling, n_repeats=args.repeats,
                           seed=args.seed, overwrite=args.overwrite,
                           head_params=_parse_head_params(args.head_param or [], heads),
                           test_manifest=args.test_manifest, test_store=args.test_store, progress=not args.quiet)
    print(open(result["comparison"]["markdown"], encoding="utf-8").read().split("\n\n")[0])
    print(f"\nwritten: {result['comparison']['markdown']}, {result['comparison']['csv']}; "
          f"one report folder per head in {args.out}")
    for head, reason in result["failures"].items():
        print(f"  failed {head}: {reason}")
    return 1 if result["failures"] else 0


def _predict(args) -> int:
    from .fit import predict_job

    print(predict_job(model=args.model, store=args.store, manifest=args.manifest, out=args.out))
    return 0


def _finetune(args) -> int:
    from .finetune import finetune_flow

    result = finetune_flow(manifest=args.manifest, out=args.out, recipe=args.recipe, start=args.start,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                           device=args.device, seed=args.seed, resume=not args.no_resume, progress=not args.quiet)
    print(f"best epoch {result['best_epoch']}: {result['best']}")
    print(f"checkpoint: {result['checkpoint']}  (use with: vqa extract ... --weights {result['extractor']}="
          f"{result['checkpoint']})")
    return 0


def _demo(args) -> int:
    from regressors.report import format_metrics_table

    from .demo import run_demo

    result = run_demo(out=args.out, weights=args.weights, n_sources=args.sources, progress=not args.quiet)
    ex = result["extraction"]
    print(f"\nextraction: done {ex['done']}, skipped {ex['skipped']}, failed {ex['failed']}, "
          f"{ex['frames_per_second']} frames/s  (weights: {result['weights']})")
    print(format_metrics_table(result["metrics"]))
    print(f"report folder: {result['report']}  (metrics.json, predictions.csv, scatter.png)")
    return 0


def _add_extraction_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="feature store directory or URL (s3://...; created if missing)")
    p.add_argument("--extractor", action="append", required=True, help="registered extractor name (repeatable)")
    p.add_argument("--weights", action="append",
                   help="imagenet | random[:SEED] | PATH, or NAME=CHOICE for one extractor (repeatable)")
    p.add_argument("--sampling", action="append",
                   help="all | uniform:N | fps:K | clips:L, or NAME=STRATEGY for one extractor (repeatable; "
                        "default all; clip extractors keep their clips)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    _add_compute_options(p)


def _add_dask_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--dask-address", help="run one task per video on an existing Dask cluster "
                                              "(tcp://HOST:PORT; its workers need PREFECT_API_URL)")
    group.add_argument("--dask-workers", type=_worker_count, metavar="N|auto",
                       help="run one task per video on a local Dask cluster of N worker processes; with CUDA "
                            "devices each worker is pinned to one GPU (round-robin) and takes GPU=1; "
                            "auto: one worker per GPU (1 without GPUs)")
    p.add_argument("--dask-resource", action="append", metavar="NAME=AMOUNT",
                   help="Dask resource each video task needs, e.g. GPU=1 (repeatable; local workers declare it)")


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
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision the networks run in (autocast; fp16 on CUDA only). Recorded in the feature "
                        "set's spec: fp16/bf16 features form their own feature sets (default fp32)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory layout for the networks (own feature set, like --precision)")
    p.add_argument("--prefetch", type=_non_negative_int, metavar="N",
                   help="batches decoded ahead of the model per video, in a worker thread (0: no decode "
                        "thread; default 2). Does not change the features; recorded in the run record")


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """What fit and evaluate share: the data, the protocol and its splits."""
    p.add_argument("--store", required=True)
    p.add_argument("--manifest", required=True, help="manifest with mos (and optional group)")
    p.add_argument("--features", action="append", required=True,
                   help="feature set id or extractor name (repeatable: sets are concatenated)")
    p.add_argument("--protocol", default="fmc",
                   help="fmc (20x5-fold, default) | a2inet (10x 80/20) | vsfa (10x 60/20/20)")
    p.add_argument("--test-manifest", help="cross-dataset: train on --manifest, test on this manifest")
    p.add_argument("--test-store", help="store holding the test manifest's features (default --store)")
    p.add_argument("--pooling", default="mean", help="temporal pooling: mean | max | meanmax")
    p.add_argument("--repeats", type=int, help="override the protocol's number of repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqa", description="Video quality assessment feature-store pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library and Prefect logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract features for a manifest into a store (Prefect flow)")
    p.add_argument("manifest", help="CSV with video_id,path[,mos][,group]")
    _add_extraction_options(p)
    p.add_argument("--root", help="refuse manifest paths that resolve outside this folder (the dataset root)")
    _add_dask_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)

    p = sub.add_parser("extract-folder", help="extract the video files of a folder not yet in the store "
                                              "(ids: paths relative to the folder)")
    p.add_argument("folder", help="folder searched recursively for video files")
    _add_extraction_options(p)
    p.add_argument("--manifest-out", help="where to write the folder's manifest "
                                          "(default STORE/_runs/extract-folder-<time>.csv)")
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
        q.add_argument("--server-port", type=int, default=4200,
                       help="port of the Prefect server started when PREFECT_API_URL is not set (default 4200)")
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
    q = store_sub.add_parser("clean", help="delete leftovers of killed writers (staging entries, unfinished "
                                           "videos, interrupted removals); stored videos are never touched")
    q.add_argument("store")
    q.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="leftovers whose writer cannot be checked (another host, object stores) are deleted "
                        "only when this old; live writers on this host are always kept (default 3600)")
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

    p = sub.add_parser("fit", help="fit and evaluate a head on stored features")
    _add_evaluation_options(p)
    p.add_argument("--head", default="svr", help="svr (default) | svr-bvqa | vsfa | a2inet | dualpath")
    p.add_argument("--head-param", action="append",
                   help="override a head setting, KEY=VALUE (repeatable), e.g. epochs=20 lr=1e-4")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace a report and model already in --out")
    p.add_argument("--restart", action="store_true",
                   help="discard the progress of an interrupted run in --out and start over (by default a run "
                        "with the same configuration is resumed, and one with another configuration refused)")
    p.set_defaults(func=_fit)

    p = sub.add_parser("evaluate", help="fit several heads on the same features and compare them (Prefect flow)")
    _add_evaluation_options(p)
    p.add_argument("--head", action="append", help="head to evaluate (repeatable; default svr)")
    p.add_argument("--head-param", action="append",
                   help="HEAD:KEY=VALUE for one head, KEY=VALUE for all (repeatable), e.g. vsfa:epochs=20")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from feature_store.errors import FeatureStoreError
    from pipeline.errors import PipelineError
    from regressors.errors import RegressorError

    try:
        return args.func(args)
    except (PipelineError, FeatureStoreError, RegressorError, FlowError) as exc:
        print(f"vqa {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
