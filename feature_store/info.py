"""Text of ``vqa store info``: :func:`format_store_info` of :meth:`FeatureStore.info`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from feature_store._format import diff_keys

__all__ = ["format_store_info"]


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``("a.b", leaf)`` pairs, in key order, for one-line-per-field display."""
    if isinstance(value, Mapping) and value:
        return [pair for k, v in value.items() for pair in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def format_store_info(infos: Sequence[dict]) -> str:
    """Human-readable listing of :meth:`FeatureStore.info` for ``vqa store info``."""
    if not infos:
        return "no feature sets"
    lines = []
    for info in infos:
        lines.append(info["id"])
        lines.append(
            f"  videos: {info['n_videos']}   dims: {info['dims']}   steps: {info['total_steps']}"
            f"   {info['dtype']}   on disk: {_human_bytes(info['bytes_on_disk'])}"
        )
        packs = info.get("packs")
        if packs:
            garbage = packs["bytes"] - packs["live_bytes"]
            lines.append(
                f"  layout: packed, {packs['files']} segment file(s)"
                + (
                    f", {_human_bytes(garbage)} of replaced or removed videos (`vqa store migrate` frees it)"
                    if garbage
                    else ""
                )
            )
        lines.append(f"  created: {info.get('created')}")
        for key, value in _flatten({"sampling": info["sampling"], "spec": info["spec"]}):
            lines.append(f"  {key}: {_short(value, 90)}")
        prov = info["provenance"]
        if prov["n_distinct"] == 0:
            lines.append("  provenance: (no videos)")
        elif prov["consistent"]:
            lines.append("  provenance: consistent across all videos")
        else:
            groups = prov["groups"]
            keys = diff_keys(groups[0]["set"], groups[1]["set"])
            lines.append(
                f"  provenance: MIXED, {prov['n_distinct']} set-level provenances "
                f"(differ in {', '.join(keys)}); training will refuse to mix them"
            )
            for g in groups:
                lines.append(f"    {g['n_videos']} videos, e.g. {g['example']!r}")
        if info["incomplete"]:
            lines.append(
                f"  incomplete: {info['incomplete']} staging leftovers or in-flight writes "
                "(`vqa store clean` deletes leftovers of killed runs)"
            )
    n_sets = len(infos)
    n_videos = sum(i["n_videos"] for i in infos)
    total = sum(i["bytes_on_disk"] for i in infos)
    lines.append(f"{n_sets} feature set(s), {n_videos} video(s), {_human_bytes(total)} on disk")
    return "\n".join(lines)
