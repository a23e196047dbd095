"""InceptionV3 feature-map correlations (Gram matrices) for FMC-VQA (seed 002).

Per frame (resized, short side 338, centre crop 299, ImageNet normalisation; torchvision's
``Resize(338)`` + ``CenterCrop(299)`` geometry, so a 960 x 540 frame becomes 600 x 338 and is
cropped at top 20, left 150; ``resampler="pil"`` resizes the uint8 frame with PIL bilinear as
FMC's transform does on its PIL frames)::

    frame -> inception_v3 (torchvision, eval, transform_input=True)
               |-- Mixed_5b [256, 35, 35] -> F [256, 1225] -> G = F F^T -> upper triangle  32,896
               |-- Mixed_5c [288, 35, 35] -> F [288, 1225] -> G = F F^T -> upper triangle  41,616
               '-- avgpool  [2048, 1, 1]  -> vector                                          2,048
             concatenated in the spec's ``taps`` order -> one row [dims]

G is symmetric, so the upper triangle (diagonal included, row-major: numpy ``triu_indices``
order) is lossless. The FMC reference flattens the full C x C matrix (65,536 / 82,944 values);
:func:`gram_full_from_upper` and :func:`split_taps` rebuild that layout on read.

Per video (default ``pooling="mean+max"``): two rows, row 0 = temporal mean and row 1 =
temporal max over the sampled frames, elementwise (the seed paper concatenates both; the
earlier public FMC code used max only: read row 1). ``pooling="frames"`` keeps one row per
frame instead (~150k floats per frame for the full layout: large).

``transform_input``: torchvision's ``inception_v3(weights=IMAGENET1K_V1)`` (and
the deprecated ``pretrained`` flag) sets ``transform_input=True``: the model takes ImageNet-normalised input
and re-scales it inside ``forward`` to the [-1, 1] range the ported Google weights were trained
on. FMC builds its model that way and taps it with ``create_feature_extractor``, so every tap
sees the re-scaled input (its code before commit 6845c77, July 2022, walked ``_modules`` and so
skipped the re-scaling for conv taps; we follow the current code). We re-scale for every
weights source (ImageNet, checkpoint files, random) so the computation never depends on where
the weights came from; pass ``transform_input=False`` for a checkpoint trained without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import Inception_V3_Weights, inception_v3

from ..errors import PipelineError
from ..weights import HubCheckpoint, register_checkpoint, unwrap_state_dict
from .backbones import build_backbone
from .base import Extractor, ExtractorSpec, FeatureAccumulator, StackAccumulator, resampler_option, tapped_model
from .registry import register_extractor

INCEPTION_PRETRAINED = {"imagenet": Inception_V3_Weights.IMAGENET1K_V1}
register_checkpoint(HubCheckpoint.from_torchvision(INCEPTION_PRETRAINED["imagenet"]), used_by="inception-gram*")
WEIGHT_CHOICES = ("imagenet", "random[:SEED]", "PATH")
RESIZE_SHORT_SIDE, CROP = 338, 299  # FMC's frame_size, center_crop for inceptionv3

# tap -> channels of a Gram tap, or None for a tap stored as its pooled vector
TAP_CHANNELS: dict[str, int | None] = {"Mixed_5b": 256, "Mixed_5c": 288, "avgpool": None}
AVGPOOL_DIMS = 2048
NORMALIZE_CHOICES = (None, "hw")
POOLING_CHOICES = ("mean+max", "frames")

# Every layer combination of the seed paper's Tables I and II, in network order.
VARIANTS: dict[str, tuple[str, ...]] = {
    "inception-gram": ("Mixed_5b", "Mixed_5c", "avgpool"),
    "inception-gram-mixed5b": ("Mixed_5b",),
    "inception-gram-mixed5c": ("Mixed_5c",),
    "inception-gram-avgpool": ("avgpool",),
    "inception-gram-mixed5b-mixed5c": ("Mixed_5b", "Mixed_5c"),
    "inception-gram-mixed5b-avgpool": ("Mixed_5b", "avgpool"),
    "inception-gram-mixed5c-avgpool": ("Mixed_5c", "avgpool"),
}


def upper_size(channels: int) -> int:
    """Entries of a ``C x C`` symmetric matrix's upper triangle, diagonal included: C(C+1)/2."""
    return channels * (channels + 1) // 2


def tap_dims(tap: str) -> int:
    """Stored width of one tap: ``C(C+1)/2`` for a Gram tap, 2048 for ``avgpool``."""
    channels = _channels(tap)
    return AVGPOOL_DIMS if channels is None else upper_size(channels)


def taps_dims(taps: tuple[str, ...]) -> int:
    """Row width of a layout: the sum of :func:`tap_dims` over ``taps``."""
    return sum(tap_dims(t) for t in taps)


def _channels(tap: str) -> int | None:
    try:
        return TAP_CHANNELS[tap]
    except KeyError:
        raise ValueError(f"unknown InceptionV3 Gram tap {tap!r}; known: {', '.join(TAP_CHANNELS)}") from None


def gram_upper(fmap: torch.Tensor, *, normalize: str | None = None) -> torch.Tensor:
    """Upper triangle (diagonal included, row-major) of each map's Gram matrix.

    ``fmap`` ``[B, C, H, W]`` -> F ``[B, C, H*W]`` -> G = F F^T ``[B, C, C]`` -> ``[B, C(C+1)/2]``.
    ``normalize``: ``None`` (FMC: raw sums over positions) or ``"hw"`` (G / (H*W), a mean over
    positions, comparable across input sizes).
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    b, c, h, w = fmap.shape
    flat = fmap.reshape(b, c, h * w)
    gram = torch.bmm(flat, flat.transpose(1, 2))
    if normalize == "hw":
        gram = gram / (h * w)
    rows, cols = torch.triu_indices(c, c, device=fmap.device)
    return gram.reshape(b, c * c).index_select(1, rows * c + cols)


@functools.lru_cache(maxsize=8)
def _upper_index(channels: int) -> np.ndarray:
    """``[C, C]`` int64: position in the upper-triangle vector of each full-matrix entry."""
    index = np.empty((channels, channels), dtype=np.int64)
    rows, cols = np.triu_indices(channels)
    positions = np.arange(rows.size)
    index[rows, cols] = positions
    index[cols, rows] = positions  # symmetry: the lower triangle reads its mirror
    index.setflags(write=False)
    return index


def gram_full_from_upper(vec, channels: int):
    """Rebuild full symmetric Gram matrices from upper-triangle vectors.

    ``vec`` ``[..., C(C+1)/2]`` (numpy array or torch tensor) -> ``[..., C, C]`` of the same
    type; ``.reshape(..., C * C)`` gives the reference's flattened layout.
    """
    if vec.shape[-1] != upper_size(channels):
        raise ValueError(f"expected {upper_size(channels)} values for C={channels}, got {vec.shape[-1]}")
    index = _upper_index(channels)
    if isinstance(vec, torch.Tensor):
        return vec[..., torch.tensor(index, device=vec.device)]
    return np.asarray(vec)[..., index]


def split_taps(rows, spec: ExtractorSpec, *, gram: str = "upper") -> dict[str, Any]:
    """Split stored rows ``[..., spec.dims]`` into ``{tap: part}`` following ``spec.taps``.

    ``gram`` picks the form of Gram taps: ``"upper"`` as stored ``[..., C(C+1)/2]``,
    ``"matrix"`` ``[..., C, C]``, or ``"flat"`` ``[..., C*C]`` (the FMC reference layout;
    concatenating the parts in order gives its per-frame vector). ``avgpool`` is ``[..., 2048]``.
    """
    if gram not in ("upper", "matrix", "flat"):
        raise ValueError(f"gram must be 'upper', 'matrix' or 'flat', got {gram!r}")
    if rows.shape[-1] != taps_dims(spec.taps):
        raise ValueError(f"rows have {rows.shape[-1]} values; spec {spec.name!r} lays out {taps_dims(spec.taps)}")
    parts, start = {}, 0
    for tap in spec.taps:
        stop = start + tap_dims(tap)
        part, channels = rows[..., start:stop], _channels(tap)
        if channels is not None and gram != "upper":
            part = gram_full_from_upper(part, channels)
            if gram == "flat":
                part = part.reshape(*part.shape[:-2], channels * channels)
        parts[tap], start = part, stop
    return parts


class MeanMaxAccumulator(FeatureAccumulator):
    """Temporal mean and max over a video's rows, in memory independent of its length.

    ``add([n, D])`` any number of times; ``result()`` -> float32 ``[2, D]``: row 0 the mean
    (summed in float64, so long videos of large Gram values lose no precision), row 1 the max.
    """

    def __init__(self):
        self._sum: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._count = 0

    def add(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        batch_sum, batch_max = rows.sum(axis=0, dtype=np.float64), rows.max(axis=0)
        if self._sum is None:
            self._sum, self._max = batch_sum, batch_max.astype(np.float32)
        else:
            self._sum += batch_sum
            np.maximum(self._max, batch_max, out=self._max)
        self._count += len(rows)

    def result(self) -> np.ndarray:
        if self._count == 0:
            raise PipelineError("no frames were added: a temporal mean/max of zero frames is undefined")
        return np.stack([self._sum / self._count, self._max]).astype(np.float32)


class InceptionGramExtractor(Extractor):
    """InceptionV3 taps -> per-frame rows of Gram upper triangles and/or the avgpool vector."""

    def __init__(self, spec: ExtractorSpec, backbone: nn.Module, *, normalize: str | None, pooling: str, device="cpu"):
        super().__init__(spec, device=device)
        self.normalize, self.pooling = normalize, pooling  # both also spelled out in spec.pooling
        self.model = tapped_model(backbone, spec.taps).to(self.device).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 299, 299]`` -> ``[B, dims]`` (taps in ``spec.taps`` order)."""
        maps = self.model(x)
        parts = [
            maps[tap].flatten(1) if TAP_CHANNELS[tap] is None else gram_upper(maps[tap], normalize=self.normalize)
            for tap in self.spec.taps
        ]
        return torch.cat(parts, dim=1)

    def accumulator(self, *, video_key: str = "") -> FeatureAccumulator:
        """``mean+max``: two rows per video (mean, max); ``frames``: every frame's row."""
        return StackAccumulator() if self.pooling == "frames" else MeanMaxAccumulator()


def _construct(weights=None, *, transform_input: bool, for_torchvision_file: bool) -> nn.Module:
    # torchvision's ImageNet file carries AuxLogits and the 1000-class fc: build the model that
    # loads it strictly, then trim. Files and random init go straight into the trimmed model.
    model = inception_v3(
        weights=None, aux_logits=for_torchvision_file, init_weights=False, transform_input=transform_input
    )
    return model if for_torchvision_file else _trim(model)


def _trim(model: nn.Module) -> nn.Module:
    """Drop what no tap needs (the auxiliary classifier, fc), so any classifier head loads."""
    model.aux_logits, model.AuxLogits, model.fc = False, None, nn.Identity()
    return model


def feature_state_dict(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict without ``AuxLogits.*`` and ``fc.*``.

    FMC's fine-tuned checkpoints keep the auxiliary classifier and a Linear(2048, 1) or no fc at
    all (fc = Identity); neither reaches a tap, so both are dropped before the strict load.
    """
    state = unwrap_state_dict(checkpoint, path=path)
    return {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}


def pooling_description(*, normalize: str | None, pooling: str) -> str:
    """The ``spec.pooling`` text: spatial (Gram) and temporal pooling, and the row layout."""
    gram = "G = F F^T / (H*W)" if normalize == "hw" else "G = F F^T (unnormalised)"
    spatial = f"conv taps: {gram}, F = [C, H*W], upper triangle incl. diagonal, row-major; avgpool: vector"
    if pooling == "frames":
        return f"frames: one row per frame; {spatial}"
    return f"mean+max: 2 rows per video, row 0 = temporal mean, row 1 = temporal max; {spatial}"


def build_inception_gram(
    name: str,
    *,
    weights: str,
    device: str = "cpu",
    normalize: str | None = None,
    pooling: str = "mean+max",
    transform_input: bool = True,
    resampler: str = "torch",
) -> InceptionGramExtractor:
    """Build the Gram extractor registered as ``name`` (one of :data:`VARIANTS`).

    ``normalize``: ``None`` or ``"hw"`` (see :func:`gram_upper`); ``pooling``: ``"mean+max"``
    (2 rows per video) or ``"frames"``; ``transform_input``: see the module docstring;
    ``resampler``: ``"torch"`` (float32 resize) or ``"pil"`` (FMC's PIL bilinear on uint8).

    Version 2: torchvision's resize and crop geometry (version 1 rounded the long side and
    floored the crop offsets: 601 wide, cropped at (19, 151) for 960 x 540).
    """
    if normalize not in NORMALIZE_CHOICES:
        raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}")
    spec_resampler = resampler_option(resampler, reference="pil-bilinear")  # checked before the model is built
    taps = VARIANTS[name]
    constructor = functools.partial(
        _construct, transform_input=transform_input, for_torchvision_file=weights in INCEPTION_PRETRAINED
    )
    backbone, identity = build_backbone(
        constructor, weights=weights, pretrained=INCEPTION_PRETRAINED, adapt_checkpoint=feature_state_dict
    )
    spec = ExtractorSpec(
        name=name,
        version="2",
        dims=taps_dims(taps),
        backbone=f"inception_v3(transform_input={transform_input})",
        taps=taps,
        pooling=pooling_description(normalize=normalize, pooling=pooling),
        resize_short_side=RESIZE_SHORT_SIDE,
        crop=CROP,
        weights=identity,
        resampler=spec_resampler,
    )
    return InceptionGramExtractor(spec, _trim(backbone), normalize=normalize, pooling=pooling, device=device)


def _register(name: str, taps: tuple[str, ...]) -> None:
    described = " + ".join(f"{t} Gram" if TAP_CHANNELS[t] else t for t in taps)
    register_extractor(
        name,
        dims=taps_dims(taps),
        weights_choices=WEIGHT_CHOICES,
        default_weights="imagenet",
        description=f"InceptionV3 {described} (FMC-VQA); 2 rows per video: temporal mean, max",
    )(functools.partial(build_inception_gram, name))


for _name, _taps in VARIANTS.items():
    _register(_name, _taps)
