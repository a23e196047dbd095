"""UNIQUE-style quality extractors: checkpoint layouts, parity with the reference models, weights
resolution, UNIQUE's test-time resize and A2INet's per-video PR crops.

Golden values come from UNIQUE's and TCSVT-2022's own ``BaseCNN`` (see
``fixtures/make_unique_fixture.py`` for how to regenerate them); the weights are rebuilt here
from the stored key lists with the fixture script's deterministic generator, so the reference
code is not needed to run these tests.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import WeightsError, WeightsUnavailableError
from pipeline.extractors import create_extractor
from pipeline.extractors.quality import UNIQUE_CHECKPOINT, CropPlan
from pipeline.weights import file_sha256

from .helpers import load_fixture_script

FIXTURES = Path(__file__).parent / "fixtures"
# Same ops in the same order as the reference: bit-identical with the same torch and thread
# count. Another thread count reorders conv reductions; the float32 error then scales with
# the activations (|max| ~110 at layer4; measured 1 vs 2 threads: 1.4e-5 on ResNet-50's |max| 40),
# hence an absolute tolerance relative to that scale.
RTOL, ATOL_OF_SCALE = 1e-4, 1e-5
TINY = np.random.default_rng(5).integers(0, 256, size=(2, 40, 56, 3), dtype=np.uint8)


fixture_lib = load_fixture_script("make_unique_fixture")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "unique_parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def frames(golden) -> np.ndarray:
    out = fixture_lib.make_frames(int(golden["frames_seed"]), tuple(golden["frames_shape"]))
    np.testing.assert_array_equal(fixture_lib.frames_checksum(out), golden["frames_checksum"])
    return out


def _state(golden, name: str) -> dict[str, torch.Tensor]:
    return fixture_lib.synthetic_state_dict([(k, tuple(s)) for k, s in json.loads(str(golden[name]))])


@pytest.fixture(scope="module")
def unique_state(golden) -> dict[str, torch.Tensor]:
    """UNIQUE's model.pt layout: ``module.backbone.*`` plus the head ``module.fc.*``."""
    return _state(golden, "unique_keys")


@pytest.fixture(scope="module")
def unique_file(unique_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unique") / "model.pt"
    torch.save(unique_state, path)
    return path


@pytest.fixture(scope="module")
def unique_model(unique_file):
    return create_extractor("unique", weights=str(unique_file))


def _assert_parity(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL_OF_SCALE * np.abs(want).max())


def test_reference_key_layouts_are_what_the_adapter_expects(golden):
    keys = dict((k, s) for k, s in json.loads(str(golden["unique_keys"])))
    assert keys["module.fc.weight"] == [2, 512 * 512] and keys["module.backbone.fc.weight"] == [1000, 512]
    assert all(k.startswith(("module.backbone.", "module.fc.")) for k in keys)
    li = dict((k, s) for k, s in json.loads(str(golden["li_keys"])))
    assert li["module.fc.weight"] == [2, 2048] and li["module.backbone.layer4.2.conv3.weight"] == [2048, 512, 1, 1]


def test_unique_model_pt_layout_matches_reference_features(unique_model, unique_file, frames, golden):
    got = unique_model(frames)
    assert got.shape == (2, 1920)
    _assert_parity(got, golden["unique_features"])
    weights = unique_model.spec.weights
    assert weights["source"] == "file" and weights["path"] == str(unique_file.resolve())
    assert weights["sha256"] == file_sha256(unique_file)
    assert weights["layout"] == "module.backbone.*"
    assert weights["dropped_keys"] == {"module.fc.weight": [2, 262144], "module.fc.bias": [2]}


def test_pyiqa_layout_without_module_prefix_loads_the_same(unique_state, frames, golden, tmp_path):
    path = tmp_path / "UNIQUE.pt"
    torch.save({k.removeprefix("module."): v for k, v in unique_state.items()}, path)
    extractor = create_extractor("unique", weights=str(path))
    _assert_parity(extractor(frames), golden["unique_features"])
    assert extractor.spec.weights["layout"] == "backbone.*"
    assert set(extractor.spec.weights["dropped_keys"]) == {"fc.weight", "fc.bias"}


def test_unknown_key_fails_with_its_name(unique_state, tmp_path):
    path = tmp_path / "extra.pt"
    torch.save({**unique_state, "module.representation.scale": torch.ones(1)}, path)
    with pytest.raises(WeightsError, match=r"1 unexpected keys \['module.representation.scale'\]"):
        create_extractor("unique", weights=str(path))


def test_missing_backbone_key_fails_with_its_name(unique_state, tmp_path):
    path = tmp_path / "missing.pt"
    torch.save({k: v for k, v in unique_state.items() if k != "module.backbone.layer3.1.bn2.running_var"}, path)
    with pytest.raises(WeightsError, match=r"1 missing keys \['layer3.1.bn2.running_var'\]"):
        create_extractor("unique", weights=str(path))


def test_mixed_prefixes_are_refused(unique_state, tmp_path):
    state = dict(unique_state)
    state["backbone.conv1.weight"] = state.pop("module.backbone.conv1.weight")
    path = tmp_path / "mixed.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="mixes 'module.'-prefixed and plain keys"):
        create_extractor("unique", weights=str(path))


@pytest.mark.slow
def test_default_weights_come_from_the_torch_cache(unique_file, monkeypatch, tmp_path, frames, golden):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = UNIQUE_CHECKPOINT.path
    assert cached == tmp_path / "hub" / "checkpoints" / "unique_model.pt"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(unique_file)
    extractor = create_extractor("unique")
    assert extractor.spec.weights["checkpoint"] == "UNIQUE's pretrained model.pt"
    assert extractor.spec.weights["sha256"] == file_sha256(unique_file)
    _assert_parity(extractor(frames), golden["unique_features"])


def test_default_weights_missing_say_where_to_get_and_put_them():
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor("unique")
    message = str(info.value)
    assert "github.com/zwx8981/UNIQUE" in message and str(UNIQUE_CHECKPOINT.path) in message
    assert "--weights imagenet" in message and "--weights /path/to/unique_model.pt" in message


def test_imagenet_weights_offline_raise_and_name_resnet34():
    with pytest.raises(WeightsUnavailableError, match=r"ResNet34_Weights\.IMAGENET1K_V1.*resnet34-b627a593\.pth"):
        create_extractor("unique", weights="imagenet")


@pytest.mark.parametrize(
    "name, enum_name",
    [
        ("unique", "ResNet34_Weights.IMAGENET1K_V1"),
        ("quality-resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    ],
)
def test_imagenet_choice_is_recorded_as_torchvision_weights(name, enum_name, monkeypatch):
    from torchvision.models import resnet34, resnet50

    from pipeline.extractors import backbones
    from pipeline.weights import ResolvedWeights

    def cached(member):  # stands in for the hub cache: the real file's hash cannot be faked
        with torch.random.fork_rng(devices=[]):
            state = (resnet34 if "34" in type(member).__name__ else resnet50)(weights=None).state_dict()
        return ResolvedWeights(state, {"source": "torchvision", "name": f"{type(member).__name__}.{member.name}"})

    monkeypatch.setattr(backbones, "torchvision_weights", cached)
    weights = create_extractor(name, weights="imagenet").spec.weights
    assert weights == {"source": "torchvision", "name": enum_name}


def test_adaptive_resize_only_when_both_sides_reach_768(unique_model):
    def shape(h, w):
        return tuple(unique_model.preprocess(np.zeros((1, h, w, 3), np.uint8)).shape[-2:])

    assert unique_model.spec.adaptive_resize == 768 and unique_model.spec.resize_short_side is None
    assert shape(40, 56) == (40, 56)
    assert shape(700, 1000) == (700, 1000)  # one side below 768: native resolution
    assert shape(800, 1000) == (768, 960)
    assert shape(1000, 800) == (960, 768)
    assert shape(770, 800) == (768, 797)  # 797.9 truncated, as torchvision's Resize(768)
    assert unique_model.spec.version == "2"  # version 1 rounded the long side (798) and resized after normalising


@pytest.fixture(scope="module")
def resize_golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "unique_resize_parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def large_frame(resize_golden) -> np.ndarray:
    frame = fixture_lib.make_frames(int(resize_golden["resize_frame_seed"]), tuple(resize_golden["resize_frame_shape"]))
    np.testing.assert_array_equal(fixture_lib.frames_checksum(frame), resize_golden["resize_frame_checksum"])
    return frame


def test_pil_resampler_input_is_uniques_test_transform_bit_for_bit(large_frame, resize_golden):
    """UNIQUE's own AdaptiveResize(768) + ToTensor + Normalize on a 770 x 800 frame (fixture):
    the same float32 tensor, bit for bit (sha256 of its bytes). The network on it is pinned by
    ``test_unique_model_pt_layout_matches_reference_features`` (a 768 px forward is too slow here)."""
    extractor = create_extractor("unique", weights="random", resampler="pil")
    assert extractor.spec.resampler == "pil-bilinear" and extractor.spec.to_dict()["resampler"] == "pil-bilinear"
    x = extractor.preprocess(large_frame)[0]
    assert tuple(x.shape) == tuple(resize_golden["resize_shape"])
    sample = x.flatten()[resize_golden["resize_sample_index"]].numpy()
    np.testing.assert_array_equal(sample, resize_golden["resize_sample"])
    np.testing.assert_allclose(x.double().sum(dim=(1, 2)).numpy(), resize_golden["resize_channel_sum"], rtol=1e-12)
    assert fixture_lib.tensor_digest(x) == str(resize_golden["resize_sha256"]), (
        "preprocessing differs from UNIQUE's test transform somewhere (the sample and sums agree); "
        "if Pillow's resampling changed (see the fixture's versions), regenerate the fixture"
    )


def test_default_resize_is_close_to_uniques_but_not_equal(large_frame, resize_golden):
    """What remains different without resampler="pil": float32 antialiased bilinear instead
    of PIL's 8-bit bilinear (same geometry)."""
    x = create_extractor("unique", weights="random").preprocess(large_frame)[0]
    assert tuple(x.shape) == tuple(resize_golden["resize_shape"])
    difference = np.abs(x.flatten()[resize_golden["resize_sample_index"]].numpy() - resize_golden["resize_sample"])
    assert 0 < difference.max() < 0.05


@pytest.mark.slow
def test_quality_resnet50_loads_tcsvt_training_checkpoint(golden, frames, tmp_path):
    """TCSVT-2022 saves a training checkpoint: weights under ``state_dict`` beside the optimizer
    state and numpy-scalar SRCC histories."""
    state = _state(golden, "li_keys")
    checkpoint = {
        "epoch": 8,
        "state_dict": state,
        "train_loss": [0.5, 0.25],
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "test_results_srcc": {"bid": [np.float64(0.8)], "clive": [np.float32(0.7)]},
    }
    path = tmp_path / "DataParallel-00008.pt"
    torch.save(checkpoint, path)
    extractor = create_extractor("quality-resnet50", weights=str(path))
    _assert_parity(extractor(frames), golden["li_features"])
    assert extractor.spec.weights["layout"] == "module.backbone.*"
    assert extractor.spec.weights["dropped_keys"] == {"module.fc.weight": [2, 2048], "module.fc.bias": [2]}


def test_numpy1_scalar_names_in_old_checkpoints_are_accepted(tmp_path):
    """Checkpoints pickled under numpy 1 name the scalar rebuilder ``numpy.core.multiarray``."""
    from pipeline.extractors.quality import _numpy_scalar_globals
    from pipeline.weights import load_checkpoint

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(1)}, "srcc": np.float64(0.5)}, buffer)
    path = tmp_path / "old.pt"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    with pytest.raises(WeightsError, match="pickled objects are refused"):
        load_checkpoint(path)
    with _numpy_scalar_globals():
        assert load_checkpoint(path)["srcc"] == 0.5


def test_li_default_weights_missing_name_the_tcsvt_repository():
    with pytest.raises(WeightsUnavailableError, match=r"zwx8981/TCSVT-2022-BVQA.*tcsvt2022_spatial\.pt"):
        create_extractor("quality-resnet50")


# --- A2INet PR crops -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pr_model(unique_file):
    return create_extractor("unique-pr", weights=str(unique_file), crop_size=24)


def test_crop_plan_is_deterministic_per_video_and_differs_between_videos():
    a1 = CropPlan.draw("video-a", seed=1, count=4)
    assert a1 == CropPlan.draw("video-a", seed=1, count=4)
    assert a1.fractions != CropPlan.draw("video-b", seed=1, count=4).fractions
    assert a1.fractions != CropPlan.draw("video-a", seed=2, count=4).fractions
    # Pinned: positions are provenance; a numpy or hashing change must not move them silently.
    plan = CropPlan.draw("3339962845", seed=20240501, count=4)
    assert plan.boxes(1080, 1920, size=768) == [(300, 1067, 768), (214, 814, 768), (77, 363, 768), (3, 898, 768)]


def test_small_frames_get_the_largest_square_crop_that_fits():
    plan = CropPlan.draw("3339962845", seed=20240501, count=4)
    # KoNViD-1k's 960x540 against A2INet's 768: 540x540 crops, still moving along the width
    assert plan.boxes(540, 960, size=768) == [(0, 389, 540), (0, 297, 540), (0, 132, 540), (0, 327, 540)]
    tall = plan.boxes(30, 20, size=768)
    assert all(side == 20 and left == 0 and 0 <= top <= 10 for top, left, side in tall)
    assert plan.boxes(768, 768, size=768) == [(0, 0, 768)] * 4


def test_pr_features_are_the_mean_over_the_videos_crops(pr_model, unique_model):
    boxes = pr_model.crop_plan("clip-1").boxes(40, 56, size=24)
    crops = np.concatenate([TINY[:, top : top + s, left : left + s] for top, left, s in boxes])  # [4 * B, 24, 24, 3]
    want = unique_model(crops).reshape(len(boxes), len(TINY), -1).mean(axis=0)
    np.testing.assert_allclose(pr_model(TINY, video_key="clip-1"), want, rtol=1e-5, atol=1e-5)


def test_pr_crops_are_identical_across_frames_and_batches_of_one_video(pr_model):
    same = np.repeat(TINY[:1], 2, axis=0)  # one picture twice: rows must agree exactly
    accumulator = pr_model.accumulator(video_key="clip-1")
    for start in range(2):  # the runner feeds batch by batch through the video's accumulator
        accumulator.consume(pr_model, same[start : start + 1])
    rows = accumulator.result()
    assert rows.shape == (2, 1920)
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_allclose(rows, pr_model(same, video_key="clip-1"), rtol=1e-5, atol=1e-5)


def test_pr_features_differ_between_videos_and_repeat_across_instances(pr_model, unique_file):
    a, b = pr_model(TINY, video_key="clip-1"), pr_model(TINY, video_key="clip-2")
    assert pr_model.crop_plan("clip-1") != pr_model.crop_plan("clip-2") and not np.allclose(a, b)
    again = create_extractor("unique-pr", weights=str(unique_file), crop_size=24)
    np.testing.assert_array_equal(again(TINY, video_key="clip-1"), a)


def test_interleaved_videos_keep_their_own_crops(pr_model):
    one = TINY[:1]
    first, second = pr_model.accumulator(video_key="clip-1"), pr_model.accumulator(video_key="clip-2")
    first.consume(pr_model, one)
    second.consume(pr_model, one)
    first.consume(pr_model, one)
    np.testing.assert_array_equal(first.result(), np.repeat(pr_model(one, video_key="clip-1"), 2, axis=0))
    np.testing.assert_array_equal(second.result(), pr_model(one, video_key="clip-2"))


def test_pr_spec_records_the_crop_rules(pr_model):
    crops = pr_model.spec.to_dict()["crops"]
    assert crops["count"] == 4 and crops["size"] == 24 and crops["seed"] == 20240501
    assert "min(size, H, W)" in crops["small_frames"]
    default = create_extractor("unique-pr", weights="random")
    assert default.spec.crops["size"] == 768 and default.spec.adaptive_resize is None
    out = default(TINY[:1])  # 40x56 frame: one 40x40 crop position range, still 1920 dims
    assert out.shape == (1, 1920) and np.isfinite(out).all()
