"""Feature store: per-video feature matrices [steps, dims] in a Zarr v3 directory store
(a local directory, or an fsspec URL such as ``s3://bucket/features``; see docs/remote_stores.md).

See :mod:`feature_store.store` for the layout on disk, the atomic-write protocol and the
provenance split (``{"set": {...}, "video": {...}}``); :mod:`feature_store.verify`,
:mod:`feature_store.maintenance` (remove), :mod:`feature_store.transfer` (HDF5 export and
import, ``.npy`` folder import) and :mod:`feature_store.migrate` (to the packed layout, for
large collections: docs/store_layout.md) for the ``vqa store`` commands; and
:mod:`feature_store.dataset` for joining feature sets by video for training;
:mod:`feature_store.frames` for analysts (``FeatureStore.open(path).to_frame(set, pooling="mean",
manifest=...)`` and ``.to_xarray(set)``; ``read_manifest`` is re-exported here, docs/analysis.md).

Inside the package: :mod:`~feature_store._format` (constants, canonical JSON, validation,
metadata, checksums), :mod:`~feature_store._naming` (node names, owner tags),
:mod:`~feature_store._fs` (local path or fsspec URL), :mod:`~feature_store._commit` (the
two commit strategies: rename locally, PUT in object stores), :mod:`~feature_store._layout`
(where sets and videos are; the node-level interface the modules above share),
:mod:`~feature_store._packs` (the packed layout: segments of records, their index) and
:mod:`feature_store.info` (``vqa store info`` text).
"""

from feature_store._format import LAYOUTS
from feature_store.dataset import FeatureDataset, feature_stats
from feature_store.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    OutputExistsError,
    ProvenanceMismatchError,
)
from feature_store.maintenance import remove
from feature_store.migrate import MigrationReport, migrate
from feature_store.store import (
    DTYPES,
    FORMAT_VERSION,
    FeatureStore,
    decode_node_name,
    encode_node_name,
    format_store_info,
)
from feature_store.transfer import ImportCounts, export_hdf5, import_hdf5, import_npy_folder
from feature_store.verify import VerifyReport, format_verify_report, verify
from vqa_core.manifest import ManifestEntry, read_manifest  # public here: analysts join features to MOS

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "FeatureDataset",
    "FeatureNotFoundError",
    "FeatureStore",
    "FeatureStoreError",
    "ImportCounts",
    "LAYOUTS",
    "InvalidFeaturesError",
    "InvalidMetadataError",
    "ManifestEntry",
    "MigrationReport",
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
    "migrate",
    "read_manifest",
    "remove",
    "verify",
]
