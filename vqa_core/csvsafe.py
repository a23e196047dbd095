"""CSV cells a spreadsheet will not evaluate (formula injection), and a reader that undoes it.

Every CSV the project writes (manifests, ``predictions.csv``, ``comparison.csv``, ``vqa
predict`` scores) goes through :func:`writer` / :class:`DictWriter`; every CSV of ours it reads
back goes through :func:`reader` / :class:`DictReader`.

Convention (OWASP's "CSV injection" advice): a text cell that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return is written with a leading apostrophe, so Excel, LibreOffice
and Google Sheets show it as text instead of running it (``=cmd|' /C calc'!A0`` is written
``'=cmd|' /C calc'!A0``). A text cell that itself starts with an apostrophe gets a second one,
so the escape is reversible: our reader removes one leading apostrophe when the next
character is one of those or another apostrophe, and every value reads back exactly as it
was written. Numbers are never escaped (``-0.25`` stays ``-0.25``, also as text): a plain
decimal number is no formula. Other programs reading our CSVs see the apostrophe;
spreadsheets hide it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from numbers import Number
from typing import IO, Any

__all__ = ["FORMULA_TRIGGERS", "escape_cell", "unescape_cell", "writer", "reader", "DictWriter", "DictReader"]

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"
_ESCAPED_STARTS = (*FORMULA_TRIGGERS, _ESCAPE)
# A plain decimal number (what a spreadsheet reads as a number, not a formula).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value: Any) -> Any:
    """``value`` as a spreadsheet-safe cell: text starting with a formula trigger (or an
    apostrophe) gets a leading apostrophe; numbers, ``None`` and plain decimal text pass
    unchanged. Non-text values other than numbers are converted with ``str`` first."""
    if value is None or isinstance(value, Number):
        return value
    text = value if isinstance(value, str) else str(value)
    if text.startswith(_ESCAPED_STARTS) and not _NUMBER.fullmatch(text):
        return _ESCAPE + text
    return text


def unescape_cell(text: str) -> str:
    """Undo :func:`escape_cell` on a cell read back as text (one leading apostrophe removed
    when a trigger or another apostrophe follows it)."""
    if len(text) > 1 and text[0] == _ESCAPE and text[1] in _ESCAPED_STARTS:
        return text[1:]
    return text


class _Writer:
    """``csv.writer`` whose rows are escaped cell by cell."""

    def __init__(self, fh: IO[str], **kwargs):
        self._writer = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([escape_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fh: IO[str], **kwargs) -> _Writer:
    """A ``csv.writer`` (same keyword arguments) that escapes every cell (:func:`escape_cell`)."""
    return _Writer(fh, **kwargs)


def reader(fh: IO[str], **kwargs) -> Iterator[list[str]]:
    """``csv.reader`` rows with every cell unescaped (:func:`unescape_cell`)."""
    for row in csv.reader(fh, **kwargs):
        yield [unescape_cell(cell) for cell in row]


class DictWriter(csv.DictWriter):
    """``csv.DictWriter`` that escapes the header and every value (:func:`escape_cell`)."""

    def writeheader(self):
        return self.writer.writerow([escape_cell(name) for name in self.fieldnames])

    def writerow(self, rowdict):
        return super().writerow({key: escape_cell(value) for key, value in rowdict.items()})

    def writerows(self, rowdicts) -> None:
        for rowdict in rowdicts:
            self.writerow(rowdict)


class DictReader(csv.DictReader):
    """``csv.DictReader`` whose field names and values come back unescaped (:func:`unescape_cell`)."""

    @property
    def fieldnames(self):
        names = csv.DictReader.fieldnames.fget(self)
        return None if names is None else [unescape_cell(name) for name in names]

    @fieldnames.setter
    def fieldnames(self, value):
        csv.DictReader.fieldnames.fset(self, value)

    def __next__(self) -> dict:
        row = super().__next__()
        return {key: _unescape_value(value) for key, value in row.items()}


def _unescape_value(value):
    if isinstance(value, str):
        return unescape_cell(value)
    if isinstance(value, list):  # surplus fields, under ``restkey``
        return [unescape_cell(v) if isinstance(v, str) else v for v in value]
    return value
