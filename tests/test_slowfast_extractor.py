"""The SlowFast clip extractors: registry dims, SimpleVQA pooling, runner integration, weights.

A SlowFast forward of one 32 x 224 x 224 clip costs ~5 s on 2 CPU cores: only
``test_full_size_clip`` runs one; everything else uses ``size=64`` (2 x 2 stage-5 maps) or
pools synthetic maps without running the network.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import SamplingError, WeightsError, WeightsUnavailableError
from pipeline.extractors import create_extractor, get_entry
from pipeline.extractors.slowfast import (
    KINETICS_URL,
    clip_mean_features,
    fast_step_features,
    grid_tokens,
)
from pipeline.extractors.slowfast_model import SlowFastR50, pack_pathways
from pipeline.runner import extract_video
from pipeline.sampling import ClipSampling, parse_sampling
from pipeline.video import Video, open_video
from pipeline.weights import HubCheckpoint, file_sha256
from tests.helpers import make_video

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
    torch.testing.assert_close(clip_mean_features(slow_map, fast_map), _simplevqa_pool(SlowFastR50(), slow_map, fast_map))


def test_fast_step_features_layout():
    fast_map = torch.randn(2, 5, 3, 2, 4)  # [B, C, T, h, w]
    rows = fast_step_features(fast_map).numpy()
    assert rows.shape == (6, 10)
    maps = fast_map.numpy()
    for b in range(2):
        for t in range(3):
            cell = maps[b, :, t].reshape(5, -1)
            np.testing.assert_allclose(rows[b * 3 + t], np.concatenate([cell.mean(1), cell.std(1, ddof=1)]), rtol=1e-5, atol=1e-6)


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
        path, [fast_extractor, vsfa], sampling=[ClipSampling(32), parse_sampling("fps:2")], batch_size=4,
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


# ---- weights ---------------------------------------------------------------------------------

def test_checkpoint_file_through_the_registry(checkpoint):
    path, state = checkpoint
    extractor = create_extractor("slowfast", weights=str(path), size=SMALL)
    assert extractor.spec.weights == {
        "source": "file", "path": str(path.resolve()), "sha256": file_sha256(path),
        "container": "model_state", "num_tensors": 662,
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
    cached = HubCheckpoint(title="test weights", filename=source.name, url=source.as_uri()).resolve(allow_download=True)  # file:// : no network
    assert cached == Path(torch.hub.get_dir()) / "checkpoints" / "weights.pyth"
    assert cached.read_bytes() == b"not really weights"
    with pytest.raises(WeightsUnavailableError, match="cannot download test weights"):
        HubCheckpoint(title="test weights", filename="absent.pyth", url=(tmp_path / "absent.pyth").as_uri()).resolve(allow_download=True)


def test_checkpoint_that_does_not_fit_is_a_weights_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model_state": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="missing keys"):
        create_extractor("slowfast", weights=str(path), size=SMALL)
