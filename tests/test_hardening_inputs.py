"""Hardening, inputs: unusual but valid videos through the runner, and one flow run over a batch of
good and broken files (each failure recorded with its reason, the run goes on).

Error cases of ``pipeline.video`` alone (missing, empty, truncated, audio-only, frameless ...)
are in tests/test_video.py; this module checks what the runner and the flow make of such files.
The case table is in docs/hardening.md.
"""

from __future__ import annotations

import re
import struct
import subprocess
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest

from feature_store import FeatureStore, encode_node_name
from pipeline.encode import encode_video, ffmpeg_exe
from pipeline.errors import VideoDecodeError
from pipeline.extractors import ExtractorEntry, ExtractorSpec, create_extractor
from pipeline.extractors.base import Extractor
from pipeline.runner import extract_video
from pipeline.sampling import parse_sampling
from tests.helpers import (
    corrupt_frame,
    frame_numbers,
    grey_frames,
    make_audio_only,
    make_video,
    run_ffmpeg,
    truncate_copy,
)

FPS = 25.0
BRIGHT = 240  # ProbeExtractor returns NaN rows for frames brighter than this on average


class ProbeExtractor(Extractor):
    """A cheap extractor that records what the runner feeds it.

    Per step (a frame ``[H, W, 3]`` or a clip ``[L, H, W, 3]``): mean R, G, B, height, width
    (5 dims); NaN rows for frames brighter than ``BRIGHT``. ``calls`` keeps each call's input
    shape, ``seen`` each step's per-frame grey numbers (``tests.helpers.frame_numbers``).
    """

    def __init__(self, frames_per_step: int = 1, *, record: bool = True):
        spec = ExtractorSpec(
            name="hardening-probe",
            version="1",
            dims=5,
            backbone="none",
            taps=(),
            pooling="mean per channel, frame size",
            frames_per_step=frames_per_step,
            weights={"source": "none"},
        )
        super().__init__(spec, device="cpu")
        self.record = record
        self.calls: list[tuple[int, ...]] = []
        self.seen: list[list[int]] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.shape[-1] == 3
        steps = frames if frames.ndim == 5 else frames[:, None]  # [B, L, H, W, 3]
        if self.record:
            self.calls.append(frames.shape)
            self.seen.extend(frame_numbers(step).tolist() for step in steps)
        height, width = steps.shape[2:4]
        rows = np.empty((len(steps), 5), dtype=np.float32)
        rows[:, :3] = steps.mean(axis=(1, 2, 3))
        rows[:, 3:] = height, width
        rows[rows[:, :3].mean(axis=1) > BRIGHT] = np.nan
        return rows


def run(path, sampling="all", *, frames_per_step=1, batch_size=16, record=True):
    probe = ProbeExtractor(frames_per_step, record=record)
    (features,), info = extract_video(path, [probe], sampling=parse_sampling(sampling), batch_size=batch_size)
    return probe, features, info


def frame_numbers_ok(probe: ProbeExtractor, expected) -> bool:
    """Whether the first frame of each step the probe saw is ``expected``, in order."""
    return [s[0] for s in probe.seen] == list(expected)


def pattern_frame(width: int, height: int) -> np.ndarray:
    """Smooth gradients plus a sharp diagonal: a wrong row stride in decoding would shear it."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.where((x + y) % 97 < 48, 200, 40)], axis=-1
    )
    return frame.astype(np.uint8)


def grey_jpeg(width: int, height: int) -> bytes:
    """A baseline greyscale JPEG of a flat mid-grey image, built without any pixel buffer.

    Every 8x8 block codes DC difference 0 (``00``) and end-of-block (``0000``): 6 zero bits,
    so the entropy-coded data is ``blocks * 6 / 8`` zero bytes (3 MB at 16000x16000). ``width``
    must be a multiple of 32 and ``height`` of 8 (whole blocks, whole bytes)."""
    assert width % 32 == 0 and height % 8 == 0

    def segment(marker: int, payload: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    dqt = segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    # JPEG's standard luminance DC table, and an AC table of one 4-bit code: end of block.
    dc = b"\x00" + bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]) + bytes(range(12))
    ac = b"\x10" + bytes([0, 0, 0, 1] + [0] * 12) + b"\x00"
    sos = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    return b"\xff\xd8" + dqt + sof + segment(0xC4, dc + ac) + sos + bytes(width * height // 64 * 6 // 8) + b"\xff\xd9"


def mjpeg_video(path: Path, sizes: list[tuple[int, int]], *, header_size: tuple[int, int] | None = None) -> Path:
    """An AVI of MJPEG frames of the given ``(width, height)`` sizes, muxed without decoding;
    the container header declares ``header_size`` (default: the first frame's)."""
    width, height = header_size or sizes[0]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for index, (w, h) in enumerate(sizes):
            packet = av.Packet(grey_jpeg(w, h))
            packet.stream, packet.pts, packet.dts = stream, index, index
            out.mux(packet)
    return path


def av1_encoder() -> str | None:
    listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    for name in ("libsvtav1", "libaom-av1", "librav1e"):
        if re.search(rf"^\s*V\S*\s+{re.escape(name)}\s", listing, re.MULTILINE):
            return name
    return None


AV1_SPEED = {
    "libsvtav1": ["-preset", "12"],
    "libaom-av1": ["-cpu-used", "8", "-b:v", "0"],
    "librav1e": ["-speed", "10"],
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Every input of this module, encoded once (about 2 s)."""
    root = tmp_path_factory.mktemp("inputs")
    v = {}
    v["single"] = make_video(root / "single.mp4", 1)
    v["short"] = make_video(root / "short.mkv", 10)
    v["odd"] = encode_video(root / "odd 641x359.mp4", [pattern_frame(641, 359)] * 3, crf=0, pix_fmt="yuv444p")
    v["tiny"] = make_video(root / "tiny.mp4", 5, width=96, height=64)
    landscape = make_video(root / "landscape.mp4", 4, width=96, height=64)
    v["portrait"] = root / "portrait.mp4"
    run_ffmpeg("-display_rotation", "90", "-i", str(landscape), "-c", "copy", str(v["portrait"]))
    v["vfr"] = make_video(
        root / "vfr.mkv", 20, extra_args=["-vf", "setpts='(N+25*gte(N,10))/25/TB'", "-fps_mode", "vfr"]
    )
    v["10bit"] = encode_video(root / "10bit.mp4", grey_frames(8), crf=0, pix_fmt="yuv420p10le")
    v["gray"] = encode_video(root / "gray.mp4", grey_frames(8), crf=0, pix_fmt="gray")
    v["vp9"] = encode_video(
        root / "vp9.webm",
        grey_frames(8),
        codec="libvpx-vp9",
        crf=10,
        extra_args=["-b:v", "0", "-deadline", "realtime", "-cpu-used", "8"],
    )
    v["h265"] = encode_video(
        root / "h265.mp4",
        grey_frames(8),
        codec="libx265",
        crf=10,
        extra_args=["-preset", "ultrafast", "-x265-params", "log-level=error", "-tag:v", "hvc1"],
    )
    encoder = av1_encoder()
    if encoder is not None:
        v["av1"] = encode_video(root / "av1.mkv", grey_frames(8), codec=encoder, crf=30, extra_args=AV1_SPEED[encoder])
    return root, v


# ---- frame counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampling, length", [("all", 1), ("uniform:16", 1), ("fps:2", 1), ("clips:32", 32)])
def test_single_frame_video(videos, sampling, length):
    probe, features, info = run(videos[1]["single"], sampling, frames_per_step=length)
    assert info.num_frames == 1 and features.shape == (1, 5)
    assert probe.seen == [[0] * length]  # one step; a clip repeats the only frame


def test_fewer_frames_than_one_clip_pads_with_the_last_frame(videos):
    probe, features, info = run(videos[1]["short"], "clips:32", frames_per_step=32)
    assert info.num_frames == 10 and features.shape == (1, 5)
    assert probe.calls == [(1, 32, 48, 64, 3)]
    assert probe.seen == [list(range(10)) + [9] * 22]


# ---- frame sizes and orientation ------------------------------------------------------------


def test_odd_dimensions_decode_without_shear(videos):
    probe, features, info = run(videos[1]["odd"])
    assert (info.width, info.height) == (641, 359)
    assert probe.calls == [(3, 359, 641, 3)]
    np.testing.assert_array_equal(features[:, 3:], [[359, 641]] * 3)
    from pipeline.video import Video

    with Video(videos[1]["odd"]) as video:
        ((_, frames),) = video.frames([0])
    error = np.abs(frames[0].astype(int) - pattern_frame(641, 359)).mean()
    assert error < 3, f"mean abs error {error:.1f}: decoded frame does not match the source"


@pytest.mark.slow
def test_4k_frames_pass_through_in_bounded_batches(tmp_path):
    path = encode_video(
        tmp_path / "4k.mp4", [pattern_frame(3840, 2160)] * 3, crf=35, extra_args=["-preset", "ultrafast"]
    )
    probe, features, info = run(path, batch_size=2)
    assert (info.width, info.height, info.num_frames) == (3840, 2160, 3)
    assert probe.calls == [(2, 2160, 3840, 3), (1, 2160, 3840, 3)]
    assert features.shape == (3, 5) and np.isfinite(features).all()


def test_tiny_frames_and_rotation_metadata(videos):
    probe, features, info = run(videos[1]["tiny"])
    assert probe.calls == [(5, 64, 96, 3)] and frame_numbers_ok(probe, range(5))
    probe, features, info = run(videos[1]["portrait"])
    assert (info.width, info.height) == (64, 96)  # decord applies the display rotation
    assert probe.calls == [(4, 96, 64, 3)]
    np.testing.assert_array_equal(features[:, 3:], [[96, 64]] * 4)
    assert frame_numbers_ok(probe, range(4))


@pytest.mark.slow
def test_real_extractor_on_small_odd_and_high_bit_depth_frames(videos):
    """resnet50-vsfa (random weights) at native resolution on the awkward sizes and formats."""
    extractor = create_extractor("resnet50-vsfa", weights="random")
    for key in ("tiny", "odd", "portrait", "10bit", "gray"):
        (features,), info = extract_video(videos[1][key], [extractor], sampling=parse_sampling("uniform:1"))
        assert features.shape == (1, 4096) and np.isfinite(features).all(), key


# ---- timing ---------------------------------------------------------------------------------


def test_variable_frame_rate_samples_by_time(videos):
    # frames 0-9 at 0.00-0.36 s, a gap, frames 10-19 at 1.40-1.76 s
    probe, _, info = run(videos[1]["vfr"], "fps:5")
    # targets 0, 0.2, ..., 1.6 s -> the frames nearest in time (0.36 s and 1.40 s cover the gap)
    assert [s[0] for s in probe.seen] == [0, 5, 9, 10, 15]
    probe, features, _ = run(videos[1]["vfr"], "clips:32", frames_per_step=32)
    # one clip per second of real time: the second one starts at the first frame after 1 s
    assert [s[0] for s in probe.seen] == [0, 10] and features.shape == (2, 5)
    assert probe.seen[1] == list(range(10, 20)) + [19] * 22


# ---- pixel formats and codecs ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["10bit", "gray", "vp9", "h265"])
def test_pixel_formats_and_codecs_decode_to_the_right_frames(videos, key):
    probe, features, info = run(videos[1][key])
    assert info.num_frames == 8 and probe.calls == [(8, 48, 64, 3)]
    assert frame_numbers_ok(probe, range(8))
    # grey in, grey out: the three channels agree (no colour cast from format conversion)
    assert np.abs(features[:, 0] - features[:, 1]).max() < 2 and np.abs(features[:, 1] - features[:, 2]).max() < 2


def test_av1_gives_a_clear_decode_error(videos):
    if "av1" not in videos[1]:
        pytest.skip("the bundled ffmpeg has no AV1 encoder (libsvtav1, libaom-av1, librav1e)")
    path = videos[1]["av1"]
    try:
        probe, features, info = run(path)
    except VideoDecodeError as error:
        # decord 0.6.0's own FFmpeg has no AV1 decoder: the file is refused at open, naming the
        # codec and how to re-encode it.
        assert error.path == str(path)
        assert error.cause.startswith("codec av1 is not supported by the decoder: decord ")
        assert "has no av1 decoder" in error.cause and "ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4" in error.cause
    else:  # a decord built with an AV1 decoder reads it like any other file
        assert frame_numbers_ok(probe, range(8))


# ---- long videos: memory does not grow with length -----------------------------------------


def _peak_bytes(path) -> tuple[int, np.ndarray]:
    tracemalloc.start()
    try:
        _, features, _ = run(path, batch_size=16, record=False)
        return tracemalloc.get_traced_memory()[1], features
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_video_length(tmp_path):
    levels = list(grey_frames(41))
    short = encode_video(tmp_path / "short.mp4", (levels[i % 41] for i in range(300)), crf=0)
    long = encode_video(tmp_path / "long.mp4", (levels[i % 41] for i in range(3000)), crf=0)
    run(short)  # warm-up: first-call allocations are not the runner's
    short_peak, short_features = _peak_bytes(short)
    long_peak, long_features = _peak_bytes(long)
    assert short_features.shape == (300, 5) and long_features.shape == (3000, 5)
    frame_bytes = 48 * 64 * 3
    # 2700 more frames: the peak may grow by per-step bookkeeping (frame index, timestamps,
    # feature row: tens of bytes a step), never by decoded frames (9 KB each).
    growth_per_frame = (long_peak - short_peak) / 2700
    assert growth_per_frame < 0.05 * frame_bytes, (short_peak, long_peak)
    assert long_peak < 3000 * frame_bytes / 20, (long_peak, 3000 * frame_bytes)


# ---- one flow run over good and broken files ------------------------------------------------

BROKEN = {  # video id -> (how to make it, fragments the recorded failure must contain)
    "missing": (lambda root, v: root / "nowhere.mp4", ["VideoDecodeError", "file does not exist"]),
    "text": (
        lambda root, v: _write(root / "notes.mp4", b"not a video\n" * 50),
        ["not a video or unsupported container"],
    ),
    "audio": (lambda root, v: make_audio_only(root / "tone.m4a"), ["no video stream (audio-only"]),
    "truncated": (
        lambda root, v: truncate_copy(make_video(root / "full.mp4", 30, noise=True), root / "cut.mp4", 0.5),
        ["truncated", "'moov' box) is missing"],
    ),
    "corrupt frame": (
        lambda root, v: corrupt_frame(
            make_video(root / "noise_fs.mp4", 30, noise=True, extra_args=["-movflags", "+faststart"]),
            root / "corrupt.mp4",
            20,
        ),
        ["VideoDecodeError", "decoding failed at frame"],
    ),
    "bright (NaN)": (
        lambda root, v: encode_video(root / "white.mp4", [np.full((48, 64, 3), 255, np.uint8)] * 4, crf=0),
        ["InvalidFeaturesError", "NaN/Inf", "nothing was stored"],
    ),
    "16000x16000 MJPEG": (
        lambda root, v: mjpeg_video(root / "bomb.avi", [(16000, 16000)] * 2),
        ["VideoDecodeError", "frames of 16000x16000", "over the limit of 33177600 pixels"],
    ),
    "8 px wide": (
        lambda root, v: make_video(root / "narrow.mp4", 3, width=8, height=32),
        ["VideoDecodeError", "frames 8 px wide cannot be decoded"],
    ),
}
GOOD = ["single", "short", "odd", "tiny", "portrait", "vfr", "10bit", "gray", "vp9", "h265"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def probe_registered():
    """Register ProbeExtractor as ``hardening-probe`` while this module's flow test runs."""
    from flows import extract as flow_module
    from pipeline.extractors import registry

    entry = ExtractorEntry(
        "hardening-probe",
        lambda *, weights, device: ProbeExtractor(),
        dims=5,
        description="test probe",
        weights_choices=("none",),
        default_weights="none",
    )
    with registry.EXTRACTORS.override("hardening-probe", entry):
        flow_module._build.cache_clear()
        yield "hardening-probe"
    flow_module._build.cache_clear()


@pytest.fixture(scope="module")
def flow_run(videos, tmp_path_factory, prefect_harness, probe_registered):
    """ONE flow run over every good input of this module plus the broken files of BROKEN."""
    from flows.extract import extract_flow

    _, v = videos
    work = tmp_path_factory.mktemp("flow")
    rows = [(key, v[key]) for key in GOOD]
    if "av1" in v:
        rows.append(("av1", v["av1"]))
    rows += [(video_id, make(work, v)) for video_id, (make, _) in BROKEN.items()]
    manifest = work / "manifest.csv"
    manifest.write_text("video_id,path\n" + "".join(f'"{i}","{p}"\n' for i, p in rows))
    store = work / "store"
    summary = extract_flow(
        manifest=str(manifest),
        store=str(store),
        extractors=[probe_registered],
        sampling="uniform:4",
        device="cpu",
        progress=False,
    )
    return summary, FeatureStore(store), v


@pytest.mark.slow
def test_flow_records_each_broken_video_and_goes_on(flow_run):
    summary, store, v = flow_run
    failures = summary["failures"]
    expected_failed = set(BROKEN) | ({"av1"} if "av1" in v else set())
    assert set(failures) == expected_failed and summary["failed"] == len(expected_failed)
    for video_id, (_, fragments) in BROKEN.items():
        for fragment in fragments:
            assert fragment in failures[video_id], (video_id, failures[video_id])
    if "av1" in failures:
        assert "VideoDecodeError" in failures["av1"] and "av1.mkv" in failures["av1"]
        assert "codec av1 is not supported by the decoder" in failures["av1"]
    assert summary["done"] == len(GOOD)
    (set_id,) = store.feature_sets()
    assert store.video_ids(set_id) == sorted(GOOD)
    # portrait stays portrait and odd sizes are kept: height, width are the last two dims
    assert store.read_video(set_id, "portrait")[0, 3:].tolist() == [96, 64]
    assert store.read_video(set_id, "odd")[0, 3:].tolist() == [359, 641]


def test_flow_nan_features_are_refused_and_nothing_is_stored(flow_run):
    summary, store, _ = flow_run
    (set_id,) = store.feature_sets()
    assert "'bright (NaN)'" in summary["failures"]["bright (NaN)"]
    assert not store.has_video(set_id, "bright (NaN)")
    staging = store.path / encode_node_name(set_id) / "_staging"
    assert sorted(p.name for p in staging.iterdir()) == ["zarr.json"]  # no half-written leftovers
    assert store.feature_set_info(set_id)["incomplete"] == 0
