"""Dataset adapters: a dataset folder, as it ships, in; a manifest CSV out (``vqa dataset``).

::

    ROOT (label files + media, as downloaded)
      |  adapter: reads the label file(s), names each video's expected place
      v
    rows: video_id, candidate paths, raw MOS, group
      |  validation: ids, MOS, files (every problem found, reported at once)
      v
    <out> (video_id,path,mos,group)  [+ <out stem>.splits.npy for ``vsfa-info``]

``list_datasets()`` names the adapters and the layout each expects; ``make_manifest(name,
root, out=...)`` writes the manifest (see :mod:`vqa_core.manifest`). Paths in it are relative to the
manifest's folder when the file lies under that folder, else absolute. ``group`` holds the
source / reference content id where the dataset has one (for content-separated splits), else
it is empty. Label files and names in them are data: nothing is passed to a shell.

Fatal problems raise one ``DatasetError`` listing all of them; nothing is written:

- no label file, an unreadable or empty one, missing columns or MATLAB variables;
- an empty or duplicate video id;
- a MOS that is missing, not a number, NaN or infinite;
- a label path that leads out of the dataset folder (``../x.mp4``, an absolute path elsewhere);
- with ``check_files=True`` (default): a labelled file that is not there;
- dataset-specific inconsistencies (variables of different lengths, a split index that is
  not a permutation of the reference ids).

Warnings go to ``DatasetReport.problems`` and the manifest is written:

- media files next to labelled ones that no label names (expected when a label file covers
  one split);
- a label name that matches several files (``x.mkv`` and ``x.mp4``): the exact name wins,
  else the expected suffix, else the first in ``VIDEO_SUFFIXES`` / ``IMAGE_SUFFIXES`` order;
- a label file that is not UTF-8 (read as Latin-1).

File matching (``check_files=True``): the expected path first, then the same name ignoring
case, then (where the adapter says so) the same stem with any media suffix. With
``check_files=False`` the expected path is written without looking at the disk.

Modules: :mod:`.base` (the registry, ``make_manifest``, validation, file matching),
:mod:`.readers` (CSV / text tables and MATLAB files), :mod:`.video` and :mod:`.images` (one
adapter per dataset, registered with :func:`~.base.register_dataset`).
"""

from __future__ import annotations

# The adapter modules register on import, videos first: that is the order of list_datasets().
from . import video  # noqa: F401  (imported for registration)

# isort: split
from . import images  # noqa: F401  (imported for registration)
from .base import (
    DATASETS,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DatasetReport,
    list_datasets,
    make_manifest,
    register_dataset,
    strip_media_suffix,
)
from .readers import read_mat

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DatasetReport",
    "list_datasets",
    "make_manifest",
    "read_mat",
    "register_dataset",
    "strip_media_suffix",
]
