"""Atomic file writes on one local filesystem: a temporary sibling, then ``os.replace``.

Readers see the old file or the new one, never a torn one; a killed writer leaves at most a
``.<name>.<pid>.<random>.tmp`` sibling, never a partial file under the real name. The random
part keeps two threads of one process writing the same file apart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` before anything is
    written (and again at commit, via a hard link, if another writer got there first; where
    the filesystem has no hard links, the commit checks for ``path`` and then renames).
    The temporary name ends in ``.tmp``: tools that infer a format from the suffix (ffmpeg)
    must be told the format.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (then ``FileExistsError``)."""
    try:
        os.link(tmp, path)  # fails if path appeared meanwhile; never replaces it
    except FileExistsError:
        raise FileExistsError(f"{path} exists") from None
    except OSError:  # no hard links on this filesystem: check, then rename (a small race)
        if path.exists():
            raise FileExistsError(f"{path} exists") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def atomic_write(
    path: str | os.PathLike, data: bytes | str | Callable[[IO], None], *, overwrite: bool = True, fsync: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically.

    ``data``: bytes, text (UTF-8), or a callable given the open binary file to write into.
    ``fsync``: flush the contents to the disk before the rename, so that the new file also
    survives a power loss (a killed process never leaves a torn file either way).
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
