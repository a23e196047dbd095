"""What an extraction run will do, decided without Prefect: its configuration, its extractors
(built once per process), its feature sets, and the videos still to extract.

::

    ExtractionConfig --build_extractors--> extractors   (weights resolved now: every extractor
        |                                                whose weights cannot be had, at once)
        |--planned_set_ids--> feature-set ids           (spec + sampling; nothing written)
        '--plan_extraction(entries, store)--> ExtractionPlan(set ids, pending videos, stored)

    FOLDER --scan_video_folder--> entries (ids: paths relative to the folder)
           --write_folder_listing--> the folder's manifest (<store>/_runs/extract-folder-<time>.csv)

``vqa extract`` runs this before Prefect is imported, so that a run with nothing to do never
starts a server (``flows.cli``), and ``flows.extract.extract_flow`` runs the same functions
inside the flow (the extractors come from the same per-process cache). Torch is imported
here, Prefect is not.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from feature_store import FeatureNotFoundError, FeatureStore, remove, verify
from pipeline.errors import SamplingError, WeightsError, WeightsUnavailableError
from pipeline.extractors import Extractor, create_extractor, extractor_options, get_entry, sampling_for
from pipeline.extractors.base import check_compute_options
from pipeline.runner import DEFAULT_PREFETCH
from pipeline.sampling import parse_sampling
from vqa_core.manifest import ManifestEntry, write_manifest

from .errors import FlowError

logger = logging.getLogger(__name__)

# Containers decord reads (by file name suffix, case-insensitive).
VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".mpg",
    ".mpeg",
    ".ts",
    ".m2ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".y4m",
)


@dataclass(frozen=True)
class ExtractionConfig:
    """What to extract. ``weights`` and ``sampling`` map extractor name -> choice; missing names
    use the extractor's default.

    ``precision`` (``fp32``, ``bf16``, ``fp16`` on CUDA only) and ``channels_last`` are the
    extractors' compute options (:meth:`pipeline.extractors.Extractor.set_compute`): recorded
    in their spec, so they change the feature sets' identity. ``prefetch`` (batches decoded
    ahead in a worker thread, :func:`pipeline.runner.extract_video`) does not change features
    and only appears in the run record. Invalid options raise ``ComputeOptionError`` /
    ``FlowError`` here, before anything touches the store. ``root``: the dataset root; each
    video's file is checked to lie inside it again when it is opened (``pipeline.video.Video``).
    ``options`` maps extractor name -> builder options (``{"unique": {"resampler": "pil"}}``);
    like the compute options they are recorded in the spec where they change the features.
    """

    extractors: tuple[str, ...]
    weights: Mapping[str, str] = field(default_factory=dict)
    sampling: Mapping[str, str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 16
    precision: str = "fp32"
    channels_last: bool = False
    prefetch: int = DEFAULT_PREFETCH
    root: str | None = None
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_compute_options(precision=self.precision, channels_last=self.channels_last, device=self.device)
        for name, chosen in self.options.items():
            check_extractor_options(name, chosen)
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise FlowError(f"prefetch must be a non-negative integer (batches decoded ahead), got {self.prefetch!r}")


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


def check_extractor_options(name: str, chosen: Mapping[str, object]) -> None:
    accepted = extractor_options(name)
    unknown = sorted(set(chosen) - set(accepted))
    if unknown:
        raise FlowError(
            f"--extractor-option {name}:{unknown[0]}=...: {name} has no option {unknown[0]!r}; "
            f"it takes {', '.join(accepted) or 'no options'}"
        )


def parse_extractor_options(values: Sequence[str], extractors: Sequence[str]) -> dict[str, dict[str, object]]:
    """``--extractor-option NAME:KEY=VALUE`` (repeatable) -> ``{name: {key: value}}``; a value
    that reads as an integer becomes one (``short_side=540``)."""
    options: dict[str, dict[str, object]] = {}
    for text in values:
        name, colon, assignment = text.partition(":")
        key, equals, value = assignment.partition("=")
        if not (colon and equals and key):
            raise FlowError(f"--extractor-option {text!r}: write NAME:KEY=VALUE, e.g. unique:resampler=pil")
        if name not in extractors:
            raise FlowError(
                f"--extractor-option {text!r}: {name} is not one of the --extractor names ({', '.join(extractors)})"
            )
        options.setdefault(name, {})[key] = int(value) if value.lstrip("-").isdigit() else value
    for name, chosen in options.items():
        check_extractor_options(name, chosen)
    return options


def resolve_samplings(sampling: str | Mapping[str, str], extractors: Sequence[str]) -> dict[str, str]:
    """Per-extractor sampling: the requested one where the extractor accepts its kind, else the
    extractor's own default (clip extractors keep ``clips:32`` beside ``uniform:16`` frames).
    A sampling named explicitly for one extractor must be one it accepts."""
    requested = {e: sampling for e in extractors} if isinstance(sampling, str) else dict(sampling)
    resolved = {}
    for name in extractors:
        resolved[name] = sampling_for(name, requested.get(name))
        if not isinstance(sampling, str) and name in requested and resolved[name] != requested[name]:
            raise SamplingError(
                f"extractor {name} does not accept sampling {requested[name]!r}; "
                f"it takes {', '.join(get_entry(name).sampling_kinds)}"
            )
        parse_sampling(resolved[name])  # malformed text fails here, before any work
    return resolved


def extraction_config(
    *,
    extractors: Sequence[str],
    weights: Mapping[str, str] | None = None,
    sampling: str | Mapping[str, str] = "all",
    device: str = "auto",
    batch_size: int = 16,
    precision: str = "fp32",
    channels_last: bool = False,
    prefetch: int = DEFAULT_PREFETCH,
    root: str | os.PathLike[str] | None = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
) -> ExtractionConfig:
    """The :class:`ExtractionConfig` of ``extract_flow``'s arguments, samplings resolved per
    extractor (:func:`resolve_samplings`)."""
    return ExtractionConfig(
        tuple(extractors),
        dict(weights or {}),
        resolve_samplings(sampling, extractors),
        device,
        batch_size,
        precision=precision,
        channels_last=channels_last,
        prefetch=prefetch,
        root=None if root is None else str(root),
        options={name: dict(chosen) for name, chosen in (options or {}).items()},
    )


@functools.lru_cache(maxsize=8)
def _build(
    name: str,
    weights: str | None,
    device: str,
    precision: str = "fp32",
    channels_last: bool = False,
    options: tuple[tuple[str, object], ...] = (),
) -> Extractor:
    return create_extractor(
        name, weights=weights, device=device, precision=precision, channels_last=channels_last, **dict(options)
    )


def build_extractors(config: ExtractionConfig) -> list[Extractor]:
    """Extractors are built once per process (per name, weights, device and compute options)
    and reused for every video.

    Weights are resolved here. When several extractors' weights cannot be had, one error names
    all of them (a :class:`~pipeline.errors.WeightsUnavailableError` when each is missing, else
    a :class:`~pipeline.errors.WeightsError`)."""
    built, failures = [], []
    for name in config.extractors:
        try:
            built.append(
                _build(
                    name,
                    config.weights.get(name),
                    config.device,
                    config.precision,
                    config.channels_last,
                    tuple(sorted(config.options.get(name, {}).items())),
                )
            )
        except WeightsError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        kind = (
            WeightsUnavailableError if all(isinstance(e, WeightsUnavailableError) for e in failures) else WeightsError
        )
        raise kind(f"weights of {len(failures)} extractors cannot be had: " + " | ".join(map(str, failures)))
    return built


def planned_set_ids(extractors: Sequence[Extractor], config: ExtractionConfig) -> list[str]:
    """The feature-set id of each extractor with its sampling (nothing read or written)."""
    return [
        FeatureStore.feature_set_id(e.spec.to_dict(), parse_sampling(config.sampling[name]).to_dict())
        for name, e in zip(config.extractors, extractors, strict=True)
    ]


def feature_set_ids(store: FeatureStore, extractors: Sequence[Extractor], config: ExtractionConfig) -> list[str]:
    """:func:`planned_set_ids`, each set created in ``store`` if it is not there yet."""
    return [
        store.ensure_feature_set(spec=e.spec.to_dict(), sampling=parse_sampling(config.sampling[name]).to_dict())
        for name, e in zip(config.extractors, extractors, strict=True)
    ]


@dataclass(frozen=True)
class ExtractionPlan:
    """The videos of a manifest still to extract into a store.

    ``pending``: entries missing from at least one of ``set_ids`` (in manifest order);
    ``stored``: how many entries every set already holds (a run skips them).
    """

    set_ids: tuple[str, ...]
    pending: tuple[ManifestEntry, ...]
    stored: int


def plan_extraction(
    entries: Sequence[ManifestEntry], store: str, extractors: Sequence[Extractor], config: ExtractionConfig
) -> ExtractionPlan:
    """Which of ``entries`` still need extracting into ``store``; reads the store (one listing
    per feature set), writes nothing, and treats a store that does not exist yet as empty."""
    set_ids = planned_set_ids(extractors, config)
    try:
        feature_store = FeatureStore(store, create=False)
    except FeatureNotFoundError:
        return ExtractionPlan(tuple(set_ids), tuple(entries), 0)
    existing = set(feature_store.feature_sets())
    stored = [set(feature_store.video_ids(s)) if s in existing else set() for s in set_ids]
    pending = tuple(e for e in entries if not all(e.video_id in ids for ids in stored))
    return ExtractionPlan(tuple(set_ids), pending, len(entries) - len(pending))


def damaged_videos(store: str, set_ids: Sequence[str], video_ids: Sequence[str]) -> dict[str, list[str]]:
    """Per feature set, those of ``video_ids`` that ``feature_store.verify`` finds damaged
    (every value is read: this takes as long as reading the sets). Sets not in the store are
    left out."""
    try:
        feature_store = FeatureStore(store, create=False)
    except FeatureNotFoundError:
        return {}
    present = [s for s in set_ids if s in set(feature_store.feature_sets())]
    if not present:
        return {}
    report = verify(feature_store, set_ids=present)
    wanted = set(video_ids)
    damaged: dict[str, list[str]] = {}
    for problem in report.problems:  # "<set id> / <video id>: <what is wrong>"
        set_id, sep, rest = problem.partition(" / ")
        if not sep or set_id not in present:
            continue
        # the video id is the part before one of the ": " (ids may contain ": " themselves)
        candidates = [rest[:i] for i in range(len(rest)) if rest.startswith(": ", i)]
        video_id = next((c for c in candidates if c in wanted), None)
        if video_id is not None and video_id not in damaged.get(set_id, []):
            damaged.setdefault(set_id, []).append(video_id)
    return damaged


def remove_damaged(store: str, damaged: Mapping[str, Sequence[str]]) -> int:
    """Remove the damaged videos (``damaged_videos``' result) so that the next run extracts
    them again; returns how many were removed."""
    feature_store = FeatureStore(store, create=False)
    removed = 0
    for set_id, video_ids in damaged.items():
        removed += remove(feature_store, set_id, video_ids=list(video_ids))
        logger.info("removed %d damaged video(s) of %s for re-extraction", len(video_ids), set_id)
    return removed


def empty_summary(set_ids: Sequence[str], extractors: Sequence[str]) -> dict:
    """A run summary with nothing counted yet: ``done``, ``skipped``, ``failed``, ``frames``
    (steps of the first extractor), ``steps`` (per extractor), ``failures`` (video id ->
    one-line reason), ``tracebacks`` (video id -> traceback, for the run record) and the
    feature sets."""
    return {
        "done": 0,
        "skipped": 0,
        "failed": 0,
        "frames": 0,
        "steps": {name: 0 for name in extractors},
        "failures": {},
        "tracebacks": {},
        "feature_sets": list(set_ids),
    }


def write_run_record(store: str, summary: dict, config: ExtractionConfig) -> str | None:
    """Write the run's summary and configuration to ``<store>/_runs/extract-<UTC time>.json``;
    returns where (a path, or a URL for a remote store), or None when the store cannot take it
    (read-only, full): the run's summary is still returned and printed, with a warning."""
    stamp = _utc_stamp()
    record = {
        "config": {**config.__dict__, "weights": dict(config.weights), "sampling": dict(config.sampling)},
        **summary,
    }
    try:
        return FeatureStore(store).write_run_file(f"extract-{stamp}.json", json.dumps(record, indent=2, default=str))
    except OSError as exc:
        logger.warning(
            "the run record could not be written to %s (%s); the summary below is its only copy",
            store,
            exc.strerror or exc,
        )
        return None


def _utc_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def scan_video_folder(
    folder: str | os.PathLike[str],
    *,
    suffixes: Sequence[str] = VIDEO_SUFFIXES,
    on_skip: Callable[[str], None] | None = None,
) -> list[ManifestEntry]:
    """Every video file under ``folder`` (recursively, by suffix; hidden files and folders
    left out), sorted by id.

    A video's id is its path relative to ``folder`` with ``/`` separators
    (``2024/clip 01.mp4``): stable across runs and machines while the file stays where it is.
    Paths are absolute. Files (or symbolic links) that resolve outside ``folder``, and links
    that cannot be resolved (a loop), are skipped with one warning each, logged, or handed to
    ``on_skip`` instead (a caller that lists the folder twice reports them once). Raises
    ``FlowError`` if ``folder`` is not a directory.
    """
    skip = on_skip or logger.warning
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FlowError(f"video folder {folder} is not a directory")
    root_resolved = root.resolve()
    wanted = tuple(s.lower() for s in suffixes)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith(".") or not filename.lower().endswith(wanted):
                continue
            path = Path(dirpath) / filename
            try:
                resolved = path.resolve()
            except (OSError, RuntimeError) as exc:  # a symbolic link loop (RuntimeError before Python 3.13)
                skip(f"skipping {path}: it cannot be resolved ({exc})")
                continue
            if root_resolved not in resolved.parents:
                skip(f"skipping {path}: it resolves to {resolved}, outside {root_resolved}")
                continue
            if not resolved.is_file():
                continue
            video_id = path.relative_to(root).as_posix()
            entries.append(ManifestEntry(video_id=video_id, path=path.absolute()))
    return sorted(entries, key=lambda e: e.video_id)


def write_folder_manifest(
    folder: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    suffixes: Sequence[str] = VIDEO_SUFFIXES,
    entries: Sequence[ManifestEntry] | None = None,
) -> tuple[Path, int]:
    """Write a manifest (``video_id,path``) of :func:`scan_video_folder`'s videos (or of
    ``entries``, a listing already made) to ``out``, replaced atomically if it exists.
    Returns its path and the number of videos."""
    if entries is None:
        entries = scan_video_folder(folder, suffixes=suffixes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(
        out,
        ({"video_id": e.video_id, "path": str(e.path)} for e in entries),
        columns=("video_id", "path"),
        overwrite=True,
    )
    return out, len(entries)


def write_folder_listing(
    folder: str | os.PathLike[str],
    feature_store: FeatureStore,
    *,
    manifest_out: str | os.PathLike[str] | None = None,
    entries: Sequence[ManifestEntry] | None = None,
) -> tuple[Path, int]:
    """The folder's manifest where ``extract_folder_flow`` keeps it: ``manifest_out``, else
    ``<store>/_runs/extract-folder-<UTC time>.csv`` (for a store URL: a local temporary file,
    also copied to the store's run records). Returns the local path and the number of videos."""
    name = f"extract-folder-{_utc_stamp()}.csv"
    copy_to_store = manifest_out is None and not feature_store.is_local  # a URL: the flow reads a local file
    if copy_to_store:
        manifest_out = str(Path(tempfile.mkdtemp(prefix="vqa-manifest-")) / name)
    manifest, n_videos = write_folder_manifest(
        folder, out=manifest_out or feature_store.runs_dir / name, entries=entries
    )
    if copy_to_store:
        feature_store.write_run_file(name, Path(manifest).read_text(encoding="utf-8"))
    return manifest, n_videos
