"""pipeline.sampling: parsing, canonical names, and the index math of each strategy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.errors import SamplingError
from pipeline.sampling import Sampling, parse_sampling
from pipeline.video import VideoInfo


def _info(num_frames: int = 30, fps: float = 25.0, duration: float | None = None) -> VideoInfo:
    if duration is None:
        duration = num_frames / fps
    return VideoInfo(
        path="clip.mp4", num_frames=num_frames, fps=fps, duration=duration, width=64, height=48, size_bytes=1, mtime=0.0
    )


# ---- parsing, names, serialisation ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, value, name",
    [
        ("all", "all", None, "all"),
        ("uniform:16", "uniform", 16, "uniform-16"),
        ("uniform:1", "uniform", 1, "uniform-1"),
        ("fps:2", "fps", 2.0, "fps-2"),
        ("fps:2.0", "fps", 2.0, "fps-2"),
        ("fps:0.5", "fps", 0.5, "fps-0.5"),
        ("fps:29.97", "fps", 29.97, "fps-29.97"),
        ("  FPS : 1 ", "fps", 1.0, "fps-1"),
        ("Uniform:8", "uniform", 8, "uniform-8"),
    ],
)
def test_parse_valid_forms(text, kind, value, name):
    sampling = parse_sampling(text)
    assert sampling == Sampling(kind, value)
    assert (sampling.kind, sampling.value, sampling.name) == (kind, value, name)
    assert sampling.to_dict() == {"strategy": kind, "value": value}
    assert parse_sampling(str(sampling)) == sampling  # str() gives back a parseable form


def test_values_are_canonical():
    assert Sampling("uniform", 16.0) == Sampling("uniform", 16)
    assert isinstance(Sampling("uniform", 16.0).value, int)
    assert isinstance(Sampling("fps", 2).value, float)
    assert hash(Sampling("fps", 2)) == hash(parse_sampling("fps:2.0"))
    assert Sampling("uniform", np.int64(4)).to_dict() == {"strategy": "uniform", "value": 4}


@pytest.mark.parametrize("value", [1, 2, 0.5, 1 / 3, 29.97, 1e-3, 120])
def test_names_are_filesystem_safe_and_distinct(value):
    name = Sampling("fps", value).name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert name != Sampling("fps", value * 1.001).name


@pytest.mark.parametrize(
    "text",
    [
        "",
        "every",
        "all:3",
        "uniform",
        "uniform:",
        "uniform:0",
        "uniform:-3",
        "uniform:2.5",
        "uniform:abc",
        "fps",
        "fps:",
        "fps:0",
        "fps:-1",
        "fps:nan",
        "fps:inf",
        "fps:two",
        "random:3",
        "uniform-16",
    ],
)
def test_parse_errors_name_the_accepted_forms(text):
    with pytest.raises(SamplingError) as caught:
        parse_sampling(text)
    message = str(caught.value)
    assert repr(text) in message
    for form in ('"all"', '"uniform:N"', '"fps:K"'):
        assert form in message
    assert isinstance(caught.value, ValueError)


def test_parse_rejects_non_strings():
    with pytest.raises(SamplingError):
        parse_sampling(16)


@pytest.mark.parametrize(
    "kind, value",
    [
        ("every", None),
        ("all", 3),
        ("uniform", None),
        ("uniform", 2.5),
        ("uniform", 0),
        ("fps", 0),
        ("fps", -2.0),
        ("fps", float("inf")),
        ("fps", True),
        ("fps", "2"),
    ],
)
def test_invalid_sampling_values(kind, value):
    with pytest.raises(SamplingError):
        Sampling(kind, value)


# ---- all / uniform -------------------------------------------------------------------------


def test_all_is_every_frame():
    indices = Sampling("all").indices(_info(30))
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, np.arange(30))


@pytest.mark.parametrize(
    "count, expected",
    [
        (1, [0]),
        (2, [0, 29]),
        (4, [0, 10, 19, 29]),  # linspace: 0, 9.67, 19.33, 29
        (30, list(range(30))),
        (31, list(range(30))),  # more than there are: each frame once, no repeats
        (1000, list(range(30))),
    ],
)
def test_uniform_examples(count, expected):
    indices = Sampling("uniform", count).indices(_info(30))
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected)


def test_uniform_rounds_half_up():
    # linspace(0, 5, 3) = 0, 2.5, 5: half-up gives 3 where numpy's half-to-even rint gives 2.
    np.testing.assert_array_equal(Sampling("uniform", 3).indices(_info(6)), [0, 3, 5])


def test_uniform_invariants_over_many_sizes():
    for num_frames in range(1, 61):
        info = _info(num_frames)
        for count in range(1, 70):
            indices = Sampling("uniform", count).indices(info)
            assert len(indices) == min(count, num_frames)
            assert np.all(np.diff(indices) > 0)  # sorted, no duplicates
            assert indices[0] == 0
            if count >= 2:
                assert indices[-1] == num_frames - 1


def test_single_frame_video():
    info = _info(1)
    for sampling in (Sampling("all"), Sampling("uniform", 8), Sampling("fps", 30)):
        np.testing.assert_array_equal(sampling.indices(info), [0])


def test_zero_frames_is_refused():
    with pytest.raises(SamplingError, match="no frames"):
        Sampling("uniform", 4).indices(_info(0, duration=0.0))


# ---- fps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate, expected",
    [
        (1, [0, 25]),  # t = 0, 1 (1.2 s of video)
        (2, [0, 13, 25]),  # t = 0, 0.5, 1.0 -> 12.5 rounds up to 13
        (10, [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]),
        (0.5, [0]),  # t = 0 only: 2 s is past the end
        (25, list(range(30))),
        (50, list(range(30))),  # above the native rate: every frame once, not repeats
    ],
)
def test_fps_without_timestamps(rate, expected):
    indices = Sampling("fps", rate).indices(_info(30, fps=25.0))
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected)


def test_fps_targets_stop_before_the_end():
    # 1.2 s * 25 = 30.000000000000004 in floating point: still 30 targets, not 31.
    assert len(Sampling("fps", 25).indices(_info(30, fps=25.0))) == 30
    # 2 s at 1 fps: t = 0, 1 (t = 2 is not < duration).
    np.testing.assert_array_equal(Sampling("fps", 1).indices(_info(50, fps=25.0)), [0, 25])


def test_fps_uses_timestamps_for_variable_frame_rate():
    # 10 frames at 25 fps, a 1 s gap, 10 more: nominal fps says nothing about the gap.
    stamps = np.concatenate([np.arange(10), np.arange(35, 45)]) / 25.0
    info = _info(20, fps=25.0, duration=1.8)
    with_stamps = Sampling("fps", 1).indices(info, stamps)
    without = Sampling("fps", 1).indices(info)
    np.testing.assert_array_equal(with_stamps, [0, 10])  # t = 1.0 -> 1.4 s is nearer than 0.36 s
    np.testing.assert_array_equal(without, [0, 19])  # frame 25 clipped to the last frame


def test_fps_timestamps_are_relative_to_the_first_frame():
    stamps = 10.0 + np.arange(30) / 25.0  # the container starts at t = 10 s
    info = _info(30, fps=25.0)
    expected = [0, 8, 17, 25]  # t = 0, 1/3, 2/3, 1 s -> frames 8.33, 16.67, 25 rounded
    np.testing.assert_array_equal(Sampling("fps", 3).indices(info, stamps), expected)
    np.testing.assert_array_equal(Sampling("fps", 3).indices(info), expected)


def test_fps_ties_go_to_the_later_frame_on_both_paths():
    # Binary-exact times so that float noise cannot break the ties.
    stamps = np.array([0.0, 0.25, 0.75, 1.25])
    info = _info(4, fps=4.0, duration=1.5)
    # t = 0.5 is 0.25 from frames 1 and 2; t = 1.0 is 0.25 from frames 2 and 3.
    np.testing.assert_array_equal(Sampling("fps", 2).indices(info, stamps), [0, 2, 3])
    # Without timestamps: t = 0.5 s at 25 fps is frame 12.5 -> 13, the later one.
    np.testing.assert_array_equal(Sampling("fps", 2).indices(_info(30, fps=25.0)), [0, 13, 25])


def test_fps_accepts_unsorted_timestamps():
    stamps = np.array([0.0, 0.08, 0.04, 0.12])
    info = _info(4, fps=25.0, duration=0.16)
    np.testing.assert_array_equal(Sampling("fps", 25).indices(info, stamps), [0, 1, 2, 3])


def test_fps_rejects_timestamps_of_the_wrong_length():
    with pytest.raises(SamplingError, match="shape"):
        Sampling("fps", 1).indices(_info(30), np.zeros(29))


def test_fps_needs_a_frame_rate_without_timestamps():
    with pytest.raises(SamplingError, match="frame rate"):
        Sampling("fps", 1).indices(_info(30, fps=0.0, duration=1.2))


def test_other_strategies_ignore_timestamps():
    stamps = np.arange(30) / 25.0
    np.testing.assert_array_equal(Sampling("uniform", 3).indices(_info(30), stamps), [0, 15, 29])


# ---- on a real file ------------------------------------------------------------------------


def test_fps_sampling_on_a_variable_frame_rate_file(tmp_path):
    from pipeline.video import Video
    from tests.helpers import frame_numbers, make_video

    path = make_video(
        tmp_path / "vfr.mkv",
        20,
        fps=25.0,
        extra_args=["-vf", "setpts='(N+25*gte(N,10))/25/TB'", "-fps_mode", "vfr"],
    )
    with Video(path) as video:
        indices = parse_sampling("fps:1").indices(video.info, video.timestamps())
        ((got_indices, frames),) = video.frames(indices)
    np.testing.assert_array_equal(got_indices, [0, 10])
    np.testing.assert_array_equal(frame_numbers(frames), [0, 10])
