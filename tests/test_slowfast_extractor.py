"""The SlowFast clip extractors: registry dims, SimpleVQA pooling, runner integration, weights,
and parity with SimpleVQA's and TCSVT-2022's own feature code.

A SlowFast forward of one 32 x 224 x 224 clip costs ~5 s on 2 CPU cores: only
``test_full_size_clip`` runs one; everything else uses ``size=64`` (2 x 2 stage-5 maps), tiny
native frames (``slowfast-fast-tcsvt``) or pools synthetic maps without running the network.
Golden values come from the reference code itself (``fixtures/make_simplevqa_fixture.py``,
``fixtures/make_tcsvt_motion_fixture.py``); the weights are rebuilt here from
``slowfast_keys.json`` with ``make_slowfast_fixture``'s generator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ExtractorOptionError, PipelineError, SamplingError, WeightsError, WeightsUnavailableError
from pipeline.extractors import Extractor, ExtractorSpec, create_extractor, get_entry, sampling_for
from pipeline.extractors.base import IMAGENET_MEAN, IMAGENET_STD
from pipeline.extractors.slowfast import (
    KINETICS_URL,
    NewFramesAccumulator,
    clip_mean_features,
    fast_step_features,
    grid_tokens,
)
from pipeline.extractors.slowfast_model import SlowFastR50, pack_pathways
from pipeline.runner import extract_video
from pipeline.sampling import ClipSampling, parse_sampling
from pipeline.video import Video, VideoInfo, open_video
from pipeline.weights import HubCheckpoint, file_sha256
from tests.helpers import load_fixture_script, make_video

FIXTURES = Path(__file__).parent / "fixtures"
# Parity tolerance, as in test_slowfast_model.py: same ops as the reference; another thread
# count or batch size reorders conv reductions, an error proportional to the maps' scale.
RTOL, ATOL_OF_SCALE = 1e-4, 1e-5

SMALL = 64  # test spatial size: stage-5 maps of 2 x 2
VARIANT_ROWS = {"slowfast": (1, 2304), "slowfast-fast": (32, 512), "slowfast-tokens": (1, 98_304)}


def _clips(count: int = 1, *, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fast_extractor():
    return create_extractor("slowfast-fast", weights="random:1", size=SMALL)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ``{"model_state": state_dict}`` file as pytorchvideo publishes it (~140 MB, written once)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        state = SlowFastR50().state_dict()
    path = tmp_path_factory.mktemp("slowfast") / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": state, "epoch": 196}, path)
    return path, state


# ---- registry and shapes --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANT_ROWS))
def test_registry_dims_and_spec(name):
    extractor = create_extractor(name, weights="random", size=SMALL)
    out = extractor(_clips())
    entry = get_entry(name)
    assert out.shape == VARIANT_ROWS[name] and out.shape[1] == entry.dims == extractor.spec.dims
    assert out.dtype == np.float32 and np.isfinite(out).all()
    spec = extractor.spec
    assert entry.default_weights == "kinetics" and "random[:SEED]" in entry.weights_choices
    assert spec.frames_per_step == 32 and spec.resize == (SMALL, SMALL)
    assert spec.resize_short_side is None and spec.crop is None
    assert spec.mean == (0.45,) * 3 and spec.std == (0.225,) * 3
    assert spec.weights["source"] == "random" and "RANDOM" in spec.weights["warning"]
    assert spec.to_dict()["resize"] == [SMALL, SMALL]


@pytest.mark.slow
def test_full_size_clip():
    """The one 224 px forward: stage-5 shapes, and SimpleVQA's pooling on the real maps."""
    extractor = create_extractor("slowfast", weights="random:2")
    assert extractor.spec.resize == (224, 224)
    captured = {}
    hook = extractor.model.register_forward_hook(lambda mod, args, out: captured.update(maps=out))
    try:
        out = extractor(_clips(height=36, width=64))  # 16:9 frames: squashed to 224 x 224
    finally:
        hook.remove()
    slow_map, fast_map = captured["maps"]
    assert slow_map.shape == (1, 2048, 8, 7, 7) and fast_map.shape == (1, 256, 32, 7, 7)
    np.testing.assert_allclose(out, _simplevqa_pool(extractor.model, slow_map, fast_map).numpy(), rtol=1e-5, atol=1e-7)


def _simplevqa_pool(model: SlowFastR50, slow_map: torch.Tensor, fast_map: torch.Tensor) -> torch.Tensor:
    """SimpleVQA's ``slowfast.forward``: the head's AvgPool3d per pathway, then its
    AdaptiveAvgPool3d(1); it saves slow and fast apart and its loader concatenates slow, fast."""
    pools, output_pool = model.blocks[5].pool, model.blocks[6].output_pool
    slow = output_pool(pools[0](slow_map)).flatten(1)
    fast = output_pool(pools[1](fast_map)).flatten(1)
    return torch.cat([slow, fast], dim=1)


# ---- pooling on synthetic maps (no network) ----------------------------------------------------


def test_clip_means_equal_simplevqa_pooling_at_224():
    generator = torch.Generator().manual_seed(0)
    slow_map = torch.randn(2, 2048, 8, 7, 7, generator=generator)
    fast_map = torch.randn(2, 256, 32, 7, 7, generator=generator)
    torch.testing.assert_close(
        clip_mean_features(slow_map, fast_map), _simplevqa_pool(SlowFastR50(), slow_map, fast_map)
    )


def test_fast_step_features_layout():
    fast_map = torch.randn(2, 5, 3, 2, 4)  # [B, C, T, h, w]
    rows = fast_step_features(fast_map).numpy()
    assert rows.shape == (6, 10)
    maps = fast_map.numpy()
    for b in range(2):
        for t in range(3):
            cell = maps[b, :, t].reshape(5, -1)
            np.testing.assert_allclose(
                rows[b * 3 + t], np.concatenate([cell.mean(1), cell.std(1, ddof=1)]), rtol=1e-5, atol=1e-6
            )


def test_grid_tokens_layout_slow_then_fast_channel_time_row_column():
    slow_map, fast_map = torch.randn(1, 3, 2, 7, 7), torch.randn(1, 2, 4, 7, 7)
    tokens = grid_tokens(slow_map, fast_map).numpy()[0]
    assert tokens.shape == (3 * 2 * 4 + 2 * 4 * 4,)
    cells = (slice(0, 4), slice(3, 7))  # adaptive pooling of 7 into 2 bins overlaps at 3
    for offset, fmap in ((0, slow_map.numpy()[0]), (3 * 2 * 4, fast_map.numpy()[0])):
        channels, steps = fmap.shape[:2]
        for c in range(channels):
            for t in range(steps):
                for i in range(2):
                    for j in range(2):
                        want = fmap[c, t, cells[i], cells[j]].mean()
                        got = tokens[offset + ((c * steps + t) * 2 + i) * 2 + j]
                        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- preprocessing ---------------------------------------------------------------------------


def test_preprocess_resizes_every_frame_to_a_square_and_normalises(fast_extractor):
    clips = np.full((2, 32, 36, 80, 3), 153, dtype=np.uint8)  # any aspect ratio -> 64 x 64
    clips[1, 5] = 0
    x = fast_extractor.preprocess(clips)
    assert x.shape == (2, 3, 32, SMALL, SMALL) and x.is_contiguous()
    torch.testing.assert_close(x[0], torch.full_like(x[0], (153 / 255 - 0.45) / 0.225))
    torch.testing.assert_close(x[1, :, 5], torch.full_like(x[1, :, 5], -0.45 / 0.225))  # frame order kept


@pytest.mark.parametrize("shape", [(2, 48, 64, 3), (1, 16, 48, 64, 3), (1, 32, 48, 64, 4)])
def test_non_clip_input_says_which_sampling_to_use(fast_extractor, shape):
    with pytest.raises(SamplingError, match="clips:32"):
        fast_extractor(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("size", [48, 0, 16, 64.0, True])
def test_size_must_be_a_multiple_of_32(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        create_extractor("slowfast", weights="random", size=size)


# ---- runner integration ---------------------------------------------------------------------


@pytest.mark.slow
def test_runner_feeds_clips_and_frames_from_one_decode_pass(tmp_path, fast_extractor, monkeypatch):
    path = make_video(tmp_path / "clip.mp4", 40, fps=25.0, noise=True)  # 1.6 s -> 2 clips
    vsfa = create_extractor("resnet50-vsfa", weights="random")
    passes = []
    original = Video.frames

    def counting_frames(self, indices=None, **kw):
        passes.append(np.asarray(indices))
        return original(self, indices, **kw)

    monkeypatch.setattr(Video, "frames", counting_frames)
    (motion, content), info = extract_video(
        path,
        [fast_extractor, vsfa],
        sampling=[ClipSampling(32), parse_sampling("fps:2")],
        batch_size=4,
    )
    assert len(passes) == 1 and np.array_equal(passes[0], np.arange(40))  # clip frames cover every frame
    assert motion.shape == (2 * 32, 512) and content.shape == (4, 4096)

    # The same numbers computed directly: decode, cut the clips, run the model, pool the fast map.
    monkeypatch.setattr(Video, "frames", original)
    with open_video(path) as video:
        frames = np.concatenate([batch for _, batch in video.frames()])
        plan = ClipSampling(32).clips(video.info, video.timestamps())
    np.testing.assert_array_equal(plan[:, 0], [0, 25])
    with torch.inference_mode():
        _, fast_map = fast_extractor.model(*pack_pathways(fast_extractor.preprocess(frames[plan])))
    steps = fast_map.permute(0, 2, 1, 3, 4).flatten(3).numpy()  # [clip, step, 256, h*w]
    want = np.concatenate([steps.mean(-1), steps.std(-1, ddof=1)], axis=-1).reshape(64, 512)
    np.testing.assert_allclose(motion, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


# ---- parity with the reference feature code (fixtures) ------------------------------------------

slowfast_fixture = load_fixture_script("make_slowfast_fixture")
simplevqa_fixture = load_fixture_script("make_simplevqa_fixture")
tcsvt_fixture = load_fixture_script("make_tcsvt_motion_fixture")


@pytest.fixture(scope="module")
def synthetic_state() -> dict[str, torch.Tensor]:
    """The weights every SlowFast fixture was made with, rebuilt from the key list."""
    keys = json.loads((FIXTURES / "slowfast_keys.json").read_text())["keys"]
    return slowfast_fixture.synthetic_state_dict([(k, tuple(shape)) for k, shape, _ in keys])


def _with_weights(extractor: Extractor, state: dict[str, torch.Tensor]) -> Extractor:
    # Loaded in place rather than through a 140 MB file (the file path is tested below).
    extractor.model.load_state_dict(state, strict=True)
    return extractor


def _info(num_frames: int, fps: float) -> VideoInfo:
    return VideoInfo(
        path="v.mp4",
        num_frames=num_frames,
        fps=fps,
        duration=num_frames / fps,
        width=1,
        height=1,
        size_bytes=1,
        mtime=0.0,
    )


def _assert_parity(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL_OF_SCALE * np.abs(want).max())


def test_slowfast_matches_simplevqa_with_pil_resize_and_floor_clips(synthetic_state):
    """SimpleVQA's own main() (fixture, --resize 64): same clips, same input, same features."""
    with np.load(FIXTURES / "simplevqa_parity.npz") as data:
        golden = {k: data[k] for k in data.files}
    frames = simplevqa_fixture.make_frames(int(golden["frames_seed"]), tuple(golden["frames_shape"]))
    np.testing.assert_array_equal(simplevqa_fixture.frames_checksum(frames), golden["frames_checksum"])
    plan = parse_sampling("clips:32:floor").clips(_info(len(frames), float(golden["fps"])))
    np.testing.assert_array_equal(plan[:, [0, 30, 31]], [[0, 30, 31], [30, 60, 60]])  # frozen tail: 60 twice
    extractor = _with_weights(
        create_extractor("slowfast", weights="random", size=int(golden["resize"]), resampler="pil"), synthetic_state
    )
    assert extractor.spec.resampler == "pil-bilinear"
    _assert_parity(extractor(frames[plan]), golden["features"][: len(plan)])
    # SimpleVQA then repeats its last clip up to 8 for KoNViD-1k: copies, not computed here.
    assert len(golden["features"]) == int(golden["min_clips"])
    np.testing.assert_array_equal(golden["features"][len(plan) :], np.repeat(golden["features"][-1:], 6, axis=0))


def test_default_torch_resize_is_close_to_simplevqas_pil_input_but_not_equal():
    """What remains different without resampler="pil": float32 antialiased resizing of the
    frames, measured here on the fixture's frames (normalised units; ~0.1 of 8-bit grey)."""
    frames = simplevqa_fixture.make_frames()[:32][None]
    pil = create_extractor("slowfast", weights="random", size=SMALL, resampler="pil").preprocess(frames)
    torch_input = create_extractor("slowfast", weights="random", size=SMALL).preprocess(frames)
    difference = (pil - torch_input).abs()
    assert 0 < difference.max() < 0.05 and difference.mean() < 0.01


@pytest.mark.parametrize("video", ["overlap", "short"])
def test_slowfast_fast_tcsvt_matches_tcsvt_motion_features(video, synthetic_state):
    """TCSVT-2022's get_features (fixture): 64-frame chunks, native 40 x 56 frames, per-step rows;
    "overlap" (100 frames) keeps 18 of the last chunk's 32 rows, "short" (20 frames) repeats frames."""
    with np.load(FIXTURES / "tcsvt_motion_parity.npz") as data:
        golden = {k: data[k] for k in data.files}
    frames = tcsvt_fixture.make_frames(int(golden[f"{video}_seed"]), tuple(golden[f"{video}_shape"]))
    np.testing.assert_array_equal(tcsvt_fixture.frames_checksum(frames), golden[f"{video}_checksum"])
    extractor = _with_weights(create_extractor("slowfast-fast-tcsvt", weights="random"), synthetic_state)
    plan = ClipSampling(32, "chunks").clips(_info(len(frames), 25.0))
    accumulator = extractor.accumulator(video_key=video)
    accumulator.consume(extractor, frames[plan], steps=plan)  # every chunk in one batch
    rows = accumulator.result()
    assert rows.shape == tuple(golden[f"{video}_rows_shape"])
    _assert_parity(rows[:, golden["columns"]], golden[f"{video}_sample"])
    np.testing.assert_allclose(
        rows.astype(np.float64).sum(axis=1),
        golden[f"{video}_row_sum"],
        rtol=RTOL,
        atol=ATOL_OF_SCALE * np.abs(rows).max() * rows.shape[1],
    )


class _FrameMeanExtractor(Extractor):
    """Stand-in clip extractor: one row per clip position, the mean of that frame's pixels."""

    def __init__(self):
        super().__init__(
            ExtractorSpec(
                name="frame-mean", version="0", dims=1, backbone="none", taps=(), pooling="mean", frames_per_step=32
            )
        )

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        return clips.reshape(clips.shape[0] * clips.shape[1], -1).mean(axis=1, keepdims=True).astype(np.float32)


@pytest.mark.parametrize("video", ["overlap", "two_chunks", "short"])
def test_new_frames_accumulator_keeps_the_reference_row_count(video):
    with np.load(FIXTURES / "tcsvt_motion_parity.npz") as data:
        shape, want_rows = tuple(data[f"{video}_shape"]), int(data[f"{video}_rows_shape"][0])
    frames = np.arange(shape[0], dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    plan = ClipSampling(32, "chunks").clips(_info(shape[0], 25.0))
    accumulator = NewFramesAccumulator()
    for step in plan:  # clip by clip, as the runner does with a batch of one clip
        accumulator.consume(_FrameMeanExtractor(), frames[step][None], steps=step[None])
    rows = accumulator.result()[:, 0]
    assert len(rows) == want_rows
    # Rows follow the frames: every other frame, then the last chunk's frames not yet covered.
    assert (np.diff(rows) >= 0).all() and rows[-1] == shape[0] - 1


def test_new_frames_accumulator_needs_the_steps():
    with pytest.raises(PipelineError, match="frame indices"):
        NewFramesAccumulator().consume(_FrameMeanExtractor(), np.zeros((1, 32, 2, 2, 3), np.uint8))


def test_runner_passes_the_chunk_frames_to_the_tcsvt_accumulator(tmp_path):
    """Through extract_video, with the stand-in extractor: the runner cuts clips:32:chunks and
    hands each batch's frame indices to the accumulator, which drops the overlap."""
    path = make_video(tmp_path / "clip.mp4", 70, fps=25.0, noise=True)  # chunk 0..63, then 6..69
    probe = _FrameMeanExtractor()
    probe.accumulator = lambda *, video_key="": NewFramesAccumulator()
    (rows,), info = extract_video(path, [probe], sampling=parse_sampling("clips:32:chunks"), batch_size=32)
    with open_video(path) as video:
        frames = np.concatenate([batch for _, batch in video.frames()])
    plan = ClipSampling(32, "chunks").clips(info)
    kept = np.concatenate([plan[0], plan[1][plan[1] > plan[0].max()]])
    np.testing.assert_array_equal(kept[-3:], [64, 66, 69])
    np.testing.assert_allclose(rows[:, 0], frames[kept].reshape(len(kept), -1).mean(axis=1), rtol=1e-6)


def test_tcsvt_extractor_spec_and_sampling():
    extractor = create_extractor("slowfast-fast-tcsvt", weights="random")
    spec, entry = extractor.spec, get_entry("slowfast-fast-tcsvt")
    assert spec.resize is None and spec.to_dict()["resize"] is None  # native resolution
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD  # PySlowFast's DATA defaults
    assert spec.dims == entry.dims == 512 and spec.frames_per_step == 32
    assert entry.default_sampling == "clips:32:chunks"
    assert sampling_for("slowfast-fast-tcsvt", "clips:32") == "clips:32:chunks"  # other policies refused
    assert sampling_for("slowfast-fast-tcsvt", "clips:32:chunks") == "clips:32:chunks"
    assert sampling_for("slowfast-fast-tcsvt", "uniform:16") == "clips:32:chunks"
    assert sampling_for("slowfast", "clips:32:floor") == "clips:32:floor"
    assert sampling_for("slowfast", "uniform:16") == "clips:32"
    with pytest.raises(SamplingError, match="clips:32:chunks"):
        extractor(np.zeros((2, 40, 56, 3), dtype=np.uint8))


def test_resampler_option_is_checked_and_recorded():
    with pytest.raises(ExtractorOptionError, match="resampler must be one of torch, pil"):
        create_extractor("slowfast", weights="random", size=SMALL, resampler="bicubic")
    torch_spec = create_extractor("slowfast-tokens", weights="random", size=SMALL).spec
    assert "resampler" not in torch_spec.to_dict()  # the default: specs (and set ids) as before the option
    pil_spec = create_extractor("slowfast-tokens", weights="random", size=SMALL, resampler="pil").spec
    assert pil_spec.to_dict()["resampler"] == "pil-bilinear"


# ---- weights ---------------------------------------------------------------------------------


def test_checkpoint_file_through_the_registry(checkpoint):
    path, state = checkpoint
    extractor = create_extractor("slowfast", weights=str(path), size=SMALL)
    assert extractor.spec.weights == {
        "source": "file",
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "container": "model_state",
        "num_tensors": 662,
    }
    loaded = extractor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_kinetics_weights_from_the_torch_cache(checkpoint):
    path, state = checkpoint
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "SLOWFAST_8x8_R50.pyth")
    os.makedirs(os.path.dirname(cached))
    os.symlink(path, cached)  # conftest gives every test an empty TORCH_HOME
    extractor = create_extractor("slowfast-fast", size=SMALL)  # default weights: kinetics
    identity = extractor.spec.weights
    assert identity["source"] == "pytorchvideo" and identity["url"] == KINETICS_URL
    assert identity["sha256"] == file_sha256(path) and "path" not in identity  # machine-independent
    assert torch.equal(extractor.model.state_dict()["blocks.6.proj.weight"], state["blocks.6.proj.weight"])


def test_kinetics_weights_missing_offline_say_where_to_put_them():
    with pytest.raises(WeightsUnavailableError) as excinfo:
        create_extractor("slowfast")
    message = str(excinfo.value)
    expected = os.path.join(torch.hub.get_dir(), "checkpoints", "SLOWFAST_8x8_R50.pyth")
    assert expected in message and KINETICS_URL in message and "--weights" in message


def test_hub_checkpoint_downloads_into_the_cache(tmp_path):
    source = tmp_path / "published" / "weights.pyth"
    source.parent.mkdir()
    source.write_bytes(b"not really weights")
    cached = HubCheckpoint(title="test weights", filename=source.name, url=source.as_uri()).resolve(
        allow_download=True
    )  # file:// : no network
    assert cached == Path(torch.hub.get_dir()) / "checkpoints" / "weights.pyth"
    assert cached.read_bytes() == b"not really weights"
    with pytest.raises(WeightsUnavailableError, match="cannot download test weights"):
        HubCheckpoint(title="test weights", filename="absent.pyth", url=(tmp_path / "absent.pyth").as_uri()).resolve(
            allow_download=True
        )


def test_checkpoint_that_does_not_fit_is_a_weights_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model_state": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="missing keys"):
        create_extractor("slowfast", weights=str(path), size=SMALL)
