"""Dataset manifests: a CSV with ``video_id``, ``path`` and optional ``mos`` and ``group``.

Paths are absolute or relative to the manifest's folder. They are data: never passed to a
shell or evaluated. A manifest is validated completely before anything is written anywhere.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ManifestError

REQUIRED_COLUMNS = ("video_id", "path")
MAX_REPORTED = 10


@dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    path: Path
    mos: float | None = None
    group: str | None = None


def read_manifest(path: str | Path, *, require_mos: bool = False) -> list[ManifestEntry]:
    """Read and validate a manifest. Raises ``ManifestError`` listing every problem (row numbers
    count the header as row 1)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"manifest {path} is not a readable UTF-8 CSV: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS + (("mos",) if require_mos else ()) if c not in columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks column(s) {', '.join(missing)}; found {columns or 'no header'}. "
            "Expected: video_id,path[,mos][,group]"
        )
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    first_row: dict[str, int] = {}
    base = path.resolve().parent
    for number, row in enumerate(rows, start=2):
        video_id, raw_path = row.get("video_id", ""), row.get("path", "")
        if not video_id:
            problems.append(f"row {number}: empty video_id")
            continue
        if video_id in first_row:
            problems.append(f"row {number}: duplicate video_id {video_id!r} (first on row {first_row[video_id]})")
            continue
        first_row[video_id] = number
        if not raw_path:
            problems.append(f"row {number}: empty path for {video_id!r}")
            continue
        mos = None
        if row.get("mos"):
            try:
                mos = float(row["mos"])
            except ValueError:
                problems.append(f"row {number}: mos {row['mos']!r} of {video_id!r} is not a number")
                continue
            if not math.isfinite(mos):
                problems.append(f"row {number}: mos of {video_id!r} is {row['mos']}")
                continue
        elif require_mos:
            problems.append(f"row {number}: missing mos for {video_id!r}")
            continue
        video_path = Path(raw_path)
        entries.append(ManifestEntry(
            video_id=video_id,
            path=video_path if video_path.is_absolute() else base / video_path,
            mos=mos,
            group=row.get("group") or None,
        ))
    if not rows:
        problems.append("no rows")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ManifestError(f"manifest {path} has {len(problems)} problem(s):\n  {shown}{more}")
    return entries
