"""Extractor registry: ``list_extractors()``, ``create_extractor(name, ...)`` (timm/pyiqa style)."""
from __future__ import annotations

import difflib
from typing import Callable

from ..errors import UnknownExtractorError
from .base import Extractor, ExtractorEntry

_REGISTRY: dict[str, ExtractorEntry] = {}


def register_extractor(
    name: str, *, dims: int, description: str, weights_choices: tuple[str, ...], default_weights: str
) -> Callable:
    """Decorator registering ``builder(*, weights, device, **overrides) -> Extractor`` under ``name``."""

    def decorate(builder: Callable[..., Extractor]) -> Callable[..., Extractor]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} is registered twice")
        _REGISTRY[name] = ExtractorEntry(name, builder, dims, description, weights_choices, default_weights)
        return builder

    return decorate


def list_extractors() -> list[ExtractorEntry]:
    """All registered extractors, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_entry(name: str) -> ExtractorEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownExtractorError(
            f"unknown extractor {name!r}.{hint} Registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_extractor(name: str, *, weights: str | None = None, device: str = "cpu", **overrides) -> Extractor:
    """Build the extractor registered as ``name``.

    ``weights``: ``"imagenet"`` (or the extractor's named pretrained weights), a path to a local
    checkpoint, or ``"random"`` / ``"random:SEED"`` for tests. ``None`` means the extractor's default.
    """
    entry = get_entry(name)
    return entry.builder(weights=weights or entry.default_weights, device=device, **overrides)
