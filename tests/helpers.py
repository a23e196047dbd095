"""Small test videos made with the bundled ffmpeg: good ones with known content, and broken ones.

Grey videos encode frame ``i`` as a flat grey of level ``grey_level(i)``, so the mean of a
decoded frame tells which frame came back (``frame_numbers``). Levels are ``GREY_STEP`` apart
and YUV round trips move them by at most 2, so the nearest level is unambiguous.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.encode import encode_video, ffmpeg_exe

GREY_START = 10
GREY_STEP = 6
MAX_GREY_FRAMES = (255 - GREY_START) // GREY_STEP + 1  # 41 distinct levels fit in uint8
# Matroska element id of a Cluster (the first one ends the header).
_MKV_CLUSTER_ID = b"\x1f\x43\xb6\x75"
# An empty Cluster: id, size 3, then its Timestamp element (id 0xE7, size 1, value 0).
_MKV_EMPTY_CLUSTER = _MKV_CLUSTER_ID + b"\x83\xe7\x81\x00"


def grey_level(index: int) -> int:
    """Grey level (0-255) of frame ``index`` in a grey video."""
    return GREY_START + GREY_STEP * index


def grey_frames(num_frames: int, *, width: int = 64, height: int = 48) -> Iterator[np.ndarray]:
    """``num_frames`` flat grey uint8 frames ``[height, width, 3]``, frame i at ``grey_level(i)``."""
    if num_frames > MAX_GREY_FRAMES:
        raise ValueError(f"at most {MAX_GREY_FRAMES} distinct grey frames fit in uint8")
    for index in range(num_frames):
        yield np.full((height, width, 3), grey_level(index), dtype=np.uint8)


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Which grey-video frame each of ``frames`` (uint8 ``[B, H, W, 3]``) is: int64 ``[B]``."""
    means = frames.reshape(len(frames), -1).mean(axis=1)
    return np.rint((means - GREY_START) / GREY_STEP).astype(np.int64)


def step_statistics(frames: np.ndarray) -> np.ndarray:
    """Cheap deterministic features of test extractors: per step (frame or clip) the mean, std,
    first and last value of its pixels, float32 ``[B, 4]``."""
    flat = frames.reshape(len(frames), -1).astype(np.float64)
    return np.stack([flat.mean(1), flat.std(1), flat[:, 0], flat[:, -1]], axis=1).astype(np.float32)


def writer_values(writer: int, video: str, steps: int, dims: int) -> np.ndarray:
    """Features that concurrent-writer tests store: distinct per (writer, video), reproducible
    in every process, so a read tells which writer's copy won."""
    seed = [writer, *video.encode()]
    return np.random.default_rng(seed).standard_normal((steps, dims)).astype(np.float32)


def tiny_demo_dataset(root: str | Path, n_sources: int) -> Path:
    """Manifest of ``n_sources`` photos x (reference + 3 blur levels) clips of 64x48, 0.5 s at
    12 fps: the smallest real dataset the flow tests extract."""
    from pipeline.synthetic import make_demo_dataset

    return make_demo_dataset(
        root, n_sources=n_sources, clip_seconds=0.5, fps=12, size=(64, 48), distortions=("blur",), progress=False
    )


def make_video(
    path: str | Path,
    num_frames: int = 30,
    *,
    fps: float = 25.0,
    width: int = 64,
    height: int = 48,
    extra_args: Sequence[str] = (),
    noise: bool = False,
) -> Path:
    """H.264 test video; container from the suffix (.mp4, .mkv, ...).

    Default: lossless (crf 0) grey frames, see ``grey_frames``. ``noise=True``: random-noise
    frames (seeded, crf 18) instead, all of similar size, so a cut at a fraction of the file
    lands part-way through the frames (flat grey frames compress to almost nothing).
    """
    if noise:
        rng = np.random.default_rng(0)
        frames = (rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num_frames))
        return encode_video(path, frames, fps=fps, crf=18, extra_args=extra_args)
    frames = grey_frames(num_frames, width=width, height=height)
    return encode_video(path, frames, fps=fps, crf=0, extra_args=extra_args)


def make_audio_only(path: str | Path, *, seconds: float = 1.0) -> Path:
    """An audio-only file (a sine tone); codec chosen by ffmpeg from the suffix (.m4a: AAC)."""
    path = Path(path)
    subprocess.run(
        [
            ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


def truncate_copy(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def frameless_mkv(src: str | Path, dst: str | Path) -> Path:
    """``src``'s Matroska header (one video track) followed by one empty cluster: a video
    stream with zero frames."""
    data = Path(src).read_bytes()
    header_end = data.find(_MKV_CLUSTER_ID)
    if header_end < 0:
        raise ValueError(f"{src} has no Matroska cluster")
    Path(dst).write_bytes(data[:header_end] + _MKV_EMPTY_CLUSTER)
    return Path(dst)


def corrupt_frame(src: str | Path, dst: str | Path, frame: int) -> Path:
    """Copy ``src`` (MP4/H.264) to ``dst`` with the packet of display frame ``frame`` made
    undecodable: its first NAL length prefix is set to 0xFFFFFFFF, which the H.264 decoder
    rejects outright (damaged payload bytes would merely be concealed)."""
    import av

    with av.open(str(src)) as container:
        packets = sorted((packet.pts, packet.pos) for packet in container.demux(video=0) if packet.size)
    position = packets[frame][1]
    data = bytearray(Path(src).read_bytes())
    data[position : position + 4] = b"\xff\xff\xff\xff"
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def run_ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg with ``args`` (list form, no shell); raise on failure."""
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, capture_output=True)


def load_fixture_script(name: str):
    """Import ``tests/fixtures/<name>.py`` (a fixture generator) so tests reuse its deterministic
    weight and input recipes instead of repeating them."""
    import importlib.util

    path = Path(__file__).resolve().parent / "fixtures" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- processes the tests start ----------------------------------------------------------------

# Helper processes of the test process itself that end when it does: multiprocessing's, and
# joblib's loky worker pool and its tracker (scikit-learn keeps the pool for reuse).
_OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "joblib.externals.loky")


def _command(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())[:200]
    except psutil.Error:
        return "?"


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def marked_processes(mark: str) -> list:
    """Live processes (``psutil.Process``, command) whose environment has ``VQA_TEST_SESSION``
    = ``mark`` (set by conftest, inherited by every process the tests start, wherever it was
    re-parented), except this one and its own multiprocessing helpers."""
    import psutil

    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.environ().get("VQA_TEST_SESSION") != mark:
                continue
            if proc.ppid() == me and any(h in _command(proc) for h in _OWN_HELPERS):
                continue
        except psutil.Error:  # gone, a zombie, or another user's
            continue
        if _running(proc):
            found.append((proc, _command(proc)))
    return found


def descendants(pid: int) -> list:
    """(``psutil.Process``, command) of every live descendant of ``pid``."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [(c, _command(c)) for c in children if _running(c)]


def wait_gone(processes: list, *, timeout: float) -> list:
    """Wait up to ``timeout`` seconds for ``processes`` ((process, command) pairs) to end;
    returns those still running."""
    import time

    deadline = time.monotonic() + timeout
    alive = [(p, c) for p, c in processes if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [(p, c) for p, c in alive if _running(p)]
    return alive
