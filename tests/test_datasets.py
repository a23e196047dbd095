"""Dataset adapters: each one on a tiny copy of the dataset's layout, real label rows where the
project has them (../shared/labels, absent from users' clones: those tests skip), and every
kind of problem reported at once."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import list_datasets, make_manifest, read_mat
from pipeline.errors import DatasetError, PipelineError, UnknownDatasetError
from tests.helpers import make_video
from vqa_core.errors import ManifestExistsError
from vqa_core.manifest import read_manifest

SHARED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "labels"
ADAPTERS = {
    "konvid1k",
    "livevqc",
    "youtube-ugc",
    "lsvq",
    "cvd2014",
    "live-qualcomm",
    "kvq",
    "dover-labels",
    "vsfa-info",
    "folder",
    "tid2013",
    "kadid10k",
    "koniq10k",
    "livec",
}


# --------------------------------------------------------------------------- helpers


def real_label_lines(name: str, n: int, *, header: bool) -> list[str]:
    """The first ``n`` data lines (after the header, kept when ``header``) of a real label file."""
    path = SHARED_LABELS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real label files live beside the development checkout)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[: n + 1] if header else lines[:n]


def rows_of(lines: list[str]) -> list[dict[str, str]]:
    return list(csv.DictReader(lines))


def touch(path: Path) -> Path:
    """An empty placeholder (adapters only check that files exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def manifest_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def written(report, *columns: str) -> list[tuple[str, ...]]:
    """The manifest's rows as tuples of ``columns`` (default video_id, path, mos)."""
    columns = columns or ("video_id", "path", "mos")
    return [tuple(row[c] for c in columns) for row in manifest_rows(report.manifest)]


def savemat_v5(path: Path, variables: dict) -> Path:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, variables)
    return path


def cell(values) -> np.ndarray:
    """A MATLAB column cell array for scipy.io.savemat."""
    array = np.empty((len(values), 1), dtype=object)
    for i, value in enumerate(values):
        array[i, 0] = value
    return array


def save_v73(path: Path, *, names: list[str], numeric: dict[str, np.ndarray]) -> Path:
    """A MATLAB v7.3 file as MATLAB writes it: 512-byte user block with the MAT header, cell
    ``video_names`` of object references to uint16 (UTF-16) char arrays, numeric arrays
    stored transposed (HDF5 shape = MATLAB shape reversed)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as fh:
        refs_group = fh.create_group("#refs#")
        refs = []
        for i, name in enumerate(names):
            codes = np.frombuffer(name.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)  # MATLAB 1 x n
            ds = refs_group.create_dataset(f"n{i}", data=codes)
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            refs.append(ds.ref)
        cells = fh.create_dataset("video_names", data=np.array([refs], dtype=h5py.ref_dtype))  # MATLAB N x 1
        cells.attrs["MATLAB_class"] = np.bytes_("cell")
        for key, value in numeric.items():
            ds = fh.create_dataset(key, data=np.asarray(value, dtype=np.float64).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    return path


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- registry


def test_list_datasets_names_every_adapter_with_its_layout():
    listed = dict(list_datasets())
    assert set(listed) == ADAPTERS
    assert all(description and "\n" not in description for description in listed.values())
    # registration order, not sorted: video datasets first, then the image ones (vqa dataset list)
    names = [name for name, _ in list_datasets()]
    assert names[:2] == ["konvid1k", "livevqc"] and names[-4:] == ["tid2013", "kadid10k", "koniq10k", "livec"]


def test_unknown_dataset_gets_a_hint(tmp_path):
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'konvid'. Did you mean konvid1k") as info:
        make_manifest("konvid", tmp_path, out=tmp_path / "m.csv")
    assert isinstance(info.value, KeyError) and isinstance(info.value, PipelineError)
    assert "Known: konvid1k, livevqc," in str(info.value)  # listed in the registry's order


def test_split_only_for_datasets_that_have_them(tmp_path):
    with pytest.raises(DatasetError, match="no splits"):
        make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv", split="test")
    with pytest.raises(DatasetError, match="train, test, test-1080p"):
        make_manifest("lsvq", tmp_path, out=tmp_path / "m.csv", split="val")


# --------------------------------------------------------------------------- video datasets


def test_konvid1k_official_layout_with_real_videos(tmp_path):
    root = tmp_path / "KoNViD_1k"
    write(root / "KoNViD_1k_metadata" / "KoNViD_1k_mos.csv", "flickr_id,mos\n3339962845,4.64\n5115335471,2.16\n")
    (root / "KoNViD_1k_videos").mkdir()
    for flickr_id in ("3339962845", "5115335471"):
        make_video(root / "KoNViD_1k_videos" / f"{flickr_id}.mp4", 3)
    report = make_manifest("konvid1k", root, out=root / "manifest.csv")
    assert report.n_videos == 2 and report.problems == [] and report.splits is None
    assert report.label_file == root / "KoNViD_1k_metadata" / "KoNViD_1k_mos.csv"
    assert manifest_rows(report.manifest)[0] == {
        "video_id": "3339962845",
        "path": "KoNViD_1k_videos/3339962845.mp4",
        "mos": "4.64",
        "group": "",
    }
    entries = read_manifest(report.manifest, require_mos=True)
    assert [(e.video_id, e.mos, e.group) for e in entries] == [("3339962845", 4.64, None), ("5115335471", 2.16, None)]
    assert all(e.path.is_file() and e.path.stat().st_size > 0 for e in entries)


def test_konvid1k_videval_metadata_real_rows(tmp_path):
    lines = real_label_lines("konvid1k_metadata.csv", 5, header=True)
    root = tmp_path / "konvid"
    write(root / "konvid1k_metadata.csv", "\n".join(lines) + "\n")
    for row in rows_of(lines):
        touch(root / "KoNViD_1k_videos" / f"{row['flickr_id']}.mp4")
    touch(root / "KoNViD_1k_videos" / "unlabelled.mp4")
    report = make_manifest("konvid1k", root, out=tmp_path / "konvid.csv")
    written = manifest_rows(report.manifest)
    assert [(r["video_id"], float(r["mos"])) for r in written] == [
        (row["flickr_id"], float(row["mos"])) for row in rows_of(lines)
    ]
    assert written[0]["path"] == f"konvid/KoNViD_1k_videos/{written[0]['video_id']}.mp4"
    assert len(report.problems) == 1 and "1 media file(s)" in report.problems[0]
    assert "unlabelled.mp4" in report.problems[0]


def test_livevqc_data_mat_v5(tmp_path):
    root = tmp_path / "LIVE-VQC"
    names = ["A001.mp4", "A002.mp4", "Vidéo 3.mp4"]
    savemat_v5(root / "data.mat", {"video_list": cell(names), "mos": np.array([[80.232], [57.3005], [61.0]])})
    for name in names:
        touch(root / "Video" / name)
    report = make_manifest("livevqc", root, out=root / "m.csv")
    entries = read_manifest(report.manifest)
    assert [(e.video_id, e.path.name, e.mos) for e in entries] == [
        ("A001", "A001.mp4", 80.232),
        ("A002", "A002.mp4", 57.3005),
        ("Vidéo 3", "Vidéo 3.mp4", 61.0),
    ]


def test_livevqc_videval_metadata_real_rows(tmp_path):
    lines = real_label_lines("livevqc_metadata.csv", 4, header=True)
    root = tmp_path / "vqc"
    write(root / "livevqc_metadata.csv", "\n".join(lines) + "\n")
    for row in rows_of(lines):
        touch(root / "Video" / row["File"])
    report = make_manifest("livevqc", root, out=root / "m.csv")
    assert [(r["video_id"], r["path"], float(r["mos"])) for r in manifest_rows(report.manifest)] == [
        (row["File"][:-4], f"Video/{row['File']}", float(row["MOS"])) for row in rows_of(lines)
    ]


def test_youtube_ugc_real_rows_any_layout_and_suffix(tmp_path):
    lines = real_label_lines("youtube_ugc_metadata.csv", 4, header=True)
    rows = rows_of(lines)
    root = tmp_path / "ugc"
    write(root / "YOUTUBE_UGC_metadata.csv", "\n".join(lines) + "\n")
    bucket = [root / "original_videos" / r["category"] / f"{r['resolution']}P" / f"{r['vid']}.mkv" for r in rows]
    touch(bucket[0])  # as in the bucket
    touch(root / rows[1]["category"] / f"{rows[1]['resolution']}P" / f"{rows[1]['vid']}.mkv")  # no original_videos/
    touch(root / f"{rows[2]['vid']}.mp4")  # flat, transcoded
    touch(root / f"{rows[3]['vid']}.webm")
    touch(root / f"{rows[3]['vid']}.mp4")  # ambiguous: .mp4 wins
    report = make_manifest("youtube-ugc", root, out=root / "m.csv")
    written = manifest_rows(report.manifest)
    assert [r["video_id"] for r in written] == [r["vid"] for r in rows]
    assert [float(r["mos"]) for r in written] == [float(r["MOSFull"]) for r in rows]
    assert [r["path"] for r in written] == [
        bucket[0].relative_to(root).as_posix(),
        f"{rows[1]['category']}/{rows[1]['resolution']}P/{rows[1]['vid']}.mkv",
        f"{rows[2]['vid']}.mp4",
        f"{rows[3]['vid']}.mp4",
    ]
    assert report.problems == [
        f"YOUTUBE_UGC_metadata.csv line 5: {rows[3]['vid']!r} matches {rows[3]['vid']}.mp4, "
        f"{rows[3]['vid']}.webm in {root}; using {rows[3]['vid']}.mp4",
        f"1 media file(s) next to labelled ones are not in the label file ({rows[3]['vid']}.webm)",
    ]
    # Without checking, the bucket layout is written.
    unchecked = make_manifest("youtube-ugc", root, out=root / "unchecked.csv", check_files=False)
    assert manifest_rows(unchecked.manifest)[2]["path"] == bucket[2].relative_to(root).as_posix()


def test_lsvq_test_split_real_dover_labels(tmp_path):
    lines = real_label_lines("lsvq_test_labels.txt", 3, header=False)
    dotted = [
        line
        for line in (SHARED_LABELS / "lsvq_test_labels.txt").read_text().splitlines()
        if line.split(",")[0].count(".") > 1
    ][:1]
    root = tmp_path / "LSVQ"
    write(root / "labels_test.txt", "\n".join(lines + dotted) + "\n")
    for line in lines + dotted:
        touch(root / line.split(",")[0])
    report = make_manifest("lsvq", root, out=root / "test.csv", split="test")
    assert report.split == "test" and report.label_file.name == "labels_test.txt"
    written = manifest_rows(report.manifest)
    assert [r["path"] for r in written] == [line.split(",")[0] for line in lines + dotted]
    assert [r["video_id"] for r in written] == [line.split(",")[0][: -len(".mp4")] for line in lines + dotted]
    assert [float(r["mos"]) for r in written] == [float(line.rsplit(",", 1)[1]) for line in lines + dotted]


def test_lsvq_official_csv_keeps_dots_in_names(tmp_path):
    root = tmp_path / "LSVQ"
    write(
        root / "LSVQ_whole_train.csv",
        "name,p1,height,width,mos,is_valid\n"
        'ia-batch10/DootysSparksterIn1801.67,"[41, 143]",224,256,55.5,True\n'
        'yfcc-batch1/722,"[263, 1031]",1080,1920,78.77,False\n',
    )
    touch(root / "ia-batch10" / "DootysSparksterIn1801.67.mp4")
    touch(root / "yfcc-batch1" / "722.mp4")
    report = make_manifest("lsvq", root, out=root / "train.csv")  # train is the default split
    assert report.split == "train"
    assert written(report) == [
        ("ia-batch10/DootysSparksterIn1801.67", "ia-batch10/DootysSparksterIn1801.67.mp4", "55.5"),
        ("yfcc-batch1/722", "yfcc-batch1/722.mp4", "78.77"),
    ]


def test_cvd2014_semicolons_decimal_commas_blank_rows_and_groups(tmp_path):
    root = tmp_path / "CVD2014"
    (root / "CVD2014_ratings").mkdir(parents=True)
    (root / "CVD2014_ratings" / "Realignment_MOS.csv").write_bytes(
        "Test;File_name;Content;Realignment MOS;Note\n"
        "1;Test01_City_D01;City;67,29;caméra\n"
        ";;;;\n"
        "3;Test03_Talking_Head_D10;Talking_head;53,33;\n".encode("latin-1")
    )
    touch(root / "Test1" / "City" / "Test01_City_D01.avi")
    touch(root / "Test3" / "Talking_head" / "Test03_Talking_Head_D10.avi")
    report = make_manifest("cvd2014", root, out=root / "m.csv")
    assert manifest_rows(report.manifest) == [
        {
            "video_id": "Test01_City_D01",
            "path": "Test1/City/Test01_City_D01.avi",
            "mos": "67.29",
            "group": "Test1/City",
        },
        {
            "video_id": "Test03_Talking_Head_D10",
            "path": "Test3/Talking_head/Test03_Talking_Head_D10.avi",
            "mos": "53.33",
            "group": "Test3/Talking_head",
        },
    ]
    assert report.problems == ["Realignment_MOS.csv is not UTF-8; read as Latin-1"]


def test_live_qualcomm_mat_structs_and_converted_videos(tmp_path):
    root = tmp_path / "LIVE-Qualcomm"
    savemat_v5(
        root / "qualcommSubjectiveData.mat",
        {
            "qualcommSubjectiveData": {"unBiasedMOS": np.array([[52.57], [41.65]])},
            "qualcommVideoData": {
                "vidNames": cell(
                    ["0723_ManUnderTree_GS5_03_20150723_130016.yuv", "1024_TableTennis_HTCOneVx_VIDEO0138.yuv"]
                ),
                "distortionNames": cell(["Artifacts", "Focus"]),
                "distortionType": np.array([[1], [2]]),
            },
        },
    )
    touch(root / "Artifacts" / "0723_ManUnderTree_GS5_03_20150723_130016.yuv")
    touch(root / "Focus" / "1024_TableTennis_HTCOneVx_VIDEO0138.mp4")  # converted from .yuv
    report = make_manifest("live-qualcomm", root, out=root / "m.csv")
    assert written(report) == [
        (
            "Artifacts/0723_ManUnderTree_GS5_03_20150723_130016",
            "Artifacts/0723_ManUnderTree_GS5_03_20150723_130016.yuv",
            "52.57",
        ),
        ("Focus/1024_TableTennis_HTCOneVx_VIDEO0138", "Focus/1024_TableTennis_HTCOneVx_VIDEO0138.mp4", "41.65"),
    ]


def test_kvq_train_data_csv(tmp_path):
    root = tmp_path / "KVQ"
    write(root / "train_data.csv", "filename,score\ntrain/0001.mp4,3.2\ntrain/0002.mp4,2.75\n")
    touch(root / "train" / "0001.mp4")
    touch(root / "train" / "0002.mp4")
    report = make_manifest("kvq", root, out=root / "m.csv")
    assert written(report) == [("train/0001", "train/0001.mp4", "3.2"), ("train/0002", "train/0002.mp4", "2.75")]


def test_dover_labels_real_konvid_lines(tmp_path):
    lines = real_label_lines("konvid1k_labels_path_dur_fps_mos.txt", 3, header=False)
    root = tmp_path / "kv"
    write(root / "labels.txt", "\n".join(lines) + "\n\n")  # a trailing blank line is harmless
    for line in lines:
        touch(root / line.split(",")[0])
    report = make_manifest("dover-labels", root, out=root / "m.csv")
    written = manifest_rows(report.manifest)
    assert [r["video_id"] for r in written] == [f"KoNViD_1k_videos/{line.split(',')[0][17:-4]}" for line in lines]
    assert [float(r["mos"]) for r in written] == [float(line.split(",")[3]) for line in lines]


def test_vsfa_info_v73_names_groups_and_splits(tmp_path):
    root = tmp_path / "videos"
    names = ["Test1/City/Test01_City_D01.avi", "Vidéo_ünïcode.mp4", "表情😀.mp4"]
    permutations = np.array([[1, 2], [2, 1], [2, 1], [1, 2]])  # MATLAB [n_splits, n_refs]
    save_v73(
        root / "Demo-info.mat",
        names=names,
        numeric={
            "scores": np.array([[67.29, 24.86, 3.5]]),
            "ref_ids": np.array([[1, 1, 2]]),
            "index": permutations,
            "max_len": np.array([[240]]),
        },
    )
    for name in names:
        touch(root / name)
    report = make_manifest("vsfa-info", root, out=tmp_path / "vsfa.csv")
    assert written(report, "video_id", "mos", "group") == [
        ("Test1/City/Test01_City_D01", "67.29", "1"),
        ("Vidéo_ünïcode", "24.86", "1"),
        ("表情😀", "3.5", "2"),
    ]
    assert report.splits == tmp_path / "vsfa.splits.npy"
    splits = np.load(report.splits, allow_pickle=False)
    assert splits.dtype == np.int64 and np.array_equal(splits, permutations)
    assert read_mat(root / "Demo-info.mat")["video_names"] == names


def test_vsfa_info_rejects_an_index_that_is_not_a_permutation(tmp_path):
    save_v73(
        tmp_path / "Bad-info.mat",
        names=["a.mp4", "b.mp4"],
        numeric={"scores": np.array([[1.0, 2.0]]), "ref_ids": np.array([[1, 2]]), "index": np.array([[1, 2], [1, 1]])},
    )
    with pytest.raises(DatasetError, match="index rows 2 .*not permutations") as info:
        make_manifest("vsfa-info", tmp_path, out=tmp_path / "m.csv", check_files=False)
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.splits.npy").exists()
    assert len(info.value.problems) == 1


def test_folder_autodetects_columns_and_matches_stems(tmp_path):
    root = tmp_path / "mine"
    write(root / "scores.csv", "Video Name,Score,Source\nclip a,4.1,s1\nsub/b.mp4,2.0,\n")  # 'Video Name' = video_name
    touch(root / "clip a.mkv")  # the label gives the stem only
    touch(root / "sub" / "b.mp4")
    report = make_manifest("folder", root, out=root / "m.csv")
    assert written(report, "video_id", "path", "mos", "group") == [
        ("clip a", "clip a.mkv", "4.1", "s1"),
        ("sub/b", "sub/b.mp4", "2.0", ""),
    ]


def test_folder_needs_one_csv_and_known_columns(tmp_path):
    write(tmp_path / "a.csv", "x,y\n1,2\n")
    write(tmp_path / "b.csv", "x,y\n1,2\n")
    with pytest.raises(DatasetError, match="expected one scores CSV .*a.csv, b.csv"):
        make_manifest("folder", tmp_path, out=tmp_path / "m.csv")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) video .*mos .*found \['x', 'y'\]"):
        make_manifest("folder", tmp_path, out=tmp_path / "m.csv", label_file=tmp_path / "a.csv")


# --------------------------------------------------------------------------- image datasets


def test_tid2013_groups_by_reference_and_matches_case(tmp_path):
    root = tmp_path / "tid2013"
    write(root / "mos_with_names.txt", "5.51429 i01_01_1.bmp\r\n5.56757 i01_01_2.bmp\r\n4.94444 i25_24_5.bmp\r\n")
    touch(root / "distorted_images" / "i01_01_1.bmp")
    touch(root / "distorted_images" / "I01_01_2.BMP")  # case differs from the label
    touch(root / "distorted_images" / "i25_24_5.bmp")
    touch(root / "reference_images" / "I01.BMP")
    report = make_manifest("tid2013", root, out=root / "m.csv")
    assert written(report, "video_id", "path", "group") == [
        ("i01_01_1", "distorted_images/i01_01_1.bmp", "I01"),
        ("i01_01_2", "distorted_images/I01_01_2.BMP", "I01"),
        ("i25_24_5", "distorted_images/i25_24_5.bmp", "I25"),
    ]


def test_kadid10k_dmos_csv(tmp_path):
    root = tmp_path / "kadid10k"
    write(
        root / "dmos.csv",
        "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\nI02_01_01.png,I02.png,3.9,0.4\n",
    )
    for name in ("I01_01_01.png", "I02_01_01.png", "I01.png", "I02.png"):
        touch(root / "images" / name)
    report = make_manifest("kadid10k", root, out=root / "m.csv")
    assert written(report, "video_id", "path", "mos", "group") == [
        ("I01_01_01", "images/I01_01_01.png", "4.57", "I01"),
        ("I02_01_01", "images/I02_01_01.png", "3.9", "I02"),
    ]
    assert "2 media file(s)" in report.problems[0]  # the reference images have no label


def test_koniq10k_scores_csv(tmp_path):
    root = tmp_path / "koniq"
    write(
        root / "koniq10k_scores_and_distributions.csv",
        '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
        '"10004473376.jpg",0,0,25,73,7,105,3.828571429,0.527,77.38\n',
    )
    touch(root / "1024x768" / "10004473376.jpg")
    report = make_manifest("koniq10k", root, out=root / "m.csv")
    assert manifest_rows(report.manifest) == [
        {"video_id": "10004473376", "path": "1024x768/10004473376.jpg", "mos": "3.828571429", "group": ""}
    ]


def test_livec_skips_the_practice_images(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["100.bmp", "1000.JPG"]
    savemat_v5(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell(names)})
    savemat_v5(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.arange(1.0, 10.0)[None, :]})
    touch(root / "Images" / "100.bmp")
    touch(root / "Images" / "1000.JPG")
    report = make_manifest("livec", root, out=root / "m.csv")
    assert written(report) == [("100", "Images/100.bmp", "8.0"), ("1000", "Images/1000.JPG", "9.0")]


# --------------------------------------------------------------------------- problems and writing


def test_every_problem_is_reported_together_and_nothing_is_written(tmp_path):
    root = tmp_path / "konvid"
    write(root / "KoNViD_1k_mos.csv", "flickr_id,mos\n1,3.0\n1,3.5\n2,NaN\n3,abc\n4,\n,2.0\n5,4.0\n")
    for flickr_id in ("1", "2", "3", "4"):
        touch(root / "KoNViD_1k_videos" / f"{flickr_id}.mp4")
    with pytest.raises(DatasetError) as info:
        make_manifest("konvid1k", root, out=root / "m.csv")
    message = str(info.value)
    assert "6 problem(s)" in message and "nothing was written" in message
    assert "duplicate video id (1)" in message and "line 3: video id '1' already on KoNViD_1k_mos.csv line 2" in message
    assert "invalid MOS (3)" in message and "'abc' is not a number" in message and "is nan" in message
    assert "empty video id (1)" in message
    assert "missing file (1 of 7)" in message and "KoNViD_1k_videos/5.mp4 or 5.mp4" in message
    assert len(info.value.problems) == 6
    assert not (root / "m.csv").exists() and leftovers(root) == []


def test_long_problem_lists_are_shortened(tmp_path):
    write(tmp_path / "KoNViD_1k_mos.csv", "flickr_id,mos\n" + "".join(f"{i},3\n" for i in range(25)))
    with pytest.raises(DatasetError, match=r"missing file \(25 of 25\)[\s\S]*\.\.\. and 15 more") as info:
        make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv")
    assert len(info.value.problems) == 25


def test_empty_label_files_and_missing_columns(tmp_path):
    write(tmp_path / "KoNViD_1k_mos.csv", "")
    with pytest.raises(DatasetError, match="is empty"):
        make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv")
    write(tmp_path / "KoNViD_1k_mos.csv", "flickr_id,mos\n")
    with pytest.raises(DatasetError, match="has no entries"):
        make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv")
    write(tmp_path / "KoNViD_1k_mos.csv", "id,score\n1,2\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) video \(flickr_id\); mos \(mos\)"):
        make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetError, match="no label file .*KoNViD_1k_mos.csv"):
        make_manifest("konvid1k", tmp_path / "bare", out=tmp_path / "m.csv")
    savemat_v5(tmp_path / "data.mat", {"video_list": cell(["A001.mp4"])})
    with pytest.raises(DatasetError, match="lacks variable\\(s\\) mos"):
        make_manifest("livevqc", tmp_path, out=tmp_path / "m.csv")
    write(tmp_path / "broken.mat", "not a mat file")
    with pytest.raises(DatasetError, match="not a readable MATLAB"):
        read_mat(tmp_path / "broken.mat")
    with pytest.raises(DatasetError, match="is a folder"):
        make_manifest("livevqc", tmp_path, out=tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        make_manifest("livevqc", tmp_path / "absent", out=tmp_path / "m.csv")


def test_read_mat_takes_hdf5_without_matlab_header(tmp_path):
    import h5py

    with h5py.File(tmp_path / "plain.mat", "w") as fh:
        fh["scores"] = np.array([[1.5, 2.5]]).T  # MATLAB 1 x 2
    assert read_mat(tmp_path / "plain.mat")["scores"].tolist() == [[1.5, 2.5]]


def test_mismatched_mat_vectors_are_reported(tmp_path):
    savemat_v5(tmp_path / "data.mat", {"video_list": cell(["A001.mp4", "A002.mp4"]), "mos": np.array([[1.0]])})
    with pytest.raises(DatasetError, match="video_list has 2, mos has 1 entries"):
        make_manifest("livevqc", tmp_path, out=tmp_path / "m.csv", check_files=False)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    write(tmp_path / "KoNViD_1k_mos.csv", "flickr_id,mos\n1,3.0\n")
    out = write(tmp_path / "m.csv", "precious\n")
    with pytest.raises(ManifestExistsError, match="overwrite=True") as info:
        make_manifest("konvid1k", tmp_path, out=out, check_files=False)
    assert isinstance(info.value, FileExistsError) and out.read_text() == "precious\n"
    make_manifest("konvid1k", tmp_path, out=out, check_files=False, overwrite=True)
    assert manifest_rows(out)[0]["path"] == "KoNViD_1k_videos/1.mp4"
    assert leftovers(tmp_path) == []


def test_paths_are_data_and_absolute_outside_the_manifest_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    names = ["$(touch pwned).mp4", "x;rm -rf y.mp4", 'quote",comma.mp4']
    with open(write(root / "scores.csv", ""), "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("file", "mos")] + [(n, 3) for n in names])
    for name in names:
        touch(root / name)
    out = tmp_path / "elsewhere" / "manifest.csv"  # folder created; videos are not under it
    report = make_manifest("folder", root, out=out)
    assert [e.path for e in read_manifest(out)] == [root / n for n in names]
    assert all(os.path.isabs(r["path"]) for r in manifest_rows(out))
    assert report.n_videos == 3 and not (tmp_path / "pwned").exists() and not (root / "pwned").exists()


def test_label_paths_may_not_leave_the_dataset_folder(tmp_path):
    root = tmp_path / "root"
    write(root / "labels.txt", "../outside.mp4, -1, -1, 3.0\nin.mp4, -1, -1, 2.0\n")
    touch(tmp_path / "outside.mp4")
    touch(root / "in.mp4")
    with pytest.raises(DatasetError, match="path outside the dataset folder \\(1\\)"):
        make_manifest("dover-labels", root, out=root / "m.csv")


def test_check_files_false_writes_the_expected_layout(tmp_path):
    write(tmp_path / "KoNViD_1k_mos.csv", "flickr_id,mos\n42,3.25\n")
    report = make_manifest("konvid1k", tmp_path, out=tmp_path / "m.csv", check_files=False)
    assert manifest_rows(report.manifest) == [
        {"video_id": "42", "path": "KoNViD_1k_videos/42.mp4", "mos": "3.25", "group": ""}
    ]


def test_cli_dataset_make_and_list(tmp_path, capsys):
    from flows.cli import main

    assert main(["dataset", "list"]) == 0
    assert "konvid1k" in capsys.readouterr().out
    (tmp_path / "labels.txt").write_text("a.mp4, 8.0, 30.0, 3.5\nb.mp4, 8.0, 30.0, 2.5\n")
    assert (
        main(["dataset", "make", "dover-labels", str(tmp_path), "--out", str(tmp_path / "m.csv"), "--no-check-files"])
        == 0
    )
    assert "2 rows" in capsys.readouterr().out
    assert (
        main(["dataset", "make", "dover-labels", str(tmp_path), "--out", str(tmp_path / "m.csv"), "--no-check-files"])
        == 2
    )  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
