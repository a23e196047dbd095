"""Pooling of CNN feature maps into per-frame vectors. Separate from the models so it is tested alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def spatial_mean_std(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial mean and unbiased spatial standard deviation of ``fmap`` ``[B, C, H, W]``.

    Returns two ``[B, C]`` tensors. The std divides by ``H*W - 1`` as ``torch.std`` does in the
    VSFA and UNIQUE reference code. A 1x1 map has no spread: its std is defined as 0 here
    (``torch.std`` would give NaN).
    """
    flat = fmap.flatten(2)
    mean = flat.mean(dim=2)
    if flat.shape[2] < 2:
        return mean, torch.zeros_like(mean)
    return mean, flat.std(dim=2, unbiased=True)


def mean_std_features(fmaps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``[mean, std]`` of each map, stage by stage: ``[mu1, sd1, mu2, sd2, ...]``.

    ``fmaps``: maps ``[B, C_i, H_i, W_i]``; returns ``[B, sum_i 2 * C_i]``. With one map this is
    VSFA's layout (all means, then all stds).
    """
    parts = []
    for fmap in fmaps:
        mean, std = spatial_mean_std(fmap)
        parts += [mean, std]
    return torch.cat(parts, dim=1)
