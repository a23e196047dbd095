"""Dataset manifests: a CSV with ``video_id``, ``path`` and optional ``mos`` and ``group``.

The manifest is the table both stages key by video id: extraction reads the paths, fitting
the MOS and groups. It lives here, outside every package, so that ``pipeline`` (which writes
manifests for datasets), ``flows`` and an analyst's notebook share one reader and one writer.

Paths are absolute or relative to the manifest's folder. They are data: never passed to a
shell or evaluated. A manifest is validated completely before anything is written anywhere.
With ``root`` (the dataset root), every path must lie inside it after resolving ``..`` and
symbolic links: a manifest cannot make the pipeline read files elsewhere. Extra columns
(``distortion``, ``level`` of the synthetic IQA set) are allowed and ignored by the reader.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import csvsafe
from .atomic import atomic_write
from .errors import ManifestError, ManifestExistsError

__all__ = ["MANIFEST_COLUMNS", "REQUIRED_COLUMNS", "ManifestEntry", "read_manifest", "write_manifest"]

REQUIRED_COLUMNS = ("video_id", "path")
MANIFEST_COLUMNS = ("video_id", "path", "mos", "group")
MAX_REPORTED = 10


@dataclass(frozen=True)
class ManifestEntry:
    """One row: ``path`` absolute (relative paths are joined to the manifest's folder)."""

    video_id: str
    path: Path
    mos: float | None = None
    group: str | None = None


def read_manifest(
    path: str | Path, *, require_mos: bool = False, root: str | Path | None = None
) -> list[ManifestEntry]:
    """Read and validate a manifest. Raises ``ManifestError`` listing every problem (row numbers
    count the header as row 1).

    ``root``: the dataset root. When given, a path that resolves outside it (``../x.mp4``, an
    absolute path elsewhere, or a symbolic link pointing out of it) is a problem; the error
    lists each such row with the path it resolves to. Returned paths are not resolved.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    root_dir = _dataset_root(root)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csvsafe.DictReader(fh)  # undoes the formula escape of our own writers
            header = [c.strip() for c in (reader.fieldnames or [])]
            columns = list(dict.fromkeys(header))
            raw_rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"manifest {path} is not a readable UTF-8 CSV: {exc}") from exc
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc.strerror or exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS + (("mos",) if require_mos else ()) if c not in columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks column(s) {', '.join(missing)}; found {columns or 'no header'}. "
            "Expected: video_id,path[,mos][,group]"
        )
    repeated = sorted({c for c in header if header.count(c) > 1 and c})
    if repeated:
        raise ManifestError(f"manifest {path} has repeated column(s) {', '.join(repeated)} in its header")
    # DictReader puts surplus fields in a list under the key None.
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in raw_rows]
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    first_row: dict[str, int] = {}
    base = path.resolve().parent
    for number, (row, raw_row) in enumerate(zip(rows, raw_rows, strict=True), start=2):
        surplus = [v for v in raw_row.get(None) or () if v.strip()]
        if surplus:  # empty trailing fields (a stray comma) are harmless
            problems.append(
                f"row {number}: {len(header) + len(raw_row[None])} fields, the header has "
                f"{len(header)} (unquoted comma in a name?)"
            )
            continue
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
        if "\x00" in raw_path:
            problems.append(f"row {number}: path of {video_id!r} contains a NUL character")
            continue
        video_path = Path(raw_path)
        video_path = video_path if video_path.is_absolute() else base / video_path
        outside = root_dir is not None and _outside(video_path, root_dir)
        if outside:
            problems.append(
                f"row {number}: path {raw_path!r} of {video_id!r} resolves to {outside}, "
                f"outside the dataset root {root_dir}"
            )
            continue
        entries.append(
            ManifestEntry(
                video_id=video_id,
                path=video_path,
                mos=mos,
                group=row.get("group") or None,
            )
        )
    if not rows:
        problems.append("no rows")
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ManifestError(f"manifest {path} has {len(problems)} problem(s):\n  {shown}{more}")
    return entries


def _dataset_root(root: str | Path | None) -> Path | None:
    """The dataset root, resolved (symbolic links followed); ``None`` when not given."""
    if root is None:
        return None
    resolved = Path(root).expanduser().resolve()
    if not resolved.is_dir():
        raise ManifestError(f"dataset root {root} is not a directory")
    return resolved


def _outside(path: Path, root: Path) -> Path | None:
    """``path`` with ``..`` and symbolic links resolved if that lies outside ``root`` (resolved),
    else ``None``."""
    resolved = Path(os.path.realpath(path))
    return None if resolved == root or root in resolved.parents else resolved


def write_manifest(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] = MANIFEST_COLUMNS,
    overwrite: bool = False,
    fsync: bool = False,
) -> Path:
    """Write ``rows`` (one mapping per video, keys from ``columns``) as a manifest CSV at ``path``.

    Values: a :class:`~pathlib.Path` is written relative to the manifest's folder when it lies
    under it, else absolute; ``None`` and missing keys as empty fields; anything else as
    ``str()`` (floats round-trip); text a spreadsheet would evaluate (``=cmd|...``) gets a leading
    apostrophe, which :func:`read_manifest` removes (:mod:`vqa_core.csvsafe`). The file is
    written atomically (temporary sibling, then rename); an existing one raises
    :class:`ManifestExistsError` unless ``overwrite``.
    ``fsync``: see :func:`vqa_core.atomic.atomic_write`. Returns ``path``.
    """
    path = Path(path)
    base = Path(os.path.abspath(path.parent))
    buffer = io.StringIO()
    writer = csvsafe.writer(buffer, lineterminator="\n")  # cells a spreadsheet would evaluate are escaped
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_field(row.get(column), base) for column in columns])
    try:
        atomic_write(path, buffer.getvalue(), overwrite=overwrite, fsync=fsync)
    except FileExistsError:
        raise ManifestExistsError(f"{path} exists; pass overwrite=True to replace it") from None
    return path


def _field(value: Any, base: Path) -> str:
    if value is None:
        return ""
    if isinstance(value, Path):
        absolute = Path(os.path.normpath(os.path.abspath(value)))
        try:
            return absolute.relative_to(base).as_posix()
        except ValueError:
            return str(absolute)
    return str(value)
