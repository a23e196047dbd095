"""Label file readers shared by the dataset adapters: delimited text and MATLAB ``.mat`` files.

Every reader raises :class:`~pipeline.errors.DatasetError` naming the file and the dataset;
label files are data, never evaluated.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

# --------------------------------------------------------------------------- text tables


@dataclass
class Table:
    """A delimited text file: header and rows as (line number, stripped fields)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]
    delimiter: str
    warnings: list[str]

    def where(self, line: int) -> str:
        return f"{self.path.name} line {line}"

    def columns(
        self, dataset: str, required: dict[str, Sequence[str]], optional: dict[str, Sequence[str]] | None = None
    ) -> dict[str, int | None]:
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
            raise DatasetError(f"{dataset}: {self.path} lacks column(s) {'; '.join(missing)}; found {self.header}")
        return found

    @staticmethod
    def field(fields: list[str], index: int | None) -> str:
        return fields[index] if index is not None and index < len(fields) else ""


def _normal_column(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def read_text(path: Path, dataset: str) -> tuple[str, list[str]]:
    """(text, warnings): UTF-8 (a BOM dropped), else Latin-1 with a warning saying so."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        return data.decode("latin-1"), [f"{path.name} is not UTF-8; read as Latin-1"]


def read_table(path: Path, dataset: str, *, delimiter: str | None = None) -> Table:
    """Read a CSV (delimiter guessed from the header among ',', ';' and tab unless given);
    blank rows (only delimiters) are skipped. An empty file raises DatasetError."""
    text, warnings = read_text(path, dataset)
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
    return Table(path, header or [], rows, delimiter, warnings)


def read_path_mos_lines(
    path: Path, dataset: str
) -> tuple[list[tuple[int, str, str]], list[tuple[str, str]], list[str]]:
    """DOVER / FAST-VQA label lines ``path, duration, fps, mos`` -> (line, path, mos).
    The path is everything before the last three commas."""
    text, warnings = read_text(path, dataset)
    items, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(",", 3)
        if len(parts) != 4 or not parts[0].strip():
            problems.append(
                (
                    "malformed line",
                    f"{path.name} line {number}: expected 'path, duration, fps, mos', got {line.strip()!r}",
                )
            )
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
    shape, the HDF5 transpose undone; v5: squeezed). ``as_list`` flattens either. v7.3 chars
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
        return {
            key: value for key, value in loadmat(str(path), simplify_cells=True).items() if not key.startswith("__")
        }
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


def as_list(value: Any, what: str) -> list:
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


def mat_variables(path: Path, dataset: str, names: Sequence[str]) -> dict[str, Any]:
    """The variables of ``path``; one DatasetError names every one of ``names`` it lacks."""
    variables = read_mat(path)
    missing = [n for n in names if n not in variables]
    if missing:
        raise DatasetError(f"{dataset}: {path} lacks variable(s) {', '.join(missing)}; found {sorted(variables)}")
    return variables


def same_length(dataset: str, path: Path, **vectors: list) -> list[tuple[str, str]]:
    """A fatal problem (kind, message) when the named vectors differ in length, else none."""
    lengths = {name: len(v) for name, v in vectors.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        return [("inconsistent label file", f"{path.name}: {shown} entries")]
    return []


def as_text(value: Any) -> str:
    """A MATLAB name (char array or anything else) as a stripped str."""
    return value.strip() if isinstance(value, str) else str(value).strip()
