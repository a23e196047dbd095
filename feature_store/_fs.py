"""Where a feature store's files live: a local directory, or any fsspec URL.

One small interface, two implementations, so that the store's logic (listing feature sets and
videos, reading metadata, sizes, removals, run records) is written once:

* :class:`LocalFS` -- a plain path. The store keeps its local protocol (staging + ``os.rename``,
  see :mod:`feature_store._commit`); this class lists, reads, sizes, deletes, and writes
  single files atomically (run records).
* :class:`FsspecFS` -- a URL (``s3://``, ``gs://``, ``memory://``, ``file://``, ...). Object
  stores have no rename: the store writes nodes in place and completes them with one last
  ``PUT`` of their ``zarr.json`` (see :mod:`feature_store._commit`). Each :meth:`write_bytes` is
  one object ``PUT``, atomic on S3/GCS/Azure and in memory; on a POSIX filesystem
  (``file://``) it is emulated with a temporary file in ``<root>/_staging`` and
  ``os.replace``, so readers never see a torn file there either.

Keys are ``/``-separated paths relative to the store's root (``""`` is the root itself).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store._naming import staging_name
from feature_store.errors import FeatureStoreError
from vqa_core.atomic import atomic_write

__all__ = ["Entry", "FsspecFS", "LocalFS", "is_url", "open_fs"]

# Packages providing common fsspec protocols, for the "what to install" hint.
_PROTOCOL_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "adl": "adlfs",
    "http": "aiohttp",
    "https": "aiohttp",
    "sftp": "paramiko",
    "ssh": "paramiko",
    "hdfs": "pyarrow",
    "webdav": "webdav4",
    "oci": "ocifs",
    "hf": "huggingface_hub",
}


@dataclass(frozen=True)
class Entry:
    """One child of a listed folder / prefix."""

    name: str
    is_dir: bool


def is_url(location: Any) -> bool:
    """Whether a store location is an fsspec URL (``proto://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location


def open_fs(location: Any, storage_options: Mapping[str, Any] | None = None) -> LocalFS | FsspecFS:
    """The filesystem layer of a store location (a path, or a URL with ``storage_options``).

    Raises:
        FeatureStoreError: an unknown protocol, a protocol whose package is not installed
            (the message says which to install), a URL without a path, or options for a path.
    """
    if is_url(location):
        return FsspecFS(location, storage_options)
    if storage_options:
        raise FeatureStoreError(
            f"storage_options apply to fsspec URLs (s3://..., gs://...), not to the local path {location!r}"
        )
    try:
        return LocalFS(Path(os.fspath(location)).expanduser().absolute())
    except TypeError:
        raise FeatureStoreError(
            f"a store location is a path or an fsspec URL, got {type(location).__name__} {location!r}"
        ) from None


class LocalFS:
    """A local directory (plain path). ``root`` is absolute."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def path(self, key: str = "") -> Path:
        return self.root / key if key else self.root

    def url(self, key: str = "") -> str:
        """What messages show for ``key``: the local path."""
        return str(self.path(key))

    def list(self, key: str = "") -> list[Entry]:
        try:
            with os.scandir(self.path(key)) as entries:
                return [Entry(e.name, e.is_dir()) for e in entries]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        return {key: self.read_bytes(key) for key in keys}

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace ``key`` atomically (temporary sibling + ``os.replace``)."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, data)

    def is_file(self, key: str) -> bool:
        return self.path(key).is_file()

    def is_dir(self, key: str) -> bool:
        return self.path(key).is_dir()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    def rmtree(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def files(self, key: str = "") -> dict[str, dict]:
        """Every file under ``key``: relative key -> ``{"size", "mtime"}``."""
        base = self.path(key)
        out = {}
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except FileNotFoundError:
                    continue
                out[Path(full).relative_to(base).as_posix()] = {"size": st.st_size, "mtime": st.st_mtime}
        return out

    def size(self, key: str = "") -> int:
        """Bytes of all files under ``key`` (files deleted meanwhile are left out)."""
        return sum(info["size"] for info in self.files(key).values())

    def mtime(self, key: str) -> float | None:
        """Modification time of ``key`` itself (file or folder), or None if it is gone."""
        try:
            return os.lstat(self.path(key)).st_mtime
        except FileNotFoundError:
            return None

    def sizes(self, key: str = "") -> dict[str, int]:
        """Files directly under ``key`` (not folders): name -> size in bytes; {} if absent."""
        out = {}
        try:
            with os.scandir(self.path(key)) as entries:
                for e in entries:
                    try:
                        if e.is_file(follow_symlinks=False):
                            out[e.name] = e.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # deleted meanwhile
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return out

    def first_entries(self, key: str = ""):
        """The children of ``key`` one at a time, in the filesystem's order, without listing the
        whole folder first (the caller may stop early: O(1) for a large folder)."""
        try:
            with os.scandir(self.path(key)) as entries:
                for e in entries:
                    yield Entry(e.name, e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (fewer at its end).

        Raises:
            FileNotFoundError: ``key`` is gone.
        """
        with open(self.path(key), "rb", buffering=0) as f:
            return os.pread(f.fileno(), length, start)

    def zarr_store(self, key: str, *, read_only: bool = False):
        from zarr.storage import LocalStore

        return LocalStore(self.path(key), read_only=read_only)


def _as_timestamp(value: Any) -> float | None:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return _as_timestamp(_dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


# Where fsspec implementations put a file's modification time in ``info``/``find`` details.
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


class FsspecFS:
    """A store under an fsspec URL. ``root`` is the URL's path in ``fs`` (no protocol)."""

    local = False

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec  # a dependency of dask, prefect and torch: always installed
            from fsspec.core import url_to_fs
        except ImportError:  # pragma: no cover
            raise FeatureStoreError(f"store {url!r} is a URL: install fsspec (pip install fsspec) to use it") from None
        protocol = url.split("://", 1)[0]
        options = dict(storage_options or {})
        try:
            fs, root = url_to_fs(url, **options)
        except ImportError as exc:
            package = _PROTOCOL_PACKAGES.get(protocol.lower())
            hint = f"pip install {package}" if package else "install its fsspec implementation"
            raise FeatureStoreError(
                f"store {url!r}: the {protocol!r} protocol needs a package that is not installed ({exc}); {hint}"
            ) from None
        except ValueError as exc:
            if protocol not in fsspec.available_protocols():
                raise FeatureStoreError(
                    f"store {url!r}: unknown protocol {protocol!r} (fsspec knows "
                    f"{', '.join(sorted(fsspec.available_protocols()))})"
                ) from None
            raise FeatureStoreError(f"store {url!r}: invalid URL or storage_options: {exc}") from None
        except Exception as exc:  # noqa: BLE001 -- credentials, options: never a traceback
            raise FeatureStoreError(
                f"store {url!r}: could not open the filesystem ({type(exc).__name__}: {exc})"
            ) from None
        root = root.rstrip("/")
        if not root.strip("/"):
            raise FeatureStoreError(
                f"store {url!r}: the URL needs a path, e.g. {protocol}://features or {protocol}://bucket/features"
            )
        self.fs = fs
        self.root = root
        self.protocol = protocol
        self.storage_options = options
        self.location = fs.unstrip_protocol(root) if protocol in ("file", "local", "memory") else url.rstrip("/")
        from fsspec.implementations.local import LocalFileSystem

        self._posix = isinstance(fs, LocalFileSystem)
        self._async_fs = None

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def url(self, key: str = "") -> str:
        return f"{self.location}/{key}" if key else self.location

    def _fresh(self, key: str) -> str:
        path = self._path(key)
        try:
            self.fs.invalidate_cache(path)  # listings are cached by s3fs/gcsfs; others write too
        except Exception:  # noqa: BLE001 -- best effort
            pass
        return path

    def list(self, key: str = "") -> list[Entry]:
        path = self._fresh(key)
        try:
            infos = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for info in infos:
            name = info["name"].rstrip("/")
            if name == path:  # ls of a file lists the file itself
                continue
            out.append(Entry(name.rsplit("/", 1)[-1], info.get("type") == "directory"))
        return out

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several reads (concurrent where the filesystem is asynchronous); None: absent."""
        if not keys:
            return {}
        found = self.fs.cat([self._path(k) for k in keys], on_error="return")
        out: dict[str, bytes | None] = {}
        for key in keys:
            value = found.get(self._path(key), FileNotFoundError(key))
            if isinstance(value, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
                value = None
            elif isinstance(value, BaseException):
                raise value
            out[key] = value
        return out

    def write_bytes(self, key: str, data: bytes) -> None:
        """One atomic ``PUT`` of ``key`` (replacing it)."""
        path = self._path(key)
        if not self._posix:
            self.fs.pipe_file(path, data)
            return
        # file://: a temporary file in <root>/_staging, then os.replace (same filesystem); its
        # owner-tagged name lets remove_incomplete delete those of killed writers.
        staging = Path(self._path("_staging"))
        tmp = staging / staging_name("put")
        try:
            for _attempt in range(3):  # a concurrent rmtree may remove a fresh folder
                try:
                    staging.mkdir(parents=True, exist_ok=True)
                    tmp.write_bytes(data)
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, path)
                    return
                except FileNotFoundError:
                    continue
            raise FeatureStoreError(f"could not write {self.url(key)}: its folder keeps vanishing")
        finally:
            tmp.unlink(missing_ok=True)

    def write_many(self, items: Mapping[str, bytes]) -> None:
        """Several ``PUT``s (concurrent where the filesystem is asynchronous)."""
        if self._posix or len(items) <= 1:
            for key, data in items.items():
                self.write_bytes(key, data)
        else:
            self.fs.pipe({self._path(k): v for k, v in items.items()})

    def is_file(self, key: str) -> bool:
        try:
            return self.fs.isfile(self._fresh(key))
        except FileNotFoundError:
            return False

    def is_dir(self, key: str) -> bool:
        try:
            return self.fs.isdir(self._fresh(key))
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def delete_many(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            self.fs.rm([self._path(k) for k in keys])
        except FileNotFoundError:  # some already gone: delete the others one by one
            for key in keys:
                self.delete(key)

    def rmtree(self, key: str) -> None:
        path = self._fresh(key)
        for _attempt in range(3):
            try:
                self.fs.rm(path, recursive=True)
                return
            except FileNotFoundError:
                return
            except OSError:  # a concurrent writer added a file meanwhile (file://)
                continue

    def files(self, key: str = "") -> dict[str, dict]:
        """Every file under ``key``: relative key -> fsspec info (size, mtime fields)."""
        path = self._fresh(key)
        try:
            found = self.fs.find(path, detail=True, withdirs=False)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        prefix = path + "/"
        return {n[len(prefix) :]: info for n, info in found.items() if n.startswith(prefix)}

    def size(self, key: str = "") -> int:
        return sum(int(info.get("size") or 0) for info in self.files(key).values())

    def mtime(self, key: str) -> float | None:
        """Newest modification time of the files under ``key`` (or of ``key`` itself if it is
        a file); None if nothing is there or the filesystem does not say."""
        infos = list(self.files(key).values())
        if not infos:
            try:
                infos = [self.fs.info(self._path(key))]
            except (FileNotFoundError, NotADirectoryError):
                return None
        times = []
        for info in infos:
            stamp = next(
                (t for t in (_as_timestamp(info.get(k)) for k in _MTIME_KEYS) if t is not None),
                None,
            )
            if stamp is None:
                try:
                    stamp = _as_timestamp(self.fs.modified(info["name"]))
                except Exception:  # noqa: BLE001 -- NotImplementedError and friends
                    stamp = None
            if stamp is not None:
                times.append(stamp)
        return max(times) if times else None

    def sizes(self, key: str = "") -> dict[str, int]:
        """Objects directly under ``key`` (not prefixes): name -> size in bytes; {} if absent."""
        path = self._fresh(key)
        try:
            infos = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        out = {}
        for info in infos:
            name = info["name"].rstrip("/")
            if name != path and info.get("type") != "directory":
                out[name.rsplit("/", 1)[-1]] = int(info.get("size") or 0)
        return out

    def first_entries(self, key: str = ""):
        """The children of ``key`` (one listing: object stores have no lazy listing)."""
        yield from self.list(key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (fewer at its end); one ranged GET.

        Raises:
            FileNotFoundError: ``key`` is gone.
        """
        return self.fs.cat_file(self._path(key), start=start, end=start + length)

    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list[bytes | None]:
        """Several ``(key, start, length)`` reads at once (concurrent where the filesystem is
        asynchronous); None where the object is gone."""
        if not requests:
            return []
        found = self.fs.cat_ranges(
            [self._path(k) for k, _s, _n in requests],
            [s for _k, s, _n in requests],
            [s + n for _k, s, n in requests],
            on_error="return",
        )
        out: list[bytes | None] = []
        for value in found:
            if isinstance(value, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
                value = None
            elif isinstance(value, BaseException):
                raise value
            out.append(value)
        return out

    def zarr_store(self, key: str, *, read_only: bool = False):
        from zarr.storage import FsspecStore

        if self._async_fs is None:
            try:  # zarr's own conversion (an async instance, or sync fs in a thread wrapper)
                from zarr.storage._fsspec import _make_async

                self._async_fs = _make_async(self.fs)
            except ImportError:  # pragma: no cover -- other zarr versions
                return FsspecStore.from_url(self.url(key), storage_options=self.storage_options, read_only=read_only)
        return FsspecStore(self._async_fs, path=self._path(key), read_only=read_only)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_async_fs"] = None  # rebuilt on demand; event-loop bound
        return state
