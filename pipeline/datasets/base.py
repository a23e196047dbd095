"""The dataset adapter framework: the registry, ``make_manifest`` and its validation.

An adapter (``pipeline.datasets.video``, ``pipeline.datasets.images``) reads a dataset's label
files into :class:`Labels`: one :class:`Row` per item with the places its file may be. This
module checks every row (ids, MOS, files), reports every problem at once, and writes the
manifest (:func:`vqa_core.manifest.write_manifest`). See the package docstring for the rules.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vqa_core.atomic import atomic_write
from vqa_core.errors import ManifestExistsError
from vqa_core.manifest import write_manifest
from vqa_core.registry import Registry

from ..errors import DatasetError, UnknownDatasetError

logger = logging.getLogger(__name__)

# In order of preference when one stem matches several files.
VIDEO_SUFFIXES = (
    ".mp4",
    ".mkv",
    ".avi",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ts",
    ".yuv",
)
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
MAX_SHOWN = 10  # examples shown per kind of problem in an error message


@dataclass
class DatasetReport:
    """What ``make_manifest`` wrote.

    ``problems``: warnings (the fatal ones raise ``DatasetError``). ``splits``: the
    ``.splits.npy`` file written next to the manifest, or None. ``label_file``: the label
    file that was read; ``split``: the split chosen, for datasets that have several.
    """

    name: str
    manifest: Path
    n_videos: int
    problems: list[str] = field(default_factory=list)
    splits: Path | None = None
    label_file: Path | None = None
    split: str | None = None


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Row:
    """One labelled item. ``candidates``: where the file may be, in order; the first is
    written when files are not checked. ``any_suffix``: the stem may carry any media suffix."""

    video_id: str
    candidates: tuple[Path, ...]
    mos: Any
    where: str
    group: str | None = None
    any_suffix: bool = False


@dataclass
class Labels:
    """What an adapter read: the rows, the label file, and what it found wrong on the way."""

    rows: list[Row]
    label_file: Path
    problems: list[tuple[str, str]] = field(default_factory=list)  # fatal: (kind, message)
    warnings: list[str] = field(default_factory=list)
    splits: np.ndarray | None = None


@dataclass
class Context:
    """What an adapter is given: the dataset name, its folder, the caller's choices."""

    name: str
    root: Path
    label_file: Path | None
    split: str | None
    out: Path

    def find_label_file(self, candidates: Sequence[str]) -> Path:
        """The label file: the one passed by the caller (relative to the working directory,
        else to ROOT), else the first of ``candidates`` (relative to ROOT) that exists."""
        if self.label_file is not None:
            given = self.label_file
            for path in (given, self.root / given) if not given.is_absolute() else (given,):
                if path.is_file():
                    return path
            raise DatasetError(f"{self.name}: label file {given} does not exist")
        for candidate in candidates:
            path = self.root / candidate
            if path.is_file():
                return path
        raise DatasetError(
            f"{self.name}: no label file in {self.root}; expected one of: {', '.join(candidates)} "
            "(or name it with label_file=)"
        )


@dataclass(frozen=True)
class Adapter:
    """A registered dataset: ``read(context) -> Labels`` and what it expects."""

    name: str
    layout: str
    read: Callable[[Context], Labels]
    suffixes: tuple[str, ...]
    splits: tuple[str, ...] = ()  # accepted split names, the first is the default


#: Dataset adapters by name, in registration order (the order ``vqa dataset list`` shows).
DATASETS: Registry[Adapter] = Registry("dataset", error=UnknownDatasetError, sort=False)


def register_dataset(name: str, layout: str, *, images: bool = False, splits: Sequence[str] = ()):
    """Decorator registering ``read(context) -> Labels`` as dataset ``name``.

    ``layout``: one line describing the folder the adapter expects; ``images``: the items are
    images (image suffixes are matched); ``splits``: accepted split names, the first the default.
    """

    def register(read: Callable[[Context], Labels]) -> Callable[[Context], Labels]:
        DATASETS.register(
            name, Adapter(name, layout, read, IMAGE_SUFFIXES if images else VIDEO_SUFFIXES, tuple(splits))
        )
        return read

    return register


def list_datasets() -> list[tuple[str, str]]:
    """(name, one-line description of the folder layout the adapter expects), in a fixed order."""
    return [(adapter.name, adapter.layout) for _, adapter in DATASETS.items()]


# --------------------------------------------------------------------------- entry point


def make_manifest(
    name: str,
    root: str | Path,
    *,
    out: str | Path,
    check_files: bool = True,
    overwrite: bool = False,
    label_file: str | Path | None = None,
    split: str | None = None,
    skip_missing: bool = False,
) -> DatasetReport:
    """Write the manifest of dataset ``name`` found in folder ``root`` to ``out``.

    ``skip_missing`` (``vqa dataset make --skip-missing``): leave out the labelled videos whose
    file is not there (each listed in the report's warnings) instead of refusing.

    ``label_file``: read this label file instead of looking for the usual name (relative to
    the working directory, else to ``root``). ``split``: for datasets with several label
    files (``lsvq``: train, test, test-1080p; default train). ``check_files``: check that
    every labelled file exists (see the module docstring for how files are matched).
    ``overwrite``: replace an existing manifest (and splits file); refused by default.

    The manifest (and the ``vsfa-info`` splits file, ``<out stem>.splits.npy``, int64
    ``[n_splits, n_refs]``) are written atomically (:mod:`vqa_core.atomic`).
    Raises ``UnknownDatasetError``, ``ManifestExistsError``, or ``DatasetError`` listing every
    problem found (nothing is written then).
    """
    adapter = DATASETS.get(name)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset folder {root} does not exist or is not a folder")
    if out.is_dir():
        raise DatasetError(f"{name}: output {out} is a folder; name the manifest file")
    split = _checked_split(adapter, split)
    _refuse_existing(out, overwrite)
    context = Context(name, root, Path(label_file) if label_file is not None else None, split, out)
    labels = adapter.read(context)
    entries, warnings = _validate(adapter, labels, root=root, check_files=check_files, skip_missing=skip_missing)
    splits_path = None
    if labels.splits is not None:
        splits_path = _splits_path(out)
        _refuse_existing(splits_path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    if splits_path is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(labels.splits, dtype=np.int64), allow_pickle=False)
        try:
            atomic_write(splits_path, buffer.getvalue(), overwrite=overwrite, fsync=True)
        except FileExistsError:  # appeared since the check above
            raise ManifestExistsError(f"{splits_path} exists; pass overwrite=True to replace it") from None
    write_manifest(
        out,
        ({"video_id": video_id, "path": path, "mos": mos, "group": group} for video_id, path, mos, group in entries),
        overwrite=overwrite,
        fsync=True,
    )
    for warning in warnings:
        logger.warning("%s: %s", name, warning)
    logger.info("%s: wrote %d entries to %s", name, len(entries), out)
    return DatasetReport(
        name=name,
        manifest=out,
        n_videos=len(entries),
        problems=warnings,
        splits=splits_path,
        label_file=labels.label_file,
        split=split,
    )


def _checked_split(adapter: Adapter, split: str | None) -> str | None:
    if not adapter.splits:
        if split is not None:
            raise DatasetError(f"{adapter.name}: has no splits to choose from (got split={split!r})")
        return None
    if split is None:
        return adapter.splits[0]
    normal = split.strip().lower().replace("_", "-")
    if normal not in adapter.splits:
        raise DatasetError(f"{adapter.name}: unknown split {split!r}; choose one of {', '.join(adapter.splits)}")
    return normal


def _splits_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.splits.npy")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if not overwrite and (path.exists() or path.is_symlink()):
        raise ManifestExistsError(f"{path} exists; pass overwrite=True to replace it")


# --------------------------------------------------------------------------- validation


def _validate(
    adapter: Adapter, labels: Labels, *, root: Path, check_files: bool, skip_missing: bool = False
) -> tuple[list[tuple[str, Path, float, str | None]], list[str]]:
    """Check ids, MOS and files of every row; raise one DatasetError listing all problems
    (``skip_missing``: a missing file is a warning and its row is left out)."""
    problems = list(labels.problems)
    warnings = list(labels.warnings)
    if not labels.rows and not problems:
        problems.append(("empty label file", f"{labels.label_file} has no entries"))
    finder = _Finder(adapter.suffixes) if check_files else None
    root_abs = os.path.normpath(os.path.abspath(root))
    first_seen: dict[str, str] = {}
    entries = []
    for row in labels.rows:
        ok = True
        if not row.video_id:
            problems.append(("empty video id", f"{row.where}: empty video id"))
            ok = False
        elif row.video_id in first_seen:
            problems.append(
                ("duplicate video id", f"{row.where}: video id {row.video_id!r} already on {first_seen[row.video_id]}")
            )
            ok = False
        else:
            first_seen[row.video_id] = row.where
        mos, why = _parse_mos(row.mos)
        if why:
            problems.append(("invalid MOS", f"{row.where}: MOS of {row.video_id!r} {why}"))
            ok = False
        path = row.candidates[0]
        expected = os.path.normpath(os.path.abspath(path))
        if os.path.commonpath([root_abs, expected]) != root_abs:
            problems.append(
                (
                    "path outside the dataset folder",
                    f"{row.where}: {row.video_id!r} points to {expected}, outside {root}",
                )
            )
            ok = False
        elif finder is not None and row.video_id:
            found = finder.find(row)
            if found is None:
                tried = " or ".join(_shown(c, root) for c in row.candidates)
                if skip_missing:
                    warnings.append(f"{row.where}: {row.video_id!r}: no file at {tried}; left out")
                else:
                    problems.append(("missing file", f"{row.where}: {row.video_id!r}: no file at {tried}"))
                ok = False
            else:
                path = found
        if ok:
            entries.append((row.video_id, path, mos, row.group))
    if finder is not None:
        warnings.extend(finder.ambiguous)
        warnings.extend(finder.unlabelled_warning(root))
    if problems:
        raise DatasetError(
            _summary(adapter.name, labels, root, problems, len(labels.rows)),
            problems=[message for _, message in problems],
        )
    return entries, warnings


def _parse_mos(value: Any) -> tuple[float | None, str | None]:
    """(MOS, None) or (None, why it is not a usable MOS)."""
    if value is None:
        return None, "is missing"
    if isinstance(value, (bool, np.bool_)):
        return None, f"{value!r} is not a number"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None, "is empty"
        try:
            number = float(text)
        except ValueError:
            return None, f"{text!r} is not a number"
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"{value!r} is not a number"
    if not math.isfinite(number):
        return None, f"is {number}"
    return number, None


def _summary(name: str, labels: Labels, root: Path, problems: list[tuple[str, str]], n_rows: int) -> str:
    kinds: dict[str, list[str]] = {}
    for kind, message in problems:
        kinds.setdefault(kind, []).append(message)
    lines = [
        f"{name}: {len(problems)} problem(s) with dataset folder {root} (labels: {labels.label_file}); "
        "nothing was written:"
    ]
    for kind, messages in kinds.items():
        count = f"{len(messages)} of {n_rows}" if kind == "missing file" else str(len(messages))
        lines.append(f"  {kind} ({count}):")
        lines.extend(f"    {message}" for message in messages[:MAX_SHOWN])
        if len(messages) > MAX_SHOWN:
            lines.append(f"    ... and {len(messages) - MAX_SHOWN} more")
    if "missing file" in kinds:
        lines.append(
            "  (--skip-missing / skip_missing=True keeps only the videos present; --no-check-files / "
            "check_files=False writes every row without looking for the files)"
        )
    return "\n".join(lines)


def _shown(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


class _Finder:
    """Finds labelled files: the expected path, else a case-insensitive name or stem match in
    its folder. Each folder is listed at most once."""

    def __init__(self, suffixes: tuple[str, ...]):
        self.suffixes = suffixes
        self._listings: dict[Path, tuple[dict[str, list[str]], dict[str, list[str]]] | None] = {}
        self._used: dict[Path, set[str]] = {}
        self.ambiguous: list[str] = []

    def _listing(self, folder: Path):
        if folder not in self._listings:
            try:
                names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
            except OSError:
                self._listings[folder] = None
            else:
                by_name: dict[str, list[str]] = {}
                by_stem: dict[str, list[str]] = {}
                for name in names:
                    by_name.setdefault(name.casefold(), []).append(name)
                    if has_suffix(name, self.suffixes):
                        by_stem.setdefault(strip_media_suffix(name, self.suffixes).casefold(), []).append(name)
                self._listings[folder] = (by_name, by_stem)
        return self._listings[folder]

    def _use(self, path: Path) -> Path:
        self._used.setdefault(path.parent, set()).add(path.name.casefold())
        return path

    def find(self, row: Row) -> Path | None:
        for candidate in row.candidates:
            if candidate.is_file():
                return self._use(candidate)
        for candidate in row.candidates:
            listing = self._listing(candidate.parent)
            if listing is None:
                continue
            by_name, by_stem = listing
            names = by_name.get(candidate.name.casefold())
            if not names and row.any_suffix:
                names = by_stem.get(strip_media_suffix(candidate.name, self.suffixes).casefold())
            if names:
                chosen = self._preferred(names, candidate.name)
                if len(names) > 1:
                    self.ambiguous.append(
                        f"{row.where}: {row.video_id!r} matches {', '.join(names)} "
                        f"in {candidate.parent}; using {chosen}"
                    )
                return self._use(candidate.parent / chosen)
        return None

    def _preferred(self, names: list[str], wanted: str) -> str:
        wanted_suffix = Path(wanted).suffix.lower()

        def rank(name: str) -> tuple[int, int, int, str]:
            suffix = Path(name).suffix.lower()
            order = self.suffixes.index(suffix) if suffix in self.suffixes else len(self.suffixes)
            return (0 if name == wanted else 1, 0 if suffix == wanted_suffix else 1, order, name)

        return min(names, key=rank)

    def unlabelled_warning(self, root: Path) -> list[str]:
        """One warning naming media files that sit next to labelled ones but have no label."""
        extra: list[Path] = []
        for folder, used in self._used.items():
            listing = self._listing(folder)
            if listing is None:
                continue
            for names in listing[0].values():
                extra.extend(folder / n for n in names if n.casefold() not in used and has_suffix(n, self.suffixes))
        if not extra:
            return []
        extra.sort()
        examples = ", ".join(_shown(p, root) for p in extra[:5])
        more = ", ..." if len(extra) > 5 else ""
        return [f"{len(extra)} media file(s) next to labelled ones are not in the label file ({examples}{more})"]


def has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return PurePosixPath(name).suffix.lower() in suffixes


def strip_media_suffix(name: str, suffixes: Sequence[str] = VIDEO_SUFFIXES + IMAGE_SUFFIXES) -> str:
    """``name`` without its last suffix when that is a media suffix (``a.67.mp4`` -> ``a.67``;
    ``a.67`` stays: LSVQ names contain dots)."""
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in suffixes else name
