"""Images in, normalised crops out: what fine-tuning reads its training data through.

::

    image file (PNG/JPEG/BMP) --load_image--> uint8 [H, W, 3] RGB
      --/255--> resize short side (recipe.resize_short_side, if any)
      --> crop recipe.image_size (centre; random + horizontal flip when augmenting)
      --> ImageNet normalisation --> float32 [B, 3, S, S]

The order is that of :meth:`pipeline.extractors.base.Extractor.preprocess`, so a network
trained on these crops sees at extraction time what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import FinetuneError
from .extractors.base import IMAGENET_MEAN, IMAGENET_STD, resize_and_crop

if TYPE_CHECKING:
    from .finetune import Recipe

__all__ = ["check_sizes", "image_sizes", "load_image", "prepare_batch"]


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB (grey and palette images converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise FinetuneError(
            f"{path}: not a readable image ({exc}). Fine-tuning takes images (an IQA set such "
            "as TID2013 or KADID-10k, or pipeline.synthetic.make_iqa_dataset)"
        ) from exc


def image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """``(width, height)`` of every image from its header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    sizes, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            bad.append(f"{path}: {exc}")
    if bad:
        raise FinetuneError(
            f"{len(bad)} of {len(paths)} images cannot be read (fine-tuning takes image files): "
            + "; ".join(bad[:5])
            + (" ..." if len(bad) > 5 else "")
        )
    return sizes


def check_sizes(paths: Sequence[Path], sizes: Sequence[tuple[int, int]], recipe: Recipe) -> None:
    """Every image must give at least an ``image_size`` square after the recipe's resize."""
    if recipe.resize_short_side is not None:
        if recipe.resize_short_side < recipe.image_size:
            raise FinetuneError(f"resize_short_side {recipe.resize_short_side} < image_size {recipe.image_size}")
        return
    small = [(p, s) for p, s in zip(paths, sizes, strict=True) if min(s) < recipe.image_size]
    if small:
        shown = ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in small[:5])
        raise FinetuneError(
            f"{len(small)} images are smaller than the {recipe.image_size} px crop of recipe "
            f"{recipe.name!r} ({shown}); pass a smaller image_size"
        )


def prepare_batch(paths: Sequence[Path], *, recipe: Recipe, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Load and preprocess images -> float32 ``[B, 3, S, S]`` (``S = recipe.image_size``).

    uint8 -> [0, 1] -> resize short side (if the recipe resizes) -> crop -> ImageNet
    normalisation, the order of :meth:`pipeline.extractors.base.Extractor.preprocess`. The crop
    is central, or with ``rng`` (training with ``augment``) at a random position, then flipped
    horizontally with probability 1/2.
    """
    size, batch = recipe.image_size, []
    for path in paths:
        x = torch.from_numpy(load_image(path)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        x = resize_and_crop(x, short_side=recipe.resize_short_side, crop=None)
        h, w = x.shape[-2:]
        if rng is None:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        x = x[..., top : top + size, left : left + size]
        if rng is not None and rng.random() < 0.5:
            x = x.flip(-1)
        batch.append(x)
    x = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
