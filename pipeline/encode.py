"""Encoding frames to a video file with ffmpeg (the static binary shipped by imageio-ffmpeg).

Used to build demo and test datasets. Arguments are passed as a list, never through a shell,
so file names are data.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import PipelineError


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (has libx264, libx265, libvmaf)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 25.0,
    codec: str = "libx264",
    crf: int | None = 23,
    pix_fmt: str = "yuv420p",
    extra_args: Sequence[str] = (),
) -> Path:
    """Encode RGB frames (each uint8 ``[H, W, 3]``, all the same size) into ``path``.

    ``extra_args`` go after the codec options (e.g. ``["-vf", "transpose=1"]``).
    Raises ``PipelineError`` with ffmpeg's message when encoding fails.
    """
    path = Path(path)
    frames = iter(frames)
    first = np.ascontiguousarray(next(frames), dtype=np.uint8)
    height, width = first.shape[:2]
    cmd = [
        ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-an",
        "-c:v",
        codec,
    ]
    if crf is not None:
        cmd += ["-crf", str(crf)]
    cmd += ["-pix_fmt", pix_fmt, *extra_args, str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(first.tobytes())
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg exited early; its stderr explains why
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise PipelineError(f"ffmpeg failed to encode {path}: {stderr.strip()}")
    return path
