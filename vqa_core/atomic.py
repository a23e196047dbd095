"""Atomic file writes on one local filesystem: a temporary sibling, then ``os.replace``.

Readers see the old file or the new one, never a torn one; a killed writer leaves at most a
``.<name>.<pid>.tmp`` sibling, never a partial file under the real name.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` before anything is
    written (and again at commit, via a hard link, if another writer got there first).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile; never replaces it
            tmp.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO], None], *,
                 overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    ``data``: bytes, text (UTF-8), or a callable given the open binary file to write into.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
