"""Feature store: per-video feature matrices [steps, dims] in a Zarr v3 directory store
(a local directory, or an fsspec URL such as ``s3://bucket/features``; see docs/remote_stores.md).

See :mod:`feature_store.store` for the layout on disk, the atomic-write protocol and the
provenance split (``{"set": {...}, "video": {...}}``); :mod:`feature_store.maintenance` for
verify / remove / HDF5 export and import / ``.npy`` folder import; and
:mod:`feature_store.dataset` for joining feature sets by video for training.
"""

from feature_store.dataset import FeatureDataset, feature_stats
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    OutputExistsError,
    ProvenanceMismatchError,
)
from feature_store.maintenance import (
    ImportCounts,
    VerifyReport,
    export_hdf5,
    format_verify_report,
    import_hdf5,
    import_npy_folder,
    remove,
    verify,
)
from feature_store.store import (
    DTYPES,
    FORMAT_VERSION,
    FeatureStore,
    decode_node_name,
    encode_node_name,
    format_store_info,
)

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "FeatureDataset",
    "FeatureNotFoundError",
    "FeatureStore",
    "FeatureStoreError",
    "ImportCounts",
    "InvalidFeaturesError",
    "InvalidMetadataError",
    "OutputExistsError",
    "ProvenanceMismatchError",
    "VerifyReport",
    "decode_node_name",
    "encode_node_name",
    "export_hdf5",
    "feature_stats",
    "format_store_info",
    "format_verify_report",
    "import_hdf5",
    "import_npy_folder",
    "remove",
    "verify",
]
