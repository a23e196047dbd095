"""Prefect flows for the jobs besides ``extract_flow``: fit, evaluate (several heads side by
side), predict, and extraction of the new videos of a folder (what the nightly schedule runs).

::

    fit_flow       --fit_task(fit_job)--> OUT/{metrics.json, predictions.csv, scatter.png, model/}
    evaluate_flow  --fit_task per head--> OUT/<head>/...  --compare_runs/write_comparison-->
                   OUT/{comparison.md, comparison.csv}
    predict_flow   --predict_task(predict_job)--> scores CSV
    extract_folder_flow
                   FOLDER --write_folder_listing--> <store>/_runs/extract-folder-<stamp>.csv
                          --extract_flow (subflow; skips stored videos; Dask if asked)--> store

The flows are thin: the work is ``flows.fit`` and ``flows.extract``. Each publishes its
results as Prefect artifacts (best effort: an artifact that cannot be created is logged, the
flow goes on). ``vqa fit`` / ``vqa predict`` call the plain jobs (no Prefect start-up);
``vqa evaluate`` and ``vqa extract-folder`` run these flows; every flow here can be deployed
(``flows.orchestration.build_deployment``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from feature_store import FeatureStore
from regressors.metrics import METRIC_NAMES
from regressors.report import compare_runs, write_comparison

from . import prefect_env  # noqa: F401  (must precede the prefect import)
from .errors import FlowError
from .extract import DEFAULT_PREFETCH, extract_flow

# the folder's listing needs no Prefect (vqa extract-folder lists it before starting); re-exported here
from .extract_plan import VIDEO_SUFFIXES, scan_video_folder, write_folder_listing, write_folder_manifest  # noqa: F401
from .fit import fit_job, predict_job
from .orchestration import make_task_runner, publish_markdown, publish_table, require_api_server

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# fit / evaluate / predict
# --------------------------------------------------------------------------------------------


@task(name="fit-head", cache_policy=NO_CACHE)
def fit_task(options: dict) -> dict:
    """``flows.fit.fit_job(**options)``; returns its median metrics (small: Prefect records them)."""
    return fit_job(**options)


@task(name="predict", cache_policy=NO_CACHE)
def predict_task(options: dict) -> str:
    """``flows.fit.predict_job(**options)``; returns the written CSV's path."""
    return str(predict_job(**options))


def _metric_rows(metrics: dict) -> list[dict]:
    return [{"metric": k, "value": metrics[k]} for k in METRIC_NAMES if k in metrics]


def _fit_options(**options) -> dict:
    """fit_job keyword arguments with paths as strings and an own copy of head parameters."""
    options["head_params"] = dict(options.get("head_params") or {})
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


@flow(name="vqa-fit")
def fit_flow(
    *,
    store: str,
    manifest: str,
    features: list[str],
    out: str,
    head: str = "svr",
    protocol: str = "fmc",
    pooling: str = "mean",
    n_repeats: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    head_params: dict | None = None,
    test_manifest: str | None = None,
    test_store: str | None = None,
    progress: bool = False,
) -> dict:
    """Fit and evaluate one head on stored features (``flows.fit.fit_job``, same arguments;
    ``n_repeats`` overrides the protocol's repeats). Writes the report and model to ``out``
    and publishes the median metrics (table) and the report's paths (markdown) as artifacts.
    Returns the median metrics."""
    metrics = fit_task(
        _fit_options(
            store=store,
            manifest=manifest,
            features=list(features),
            out=out,
            head=head,
            protocol=protocol,
            pooling=pooling,
            n_repeats=n_repeats,
            seed=seed,
            progress=progress,
            overwrite=overwrite,
            head_params=head_params,
            test_manifest=test_manifest,
            test_store=test_store,
        )
    )
    publish_table(
        _metric_rows(metrics),
        key="vqa-fit-metrics",
        description=f"{head} on {'+'.join(features)} ({protocol}): median metrics",
    )
    publish_markdown(_report_markdown(Path(out), head), key="vqa-fit-report", description=f"report of {head}")
    return metrics


def _report_markdown(out: Path, title: str) -> str:
    files = ("metrics.json", "predictions.csv", "scatter.png", "model")
    return f"### {title}\n\n" + "\n".join(f"- `{out / name}`" for name in files) + "\n"


@flow(name="vqa-evaluate")
def evaluate_flow(
    *,
    store: str,
    manifest: str,
    features: list[str],
    out: str,
    heads: list[str],
    protocol: str = "fmc",
    pooling: str = "mean",
    n_repeats: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    head_params: dict[str, dict] | None = None,
    test_manifest: str | None = None,
    test_store: str | None = None,
    progress: bool = False,
) -> dict:
    """One protocol, several heads, the same features: fit each head into ``out/<head>/`` (as
    ``vqa fit`` would), then put them side by side in ``out/comparison.md`` and
    ``out/comparison.csv`` (``regressors.report``).

    ``head_params`` maps a head name to its overrides (``{"vsfa": {"epochs": 20}}``). Every
    head uses the same splits (same ``protocol``, ``seed`` and manifest). A head that fails is
    recorded with its reason and the others go on; the comparison holds the heads that
    finished. Publishes the comparison (table) and its paths (markdown) as artifacts.

    Returns ``{"heads": {head: median metrics}, "failures": {head: reason},
    "comparison": {"markdown": path, "csv": path}}``.

    Raises:
        FlowError: no heads, a repeated head, a head without its folder name, or every head failed.
    """
    heads = list(heads)
    if not heads:
        raise FlowError("name at least one head to evaluate")
    repeated = sorted({h for h in heads if heads.count(h) > 1})
    if repeated:
        raise FlowError(f"head(s) named twice: {', '.join(repeated)} (each writes to OUT/<head>/)")
    unknown = sorted(set(head_params or {}) - set(heads))
    if unknown:
        raise FlowError(f"head parameters given for head(s) not evaluated: {', '.join(unknown)}")
    out_dir = Path(out)
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for head in heads:
        options = _fit_options(
            store=store,
            manifest=manifest,
            features=list(features),
            out=out_dir / head,
            head=head,
            protocol=protocol,
            pooling=pooling,
            n_repeats=n_repeats,
            seed=seed,
            progress=progress,
            overwrite=overwrite,
            head_params=(head_params or {}).get(head),
            test_manifest=test_manifest,
            test_store=test_store,
        )
        state = fit_task.with_options(task_run_name=f"fit-{head}")(options, return_state=True)
        try:
            results[head] = state.result()
        except Exception as exc:  # noqa: BLE001  (the task's own exception, re-raised by Prefect)
            failures[head] = f"{type(exc).__name__}: {exc}"
            logger.warning("head %s failed: %s", head, failures[head])
    if not results:
        raise FlowError("every head failed: " + "; ".join(f"{h}: {r}" for h, r in failures.items()))
    rows = compare_runs([out_dir / head for head in heads if head in results])
    paths = write_comparison(out_dir, rows)
    publish_table(
        [{k: v for k, v in row.items() if k != "scatter"} for row in rows],
        key="vqa-evaluate",
        description=f"{protocol} on {'+'.join(features)}: heads side by side",
    )
    failed = "".join(f"\n- **{h} failed**: {r}" for h, r in failures.items())
    publish_markdown(
        f"### comparison\n\n- `{paths['markdown']}`\n- `{paths['csv']}`{failed}\n\n"
        + paths["markdown"].read_text().split("\n\n")[0]
        + "\n",
        key="vqa-evaluate-report",
        description="comparison of heads",
    )
    return {"heads": results, "failures": failures, "comparison": {k: str(v) for k, v in paths.items()}}


@flow(name="vqa-predict")
def predict_flow(*, model: str, store: str, manifest: str, out: str) -> str:
    """Score the manifest's videos with a saved head (``flows.fit.predict_job``: refuses
    features made differently from the training ones). Publishes the CSV's path and the
    number of videos scored as an artifact. Returns the CSV's path."""
    path = predict_task({"model": str(model), "store": str(store), "manifest": str(manifest), "out": str(out)})
    with open(path, newline="") as fh:
        n = sum(1 for _ in csv.DictReader(fh))
    publish_markdown(
        f"### predictions\n\n- `{path}`: {n} videos scored with `{model}`\n",
        key="vqa-predict",
        description=f"predictions of {model}",
    )
    return path


# --------------------------------------------------------------------------------------------
# The new videos of a folder
# --------------------------------------------------------------------------------------------


@flow(name="vqa-extract-folder")
def extract_folder_flow(
    *,
    folder: str,
    store: str,
    extractors: list[str],
    weights: dict[str, str] | None = None,
    sampling: str | dict[str, str] = "all",
    device: str = "auto",
    batch_size: int = 16,
    manifest_out: str | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    resources: dict[str, float] | None = None,
    progress: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
    prefetch: int = DEFAULT_PREFETCH,
    options: dict[str, dict] | None = None,
) -> dict:
    """Extract the videos of ``folder`` that ``store`` does not hold yet: the nightly job.

    Lists the folder's video files (:func:`~flows.extract_plan.scan_video_folder`; ids are relative paths), writes
    that manifest to ``manifest_out`` (default ``<store>/_runs/extract-folder-<UTC stamp>.csv``;
    for a store URL, a local temporary file that is also copied there)
    and runs ``extract_flow`` on it as a subflow, which skips every video already complete in
    the store for all requested extractors and records failures (retried on the next run).
    ``dask_address`` / ``dask_workers`` / ``resources`` choose a Dask task runner for the
    subflow (``flows.orchestration.make_task_runner``); they need a real Prefect server.

    Returns ``extract_flow``'s summary plus ``manifest`` and ``videos`` (files found); with no
    video files nothing is extracted and ``videos`` is 0.
    """
    runner = make_task_runner(address=dask_address, n_workers=dask_workers, resources=resources, device=device)
    if runner is not None:
        require_api_server("a Dask extraction")
    feature_store = FeatureStore(store)  # store created (or checked) before it receives the manifest
    manifest, n_videos = write_folder_listing(folder, feature_store, manifest_out=manifest_out)
    logger.info("%s: %d video file(s), listed in %s", folder, n_videos, manifest)
    if not n_videos:
        publish_markdown(f"no video files in `{folder}`", key="vqa-extract-folder", description="nothing to do")
        return {
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "frames": 0,
            "failures": {},
            "videos": 0,
            "manifest": str(manifest),
        }
    subflow = extract_flow if runner is None else extract_flow.with_options(task_runner=runner)
    summary = subflow(
        manifest=str(manifest),
        store=str(store),
        extractors=list(extractors),
        weights=weights,
        sampling=sampling,
        device=device,
        batch_size=batch_size,
        progress=progress,
        root=str(Path(folder).expanduser().resolve()),
        resources=resources,
        precision=precision,
        channels_last=channels_last,
        prefetch=prefetch,
        options=options,
    )
    return {**summary, "videos": n_videos, "manifest": str(manifest)}
