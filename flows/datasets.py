"""Dataset adapters: a dataset folder, as it ships, in; a manifest CSV out.

::

    ROOT (label files + media, as downloaded)
      |  adapter: reads the label file(s), names each video's expected place
      v
    rows: video_id, candidate paths, raw MOS, group
      |  validation: ids, MOS, files (every problem found, reported at once)
      v
    <out> (video_id,path,mos,group)  [+ <out stem>.splits.npy for ``vsfa-info``]

``list_datasets()`` names the adapters and the layout each expects; ``make_manifest(name,
root, out=...)`` writes the manifest (see ``flows.manifest``). Paths in it are relative to the
manifest's folder when the file lies under that folder, else absolute. ``group`` holds the
source / reference content id where the dataset has one (for content-separated splits), else
it is empty. Label files and names in them are data: nothing is passed to a shell.

Fatal problems raise one ``DatasetError`` listing all of them; nothing is written:

- no label file, an unreadable or empty one, missing columns or MATLAB variables;
- an empty or duplicate video id;
- a MOS that is missing, not a number, NaN or infinite;
- a label path that leads out of the dataset folder (``../x.mp4``, an absolute path elsewhere);
- with ``check_files=True`` (default): a labelled file that is not there;
- dataset-specific inconsistencies (variables of different lengths, a split index that is
  not a permutation of the reference ids).

Warnings go to ``DatasetReport.problems`` and the manifest is written:

- media files next to labelled ones that no label names (expected when a label file covers
  one split);
- a label name that matches several files (``x.mkv`` and ``x.mp4``): the exact name wins,
  else the expected suffix, else the first in ``VIDEO_SUFFIXES`` / ``IMAGE_SUFFIXES`` order;
- a label file that is not UTF-8 (read as Latin-1).

File matching (``check_files=True``): the expected path first, then the same name ignoring
case, then (where the adapter says so) the same stem with any media suffix. With
``check_files=False`` the expected path is written without looking at the disk.
"""
from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import os
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DatasetError, ManifestExistsError, UnknownDatasetError

log = logging.getLogger(__name__)

# In order of preference when one stem matches several files.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".3gp", ".ts", ".yuv")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
MANIFEST_COLUMNS = ("video_id", "path", "mos", "group")
MAX_SHOWN = 10  # examples shown per kind of problem in an error message
LIVEC_PRACTICE_IMAGES = 7  # LIVE Challenge: the first 7 entries are the subjects' practice images
LSVQ_SPLITS = {  # split -> label files, official CSV first, then DOVER / FAST-VQA lists
    "train": ("LSVQ_whole_train.csv", "train_labels.txt"),
    "test": ("LSVQ_whole_test.csv", "labels_test.txt"),
    "test-1080p": ("LSVQ_whole_test_1080p.csv", "labels_1080p.txt"),
}


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
class _Row:
    """One labelled item. ``candidates``: where the file may be, in order; the first is
    written when files are not checked. ``any_suffix``: the stem may carry any media suffix."""

    video_id: str
    candidates: tuple[Path, ...]
    mos: Any
    where: str
    group: str | None = None
    any_suffix: bool = False


@dataclass
class _Labels:
    rows: list[_Row]
    label_file: Path
    problems: list[tuple[str, str]] = field(default_factory=list)  # fatal: (kind, message)
    warnings: list[str] = field(default_factory=list)
    splits: np.ndarray | None = None


@dataclass
class _Context:
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
class _Adapter:
    name: str
    layout: str
    read: Callable[[_Context], _Labels]
    suffixes: tuple[str, ...]
    splits: tuple[str, ...] = ()  # accepted split names, the first is the default


_ADAPTERS: dict[str, _Adapter] = {}


def _adapter(name: str, layout: str, *, images: bool = False, splits: Sequence[str] = ()):
    def register(read: Callable[[_Context], _Labels]):
        _ADAPTERS[name] = _Adapter(name, layout, read, IMAGE_SUFFIXES if images else VIDEO_SUFFIXES,
                                   tuple(splits))
        return read
    return register


def list_datasets() -> list[tuple[str, str]]:
    """(name, one-line description of the folder layout the adapter expects), in a fixed order."""
    return [(adapter.name, adapter.layout) for adapter in _ADAPTERS.values()]


def _get_adapter(name: str) -> _Adapter:
    try:
        return _ADAPTERS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _ADAPTERS, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise UnknownDatasetError(
            f"unknown dataset {name!r}{hint}; known datasets: {', '.join(_ADAPTERS)}"
        ) from None


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
) -> DatasetReport:
    """Write the manifest of dataset ``name`` found in folder ``root`` to ``out``.

    ``label_file``: read this label file instead of looking for the usual name (relative to
    the working directory, else to ``root``). ``split``: for datasets with several label
    files (``lsvq``: train, test, test-1080p; default train). ``check_files``: check that
    every labelled file exists (see the module docstring for how files are matched).
    ``overwrite``: replace an existing manifest (and splits file); refused by default.

    The manifest (and the ``vsfa-info`` splits file, ``<out stem>.splits.npy``, int64
    ``[n_splits, n_refs]``) are written atomically: a temporary file renamed into place.
    Raises ``UnknownDatasetError``, ``ManifestExistsError``, or ``DatasetError`` listing every
    problem found (nothing is written then).
    """
    adapter = _get_adapter(name)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset folder {root} does not exist or is not a folder")
    if out.is_dir():
        raise DatasetError(f"{name}: output {out} is a folder; name the manifest file")
    split = _checked_split(adapter, split)
    _refuse_existing(out, overwrite)
    context = _Context(name, root, Path(label_file) if label_file is not None else None, split, out)
    labels = adapter.read(context)
    entries, warnings = _validate(adapter, labels, root=root, check_files=check_files)
    splits_path = None
    if labels.splits is not None:
        splits_path = _splits_path(out)
        _refuse_existing(splits_path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    if splits_path is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(labels.splits, dtype=np.int64), allow_pickle=False)
        _atomic_write(splits_path, buffer.getvalue(), overwrite=overwrite)
    _atomic_write(out, _manifest_bytes(entries, out), overwrite=overwrite)
    for warning in warnings:
        log.warning("%s: %s", name, warning)
    log.info("%s: wrote %d entries to %s", name, len(entries), out)
    return DatasetReport(name=name, manifest=out, n_videos=len(entries), problems=warnings,
                         splits=splits_path, label_file=labels.label_file, split=split)


def _checked_split(adapter: _Adapter, split: str | None) -> str | None:
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


def _validate(adapter: _Adapter, labels: _Labels, *, root: Path,
              check_files: bool) -> tuple[list[tuple[str, Path, float, str | None]], list[str]]:
    """Check ids, MOS and files of every row; raise one DatasetError listing all problems."""
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
            problems.append(("duplicate video id",
                             f"{row.where}: video id {row.video_id!r} already on {first_seen[row.video_id]}"))
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
            problems.append(("path outside the dataset folder",
                             f"{row.where}: {row.video_id!r} points to {expected}, outside {root}"))
            ok = False
        elif finder is not None and row.video_id:
            found = finder.find(row)
            if found is None:
                tried = " or ".join(_shown(c, root) for c in row.candidates)
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
        raise DatasetError(_summary(adapter.name, labels, root, problems, len(labels.rows)),
                           problems=[message for _, message in problems])
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


def _summary(name: str, labels: _Labels, root: Path, problems: list[tuple[str, str]], n_rows: int) -> str:
    kinds: dict[str, list[str]] = {}
    for kind, message in problems:
        kinds.setdefault(kind, []).append(message)
    lines = [f"{name}: {len(problems)} problem(s) with dataset folder {root} (labels: {labels.label_file}); "
             "nothing was written:"]
    for kind, messages in kinds.items():
        count = f"{len(messages)} of {n_rows}" if kind == "missing file" else str(len(messages))
        lines.append(f"  {kind} ({count}):")
        lines.extend(f"    {message}" for message in messages[:MAX_SHOWN])
        if len(messages) > MAX_SHOWN:
            lines.append(f"    ... and {len(messages) - MAX_SHOWN} more")
    if "missing file" in kinds:
        lines.append("  (check_files=False writes the manifest without looking for the files)")
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
                    if _has_suffix(name, self.suffixes):
                        by_stem.setdefault(strip_media_suffix(name, self.suffixes).casefold(), []).append(name)
                self._listings[folder] = (by_name, by_stem)
        return self._listings[folder]

    def _use(self, path: Path) -> Path:
        self._used.setdefault(path.parent, set()).add(path.name.casefold())
        return path

    def find(self, row: _Row) -> Path | None:
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
                    self.ambiguous.append(f"{row.where}: {row.video_id!r} matches {', '.join(names)} "
                                          f"in {candidate.parent}; using {chosen}")
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
                extra.extend(folder / n for n in names
                             if n.casefold() not in used and _has_suffix(n, self.suffixes))
        if not extra:
            return []
        extra.sort()
        examples = ", ".join(_shown(p, root) for p in extra[:5])
        more = ", ..." if len(extra) > 5 else ""
        return [f"{len(extra)} media file(s) next to labelled ones are not in the label file ({examples}{more})"]


def _has_suffix(name: str, suffixes: Sequence[str]) -> bool:
    return PurePosixPath(name).suffix.lower() in suffixes


def strip_media_suffix(name: str, suffixes: Sequence[str] = VIDEO_SUFFIXES + IMAGE_SUFFIXES) -> str:
    """``name`` without its last suffix when that is a media suffix (``a.67.mp4`` -> ``a.67``;
    ``a.67`` stays: LSVQ names contain dots)."""
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix and suffix.lower() in suffixes else name


# --------------------------------------------------------------------------- writing


def _manifest_bytes(entries: list[tuple[str, Path, float, str | None]], out: Path) -> bytes:
    base = Path(os.path.abspath(out.parent))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for video_id, path, mos, group in entries:
        writer.writerow([video_id, _relative_or_absolute(path, base), repr(float(mos)), group or ""])
    return buffer.getvalue().encode("utf-8")


def _relative_or_absolute(path: Path, base: Path) -> str:
    absolute = Path(os.path.normpath(os.path.abspath(path)))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return str(absolute)


def _atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write to a temporary file in the same folder, then rename it into place (without
    ``overwrite``, a hard link refuses to replace a file that appeared meanwhile)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ManifestExistsError(f"{path} exists; pass overwrite=True to replace it") from None
        except OSError:  # no hard links on this filesystem
            if path.exists():
                raise ManifestExistsError(f"{path} exists; pass overwrite=True to replace it") from None
            os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------- label file readers


@dataclass
class _Table:
    """A delimited text file: header and rows as (line number, stripped fields)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]
    delimiter: str
    warnings: list[str]

    def where(self, line: int) -> str:
        return f"{self.path.name} line {line}"

    def columns(self, dataset: str, required: dict[str, Sequence[str]],
                optional: dict[str, Sequence[str]] | None = None) -> dict[str, int | None]:
        """Column index per role; names match ignoring case, spaces, '_' and '-'. Missing
        required roles raise one DatasetError naming them all."""
        normal = [_normal_column(c) for c in self.header]
        found: dict[str, int | None] = {}
        missing = []
        for role, names in {**required, **(optional or {})}.items():
            index = next((normal.index(_normal_column(n)) for n in names if _normal_column(n) in normal), None)
            found[role] = index
            if index is None and role in required:
                missing.append(f"{role} ({' or '.join(names)})")
        if missing:
            raise DatasetError(f"{dataset}: {self.path} lacks column(s) {'; '.join(missing)}; "
                               f"found {self.header}")
        return found

    @staticmethod
    def field(fields: list[str], index: int | None) -> str:
        return fields[index] if index is not None and index < len(fields) else ""


def _normal_column(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _read_text(path: Path, dataset: str) -> tuple[str, list[str]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        return data.decode("latin-1"), [f"{path.name} is not UTF-8; read as Latin-1"]


def _read_table(path: Path, dataset: str, *, delimiter: str | None = None) -> _Table:
    """Read a CSV (delimiter guessed from the header among ',', ';' and tab unless given);
    blank rows (only delimiters) are skipped. An empty file raises DatasetError."""
    text, warnings = _read_text(path, dataset)
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise DatasetError(f"{dataset}: label file {path} is empty")
    if delimiter is None:
        delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows = []
    try:
        for fields in reader:
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if header is None:
                header = fields
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as exc:
        raise DatasetError(f"{dataset}: {path} is not a readable CSV: {exc}") from exc
    return _Table(path, header or [], rows, delimiter, warnings)


def _read_path_mos_lines(
    path: Path, dataset: str
) -> tuple[list[tuple[int, str, str]], list[tuple[str, str]], list[str]]:
    """DOVER / FAST-VQA label lines ``path, duration, fps, mos`` -> (line, path, mos).
    The path is everything before the last three commas."""
    text, warnings = _read_text(path, dataset)
    items, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(",", 3)
        if len(parts) != 4 or not parts[0].strip():
            problems.append(("malformed line", f"{path.name} line {number}: expected "
                                               f"'path, duration, fps, mos', got {line.strip()!r}"))
            continue
        items.append((number, parts[0].strip(), parts[3].strip()))
    if not items and not problems:
        raise DatasetError(f"{dataset}: label file {path} is empty")
    return items, problems, warnings


# --------------------------------------------------------------------------- MATLAB files


def read_mat(path: str | Path) -> dict[str, Any]:
    """Variables of a MATLAB .mat file.

    v4-v7 through ``scipy.io.loadmat(simplify_cells=True)``; v7.3 (HDF5) through h5py, told
    apart by ``scipy.io.matlab.matfile_version`` (an HDF5 file without MATLAB's header is read
    as v7.3 too). Values: char arrays -> str (a char matrix -> one str per row); cell arrays
    -> list in MATLAB's linear order; structs -> dict; numbers -> ndarray (v7.3: MATLAB's
    shape, the HDF5 transpose undone; v5: squeezed). ``_vector`` flattens either. v7.3 chars
    are UTF-16 code units, decoded as UTF-16-LE after flattening in Fortran order (the
    common ``tobytes()[::2]`` idiom breaks on non-ASCII names). Raises DatasetError.
    """
    import h5py
    from scipy.io import loadmat, matlab

    path = Path(path)
    try:
        major, _ = matlab.matfile_version(str(path))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except (OSError, ValueError, matlab.MatReadError) as exc:
        if not h5py.is_hdf5(str(path)):
            raise DatasetError(f"{path} is not a readable MATLAB .mat file: {exc}") from exc
        major = 2
    try:
        if major == 2:
            with h5py.File(path, "r") as fh:
                return {key: _h5_value(fh, fh[key]) for key in fh.keys() if not key.startswith("#")}
        return {key: value for key, value in loadmat(str(path), simplify_cells=True).items()
                if not key.startswith("__")}
    except DatasetError:
        raise
    except Exception as exc:  # scipy and h5py raise many types on damaged files
        raise DatasetError(f"{path} is not a readable MATLAB .mat file: {type(exc).__name__}: {exc}") from exc


def _h5_value(fh, node) -> Any:
    import h5py

    matlab_class = node.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode("ascii", "replace")
    if isinstance(node, h5py.Group):
        return {key: _h5_value(fh, node[key]) for key in node.keys() if not key.startswith("#")}
    empty = node.attrs.get("MATLAB_empty")
    if empty is not None and np.any(np.asarray(empty)):
        return "" if matlab_class == "char" else [] if matlab_class == "cell" else np.zeros((0,))
    data = node[()]
    if h5py.check_dtype(ref=node.dtype) is not None:
        # cells (and struct-array fields): references; C order of the HDF5 array is MATLAB's
        # linear (column-major) order.
        return [_h5_value(fh, fh[ref]) for ref in np.asarray(data).ravel()]
    if matlab_class == "char":
        return _mat_chars(np.asarray(data))
    array = np.asarray(data).T  # HDF5 stores MATLAB arrays transposed
    return array.astype(bool) if matlab_class == "logical" else array


def _mat_chars(codes: np.ndarray) -> str | list[str]:
    matrix = np.atleast_2d(codes.astype("<u2").T)  # MATLAB's [rows, columns]
    try:
        if matrix.shape[0] == 1:
            return matrix.flatten(order="F").tobytes().decode("utf-16-le")
        return [row.tobytes().decode("utf-16-le") for row in matrix]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"a MATLAB char array is not valid UTF-16: {exc}") from exc


def _vector(value: Any, what: str) -> list:
    """A MATLAB vector (row, column, scalar, cell) as a flat list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    array = np.asarray(value)
    if array.ndim == 0:
        return [array.item()]
    if sum(d > 1 for d in array.shape) > 1:
        raise DatasetError(f"{what} should be a vector, got shape {array.shape}")
    return [_unwrap(v) for v in array.ravel(order="F").tolist()]


def _unwrap(value: Any) -> Any:
    """A 1-element cell or array -> its element (nested cells from some info files)."""
    while isinstance(value, (list, tuple, np.ndarray)) and np.size(value) == 1:
        value = value[0] if isinstance(value, (list, tuple)) else np.asarray(value).ravel()[0]
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _mat_variables(path: Path, dataset: str, names: Sequence[str]) -> dict[str, Any]:
    variables = read_mat(path)
    missing = [n for n in names if n not in variables]
    if missing:
        raise DatasetError(f"{dataset}: {path} lacks variable(s) {', '.join(missing)}; "
                           f"found {sorted(variables)}")
    return variables


def _same_length(dataset: str, path: Path, **vectors: list) -> list[tuple[str, str]]:
    lengths = {name: len(v) for name, v in vectors.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        return [("inconsistent label file", f"{path.name}: {shown} entries")]
    return []


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value).strip()


# --------------------------------------------------------------------------- adapters: video


@_adapter("konvid1k", "KoNViD_1k_mos.csv (flickr_id,mos; also in KoNViD_1k_metadata/, or VIDEVAL's "
                      "KONVID_1K_metadata.csv) + KoNViD_1k_videos/<flickr_id>.mp4")
def _konvid1k(ctx: _Context) -> _Labels:
    """KoNViD-1k as downloaded: ``KoNViD_1k_mos.csv`` (columns ``flickr_id``, ``mos``) in ROOT
    or ROOT/KoNViD_1k_metadata/, or VIDEVAL's metadata CSV (same two columns plus stream
    properties); videos ``KoNViD_1k_videos/<flickr_id>.mp4`` (or directly in ROOT).
    video_id = flickr_id; no groups (one video per source)."""
    path = ctx.find_label_file(("KoNViD_1k_mos.csv", "KoNViD_1k_metadata/KoNViD_1k_mos.csv",
                                "KONVID_1K_metadata.csv", "konvid1k_metadata.csv"))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("flickr_id",), "mos": ("mos",)})
    rows = []
    for line, fields in table.rows:
        flickr_id = table.field(fields, cols["video"])
        name = f"{flickr_id}.mp4"
        rows.append(_Row(flickr_id, (ctx.root / "KoNViD_1k_videos" / name, ctx.root / name),
                         table.field(fields, cols["mos"]), table.where(line)))
    return _Labels(rows, path, warnings=table.warnings)


@_adapter("livevqc", "data.mat (video_list, mos; or VIDEVAL's LIVE_VQC_metadata.csv: File,MOS) "
                     "+ Video/<name>")
def _livevqc(ctx: _Context) -> _Labels:
    """LIVE Video Quality Challenge (VQC): ``data.mat`` with the cell array ``video_list``
    (``A001.mp4``, ...) and the vector ``mos`` (any MAT version), or VIDEVAL's metadata CSV
    (``File``, ``MOS``); videos in ``Video/`` (or ROOT). video_id = name without suffix."""
    path = ctx.find_label_file(("data.mat", "LIVE_VQC_metadata.csv", "livevqc_metadata.csv"))
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    if path.suffix.lower() == ".mat":
        variables = _mat_variables(path, ctx.name, ("video_list", "mos"))
        names = [_text(v) for v in _vector(variables["video_list"], f"{path.name}: video_list")]
        scores = _vector(variables["mos"], f"{path.name}: mos")
        problems += _same_length(ctx.name, path, video_list=names, mos=scores)
        items = [(f"{path.name} entry {i + 1}", n, m) for i, (n, m) in enumerate(zip(names, scores))]
    else:
        table = _read_table(path, ctx.name)
        warnings += table.warnings
        cols = table.columns(ctx.name, {"video": ("File", "video_list", "name"), "mos": ("MOS",)})
        items = [(table.where(line), table.field(f, cols["video"]), table.field(f, cols["mos"]))
                 for line, f in table.rows]
    rows = [_Row(strip_media_suffix(name), (ctx.root / "Video" / name, ctx.root / name), mos, where)
            for where, name, mos in items]
    return _Labels(rows, path, problems, warnings)


@_adapter("youtube-ugc", "VIDEVAL's YOUTUBE_UGC_metadata.csv (vid,category,resolution,MOSFull) + "
                         "original_videos/<category>/<resolution>P/<vid>.mkv (any suffix; flat too)")
def _youtube_ugc(ctx: _Context) -> _Labels:
    """YouTube-UGC with VIDEVAL's metadata CSV (columns ``vid``, ``category``, ``resolution``,
    ``MOSFull``; ``MOS`` accepted). Videos as in the public bucket:
    ``original_videos/<category>/<resolution>P/<vid>.mkv``, or ``<category>/<resolution>P/``
    under ROOT, or flat in ``original_videos/`` or ROOT. Any media suffix matches the stem
    (transcoded .mp4 copies work); ``.mkv`` is preferred when several exist. video_id = vid."""
    path = ctx.find_label_file(("YOUTUBE_UGC_metadata.csv", "youtube_ugc_metadata.csv"))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("vid",), "mos": ("MOSFull", "MOS")},
                         {"category": ("category",), "resolution": ("resolution",)})
    rows = []
    for line, fields in table.rows:
        vid = table.field(fields, cols["video"])
        category = table.field(fields, cols["category"])
        resolution = table.field(fields, cols["resolution"]).upper().rstrip("P")
        name = f"{vid}.mkv"
        candidates = []
        if category and resolution:
            candidates += [ctx.root / "original_videos" / category / f"{resolution}P" / name,
                           ctx.root / category / f"{resolution}P" / name]
        candidates += [ctx.root / "original_videos" / name, ctx.root / name]
        rows.append(_Row(vid, tuple(candidates), table.field(fields, cols["mos"]), table.where(line),
                         any_suffix=True))
    return _Labels(rows, path, warnings=table.warnings)


@_adapter("lsvq", "LSVQ_whole_{train,test,test_1080p}.csv (name,mos) or DOVER's train_labels.txt / "
                  "labels_test.txt / labels_1080p.txt + ROOT/<name>.mp4; split=train|test|test-1080p",
          splits=tuple(LSVQ_SPLITS))
def _lsvq(ctx: _Context) -> _Labels:
    """LSVQ: ROOT holds the video folders (``ia-batch1/``, ``yfcc-batch1/``, ...) and the label
    files: the official ``LSVQ_whole_train.csv`` / ``LSVQ_whole_test.csv`` /
    ``LSVQ_whole_test_1080p.csv`` (columns ``name`` without suffix, ``mos``; video
    ``<name>.mp4``) or the DOVER / FAST-VQA lists ``train_labels.txt`` / ``labels_test.txt`` /
    ``labels_1080p.txt`` (``path, duration, fps, mos``). video_id = the path without ``.mp4``
    (``yfcc-batch1/747``). Names contain dots (``...In1801.67``): only ``.mp4`` is appended or
    removed, never a "suffix" guessed from a dot."""
    path = ctx.find_label_file(LSVQ_SPLITS[ctx.split])
    if path.suffix.lower() == ".csv":
        table = _read_table(path, ctx.name)
        cols = table.columns(ctx.name, {"video": ("name",), "mos": ("mos",)})
        rows = []
        for line, fields in table.rows:
            name = table.field(fields, cols["video"])
            rows.append(_Row(name, (ctx.root / f"{name}.mp4",), table.field(fields, cols["mos"]),
                             table.where(line)))
        return _Labels(rows, path, warnings=table.warnings)
    return _path_mos_labels(ctx, path)


def _path_mos_labels(ctx: _Context, path: Path) -> _Labels:
    items, problems, warnings = _read_path_mos_lines(path, ctx.name)
    rows = [_Row(strip_media_suffix(rel, VIDEO_SUFFIXES + IMAGE_SUFFIXES), (ctx.root / rel,), mos,
                 f"{path.name} line {line}")
            for line, rel, mos in items]
    return _Labels(rows, path, problems, warnings)


@_adapter("cvd2014", "CVD2014_ratings/Realignment_MOS.csv (';', decimal commas: File_name, Content, "
                     "Realignment MOS) + Test<n>/<Content>/<File_name>.avi; group Test<n>/<Content>")
def _cvd2014(ctx: _Context) -> _Labels:
    """CVD2014: ``CVD2014_ratings/Realignment_MOS.csv`` (or in ROOT), ';'-separated with
    decimal commas, columns ``File_name`` (``Test01_City_D01``), ``Content`` (``City``) and
    ``Realignment MOS`` (0-100); blank rows are skipped. Videos
    ``Test<n>/<Content>/<File_name>.avi`` where n is the number in File_name (Test01 -> Test1).
    group = ``Test<n>/<Content>``: one scene filmed by all cameras of a test."""
    path = ctx.find_label_file(("CVD2014_ratings/Realignment_MOS.csv", "Realignment_MOS.csv"))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("File_name",), "content": ("Content",),
                                    "mos": ("Realignment MOS", "RealignmentMOS", "MOS")})
    rows, problems = [], []
    for line, fields in table.rows:
        name = strip_media_suffix(table.field(fields, cols["video"]))
        content = table.field(fields, cols["content"])
        mos = table.field(fields, cols["mos"])
        if table.delimiter != "," and re.fullmatch(r"[+-]?\d+,\d*", mos):
            mos = mos.replace(",", ".")
        test = re.match(r"(?i)test0*(\d+)_", name)
        if name and not test:
            problems.append(("unexpected name", f"{table.where(line)}: File_name {name!r} does not start "
                                                "with Test<nn>_, so its folder is unknown"))
            continue
        if name and not content:
            problems.append(("unexpected name", f"{table.where(line)}: empty Content for {name!r}"))
            continue
        folder = f"Test{int(test.group(1))}/{content}" if test else ""
        rows.append(_Row(name, (ctx.root / folder / f"{name}.avi",), mos, table.where(line), group=folder))
    return _Labels(rows, path, problems, table.warnings)


@_adapter("live-qualcomm", "qualcommSubjectiveData.mat (qualcommSubjectiveData.unBiasedMOS; "
                           "qualcommVideoData.vidNames/distortionNames/distortionType) + <distortion>/<name>.yuv")
def _live_qualcomm(ctx: _Context) -> _Labels:
    """LIVE-Qualcomm Mobile In-Capture: ``qualcommSubjectiveData.mat`` holding the structs
    ``qualcommSubjectiveData`` (field ``unBiasedMOS``) and ``qualcommVideoData`` (fields
    ``vidNames``, ``distortionNames``, ``distortionType``: 1-based index into distortionNames).
    Videos ``<distortionNames{type}>/<vidName>`` (raw 1920x1080 YUV 4:2:0 ``.yuv``; a converted
    file with the same stem and another suffix, e.g. ``.mp4``, is used when the .yuv is absent).
    video_id = ``<distortion>/<stem>``; no groups."""
    path = ctx.find_label_file(("qualcommSubjectiveData.mat",))
    variables = _mat_variables(path, ctx.name, ("qualcommSubjectiveData", "qualcommVideoData"))
    subjective, video = variables["qualcommSubjectiveData"], variables["qualcommVideoData"]
    missing = [f"{struct}.{f}" for struct, value, fields in (
        ("qualcommSubjectiveData", subjective, ("unBiasedMOS",)),
        ("qualcommVideoData", video, ("vidNames", "distortionNames", "distortionType")),
    ) for f in fields if not (isinstance(value, dict) and f in value)]
    if missing:
        raise DatasetError(f"{ctx.name}: {path} lacks field(s) {', '.join(missing)}")
    names = [_text(v) for v in _vector(video["vidNames"], "vidNames")]
    folders = [_text(v) for v in _vector(video["distortionNames"], "distortionNames")]
    kinds = _vector(video["distortionType"], "distortionType")
    scores = _vector(subjective["unBiasedMOS"], "unBiasedMOS")
    problems = _same_length(ctx.name, path, vidNames=names, distortionType=kinds, unBiasedMOS=scores)
    rows = []
    for i, (name, kind, mos) in enumerate(zip(names, kinds, scores)):
        where = f"{path.name} entry {i + 1}"
        try:
            number = int(kind)
            if number != kind or not 1 <= number <= len(folders):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(("inconsistent label file", f"{where}: distortionType {kind!r} is not one of "
                                                        f"1..{len(folders)}"))
            continue
        folder = folders[number - 1]
        rows.append(_Row(f"{folder}/{strip_media_suffix(name)}", (ctx.root / folder / name,), mos, where,
                         any_suffix=True))
    return _Labels(rows, path, problems)


@_adapter("kvq", "train_data.csv (filename,score) + ROOT/<filename>")
def _kvq(ctx: _Context) -> _Labels:
    """KVQ (NTIRE 2024 short-form UGC): ``train_data.csv`` with columns ``filename`` (path of
    the video relative to ROOT, as the official baseline joins it with its data prefix) and
    ``score``; other split files (validation, test labels) via ``label_file=``. A filename
    not found under ROOT is also looked for next to the label file. video_id = filename
    without suffix; no groups (the CSV does not name source videos)."""
    path = ctx.find_label_file(("train_data.csv",))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("filename", "file_name", "name"), "mos": ("score", "mos")})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        candidates = tuple(dict.fromkeys((ctx.root / name, path.parent / name)))
        rows.append(_Row(strip_media_suffix(name), candidates, table.field(fields, cols["mos"]), table.where(line)))
    return _Labels(rows, path, warnings=table.warnings)


@_adapter("dover-labels", "labels.txt with lines 'path, duration, fps, mos' (DOVER / FAST-VQA) + ROOT/<path>")
def _dover_labels(ctx: _Context) -> _Labels:
    """Any dataset listed in the DOVER / FAST-VQA format: one ``path, duration, fps, mos`` line
    per video (duration and fps may be -1), ``labels.txt`` in ROOT unless ``label_file=``
    names another; paths relative to ROOT (DOVER's ``data_prefix``). video_id = path without
    its media suffix (``KoNViD_1k_videos/4542323058``)."""
    return _path_mos_labels(ctx, ctx.find_label_file(("labels.txt",)))


@_adapter("vsfa-info", "VSFA/TCSVT info .mat (video_names, scores, ref_ids, index; ROOT/*info.mat) + "
                       "ROOT/<video_name>; index -> <out stem>.splits.npy")
def _vsfa_info(ctx: _Context) -> _Labels:
    """VSFA / TCSVT-2022-BVQA info files (``KoNViD-1kinfo.mat``, ...; MATLAB v7.3 usually, any
    version read): ``video_names`` (cell of names relative to the video folder, e.g.
    ``Test1/City/Test01_City_D01.avi``), ``scores``, optional ``ref_ids`` (content id per
    video -> group) and ``index`` (MATLAB ``[n_splits, n_refs]``: each row a random
    permutation of the ref ids, e.g. 1000 rows). ROOT is the video folder; the info file is
    ``label_file=`` or the only ``*info.mat`` in ROOT. The index is written to
    ``<out stem>.splits.npy`` as int64 ``[n_splits, n_refs]``, values as in ``ref_ids`` (so in
    the manifest's group column; VSFA trains on the refs in the first 60% of a row).
    video_id = name without media suffix."""
    if ctx.label_file is not None:
        path = ctx.find_label_file(())
    else:
        found = sorted(ctx.root.glob("*info.mat"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetError(f"{ctx.name}: expected one *info.mat in {ctx.root} (found {listed}); "
                               "name it with label_file=")
        path = found[0]
    variables = _mat_variables(path, ctx.name, ("video_names", "scores"))
    names = [_text(v) for v in _vector(variables["video_names"], "video_names")]
    scores = _vector(variables["scores"], "scores")
    problems = _same_length(ctx.name, path, video_names=names, scores=scores)
    ref_ids: list | None = None
    if "ref_ids" in variables:
        ref_ids = _vector(variables["ref_ids"], "ref_ids")
        problems += _same_length(ctx.name, path, video_names=names, ref_ids=ref_ids)
        if not all(isinstance(r, (int, float)) and float(r).is_integer() for r in ref_ids):
            problems.append(("inconsistent label file", f"{path.name}: ref_ids are not all integers"))
            ref_ids = None
    splits = None
    if "index" in variables and not problems:
        splits, index_problems = _vsfa_splits(variables["index"], ref_ids, len(names), path)
        problems += index_problems
    rows = [_Row(strip_media_suffix(name), (ctx.root / name,), score, f"{path.name} entry {i + 1}",
                 group=str(int(ref_ids[i])) if ref_ids is not None else None)
            for i, (name, score) in enumerate(zip(names, scores))]
    return _Labels(rows, path, problems, splits=splits)


def _vsfa_splits(index: Any, ref_ids: list | None, n_videos: int,
                 path: Path) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """The index as int64 [n_splits, n_refs], checked: every row a permutation of the refs."""
    refs = np.unique(np.asarray(ref_ids if ref_ids is not None else range(1, n_videos + 1), dtype=float))
    matrix = np.atleast_2d(np.asarray(index, dtype=float))
    if matrix.shape[1] != refs.size and matrix.shape[0] == refs.size:
        matrix = matrix.T  # stored [n_refs, n_splits]
    problem = None
    if matrix.ndim != 2 or matrix.shape[1] != refs.size:
        problem = f"index has shape {matrix.shape}; expected [n_splits, {refs.size}] (one column per ref id)"
    elif not np.array_equal(matrix, np.round(matrix)):
        problem = "index holds non-integer values"
    else:
        bad = np.flatnonzero(~(np.sort(matrix, axis=1) == refs[None, :]).all(axis=1))
        if bad.size:
            problem = (f"index rows {', '.join(str(b + 1) for b in bad[:5])}{' ...' if bad.size > 5 else ''} "
                       f"({bad.size} of {matrix.shape[0]}) are not permutations of the ref ids")
    if problem:
        return None, [("inconsistent label file", f"{path.name}: {problem}")]
    return matrix.astype(np.int64), []


@_adapter("folder", "videos in ROOT + one scores CSV (name column: filename/file/name/video/path...; "
                    "score column: mos/score/dmos...; stems allowed)")
def _folder(ctx: _Context) -> _Labels:
    """A folder of videos with a scores CSV: ``label_file=`` or the only ``*.csv`` in ROOT
    (the output manifest excluded). Columns are found by name, ignoring case, spaces, '_' and
    '-', first match wins: name from ``filename, file_name, file, video, video_name, name,
    path, vid, video_id``; score from ``mos, score, dmos, quality, rating``; optional group
    from ``group, ref, ref_id, source, content``. Names are paths relative to ROOT, with or
    without suffix (a stem matches any video suffix). video_id = name without suffix."""
    if ctx.label_file is not None:
        path = ctx.find_label_file(())
    else:
        out = os.path.abspath(ctx.out)
        found = [p for p in sorted(ctx.root.glob("*.csv")) if os.path.abspath(p) != out]
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetError(f"{ctx.name}: expected one scores CSV in {ctx.root} (found {listed}); "
                               "name it with label_file=")
        path = found[0]
    table = _read_table(path, ctx.name)
    cols = table.columns(
        ctx.name,
        {"video": ("filename", "file_name", "file", "video", "video_name", "name", "path", "vid", "video_id"),
         "mos": ("mos", "score", "dmos", "quality", "rating")},
        {"group": ("group", "ref", "ref_id", "source", "content")},
    )
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        has_suffix = _has_suffix(name, VIDEO_SUFFIXES)
        rows.append(_Row(strip_media_suffix(name, VIDEO_SUFFIXES),
                         (ctx.root / (name if has_suffix else f"{name}.mp4"),),
                         table.field(fields, cols["mos"]), table.where(line),
                         group=table.field(fields, cols["group"]) or None, any_suffix=not has_suffix))
    return _Labels(rows, path, warnings=table.warnings)


# --------------------------------------------------------------------------- adapters: images


@_adapter("tid2013", "mos_with_names.txt ('mos name' lines) + distorted_images/<name>; "
                     "group = reference (I01..I25, reference_images/)", images=True)
def _tid2013(ctx: _Context) -> _Labels:
    """TID2013: ``mos_with_names.txt`` (``<mos> <name>`` per line, e.g. ``5.51429
    i01_01_1.bmp``), images in ``distorted_images/`` (names matched ignoring case). group =
    the reference image (``I01``, as ``reference_images/I01.BMP``), from the name's prefix."""
    path = ctx.find_label_file(("mos_with_names.txt",))
    text, warnings = _read_text(path, ctx.name)
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        where = f"{path.name} line {number}"
        if len(parts) != 2:
            problems.append(("malformed line", f"{where}: expected '<mos> <name>', got {line.strip()!r}"))
            continue
        mos, name = parts[0], parts[1].strip()
        rows.append(_Row(strip_media_suffix(name, IMAGE_SUFFIXES), (ctx.root / "distorted_images" / name,),
                         mos, where, group=name.split("_", 1)[0].upper()))
    if not rows and not problems:
        raise DatasetError(f"{ctx.name}: label file {path} is empty")
    return _Labels(rows, path, problems, warnings)


@_adapter("kadid10k", "dmos.csv (dist_img,ref_img,dmos) + images/<dist_img>; group = ref_img", images=True)
def _kadid10k(ctx: _Context) -> _Labels:
    """KADID-10k: ``dmos.csv`` (columns ``dist_img``, ``ref_img``, ``dmos``, ``var``); images
    in ``images/`` (or ROOT). The ``dmos`` value is written as the MOS unchanged (1-5, higher
    is better despite the name). group = the reference image's stem (``I01``)."""
    path = ctx.find_label_file(("dmos.csv",))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("dist_img",), "ref": ("ref_img",), "mos": ("dmos",)})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        reference = table.field(fields, cols["ref"])
        rows.append(_Row(strip_media_suffix(name, IMAGE_SUFFIXES), (ctx.root / "images" / name, ctx.root / name),
                         table.field(fields, cols["mos"]), table.where(line),
                         group=strip_media_suffix(reference, IMAGE_SUFFIXES) or None))
    return _Labels(rows, path, warnings=table.warnings)


@_adapter("koniq10k", "koniq10k_scores_and_distributions.csv (image_name, MOS) + 1024x768/<image_name>",
          images=True)
def _koniq10k(ctx: _Context) -> _Labels:
    """KonIQ-10k: ``koniq10k_scores_and_distributions.csv`` (columns ``image_name``, ``MOS``
    on 1-5; ``MOS_zscore`` is ignored); images in ``1024x768/`` (the release archive), else
    ``512x384/``, else ROOT. video_id = image name without suffix; no groups."""
    path = ctx.find_label_file(("koniq10k_scores_and_distributions.csv",))
    table = _read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("image_name",), "mos": ("MOS",)})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        rows.append(_Row(strip_media_suffix(name, IMAGE_SUFFIXES),
                         (ctx.root / "1024x768" / name, ctx.root / "512x384" / name, ctx.root / name),
                         table.field(fields, cols["mos"]), table.where(line)))
    return _Labels(rows, path, warnings=table.warnings)


@_adapter("livec", "Data/AllImages_release.mat + Data/AllMOS_release.mat + Images/<name> "
                   "(the 7 practice images are left out)", images=True)
def _livec(ctx: _Context) -> _Labels:
    """LIVE In the Wild Image Quality Challenge (ChallengeDB_release): ``Data/AllImages_release.mat``
    (cell ``AllImages_release``) and ``Data/AllMOS_release.mat`` (vector ``AllMOS_release``),
    images in ``Images/``. The first 7 entries are the practice images shown to subjects
    (``Images/trainingImages/``) and are left out, as in the published protocol (1162
    images). ``label_file=`` names the AllImages file; AllMOS is read from the same folder."""
    images_path = ctx.find_label_file(("Data/AllImages_release.mat", "AllImages_release.mat"))
    mos_path = images_path.with_name("AllMOS_release.mat")
    if not mos_path.is_file():
        raise DatasetError(f"{ctx.name}: {mos_path} does not exist (it belongs next to {images_path.name})")
    names = [_text(v) for v in _vector(_mat_variables(images_path, ctx.name, ("AllImages_release",))
                                       ["AllImages_release"], "AllImages_release")]
    scores = _vector(_mat_variables(mos_path, ctx.name, ("AllMOS_release",))["AllMOS_release"], "AllMOS_release")
    problems = _same_length(ctx.name, images_path, AllImages_release=names, AllMOS_release=scores)
    if len(names) <= LIVEC_PRACTICE_IMAGES:
        problems.append(("inconsistent label file", f"{images_path.name}: {len(names)} entries, fewer than "
                                                    f"the {LIVEC_PRACTICE_IMAGES} practice images plus one"))
    rows = [_Row(strip_media_suffix(name, IMAGE_SUFFIXES), (ctx.root / "Images" / name,), mos,
                 f"{images_path.name} entry {i + 1}")
            for i, (name, mos) in enumerate(zip(names, scores)) if i >= LIVEC_PRACTICE_IMAGES]
    return _Labels(rows, images_path, problems)
