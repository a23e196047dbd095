"""The extractor abstraction: a frozen spec plus one call, frames in, features out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that determines an extractor's output; stored as provenance with the features.

    ``resize_short_side``/``crop``: ``None`` means native resolution (VSFA feeds full frames).
    ``weights`` is the identity of the weights (source, name or file sha256, or random seed).
    Bump ``version`` whenever the computation changes, so old and new features never mix.
    """

    name: str
    version: str
    dims: int
    backbone: str
    taps: tuple[str, ...]
    pooling: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_short_side: int | None = None
    crop: int | None = None
    frames_per_step: int = 1
    weights: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        return json_safe(dataclasses.asdict(self))


def json_safe(value):
    """Recursively turn tuples into lists and mappings into dicts so values survive JSON."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Extractor:
    """Base class. Subclasses implement ``forward(x: [B, 3, H, W] float) -> [B, dims]``.

    ``__call__`` takes decoded frames ``uint8 [B, H, W, 3]`` (RGB) and returns float32
    ``[B, dims]`` numpy features, one row per frame.
    """

    spec: ExtractorSpec

    def __init__(self, spec: ExtractorSpec, *, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = resolve_device(device)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> normalised float ``[B, 3, h, w]`` on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = resize_and_crop(x, short_side=self.spec.resize_short_side, crop=self.spec.crop)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        feats = self.forward(self.preprocess(frames))
        return feats.float().cpu().numpy()

    def accumulator(self, *, video_key: str = "") -> "FeatureAccumulator":
        """Per-video state: how per-step outputs combine (default: keep every row).

        ``video_key`` identifies the video (its id) for extractors that draw per-video
        randomness from a seeded generator (A2INet's crop positions)."""
        return StackAccumulator()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, dims={self.spec.dims}, device={self.device})"


class FeatureAccumulator:
    """Collects an extractor's outputs for one video, batch by batch."""

    def consume(self, extractor: "Extractor", batch: np.ndarray) -> None:
        """Run ``extractor`` on one batch of this video and keep its rows. Accumulators holding
        per-video state (crop positions) override this to pass that state to the extractor."""
        self.add(extractor(batch))

    def add(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        """float32 ``[steps, dims]`` for the whole video."""
        raise NotImplementedError


class StackAccumulator(FeatureAccumulator):
    """Keeps every step: the result is all rows in order."""

    def __init__(self):
        self._rows: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        self._rows.append(rows)

    def result(self) -> np.ndarray:
        return np.concatenate(self._rows, axis=0).astype(np.float32, copy=False)


def resize_and_crop(x: torch.Tensor, *, short_side: int | None, crop: int | None) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` so its shorter side is ``short_side`` (bilinear, antialiased), then
    centre-crop to ``crop`` x ``crop``. ``None`` skips the step."""
    if short_side is not None:
        h, w = x.shape[-2:]
        scale = short_side / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if crop is not None:
        h, w = x.shape[-2:]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        x = x[..., top : top + crop, left : left + crop]
    return x


@dataclass(frozen=True)
class ExtractorEntry:
    """A registry row: how to build an extractor and what it produces."""

    name: str
    builder: Callable[..., Extractor]
    dims: int
    description: str
    weights_choices: tuple[str, ...]
    default_weights: str
    sampling_kinds: tuple[str, ...] = ("all", "uniform", "fps")
    default_sampling: str = "all"


def tapped_model(model: torch.nn.Module, taps: Sequence[str]) -> torch.nn.Module:
    """Wrap ``model`` so it returns ``{tap: tensor}`` for the named layers (torchvision FX)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model, return_nodes={t: t for t in taps})
