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

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class DuplicateRegistrationError(ValueError):
    """A name is registered twice in one registry."""


class Registry(Generic[T]):
    """Names -> entries, with did-you-mean lookups.

    ``kind`` names what is registered ("extractor", "loss", ...) in messages; ``error`` is the
    exception class raised for an unknown name (a ``KeyError`` subclass by convention, whose
    ``__str__`` prints the message). ``lazy_modules`` are imported before the first lookup,
    for registries filled by modules that register on import.
    """

    def __init__(self, kind: str, *, error: type[Exception] = KeyError, lazy_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._lazy_modules = lazy_modules

    def _load(self) -> None:
        if self._lazy_modules:
            import importlib

            modules, self._lazy_modules = self._lazy_modules, ()
            for module in modules:
                importlib.import_module(module)

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` under ``name``; without ``entry``, return a decorator that does.

        Registering the very same object again is a no-op (a module imported twice); another
        object under a taken name raises :class:`DuplicateRegistrationError`.
        """
        if entry is None:
            def decorate(obj: T) -> T:
                self.add(name, obj)
                return obj

            return decorate
        self.add(name, entry)
        return entry

    def add(self, name: str, entry: T) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not entry:
            raise DuplicateRegistrationError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

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
        return f"{prefix}unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}"

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; ``pattern`` filters with shell wildcards (``"resnet*"``)."""
        self._load()
        names = sorted(self._entries)
        return fnmatch.filter(names, pattern) if pattern else names

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
