"""Dataset adapters for video quality datasets (and the DOVER / VSFA / folder formats).

Each adapter reads its dataset's label files as they ship into :class:`~.base.Labels`; the
framework (:mod:`pipeline.datasets.base`) validates and writes the manifest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .base import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Context, Labels, Row, has_suffix, register_dataset, strip_media_suffix
from .readers import as_list, as_text, mat_variables, read_path_mos_lines, read_table, same_length

LSVQ_SPLITS = {  # split -> label files, official CSV first, then DOVER / FAST-VQA lists
    "train": ("LSVQ_whole_train.csv", "train_labels.txt"),
    "test": ("LSVQ_whole_test.csv", "labels_test.txt"),
    "test-1080p": ("LSVQ_whole_test_1080p.csv", "labels_1080p.txt"),
}


@register_dataset(
    "konvid1k",
    "KoNViD_1k_mos.csv (flickr_id,mos; also in KoNViD_1k_metadata/, or VIDEVAL's "
    "KONVID_1K_metadata.csv) + KoNViD_1k_videos/<flickr_id>.mp4",
)
def _konvid1k(ctx: Context) -> Labels:
    """KoNViD-1k as downloaded: ``KoNViD_1k_mos.csv`` (columns ``flickr_id``, ``mos``) in ROOT
    or ROOT/KoNViD_1k_metadata/, or VIDEVAL's metadata CSV (same two columns plus stream
    properties); videos ``KoNViD_1k_videos/<flickr_id>.mp4`` (or directly in ROOT).
    video_id = flickr_id; no groups (one video per source)."""
    path = ctx.find_label_file(
        ("KoNViD_1k_mos.csv", "KoNViD_1k_metadata/KoNViD_1k_mos.csv", "KONVID_1K_metadata.csv", "konvid1k_metadata.csv")
    )
    table = read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("flickr_id",), "mos": ("mos",)})
    rows = []
    for line, fields in table.rows:
        flickr_id = table.field(fields, cols["video"])
        name = f"{flickr_id}.mp4"
        rows.append(
            Row(
                flickr_id,
                (ctx.root / "KoNViD_1k_videos" / name, ctx.root / name),
                table.field(fields, cols["mos"]),
                table.where(line),
            )
        )
    return Labels(rows, path, warnings=table.warnings)


@register_dataset("livevqc", "data.mat (video_list, mos; or VIDEVAL's LIVE_VQC_metadata.csv: File,MOS) + Video/<name>")
def _livevqc(ctx: Context) -> Labels:
    """LIVE Video Quality Challenge (VQC): ``data.mat`` with the cell array ``video_list``
    (``A001.mp4``, ...) and the vector ``mos`` (any MAT version), or VIDEVAL's metadata CSV
    (``File``, ``MOS``); videos in ``Video/`` (or ROOT). video_id = name without suffix."""
    path = ctx.find_label_file(("data.mat", "LIVE_VQC_metadata.csv", "livevqc_metadata.csv"))
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    if path.suffix.lower() == ".mat":
        variables = mat_variables(path, ctx.name, ("video_list", "mos"))
        names = [as_text(v) for v in as_list(variables["video_list"], f"{path.name}: video_list")]
        scores = as_list(variables["mos"], f"{path.name}: mos")
        problems += same_length(ctx.name, path, video_list=names, mos=scores)
        items = [(f"{path.name} entry {i + 1}", n, m) for i, (n, m) in enumerate(zip(names, scores, strict=False))]
    else:
        table = read_table(path, ctx.name)
        warnings += table.warnings
        cols = table.columns(ctx.name, {"video": ("File", "video_list", "name"), "mos": ("MOS",)})
        items = [
            (table.where(line), table.field(f, cols["video"]), table.field(f, cols["mos"])) for line, f in table.rows
        ]
    rows = [
        Row(strip_media_suffix(name), (ctx.root / "Video" / name, ctx.root / name), mos, where)
        for where, name, mos in items
    ]
    return Labels(rows, path, problems, warnings)


@register_dataset(
    "youtube-ugc",
    "VIDEVAL's YOUTUBE_UGC_metadata.csv (vid,category,resolution,MOSFull) + "
    "original_videos/<category>/<resolution>P/<vid>.mkv (any suffix; flat too)",
)
def _youtube_ugc(ctx: Context) -> Labels:
    """YouTube-UGC with VIDEVAL's metadata CSV (columns ``vid``, ``category``, ``resolution``,
    ``MOSFull``; ``MOS`` accepted). Videos as in the public bucket:
    ``original_videos/<category>/<resolution>P/<vid>.mkv``, or ``<category>/<resolution>P/``
    under ROOT, or flat in ``original_videos/`` or ROOT. Any media suffix matches the stem
    (transcoded .mp4 copies work); ``.mkv`` is preferred when several exist. video_id = vid."""
    path = ctx.find_label_file(("YOUTUBE_UGC_metadata.csv", "youtube_ugc_metadata.csv"))
    table = read_table(path, ctx.name)
    cols = table.columns(
        ctx.name,
        {"video": ("vid",), "mos": ("MOSFull", "MOS")},
        {"category": ("category",), "resolution": ("resolution",)},
    )
    rows = []
    for line, fields in table.rows:
        vid = table.field(fields, cols["video"])
        category = table.field(fields, cols["category"])
        resolution = table.field(fields, cols["resolution"]).upper().rstrip("P")
        name = f"{vid}.mkv"
        candidates = []
        if category and resolution:
            candidates += [
                ctx.root / "original_videos" / category / f"{resolution}P" / name,
                ctx.root / category / f"{resolution}P" / name,
            ]
        candidates += [ctx.root / "original_videos" / name, ctx.root / name]
        rows.append(Row(vid, tuple(candidates), table.field(fields, cols["mos"]), table.where(line), any_suffix=True))
    return Labels(rows, path, warnings=table.warnings)


@register_dataset(
    "lsvq",
    "LSVQ_whole_{train,test,test_1080p}.csv (name,mos) or DOVER's train_labels.txt / "
    "labels_test.txt / labels_1080p.txt + ROOT/<name>.mp4; split=train|test|test-1080p",
    splits=tuple(LSVQ_SPLITS),
)
def _lsvq(ctx: Context) -> Labels:
    """LSVQ: ROOT holds the video folders (``ia-batch1/``, ``yfcc-batch1/``, ...) and the label
    files: the official ``LSVQ_whole_train.csv`` / ``LSVQ_whole_test.csv`` /
    ``LSVQ_whole_test_1080p.csv`` (columns ``name`` without suffix, ``mos``; video
    ``<name>.mp4``) or the DOVER / FAST-VQA lists ``train_labels.txt`` / ``labels_test.txt`` /
    ``labels_1080p.txt`` (``path, duration, fps, mos``). video_id = the path without ``.mp4``
    (``yfcc-batch1/747``). Names contain dots (``...In1801.67``): only ``.mp4`` is appended or
    removed, never a "suffix" guessed from a dot."""
    path = ctx.find_label_file(LSVQ_SPLITS[ctx.split])
    if path.suffix.lower() == ".csv":
        table = read_table(path, ctx.name)
        cols = table.columns(ctx.name, {"video": ("name",), "mos": ("mos",)})
        rows = []
        for line, fields in table.rows:
            name = table.field(fields, cols["video"])
            rows.append(Row(name, (ctx.root / f"{name}.mp4",), table.field(fields, cols["mos"]), table.where(line)))
        return Labels(rows, path, warnings=table.warnings)
    return _path_mos_labels(ctx, path)


def _path_mos_labels(ctx: Context, path: Path) -> Labels:
    items, problems, warnings = read_path_mos_lines(path, ctx.name)
    rows = [
        Row(
            strip_media_suffix(rel, VIDEO_SUFFIXES + IMAGE_SUFFIXES), (ctx.root / rel,), mos, f"{path.name} line {line}"
        )
        for line, rel, mos in items
    ]
    return Labels(rows, path, problems, warnings)


@register_dataset(
    "cvd2014",
    "CVD2014_ratings/Realignment_MOS.csv (';', decimal commas: File_name, Content, "
    "Realignment MOS) + Test<n>/<Content>/<File_name>.avi; group Test<n>/<Content>",
)
def _cvd2014(ctx: Context) -> Labels:
    """CVD2014: ``CVD2014_ratings/Realignment_MOS.csv`` (or in ROOT), ';'-separated with
    decimal commas, columns ``File_name`` (``Test01_City_D01``), ``Content`` (``City``) and
    ``Realignment MOS`` (0-100); blank rows are skipped. Videos
    ``Test<n>/<Content>/<File_name>.avi`` where n is the number in File_name (Test01 -> Test1).
    group = ``Test<n>/<Content>``: one scene filmed by all cameras of a test."""
    path = ctx.find_label_file(("CVD2014_ratings/Realignment_MOS.csv", "Realignment_MOS.csv"))
    table = read_table(path, ctx.name)
    cols = table.columns(
        ctx.name,
        {"video": ("File_name",), "content": ("Content",), "mos": ("Realignment MOS", "RealignmentMOS", "MOS")},
    )
    rows, problems = [], []
    for line, fields in table.rows:
        name = strip_media_suffix(table.field(fields, cols["video"]))
        content = table.field(fields, cols["content"])
        mos = table.field(fields, cols["mos"])
        if table.delimiter != "," and re.fullmatch(r"[+-]?\d+,\d*", mos):
            mos = mos.replace(",", ".")
        test = re.match(r"(?i)test0*(\d+)_", name)
        if name and not test:
            problems.append(
                (
                    "unexpected name",
                    f"{table.where(line)}: File_name {name!r} does not start with Test<nn>_, so its folder is unknown",
                )
            )
            continue
        if name and not content:
            problems.append(("unexpected name", f"{table.where(line)}: empty Content for {name!r}"))
            continue
        folder = f"Test{int(test.group(1))}/{content}" if test else ""
        rows.append(Row(name, (ctx.root / folder / f"{name}.avi",), mos, table.where(line), group=folder))
    return Labels(rows, path, problems, table.warnings)


@register_dataset(
    "live-qualcomm",
    "qualcommSubjectiveData.mat (qualcommSubjectiveData.unBiasedMOS; "
    "qualcommVideoData.vidNames/distortionNames/distortionType) + "
    "<distortion>/<name>.yuv",
)
def _live_qualcomm(ctx: Context) -> Labels:
    """LIVE-Qualcomm Mobile In-Capture: ``qualcommSubjectiveData.mat`` holding the structs
    ``qualcommSubjectiveData`` (field ``unBiasedMOS``) and ``qualcommVideoData`` (fields
    ``vidNames``, ``distortionNames``, ``distortionType``: 1-based index into distortionNames).
    Videos ``<distortionNames{type}>/<vidName>`` (raw 1920x1080 YUV 4:2:0 ``.yuv``; a converted
    file with the same stem and another suffix, e.g. ``.mp4``, is used when the .yuv is absent).
    video_id = ``<distortion>/<stem>``; no groups."""
    path = ctx.find_label_file(("qualcommSubjectiveData.mat",))
    variables = mat_variables(path, ctx.name, ("qualcommSubjectiveData", "qualcommVideoData"))
    subjective, video = variables["qualcommSubjectiveData"], variables["qualcommVideoData"]
    missing = [
        f"{struct}.{f}"
        for struct, value, fields in (
            ("qualcommSubjectiveData", subjective, ("unBiasedMOS",)),
            ("qualcommVideoData", video, ("vidNames", "distortionNames", "distortionType")),
        )
        for f in fields
        if not (isinstance(value, dict) and f in value)
    ]
    if missing:
        raise DatasetError(f"{ctx.name}: {path} lacks field(s) {', '.join(missing)}")
    names = [as_text(v) for v in as_list(video["vidNames"], "vidNames")]
    folders = [as_text(v) for v in as_list(video["distortionNames"], "distortionNames")]
    kinds = as_list(video["distortionType"], "distortionType")
    scores = as_list(subjective["unBiasedMOS"], "unBiasedMOS")
    problems = same_length(ctx.name, path, vidNames=names, distortionType=kinds, unBiasedMOS=scores)
    rows = []
    for i, (name, kind, mos) in enumerate(zip(names, kinds, scores, strict=False)):
        where = f"{path.name} entry {i + 1}"
        try:
            number = int(kind)
        except (TypeError, ValueError, OverflowError):  # not a number, NaN, infinite
            number = None
        if number is None or number != kind or not 1 <= number <= len(folders):
            problems.append(
                ("inconsistent label file", f"{where}: distortionType {kind!r} is not one of 1..{len(folders)}")
            )
            continue
        folder = folders[number - 1]
        rows.append(
            Row(f"{folder}/{strip_media_suffix(name)}", (ctx.root / folder / name,), mos, where, any_suffix=True)
        )
    return Labels(rows, path, problems)


@register_dataset("kvq", "train_data.csv (filename,score) + ROOT/<filename>")
def _kvq(ctx: Context) -> Labels:
    """KVQ (NTIRE 2024 short-form UGC): ``train_data.csv`` with columns ``filename`` (path of
    the video relative to ROOT, as the official baseline joins it with its data prefix) and
    ``score``; other split files (validation, test labels) via ``label_file=``. A filename
    not found under ROOT is also looked for next to the label file. video_id = filename
    without suffix; no groups (the CSV does not name source videos)."""
    path = ctx.find_label_file(("train_data.csv",))
    table = read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("filename", "file_name", "name"), "mos": ("score", "mos")})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        candidates = tuple(dict.fromkeys((ctx.root / name, path.parent / name)))
        rows.append(Row(strip_media_suffix(name), candidates, table.field(fields, cols["mos"]), table.where(line)))
    return Labels(rows, path, warnings=table.warnings)


@register_dataset("dover-labels", "labels.txt with lines 'path, duration, fps, mos' (DOVER / FAST-VQA) + ROOT/<path>")
def _dover_labels(ctx: Context) -> Labels:
    """Any dataset listed in the DOVER / FAST-VQA format: one ``path, duration, fps, mos`` line
    per video (duration and fps may be -1), ``labels.txt`` in ROOT unless ``label_file=``
    names another; paths relative to ROOT (DOVER's ``data_prefix``). video_id = path without
    its media suffix (``KoNViD_1k_videos/4542323058``)."""
    return _path_mos_labels(ctx, ctx.find_label_file(("labels.txt",)))


@register_dataset(
    "vsfa-info",
    "VSFA/TCSVT info .mat (video_names, scores, ref_ids, index; ROOT/*info.mat) + "
    "ROOT/<video_name>; index -> <out stem>.splits.npy",
)
def _vsfa_info(ctx: Context) -> Labels:
    """VSFA / TCSVT-2022-BVQA info files (``KoNViD-1kinfo.mat``, ...; MATLAB v7.3 usually, any
    version read): ``video_names`` (cell of names relative to the video folder, e.g.
    ``Test1/City/Test01_City_D01.avi``), ``scores``, optional ``ref_ids`` (content id per
    video -> group) and ``index`` (MATLAB ``[n_splits, n_refs]``: each row a random
    permutation of the ref ids, e.g. 1000 rows). ROOT is the video folder; the info file is
    ``label_file=`` or the only ``*info.mat`` in ROOT. The index is written to
    ``<out stem>.splits.npy`` as int64 ``[n_splits, n_refs]``, values as in ``ref_ids`` (so in
    the manifest's group column; VSFA trains on the refs in the first 60% of a row).
    video_id = name without media suffix."""
    if ctx.label_file is not None:
        path = ctx.find_label_file(())
    else:
        found = sorted(ctx.root.glob("*info.mat"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetError(
                f"{ctx.name}: expected one *info.mat in {ctx.root} (found {listed}); name it with label_file="
            )
        path = found[0]
    variables = mat_variables(path, ctx.name, ("video_names", "scores"))
    names = [as_text(v) for v in as_list(variables["video_names"], "video_names")]
    scores = as_list(variables["scores"], "scores")
    problems = same_length(ctx.name, path, video_names=names, scores=scores)
    ref_ids: list | None = None
    if "ref_ids" in variables:
        ref_ids = as_list(variables["ref_ids"], "ref_ids")
        problems += same_length(ctx.name, path, video_names=names, ref_ids=ref_ids)
        if not all(isinstance(r, (int, float)) and float(r).is_integer() for r in ref_ids):
            problems.append(("inconsistent label file", f"{path.name}: ref_ids are not all integers"))
            ref_ids = None
    splits = None
    if "index" in variables and not problems:
        splits, index_problems = _vsfa_splits(variables["index"], ref_ids, len(names), path)
        problems += index_problems
    rows = [
        Row(
            strip_media_suffix(name),
            (ctx.root / name,),
            score,
            f"{path.name} entry {i + 1}",
            group=str(int(ref_ids[i])) if ref_ids is not None else None,
        )
        for i, (name, score) in enumerate(zip(names, scores, strict=False))
    ]
    return Labels(rows, path, problems, splits=splits)


def _vsfa_splits(
    index: Any, ref_ids: list | None, n_videos: int, path: Path
) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """The index as int64 [n_splits, n_refs], checked: every row a permutation of the refs."""
    refs = np.unique(np.asarray(ref_ids if ref_ids is not None else range(1, n_videos + 1), dtype=float))
    matrix = np.atleast_2d(np.asarray(index, dtype=float))
    if matrix.shape[1] != refs.size and matrix.shape[0] == refs.size:
        matrix = matrix.T  # stored [n_refs, n_splits]
    problem = None
    if matrix.ndim != 2 or matrix.shape[1] != refs.size:
        problem = f"index has shape {matrix.shape}; expected [n_splits, {refs.size}] (one column per ref id)"
    elif not np.array_equal(matrix, np.round(matrix)):
        problem = "index holds non-integer values"
    else:
        bad = np.flatnonzero(~(np.sort(matrix, axis=1) == refs[None, :]).all(axis=1))
        if bad.size:
            problem = (
                f"index rows {', '.join(str(b + 1) for b in bad[:5])}{' ...' if bad.size > 5 else ''} "
                f"({bad.size} of {matrix.shape[0]}) are not permutations of the ref ids"
            )
    if problem:
        return None, [("inconsistent label file", f"{path.name}: {problem}")]
    return matrix.astype(np.int64), []


@register_dataset(
    "folder",
    "videos in ROOT + one scores CSV (name column: filename/file/name/video/path...; "
    "score column: mos/score/dmos...; stems allowed)",
)
def _folder(ctx: Context) -> Labels:
    """A folder of videos with a scores CSV: ``label_file=`` or the only ``*.csv`` in ROOT
    (the output manifest excluded). Columns are found by name, ignoring case, spaces, '_' and
    '-', first match wins: name from ``filename, file_name, file, video, video_name, name,
    path, vid, video_id``; score from ``mos, score, dmos, quality, rating``; optional group
    from ``group, ref, ref_id, source, content``. Names are paths relative to ROOT, with or
    without suffix (a stem matches any video suffix). video_id = name without suffix."""
    if ctx.label_file is not None:
        path = ctx.find_label_file(())
    else:
        out = os.path.abspath(ctx.out)
        found = [p for p in sorted(ctx.root.glob("*.csv")) if os.path.abspath(p) != out]
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetError(
                f"{ctx.name}: expected one scores CSV in {ctx.root} (found {listed}); name it with label_file="
            )
        path = found[0]
    table = read_table(path, ctx.name)
    cols = table.columns(
        ctx.name,
        {
            "video": ("filename", "file_name", "file", "video", "video_name", "name", "path", "vid", "video_id"),
            "mos": ("mos", "score", "dmos", "quality", "rating"),
        },
        {"group": ("group", "ref", "ref_id", "source", "content")},
    )
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        suffixed = has_suffix(name, VIDEO_SUFFIXES)
        rows.append(
            Row(
                strip_media_suffix(name, VIDEO_SUFFIXES),
                (ctx.root / (name if suffixed else f"{name}.mp4"),),
                table.field(fields, cols["mos"]),
                table.where(line),
                group=table.field(fields, cols["group"]) or None,
                any_suffix=not suffixed,
            )
        )
    return Labels(rows, path, warnings=table.warnings)
