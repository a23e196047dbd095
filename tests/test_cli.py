"""`vqa` as a user meets it: checks before Prefect, one-line errors with exit status 2, one line
per failed video (exit status 1), quiet library logs, no process left behind.

Most tests run the real program (``python -m flows.cli``) in a subprocess: start-up time,
stderr and child processes are what they check. Runs that need a flow use the session's
Prefect server through ``PREFECT_API_URL`` (what a data engineer's long-lived server does), so
that only the SIGKILL test pays for a server of its own.

"Fast" is checked as what it consists of: no Prefect or Dask import (``-X importtime``) and
nothing written. The times themselves are measured in ``bench/cli_startup.py``, not asserted
here (a shared 2-core machine under load is several times slower than an idle one).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature_store import FeatureStore, encode_node_name
from flows.cli import EPILOG
from flows.cli import main as vqa
from flows.cli_flows import print_summary
from tests.helpers import descendants, make_video, wait_gone

REPO = Path(__file__).resolve().parents[1]
EXTRACTOR = "resnet50-vsfa"
LIBRARIES = ("prefect", "distributed")


def run_vqa(*args: str, env: dict | None = None, timeout: float = 300, importtime: bool = False):
    """``python -m flows.cli ARGS``: (completed process, wall seconds, stderr lines without the
    ``-X importtime`` report, top-level modules imported)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "flows.cli", *args]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    seconds = time.perf_counter() - started
    lines = done.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    return done, seconds, [line for line in lines if not line.startswith("import time:")], imported


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two tiny good videos and their manifest."""
    root = tmp_path_factory.mktemp("cli_videos")
    rows = [f"v{i},{make_video(root / f'v{i}.mp4', 4, width=64, height=48)}" for i in range(2)]
    manifest = root / "manifest.csv"
    manifest.write_text("video_id,path\n" + "\n".join(rows) + "\n")
    return manifest


@pytest.fixture
def api_url(prefect_harness):
    """The session's Prefect server, for subprocesses (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _extract_args(manifest: Path, store: Path, *more: str) -> list[str]:
    return [
        "extract",
        str(manifest),
        "--store",
        str(store),
        "--extractor",
        EXTRACTOR,
        "--weights",
        "random",
        "--sampling",
        "uniform:1",
        "--device",
        "cpu",
        "-q",
        *more,
    ]


# ---- user errors: one line, exit 2, before Prefect ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["unknown extractor", "bad sampling", "store is a file", "missing weights", "missing files"]
)
def test_user_errors_answer_in_one_line_before_prefect(case, videos, tmp_path):
    store = tmp_path / "store"
    args = ["extract", str(videos), "--store", str(store), "--extractor", "resnet50", "--device", "cpu"]
    expected = {
        "unknown extractor": "--extractor resnet5: unknown extractor 'resnet5'. Did you mean resnet50",
        "bad sampling": "bad sampling 'uniform:0'",
        "store is a file": "is a file, not a folder",
        "missing weights": "resnet50-0676ba61.pth",  # where to put the file, and how to get it
        "missing files": "2 of 4 video files cannot be read (missing 2): gone1",
    }[case]
    if case == "unknown extractor":
        args[args.index("resnet50")] = "resnet5"
    elif case == "bad sampling":
        args += ["--sampling", "uniform:0"]
    elif case == "store is a file":
        store.write_text("not a store")
    elif case == "missing weights":
        args += ["--weights", "imagenet"]  # VQA_OFFLINE and an empty TORCH_HOME (conftest)
    else:
        manifest = tmp_path / "m.csv"
        manifest.write_text(videos.read_text() + "gone1,/nonexistent/a.mp4\ngone2,/nonexistent/b.mp4\n")
        args[1] = str(manifest)
        args[args.index("resnet50")] = EXTRACTOR
        args += ["--weights", "random"]
    done, _, err, imported = run_vqa(*args, importtime=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    messages = [line for line in err if not line.startswith("WARNING pipeline.weights: RANDOM")]
    assert len(messages) == 1 and messages[0].startswith("vqa extract: error: "), err
    assert expected in messages[0] and "Traceback" not in done.stderr
    # answered before Prefect or Dask is imported; how fast that is, bench/cli_startup.py measures
    assert not imported & set(LIBRARIES), imported & set(LIBRARIES)
    assert not store.is_dir()  # nothing written


def test_verbose_adds_the_traceback(tmp_path, capsys):
    assert vqa(["store", "info", str(tmp_path / "nothing"), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("vqa store info: error: no feature store")


def test_exit_statuses_are_documented(capsys):
    with pytest.raises(SystemExit) as exit_info:
        vqa(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "exit status:" in out and EPILOG.splitlines()[1].strip() in out
    for code in ("0 ", "1 ", "2 ", "130", "141"):
        assert f"\n  {code}" in out


def test_predict_refuses_to_overwrite_its_manifest(videos, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(videos.read_text())
    code = vqa(
        [
            "predict",
            "--model",
            str(tmp_path / "model"),
            "--store",
            str(tmp_path / "store"),
            "--manifest",
            str(manifest),
            "--out",
            str(manifest),
        ]
    )
    assert code == 2 and "is the input manifest" in capsys.readouterr().err
    assert manifest.read_text() == videos.read_text()


def test_dataset_make_can_keep_only_the_videos_present(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("a.mp4, 8.0, 30.0, 3.5\nb.mp4, 8.0, 30.0, 2.5\n")
    (tmp_path / "a.mp4").write_bytes(b"x")
    out = tmp_path / "m.csv"
    assert vqa(["dataset", "make", "dover-labels", str(tmp_path), "--out", str(out)]) == 2
    assert "--skip-missing" in capsys.readouterr().err and not out.exists()
    assert vqa(["dataset", "make", "dover-labels", str(tmp_path), "--out", str(out), "--skip-missing"]) == 0
    assert "1 rows" in capsys.readouterr().out
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == ["a"]


def test_a_closed_output_pipe_is_quiet(tmp_path):
    store = FeatureStore(tmp_path / "store")
    set_id = store.ensure_feature_set(spec={"name": "toy", "dims": 3}, sampling={"strategy": "all"})
    import numpy as np

    store.write_video(set_id, "a", np.zeros((2, 3), np.float32), provenance={"set": {}, "video": {}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "store", "info", str(tmp_path / "store")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    proc.stdout.close()  # `| head` that has read enough
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b""


def test_the_summary_names_every_extractors_steps(capsys):
    summary = {
        "done": 2,
        "skipped": 0,
        "failed": 1,
        "frames": 4,
        "steps": {EXTRACTOR: 4, "slowfast-fast": 64},
        "failures": {"x": "VideoDecodeError: x.mp4: not a video"},
        "tracebacks": {"x": "Traceback ..."},
        "seconds": 2.0,
        "frames_per_second": 2.0,
    }
    assert print_summary(summary) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "done 2  skipped 0  failed 1  (4 steps of resnet50-vsfa, 64 of slowfast-fast in 2.0 s, 2.0 steps/s)",
        "  failed x: VideoDecodeError: x.mp4: not a video",
    ]
    assert "Traceback" not in err
    print_summary(summary, verbose=True)
    assert "Traceback ..." in capsys.readouterr().err


# ---- a re-run with nothing to do never starts Prefect ---------------------------------------


@pytest.mark.slow
def test_nothing_to_do_is_answered_without_prefect_and_damaged_videos_can_be_redone(videos, tmp_path, api_url):
    store = tmp_path / "store"
    done, _, err, _ = run_vqa(*_extract_args(videos, store), env={"PREFECT_API_URL": api_url})
    assert done.returncode == 0 and "done 2  skipped 0  failed 0" in done.stdout, done.stderr[-2000:]

    done, _, err, imported = run_vqa(*_extract_args(videos, store), importtime=True)
    assert done.returncode == 0 and done.stdout.startswith("done 0  skipped 2  failed 0  (nothing to do"), done
    assert not imported & set(LIBRARIES), imported & set(LIBRARIES)  # timing: bench/cli_startup.py
    records = sorted((store / "_runs").glob("extract-*.json"))
    assert len(records) == 2 and json.loads(records[-1].read_text())["skipped"] == 2

    # a damaged stored video is skipped like any stored one, unless --redo-damaged
    fs = FeatureStore(store, create=False)
    (set_id,) = fs.feature_sets()
    for chunk in Path(fs.path, encode_node_name(set_id), "v1", "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    done, _, _, _ = run_vqa(*_extract_args(videos, store))
    assert "done 0  skipped 2" in done.stdout
    done, _, err, _ = run_vqa(*_extract_args(videos, store, "--redo-damaged"), env={"PREFECT_API_URL": api_url})
    assert done.returncode == 0 and "done 1  skipped 1  failed 0" in done.stdout, done.stderr[-2000:]
    assert "re-extracting 1 damaged video(s): v1" in done.stderr
    from feature_store import verify

    assert verify(FeatureStore(store, create=False)).ok


# ---- failures: one line per video, tracebacks in the run record ------------------------------


@pytest.mark.slow
def test_each_failed_video_is_one_line_and_its_traceback_goes_to_the_run_record(videos, tmp_path, api_url):
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = []
    for i in range(32):
        (bad / f"b{i:02d}.mp4").write_text(f"not a video {i}")
        rows.append(f"b{i:02d},{bad / f'b{i:02d}.mp4'}")
    manifest = tmp_path / "m.csv"
    manifest.write_text(videos.read_text() + "\n".join(rows) + "\n")
    store = tmp_path / "store"
    done, _, err, _ = run_vqa(*_extract_args(manifest, store), env={"PREFECT_API_URL": api_url})
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("done 2  skipped 0  failed 32")
    failed = [line for line in lines[1:] if line.startswith("  failed b")]
    assert len(failed) == 32 and len(lines) == 33 and all("VideoDecodeError" in line for line in failed)
    assert "Traceback" not in done.stderr and " INFO " not in done.stderr
    assert not any(line.startswith(("INFO", "ERROR")) for line in err)
    record = json.loads(sorted((store / "_runs").glob("extract-*.json"))[-1].read_text())
    assert len(record["tracebacks"]) == 32 and all(t.startswith("Traceback") for t in record["tracebacks"].values())
    assert str(sorted((store / "_runs").glob("extract-*.json"))[-1]) in done.stderr  # where the reasons are


@pytest.mark.slow
def test_a_dask_run_prints_no_library_logs(videos, tmp_path, api_url):
    manifest = tmp_path / "m.csv"
    (tmp_path / "bad.mp4").write_text("not a video")
    manifest.write_text(videos.read_text() + f"bad,{tmp_path / 'bad.mp4'}\n")
    done, _, err, _ = run_vqa(
        *_extract_args(manifest, tmp_path / "store", "--dask-workers", "2"), env={"PREFECT_API_URL": api_url}
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout.splitlines()[0].startswith("done 2  skipped 0  failed 1")
    assert "INFO" not in done.stderr and "INFO" not in done.stdout and "Traceback" not in done.stderr


# ---- no process outlives a killed `vqa` -------------------------------------------------------


@pytest.mark.slow
def test_sigkill_leaves_no_server_or_worker_behind(videos, tmp_path):
    """No PREFECT_API_URL: `vqa` starts its own Prefect server and a Dask worker; SIGKILL it
    once both run, and both must be gone within seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", *_extract_args(videos, tmp_path / "store", "--dask-workers", "1")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    seen: dict[int, tuple] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update({p.pid: (p, c) for p, c in descendants(proc.pid)})
            commands = " ".join(c for _, c in seen.values())
            if "prefect server start" in commands and "spawn_main" in commands:
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    commands = " ".join(c for _, c in seen.values())
    assert "prefect server start" in commands and "spawn_main" in commands, commands
    left = wait_gone(list(seen.values()), timeout=15)
    assert not left, [c for _, c in left]


@pytest.mark.slow
def test_sigterm_stops_serve_cleanly(videos, tmp_path, api_url):
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "serve",
        "extract",
        str(videos),
        "--store",
        str(tmp_path / "store"),
        "--extractor",
        EXTRACTOR,
        "--weights",
        "random",
        "--device",
        "cpu",
        "--cron",
        "0 2 * * *",
    ]
    proc = subprocess.Popen(
        command,
        env=dict(os.environ, PYTHONPATH=str(REPO), PREFECT_API_URL=api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("serving vqa-extract/nightly"), first + proc.stderr.read()[-2000:]
        time.sleep(3)  # the runner is polling
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped serving vqa-extract/nightly" in out
    assert "never awaited" not in err and "Traceback" not in err


# ---- extract-folder ---------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_folder_warns_once_per_skipped_link_and_survives_a_link_loop(videos, tmp_path, api_url):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "v0.mp4").symlink_to(Path(videos.parent, "v0.mp4"))  # outside the folder: skipped
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")
    make_video(folder / "inside.mp4", 4, width=64, height=48)
    args = [
        "extract-folder",
        str(folder),
        "--store",
        str(tmp_path / "store"),
        "--extractor",
        EXTRACTOR,
        "--weights",
        "random",
        "--sampling",
        "uniform:1",
        "--device",
        "cpu",
        "-q",
    ]
    for expected in ("done 1  skipped 0", "done 0  skipped 1"):  # a flow run, then nothing to do
        done, _, err, _ = run_vqa(*args, env={"PREFECT_API_URL": api_url})
        assert done.returncode == 0 and expected in done.stdout, done.stderr[-2000:]
        skips = [line for line in err if "skipping" in line]
        assert len(skips) == 2, skips
        assert any("v0.mp4: it resolves to" in s for s in skips) and any(
            "loop.mp4: it cannot be resolved" in s for s in skips
        )
    store = FeatureStore(tmp_path / "store", create=False)
    assert store.video_ids(store.feature_sets()[0]) == ["inside.mp4"]


@pytest.mark.slow
def test_extractor_options_reach_the_spec_and_bad_ones_are_one_line(tmp_path):
    """``--extractor-option NAME:KEY=VALUE`` builds the extractor with that option (recorded in its
    spec, so its own feature set); an unknown option or a malformed one is a one-line usage error."""
    from flows.errors import FlowError
    from flows.extract_plan import build_extractors, extraction_config, parse_extractor_options

    options = parse_extractor_options(["resnet50:short_side=540", "resnet50:resampler=pil"], ["resnet50"])
    assert options == {"resnet50": {"short_side": 540, "resampler": "pil"}}
    config = extraction_config(extractors=["resnet50"], weights={"resnet50": "random:0"}, options=options)
    (built,) = build_extractors(config)
    plain = build_extractors(extraction_config(extractors=["resnet50"], weights={"resnet50": "random:0"}))[0]
    assert built.spec != plain.spec
    for bad in (["resnet50:short_sid=540"], ["resnet50=short_side"], ["unique:resampler=pil"]):
        with pytest.raises(FlowError):
            parse_extractor_options(bad, ["resnet50"])
    manifest = tmp_path / "m.csv"
    make_video(tmp_path / "a.mp4", 4, width=64, height=48)
    manifest.write_text("video_id,path\na,a.mp4\n")
    proc, _, stderr, _ = run_vqa(
        "extract",
        str(manifest),
        "--store",
        str(tmp_path / "s"),
        "--extractor",
        "resnet50",
        "--extractor-option",
        "resnet50:colour=blue",
    )
    assert proc.returncode == 2
    assert len(stderr) == 1 and "short_side" in stderr[0], stderr
