"""Maintenance of a feature store: the functions behind the ``vqa store`` commands.

:func:`remove` lives here; :func:`verify` and its report in :mod:`feature_store.verify`;
HDF5 export / import and ``.npy`` folder import in :mod:`feature_store.transfer`. All take
a :class:`~feature_store.store.FeatureStore`; the commands are thin wrappers around them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from feature_store._naming import encode_node_name
from feature_store.errors import FeatureNotFoundError
from feature_store.store import FeatureStore
from feature_store.transfer import HDF5_FORMAT_VERSION, ImportCounts, export_hdf5, import_hdf5, import_npy_folder
from feature_store.verify import VerifyReport, format_verify_report, verify

__all__ = [
    "HDF5_FORMAT_VERSION",
    "ImportCounts",
    "VerifyReport",
    "export_hdf5",
    "format_verify_report",
    "import_hdf5",
    "import_npy_folder",
    "remove",
    "verify",
]

logger = logging.getLogger(__name__)


def remove(store: FeatureStore, set_id: str, *, video_ids: Sequence[str] | None = None) -> int:
    """Delete a whole feature set, or some of its videos; return the number of videos removed.

    Each node is first renamed into a staging area (atomic), then deleted, so a killed
    removal leaves either the node in place or a leftover for
    :meth:`FeatureStore.remove_incomplete`, never a half-deleted video. Object stores (no
    rename): a video's ``zarr.json`` is deleted first (it stops counting at once), a whole
    set is first marked ``"status": "removing"`` (it leaves every listing at once); a killed
    removal leaves a leftover that ``remove_incomplete`` (or removing again) finishes. Do not
    remove what concurrent writers are writing. Asking for a confirmation is the caller's
    job.

    Args:
        store: the store.
        set_id: an existing feature set id.
        video_ids: videos to remove (complete or not); ``None`` removes the whole set.

    Raises:
        FeatureNotFoundError: the set does not exist, or some of ``video_ids`` have no node
            in it (then nothing is removed; the message and ``missing`` list all of them).
    """
    layout = store.layout
    if video_ids is None and layout.removal_pending(set_id):
        layout.remove_set(set_id)  # finish a killed removal
        logger.info("finished removing feature set %s", set_id)
        return 0
    layout.set_attrs(set_id)
    if video_ids is None:
        n_videos = len(store.video_ids(set_id))
        layout.remove_set(set_id)
        logger.info("removed feature set %s (%d videos)", set_id, n_videos)
        return n_videos
    video_ids = list(dict.fromkeys(video_ids))
    for video_id in video_ids:
        encode_node_name(video_id)  # validates
    missing = [v for v in video_ids if not layout.has_video_node(set_id, v)]
    if missing:
        err = FeatureNotFoundError(
            f"{len(missing)} of {len(video_ids)} videos are not in feature set {set_id!r}; "
            "nothing was removed: " + ", ".join(map(repr, missing))
        )
        err.missing = missing
        raise err
    for video_id in video_ids:
        if not layout.remove_video(set_id, video_id):
            logger.warning("%s / %s vanished while removing it", set_id, video_id)
    logger.info("removed %d videos from feature set %s", len(video_ids), set_id)
    return len(video_ids)
