"""Hardening, frame sizes: memory bombs refused from the stream header, batches bounded by
pixels, narrow frames decord cannot convert (docs/hardening.md, "Hostile inputs").

The bomb is a real, decodable MJPEG file of 16000x16000 frames (6 MB: flat grey JPEGs built
here byte by byte, muxed with PyAV without decoding anything). decord needs 3.9 GB to decode
one of its frames; the tests check that nothing is decoded at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import PipelineError, VideoDecodeError
from pipeline.video import DEFAULT_MAX_FRAME_PIXELS, MAX_FRAME_PIXELS_ENV, Video, max_frame_pixels
from tests.helpers import make_video
from tests.test_hardening_inputs import mjpeg_video, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return mjpeg_video(tmp_path_factory.mktemp("bomb") / "bomb.avi", [(16000, 16000)] * 2)


def test_the_bomb_is_small_and_declares_16000x16000(bomb):
    assert bomb.stat().st_size < 7_000_000
    with av.open(str(bomb)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height, stream.frames) == (16000, 16000, 2)


def test_frames_over_the_pixel_limit_are_refused_from_the_header(bomb):
    with pytest.raises(VideoDecodeError) as caught:
        Video(bomb)
    cause = caught.value.cause
    assert cause.startswith(
        "frames of 16000x16000 (256.0 megapixels) are over the limit of 33177600 pixels "
        "per frame; refused before decoding"
    )
    assert MAX_FRAME_PIXELS_ENV in cause and "ffmpeg -i IN -vf scale" in cause


@pytest.mark.slow
def test_the_refusal_decodes_nothing(bomb):
    """In a fresh process, opening the bomb (and the runner on it) raises the limit error
    while the peak resident memory grows by less than one decoded frame's grey plane (256 MB)."""
    script = textwrap.dedent(f"""
        import resource, sys
        from pipeline.errors import VideoDecodeError
        from pipeline.runner import extract_video
        from pipeline.sampling import parse_sampling
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            extract_video({str(bomb)!r}, [], sampling=parse_sampling("all"))
        except VideoDecodeError as error:
            assert "over the limit" in error.cause, error.cause
        else:
            sys.exit("not refused")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, MAX_FRAME_PIXELS_ENV: ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    growth_kib = int(done.stdout.split()[-1])
    assert growth_kib < 64 * 1024, growth_kib


def test_the_limit_is_configurable(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", 3)  # 64x48
    with pytest.raises(VideoDecodeError, match="frames of 64x48 .* over the limit of 3071 pixels"):
        Video(path, max_pixels=64 * 48 - 1)
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "32x32")
    assert max_frame_pixels() == 1024
    with pytest.raises(VideoDecodeError, match="over the limit of 1024 pixels"):
        Video(path)
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "3072")
    with Video(path) as video:
        assert (video.info.width, video.info.height) == (64, 48)
    for bad in ("lots", "0", "-5", "64x"):
        monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, bad)
        with pytest.raises(PipelineError, match=f"{MAX_FRAME_PIXELS_ENV} must be a positive number of pixels"):
            max_frame_pixels()
    monkeypatch.delenv(MAX_FRAME_PIXELS_ENV)
    assert max_frame_pixels() == DEFAULT_MAX_FRAME_PIXELS == 7680 * 4320


def test_a_frame_that_grows_mid_stream_is_refused_by_the_streaming_decoder(tmp_path):
    """The header says 64x64 and so do the first two frames; the third is 2048x2048. FFmpeg's
    own max_pixels check (given the same limit) refuses that frame before allocating it."""
    path = mjpeg_video(tmp_path / "grows.avi", [(64, 64), (64, 64), (2048, 2048), (64, 64)])
    with Video(path, max_pixels=64 * 64 * 4) as video:
        assert video.info.num_frames == 4
        seen = []
        with pytest.raises(VideoDecodeError, match="over the limit of 16384 pixels.*decoding failed at frame 2 of 4"):
            for indices, frames in video.frames(batch_size=1):
                seen.extend(indices.tolist())
                assert frames.shape == (1, 64, 64, 3)
    assert seen == [0, 1]


def test_batches_hold_at_most_one_largest_frame_of_pixels(tmp_path, monkeypatch):
    """The memory bound: a batch never holds more pixels than the limit (at least one frame),
    so at 8K the runner feeds one frame at a time, at 1080p 16, whatever --batch-size says;
    the features do not depend on it."""
    path = make_video(tmp_path / "v.mp4", 10)  # 64x48 = 3072 pixels
    with Video(path, max_pixels=3 * 3072 + 100) as video:
        assert video.max_batch(16) == 3 and video.max_batch(2) == 2
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            video.max_batch(0)
    with Video(path, max_pixels=3072) as video:
        assert video.max_batch(16) == 1
    with Video(path) as video:  # the default: 8K / (64 x 48) frames
        assert video.max_batch(100_000) == DEFAULT_MAX_FRAME_PIXELS // 3072
    unbounded_probe, unbounded, _ = run(path, batch_size=16)
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, str(3 * 3072))
    probe, features, _ = run(path, batch_size=16)
    assert [shape[0] for shape in probe.calls] == [3, 3, 3, 1]
    assert [shape[0] for shape in unbounded_probe.calls] == [10]
    np.testing.assert_array_equal(features, unbounded)
    # Clips: one step of L frames is the smallest unit, whatever the limit.
    probe, features, _ = run(path, "clips:4", frames_per_step=4, batch_size=16)
    assert all(shape[0] == 1 for shape in probe.calls) and features.shape[0] == len(probe.calls)


@pytest.mark.parametrize("width", [8, 16])
def test_narrow_frames_decord_cannot_convert_get_a_clear_error(tmp_path, width):
    path = make_video(tmp_path / f"w{width}.mp4", 3, width=width, height=32)
    with pytest.raises(VideoDecodeError) as caught:
        Video(path)
    cause = caught.value.cause
    assert cause.startswith(f"frames {width} px wide cannot be decoded: decord ")
    assert "width divides 48" in cause and "scale=64:-2" in cause
    assert "Check failed" not in cause


@pytest.mark.parametrize("width", [10, 14])
def test_other_narrow_widths_decode(tmp_path, width):
    path = make_video(tmp_path / f"w{width}.mp4", 3, width=width, height=32)
    _, features, info = run(path)
    assert (info.width, info.height) == (width, 32) and features.shape == (3, 5)
