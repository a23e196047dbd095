"""Quality-aware CNN features: UNIQUE's ResNet-34 (A2INet's quality branch) and Li et al.'s ResNet-50.

Registered extractors (per frame, spatial mean and unbiased std of each tapped stage):

- ``unique`` (1920): ResNet-34 trained by UNIQUE (Zhang et al., TIP 2021, zwx8981/UNIQUE),
  layer1..layer4 -> (64+128+256+512) x 2, ordered ``[mu1, sd1, mu2, sd2, mu3, sd3, mu4, sd4]``.
  UNIQUE's test transform: the shorter side goes to 768 px only when both sides are >= 768
  (torchvision's ``Resize(768)`` geometry); ``resampler="pil"`` resizes the uint8 frame with
  PIL bilinear, bit-identical to UNIQUE's ``AdaptiveResize`` + ``ToTensor`` + ``Normalize``.
- ``unique-pr`` (1920): the same network on A2INet's PR crops: four square crops per frame
  of side ``min(768, H, W)`` (540 on 540p video, where the paper says 768), at positions
  drawn once per video, features averaged over the crops::

      frames [B, H, W, 3] -> normalise -> 4 crops at the video's positions [4B, 3, s, s]
        -> ResNet-34 layer1..4 -> mean+std per stage [4B, 1920] -> mean over crops [B, 1920]

- ``quality-resnet50`` (4096): the ResNet-50 that Li et al. (TCSVT 2022,
  zwx8981/TCSVT-2022-BVQA) trained the UNIQUE way; layer4 means then stds, native resolution.

Weights: the default is the published quality checkpoint, looked up by file name in the torch
hub cache (it cannot be downloaded automatically); ``imagenet`` gives torchvision's ImageNet
weights instead (recorded as such in the provenance), ``random[:SEED]`` is for tests, and a
path loads a checkpoint in either key layout of :func:`adapt_quality_checkpoint`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models import ResNet34_Weights, ResNet50_Weights, resnet34, resnet50

from ..errors import ExtractorOptionError, WeightsError
from ..weights import HubCheckpoint, register_checkpoint, unwrap_state_dict
from .backbones import build_backbone
from .base import ExtractorSpec, StackAccumulator, resampler_option, resized_size
from .registry import register_extractor
from .resnet import TappedMeanStdExtractor

STAGES = ("layer1", "layer2", "layer3", "layer4")
POOLING = "spatial mean+std (unbiased) per stage"
UNIQUE_TEST_SIDE = 768  # UNIQUE's AdaptiveResize(768) test transform
PR_CROP_SIZE = 768  # A2INet: four 768x768 patches per frame
PR_CROP_COUNT = 4
PR_CROP_SEED = 20240501  # fixed, so crop positions depend on the video id only
# Keys of the models' unused quality heads (UNIQUE: Linear(512*512, 2) after bilinear pooling;
# TCSVT-2022: Linear(2048, 2)), after the ``module.`` prefix is removed.
HEAD_KEYS = ("fc.weight", "fc.bias")


IMAGENET_ALTERNATIVE = "For ImageNet weights instead (not quality-aware; provenance records it), --weights imagenet. "
UNIQUE_CHECKPOINT = HubCheckpoint(
    filename="unique_model.pt",
    title="UNIQUE's pretrained model.pt",
    how_to_get=(
        "Download model.pt from the links in https://github.com/zwx8981/UNIQUE (README, "
        "'Pre-trained weights': Google Drive "
        "https://drive.google.com/file/d/18oPH4lALm8mSdZh3fWK97MVq9w3BbEua/view, or Baidu "
        "https://pan.baidu.com/s/1KKncQIoQcbxj7fQlSKUBIQ code yyev); pyiqa's UNIQUE.pt "
        "(the same weights without the 'module.' prefix) works too"
    ),
    alternative=IMAGENET_ALTERNATIVE,
)
LI_CHECKPOINT = HubCheckpoint(
    filename="tcsvt2022_spatial.pt",
    title="Li et al.'s spatial extractor DataParallel-00008.pt",
    how_to_get=(
        "Download DataParallel-00008.pt from the links in "
        "https://github.com/zwx8981/TCSVT-2022-BVQA (README, 'Feature extraction': Google Drive "
        "https://drive.google.com/file/d/1AyMrcPvSb53eEBMUJiXSNCw2nYiKy0TK/view, or Baidu "
        "https://pan.baidu.com/s/1fakwlrv2pqRbMZLeRFRz9g code wk9r)"
    ),
    alternative=IMAGENET_ALTERNATIVE,
)

UNIQUE_CHOICE, LI_CHOICE = "unique", "tcsvt2022"  # --weights names of the two checkpoints
register_checkpoint(UNIQUE_CHECKPOINT, used_by="unique, unique-pr, unique-layer1")
register_checkpoint(LI_CHECKPOINT, used_by="quality-resnet50")
register_checkpoint(
    HubCheckpoint.from_torchvision(ResNet34_Weights.IMAGENET1K_V1), used_by="unique, unique-pr (--weights imagenet)"
)
register_checkpoint(
    HubCheckpoint.from_torchvision(ResNet50_Weights.IMAGENET1K_V1), used_by="quality-resnet50 (--weights imagenet)"
)


@dataclass(frozen=True)
class QualitySpec(ExtractorSpec):
    """:class:`ExtractorSpec` plus two preprocessing rules the base spec cannot express.

    ``adaptive_resize``: UNIQUE's test transform, the shorter side to this many pixels only
    when both sides are at least that long (else native resolution); ``None`` skips it.
    ``crops``: A2INet PR crops (count, size, seed and the position and small-frame rules);
    empty for whole-frame extractors.
    """

    adaptive_resize: int | None = None
    crops: Mapping[str, Any] = field(default_factory=dict)


def adapt_quality_checkpoint(checkpoint: Any, *, path: str | Path) -> tuple[dict, dict]:
    """Map a UNIQUE-style checkpoint to torchvision ResNet keys.

    Accepted layouts (optionally under ``state_dict``, as TCSVT-2022 saves it):
    ``module.backbone.<key>`` (UNIQUE's ``model.pt``, TCSVT-2022's ``DataParallel-*.pt``) and
    ``backbone.<key>`` (pyiqa's ``UNIQUE.pt``), both -> ``<key>``; ``backbone.fc.*`` is
    torchvision's own classifier and loads into ``fc`` (unused by the taps). The quality head
    ``[module.]fc.weight`` / ``[module.]fc.bias`` is dropped by name. Any other key raises
    :class:`WeightsError`; missing keys are reported by the strict load that follows.

    Returns ``(state_dict, notes)``; ``notes`` (layout, dropped keys with shapes) go into the
    weights' provenance.
    """
    state = unwrap_state_dict(checkpoint, path=path)
    prefixed = [key.startswith("module.") for key in state]
    if all(prefixed):
        layout, strip = "module.backbone.*", len("module.")
    elif not any(prefixed):
        layout, strip = "backbone.*", 0
    else:
        raise WeightsError(
            f"{path}: mixes 'module.'-prefixed and plain keys, e.g. "
            f"{[k for k, p in zip(state, prefixed) if p][:2]} and {[k for k, p in zip(state, prefixed) if not p][:2]}"
        )
    mapped, dropped, unexpected = {}, {}, []
    for key, value in state.items():
        name = key[strip:]
        if name in HEAD_KEYS:
            dropped[key] = list(value.shape)
        elif name.startswith("backbone."):
            mapped[name[len("backbone.") :]] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise WeightsError(
            f"{path}: {len(unexpected)} unexpected keys {sorted(unexpected)[:10]}. Expected a UNIQUE-style "
            f"checkpoint: 'module.backbone.*' (UNIQUE model.pt, TCSVT-2022) or 'backbone.*' (pyiqa), "
            f"plus the unused head {'/'.join(HEAD_KEYS)}."
        )
    return mapped, {"layout": layout, "dropped_keys": dropped}


def _numpy_scalar_globals():
    """Allow numpy scalars (and their dtypes) in ``weights_only`` loading.

    Training checkpoints keep numpy scalars beside the weights (TCSVT-2022 stores its SRCC
    history); rebuilding a scalar runs no code, so these are allowed instead of refusing
    the whole file. Both the numpy 2 and the numpy 1 module names are accepted; a dtype is
    rebuilt into its class (``Float64DType`` ...), hence the common numeric ones.
    """
    scalar = np.float64(0).__reduce__()[0]
    dtype_classes = [type(np.dtype(code)) for code in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u1", "b1")]
    return torch.serialization.safe_globals(
        [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]
    )


def build_quality_backbone(
    constructor: Callable[..., torch.nn.Module], *, weights: str, named: HubCheckpoint, choice: str, imagenet
) -> tuple[torch.nn.Module, dict]:
    """Resolve ``weights`` (named checkpoint, ``imagenet``, ``random[:SEED]`` or a path) for a
    UNIQUE-style backbone. Returns the frozen model and the weights identity, which for a
    checkpoint file also names its key layout and the head keys that were dropped."""
    notes: dict = {}

    def adapt(checkpoint, path):
        state, found = adapt_quality_checkpoint(checkpoint, path=path)
        notes.update(found)
        return state

    if weights == choice:
        path = str(named.resolve())
        notes["checkpoint"] = named.title
    else:
        path = weights
    with _numpy_scalar_globals():
        model, identity = build_backbone(
            constructor, weights=path, pretrained={"imagenet": imagenet}, adapt_checkpoint=adapt
        )
    return model, {**identity, **notes}


class QualityExtractor(TappedMeanStdExtractor):
    """A tapped mean+std CNN with UNIQUE's optional test-time resize (``spec.adaptive_resize``)."""

    spec: QualitySpec

    def resize_target(self, height: int, width: int) -> tuple[int, int] | None:
        """UNIQUE's ``AdaptiveResize``: the shorter side to ``spec.adaptive_resize`` only when
        both sides are at least that long (torchvision ``Resize`` geometry), else no resize."""
        side = self.spec.adaptive_resize
        if side is None or min(height, width) < side:
            return super().resize_target(height, width)
        return resized_size(height, width, side)


@dataclass(frozen=True)
class CropPlan:
    """One video's crop positions, drawn once: ``fractions`` are (vertical, horizontal) in [0, 1).

    Drawn from ``PCG64(SeedSequence([seed, sha256(video_key) as an integer]))`` (``random``,
    ``count`` x 2 doubles), so they depend on the seed and the video id only, not on the
    process or the order in which videos are processed.
    """

    video_key: str
    seed: int
    fractions: tuple[tuple[float, float], ...]

    @classmethod
    def draw(cls, video_key: str, *, seed: int, count: int) -> CropPlan:
        key = int.from_bytes(hashlib.sha256(video_key.encode("utf-8")).digest(), "big")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, key])))
        return cls(video_key, seed, tuple((fy, fx) for fy, fx in rng.random((count, 2)).tolist()))

    def boxes(self, height: int, width: int, *, size: int) -> list[tuple[int, int, int]]:
        """``(top, left, side)`` of each crop in a ``height`` x ``width`` frame.

        ``side = min(size, height, width)``: frames smaller than the crop (KoNViD-1k is
        960x540 against A2INet's 768) give the largest square crop that fits, never padding,
        which would add flat borders to a quality measure. ``top = floor(fy * (height - side + 1))``,
        likewise ``left``, so every allowed position is reachable.
        """
        side = min(size, height, width)
        return [(int(fy * (height - side + 1)), int(fx * (width - side + 1)), side) for fy, fx in self.fractions]


class PRCropExtractor(QualityExtractor):
    """A2INet PR crops: features averaged over ``spec.crops["count"]`` square crops per frame.

    The crop positions belong to the video: ``extractor(frames, video_key=...)`` uses that
    video's :class:`CropPlan`; the per-video :meth:`accumulator` the runner creates passes its
    video's key on every batch, so all frames of a video share one plan.
    """

    def crop_plan(self, video_key: str) -> CropPlan:
        """The crop positions of video ``video_key`` (deterministic)."""
        return CropPlan.draw(video_key, seed=self.spec.crops["seed"], count=self.spec.crops["count"])

    def accumulator(self, *, video_key: str = "") -> CropPlanAccumulator:
        return CropPlanAccumulator(video_key)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, *, video_key: str = "") -> np.ndarray:
        """``uint8 [B, H, W, 3]`` -> float32 ``[B, dims]``, crops at ``video_key``'s positions."""
        return self.forward_crops(self.preprocess(frames), self.crop_plan(video_key)).float().cpu().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, dims]`` with the crops of video key ``""``."""
        return self.forward_crops(x, self.crop_plan(""))

    def forward_crops(self, x: torch.Tensor, plan: CropPlan) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, dims]``: the mean of the features of ``plan``'s crops."""
        boxes = plan.boxes(x.shape[-2], x.shape[-1], size=self.spec.crops["size"])
        crops = torch.cat([x[..., top : top + side, left : left + side] for top, left, side in boxes])  # [K*B, 3, s, s]
        feats = super().forward(crops)
        return feats.view(len(boxes), x.shape[0], -1).mean(dim=0)


class CropPlanAccumulator(StackAccumulator):
    """Keeps every frame's row; feeds each batch with its video's key (hence its crop plan)."""

    def __init__(self, video_key: str):
        super().__init__()
        self.video_key = video_key

    def consume(self, extractor: PRCropExtractor, batch: np.ndarray, *, steps: np.ndarray | None = None) -> None:
        self.add(extractor(batch, video_key=self.video_key))


WEIGHT_CHOICES_UNIQUE = (UNIQUE_CHOICE, "imagenet", "random[:SEED]", "PATH")
WEIGHT_CHOICES_LI = (LI_CHOICE, "imagenet", "random[:SEED]", "PATH")


def _unique(
    name: str,
    extractor_cls: type,
    *,
    weights: str,
    device: str,
    version: str,
    taps: tuple[str, ...] = STAGES,
    dims: int = 1920,
    **rules,
) -> QualityExtractor:
    """ResNet-34 ``taps`` (default layer1..4) with UNIQUE's weights resolution; ``rules``:
    :class:`QualitySpec` fields."""
    backbone, identity = build_quality_backbone(
        resnet34,
        weights=weights,
        named=UNIQUE_CHECKPOINT,
        choice=UNIQUE_CHOICE,
        imagenet=ResNet34_Weights.IMAGENET1K_V1,
    )
    spec = QualitySpec(
        name=name,
        version=version,
        dims=dims,
        backbone="resnet34",
        taps=taps,
        pooling=POOLING,
        weights=identity,
        **rules,
    )
    return extractor_cls(spec, backbone, device=device)


@register_extractor(
    "unique",
    dims=1920,
    weights_choices=WEIGHT_CHOICES_UNIQUE,
    default_weights=UNIQUE_CHOICE,
    description="UNIQUE ResNet-34 layer1..4 mean+std (A2INet quality branch, whole frame)",
)
def build_unique(*, weights: str, device: str = "cpu", resampler: str = "torch") -> QualityExtractor:
    """``resampler="pil"``: frames of 768 px and more are resized as UNIQUE's test transform
    does (PIL bilinear on the uint8 frame); ``"torch"`` (default) resizes float32 tensors.

    Version 2: torchvision's resize geometry (long side truncated) and the resize before the
    normalisation (version 1 rounded the long side and resized the normalised frame)."""
    return _unique(
        "unique",
        QualityExtractor,
        weights=weights,
        device=device,
        version="2",
        adaptive_resize=UNIQUE_TEST_SIDE,
        resampler=resampler_option(resampler, reference="pil-bilinear"),
    )


@register_extractor(
    "unique-layer1",
    dims=128,
    weights_choices=WEIGHT_CHOICES_UNIQUE,
    default_weights=UNIQUE_CHOICE,
    description="UNIQUE ResNet-34 layer1 mean+std only: low-level statistics (sharpness, noise, blocking) that "
    "respond to distortions even with random weights (vqa demo)",
)
def build_unique_layer1(*, weights: str, device: str = "cpu", resampler: str = "torch") -> QualityExtractor:
    """``unique``'s first stage alone (``[mu1, sd1]``, its first 128 features), preprocessed
    the same way. With random weights on the demo dataset, ``vqa demo`` reports SROCC 0.87
    with it; the same SVR on all four stages scored 0.11, their deeper random features
    burying the low-level ones (flows/demo.py)."""
    return _unique(
        "unique-layer1",
        QualityExtractor,
        weights=weights,
        device=device,
        version="2",
        taps=STAGES[:1],
        dims=128,
        adaptive_resize=UNIQUE_TEST_SIDE,
        resampler=resampler_option(resampler, reference="pil-bilinear"),
    )


@register_extractor(
    "unique-pr",
    dims=1920,
    weights_choices=WEIGHT_CHOICES_UNIQUE,
    default_weights=UNIQUE_CHOICE,
    description="UNIQUE ResNet-34 layer1..4 mean+std, mean over 4 per-video 768x768 crops (A2INet PR)",
)
def build_unique_pr(
    *, weights: str, device: str = "cpu", crop_size: int = PR_CROP_SIZE, crop_seed: int = PR_CROP_SEED
) -> PRCropExtractor:
    """``crop_size``/``crop_seed`` default to A2INet's 768 and our fixed seed (tests shrink the crops)."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
        raise ExtractorOptionError(f"crop_size must be a positive number of pixels, got {crop_size!r}")
    crops = {
        "count": PR_CROP_COUNT,
        "size": crop_size,
        "seed": crop_seed,
        "reduce": "mean over crops",
        "positions": "per video: fractions from PCG64(SeedSequence([seed, int(sha256(video_id))])).random((count, 2)); "
        "offset = floor(fraction * (length - side + 1)); identical for all frames",
        "small_frames": "side = min(size, H, W): the largest square that fits, no padding",
    }
    return _unique("unique-pr", PRCropExtractor, weights=weights, device=device, version="1", crops=crops)


@register_extractor(
    "quality-resnet50",
    dims=4096,
    weights_choices=WEIGHT_CHOICES_LI,
    default_weights=LI_CHOICE,
    description="Li et al. TCSVT-2022 quality-aware ResNet-50 layer4 mean+std (native resolution)",
)
def build_quality_resnet50(*, weights: str, device: str = "cpu") -> QualityExtractor:
    backbone, identity = build_quality_backbone(
        resnet50, weights=weights, named=LI_CHECKPOINT, choice=LI_CHOICE, imagenet=ResNet50_Weights.IMAGENET1K_V1
    )
    spec = QualitySpec(
        name="quality-resnet50",
        version="1",
        dims=4096,
        backbone="resnet50",
        taps=("layer4",),
        pooling=POOLING,
        weights=identity,
    )
    return QualityExtractor(spec, backbone, device=device)
