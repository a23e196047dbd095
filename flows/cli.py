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


def _extract(args) -> int:
    from .extract import extract_flow, parse_per_extractor_option
    from .manifest import read_manifest

    read_manifest(args.manifest, root=args.root)  # a bad manifest is reported here, before Prefect starts

    weights = parse_per_extractor_option(args.weights or [], args.extractor)
    samplings = args.sampling or ["all"]
    sampling = samplings[0] if len(samplings) == 1 and "=" not in samplings[0] \
        else parse_per_extractor_option(samplings, args.extractor)
    summary = extract_flow(
        manifest=args.manifest, store=args.store, extractors=args.extractor, weights=weights,
        sampling=sampling, device=args.device, batch_size=args.batch_size, progress=not args.quiet, root=args.root,
    )
    print(f"done {summary['done']}  skipped {summary['skipped']}  failed {summary['failed']}  "
          f"({summary['frames']} steps of {args.extractor[0]} in {summary['seconds']} s, "
          f"{summary['frames_per_second']} steps/s)")
    for video_id, reason in summary["failures"].items():
        print(f"  failed {video_id}: {reason}")
    return 1 if summary["failed"] else 0


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
                      test_store=args.test_store)
    print(format_metrics_table(metrics))
    print(f"report: {args.out}")
    return 0


def _report(args) -> int:
    from regressors.report import compare_runs, write_comparison

    paths = write_comparison(args.out, compare_runs(args.runs))
    print(paths["markdown"].read_text().split("\n\n")[0])
    print(f"\nwritten: {paths['markdown']}, {paths['csv']}")
    return 0


def _predict(args) -> int:
    from .fit import predict_job

    print(predict_job(model=args.model, store=args.store, manifest=args.manifest, out=args.out))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqa", description="Video quality assessment feature-store pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library and Prefect logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract features for a manifest into a store (Prefect flow)")
    p.add_argument("manifest", help="CSV with video_id,path[,mos][,group]")
    p.add_argument("--store", required=True, help="feature store directory (created if missing)")
    p.add_argument("--extractor", action="append", required=True, help="registered extractor name (repeatable)")
    p.add_argument("--weights", action="append",
                   help="imagenet | random[:SEED] | PATH, or NAME=CHOICE for one extractor (repeatable)")
    p.add_argument("--sampling", action="append",
                   help="all | uniform:N | fps:K | clips:L, or NAME=STRATEGY for one extractor (repeatable; "
                        "default all; clip extractors keep their clips)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--root", help="refuse manifest paths that resolve outside this folder (the dataset root)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)

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
    p.add_argument("--store", required=True)
    p.add_argument("--manifest", required=True, help="manifest with mos (and optional group)")
    p.add_argument("--features", action="append", required=True,
                   help="feature set id or extractor name (repeatable: sets are concatenated)")
    p.add_argument("--head", default="svr", help="svr (default) | svr-bvqa | vsfa | a2inet | dualpath")
    p.add_argument("--head-param", action="append",
                   help="override a head setting, KEY=VALUE (repeatable), e.g. epochs=20 lr=1e-4")
    p.add_argument("--protocol", default="fmc",
                   help="fmc (20x5-fold, default) | a2inet (10x 80/20) | vsfa (10x 60/20/20)")
    p.add_argument("--test-manifest", help="cross-dataset: train on --manifest, test on this manifest")
    p.add_argument("--test-store", help="store holding the test manifest's features (default --store)")
    p.add_argument("--pooling", default="mean", help="temporal pooling: mean | max | meanmax")
    p.add_argument("--repeats", type=int, help="override the protocol's number of repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace a report and model already in --out")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_fit)

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
