"""Convert feature sets to the packed layout, and compact packed sets: ``vqa store migrate``.

For each ``"nodes"`` set (one Zarr array per video), :func:`migrate`

1. copies every complete video into new segment files, in video-id order: the Zarr chunk
   bytes as they are (Blosc chunks are not re-encoded) and the video's metadata with its
   provenance, ``write_id`` and ``data_sha256``; each video is decoded and checked against
   its checksum first, and a set with a damaged video is left as it is (nothing changes);
   the segments are built in ``<set>/_staging`` and renamed into ``<set>/_packs`` (URL
   stores: one PUT each);
2. raises the store to format 2 and makes ``"packed"`` its default for new sets;
3. replaces the set's ``zarr.json`` with ``"layout": "packed"`` (one atomic replace or PUT):
   the commit point. Readers see the set whole before it, and whole after it;
4. removes the video nodes it copied (a node replaced meanwhile by a writer that still
   wrote the old layout is kept; ``verify`` reports it and a second ``migrate`` takes it in;
   copies of packed videos left by a killed migration are removed).

A process killed before step 3 leaves the set as it was plus segments that nothing reads
(the next ``migrate`` deletes them first); killed after it, video nodes that nothing reads
(the next ``migrate`` removes them). Run it while no extraction writes into the store:
writers switch to the packed layout at their next write, but a write in flight during the
switch may land in a node that only the next ``migrate`` takes in.

Packed sets are compacted: the records of finished writers' segments are merged into new
segments holding only the records that are read (replaced and removed videos are dropped),
and the old segments deleted (:meth:`feature_store._packs.PackedVideos.compact`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from feature_store._format import (
    DAMAGE_ERRORS,
    FORMAT_ATTR,
    LAYOUT_ATTR,
    PACKED,
    PACKED_FORMAT,
    STALE_FOREIGN_S,
    attributes,
    set_layout,
    stored_data_problem,
)
from feature_store._layout import NodeVideos
from feature_store._packs import (
    KIND_VIDEO,
    PACKS,
    SegmentWriter,
    build_record,
    decode_video,
    duplicate_node,
    encode_video,
    plain_blosc,
    stamp_of,
)
from feature_store.errors import InvalidFeaturesError
from feature_store.store import FeatureStore

__all__ = ["MigrationReport", "migrate"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 20


@dataclass
class MigrationReport:
    """What :func:`migrate` did, by feature set id.

    Attributes:
        converted: videos moved from ``"nodes"`` into packs (sets converted now, and video
            nodes found in sets converted earlier).
        compacted: ``(segments replaced, segments written, bytes freed)`` of packed sets.
    """

    converted: dict[str, int] = field(default_factory=dict)
    compacted: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = []
        for set_id in sorted(set(self.converted) | set(self.compacted)):
            parts = []
            if set_id in self.converted:
                parts.append(f"{self.converted[set_id]} video(s) moved into packs")
            replaced, written, freed = self.compacted.get(set_id, (0, 0, 0))
            if replaced:
                parts.append(f"{replaced} segment file(s) compacted into {written}, {freed} bytes freed")
            lines.append(f"{set_id}: " + ("; ".join(parts) or "packed, nothing to do"))
        lines.append(
            f"migrated {len(self.converted)} feature set(s) to the packed layout; "
            f"{sum(1 for c in self.compacted.values() if c[0])} compacted"
        )
        return "\n".join(lines)


def migrate(
    store: FeatureStore, *, set_ids: Sequence[str] | None = None, min_age_s: float = STALE_FOREIGN_S
) -> MigrationReport:
    """Convert feature sets (default: all) to the packed layout in place, compact those
    already packed, and make ``"packed"`` the store's default for new sets.

    Args:
        store: the store.
        set_ids: the feature sets (default: all).
        min_age_s: segments of writers on other hosts count as finished (and are compacted)
            when their last change is this old.

    Raises:
        FeatureNotFoundError: a set in ``set_ids`` does not exist.
        InvalidFeaturesError: a set holds damaged videos (each listed; that set and the ones
            after it are left as they are): run ``vqa store verify``, then re-extract or
            remove them.
    """
    set_ids = store.feature_sets() if set_ids is None else list(set_ids)
    for set_id in set_ids:
        store.layout.set_attrs(set_id)  # unknown sets fail before anything changes
    store.set_default_layout(PACKED)
    report = MigrationReport()
    for set_id in set_ids:
        moved = _take_in_nodes(store, set_id)
        if moved is not None:
            report.converted[set_id] = moved
        videos = store.layout.videos(set_id)
        report.compacted[set_id] = videos.compact(min_age_s=min_age_s)
    logger.info("migrated %s: %s", store.location, report)
    return report


def _take_in_nodes(store: FeatureStore, set_id: str) -> int | None:
    """Steps 1-4 of the module docstring for one set: the number of videos moved, or None
    for a packed set without video nodes."""
    layout = store.layout
    attrs = layout.set_attrs(set_id)
    set_key = layout.set_key(set_id)
    was_packed = set_layout(attrs) == PACKED
    nodes = NodeVideos(layout, set_id)  # the video nodes in the folder, whatever the layout says
    metas, _incomplete = nodes.video_metas()
    if was_packed and metas:
        packed_metas = layout.videos(set_id, attrs).video_metas()[0]
        copies = [v for v, m in metas.items() if duplicate_node(m, packed_metas)]
        for video_id in copies:  # left by a killed migration: already in the packs
            nodes.remove(video_id)
        metas = {v: m for v, m in metas.items() if v not in copies}
    if was_packed and not metas:
        return None
    if not was_packed:
        layout.fs.rmtree(f"{set_key}/{PACKS}")  # a killed migration's segments: never read in a "nodes" set
    writer = SegmentWriter(layout.fs, set_key)
    problems: list[str] = []
    try:
        for video_id in sorted(metas):
            record, problem = _node_record(nodes, video_id, metas[video_id])
            if problem is not None:
                problems.append(f"{set_id} / {video_id}: {problem}")
            elif not problems:
                writer.add(record)
        if problems:
            listed = "\n  ".join(problems[:_MAX_LISTED])
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise InvalidFeaturesError(
                f"feature set {set_id!r} was not migrated: {len(problems)} damaged video(s):\n  {listed}{more}\n"
                "run `vqa store verify`, then re-extract them with overwrite or remove them (`vqa store rm`)"
            )
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    if not was_packed:
        layout.write_set_attrs(set_id, {**attrs, LAYOUT_ATTR: PACKED, FORMAT_ATTR: PACKED_FORMAT})
        logger.info("feature set %s is packed now (%d videos)", set_id, len(metas))
    for video_id, meta in metas.items():
        current = nodes.complete_meta(video_id)
        if current is not None and attributes(current).get("write_id") == attributes(meta).get("write_id"):
            nodes.remove(video_id)
        else:
            logger.warning("%s / %s was rewritten during the migration; kept as a node", set_id, video_id)
    return len(metas)


def _node_record(nodes: NodeVideos, video_id: str, meta: dict) -> tuple[bytes | None, str | None]:
    """One video node as a packed record: (record, None), or (None, why it is damaged).

    Plain Blosc chunks are copied as they are (after decoding them once to check the
    data); other codecs are read through zarr and encoded again with the store's codec.
    """
    attrs = attributes(meta)
    order = [stamp_of(attrs.get("written")), attrs.get("write_id") or uuid.uuid4().hex]
    if plain_blosc(meta):
        shape = meta["shape"]
        rows, cols = meta["chunk_grid"]["configuration"]["chunk_shape"]
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        keys = [f"c{sep}{i}{sep}{j}" for i in range(-(-shape[0] // rows)) for j in range(-(-shape[1] // cols))]
        raws = nodes.fs.read_many([f"{nodes.key(video_id)}/{k}" for k in keys])
        chunks, parts, offset = [], [], 0
        for k in keys:
            raw = raws[f"{nodes.key(video_id)}/{k}"]
            if raw is None:
                return None, f"chunk {k} is missing"
            chunks.append([k, offset, len(raw)])
            parts.append(raw)
            offset += len(raw)
        blob = b"".join(parts)
        try:
            data = decode_video(meta, chunks, blob)
        except DAMAGE_ERRORS as exc:
            return None, f"chunks do not decode ({type(exc).__name__}: {exc})"
        problem = stored_data_problem(data, attrs.get("data_sha256"))
        if problem:
            return None, problem
        header = {"video_id": video_id, "order": order, "meta": meta, "chunks": chunks}
        return build_record(KIND_VIDEO, header, blob), None
    data, problem = nodes.read_stored(video_id)
    if problem:
        return None, problem
    new_meta, chunks, blob = encode_video(data, attrs)
    header = {"video_id": video_id, "order": order, "meta": new_meta, "chunks": chunks}
    return build_record(KIND_VIDEO, header, blob), None
