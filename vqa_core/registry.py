"""One registry helper for every named thing the project builds (timm / pyiqa style).

``Registry(kind, error=...)`` maps names to entries (builders, classes, specs). Lookups of an
unknown name raise the owning package's error class with a did-you-mean hint and the known
names; registering a name twice is refused.

    EXTRACTORS = Registry("extractor", error=UnknownExtractorError)

    @EXTRACTORS.register("resnet50")
    def build(...): ...

    EXTRACTORS.get("resnet5")   # UnknownExtractorError: unknown extractor 'resnet5'. Did you mean resnet50? ...
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import DuplicateRegistrationError

__all__ = ["DuplicateRegistrationError", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries, with did-you-mean lookups.

    ``kind`` names what is registered ("extractor", "loss", ...) in messages; ``error`` is the
    exception class raised for an unknown name (a ``KeyError`` subclass by convention, whose
    ``__str__`` prints the message). ``lazy_modules`` are imported before the first lookup,
    for registries filled by modules that register on import. Names are listed sorted, or in
    registration order with ``sort=False`` (a curated order, e.g. ``vqa dataset list``).
    """

    def __init__(
        self, kind: str, *, error: type[Exception] = KeyError, lazy_modules: tuple[str, ...] = (), sort: bool = True
    ):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._lazy_modules = lazy_modules
        self._sort = sort
        self._loaded = not lazy_modules
        # Re-entrant: a lazy module may look names up while it registers; other threads wait
        # until every lazy module is in rather than see a half-filled registry.
        self._load_lock = threading.RLock()
        self._loading = False

    def _load(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for module in self._lazy_modules:
                    importlib.import_module(module)
                self._loaded = True
            finally:  # a failed import is raised again by the next lookup, not hidden
                self._loading = False

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` under ``name``; without ``entry``, return a decorator that does.

        Registering the same entry again (the very object, or an equal value such as a frozen
        dataclass built twice) is a no-op; another entry under a taken name raises
        :class:`DuplicateRegistrationError`.
        """
        if entry is None:

            def decorate(obj: T) -> T:
                self.add(name, obj)
                return obj

            return decorate
        self.add(name, entry)
        return entry

    def add(self, name: str, entry: T) -> None:
        existing = self._entries.get(name, entry)
        if existing is not entry and existing != entry:
            raise DuplicateRegistrationError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    @contextlib.contextmanager
    def override(self, name: str, entry: T) -> Iterator[T]:
        """Register ``entry`` as ``name`` for the duration of a ``with`` block, replacing any
        entry of that name (tests, probes); the previous state comes back afterwards."""
        self._load()
        missing = object()
        previous = self._entries.get(name, missing)
        self._entries[name] = entry
        try:
            yield entry
        finally:
            if previous is missing:
                self._entries.pop(name, None)
            else:
                self._entries[name] = previous

    def get(self, name: str, *, where: str = "") -> T:
        """The entry registered as ``name``; unknown names raise ``self.error`` with close matches.

        ``where`` prefixes the message (e.g. the file that named the entry)."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown_message(name, where=where)) from None

    def unknown_message(self, name, *, where: str = "") -> str:
        self._load()
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        prefix = f"{where}: " if where else ""
        return f"{prefix}unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}"

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (sorted unless ``sort=False``); ``pattern`` filters with shell
        wildcards (``"resnet*"``)."""
        self._load()
        names = sorted(self._entries) if self._sort else list(self._entries)
        return fnmatch.filter(names, pattern) if pattern else names

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        try:
            return name in self._entries
        except TypeError:  # an unhashable name (a list from a JSON config) is simply not registered
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
