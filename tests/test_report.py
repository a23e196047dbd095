"""Tests for regressors.report: files exist, parse, and the plot is a real PNG."""

import csv
import json
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from regressors.errors import InvalidInputError
from regressors.protocols import EvaluationResult
from regressors.report import format_metrics_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse")


def _result(n=40, seed=0):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    pred = mos + rng.normal(0, 0.4, n)
    pred[3] = np.nan  # never tested
    n_tested = np.full(n, 2)
    n_tested[3] = 0
    per_split = [
        {
            "srcc": 0.8 + i / 100,
            "krcc": 0.6,
            "plcc": 0.82,
            "plcc_raw": 0.81,
            "rmse": 0.4 - i / 100,
            "split": i,
            "n_train": 32,
            "n_test": 8,
        }
        for i in range(3)
    ]
    median = {k: float(np.median([m[k] for m in per_split])) for k in METRICS}
    return EvaluationResult(per_split=per_split, median=median, predictions=pred, n_tested=n_tested), mos


def test_write_report_files_exist_and_parse(tmp_path):
    result, mos = _result()
    ids = [f"vid_{i:03d}" for i in range(40)]
    settings = {
        "head": "svr",
        "C": np.float64(1.0),
        "features": Path("/data/f.zarr"),
        "seed": np.int64(0),
        "missing": float("nan"),
        "ids": (1, 2),
        3: object,
    }
    backend = matplotlib.get_backend()
    paths = write_report(tmp_path / "out", result, video_ids=ids, mos=mos, settings=settings)
    assert set(paths) == {"metrics", "predictions", "scatter"}
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths.values())
    assert matplotlib.get_backend() == backend  # no global backend switch

    doc = json.loads(paths["metrics"].read_text())
    for key in METRICS:
        assert doc[key] == pytest.approx(result.median[key])
    assert doc["srcc"] == pytest.approx(0.81)
    assert doc["n_splits"] == 3 and len(doc["per_split"]) == 3
    assert doc["settings"] == {
        "head": "svr",
        "C": 1.0,
        "features": "/data/f.zarr",
        "seed": 0,
        "missing": None,
        "ids": [1, 2],
        "3": "<class 'object'>",
    }

    with paths["predictions"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["video_id", "mos", "prediction", "n_tested"]
    assert len(rows) == 40 and rows[5]["video_id"] == "vid_005"
    assert float(rows[5]["mos"]) == mos[5]  # full precision
    assert float(rows[5]["prediction"]) == result.predictions[5]
    assert rows[3]["prediction"] == "" and rows[3]["n_tested"] == "0"

    data = paths["scatter"].read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(paths["scatter"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_write_report_overwrites_and_handles_tiny_results(tmp_path):
    result, mos = _result(n=6)
    ids = list(range(6))
    write_report(tmp_path, result, video_ids=ids, mos=mos, settings={})
    # Fewer than 3 tested videos: no logistic curve, but still a plot.
    result.predictions[:] = np.nan
    result.predictions[:2] = [1.0, 2.0]
    paths = write_report(tmp_path, result, video_ids=ids, mos=mos, settings={})
    assert paths["scatter"].read_bytes().startswith(PNG_SIGNATURE)


def test_write_report_length_mismatch(tmp_path):
    result, mos = _result()
    with pytest.raises(InvalidInputError, match="lengths disagree"):
        write_report(tmp_path, result, video_ids=["a"], mos=mos, settings={})


def test_format_metrics_table():
    table = format_metrics_table(
        {
            "rmse": 0.41234,
            "srcc": 0.8123456,
            "krcc": 0.6,
            "plcc": 0.82,
            "plcc_raw": 0.8,
            "n_splits": 100,
            "per_split": [{}],
            "settings": {"a": 1},
            "head": "svr",
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert [line.split("  ")[0].strip() for line in lines[2:]] == [
        "SRCC",
        "KRCC",
        "PLCC",
        "PLCC (raw)",
        "RMSE",
        "n_splits",
        "head",
    ]
    assert "0.8123" in lines[2] and lines[-2].endswith("100") and lines[-1].endswith("svr")
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "per_split" not in table and "settings" not in table


def test_no_heavy_imports_at_module_level():
    # matplotlib (report) and torch (temporal_pooling) are imported inside functions only,
    # so importing the library neither picks a backend nor pays for torch. A static check
    # on the source: a subprocess import test would cost seconds.
    import ast

    import regressors.report
    import regressors.temporal_pooling

    for module in (regressors.report, regressors.temporal_pooling):
        tree = ast.parse(Path(module.__file__).read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module.split(".")[0])
        assert not top & {"matplotlib", "torch"}, module.__name__


def test_compare_runs_puts_runs_side_by_side(tmp_path):
    from regressors.errors import RegressorError
    from regressors.report import compare_runs, write_comparison

    for name, head, srcc in (("svr-run", "svr", 0.81), ("gru-run", "vsfa", 0.77)):
        run = tmp_path / name
        run.mkdir()
        settings = {
            "head": head,
            "protocol": "fmc",
            "n_videos": 20,
            "feature_sets": [{"id": "x", "spec": {"name": "resnet50"}}],
        }
        (run / "metrics.json").write_text(
            json.dumps({"srcc": srcc, "krcc": 0.6, "plcc": 0.8, "plcc_raw": 0.7, "rmse": 0.4, "settings": settings})
        )
    rows = compare_runs([tmp_path / "svr-run", tmp_path / "gru-run"])
    assert [(r["run"], r["head"], r["features"], r["srcc"]) for r in rows] == [
        ("svr-run", "svr", "resnet50", 0.81),
        ("gru-run", "vsfa", "resnet50", 0.77),
    ]
    paths = write_comparison(tmp_path / "cmp", rows)
    md = paths["markdown"].read_text()
    assert "| svr-run | svr | resnet50 | fmc | 20 | 0.8100 |" in md and "![gru-run](../gru-run/scatter.png)" in md
    header = "run,head,features,protocol,n_videos,srcc,krcc,plcc,plcc_raw,rmse"
    assert paths["csv"].read_text().splitlines()[0] == header
    with pytest.raises(RegressorError, match="not a run report"):
        compare_runs([tmp_path])


def test_scatter_title_reports_exactly_the_plotted_points(tmp_path, monkeypatch):
    import regressors.report as report
    from regressors.metrics import evaluate_predictions

    result, mos = _result()
    drawn = {}
    monkeypatch.setattr(
        report,
        "_scatter",
        lambda path, pred, m, title, footnote, pooled: drawn.update(pred=pred, mos=m, title=title, footnote=footnote),
    )
    paths = write_report(tmp_path, result, video_ids=list(range(40)), mos=mos, settings={})
    on_points = evaluate_predictions(drawn["mos"], drawn["pred"])
    assert len(drawn["pred"]) == 39  # the never-tested video is not drawn
    for key, label in (("srcc", "SRCC"), ("plcc", "PLCC"), ("plcc_raw", "PLCC (raw)"), ("rmse", "RMSE")):
        assert f"{label} {on_points[key]:.4f}" in drawn["title"]
    assert f"SRCC {result.median['srcc']:.4f}" not in drawn["title"]  # the split median is not the points'
    assert "median over 3 splits" in drawn["footnote"] and f"SRCC {result.median['srcc']:.4f}" in drawn["footnote"]
    doc = json.loads(paths["metrics"].read_text())
    assert doc["pooled"]["srcc"] == pytest.approx(on_points["srcc"]) and doc["pooled"]["n_videos"] == 39
    assert doc["n_distinct_splits"] == 3 and doc["notes"] == [] and doc["n_degenerate_logistic"] == 0


def test_format_metrics_table_lists_notes_after_the_table():
    table = format_metrics_table(
        {
            "srcc": 0.5,
            "krcc": 0.4,
            "plcc": 0.6,
            "plcc_raw": 0.1,
            "rmse": 0.3,
            "n_distinct_splits": 5,
            "notes": ["fmc: only 5 distinct splits"],
        }
    )
    assert table.splitlines()[-1] == "note: fmc: only 5 distinct splits"
    assert "n_distinct_splits" in table


def test_vqa_report_lists_the_settings_that_differ(tmp_path):
    from regressors.report import compare_runs, format_settings_diff, settings_diff, write_comparison

    for name, lr, code in (("a", 1e-4, "abc"), ("b", 1e-3, "abc"), ("c", 1e-4, "def")):
        run = tmp_path / name
        run.mkdir()
        settings = {
            "head": "vsfa",
            "head_params": {"lr": lr, "epochs": 40},
            "protocol": "vsfa",
            "n_videos": 85,
            "feature_sets": [{"id": "r50--fps-4--1", "spec": {"name": "resnet50"}}],
            "code_version": {"git_commit": code},
        }
        (run / "metrics.json").write_text(
            json.dumps({"srcc": 0.5, "krcc": 0.4, "plcc": 0.6, "plcc_raw": 0.5, "rmse": 0.4, "settings": settings})
        )
    rows = compare_runs([tmp_path / n for n in "abc"])
    diff = dict(settings_diff(rows))
    assert diff == {"code_version.git_commit": ["abc", "abc", "def"], "head_params.lr": ["0.0001", "0.001", "0.0001"]}
    text = format_settings_diff(rows)
    assert "| setting | a | b | c |" in text and "| head_params.lr | 0.0001 | 0.001 | 0.0001 |" in text
    assert "Settings that differ" in write_comparison(tmp_path / "cmp", rows)["markdown"].read_text()
    same = compare_runs([tmp_path / "a", tmp_path / "a"])
    assert format_settings_diff(same) == "Settings: every recorded setting is the same in these runs."
