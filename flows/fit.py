"""Stage 2 jobs: fit a head on cached features with an evaluation protocol, and predict."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import clone

from feature_store import FeatureStore
from feature_store.errors import ProvenanceMismatchError
from regressors.a2inet import align_steps
from regressors.persistence import load_head, save_head
from regressors.protocols import evaluate, random_splits, repeated_kfold_splits, train_val_test_splits
from regressors.report import write_report
from regressors.sequence import SequenceRegressor
from regressors.svr import SVRHead

from .errors import FlowError
from .manifest import ManifestEntry, read_manifest

log = logging.getLogger(__name__)

def _vsfa_splits(n, *, groups=None, n_repeats=10, random_state=0):
    """VSFA 60/20/20: the test part is held out; the head keeps its own 20/80 validation part
    of the rest for the best-validation checkpoint (``val_fraction=0.25``, set by the head preset)."""
    triples = train_val_test_splits(n, groups=groups, n_repeats=n_repeats, random_state=random_state)
    return [(np.sort(np.concatenate([train, val])), test) for train, val, test in triples]


# protocol name -> (split builder, default keyword arguments): the papers' protocols.
PROTOCOLS = {
    "fmc": (repeated_kfold_splits, {"n_splits": 5, "n_repeats": 20}),   # FMC: 20 x 5-fold, median of 100
    "a2inet": (random_splits, {"test_size": 0.2, "n_repeats": 10}),      # A2INet: 10 random 80/20 splits, median
    "vsfa": (_vsfa_splits, {"n_repeats": 10}),                           # VSFA: 60/20/20, best-validation checkpoint
}


def make_head(name: str, *, feature_dims: Sequence[int], pooling: str = "mean", params: dict | None = None):
    """An unfitted head with its paper's settings; ``params`` overrides any of them.

    svr / svr-bvqa: FMC and BVQA_Benchmark SVR presets on temporally pooled features.
    vsfa: Linear -> GRU -> TP pooling; L1 on MOS / max MOS, Adam 1e-5, batch 16, StepLR.
    a2inet: CAGI + CATM on exactly two feature sets (quality first); MAE + rank, Adam 2e-5, batch 8.
    dualpath: slow/fast transformer on ``slowfast-tokens``; PLCC + 0.3 rank, AdamW 1e-3, wd 0.01, cosine.
    """
    dims = list(feature_dims)
    if name == "svr":
        head = SVRHead(pooling=pooling)
    elif name == "svr-bvqa":
        head = SVRHead(pooling=pooling, preset="bvqa")
    elif name == "vsfa":
        head = SequenceRegressor(module="vsfa", loss="vsfa_l1", lr=1e-5, batch_size=16, schedule="step",
                                 val_fraction=0.25)
    elif name == "a2inet":
        if len(dims) != 2:
            raise FlowError(f"the a2inet head takes two feature sets (quality, then semantic or motion), got {len(dims)}")
        head = SequenceRegressor(module="a2inet", module_params={"dims": tuple(dims)}, loss="mae_rank",
                                 lr=2e-5, batch_size=8, schedule="none", val_fraction=0.25)
    elif name == "dualpath":
        head = SequenceRegressor(module="dualpath", loss="plcc_rank", optimizer="adamw", lr=1e-3,
                                 weight_decay=0.01, batch_size=8, schedule="cosine", warmup_epochs=0,
                                 val_fraction=0.25)
    else:
        raise FlowError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")
    if params:
        params = dict(params)
        if "module_params" in params and isinstance(head, SequenceRegressor):  # merge: keep the preset's dims
            params["module_params"] = {**(head.module_params or {}), **params["module_params"]}
        try:
            head.set_params(**params)
        except ValueError as exc:
            raise FlowError(f"bad --head-param for {name}: {exc}") from exc
    return head


HEADS = ("svr", "svr-bvqa", "vsfa", "a2inet", "dualpath")


def load_features(
    store: FeatureStore, entries: Sequence[ManifestEntry], features: Sequence[str]
) -> tuple[list[np.ndarray], list[dict]]:
    """Read every manifest video from the named feature sets.

    Returns one ``[T, sum D]`` array per video and the identity of each feature set used.
    Several sets are joined along the feature axis; when their step counts differ (128 frames
    vs 32 SlowFast steps per clip) each is resampled to the first set's count by nearest
    neighbour on normalised time (``regressors.a2inet.align_steps``).
    """
    if not features:
        raise FlowError("name at least one feature set (--features)")
    ids = [e.video_id for e in entries]
    set_ids = [store.resolve(name) for name in features]
    per_set = [store.read_videos(set_id, ids) for set_id in set_ids]
    joined = [align_steps(list(arrays)) if len(arrays) > 1 else arrays[0] for arrays in zip(*per_set)]
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
    head_params: dict | None = None,
    test_manifest: str | Path | None = None,
    test_store: str | Path | None = None,
) -> dict:
    """Evaluate ``head`` with ``protocol`` (grouped when the manifest has ``group``), write the
    report to ``out`` and save the head refitted on all videos to ``out/model``.

    ``test_manifest`` switches to the cross-dataset protocol: train on every video of
    ``manifest``, test on every video of ``test_manifest`` (features from ``test_store``,
    default ``store``). Returns the median metrics."""
    if protocol not in PROTOCOLS and test_manifest is None:
        raise FlowError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if (Path(out) / "model").exists() and not overwrite:
        raise FlowError(f"{out} already holds a fitted model; choose another --out or pass --overwrite")
    entries = read_manifest(manifest, require_mos=True)
    feature_store = FeatureStore(store, create=False)
    X, feature_sets = load_features(feature_store, entries, features)
    y = np.array([e.mos for e in entries], dtype=np.float64)
    groups = [e.group or e.video_id for e in entries] if any(e.group for e in entries) else None
    estimator = make_head(head, feature_dims=[s["spec"]["dims"] for s in feature_sets], pooling=pooling,
                          params=dict(head_params or {}, random_state=seed))
    ids = [e.video_id for e in entries]
    if test_manifest is not None:  # cross-dataset: one split, train = all of A, test = all of B
        protocol, kwargs = "cross-dataset", {"test_manifest": str(test_manifest)}
        test_entries = read_manifest(test_manifest, require_mos=True)
        X_test, _ = load_features(FeatureStore(test_store or store, create=False), test_entries,
                                  [s["id"] for s in feature_sets])
        splits = [(np.arange(len(X)), np.arange(len(X), len(X) + len(X_test)))]
        X, ids = X + X_test, ids + [e.video_id for e in test_entries]
        y = np.concatenate([y, [e.mos for e in test_entries]])
    else:
        make_splits, kwargs = PROTOCOLS[protocol]
        kwargs = dict(kwargs, random_state=seed) | ({"n_repeats": n_repeats} if n_repeats else {})
        splits = make_splits(len(entries), groups=groups, **kwargs)
    result = evaluate(estimator, X, y, splits=splits, video_ids=ids, progress=progress)
    settings = {
        "head": head, "head_params": estimator.get_params(), "protocol": protocol, "protocol_params": kwargs,
        "grouped": groups is not None, "n_videos": len(entries), "feature_sets": feature_sets,
        "store": str(store), "manifest": str(manifest),
    }
    out = Path(out)
    paths = write_report(out, result, video_ids=ids, mos=y, settings=settings)
    train = splits[0][0] if test_manifest is not None else np.arange(len(X))
    final = clone(estimator).fit([X[i] for i in train], y[train])
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
