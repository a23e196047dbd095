"""Hardening, manifests: malformed rows, names as data, paths escaping the dataset root, fuzzing.

Extends tests/test_manifest.py (basic duplicate ids, missing columns, bad/NaN MOS, unicode) with
the edge cases around them. The case table is in docs/hardening.md.
"""

from __future__ import annotations

import csv
import os
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqa_core.errors import ManifestError
from vqa_core.manifest import read_manifest

# Fuzzing: no example database in the repository; a fixed budget keeps the suite quick.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def write(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, **kw) -> str:
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, **kw)
    return str(caught.value)


# ---- duplicate ids, columns, rows ------------------------------------------------------------


def test_ids_equal_after_trimming_spaces_are_duplicates(tmp_path):
    message = problems(write(tmp_path, "video_id,path\na,a.mp4\n  a ,b.mp4\n"))
    assert "row 3: duplicate video_id 'a' (first on row 2)" in message


def test_ids_differing_in_case_or_unicode_normalisation_are_distinct(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    entries = read_manifest(write(tmp_path, f"video_id,path\nA,a.mp4\na,b.mp4\n{nfc},c.mp4\n{nfd},d.mp4\n"))
    assert [e.video_id for e in entries] == ["A", "a", nfc, nfd]


def test_header_with_bom_and_padded_column_names_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff video_id , path ,mos\r\nx, x.mp4 , 2.5 \r\n".encode("utf-8"))
    (entry,) = read_manifest(path)
    assert entry.video_id == "x" and entry.path.name == "x.mp4" and entry.mos == 2.5


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "lacks column(s) video_id, path; found no header"),
        ("\n\n", "lacks column(s) video_id, path"),
        ("id;path\na;a.mp4\n", "lacks column(s) video_id, path; found ['id;path']"),  # wrong delimiter
        ("video_id,path,path\na,a.mp4,b.mp4\n", "repeated column(s) path"),
    ],
)
def test_header_problems(tmp_path, text, fragment):
    assert fragment in problems(write(tmp_path, text))


def test_surplus_fields_are_reported_but_a_trailing_empty_field_is_not(tmp_path):
    text = "video_id,path\na,a.mp4,\nb,b,c.mp4\nc,c.mp4\n"  # row 3: an unquoted comma in a name
    message = problems(write(tmp_path, text))
    assert "1 problem(s)" in message and "row 3: 3 fields, the header has 2" in message


@pytest.mark.parametrize(
    "mos, fragment",
    [
        ("inf", "mos of 'a' is inf"),
        ("-Infinity", "mos of 'a' is -Infinity"),
        ("1e400", "mos of 'a' is 1e400"),  # overflows to inf
        ('"3,5"', "mos '3,5' of 'a' is not a number"),  # decimal comma
        ("4.2 (sd 0.3)", "is not a number"),
        ("NaN", "mos of 'a' is NaN"),
    ],
)
def test_non_numeric_and_non_finite_mos(tmp_path, mos, fragment):
    assert fragment in problems(write(tmp_path, f"video_id,path,mos\na,a.mp4,{mos}\n"))


def test_blank_mos_is_missing_only_when_mos_is_required(tmp_path):
    path = write(tmp_path, "video_id,path,mos\na,a.mp4,   \n")
    assert read_manifest(path)[0].mos is None
    assert "row 2: missing mos for 'a'" in problems(path, require_mos=True)


def test_nul_character_in_a_path_is_a_problem(tmp_path):
    assert "row 2: path of 'a' contains a NUL character" in problems(write(tmp_path, "video_id,path\na,a\x00.mp4\n"))


def test_every_problem_is_counted_and_the_list_is_capped(tmp_path):
    rows = "".join(f"v{i},,\n" for i in range(25))
    message = problems(write(tmp_path, "video_id,path,mos\n" + rows))
    assert "25 problem(s)" in message and "... and 15 more" in message


# ---- names are data -------------------------------------------------------------------------

NAMES = [
    "clip 01 (final).mp4",
    "视频.mp4",
    "🎬 test.mp4",
    "שלום.mp4",
    'it\'s "quoted", too.mp4',
    "--help.mp4",
    "semi;colon&amp.mp4",
]


def test_unicode_quotes_commas_and_option_like_names_reach_the_right_files(tmp_path):
    (tmp_path / "videos").mkdir()
    for name in NAMES:
        (tmp_path / "videos" / name).write_bytes(b"x")
    manifest = tmp_path / "清单 v1.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path"])
        writer.writerows([Path(name).stem, f"videos/{name}"] for name in NAMES)
    entries = read_manifest(manifest)
    assert [e.video_id for e in entries] == [Path(n).stem for n in NAMES]
    assert all(e.path.is_file() for e in entries)
    assert [e.path.name for e in entries] == NAMES


# ---- paths escaping the dataset root ----------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    """<tmp>/data (the root) with the manifest and videos/ inside, and <tmp>/elsewhere outside."""
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for path in (root / "videos" / "a.mp4", root / "b.mp4", tmp_path / "elsewhere" / "secret.mp4"):
        path.write_bytes(b"x")
    return root


def test_paths_inside_the_root_are_accepted(dataset):
    manifest = write(
        dataset, f"video_id,path\na,videos/a.mp4\nb,{dataset}/b.mp4\nc,videos/../b.mp4\nd,./videos/new.mp4\n"
    )
    entries = read_manifest(manifest, root=dataset)
    assert [e.video_id for e in entries] == ["a", "b", "c", "d"]
    assert entries[0].path == dataset.resolve() / "videos" / "a.mp4"


def test_paths_escaping_the_root_are_listed_together(dataset):
    outside = dataset.parent / "elsewhere" / "secret.mp4"
    (dataset / "videos" / "link.mp4").symlink_to(outside)
    (dataset / "linkdir").symlink_to(dataset.parent / "elsewhere")
    text = (
        "video_id,path\nok,videos/a.mp4\n"
        "dotdot,../elsewhere/secret.mp4\n"
        f"absolute,{outside}\n"
        "deep,videos/../../elsewhere/secret.mp4\n"
        "link,videos/link.mp4\n"
        "linkdir,linkdir/secret.mp4\n"
        "etc,/etc/passwd\n"
    )
    message = problems(write(dataset, text), root=dataset)
    assert "6 problem(s)" in message
    for number, video_id in enumerate(["dotdot", "absolute", "deep", "link", "linkdir"], start=3):
        assert f"row {number}:" in message
        assert (
            f"of {video_id!r} resolves to {outside.resolve()}, outside the dataset root {dataset.resolve()}" in message
        )
    assert "of 'etc' resolves to /etc/passwd" in message
    # without a root the same manifest is accepted (paths are data; nothing is read here)
    assert len(read_manifest(dataset / "manifest.csv")) == 7


def test_root_given_through_a_symlink_and_a_manifest_outside_the_root(dataset, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(dataset)
    manifest = write(tmp_path, f"video_id,path\na,{alias}/videos/a.mp4\nb,data/b.mp4\nc,elsewhere/secret.mp4\n")
    message = problems(manifest, root=alias)
    assert "1 problem(s)" in message and "of 'c' resolves to" in message


def test_root_must_be_a_directory(dataset):
    manifest = write(dataset, "video_id,path\na,videos/a.mp4\n")
    with pytest.raises(ManifestError, match="dataset root .* is not a directory"):
        read_manifest(manifest, root=dataset / "missing")
    with pytest.raises(ManifestError, match="is not a directory"):
        read_manifest(manifest, root=dataset / "b.mp4")


# ---- nothing is written before the manifest validates ---------------------------------------


def test_bad_manifest_leaves_no_store_behind(tmp_path, prefect_harness, capsys):
    from flows.cli import main as vqa

    manifest = write(tmp_path, "video_id,path,mos\na,a.mp4,1\na,b.mp4,2\nc,c.mp4,x\n")
    store = tmp_path / "store"
    code = vqa(
        [
            "extract",
            str(manifest),
            "--store",
            str(store),
            "--extractor",
            "resnet50-vsfa",
            "--weights",
            "random",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "duplicate video_id 'a'" in err and "2 problem(s)" in err
    assert not store.exists()


# ---- fuzzing ----------------------------------------------------------------------------------

_CSV_TOKENS = st.sampled_from(
    [
        "video_id",
        "path",
        "mos",
        "group",
        ",",
        ",",
        ",",
        "\n",
        "\r\n",
        "\r",
        '"',
        '""',
        " ",
        "\t",
        ";",
        "a",
        "b.mp4",
        "../x.mp4",
        "/abs/y.mp4",
        "1",
        "2.5",
        "nan",
        "inf",
        "-1e999",
        "é",
        "🎬",
        "\x00",
        "\ufeff",
        "\\",
        "'",
        "=cmd()",
        "video_id,path\n",
        "video_id,path,mos\n",
        "\u2028",
        "\x85",
    ]
)
CSV_TEXT = st.lists(_CSV_TOKENS, max_size=40).map("".join) | st.text(max_size=200)


def _check_entries(entries):
    ids = [e.video_id for e in entries]
    assert len(ids) == len(set(ids)) and all(ids)
    for e in entries:
        assert e.path.is_absolute() and "\x00" not in str(e.path)
        assert e.mos is None or (isinstance(e.mos, float) and e.mos == e.mos and abs(e.mos) != float("inf"))


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        root.mkdir()
        yield root


@pytest.mark.slow
@FUZZ
@given(
    data=st.binary(max_size=300) | CSV_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    with_root=st.booleans(),
    require_mos=st.booleans(),
)
def test_fuzz_manifest_bytes_raise_only_manifest_error(fuzz_dir, data, with_root, require_mos):
    path = fuzz_dir / "m.csv"
    path.write_bytes(data)
    try:
        entries = read_manifest(path, require_mos=require_mos, root=fuzz_dir if with_root else None)
    except ManifestError:
        return
    _check_entries(entries)
    if with_root:
        assert all(Path(os.path.realpath(e.path)).is_relative_to(fuzz_dir.resolve()) for e in entries)


def test_vqa_extract_rejects_paths_outside_root_before_starting_anything(tmp_path, capsys):
    from flows.cli import main

    manifest = tmp_path / "data" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("video_id,path\na,../outside.mp4\n")
    code = main(
        [
            "extract",
            str(manifest),
            "--store",
            str(tmp_path / "store"),
            "--extractor",
            "resnet50-vsfa",
            "--weights",
            "random",
            "--root",
            str(manifest.parent),
        ]
    )
    assert code == 2 and "outside" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
