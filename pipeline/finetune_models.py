"""The networks fine-tuning trains: architectures, start weights, trainable parameters.

Per architecture (:data:`ARCHES`): the smallest input side it accepts, the parameters that
never reach the output and the checkpoint layout written::

    inception_v3  the Gram extractor's InceptionV3 (transform_input=True, AuxLogits dropped)
                  + fc = Linear(2048, 1)                       x [B, 3, S, S] -> [B, 1]
    resnet34/50   QualityRegressor: torchvision ResNet "backbone" (its ImageNet fc kept, unused)
                  + fc = Linear(512 / 2048, 1) on the average pool   (UNIQUE's layout)

:func:`build_model` gives the network with its start weights, every parameter frozen;
:func:`select_trainable` then unfreezes the recipe's share of it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vqa_core.training import seeded_torch

from .errors import FinetuneError

if TYPE_CHECKING:
    from .finetune import Recipe

__all__ = ["ARCHES", "HEAD_PREFIX", "QualityRegressor", "build_model", "select_trainable", "set_train_mode"]

# Per architecture: smallest input side it accepts, parameters that never reach the output
# (not trained, not in the optimizer), and the checkpoint layout written.
ARCHES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "inception_v3": {
            "min_side": 75,
            "unused": (),
            "layout": "torchvision inception_v3 keys without AuxLogits; fc = Linear(2048, 1) quality head "
            "(the Gram extractor drops fc and uses fc = Identity)",
        },
        "resnet34": {
            "min_side": 32,
            "unused": ("backbone.fc.",),
            "layout": "UNIQUE/pyiqa: backbone.* (torchvision resnet34, ImageNet fc untouched) + fc.* = "
            "Linear(512, 1) quality head (dropped by name by the extractor)",
        },
        "resnet50": {
            "min_side": 32,
            "unused": ("backbone.fc.",),
            "layout": "UNIQUE/pyiqa: backbone.* (torchvision resnet50, ImageNet fc untouched) + fc.* = "
            "Linear(2048, 1) quality head (dropped by name by the extractor)",
        },
    }
)
HEAD_PREFIX = "fc."


class QualityRegressor(nn.Module):
    """UNIQUE's layout: a torchvision ResNet ``backbone`` and a quality head ``fc``.

    ``x [B, 3, H, W]`` -> stem, layer1..layer4 -> global average pool ``[B, C]`` -> ``fc`` ->
    ``[B, 1]``. The backbone's own ImageNet classifier ``backbone.fc`` stays in the state dict
    (the extractor's strict load expects it) but is not on the path.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.fc.in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return self.fc(torch.flatten(b.avgpool(x), 1))


def build_model(recipe: Recipe, *, start: str, seed: int) -> tuple[nn.Module, dict]:
    """The recipe's network with ``start`` weights and a fresh head seeded by ``seed``.

    Returns ``(model [B, 3, S, S] -> [B, 1], start weights identity)``; every parameter has
    ``requires_grad=False`` until :func:`select_trainable`.
    """
    if recipe.arch == "inception_v3":
        from .extractors.backbones import build_backbone
        from .extractors.gram import INCEPTION_PRETRAINED, _construct, _trim, feature_state_dict

        # The Gram extractor's own construction and file adapter, so the trained weights load
        # back into exactly the network they were trained in.
        constructor = functools.partial(
            _construct, transform_input=True, for_torchvision_file=start in INCEPTION_PRETRAINED
        )
        model, identity = build_backbone(
            constructor, weights=start, pretrained=INCEPTION_PRETRAINED, adapt_checkpoint=feature_state_dict
        )
        model = _trim(model)
        with seeded_torch(seed):  # the head's initial weights, the caller's RNG untouched
            model.fc = nn.Linear(2048, 1)
    else:
        from torchvision.models import ResNet34_Weights, ResNet50_Weights, resnet34, resnet50

        from .extractors.quality import (
            LI_CHECKPOINT,
            LI_CHOICE,
            UNIQUE_CHECKPOINT,
            UNIQUE_CHOICE,
            build_quality_backbone,
        )

        constructor, named, choice, imagenet = {
            "resnet34": (resnet34, UNIQUE_CHECKPOINT, UNIQUE_CHOICE, ResNet34_Weights.IMAGENET1K_V1),
            "resnet50": (resnet50, LI_CHECKPOINT, LI_CHOICE, ResNet50_Weights.IMAGENET1K_V1),
        }[recipe.arch]
        backbone, identity = build_quality_backbone(
            constructor, weights=start, named=named, choice=choice, imagenet=imagenet
        )
        with seeded_torch(seed):
            model = QualityRegressor(backbone)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, identity


def select_trainable(model: nn.Module, recipe: Recipe) -> list[str]:
    """Switch ``requires_grad`` on for the recipe's trainable parameters; return their names.

    With ``train_until``: the parameters registered before it (FMC's rule) plus the head;
    without: every parameter except those that never reach the output.
    """
    names = [name for name, _ in model.named_parameters()]
    if recipe.train_until is not None:
        if recipe.train_until not in names:
            raise FinetuneError(f"recipe {recipe.name!r}: no parameter {recipe.train_until!r} in {recipe.arch}")
        chosen = names[: names.index(recipe.train_until)] + [n for n in names if n.startswith(HEAD_PREFIX)]
    else:
        unused = ARCHES[recipe.arch]["unused"]
        chosen = [n for n in names if not n.startswith(unused)] if unused else names
    chosen_set = set(chosen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen_set)
    return [n for n in names if n in chosen_set]


def set_train_mode(model: nn.Module, recipe: Recipe) -> None:
    """Train mode; with ``frozen_bn="eval"``, BatchNorm layers without trainable parameters stay in eval."""
    model.train()
    if recipe.frozen_bn == "eval":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                module.eval()
