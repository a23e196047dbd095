"""End to end on a tiny generated dataset: manifest -> Prefect extraction -> store -> SVR -> report.

Uses random weights (loudly labelled) and the embedded Prefect server; no network.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from feature_store import FeatureStore
from flows.cli import main as vqa
from flows.extract import extract_flow
from pipeline.extractors import create_extractor
from pipeline.runner import extract_video
from pipeline.sampling import parse_sampling
from pipeline.synthetic import make_demo_dataset

from .helpers import descendants, wait_gone

EXTRACTOR = "resnet50-vsfa"
SAMPLING = "uniform:3"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """5 photos x (reference + 3 blur levels) = 20 tiny clips, plus a broken file in a second manifest."""
    root = tmp_path_factory.mktemp("data")
    manifest = make_demo_dataset(
        root, n_sources=5, clip_seconds=0.5, fps=12, size=(64, 48), distortions=("blur",), progress=False
    )
    (root / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    with_broken = root / "with_broken.csv"
    with_broken.write_text(manifest.read_text() + "broken,videos/broken.mp4,3.0,brokensrc,blur,1\n")
    return manifest, with_broken


@pytest.mark.slow
def test_extract_fit_predict(dataset, tmp_path, prefect_harness, capsys):
    manifest, with_broken = dataset
    store_path = tmp_path / "store"
    summary = extract_flow(
        manifest=str(with_broken),
        store=str(store_path),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling=SAMPLING,
        device="cpu",
        progress=False,
    )
    assert (summary["done"], summary["skipped"], summary["failed"]) == (20, 0, 1)
    assert "broken.mp4" in summary["failures"]["broken"] and "VideoDecodeError" in summary["failures"]["broken"]
    store = FeatureStore(store_path)
    (set_id,) = store.feature_sets()
    assert len(store.video_ids(set_id)) == 20
    features = store.read_video(set_id, "astronaut__blur_2")
    assert features.shape == (3, 4096)
    prov = store.video_provenance(set_id, "astronaut__blur_2")
    assert prov["set"]["spec"]["weights"]["source"] == "random"
    assert prov["set"]["sampling"] == {"strategy": "uniform", "value": 3}
    assert prov["video"]["source"]["size_bytes"] > 0 and prov["video"]["code_version"]
    # the stored features are exactly what the extractor computes on those frames
    direct, _ = extract_video(
        manifest.parent / "videos" / "astronaut__blur_2.mp4",
        [create_extractor(EXTRACTOR, weights="random")],
        sampling=parse_sampling(SAMPLING),
    )
    np.testing.assert_allclose(features, direct[0], rtol=1e-6)
    runs = list((store_path / "_runs").glob("extract-*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["failed"] == 1

    # a second run skips everything finished and retries only the broken file
    again = extract_flow(
        manifest=str(with_broken),
        store=str(store_path),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling=SAMPLING,
        device="cpu",
        progress=False,
    )
    assert (again["done"], again["skipped"], again["failed"]) == (0, 20, 1)

    assert vqa(["store", "verify", str(store_path)]) == 0  # run records are not mistaken for features
    assert vqa(["store", "info", str(store_path)]) == 0
    info = capsys.readouterr().out
    assert set_id in info and "4096" in info and "random" in info

    out = tmp_path / "report"
    assert (
        vqa(
            [
                "fit",
                "--store",
                str(store_path),
                "--manifest",
                str(manifest),
                "--features",
                EXTRACTOR,
                "--out",
                str(out),
                "--repeats",
                "3",
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"srcc", "krcc", "plcc", "plcc_raw", "rmse"} <= set(metrics)
    assert len(metrics["per_split"]) == 15 and metrics["settings"]["grouped"] is True
    assert all(-1 <= metrics[k] <= 1 for k in ("srcc", "krcc", "plcc", "plcc_raw"))
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and all(np.isfinite(float(r["prediction"])) for r in rows)

    scores = tmp_path / "scores.csv"
    assert (
        vqa(
            [
                "predict",
                "--model",
                str(out / "model"),
                "--store",
                str(store_path),
                "--manifest",
                str(manifest),
                "--out",
                str(scores),
            ]
        )
        == 0
    )
    with open(scores) as fh:
        predicted = list(csv.DictReader(fh))
    assert [r["video_id"] for r in predicted] == [r["video_id"] for r in rows]


@pytest.mark.slow
def test_predict_refuses_features_made_differently(dataset, tmp_path, prefect_harness, capsys):
    manifest, _ = dataset
    a, b = tmp_path / "a", tmp_path / "b"
    for store, seed in ((a, "random:0"), (b, "random:1")):
        extract_flow(
            manifest=str(manifest),
            store=str(store),
            extractors=[EXTRACTOR],
            weights={EXTRACTOR: seed},
            sampling="uniform:1",
            device="cpu",
            progress=False,
        )
    assert (
        vqa(
            [
                "fit",
                "--store",
                str(a),
                "--manifest",
                str(manifest),
                "--features",
                EXTRACTOR,
                "--out",
                str(tmp_path / "r"),
                "--repeats",
                "1",
                "-q",
            ]
        )
        == 0
    )
    code = vqa(
        [
            "predict",
            "--model",
            str(tmp_path / "r" / "model"),
            "--store",
            str(b),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 2 and "does not hold" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_killed_extraction_resumes_without_redoing_finished_videos(dataset, tmp_path, prefect_harness):
    """SIGKILL a real `vqa extract` once some videos are stored, then re-run to completion."""
    manifest, _ = dataset
    store_path = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "extract",
        str(manifest),
        "--store",
        str(store_path),
        "--extractor",
        EXTRACTOR,
        "--weights",
        "random",
        "--sampling",
        "uniform:2",
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "-q",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done_before, children = time.time() + 240, [], {}
    try:
        while time.time() < deadline and proc.poll() is None:
            children.update({p.pid: (p, c) for p, c in descendants(proc.pid)})  # its Prefect server
            store = FeatureStore(store_path) if (store_path / "zarr.json").exists() else None
            sets = store.feature_sets() if store else []
            done_before = store.video_ids(sets[0]) if sets else []
            if len(done_before) >= 3:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 3 <= len(done_before) < 20, "the run should have been killed part-way"
    assert any("prefect server start" in c for _, c in children.values())
    assert not wait_gone(list(children.values()), timeout=15)  # the server died with it
    summary = extract_flow(
        manifest=str(manifest),
        store=str(store_path),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling="uniform:2",
        device="cpu",
        progress=False,
    )
    store = FeatureStore(store_path)
    (set_id,) = store.feature_sets()
    assert summary["failed"] == 0 and summary["skipped"] >= len(done_before)
    assert summary["done"] + summary["skipped"] == 20 and len(store.video_ids(set_id)) == 20
    for video_id in store.video_ids(set_id):
        assert np.isfinite(store.read_video(set_id, video_id)).all()


@pytest.mark.slow
def test_one_run_feeds_frame_and_clip_extractors_with_their_own_sampling(dataset, tmp_path, prefect_harness):
    manifest, _ = dataset
    two = tmp_path / "two.csv"
    lines = manifest.read_text().splitlines()
    two.write_text("\n".join(lines[:3]).replace("videos/", f"{manifest.parent}/videos/") + "\n")
    summary = extract_flow(
        manifest=str(two),
        store=str(tmp_path / "store"),
        extractors=[EXTRACTOR, "slowfast-fast"],
        weights={EXTRACTOR: "random", "slowfast-fast": "random"},
        sampling="uniform:2",
        device="cpu",
        progress=False,
    )
    assert (summary["done"], summary["failed"]) == (2, 0)
    store = FeatureStore(tmp_path / "store")
    frames_set, clips_set = store.resolve(EXTRACTOR), store.resolve("slowfast-fast")
    assert store.feature_set_info(clips_set)["sampling"] == {"strategy": "clips", "value": 32}
    video_id = store.video_ids(frames_set)[0]
    assert store.read_video(frames_set, video_id).shape == (2, 4096)
    assert store.read_video(clips_set, video_id).shape == (32, 512)  # a 0.5 s clip: one 32-frame clip


@pytest.mark.slow
def test_every_head_trains_predicts_and_is_reported_side_by_side(dataset, tmp_path, prefect_harness, capsys):
    manifest, _ = dataset
    store = tmp_path / "store"
    extract_flow(
        manifest=str(manifest),
        store=str(store),
        extractors=["unique", EXTRACTOR, "slowfast-tokens"],
        weights={"unique": "random", EXTRACTOR: "random", "slowfast-tokens": "random"},
        sampling="uniform:3",
        device="cpu",
        progress=False,
    )
    small = {"epochs": 2, "lr": 1e-3, "progress": False}
    runs = {
        "svr": (["unique"], {}),
        "vsfa": ([EXTRACTOR], small),
        "a2inet": (["unique", EXTRACTOR], {**small, "module_params": {"d_model": 16}}),
        "dualpath": (["slowfast-tokens"], {**small, "module_params": {"embed_dim": 16, "heads": 2}}),
    }
    for head, (features, params) in runs.items():
        args = [
            "fit",
            "--store",
            str(store),
            "--manifest",
            str(manifest),
            "--head",
            head,
            "--protocol",
            "a2inet",
            "--repeats",
            "2",
            "--out",
            str(tmp_path / head),
            "-q",
        ]
        args += [f"--features={f}" for f in features]
        args += [f"--head-param={k}={json.dumps(v)}" for k, v in params.items()]
        assert vqa(args) == 0, head
        metrics = json.loads((tmp_path / head / "metrics.json").read_text())
        assert metrics["settings"]["head"] == head and len(metrics["per_split"]) == 2
        assert all(np.isfinite(metrics[k]) for k in ("srcc", "plcc", "rmse"))
        scores = tmp_path / f"{head}.csv"
        assert (
            vqa(
                [
                    "predict",
                    "--model",
                    str(tmp_path / head / "model"),
                    "--store",
                    str(store),
                    "--manifest",
                    str(manifest),
                    "--out",
                    str(scores),
                ]
            )
            == 0
        )
        with open(scores) as fh:
            assert all(np.isfinite(float(r["prediction"])) for r in csv.DictReader(fh))
    capsys.readouterr()
    assert vqa(["report", *(str(tmp_path / h) for h in runs), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(f"| {h} | {h} |" in table for h in runs) and "unique+resnet50-vsfa" in table


@pytest.mark.slow
def test_cross_dataset_protocol_trains_on_one_manifest_and_tests_on_another(dataset, tmp_path, prefect_harness):
    manifest, _ = dataset
    rows = manifest.read_text().splitlines()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    absolute = lambda lines: [row.replace("videos/", f"{manifest.parent}/videos/") for row in lines]  # noqa: E731
    a.write_text("\n".join([rows[0]] + absolute(rows[1:13])) + "\n")
    b.write_text("\n".join([rows[0]] + absolute(rows[13:])) + "\n")
    store = tmp_path / "store"
    for m in (a, b):
        extract_flow(
            manifest=str(m),
            store=str(store),
            extractors=[EXTRACTOR],
            weights={EXTRACTOR: "random"},
            sampling="uniform:1",
            device="cpu",
            progress=False,
        )
    assert (
        vqa(
            [
                "fit",
                "--store",
                str(store),
                "--manifest",
                str(a),
                "--test-manifest",
                str(b),
                "--features",
                EXTRACTOR,
                "--out",
                str(tmp_path / "cross"),
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "cross" / "metrics.json").read_text())
    assert metrics["settings"]["protocol"] == "cross-dataset" and len(metrics["per_split"]) == 1
    with open(tmp_path / "cross" / "predictions.csv") as fh:
        tested = [r for r in csv.DictReader(fh) if r["prediction"] not in ("", "nan")]
    assert len(tested) == 20 - 12  # only the test manifest's videos are scored
