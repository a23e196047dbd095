"""Registry, resize and crop geometry (against torchvision), pooling, the ResNet-50 extractors and
weight resolution (random weights, no network)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import ResNet50_Weights, resnet50

from pipeline.errors import (
    ExtractorOptionError,
    PipelineError,
    UnknownExtractorError,
    WeightsError,
    WeightsUnavailableError,
)
from pipeline.extractors import EXTRACTORS, create_extractor, get_entry, list_extractors, register_extractor
from pipeline.extractors.base import center_crop_box, pil_resize_and_crop, resize_and_crop, resized_size
from pipeline.extractors.pooling import mean_std_features, spatial_mean_std
from pipeline.weights import file_sha256, torchvision_weights
from vqa_core.errors import DuplicateRegistrationError
from vqa_core.registry import Registry

FRAMES = np.random.default_rng(0).integers(0, 256, size=(2, 64, 80, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("entry", list_extractors(), ids=lambda e: e.name)
def test_every_registered_extractor_gives_its_declared_dims(entry):
    extractor = create_extractor(entry.name, weights="random")
    steps = extractor.spec.frames_per_step
    # Clip extractors (frames_per_step > 1) take [B, L, H, W, 3]: one clip of the first frame.
    out = extractor(FRAMES if steps == 1 else np.repeat(FRAMES[:1, None], steps, axis=1))
    assert out.shape[1] == entry.dims == extractor.spec.dims
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert extractor.spec.weights["source"] == "random" and "RANDOM" in extractor.spec.weights["warning"]


def test_unknown_extractor_suggests_close_names():
    with pytest.raises(UnknownExtractorError, match="Did you mean resnet50") as caught:
        get_entry("resnet-50")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, PipelineError)
    assert "slowfast-fast-tcsvt" in str(caught.value)  # every registered name is listed
    with pytest.raises(UnknownExtractorError, match="unknown extractor 'nope'"):
        create_extractor("nope")


def test_registry_is_the_shared_registry_with_patterns_and_no_duplicates():
    assert isinstance(EXTRACTORS, Registry) and EXTRACTORS.kind == "extractor"
    assert [e.name for e in list_extractors("slowfast*")] == [
        "slowfast",
        "slowfast-fast",
        "slowfast-fast-tcsvt",
        "slowfast-tokens",
    ]
    assert [e.name for e in list_extractors()] == EXTRACTORS.names() and "unique-pr" in EXTRACTORS
    with pytest.raises(DuplicateRegistrationError, match="extractor 'resnet50' is registered twice"):
        register_extractor("resnet50", dims=1, description="again", weights_choices=("x",), default_weights="x")(
            lambda **kw: None
        )
    assert get_entry("resnet50").dims == 7680  # the original entry stays


def test_override_replaces_an_entry_for_a_with_block_only():
    original = get_entry("resnet50")
    stand_in = dataclasses.replace(original, dims=3)
    with EXTRACTORS.override("resnet50", stand_in), EXTRACTORS.override("probe", stand_in):
        assert get_entry("resnet50") is stand_in and get_entry("probe") is stand_in
    assert get_entry("resnet50") is original and "probe" not in EXTRACTORS


def test_spatial_mean_std_is_unbiased_and_1x1_maps_have_zero_std():
    fmap = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    mean, std = spatial_mean_std(fmap)
    flat = fmap.numpy().reshape(2, 3, -1)
    np.testing.assert_allclose(mean.numpy(), flat.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), flat.std(-1, ddof=1), rtol=1e-6)
    assert torch.equal(spatial_mean_std(torch.ones(1, 4, 1, 1))[1], torch.zeros(1, 4))


def test_mean_std_features_order_is_stage_by_stage():
    a, b = torch.randn(1, 2, 3, 3), torch.randn(1, 4, 2, 2)
    out = mean_std_features([a, b])
    expected = torch.cat([a.mean((2, 3)), a.flatten(2).std(2), b.mean((2, 3)), b.flatten(2).std(2)], 1)
    torch.testing.assert_close(out, expected)


def _vsfa_style_reference(model, x):
    """VSFA's CNNfeatures.py ResNet50 pooling, written out: run the children up to layer4, then
    adaptive_avg_pool2d mean and torch.std over the flattened map, means then stds."""
    for name, module in model.named_children():
        x = module(x)
        if name == "layer4":
            mean = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            std = torch.std(x.view(x.size(0), x.size(1), -1, 1), dim=2, keepdim=True)
            return torch.cat((mean, std), 1).squeeze(-1).squeeze(-1)


@pytest.mark.slow
def test_resnet50_vsfa_matches_vsfa_pooling_on_the_same_weights(tmp_path):
    torch.manual_seed(3)
    reference = resnet50(weights=None).eval()
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    ours = create_extractor("resnet50-vsfa", weights=str(path))
    assert ours.spec.weights == {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
    got = ours(FRAMES)
    with torch.no_grad():
        want = _vsfa_style_reference(reference, ours.preprocess(FRAMES)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50-vsfa", "quality-resnet50", "resnet50"])
def test_native_input_is_totensor_normalize_bit_for_bit(name):
    """VSFA's CNNfeatures.py and TCSVT-2022's CNNfeatures_Spatial.py feed each decoded frame
    through ToTensor + Normalize(ImageNet) at native resolution: the same float32 tensor."""
    reference = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    frames = np.random.default_rng(2).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    x = create_extractor(name, weights="random").preprocess(frames)
    assert torch.equal(x, torch.stack([reference(frame) for frame in frames]))


def test_resnet50_default_taps_all_four_stages(tmp_path):
    extractor = create_extractor("resnet50", weights="random:1")
    assert extractor.spec.taps == ("layer1", "layer2", "layer3", "layer4")
    out = extractor(FRAMES)
    # stage boundaries: 256, 512, 1024, 2048 channels, each [mean, std]
    x = extractor.preprocess(FRAMES)
    with torch.no_grad():
        l1 = extractor.model(x)["layer1"]
    np.testing.assert_allclose(out[:, :256], l1.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 256:512], l1.flatten(2).std(2).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_random_weights_are_seeded_and_distinct_per_seed():
    a = create_extractor("resnet50-vsfa", weights="random:5")(FRAMES)
    b = create_extractor("resnet50-vsfa", weights="random:5")(FRAMES)
    c = create_extractor("resnet50-vsfa", weights="random:6")(FRAMES)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_imagenet_weights_missing_offline_says_how_to_provide_them():
    with pytest.raises(WeightsUnavailableError, match=r"resnet50-0676ba61\.pth.*--weights"):
        create_extractor("resnet50", weights="imagenet")


@pytest.mark.slow
def test_cached_imagenet_file_is_checked_against_its_published_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(resnet50(weights=None).state_dict(), cached)
    with pytest.raises(WeightsError, match="does not match its published checksum"):
        torchvision_weights(ResNet50_Weights.IMAGENET1K_V1, allow_download=False)


@pytest.mark.slow
def test_cached_file_with_matching_hash_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = resnet50(weights=None).state_dict()
    staging = tmp_path / "x.pth"
    torch.save(state, staging)
    prefix = file_sha256(staging)[:8]
    # a weights enum stand-in whose published name carries this file's hash prefix
    fake = type("FakeWeights", (), {"url": f"https://example.invalid/resnet50-{prefix}.pth", "name": "FAKE"})()
    cached = tmp_path / "hub" / "checkpoints" / f"resnet50-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    staging.rename(cached)
    resolved = torchvision_weights(fake, allow_download=False)
    assert resolved.identity["sha256"].startswith(prefix) and resolved.identity["source"] == "torchvision"
    assert set(resolved.state_dict) == set(state)


@pytest.mark.slow
def test_mismatched_state_dict_fails_clearly(tmp_path):
    state = resnet50(weights=None).state_dict()
    state["layer1.0.conv1.weightx"] = state.pop("layer1.0.conv1.weight")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing keys \['layer1.0.conv1.weight'\]"):
        create_extractor("resnet50", weights=str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(resnet50(weights=None), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="pickled objects are refused"):
        create_extractor("resnet50", weights=str(path))


def test_resize_and_crop_short_side_and_centre():
    x = torch.arange(1 * 1 * 4 * 8, dtype=torch.float32).reshape(1, 1, 4, 8)
    assert resize_and_crop(x, short_side=8, crop=None).shape[-2:] == (8, 16)
    crop = resize_and_crop(x, short_side=None, crop=4)
    torch.testing.assert_close(crop, x[..., :, 2:6])


def test_geometry_of_fmc_on_a_540p_frame():
    """The issue's example: 960 x 540 -> Resize(338) -> 600 x 338 (600.9 truncated) -> CenterCrop(299)
    at top round(19.5) = 20, left round(150.5) = 150 (Python's round, half to even)."""
    assert resized_size(540, 960, 338) == (338, 600) and resized_size(960, 540, 338) == (600, 338)
    assert center_crop_box(338, 600, 299) == (20, 150, 299, 299)
    assert center_crop_box(5, 6, 8) == (0, 0, 5, 6)  # a side shorter than the crop stays whole


# (height, width, short side, crop): the odd sizes; 17 x 1001 both ways round.
ODD_SIZES = [(540, 960, 338, 299), (359, 641, 338, 299), (1001, 17, 8, 5), (17, 1001, 8, 5), (64, 64, 48, 47)]


@pytest.mark.parametrize("height, width, short_side, crop", ODD_SIZES)
def test_float_resize_and_crop_equal_torchvision_exactly(height, width, short_side, crop):
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    reference = transforms.Compose([transforms.Resize(short_side), transforms.CenterCrop(crop)])
    assert resized_size(height, width, short_side) == tuple(transforms.Resize(short_side)(x).shape[-2:])
    assert torch.equal(resize_and_crop(x, short_side=short_side, crop=crop), reference(x))


@pytest.mark.parametrize("height, width, short_side, crop", ODD_SIZES)
@pytest.mark.parametrize(
    "resampler, interpolation",
    [
        ("pil-bilinear", transforms.InterpolationMode.BILINEAR),
        ("pil-bicubic", transforms.InterpolationMode.BICUBIC),
    ],
)
def test_pil_resize_and_crop_equal_torchvision_on_pil_images(height, width, short_side, crop, resampler, interpolation):
    frames = np.random.default_rng(height * width).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    reference = transforms.Compose([transforms.Resize(short_side, interpolation), transforms.CenterCrop(crop)])
    got = pil_resize_and_crop(frames, size=resized_size(height, width, short_side), crop=crop, resampler=resampler)
    want = np.stack([np.asarray(reference(Image.fromarray(frame))) for frame in frames])
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_resnet50_pr_option_resizes_to_a_540_short_side():
    """A2INet PR: semantic frames resized so that min(H, W) = 540, aspect ratio kept, up or down."""
    default = create_extractor("resnet50", weights="random:1")
    pr = create_extractor("resnet50", weights="random:1", short_side=540)
    frames = np.random.default_rng(1).integers(0, 256, (1, 600, 1000, 3), dtype=np.uint8)
    assert pr.preprocess(frames).shape[-2:] == (540, 900) and default.preprocess(frames).shape[-2:] == (600, 1000)
    assert pr.preprocess(frames[:, :300, :400]).shape[-2:] == (540, 720)
    assert pr.spec.resize_short_side == 540 and pr.spec.to_dict()["resize_short_side"] == 540
    assert "resampler" not in default.spec.to_dict()  # unchanged default spec: unchanged feature-set id
    pil = create_extractor("resnet50", weights="random:1", short_side=540, resampler="pil")
    assert pil.spec.resampler == "pil-bilinear"
    assert (pil.preprocess(frames) - pr.preprocess(frames)).abs().max() < 0.05


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnet50", {"short_side": 0}, "short_side must be a positive"),
        ("resnet50", {"resampler": "nearest"}, "resampler must be one of torch, pil"),
        ("inception-gram", {"resampler": "PIL"}, "resampler must be one of"),
        ("unique", {"resampler": "lanczos"}, "resampler must be one of"),
        ("unique-pr", {"crop_size": 0}, "crop_size must be a positive"),
    ],
)
def test_bad_builder_options_are_option_errors(name, options, message):
    with pytest.raises(ExtractorOptionError, match=message) as caught:
        create_extractor(name, weights="random", **options)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PipelineError)


def test_vqa_weights_lists_missing_checkpoints_and_marks_present_ones(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "[ ] ResNet50_Weights.IMAGENET1K_V1" in out and "how to get it" in out
    assert "resnet50-vsfa" in out and "unique_model.pt" in out
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "unique_model.pt").write_bytes(b"x")
    assert main(["weights"]) == 0
    assert "[x] UNIQUE's pretrained model.pt" in capsys.readouterr().out
