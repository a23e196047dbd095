"""Hardening, the command line's environment (docs/hardening.md, "Hostile inputs: where the
store and the Prefect server are"): a store on /proc, a read-only or full filesystem, an
unreachable PREFECT_API_URL. Each ends in one line and exit status 2 within a second, before
anything is written or any model is loaded. (A store that fills up during a run: the run's
summary is still returned, see tests/test_hardening_faults.py.)
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from flows import preflight
from flows.cli import main as vqa
from tests.helpers import make_video


@pytest.fixture
def manifest(tmp_path) -> Path:
    make_video(tmp_path / "a.mp4", 3)
    path = tmp_path / "m.csv"
    path.write_text("video_id,path\na,a.mp4\n")
    return path


def extract(manifest: Path, store: str | Path, capsys) -> tuple[int, str, float]:
    started = time.perf_counter()
    code = vqa(
        [
            "extract",
            str(manifest),
            "--store",
            str(store),
            "--extractor",
            "resnet50",
            "--weights",
            "random",
            "--sampling",
            "uniform:1",
            "--device",
            "cpu",
            "-q",
        ]
    )
    return code, capsys.readouterr().err.strip(), time.perf_counter() - started


class _StatVFS:
    """What os.statvfs says about a filesystem, with the fields the preflight reads."""

    def __init__(self, *, read_only=False, blocks=1_000_000, available=500_000, block_size=4096):
        self.f_flag = os.ST_RDONLY if read_only else 0
        self.f_blocks, self.f_bavail, self.f_frsize = blocks, available, block_size


def test_a_store_on_proc_is_refused_at_once(manifest, capsys):
    code, err, seconds = extract(manifest, "/proc/foo", capsys)
    assert code == 2
    assert err == (
        "vqa extract: error: --store /proc/foo: /proc is on the kernel's proc filesystem, which holds "
        "no files; choose a folder on a disk"
    )
    assert seconds < 5 and not Path("/proc/foo").exists()


@pytest.mark.parametrize(
    "fs, message",
    [
        (_StatVFS(read_only=True), "is on a read-only filesystem; choose a writable place"),
        (_StatVFS(available=100), "is full (0 MiB free); free some space or choose another place"),
    ],
    ids=["read-only", "full"],
)
def test_a_read_only_or_full_filesystem_is_refused_before_the_store_is_created(
    manifest, tmp_path, capsys, monkeypatch, fs, message
):
    """Checked with statvfs, which root's permissions do not bypass (this suite runs as root
    here, so os.access alone would say yes)."""
    monkeypatch.setattr(preflight.os, "statvfs", lambda path: fs)
    store = tmp_path / "store"
    code, err, seconds = extract(manifest, store, capsys)
    assert code == 2 and err.startswith(f"vqa extract: error: --store {store}: ") and message in err, err
    assert seconds < 5 and not store.exists()


def test_an_unreachable_prefect_api_is_reported_before_any_work(manifest, tmp_path, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    store = tmp_path / "store"
    code, err, seconds = extract(manifest, store, capsys)
    assert code == 2, err
    assert err.startswith(
        f"vqa extract: error: the Prefect server at PREFECT_API_URL http://127.0.0.1:{port}/api cannot be reached ("
    )
    assert "unset PREFECT_API_URL and vqa starts one for the run" in err
    assert seconds < 10 and not store.exists()
    monkeypatch.setenv("PREFECT_API_URL", "127.0.0.1:4200/api")
    code, err, _ = extract(manifest, store, capsys)
    assert code == 2 and "is not an http(s) URL" in err
