"""Frozen-backbone feature extractors and their registry.

Importing this package registers every built-in extractor (registration only; no models are
built and nothing is downloaded at import time).
"""

from . import (
    gram,  # noqa: F401  (registers inception-gram and its layer-subset variants)
    quality,  # noqa: F401  (registers unique, unique-pr, quality-resnet50)
    resnet,  # noqa: F401  (registers resnet50, resnet50-vsfa)
    slowfast,  # noqa: F401  (registers slowfast, slowfast-fast, slowfast-fast-tcsvt, slowfast-tokens)
)
from .base import Extractor, ExtractorEntry, ExtractorSpec
from .registry import (
    EXTRACTORS,
    create_extractor,
    extractor_options,
    get_entry,
    list_extractors,
    register_extractor,
    sampling_for,
)

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "ExtractorEntry",
    "ExtractorSpec",
    "create_extractor",
    "extractor_options",
    "get_entry",
    "list_extractors",
    "register_extractor",
    "sampling_for",
]
