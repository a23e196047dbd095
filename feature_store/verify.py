"""Verify a feature store: every feature set's metadata, every complete video's metadata
and (optionally) data, leftovers of killed runs and writes in flight.

``vqa store verify`` is a thin wrapper around :func:`verify` and :func:`format_verify_report`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from feature_store._format import (
    COMPLETE,
    DTYPES,
    META,
    RUNS_DIR,
    STAGING,
    STALE_FOREIGN_S,
    attributes,
    canonical_json,
    diff_keys,
    json_sha256,
    provenance_groups,
    read_meta,
    set_dtype,
    validated_provenance,
    validated_spec_sampling,
)
from feature_store._naming import encode_node_name, owner_alive
from feature_store._packs import PACKS, PackedVideos, duplicate_node
from feature_store.errors import FeatureNotFoundError, FeatureStoreError, InvalidMetadataError
from feature_store.store import FeatureStore

__all__ = ["VerifyReport", "format_verify_report", "verify"]

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 200  # videos between progress log lines


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`.

    Attributes:
        n_videos: complete videos checked, by set id.
        problems: one line per problem, each naming the set and, where it applies, the
            video (``"<set> / <video>: <what>"``). Empty when the store is sound.
        leftovers: entries left by killed writers or removals (paths relative to the
            store); harmless to readers, deleted by :meth:`FeatureStore.remove_incomplete`.
        in_flight: staging entries of writers that are still running (not problems).
    """

    n_videos: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (leftovers and in-flight writes are allowed)."""
        return not self.problems

    def __str__(self) -> str:
        return format_verify_report(self)


def format_verify_report(report: VerifyReport, *, max_lines: int = 50) -> str:
    """Human-readable summary of a :class:`VerifyReport` for ``vqa store verify``.

    At most ``max_lines`` problems and leftovers are listed each; the counts are exact.
    """
    lines = []
    for set_id, n in sorted(report.n_videos.items()):
        n_bad = sum(1 for p in report.problems if p.startswith(f"{set_id} "))
        state = "ok" if n_bad == 0 else f"{n_bad} problem(s)"
        lines.append(f"{set_id}: {n} complete video(s) checked, {state}")
    n_videos = sum(report.n_videos.values())
    if report.problems:
        lines.append(f"PROBLEMS ({len(report.problems)}):")
        lines.extend(f"  {p}" for p in report.problems[:max_lines])
        if len(report.problems) > max_lines:
            lines.append(f"  ... and {len(report.problems) - max_lines} more")
    if report.leftovers:
        lines.append(
            f"leftovers of killed runs ({len(report.leftovers)}; harmless, `vqa store clean STORE` deletes them):"
        )
        lines.extend(f"  {p}" for p in report.leftovers[:max_lines])
        if len(report.leftovers) > max_lines:
            lines.append(f"  ... and {len(report.leftovers) - max_lines} more")
    if report.in_flight:
        lines.append(f"writes in progress: {len(report.in_flight)}")
    verdict = "OK" if report.ok else "FAILED"
    lines.append(
        f"verify {verdict}: {len(report.n_videos)} feature set(s), {n_videos} video(s), "
        f"{len(report.problems)} problem(s), {len(report.leftovers)} leftover(s)"
    )
    return "\n".join(lines)


def verify(
    store: FeatureStore,
    *,
    set_ids: Sequence[str] | None = None,
    read_data: bool = True,
    workers: int | None = None,
) -> VerifyReport:
    """Check a store (or some of its feature sets) for damage.

    For every feature set: its attributes are valid; every complete video node is named
    after its ``video_id``, is a 2-D [steps, dims] array of the set's dtype with ``dims``
    equal to ``spec["dims"]`` (or, without it, to the other videos'), carries a provenance
    whose stored hash matches it and whose spec/sampling are the set's; all videos share
    one set-level provenance; and (``read_data=True``) every chunk decodes, holds no
    NaN/Inf (a missing chunk reads as NaN, the fill value) and the data matches the video's
    ``data_sha256`` checksum where it has one. Nodes of killed writers are listed as
    leftovers, staging entries of live writers as in flight (object stores: incomplete
    nodes whose writer is alive, or runs on another host and wrote within the last hour).
    Without ``set_ids`` unknown entries at the store's root are reported too.

    Args:
        store: the store to check.
        set_ids: the feature sets to check (default: all).
        read_data: read and check every value (the slow part); ``False`` checks metadata
            only.
        workers: threads reading and checking data (default: the CPU count, at most 4).

    Raises:
        FeatureNotFoundError: a set in ``set_ids`` does not exist.
    """
    report = VerifyReport()
    workers = workers or min(4, os.cpu_count() or 1)
    if set_ids is None:
        set_ids = store.feature_sets()
        _check_root(store, report)
    else:
        set_ids = list(set_ids)
        for set_id in set_ids:
            store.layout.set_attrs(set_id)  # raises with hints for unknown sets
    for set_id in set_ids:
        _verify_set(store, set_id, report, read_data=read_data, workers=workers)
    logger.info("verified %s: %d problem(s)", store.location, len(report.problems))
    return report


def _classify_staging(name: str, rel: str, report: VerifyReport) -> None:
    if owner_alive(name.lstrip(".")) is False:
        report.leftovers.append(rel)
    else:  # alive, or from another host: cannot tell, do not call it a leftover yet
        report.in_flight.append(rel)


def _check_root(store: FeatureStore, report: VerifyReport) -> None:
    fs = store.layout.fs
    set_nodes = {encode_node_name(s) for s in store.feature_sets()}
    removing = store.layout.commit.pending_removals()
    for entry in fs.list(""):
        if entry.name in (META, RUNS_DIR) or entry.name in set_nodes:
            continue
        if entry.name == STAGING:
            for sub in fs.list(STAGING):
                if sub.name != META:
                    _classify_staging(sub.name, f"{STAGING}/{sub.name}", report)
        elif entry.name.startswith(".init."):
            _classify_staging(entry.name, entry.name, report)
        elif entry.name.startswith("."):
            continue  # hidden files (.DS_Store, ...) are not the store's
        elif entry.name in removing:
            report.leftovers.append(entry.name)  # a killed removal of a whole feature set
        else:
            report.problems.append(f"(store) {entry.name}: not a feature set of this store (foreign or damaged)")


def _verify_set(store: FeatureStore, set_id: str, report: VerifyReport, *, read_data: bool, workers: int) -> None:
    layout = store.layout
    attrs = layout.set_attrs(set_id)
    node = layout.set_key(set_id)
    dtype = set_dtype(attrs)
    now = time.time()
    where = f"{set_id} (set)"
    try:
        spec, sampling = validated_spec_sampling(attrs.get("spec"), attrs.get("sampling"))
        if store.feature_set_id(spec, sampling) != set_id:
            report.problems.append(f"{where}: id does not match its spec and sampling")
    except InvalidMetadataError as exc:
        report.problems.append(f"{where}: invalid spec/sampling: {exc}")
        spec, sampling = None, None  # then videos are not compared with them
    if dtype not in DTYPES:
        report.problems.append(f"{where}: unknown storage dtype {dtype!r}")
    if not layout.fs.is_file(f"{node}/{STAGING}/{META}"):
        report.problems.append(f"{where}: its {STAGING} group is missing")

    videos = layout.videos(set_id, attrs)
    if isinstance(videos, PackedVideos):
        metas = _packed_metas(videos, layout.commit, node, report, now=now)
    else:
        metas = _node_metas(layout, set_id, node, report, now=now)

    dims_expected = (spec or {}).get("dims")
    if dims_expected is None and metas:
        shapes = [m.get("shape") for m in metas.values()]
        widths = [s[1] for s in shapes if isinstance(s, list) and len(s) == 2 and isinstance(s[1], int)]
        if widths:
            dims_expected = max(set(widths), key=widths.count)
    sound: dict[str, dict] = {}
    set_parts = {"spec": spec, "sampling": sampling}
    found: dict[str, list[str]] = {}
    for video_id, meta in sorted(metas.items()):
        found[video_id] = _check_video_meta(set_id, video_id, meta, set_parts, dtype, dims_expected)
        if not found[video_id]:
            sound[video_id] = meta
    if read_data and sound:
        # decoding, checksums and reads release the GIL: a few threads keep the cores busy
        def check(item: tuple[int, str]) -> str | None:
            i, video_id = item
            if (i + 1) % _PROGRESS_EVERY == 0:
                logger.info("%s: %d of %d videos checked", set_id, i + 1, len(sound))
            return _check_video_data(videos, set_id, video_id)

        with ThreadPoolExecutor(max(1, min(workers, len(sound)))) as pool:
            for video_id, problem in zip(sound, pool.map(check, enumerate(sound)), strict=True):
                if problem:
                    found[video_id].append(problem)
    for problems in found.values():
        report.problems.extend(problems)
    report.n_videos[set_id] = len(metas)

    groups = provenance_groups(sound)
    if len(groups) > 1:
        (_main_hash, main_videos), *others = groups
        main_prov = metas[main_videos[0]]["attributes"]["provenance"]["set"]
        for _hash, videos in others:
            keys = diff_keys(main_prov, metas[videos[0]]["attributes"]["provenance"]["set"])
            for video_id in videos:
                report.problems.append(
                    f"{set_id} / {video_id}: set-level provenance differs from that of "
                    f"{len(main_videos)} other video(s), e.g. {main_videos[0]!r} (keys: "
                    f"{', '.join(keys)}); reading them together is refused"
                )


def _node_metas(layout: Any, set_id: str, node: str, report: VerifyReport, *, now: float) -> dict[str, dict]:
    """Metadata of the complete video nodes of a ``"nodes"`` set, by id; staging entries,
    unfinished nodes and misplaced ones go to the report."""
    metas: dict[str, dict] = {}
    for entry in sorted(layout.fs.list(node), key=lambda e: e.name):
        rel = f"{node}/{entry.name}"
        if entry.name == META:
            continue
        if entry.name == STAGING:
            for sub in layout.fs.list(rel):
                if sub.name != META:
                    _classify_staging(sub.name, f"{rel}/{sub.name}", report)
            continue
        if entry.name.startswith("_"):
            continue  # the store's own nodes (cached statistics)
        if not entry.is_dir:
            report.problems.append(f"{set_id} / {entry.name}: stray file in the feature set")
            continue
        meta = layout.read_meta(rel)
        attrs_v = attributes(meta)
        if meta is None and not layout.fs.is_dir(rel):
            continue  # moved aside by a concurrent overwrite or removal
        if meta is None or (meta.get("node_type") == "array" and attrs_v.get("status") != COMPLETE):
            # torn or unfinished: what remove_incomplete deletes (object stores: unless its
            # writer may still be at work)
            in_flight = layout.commit.in_flight(rel, meta, now=now, min_age_s=STALE_FOREIGN_S)
            (report.in_flight if in_flight else report.leftovers).append(rel)
            continue
        video_id = attrs_v.get("video_id")
        if meta.get("node_type") != "array" or not isinstance(video_id, str):
            report.problems.append(f"{set_id} / {entry.name}: not a video array")
            continue
        try:
            expected = encode_node_name(video_id)
        except InvalidMetadataError as exc:
            report.problems.append(f"{set_id} / {entry.name}: invalid video id ({exc})")
            continue
        if expected != entry.name:
            report.problems.append(
                f"{set_id} / {video_id}: stored under node {entry.name!r}, expected "
                f"{expected!r} (renamed by hand?); readers cannot find it"
            )
            continue
        metas[video_id] = meta
    return metas


def _packed_metas(videos: PackedVideos, commit: Any, node: str, report: VerifyReport, *, now: float) -> dict[str, dict]:
    """Metadata of the stored videos of a packed set, by id. Torn records at the end of a
    segment are in flight (writer alive, or on another host and active within the hour) or
    leftovers; records or bytes that do not read are problems; video nodes in the set
    (written by a ``"nodes"`` writer while the set was migrated) are leftovers."""
    fs, set_id = videos.fs, videos.set_id
    metas, _incomplete = videos.video_metas()
    for entry in sorted(fs.list(node), key=lambda e: e.name):
        rel = f"{node}/{entry.name}"
        if entry.name == STAGING:
            for sub in fs.list(rel):
                if sub.name != META:
                    _classify_staging(sub.name, f"{rel}/{sub.name}", report)
        elif entry.name == META or entry.name.startswith("_"):
            continue
        elif not entry.is_dir:
            report.problems.append(f"{set_id} / {entry.name}: stray file in the feature set")
        elif duplicate_node(read_meta(fs, rel), metas) is False:
            report.problems.append(
                f"{set_id} / {entry.name}: a video node in a packed set (written while the set was "
                "migrated), not read: run `vqa store migrate` to take it in"
            )
        elif duplicate_node(meta := read_meta(fs, rel), metas) is None and commit.in_flight(
            rel, meta, now=now, min_age_s=STALE_FOREIGN_S
        ):
            report.in_flight.append(rel)  # an unfinished node whose writer may still run
        else:  # unfinished, or a copy of a packed video left by a killed migration
            report.leftovers.append(rel)
    index = videos.index
    packs = f"{node}/{PACKS}"
    for name in sorted(index.foreign):
        report.problems.append(f"{set_id} ({packs}/{name}): not a segment of this store (foreign file)")
    for name, (offset, n_bytes, running) in sorted(videos.torn_tails(now=now, min_age_s=STALE_FOREIGN_S).items()):
        where = f"{packs}/{name} (torn record: {n_bytes} bytes from byte {offset})"
        (report.in_flight if running else report.leftovers).append(where)
    for name, state in sorted(index.segments.items()):
        if state.tail is not None and state.tail[0] == "damaged":
            _kind, offset, why = state.tail
            report.problems.append(
                f"{set_id} ({packs}/{name} at byte {offset}): damaged segment, {why}; the "
                f"{state.size - offset} bytes from there are not read"
            )
    for (name, offset), why in sorted(index.damaged.items()):
        report.problems.append(f"{set_id} ({packs}/{name} at byte {offset}): damaged record, {why}")
    return metas


def _check_video_meta(
    set_id: str, video_id: str, meta: dict, set_parts: dict, dtype: str, dims: int | None
) -> list[str]:
    """Problems of one complete video's metadata; ``set_parts`` holds the set's canonical
    spec and sampling (``None`` when those are invalid)."""
    where = f"{set_id} / {video_id}"
    out = []
    shape = meta.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
    ):
        return [f"{where}: shape {shape} is not 2-D [steps, dims]"]
    if shape[0] < 1 or shape[1] < 1:
        out.append(f"{where}: empty shape {shape}")
    if dims is not None and shape[1] != dims:
        out.append(f"{where}: {shape[1]} dims, the set has {dims}")
    if meta.get("data_type") != dtype:
        out.append(f"{where}: dtype {meta.get('data_type')}, the set stores {dtype}")
    attrs = meta["attributes"]
    if not isinstance(attrs.get("data_sha256"), (str, type(None))):
        out.append(f"{where}: data_sha256 {attrs.get('data_sha256')!r} is not a checksum string")
    try:
        prov = validated_provenance(attrs.get("provenance"), video_id)
    except InvalidMetadataError as exc:
        return [*out, f"{where}: invalid provenance: {exc}"]
    if attrs.get("set_provenance_sha256") != json_sha256(prov["set"]):
        out.append(f"{where}: provenance does not match its stored hash (edited by hand?)")
    for key, value in set_parts.items():
        if value is not None and key in prov["set"] and canonical_json(prov["set"][key]) != canonical_json(value):
            out.append(f"{where}: provenance names another {key} than the set's")
    return out


def _check_video_data(videos: Any, set_id: str, video_id: str) -> str | None:
    """Why a complete video's data is damaged (a problem line), or None."""
    where = f"{set_id} / {video_id}"
    try:
        _data, problem = videos.read_stored(video_id)
    except FeatureNotFoundError:
        logger.debug("%s was replaced or removed while verifying", where)
        return None
    except FeatureStoreError as exc:  # metadata zarr cannot open
        return f"{where}: damaged: {exc}"
    return f"{where}: {problem}; re-extract it with overwrite" if problem else None
