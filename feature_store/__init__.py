"""Feature store: per-video feature matrices [steps, dims] in a Zarr v3 directory store.

See :mod:`feature_store.store` for the layout on disk, the atomic-write protocol and the
provenance split (``{"set": {...}, "video": {...}}``).
"""

from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    ProvenanceMismatchError,
)
from feature_store.store import (
    FORMAT_VERSION,
    FeatureStore,
    decode_node_name,
    encode_node_name,
    format_store_info,
)

__all__ = [
    "FORMAT_VERSION",
    "FeatureNotFoundError",
    "FeatureStore",
    "FeatureStoreError",
    "InvalidFeaturesError",
    "InvalidMetadataError",
    "ProvenanceMismatchError",
    "decode_node_name",
    "encode_node_name",
    "format_store_info",
]
