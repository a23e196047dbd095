"""pipeline.video: probing, batched decoding, and one clear error per unreadable input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import pipeline.video as video_module
from pipeline.errors import VideoDecodeError
from pipeline.video import Video, VideoInfo, open_video, probe_video
from tests.helpers import (
    corrupt_frame,
    frame_numbers,
    frameless_mkv,
    make_audio_only,
    make_video,
    run_ffmpeg,
    truncate_copy,
)

NUM_FRAMES = 30
FPS = 25.0
WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Every test video, encoded once for the module (about 0.3 s in all)."""
    root = tmp_path_factory.mktemp("videos")
    paths = {
        "grey_mp4": make_video(root / "grey.mp4", NUM_FRAMES, fps=FPS),
        "grey_mkv": make_video(root / "grey.mkv", NUM_FRAMES, fps=FPS),
        "noise_mp4": make_video(root / "noise.mp4", NUM_FRAMES, fps=FPS, noise=True),
        "noise_faststart": make_video(
            root / "noise_fs.mp4", NUM_FRAMES, fps=FPS, noise=True, extra_args=["-movflags", "+faststart"]
        ),
        "noise_mkv": make_video(root / "noise.mkv", NUM_FRAMES, fps=FPS, noise=True),
    }
    return root, paths


# ---- probing -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["grey_mp4", "grey_mkv"])
def test_probe_reports_metadata(videos, key):
    _, paths = videos
    path = paths[key]
    info = probe_video(path)
    assert isinstance(info, VideoInfo)
    assert info.path == str(path)
    assert info.num_frames == NUM_FRAMES
    assert info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(NUM_FRAMES / FPS, abs=1e-6)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    stat = os.stat(path)
    assert info.size_bytes == stat.st_size
    assert info.mtime == stat.st_mtime


def test_info_to_dict_is_json_ready(videos):
    info = probe_video(videos[1]["grey_mp4"])
    record = info.to_dict()
    assert set(record) == {
        "path",
        "num_frames",
        "fps",
        "duration",
        "width",
        "height",
        "size_bytes",
        "mtime",
        "resolved_path",
    }
    assert json.loads(json.dumps(record)) == record


def test_single_frame_video(tmp_path):
    info = probe_video(make_video(tmp_path / "one.mp4", 1, fps=FPS))
    assert info.num_frames == 1
    assert info.duration == pytest.approx(1 / FPS, abs=1e-6)


def test_rotation_metadata_gives_portrait_frames(tmp_path):
    # 96x64 landscape, marked for 90-degree display rotation: decord applies it.
    # (Not 64x48: decord 0.6.0 returns broken 4-channel frames for that size, see video.py.)
    landscape = make_video(tmp_path / "landscape.mp4", 3, width=96, height=64)
    rotated = tmp_path / "rotated.mp4"
    run_ffmpeg("-display_rotation", "90", "-i", str(landscape), "-c", "copy", str(rotated))
    with Video(rotated) as video:
        assert (video.info.width, video.info.height) == (64, 96)
        ((_, frames),) = video.frames()
    assert frames.shape == (3, 96, 64, 3)


# ---- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["grey_mp4", "grey_mkv"])
def test_every_frame_in_order(videos, key):
    with open_video(videos[1][key]) as video:
        batches = list(video.frames(batch_size=7))
    indices = np.concatenate([i for i, _ in batches])
    frames = np.concatenate([f for _, f in batches])
    assert [len(i) for i, _ in batches] == [7, 7, 7, 7, 2]
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, np.arange(NUM_FRAMES))
    assert frames.dtype == np.uint8 and frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frame_numbers(frames), np.arange(NUM_FRAMES))


@pytest.mark.parametrize("indices", [[0, 3, 4, 17, 29], [29, 0, 15], [5, 5], [12]])
def test_sparse_indices_return_those_frames_in_given_order(videos, indices):
    with Video(videos[1]["grey_mp4"]) as video:
        batches = list(video.frames(indices, batch_size=2))
    got_indices = np.concatenate([i for i, _ in batches])
    got_frames = np.concatenate([f for _, f in batches])
    np.testing.assert_array_equal(got_indices, indices)
    np.testing.assert_array_equal(frame_numbers(got_frames), indices)


class _SpyReader:
    """Wraps a decord reader and records every get_batch call."""

    def __init__(self, reader):
        self._reader = reader
        self.calls: list[list[int]] = []

    def get_batch(self, indices):
        self.calls.append(list(indices))
        return self._reader.get_batch(indices)

    def __getattr__(self, name):
        return getattr(self._reader, name)


@pytest.mark.parametrize("batch_size", [1, 4, 16, 100])
def test_batches_are_bounded_lazy_and_sequential(videos, batch_size, monkeypatch):
    monkeypatch.setattr(video_module, "_STREAM_MAX_MEAN_GAP", 0)  # the decord path
    with Video(videos[1]["grey_mp4"]) as video:
        spy = video._reader = _SpyReader(video._reader)
        iterator = video.frames(batch_size=batch_size)
        assert spy.calls == []  # nothing decoded before the first batch is asked for
        first_indices, first_frames = next(iterator)
        assert len(spy.calls) == 1  # one batch decoded at a time
        sizes = [len(first_frames)] + [len(frames) for _, frames in iterator]
    assert max(sizes) == min(batch_size, NUM_FRAMES)
    assert sum(sizes) == NUM_FRAMES
    # Each call reads a run of consecutive frames that continues where the previous ended.
    flat = [index for call in spy.calls for index in call]
    assert flat == list(range(NUM_FRAMES))
    assert all(len(call) <= batch_size for call in spy.calls)


MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def _decord_frames(path, indices, batch_size, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(video_module, "_STREAM_MAX_MEAN_GAP", 0)
        with Video(path) as video:
            return np.concatenate([f for _, f in video.frames(indices, batch_size=batch_size)])


@pytest.mark.slow
@pytest.mark.parametrize("key", ["grey_mp4", "grey_mkv", "noise_mp4", "noise_faststart", "noise_mkv", "konvid"])
def test_dense_reads_stream_through_pyav_pixel_identical_to_decord(videos, key, monkeypatch):
    if key == "konvid":
        clips = sorted(MEDIA.glob("*.mp4"))
        if not clips:
            pytest.skip("no KoNViD clips in ../shared/media")
        path, indices = clips[0], list(range(0, 240, 3))  # a real 960x540 clip, fps:8-like sampling
    else:
        path, indices = videos[1][key], [1, 2, 3, 7, 8, 20, 29]
    batch_size = 4
    with Video(path) as video:
        batches = video.frames(indices, batch_size=batch_size)
        got_indices, frames = next(batches)
        assert video._reader is None  # decord released: PyAV streams these frames
        pairs = [(got_indices, frames), *batches]
    assert all(len(f) <= batch_size for _, f in pairs)
    np.testing.assert_array_equal(np.concatenate([i for i, _ in pairs]), indices)
    np.testing.assert_array_equal(
        np.concatenate([f for _, f in pairs]), _decord_frames(path, indices, batch_size, monkeypatch)
    )


def test_sparse_reads_and_rotated_videos_keep_decord(videos, tmp_path):
    with Video(videos[1]["grey_mp4"]) as video:
        list(video.frames([0, 29], batch_size=2))  # 2 of 30 frames: decord seeks
        assert video._reader is not None
    landscape = make_video(tmp_path / "landscape.mp4", 6, fps=FPS, width=96, height=64)
    rotated = tmp_path / "rotated.mp4"
    run_ffmpeg("-display_rotation", "90", "-i", str(landscape), "-c", "copy", str(rotated))
    with Video(rotated) as video:
        frames = np.concatenate([f for _, f in video.frames(batch_size=4)])
        assert video._reader is not None  # PyAV does not rotate: decord read them
    assert frames.shape[1:3] == (96, 64)  # portrait, as decord applies the rotation


def test_empty_indices_yield_nothing(videos):
    with Video(videos[1]["grey_mp4"]) as video:
        assert list(video.frames([])) == []


@pytest.mark.parametrize(
    "indices, error",
    [([30], IndexError), ([-1], IndexError), ([[0, 1]], ValueError), ([0.0, 1.0], ValueError)],
)
def test_bad_indices_are_refused_at_once(videos, indices, error):
    with Video(videos[1]["grey_mp4"]) as video:
        with pytest.raises(error):
            video.frames(indices)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(videos, batch_size):
    with Video(videos[1]["grey_mp4"]) as video:
        with pytest.raises(ValueError, match="batch_size"):
            video.frames(batch_size=batch_size)


def test_timestamps_are_frame_start_times(videos):
    with Video(videos[1]["grey_mkv"]) as video:
        stamps = video.timestamps()
    assert stamps.dtype == np.float64 and stamps.shape == (NUM_FRAMES,)
    np.testing.assert_allclose(stamps, np.arange(NUM_FRAMES) / FPS, atol=1e-6)


def test_variable_frame_rate_timestamps_and_duration(tmp_path):
    # Frames 0-9 at 25 fps, a 1 s gap, frames 10-19 at 25 fps.
    path = make_video(
        tmp_path / "vfr.mkv",
        20,
        fps=FPS,
        extra_args=["-vf", "setpts='(N+25*gte(N,10))/25/TB'", "-fps_mode", "vfr"],
    )
    with Video(path) as video:
        stamps = video.timestamps()
        info = video.info
    expected = np.concatenate([np.arange(10), np.arange(35, 45)]) / FPS
    np.testing.assert_allclose(stamps, expected, atol=1e-6)
    # Duration comes from the timestamps (20 frames / 25 fps would say 0.8 s).
    assert info.duration == pytest.approx(1.8, abs=1e-6)


def test_close_releases_reader_and_is_idempotent(videos):
    video = Video(videos[1]["grey_mp4"])
    assert not video.closed
    video.close()
    video.close()
    assert video.closed
    with pytest.raises(ValueError, match="closed"):
        video.frames()
    with pytest.raises(ValueError, match="closed"):
        video.timestamps()


def test_context_manager_closes_even_mid_iteration(videos):
    with Video(videos[1]["grey_mp4"], num_threads=1) as video:
        iterator = video.frames(batch_size=4)
        next(iterator)
    assert video.closed
    with pytest.raises(ValueError, match="closed"):
        next(iterator)


# ---- errors --------------------------------------------------------------------------------


def _missing(root, paths):
    return root / "does_not_exist.mp4"


def _directory(root, paths):
    path = root / "a_directory.mp4"
    path.mkdir(exist_ok=True)
    return path


def _empty(root, paths):
    path = root / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text(root, paths):
    path = root / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    return path


def _truncated_mp4_index_at_end(root, paths):
    return truncate_copy(paths["noise_mp4"], root / "cut_index_end.mp4", 0.5)


def _truncated_mp4_index_at_front(root, paths):
    return truncate_copy(paths["noise_faststart"], root / "cut_index_front.mp4", 0.5)


def _truncated_mp4_index_at_front_near_end(root, paths):
    # decord opens this one and only fails at frame ~27; the box walk catches it at open.
    return truncate_copy(paths["noise_faststart"], root / "cut_index_front_97.mp4", 0.97)


def _truncated_mkv(root, paths):
    # decord opens this silently with 14 of 30 frames.
    return truncate_copy(paths["noise_mkv"], root / "cut.mkv", 0.5)


def _mkv_header_only(root, paths):
    return truncate_copy(paths["noise_mkv"], root / "header_only.mkv", 0.005)


def _audio_only(root, paths):
    return make_audio_only(root / "tone.m4a")


def _zero_frames(root, paths):
    return frameless_mkv(paths["noise_mkv"], root / "frameless.mkv")


BAD_INPUTS = [
    (_missing, ["file does not exist"]),
    (_directory, ["not a regular file"]),
    (_empty, ["file is empty (0 bytes)"]),
    (_text, ["not a video or unsupported container"]),
    (_truncated_mp4_index_at_end, ["truncated", "'moov' box) is missing"]),
    (_truncated_mp4_index_at_front, ["truncated", "'mdat' box"]),
    (_truncated_mp4_index_at_front_near_end, ["truncated", "'mdat' box"]),
    (_truncated_mkv, ["truncated: only 14 frames", "declares 1.20 s"]),
    (_mkv_header_only, ["truncated or corrupt Matroska/WebM file"]),
    (_audio_only, ["no video stream (audio-only"]),
    (_zero_frames, ["no decodable frames"]),
]


@pytest.mark.parametrize("opener", [probe_video, Video], ids=["probe_video", "Video"])
@pytest.mark.parametrize("make_bad, causes", BAD_INPUTS, ids=[m.__name__.strip("_") for m, _ in BAD_INPUTS])
def test_bad_input_raises_video_decode_error(videos, make_bad, causes, opener):
    root, paths = videos
    path = make_bad(root, paths)
    with pytest.raises(VideoDecodeError) as caught:
        opener(path)
    error = caught.value
    assert isinstance(error, ValueError)  # callers may catch the builtin
    assert error.path == str(path)
    message = str(error)
    assert message.startswith(f"{path}: ")
    for cause in causes:
        assert cause in error.cause, f"{cause!r} not in {error.cause!r}"
        assert cause in message


def test_codec_without_a_decoder_in_decords_ffmpeg_is_named_with_the_fix(tmp_path):
    """Generic: a stream whose codec decord's own FFmpeg cannot decode (H.266/VVC here; AV1 is
    checked in tests/test_hardening_inputs.py) is refused at open naming the codec and how to
    re-encode it, not as an unreadable file."""
    from pipeline.encode import encode_video
    from pipeline.errors import PipelineError
    from tests.helpers import grey_frames

    try:
        path = encode_video(tmp_path / "vvc.mp4", grey_frames(4), codec="libvvenc")
    except PipelineError:
        pytest.skip("the bundled ffmpeg has no VVC encoder (libvvenc)")
    try:
        info = probe_video(path)
    except VideoDecodeError as error:  # decord 0.6.0
        assert error.path == str(path)
        assert error.cause.startswith("codec vvc is not supported by the decoder: decord ")
        assert "has no vvc decoder" in error.cause and "ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4" in error.cause
    else:  # a decord built with a VVC decoder reads it like any other file
        assert info.num_frames == 4


def test_mid_stream_decode_error_names_the_frame(videos, tmp_path):
    damaged = 20
    path = corrupt_frame(videos[1]["noise_faststart"], tmp_path / "corrupt.mp4", damaged)
    decoded = []
    with Video(path) as video:  # the container is intact, so opening succeeds
        with pytest.raises(VideoDecodeError) as caught:
            for indices, _frames in video.frames(batch_size=8):
                decoded.extend(indices.tolist())
    error = caught.value
    assert error.path == str(path)
    assert "decoding failed at frame" in error.cause and f"of {NUM_FRAMES}" in error.cause
    failed = int(error.cause.split("decoding failed at frame ")[1].split()[0])
    # decord's threaded decoder reads ahead, so the error may surface a few frames early.
    assert damaged - 8 <= failed <= damaged
    # Batches before the failing one came through intact and in order.
    assert decoded == list(range(len(decoded))) and len(decoded) <= failed
    assert error.__cause__ is not None  # decord's own exception is chained


def test_video_decode_error_survives_pickling():
    import pickle

    from pipeline.errors import VideoDecodeError

    err = pickle.loads(pickle.dumps(VideoDecodeError("/v/a.mp4", "file is empty (0 bytes)")))
    assert (err.path, err.cause, str(err)) == (
        "/v/a.mp4",
        "file is empty (0 bytes)",
        "/v/a.mp4: file is empty (0 bytes)",
    )
