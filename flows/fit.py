"""Stage 2 jobs: fit a head on cached features with an evaluation protocol, and predict.

``fit_job`` is resumable. While it runs, ``OUT/fit-checkpoints/`` holds ``run.json`` (the
run's configuration and its hash), each finished split's test predictions and metrics
(``split-NNNN.npz`` + ``split-NNNN.json``) and, for sequence heads, the per-epoch training
state of the split in progress (``split-NNNN/epoch-NNNN.pt``) and of the final refit
(``final/``). Run again with the same ``--out`` after a crash or a kill, finished splits
are read back, the interrupted training continues after its last epoch, and the report and
model equal an uninterrupted run's (at the same torch thread count). A different
configuration (features, head, parameters, protocol, seed, manifest content) refuses to
resume unless ``restart`` (``--restart``) discards the old progress. The folder is removed
when the run completes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.base import clone

from feature_store import FeatureStore
from pipeline.weights import file_sha256
from feature_store.errors import ProvenanceMismatchError
from regressors.a2inet import align_steps
from regressors.persistence import atomic_write, load_head, save_head, to_json
from regressors.protocols import (evaluate, random_splits, repeated_kfold_splits, split_state_paths,
                                  train_val_test_splits)
from regressors.report import write_report
from regressors.sequence import SequenceRegressor, latest_checkpoint_epoch
from regressors.svr import SVRHead

from .errors import FlowError
from .manifest import ManifestEntry, read_manifest

log = logging.getLogger(__name__)

#: Folder inside ``--out`` holding an unfinished run's progress (removed when the run completes).
STATE_DIR = "fit-checkpoints"
_STATE_FORMAT = "vqa-fit-state"
_STATE_VERSION = 1


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


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def _has_progress(state: Path) -> bool:
    """True when ``state`` holds a finished split or an epoch checkpoint (work a restart would lose)."""
    return any(state.glob("split-*.json")) or any(state.glob("*/epoch-*.pt"))


def _open_state(state: Path, config: dict, *, restart: bool, overwrite: bool, notify) -> tuple[str, bool]:
    """Check or start the run record in ``state``; returns ``(configuration hash, resuming)``.

    An existing record of the same configuration is resumed; one of another configuration is
    refused, unless ``restart`` or ``overwrite`` discards it, or it holds no progress yet."""
    config_hash = _config_hash(config)
    record = state / "run.json"
    if state.exists() and not record.is_file():
        raise FlowError(f"{state} exists but holds no run record (run.json); it was not written by vqa fit. "
                        "Move it away, or choose another --out")
    if record.is_file():
        saved_hash = saved_config = None
        if not restart:
            try:
                saved = json.loads(record.read_text(encoding="utf-8"))
                saved_hash, saved_config = saved["config_hash"], dict(saved["config"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise FlowError(f"the run record {record} is unreadable ({exc}); pass --restart to start over") from exc
        if saved_hash == config_hash:
            return config_hash, True
        if restart or overwrite or not _has_progress(state):
            why = ("--restart" if restart else "--overwrite, and its configuration differs" if overwrite
                   else "it had not finished any epoch yet, and its configuration differs")
            notify(f"discarding the interrupted run in {state.parent} ({why}); starting over")
            shutil.rmtree(state)
        else:
            changed = sorted(k for k in set(config) | set(saved_config) if config.get(k) != saved_config.get(k))
            raise FlowError(
                f"{state.parent} holds an interrupted run with a different configuration "
                f"(changed: {', '.join(changed) or 'format'}), so it cannot be resumed. Re-run with its original "
                f"settings to resume it, pass --restart to discard its progress and start over, "
                f"or choose another --out"
            )
    state.mkdir(parents=True, exist_ok=True)
    doc = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "config_hash": config_hash, "config": config}
    atomic_write(record, lambda fh: fh.write((json.dumps(doc, indent=1) + "\n").encode("utf-8")))
    return config_hash, False


def _describe_progress(state: Path, n_splits: int) -> str | None:
    """What an interrupted run had done (``None`` if nothing yet)."""
    done = [i for i in range(n_splits) if split_state_paths(state, i)[0].is_file()]
    parts = [f"{len(done)} of {n_splits} splits already done"]
    for i in range(n_splits):
        epoch = None if i in done else latest_checkpoint_epoch(split_state_paths(state, i)[2])
        if epoch is not None:
            parts.append(f"split {i} continues after epoch {epoch}")
    final_epoch = latest_checkpoint_epoch(state / "final")
    if final_epoch is not None:
        parts.append(f"the final fit on all videos continues after epoch {final_epoch}")
    if not done and len(parts) == 1:
        return None
    return "; ".join(parts)


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
    restart: bool = False,
    notify: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate ``head`` with ``protocol`` (grouped when the manifest has ``group``), write the
    report to ``out`` and save the head refitted on all videos to ``out/model``.

    ``test_manifest`` switches to the cross-dataset protocol: train on every video of
    ``manifest``, test on every video of ``test_manifest`` (features from ``test_store``,
    default ``store``). Returns the median metrics.

    Resumable (see the module docstring): an interrupted run in ``out`` with the same
    configuration is continued; ``restart`` discards it instead (as does ``overwrite`` when
    its configuration differs). ``notify`` receives one-line status messages (resuming,
    discarding); by default they are logged."""
    notify = notify or log.info
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
    test_sets = None
    if test_manifest is not None:  # cross-dataset: one split, train = all of A, test = all of B
        protocol, kwargs = "cross-dataset", {"test_manifest": str(test_manifest)}
        test_entries = read_manifest(test_manifest, require_mos=True)
        X_test, test_sets = load_features(FeatureStore(test_store or store, create=False), test_entries,
                                          [s["id"] for s in feature_sets])
        splits = [(np.arange(len(X)), np.arange(len(X), len(X) + len(X_test)))]
        X, ids = X + X_test, ids + [e.video_id for e in test_entries]
        y = np.concatenate([y, [e.mos for e in test_entries]])
    else:
        make_splits, kwargs = PROTOCOLS[protocol]
        kwargs = dict(kwargs, random_state=seed) | ({"n_repeats": n_repeats} if n_repeats else {})
        splits = make_splits(len(entries), groups=groups, **kwargs)
    # What the run's result depends on; a resumed run must have exactly this.
    config = to_json({
        "head": head,
        "head_params": {k: v for k, v in estimator.get_params().items() if k != "progress"},
        "protocol": protocol, "protocol_params": kwargs, "pooling": pooling, "seed": seed,
        "feature_sets": feature_sets, "manifest": file_sha256(manifest),
        "test_manifest": file_sha256(test_manifest) if test_manifest is not None else None,
        "test_feature_sets": test_sets,
    }, strict=False)
    out = Path(out)
    state = out / STATE_DIR
    config_hash, resuming = _open_state(state, config, restart=restart, overwrite=overwrite, notify=notify)
    if resuming:
        notify(f"resuming the interrupted run in {out}: "
               f"{_describe_progress(state, len(splits)) or 'no split finished yet'}")
    result = evaluate(estimator, X, y, splits=splits, video_ids=ids, progress=progress,
                      state_dir=state, state_key=config_hash)
    settings = {
        "head": head, "head_params": estimator.get_params(), "protocol": protocol, "protocol_params": kwargs,
        "grouped": groups is not None, "n_videos": len(entries), "feature_sets": feature_sets,
        "store": str(store), "manifest": str(manifest),
    }
    paths = write_report(out, result, video_ids=ids, mos=y, settings=settings)
    train = splits[0][0] if test_manifest is not None else np.arange(len(X))
    final_kwargs = {}
    if isinstance(estimator, SequenceRegressor):  # the refit on all videos is a training too
        final_kwargs = {"checkpoint_dir": state / "final", "checkpoint_key": f"{config_hash}/final"}
    final = clone(estimator).fit([X[i] for i in train], y[train], **final_kwargs)
    save_head(final, out / "model", feature_info={"feature_sets": feature_sets}, overwrite=overwrite)
    shutil.rmtree(state, ignore_errors=True)  # complete: per-epoch checkpoints and split records go
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
