"""ResNet-50 semantic features (A2INet spatial semantic-aware branch; VSFA).

Per frame and tapped stage: spatial mean and unbiased std, concatenated stage by stage.
A2INet (default): layer1..layer4 -> (256+512+1024+2048) x 2 = 7680 dims.
VSFA: layer4 only -> 2048 means then 2048 stds = 4096 dims. Both at native resolution by
default; ``resnet50`` takes ``short_side=540`` for A2INet's PR input ("the resized frame is
set to min(H, W) = 540 while maintaining the aspect ratio": every frame, up or down, with
torchvision's ``Resize(540)`` geometry), recorded in the spec's ``resize_short_side``.
"""

from __future__ import annotations

import torch
from torchvision.models import ResNet50_Weights, resnet50

from ..errors import ExtractorOptionError
from ..weights import HubCheckpoint, register_checkpoint
from .backbones import build_backbone
from .base import Extractor, ExtractorSpec, resampler_option, tapped_model
from .pooling import mean_std_features
from .registry import register_extractor

# torchvision's V1 weights are what the deprecated pretrained flag gave the VSFA reference code.
RESNET50_PRETRAINED = {"imagenet": ResNet50_Weights.IMAGENET1K_V1}
WEIGHT_CHOICES = ("imagenet", "random[:SEED]", "PATH")
register_checkpoint(HubCheckpoint.from_torchvision(RESNET50_PRETRAINED["imagenet"]), used_by="resnet50, resnet50-vsfa")


class TappedMeanStdExtractor(Extractor):
    """A frozen CNN whose named stages are pooled to ``[mean, std]`` per channel."""

    def __init__(self, spec: ExtractorSpec, backbone: torch.nn.Module, *, device="cpu"):
        super().__init__(spec, device=device)
        self.model = tapped_model(backbone, spec.taps).to(self.device).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, dims]``."""
        maps = self.model(x)
        return mean_std_features([maps[tap] for tap in self.spec.taps])


A2INET_PR_SHORT_SIDE = 540  # A2INet PR: semantic frames resized to min(H, W) = 540


def _resnet50(
    name: str,
    taps: tuple[str, ...],
    dims: int,
    *,
    weights: str,
    device: str,
    short_side: int | None = None,
    resampler: str | None = None,
) -> Extractor:
    if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1):
        raise ExtractorOptionError(f"short_side must be a positive number of pixels or None, got {short_side!r}")
    backbone, identity = build_backbone(resnet50, weights=weights, pretrained=RESNET50_PRETRAINED)
    spec = ExtractorSpec(
        name=name,
        version="1",
        dims=dims,
        backbone="resnet50",
        taps=taps,
        pooling="spatial mean+std (unbiased) per stage",
        weights=identity,
        resize_short_side=short_side,
        resampler=resampler if short_side is not None else None,
    )
    return TappedMeanStdExtractor(spec, backbone, device=device)


@register_extractor(
    "resnet50",
    dims=7680,
    weights_choices=WEIGHT_CHOICES,
    default_weights="imagenet",
    description="ResNet-50 layer1..4 mean+std (A2INet semantic branch; short_side=540 for PR)",
)
def build_resnet50(
    *, weights: str, device: str = "cpu", short_side: int | None = None, resampler: str = "torch"
) -> Extractor:
    """``short_side``: ``None`` (native resolution, A2INet FR) or the shorter side every frame
    is resized to (540: A2INet PR, :data:`A2INET_PR_SHORT_SIDE`). ``resampler``: ``"torch"``
    or ``"pil"`` (PIL bilinear on uint8; A2INet publishes no code, so neither is "the
    reference"); ignored without ``short_side``."""
    return _resnet50(
        "resnet50",
        ("layer1", "layer2", "layer3", "layer4"),
        7680,
        weights=weights,
        device=device,
        short_side=short_side,
        resampler=resampler_option(resampler, reference="pil-bilinear"),
    )


@register_extractor(
    "resnet50-vsfa",
    dims=4096,
    weights_choices=WEIGHT_CHOICES,
    default_weights="imagenet",
    description="ResNet-50 layer4 mean+std (VSFA content-aware features)",
)
def build_resnet50_vsfa(*, weights: str, device: str = "cpu") -> Extractor:
    return _resnet50("resnet50-vsfa", ("layer4",), 4096, weights=weights, device=device)
