"""Manifest parsing and validation: every problem reported at once, paths relative to the manifest."""

import pytest

from vqa_core.errors import ManifestError
from vqa_core.manifest import read_manifest


def write(tmp_path, text, name="manifest.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_relative_and_absolute_paths_mos_and_group(tmp_path):
    path = write(tmp_path, f"video_id,path,mos,group\na,videos/a.mp4,3.5,g1\nb,{tmp_path}/b.mp4,,\n")
    a, b = read_manifest(path)
    assert a.path == tmp_path.resolve() / "videos" / "a.mp4" and a.mos == 3.5 and a.group == "g1"
    assert b.path == tmp_path / "b.mp4" and b.mos is None and b.group is None


def test_unicode_and_spaces_are_kept_as_data(tmp_path):
    path = write(tmp_path, 'video_id,path\nvidéo 1,"dir with space/vidéo 1.mp4"\nx;rm -rf /,$(touch pwned).mp4\n')
    entries = read_manifest(path)
    assert entries[0].video_id == "vidéo 1" and entries[0].path.name == "vidéo 1.mp4"
    assert entries[1].path.name == "$(touch pwned).mp4"


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(ManifestError, match="lacks column\\(s\\) path"):
        read_manifest(write(tmp_path, "video_id,file\na,a.mp4\n"))
    with pytest.raises(ManifestError, match="lacks column\\(s\\) mos"):
        read_manifest(write(tmp_path, "video_id,path\na,a.mp4\n"), require_mos=True)


def test_all_row_problems_are_reported_together(tmp_path):
    text = "video_id,path,mos\na,a.mp4,1\na,b.mp4,2\nc,c.mp4,bad\nd,d.mp4,nan\n,e.mp4,1\nf,,1\n"
    with pytest.raises(ManifestError) as info:
        read_manifest(write(tmp_path, text))
    message = str(info.value)
    assert "5 problem(s)" in message
    for fragment in (
        "row 3: duplicate video_id 'a' (first on row 2)",
        "row 4: mos 'bad'",
        "row 5: mos of 'd' is nan",
        "row 6: empty video_id",
        "row 7: empty path",
    ):
        assert fragment in message


def test_missing_file_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(write(tmp_path, "video_id,path\n"))
