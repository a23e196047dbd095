"""Stage 2 jobs: fit a head on cached features with an evaluation protocol, and predict."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_store import FeatureStore
from feature_store.errors import ProvenanceMismatchError
from regressors.persistence import load_head, save_head
from regressors.protocols import evaluate, random_splits, repeated_kfold_splits
from regressors.report import write_report
from regressors.svr import SVRHead

from .errors import FlowError
from .manifest import ManifestEntry, read_manifest

log = logging.getLogger(__name__)

# protocol name -> (split builder, default keyword arguments): the papers' protocols.
PROTOCOLS = {
    "fmc": (repeated_kfold_splits, {"n_splits": 5, "n_repeats": 20}),   # FMC: 20 x 5-fold, median of 100
    "a2inet": (random_splits, {"test_size": 0.2, "n_repeats": 10}),      # A2INet: 10 random 80/20 splits, median
}
HEADS = {"svr": SVRHead}


def load_features(
    store: FeatureStore, entries: Sequence[ManifestEntry], features: Sequence[str]
) -> tuple[list[np.ndarray], list[dict]]:
    """Read every manifest video from the named feature sets.

    Returns one ``[T, sum D]`` array per video (several sets are joined along the feature axis
    and must have equal step counts) and the identity of each feature set used.
    """
    if not features:
        raise FlowError("name at least one feature set (--features)")
    ids = [e.video_id for e in entries]
    set_ids = [store.resolve(name) for name in features]
    per_set = [store.read_videos(set_id, ids) for set_id in set_ids]
    joined = []
    for video_id, arrays in zip(ids, zip(*per_set)):
        steps = {a.shape[0] for a in arrays}
        if len(steps) > 1:
            raise FlowError(f"video {video_id!r}: feature sets {set_ids} have different step counts {sorted(steps)}; "
                            "combine feature sets extracted with the same sampling")
        joined.append(np.concatenate(arrays, axis=1) if len(arrays) > 1 else arrays[0])
    return joined, [feature_set_identity(store, s) for s in set_ids]


def feature_set_identity(store: FeatureStore, set_id: str) -> dict:
    info = store.feature_set_info(set_id)
    return {"id": set_id, "spec": info["spec"], "sampling": info["sampling"]}


def fit_job(
    *,
    store: str | Path,
    manifest: str | Path,
    features: Sequence[str],
    out: str | Path,
    head: str = "svr",
    protocol: str = "fmc",
    pooling: str = "mean",
    n_repeats: int | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Evaluate ``head`` with ``protocol`` (grouped when the manifest has ``group``), write the
    report to ``out`` and save the head refitted on all videos to ``out/model``.
    Returns the median metrics."""
    if head not in HEADS:
        raise FlowError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    if protocol not in PROTOCOLS:
        raise FlowError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if (Path(out) / "model").exists() and not overwrite:
        raise FlowError(f"{out} already holds a fitted model; choose another --out or pass --overwrite")
    entries = read_manifest(manifest, require_mos=True)
    feature_store = FeatureStore(store, create=False)
    X, feature_sets = load_features(feature_store, entries, features)
    y = np.array([e.mos for e in entries], dtype=np.float64)
    groups = [e.group or e.video_id for e in entries] if any(e.group for e in entries) else None
    make_splits, kwargs = PROTOCOLS[protocol]
    kwargs = dict(kwargs, random_state=seed) | ({"n_repeats": n_repeats} if n_repeats else {})
    splits = make_splits(len(entries), groups=groups, **kwargs)
    estimator = HEADS[head](pooling=pooling)
    ids = [e.video_id for e in entries]
    result = evaluate(estimator, X, y, splits=splits, video_ids=ids, progress=progress)
    settings = {
        "head": head, "head_params": estimator.get_params(), "protocol": protocol, "protocol_params": kwargs,
        "grouped": groups is not None, "n_videos": len(entries), "feature_sets": feature_sets,
        "store": str(store), "manifest": str(manifest),
    }
    out = Path(out)
    paths = write_report(out, result, video_ids=ids, mos=y, settings=settings)
    final = HEADS[head](**estimator.get_params()).fit(X, y)
    save_head(final, out / "model", feature_info={"feature_sets": feature_sets}, overwrite=overwrite)
    log.info("report written to %s", ", ".join(str(p) for p in paths.values()))
    return result.median


def predict_job(*, model: str | Path, store: str | Path, manifest: str | Path, out: str | Path) -> Path:
    """Score the manifest's videos with a saved head; refuses features made differently."""
    head, feature_info = load_head(model)
    feature_store = FeatureStore(store, create=False)
    expected = feature_info["feature_sets"]
    for saved in expected:
        if saved["id"] not in feature_store.feature_sets():
            raise ProvenanceMismatchError(
                f"the head in {model} was trained on feature set {saved['id']}, which {store} does not hold; "
                "extract the manifest with the same extractor, weights and sampling first")
        if feature_set_identity(feature_store, saved["id"]) != saved:
            raise ProvenanceMismatchError(f"feature set {saved['id']} in {store} differs from the one the head was trained on")
    entries = read_manifest(manifest)
    X, _ = load_features(feature_store, entries, [s["id"] for s in expected])
    predictions = head.predict(X)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "prediction", "mos"])
        for entry, p in zip(entries, predictions):
            writer.writerow([entry.video_id, f"{p:.6f}", "" if entry.mos is None else entry.mos])
    return out
