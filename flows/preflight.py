"""Checks the command line makes before any heavy import, so that a mistake is reported in a
second, in one line, and before anything is written.

Nothing here imports torch or Prefect: sampling texts, store and output locations, and the
media files of a manifest (``os.stat`` only, no decoding: about a second per 100,000 rows on a
local disk). The checks that need the extractor registry or the weights come next, in
``flows.extract_plan``; see ``flows.cli`` for the order.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.sampling import parse_sampling
from vqa_core.errors import ManifestError
from vqa_core.manifest import ManifestEntry

from .errors import FlowError

MAX_SHOWN = 5  # examples named in a one-line summary
# Less free space than this where a folder is to be written: the disk is full for our purposes.
MIN_FREE_BYTES = 16 * 2**20
# Kernel filesystems that hold no files of ours (`--store /proc/foo`).
_VIRTUAL_FILESYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "devpts",
        "mqueue",
        "fusectl",
        "binfmt_misc",
    }
)


def check_samplings(values: Iterable[str]) -> None:
    """Parse every sampling text (``uniform:16``, or ``NAME=uniform:16`` for one extractor);
    ``SamplingError`` for the first malformed one."""
    for value in values:
        name, sep, text = value.partition("=")
        parse_sampling(text if sep and name.strip() else value)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_location(path: str | os.PathLike[str], *, what: str) -> None:
    """``path`` is a folder this user can write into, or one that can be created here.

    ``what`` names it in the message (``"--store"``). Raises :class:`FlowError`: a file is in
    the way, or the folder (or the nearest existing parent, when it is to be created) is not
    writable.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FlowError(f"{what} {path} is a file, not a folder; pass a folder (new or existing)")
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise FlowError(
            f"{what} {path}: {parent} is a file, so the folder cannot be created there; choose another place"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        action = "write into" if parent == path else f"create {path} in"
        raise FlowError(f"{what} {path}: no permission to {action} {parent}; choose a writable place")
    problem = _filesystem_problem(parent)
    if problem:
        raise FlowError(f"{what} {path}: {problem}")


def check_prefect_api(*, timeout: float = 3.0) -> None:
    """When ``PREFECT_API_URL`` is set, its server answers ``GET /health`` (within ``timeout``
    seconds), so that a dead or mistyped URL is reported now, in one line, not after the models
    are loaded. Raises :class:`FlowError`. (A URL from a Prefect profile is checked when the
    flow starts.)"""
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return
    fix = "start that server (`prefect server start`), or unset PREFECT_API_URL and vqa starts one for the run"
    if not url.startswith(("http://", "https://")):
        raise FlowError(f"PREFECT_API_URL {url!r} is not an http(s) URL; {fix}")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FlowError(f"the Prefect server at PREFECT_API_URL {url} cannot be reached ({reason}); {fix}") from None
    if status != 200:
        raise FlowError(
            f"PREFECT_API_URL {url} answers HTTP {status} at /health, not a Prefect API "
            f"(it usually ends in /api); {fix}"
        )


def _filesystem_problem(folder: Path) -> str | None:
    """Why nothing can be written under ``folder`` whatever the permissions (root included):
    a read-only mount, a kernel filesystem such as /proc, or a full disk; None if none."""
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None  # the write itself will say
    if fs.f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only filesystem; choose a writable place"
    kind = _filesystem_type(folder)
    if kind in _VIRTUAL_FILESYSTEMS:
        return f"{folder} is on the kernel's {kind} filesystem, which holds no files; choose a folder on a disk"
    free = fs.f_bavail * fs.f_frsize
    if fs.f_blocks and free < MIN_FREE_BYTES:
        return f"the disk holding {folder} is full ({free // 2**20} MiB free); free some space or choose another place"
    return None


def _filesystem_type(folder: Path) -> str | None:
    """The type of the filesystem mounted at ``folder`` or above it (Linux ``/proc/self/mountinfo``)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    real, best, kind = os.path.realpath(folder), "", None
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not tail:
            continue
        mount = parts[4].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, tail.split()[0]
    return kind


def check_file_location(
    path: str | os.PathLike[str], *, what: str, not_same_as: Sequence[tuple[str, str | os.PathLike[str]]] = ()
) -> None:
    """``path`` can be written as a file: not a folder, its folder writable or creatable, and
    not one of ``not_same_as`` (``(name, path)`` pairs of inputs, e.g. the manifest it would
    replace). Raises :class:`FlowError`."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise FlowError(f"{what} {path} is a folder; name a file")
    for name, other in not_same_as:
        other = Path(other).expanduser().absolute()
        if path == other or (path.exists() and other.exists() and os.path.samefile(path, other)):
            raise FlowError(f"{what} {path} is the {name}: writing it would destroy the input; choose another file")
    check_folder_location(path.parent, what=f"the folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise FlowError(f"{what} {path}: no permission to replace it; choose another file")


def check_media_files(entries: Sequence[ManifestEntry], *, manifest: str | os.PathLike[str]) -> None:
    """Every entry's file exists, is a regular file (or a link to one) and is readable.

    One ``os.stat`` (and one ``os.access``) per entry, nothing decoded. Raises one
    :class:`~vqa_core.errors.ManifestError` for all the bad ones: how many, of which kind,
    the first few ids with their paths, and what to do.
    """
    problems: dict[str, list[ManifestEntry]] = {}
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except FileNotFoundError:
            problems.setdefault("missing", []).append(entry)
            continue
        except OSError:  # permission denied on a folder on the way, a link loop, a name too long
            problems.setdefault("not reachable", []).append(entry)
            continue
        if not stat.S_ISREG(mode):
            problems.setdefault("not a file", []).append(entry)
        elif not os.access(entry.path, os.R_OK):
            problems.setdefault("not readable", []).append(entry)
    if not problems:
        return
    bad = [e for kind in problems.values() for e in kind]
    kinds = ", ".join(f"{kind} {len(items)}" for kind, items in problems.items())
    shown = ", ".join(f"{e.video_id} ({e.path})" for e in bad[:MAX_SHOWN])
    more = f" and {len(bad) - MAX_SHOWN} more" if len(bad) > MAX_SHOWN else ""
    raise ManifestError(
        f"manifest {manifest}: {len(bad)} of {len(entries)} video files cannot be read "
        f"({kinds}): {shown}{more}; restore them or remove their rows, then run again"
    )
