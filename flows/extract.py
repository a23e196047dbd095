"""Stage 1 as a Prefect flow: one task per video, decode once, every extractor, into the store."""
from __future__ import annotations

import datetime as dt
import errno
import functools
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from . import prefect_env  # noqa: F401  (must precede the prefect import)

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

import pipeline
from feature_store import FeatureStore
from pipeline.errors import SamplingError
from pipeline.extractors import Extractor, create_extractor, get_entry, sampling_for
from pipeline.runner import extract_video
from pipeline.sampling import parse_sampling

from .manifest import read_manifest

log = logging.getLogger(__name__)

# errno values that mean "the filesystem is full" (no space; disk quota exceeded).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class ExtractionConfig:
    """What to extract. ``weights`` and ``sampling`` map extractor name -> choice; missing names
    use the extractor's default."""

    extractors: tuple[str, ...]
    weights: Mapping[str, str] = field(default_factory=dict)
    sampling: Mapping[str, str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 16


def parse_per_extractor_option(values: Sequence[str], extractors: Sequence[str]) -> dict[str, str]:
    """``--weights X`` applies to every extractor; ``--weights name=X`` to one (same for --sampling)."""
    chosen: dict[str, str] = {}
    for value in values:
        name, sep, choice = value.partition("=")
        if sep and name in extractors:
            chosen[name] = choice
        else:
            chosen.update({e: value for e in extractors})
    return chosen


def resolve_samplings(sampling: str | Mapping[str, str], extractors: Sequence[str]) -> dict[str, str]:
    """Per-extractor sampling: the requested one where the extractor accepts its kind, else the
    extractor's own default (clip extractors keep ``clips:32`` beside ``uniform:16`` frames).
    A sampling named explicitly for one extractor must be one it accepts."""
    requested = {e: sampling for e in extractors} if isinstance(sampling, str) else dict(sampling)
    resolved = {}
    for name in extractors:
        resolved[name] = sampling_for(name, requested.get(name))
        if not isinstance(sampling, str) and name in requested and resolved[name] != requested[name]:
            raise SamplingError(f"extractor {name} does not accept sampling {requested[name]!r}; "
                                f"it takes {', '.join(get_entry(name).sampling_kinds)}")
        parse_sampling(resolved[name])  # malformed text fails here, before any work
    return resolved


@functools.lru_cache(maxsize=8)
def _build(name: str, weights: str | None, device: str) -> Extractor:
    return create_extractor(name, weights=weights, device=device)


def build_extractors(config: ExtractionConfig) -> list[Extractor]:
    """Extractors are built once per process and reused for every video."""
    return [_build(name, config.weights.get(name), config.device) for name in config.extractors]


def feature_set_ids(store: FeatureStore, extractors: Sequence[Extractor], config: ExtractionConfig) -> list[str]:
    return [store.ensure_feature_set(spec=e.spec.to_dict(), sampling=parse_sampling(config.sampling[name]).to_dict())
            for name, e in zip(config.extractors, extractors)]


@task(name="extract-video", cache_policy=NO_CACHE)
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
    features, info = extract_video(path, [extractors[i] for i in todo], sampling=samplings,
                                    batch_size=config.batch_size, video_key=video_id)
    seconds = time.perf_counter() - started
    video_provenance = {
        "source": info.to_dict(),
        "steps": int(features[0].shape[0]),
        "extracted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "code_version": pipeline.__version__,
        "torch": torch.__version__,
        "device": str(extractors[0].device),
        "host": platform.node(),
    }
    for i, feats, sampling in zip(todo, features, samplings):
        set_provenance = {"spec": extractors[i].spec.to_dict(), "sampling": sampling.to_dict()}
        try:
            store.write_video(set_ids[i], video_id, feats,
                              provenance={"set": set_provenance, "video": video_provenance})
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise OSError(exc.errno, f"disk full ({exc.strerror}) while writing features of {video_id!r} "
                          f"(feature set {set_ids[i]}) to the store {store_path}: they were not stored; "
                          "free some space and re-run (whatever is complete is skipped)") from exc
    return {"video_id": video_id, "status": "done", "frames": int(features[0].shape[0]), "seconds": seconds}


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
) -> dict:
    """Extract features for every video of ``manifest`` into ``store``.

    Each video is decoded once for all extractors. ``sampling`` is one strategy for all (clip
    extractors keep their clips) or a name -> strategy dict. Finished videos are skipped, a
    failing video is recorded with its reason and the run goes on. ``root``: refuse manifest
    paths that resolve outside this folder. Returns ``{"done": n, "skipped": n, "failed": n, "failures": {video_id: reason}, ...}``
    and writes the same summary to ``<store>/runs/``.
    """
    entries = read_manifest(manifest, root=root)  # validated before anything touches the store
    config = ExtractionConfig(tuple(extractors), dict(weights or {}), resolve_samplings(sampling, extractors),
                              device, batch_size)
    feature_store = FeatureStore(store)
    built = build_extractors(config)  # fail fast here if weights cannot be had
    set_ids = feature_set_ids(feature_store, built, config)
    summary = {"done": 0, "skipped": 0, "failed": 0, "frames": 0, "failures": {}, "feature_sets": set_ids}
    started = time.perf_counter()
    bar = tqdm(entries, desc="extract", unit="video", disable=not progress)
    for entry in bar:
        if all(feature_store.has_video(s, entry.video_id) for s in set_ids):
            summary["skipped"] += 1
            continue
        state = extract_video_task(entry.video_id, str(entry.path), str(store), config, return_state=True)
        if state.is_completed():
            result = state.result()
            summary[result["status"]] += 1
            summary["frames"] += result.get("frames", 0)
        else:
            summary["failed"] += 1
            summary["failures"][entry.video_id] = _failure_reason(state)
            log.warning("failed %s: %s", entry.video_id, summary["failures"][entry.video_id])
        bar.set_postfix(done=summary["done"], skipped=summary["skipped"], failed=summary["failed"])
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["frames_per_second"] = round(summary["frames"] / summary["seconds"], 2) if summary["seconds"] else 0.0
    _write_run_record(Path(store), summary, config)
    return summary


def _failure_reason(state) -> str:
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by Prefect
        return f"{type(exc).__name__}: {exc}"
    return state.message or state.name


def _write_run_record(store: Path, summary: dict, config: ExtractionConfig) -> None:
    runs = store / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    record = {"config": {**config.__dict__, "weights": dict(config.weights), "sampling": dict(config.sampling)},
              **summary}
    (runs / f"extract-{stamp}.json").write_text(json.dumps(record, indent=2, default=str))
