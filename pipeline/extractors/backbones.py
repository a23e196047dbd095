"""Building frozen torchvision backbones from a weights choice (ImageNet, local file, random)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..weights import (
    ResolvedWeights,
    file_weights,
    load_into,
    parse_random,
    random_weights,
    torchvision_weights,
    unwrap_state_dict,
)


def build_backbone(
    constructor: Callable[..., torch.nn.Module],
    *,
    weights: str,
    pretrained: dict[str, Any],
    adapt_checkpoint: Callable[[Any, str], dict] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Construct ``constructor(weights=None)`` and fill it according to ``weights``.

    ``pretrained`` maps names (e.g. ``"imagenet"``) to torchvision ``Weights`` enum members.
    A file path is loaded with ``weights_only=True``; ``adapt_checkpoint(checkpoint, path)``
    turns a foreign checkpoint layout into this model's state dict (default: unwrap common
    containers). Returns the frozen model in eval mode and the weights identity.
    """
    seed = parse_random(weights)
    if seed is not None:
        resolved: ResolvedWeights = random_weights(seed)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG state
            torch.manual_seed(seed)
            model = constructor(weights=None)
    elif weights in pretrained:
        resolved = torchvision_weights(pretrained[weights])
        model = constructor(weights=None)
        load_into(model, resolved.state_dict, source=resolved.identity["name"])
    else:
        checkpoint, identity = file_weights(weights)
        state_dict = (adapt_checkpoint or (lambda c, p: unwrap_state_dict(c, path=p)))(checkpoint, weights)
        resolved = ResolvedWeights(state_dict=state_dict, identity=identity)
        model = constructor(weights=None)
        load_into(model, state_dict, source=str(weights))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, dict(resolved.identity)
