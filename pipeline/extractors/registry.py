"""Extractor registry: ``list_extractors()``, ``create_extractor(name, ...)`` (timm/pyiqa style)."""
from __future__ import annotations

import difflib
from typing import Callable

from ..errors import UnknownExtractorError
from .base import Extractor, ExtractorEntry, check_compute_options

_REGISTRY: dict[str, ExtractorEntry] = {}


def register_extractor(
    name: str, *, dims: int, description: str, weights_choices: tuple[str, ...], default_weights: str,
    sampling_kinds: tuple[str, ...] = ("all", "uniform", "fps"), default_sampling: str = "all",
) -> Callable:
    """Decorator registering ``builder(*, weights, device, **overrides) -> Extractor`` under ``name``.

    ``sampling_kinds``: the sampling strategies the extractor accepts (frame extractors take
    frames, clip extractors ``clips``); ``default_sampling`` is used when the caller's sampling
    is not one of them."""

    def decorate(builder: Callable[..., Extractor]) -> Callable[..., Extractor]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} is registered twice")
        _REGISTRY[name] = ExtractorEntry(name, builder, dims, description, weights_choices, default_weights,
                                         sampling_kinds, default_sampling)
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


def sampling_for(name: str, requested: str | None) -> str:
    """The sampling an extractor runs with: ``requested`` when the extractor accepts its kind,
    else the extractor's default (a clip extractor asked for ``uniform:16`` keeps its clips)."""
    entry = get_entry(name)
    if requested is None:
        return entry.default_sampling
    kind = requested.split(":", 1)[0].strip().lower()
    return requested if kind in entry.sampling_kinds else entry.default_sampling


def create_extractor(
    name: str,
    *,
    weights: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    **overrides,
) -> Extractor:
    """Build the extractor registered as ``name``.

    ``weights``: ``"imagenet"`` (or the extractor's named pretrained weights), a path to a local
    checkpoint, or ``"random"`` / ``"random:SEED"`` for tests. ``None`` means the extractor's default.
    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"`` on CUDA only) and ``channels_last``: see
    :meth:`Extractor.set_compute`; checked before the model is built, applied after, and
    recorded in the spec. ``overrides`` go to the extractor's builder.
    """
    entry = get_entry(name)
    check_compute_options(precision=precision, channels_last=channels_last, device=device)
    extractor = entry.builder(weights=weights or entry.default_weights, device=device, **overrides)
    if precision != extractor.spec.precision or channels_last != extractor.spec.channels_last:
        extractor.set_compute(precision=precision, channels_last=channels_last)
    return extractor
