"""The ``clips:L[:POLICY]`` sampling: ``ceil`` (default, one clip per started second), ``floor``
(SimpleVQA) and ``chunks`` (TCSVT-2022)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import SamplingError
from pipeline.runner import step_plan
from pipeline.sampling import ClipSampling, Sampling, parse_sampling
from pipeline.video import VideoInfo


def _info(num_frames: int, fps: float, duration: float | None = None) -> VideoInfo:
    duration = num_frames / fps if duration is None else duration
    return VideoInfo(
        path="v.mp4", num_frames=num_frames, fps=fps, duration=duration, width=64, height=48, size_bytes=1, mtime=0.0
    )


def _expected(starts, num_frames: int, length: int = 32) -> np.ndarray:
    """Clips written out by hand: start .. start+L-1, the last frame repeated past the end."""
    return np.array([[min(s + k, num_frames - 1) for k in range(length)] for s in starts])


# ---- parsing and identity ---------------------------------------------------------------


def test_parse_and_identity():
    clips = parse_sampling("clips:32")
    assert clips == ClipSampling(32) == ClipSampling() and hash(clips) == hash(ClipSampling(32))
    assert isinstance(clips, Sampling) and clips.kind == "clips" and clips.length == 32
    assert clips.name == "clips-32" and str(clips) == "clips:32"
    assert clips.to_dict() == {"strategy": "clips", "value": 32}
    assert parse_sampling(" CLIPS: 16 ") == ClipSampling(16)
    assert parse_sampling(str(ClipSampling(8))) == ClipSampling(8)  # round trip
    assert clips != Sampling("uniform", 32)


@pytest.mark.parametrize("text", ["clips", "clips:", "clips:0", "clips:-4", "clips:2.5", "clips:x"])
def test_bad_clip_forms_name_the_accepted_forms(text):
    with pytest.raises(SamplingError, match=r"clips:L"):
        parse_sampling(text)


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "32"])
def test_constructor_refuses_non_positive_integers(value):
    with pytest.raises(SamplingError):
        ClipSampling(value)


def test_unknown_kind_message_lists_clips_too():
    with pytest.raises(SamplingError, match="clips:L"):
        parse_sampling("every:2")


# ---- clip plans ---------------------------------------------------------------------------


def test_25_fps_one_clip_per_second_last_one_padded():
    plan = ClipSampling(32).clips(_info(100, 25.0))  # 4.0 s
    assert plan.dtype == np.int64 and plan.shape == (4, 32)
    np.testing.assert_array_equal(plan, _expected([0, 25, 50, 75], 100))
    assert plan[3, -1] == 99 and (plan[3, 25:] == 99).all()  # 75..99, then frame 99 seven times


def test_30_fps():
    plan = ClipSampling(32).clips(_info(300, 30.0))  # 10.0 s
    np.testing.assert_array_equal(plan, _expected(range(0, 300, 30), 300))


def test_ntsc_rate_rounds_each_start():
    fps = 30000 / 1001  # 29.97
    plan = ClipSampling(32).clips(_info(300, fps))  # 10.01 s -> 11 clips
    starts = [int(np.floor(i * fps + 0.5)) for i in range(11)]
    assert starts[:4] == [0, 30, 60, 90] and starts[10] == 300  # 10 s lands past the last frame
    np.testing.assert_array_equal(plan, _expected(starts, 300))
    assert (plan[10] == 299).all()


def test_short_video_is_one_clip_of_its_frames_then_the_last():
    plan = ClipSampling(32).clips(_info(10, 25.0))  # 0.4 s
    np.testing.assert_array_equal(plan, [list(range(10)) + [9] * 22])


@pytest.mark.parametrize("duration, clips", [(4.0, 4), (4.0000000001, 4), (4.01, 5), (0.0, 1), (float("nan"), 1)])
def test_number_of_clips_is_ceil_of_duration(duration, clips):
    assert len(ClipSampling(32).clips(_info(101, 25.0, duration))) == clips


def test_partial_second_counts_as_a_clip():
    plan = ClipSampling(32).clips(_info(110, 25.0))  # 4.4 s: SimpleVQA would cut 4 clips
    np.testing.assert_array_equal(plan[:, 0], [0, 25, 50, 75, 100])


def test_indices_are_the_sorted_union():
    sampling = ClipSampling(32)
    info = _info(100, 25.0)
    np.testing.assert_array_equal(sampling.indices(info), np.arange(100))
    sparse = ClipSampling(4).indices(info)
    np.testing.assert_array_equal(sparse, [0, 1, 2, 3, 25, 26, 27, 28, 50, 51, 52, 53, 75, 76, 77, 78])


def test_runner_plans_clips_for_clip_samplings():
    info = _info(100, 25.0)
    np.testing.assert_array_equal(step_plan(ClipSampling(32), info, None), ClipSampling(32).clips(info))
    assert step_plan(Sampling("fps", 1), info, None).shape == (4, 1)


# ---- timestamps (variable frame rate) ----------------------------------------------------


def test_constant_rate_timestamps_agree_with_the_rate_and_may_start_late():
    info = _info(100, 25.0)
    stamps = 1.5 + np.round(np.arange(100) / 25.0, 6)  # container starts at 1.5 s
    np.testing.assert_array_equal(ClipSampling(32).clips(info, stamps), ClipSampling(32).clips(info))


def test_variable_rate_follows_time_not_the_average_rate():
    # 1 s at 10 fps, then 2 s at 40 fps: 90 frames in 3 s, average 30 fps.
    stamps = np.round(np.concatenate([np.arange(10) / 10.0, 1.0 + np.arange(80) / 40.0]), 6)
    info = _info(90, 30.0, duration=3.0)
    plan = ClipSampling(32).clips(info, stamps)
    np.testing.assert_array_equal(plan[:, 0], [0, 10, 50])  # frames starting at 0 s, 1 s, 2 s
    np.testing.assert_array_equal(ClipSampling(32).clips(info)[:, 0], [0, 30, 60])  # what fps alone would give
    np.testing.assert_array_equal(plan, _expected([0, 10, 50], 90))


def test_start_is_the_first_frame_at_or_after_the_second():
    stamps = np.array([0.0, 0.4, 0.9, 1.3, 2.6])  # no frame starts at exactly 1 s or 2 s
    plan = ClipSampling(2).clips(_info(5, 2.0, duration=3.0), stamps)
    np.testing.assert_array_equal(plan, [[0, 1], [3, 4], [4, 4]])


def test_a_second_after_the_last_frame_start_repeats_the_last_frame():
    stamps = np.array([0.0, 0.5, 1.0])  # the last frame lasts 2 s: duration 3 s
    plan = ClipSampling(2).clips(_info(3, 2.0, duration=3.0), stamps)
    np.testing.assert_array_equal(plan, [[0, 1], [2, 2], [2, 2]])


def test_float32_noise_in_timestamps_does_not_skip_a_frame():
    stamps = np.arange(50) / 25.0
    stamps[25] = 1.0 - 4e-8  # float32 rounding of 1.0 s seen from other sources
    plan = ClipSampling(32).clips(_info(50, 25.0), stamps)
    assert plan[1, 0] == 25


def test_bad_inputs_raise_sampling_errors():
    with pytest.raises(SamplingError, match="shape"):
        ClipSampling(32).clips(_info(10, 25.0), np.zeros(9))
    with pytest.raises(SamplingError, match="frame rate"):
        ClipSampling(32).clips(_info(10, 0.0, duration=1.0))
    with pytest.raises(SamplingError, match="no frames"):
        ClipSampling(32).clips(_info(0, 25.0, duration=0.0))


# ---- clip policies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, policy, name",
    [
        ("clips:32:ceil", "ceil", "clips-32"),
        ("clips:32:floor", "floor", "clips-32-floor"),
        (" Clips: 32 : CHUNKS ", "chunks", "clips-32-chunks"),
    ],
)
def test_policy_is_named_in_the_sampling_string(text, policy, name):
    sampling = parse_sampling(text)
    assert sampling == ClipSampling(32, policy) and sampling.policy == policy and sampling.name == name
    assert parse_sampling(str(sampling)) == sampling  # round trip through the canonical form
    expected = {"strategy": "clips", "value": 32} | ({} if policy == "ceil" else {"policy": policy})
    assert sampling.to_dict() == expected  # the default keeps its pre-policy identity
    assert hash(sampling) == hash(ClipSampling(32, policy))
    assert str(ClipSampling(32, "ceil")) == "clips:32" and ClipSampling(32, "floor") != ClipSampling(32)


@pytest.mark.parametrize("text", ["clips:32:round", "clips:32:", "clips::floor"])
def test_bad_policies_name_the_accepted_forms(text):
    with pytest.raises(SamplingError, match=r"clips:L\[:POLICY\]"):
        parse_sampling(text)


def test_ceil_and_floor_on_a_240_frame_ntsc_clip():
    """The issue's example: KoNViD-1k clips are 240 frames at 29.97 fps (8.008 s)."""
    info = _info(240, 30000 / 1001)
    ceil = ClipSampling(32).clips(info)
    assert len(ceil) == 9 and (ceil[8] == 239).all()  # 9th clip: frame 239 frozen 32 times
    floor = ClipSampling(32, "floor").clips(info)
    np.testing.assert_array_equal(floor, _expected(range(0, 240, 30), 240))  # 8 clips, the last one complete


def test_floor_cuts_at_multiples_of_the_rounded_rate_with_a_frozen_tail():
    plan = ClipSampling(32, "floor").clips(_info(61, 29.97))  # round(29.97) = 30: 2 clips
    np.testing.assert_array_equal(plan, _expected([0, 30], 61))
    assert (plan[1, 30:] == 60).all()
    # A partial last second gets no clip (110 frames at 25 fps: 4, where ceil gives 5).
    np.testing.assert_array_equal(ClipSampling(32, "floor").clips(_info(110, 25.0))[:, 0], [0, 25, 50, 75])


def test_floor_rounds_the_rate_as_python_does():
    # SimpleVQA's int(round(fps)): half to even, so 24.5 -> 24 and 25.5 -> 26.
    assert ClipSampling(2, "floor").clips(_info(100, 24.5))[1, 0] == 24
    assert ClipSampling(2, "floor").clips(_info(100, 25.5))[1, 0] == 26


def test_floor_keeps_one_clip_for_a_video_under_a_second_and_needs_a_rate():
    np.testing.assert_array_equal(ClipSampling(4, "floor").clips(_info(10, 25.0)), [[0, 1, 2, 3]])
    with pytest.raises(SamplingError, match="frame rate"):
        ClipSampling(32, "floor").clips(_info(10, 0.0, duration=1.0))
    with pytest.raises(SamplingError, match="rounds to 0"):
        ClipSampling(32, "floor").clips(_info(10, 0.4, duration=25.0))


EVERY_OTHER = list(range(0, 62, 2)) + [63]  # torch.linspace(0, 63, 32).long()


@pytest.mark.parametrize(
    "num_frames, starts",
    [
        (64, [0]),
        (128, [0, 64]),
        (100, [0, 36]),
        (65, [0, 1]),
        (192, [0, 64, 128]),
    ],
)
def test_chunks_take_every_other_frame_of_64_frame_chunks(num_frames, starts):
    plan = ClipSampling(32, "chunks").clips(_info(num_frames, 25.0))
    np.testing.assert_array_equal(plan, [[start + k for k in EVERY_OTHER] for start in starts])
    assert plan[-1, -1] == num_frames - 1  # the last chunk ends at the last frame


def test_chunks_of_a_short_video_spread_32_positions_over_its_frames():
    plan = ClipSampling(32, "chunks").clips(_info(20, 25.0))
    np.testing.assert_array_equal(plan, [np.linspace(0, 19, 32).astype(np.int64)])  # frames repeat
    assert len(np.unique(plan)) == 20
    np.testing.assert_array_equal(
        ClipSampling(32, "chunks").clips(_info(40, 25.0)), [(np.arange(32) * 39 / 31).astype(np.int64)]
    )


def test_chunks_ignore_rate_and_timestamps():
    stamps = np.round(np.concatenate([np.arange(10) / 10.0, 1.0 + np.arange(90) / 40.0]), 6)
    plan = ClipSampling(32, "chunks").clips(_info(100, 0.0, duration=3.25), stamps)
    np.testing.assert_array_equal(plan[:, 0], [0, 36])
