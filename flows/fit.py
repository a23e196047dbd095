"""Stage 2 jobs: fit a head on cached features with an evaluation protocol, and predict.

Heads come from :mod:`regressors.presets` (``make_head``), protocols from
:mod:`regressors.protocols` (``plan_splits``: the papers' protocols, adapted to few groups
in a documented way). Without ``protocol`` a head runs its paper's protocol (``vsfa`` the
VSFA one, ``a2inet`` A2INet's, the SVR heads FMC's). Features are read from the store once
per fit (:mod:`flows.fit_data`: pooled as they are read for pooling heads, cached as stored
for sequence heads). Every report records the store, the feature sets, the head's parameters,
the protocol and the code version (``settings`` in metrics.json).

``fit_job`` is resumable. While it runs, ``OUT/fit-checkpoints/`` holds ``run.json`` (the
run's configuration and its hash), each finished split's test predictions and metrics
(``split-NNNN.npz`` + ``split-NNNN.json``), the feature cache of sequence heads
(``features.bin``) and, for sequence heads, the per-epoch training state of the split in
progress (``split-NNNN/epoch-NNNN.pt``) and of the final refit (``final/``). Run again with
the same ``--out`` after a crash or a kill, finished splits are read back, the interrupted
training continues after its last epoch, and the report and model equal an uninterrupted
run's (at the same torch thread count). A different configuration (features, head,
parameters, protocol, seed, manifest content) refuses to resume unless ``restart``
(``--restart``) discards the old progress. The folder is removed when the run completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
from sklearn.base import clone

from feature_store import FeatureStore
from feature_store.errors import ProvenanceMismatchError
from pipeline.weights import file_sha256
from regressors import svr_scalable
from regressors.persistence import load_head, save_head, to_json
from regressors.presets import HEAD_PRESETS, make_head
from regressors.protocols import PROTOCOLS, evaluate, plan_splits, split_state_paths
from regressors.report import write_report
from regressors.sequence import latest_checkpoint_epoch
from regressors.temporal_pooling import join_pooling, split_pooling
from vqa_core import csvsafe
from vqa_core.atomic import atomic_write
from vqa_core.manifest import ManifestEntry, read_manifest

from .errors import FlowError
from .fit_data import FeatureCache, StoredVideos, feature_set_identity, pool_videos

log = logging.getLogger(__name__)

__all__ = ["STATE_DIR", "code_version", "feature_set_identity", "fit_job", "load_features", "make_head", "predict_job"]

#: Folder inside ``--out`` holding an unfinished run's progress (removed when the run completes).
STATE_DIR = "fit-checkpoints"
_STATE_FORMAT = "vqa-fit-state"
_STATE_VERSION = 1
_CACHE_FILE = "features.bin"


@cache
def code_version() -> dict:
    """The code a fit ran: the package version and, in a git checkout, the commit (with
    ``dirty`` when tracked files differ from it); ``None`` fields where unknown."""
    from pipeline import __version__

    root = Path(__file__).resolve().parents[1]
    commit = dirty = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            or None
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout, or no git: the version alone
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty}


def load_features(
    store: FeatureStore, entries: Sequence[ManifestEntry], features: Sequence[str]
) -> tuple[list[np.ndarray], list[dict]]:
    """Read every manifest video from the named feature sets into memory (small data, scripts).

    Returns one float32 ``[T, sum D]`` array per video and the identity of each feature set
    used (see :class:`flows.fit_data.StoredVideos` for how several sets are joined).
    ``fit_job`` itself reads in bounded memory (:mod:`flows.fit_data`).
    """
    videos, feature_sets = _stored_videos(store, entries, features)
    return [videos.read(i) for i in range(len(videos))], feature_sets


def _stored_videos(
    store: FeatureStore, entries: Sequence[ManifestEntry], features: Sequence[str]
) -> tuple[StoredVideos, list[dict]]:
    """The manifest's videos in the named sets (lazily) and each set's identity. The videos'
    ``cache_dtype`` is float16 when every set is stored as float16 (a cache keeps that exactly),
    else float32."""
    if not features:
        raise FlowError("name at least one feature set (--features)")
    set_ids = [store.resolve(name) for name in features]
    videos = StoredVideos(store, set_ids, [e.video_id for e in entries])
    infos = [store.feature_set_info(s) for s in set_ids]
    videos.cache_dtype = "float16" if {i.get("dtype", "float32") for i in infos} == {"float16"} else "float32"
    identities = [{"id": s, "spec": i["spec"], "sampling": i["sampling"]} for s, i in zip(set_ids, infos, strict=True)]
    return videos, identities


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
        raise FlowError(
            f"{state} exists but holds no run record (run.json); it was not written by vqa fit. "
            "Move it away, or choose another --out"
        )
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
            why = (
                "--restart"
                if restart
                else "--overwrite, and its configuration differs"
                if overwrite
                else "it had not finished any epoch yet, and its configuration differs"
            )
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
    protocol: str | None = None,
    pooling: str = "mean",
    n_repeats: int | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    head_params: dict | None = None,
    paper_schedule: bool = False,
    test_manifest: str | Path | None = None,
    test_store: str | Path | None = None,
    restart: bool = False,
    notify: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate ``head`` with ``protocol`` (grouped when the manifest has ``group``), write the
    report to ``out`` and save the head refitted on all videos to ``out/model``.

    ``protocol`` None runs the head's paper protocol (:mod:`regressors.presets`);
    ``paper_schedule`` trains sequence heads with their paper's full schedule instead of the
    quick default. ``pooling`` applies to heads that pool (the SVR family).
    ``test_manifest`` switches to the cross-dataset protocol: train on every video of
    ``manifest``, test on every video of ``test_manifest`` (features from ``test_store``,
    default ``store``).

    Returns the metrics of ``metrics.json`` without ``per_split`` and ``settings``: the
    medians, ``n_splits``, ``n_distinct_splits``, ``n_degenerate_logistic``, ``pooled``,
    ``protocol``, ``protocol_params`` and ``notes``.

    Resumable (see the module docstring): an interrupted run in ``out`` with the same
    configuration is continued; ``restart`` discards it instead (as does ``overwrite`` when
    its configuration differs). ``notify`` receives one-line status messages (resuming,
    discarding, adaptations of the protocol); by default they are logged."""
    notify = notify or log.info
    preset = HEAD_PRESETS.get(head)  # unknown: a one-line error with a did-you-mean hint
    if test_manifest is None:
        protocol = protocol or preset.protocol
        PROTOCOLS.get(protocol)
    if (Path(out) / "model").exists() and not overwrite:
        raise FlowError(f"{out} already holds a fitted model; choose another --out or pass --overwrite")
    entries = read_manifest(manifest, require_mos=True)
    requested = head
    scalable = svr_scalable.scalable_svr_preset(head, n_videos=len(entries))
    if scalable is not None:  # the exact SVR's fit grows as n^2: its Nystroem preset runs instead
        head, preset = scalable, HEAD_PRESETS.get(scalable)
    feature_store = FeatureStore(store, create=False)
    videos, feature_sets = _stored_videos(feature_store, entries, features)
    y = np.array([e.mos for e in entries], dtype=np.float64)
    groups = [e.group or e.video_id for e in entries] if any(e.group for e in entries) else None
    params = dict(head_params or {}, random_state=seed)
    if preset.pools:
        params.setdefault("pooling", pooling)
    estimator = make_head(
        head, feature_dims=[s["spec"]["dims"] for s in feature_sets], paper_schedule=paper_schedule, **params
    )
    if progress and "progress" in estimator.get_params() and "progress" not in params:
        estimator.set_params(progress=True)  # heads draw no bars unless asked; a run with progress asks
    ids = [e.video_id for e in entries]
    test_sets = test_videos = None
    notes: list[str] = []
    if test_manifest is not None:  # cross-dataset: one split, train = all of A, test = all of B
        protocol, protocol_params = "cross-dataset", {"test_manifest": str(test_manifest)}
        test_entries = read_manifest(test_manifest, require_mos=True)
        test_videos, test_sets = _stored_videos(
            FeatureStore(test_store or store, create=False), test_entries, [s["id"] for s in feature_sets]
        )
        n_train, n_test = len(entries), len(test_entries)
        splits = [(np.arange(n_train), np.arange(n_train, n_train + n_test))]
        ids = ids + [e.video_id for e in test_entries]
        y = np.concatenate([y, [e.mos for e in test_entries]])
        n_distinct = 1
    else:
        plan = plan_splits(protocol, len(entries), groups=groups, n_repeats=n_repeats, random_state=seed)
        splits, notes, n_distinct = plan.splits, plan.notes, plan.n_distinct
        protocol_params = dict(plan.params, random_state=seed)
    if scalable is not None:
        notes.append(
            f"--head {requested} on {len(entries)} videos (more than {svr_scalable.EXACT_SVR_MAX_VIDEOS}): "
            f"the scalable {scalable} runs instead (Nystroem kernel, {estimator.n_components} landmarks; "
            "regressors.svr_scalable)"
        )
    # What the run's result depends on; a resumed run must have exactly this.
    config = to_json(
        {
            "head": head,
            "head_params": {k: v for k, v in estimator.get_params().items() if k != "progress"},
            "protocol": protocol,
            "protocol_params": protocol_params,
            "pooling": pooling if preset.pools else None,
            "seed": seed,
            "feature_sets": feature_sets,
            "manifest": file_sha256(manifest),
            "test_manifest": file_sha256(test_manifest) if test_manifest is not None else None,
            "test_feature_sets": test_sets,
        },
        strict=False,
    )
    out = Path(out)
    state = out / STATE_DIR
    config_hash, resuming = _open_state(state, config, restart=restart, overwrite=overwrite, notify=notify)
    if resuming:
        notify(
            f"resuming the interrupted run in {out}: "
            f"{_describe_progress(state, len(splits)) or 'no split finished yet'}"
        )
    for note in notes:
        notify(f"note: {note}")

    pooling_step, regressor = split_pooling(estimator)
    with _fit_features(videos, test_videos, pooling_step, state, progress=progress) as X:
        result = evaluate(
            regressor, X, y, splits=splits, video_ids=ids, progress=progress, state_dir=state, state_key=config_hash
        )
        result.protocol, result.protocol_params, result.n_distinct_splits = protocol, protocol_params, n_distinct
        result.notes[:0] = notes
        settings = {
            "head": head,
            "head_requested": requested,
            "head_params": estimator.get_params(),
            "schedule": "paper" if paper_schedule else "default",
            "protocol": protocol,
            "protocol_params": protocol_params,
            "grouped": groups is not None,
            "n_groups": len(set(groups)) if groups is not None else None,
            "n_videos": len(entries),
            "feature_sets": feature_sets,
            "test_feature_sets": test_sets,
            "store": str(store),
            "test_store": str(test_store) if test_store is not None else None,
            "manifest": str(manifest),
            "manifest_sha256": config["manifest"],
            "code_version": code_version(),
        }
        paths = write_report(out, result, video_ids=ids, mos=y, settings=settings)
        train = splits[0][0] if test_manifest is not None else np.arange(len(entries))
        final_kwargs = {}
        if "checkpoint_dir" in _fit_parameters(regressor):  # the refit on all videos is a training too
            final_kwargs = {"checkpoint_dir": state / "final", "checkpoint_key": f"{config_hash}/final"}
        train_X = X[train] if isinstance(X, np.ndarray) else [X[i] for i in train]
        final = join_pooling(pooling_step, clone(regressor).fit(train_X, y[train], **final_kwargs))
    save_head(final, out / "model", feature_info={"feature_sets": feature_sets}, overwrite=overwrite)
    shutil.rmtree(state, ignore_errors=True)  # complete: per-epoch checkpoints, split records, cache go
    log.info("report written to %s", ", ".join(str(p) for p in paths.values()))
    return {k: v for k, v in result.metrics.items() if k != "per_split"}


def _fit_parameters(estimator) -> set[str]:
    import inspect

    return set(inspect.signature(estimator.fit).parameters)


@contextmanager
def _fit_features(videos: StoredVideos, test_videos: StoredVideos | None, pooling, state: Path, *, progress: bool):
    """The features ``evaluate`` runs on, each video read from the store once
    (:mod:`flows.fit_data`): the pooled ``[N, D']`` matrix for a pooling head, else a cache
    of the videos in the stored dtype (a list of lazy items; closed on exit)."""
    parts = [videos] + ([test_videos] if test_videos is not None else [])
    if pooling is not None:
        yield np.concatenate([pool_videos(v, pooling, progress=progress) for v in parts])
        return
    caches: list[FeatureCache] = []
    try:
        for k, part in enumerate(parts):
            path = state / (_CACHE_FILE if k == 0 else f"test-{_CACHE_FILE}")
            caches.append(FeatureCache.build(part, path, dtype=part.cache_dtype, progress=progress))
        yield [item for c in caches for item in c]
    finally:
        for c in caches:
            c.close()


def predict_job(*, model: str | Path, store: str | Path, manifest: str | Path, out: str | Path) -> Path:
    """Score the manifest's videos with a saved head; refuses features made differently."""
    head, feature_info = load_head(model)
    feature_store = FeatureStore(store, create=False)
    expected = feature_info["feature_sets"]
    for saved in expected:
        if saved["id"] not in feature_store.feature_sets():
            raise ProvenanceMismatchError(
                f"the head in {model} was trained on feature set {saved['id']}, which {store} does not hold; "
                "extract the manifest with the same extractor, weights and sampling first"
            )
        if feature_set_identity(feature_store, saved["id"]) != saved:
            raise ProvenanceMismatchError(
                f"feature set {saved['id']} in {store} differs from the one the head was trained on"
            )
    entries = read_manifest(manifest)
    X, _ = _stored_videos(feature_store, entries, [s["id"] for s in expected])  # read once, lazily
    predictions = head.predict(X)
    bad = [entry.video_id for entry, p in zip(entries, predictions, strict=True) if not np.isfinite(p)]
    if bad:  # never write a score a spreadsheet or a metric would take as a number
        raise FlowError(
            f"the head in {model} gives non-finite scores for {len(bad)} of {len(entries)} videos "
            f"({', '.join(map(repr, bad[:5]))}{' ...' if len(bad) > 5 else ''}): it is damaged or does not "
            "fit these features; no scores were written"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csvsafe.writer(fh)  # ids a spreadsheet would evaluate are escaped
        writer.writerow(["video_id", "prediction", "mos"])
        for entry, p in zip(entries, predictions, strict=True):
            writer.writerow([entry.video_id, f"{p:.6f}", "" if entry.mos is None else entry.mos])
    return out
