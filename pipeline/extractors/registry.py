"""Extractor registry: ``list_extractors()``, ``create_extractor(name, ...)`` (timm/pyiqa style).

One :class:`vqa_core.registry.Registry` of :class:`~pipeline.extractors.base.ExtractorEntry`
rows, filled by the extractor modules when ``pipeline.extractors`` is imported (registration
only: no model is built and nothing is downloaded then).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from vqa_core.registry import Registry

from ..errors import UnknownExtractorError
from ..sampling import DEFAULT_CLIP_POLICY
from .base import Extractor, ExtractorEntry, check_compute_options

EXTRACTORS: Registry[ExtractorEntry] = Registry("extractor", error=UnknownExtractorError)


def register_extractor(
    name: str,
    *,
    dims: int,
    description: str,
    weights_choices: tuple[str, ...],
    default_weights: str,
    sampling_kinds: tuple[str, ...] = ("all", "uniform", "fps"),
    default_sampling: str = "all",
) -> Callable:
    """Decorator registering ``builder(*, weights, device, **overrides) -> Extractor`` under ``name``.

    ``sampling_kinds``: the sampling strategies the extractor accepts (frame extractors take
    frames, clip extractors ``clips``; ``"clips:POLICY"`` accepts clips cut by that policy
    only); ``default_sampling`` is used when the caller's sampling is not one of them.
    Registering a taken name raises :class:`vqa_core.errors.DuplicateRegistrationError`
    (a ``ValueError``).
    """

    def decorate(builder: Callable[..., Extractor]) -> Callable[..., Extractor]:
        EXTRACTORS.register(
            name,
            ExtractorEntry(
                name, builder, dims, description, weights_choices, default_weights, sampling_kinds, default_sampling
            ),
        )
        return builder

    return decorate


def list_extractors(pattern: str | None = None) -> list[ExtractorEntry]:
    """Registered extractors, sorted by name; ``pattern`` filters names with shell wildcards
    (``list_extractors("slowfast*")``)."""
    return [EXTRACTORS.get(name) for name in EXTRACTORS.names(pattern)]


def get_entry(name: str) -> ExtractorEntry:
    """The registry row of ``name``; an unknown name raises :class:`UnknownExtractorError`
    (a ``KeyError``) naming close matches and every registered extractor."""
    return EXTRACTORS.get(name)


def _accepts(entry: ExtractorEntry, requested: str) -> bool:
    """Whether ``entry`` takes the sampling text ``requested`` (by kind, or kind and clip policy)."""
    kind, _, rest = requested.strip().lower().partition(":")
    kind = kind.strip()
    if kind in entry.sampling_kinds:
        return True
    policy = rest.partition(":")[2].strip() or DEFAULT_CLIP_POLICY
    return kind == "clips" and f"clips:{policy}" in entry.sampling_kinds


def extractor_options(name: str) -> list[str]:
    """The builder options of extractor ``name``: its keyword arguments besides weights and
    device (``resampler``, ``short_side``, ...), which ``create_extractor`` passes through."""
    parameters = inspect.signature(get_entry(name).builder).parameters.values()
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in ("weights", "device")]


def sampling_for(name: str, requested: str | None) -> str:
    """The sampling an extractor runs with: ``requested`` when the extractor accepts it, else
    the extractor's default (a clip extractor asked for ``uniform:16`` keeps its clips; the
    TCSVT-2022 motion extractor asked for ``clips:32`` keeps its ``clips:32:chunks``)."""
    entry = get_entry(name)
    if requested is None:
        return entry.default_sampling
    return requested if _accepts(entry, requested) else entry.default_sampling


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
    recorded in the spec. ``overrides`` go to the extractor's builder (e.g. ``resampler="pil"``
    to resize as the reference code does, ``short_side=540`` for ``resnet50``; see README,
    "Extractors").
    """
    entry = get_entry(name)
    check_compute_options(precision=precision, channels_last=channels_last, device=device)
    extractor = entry.builder(weights=weights or entry.default_weights, device=device, **overrides)
    if precision != extractor.spec.precision or channels_last != extractor.spec.channels_last:
        extractor.set_compute(precision=precision, channels_last=channels_last)
    return extractor
