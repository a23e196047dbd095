"""Registry of trainable head modules (torch) used by the sequence regressor.

Contract: ``builder(input_dim: int, **params) -> nn.Module`` whose ``forward(x, lengths)``
takes zero-padded features ``x`` float ``[B, T, input_dim]`` and true lengths ``[B]`` (int64)
and returns one predicted score per video ``[B]``. Heads that need more structure (two
feature families, token grids) take it through ``params`` (e.g. the split of ``input_dim``)
and document it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vqa_core.registry import Registry

from .errors import InvalidInputError

#: Head-module builders by name; the built-in modules register on the first lookup.
HEAD_MODULES: Registry[Callable[..., torch.nn.Module]] = Registry(
    "head module",
    error=InvalidInputError,
    lazy_modules=("regressors.vsfa", "regressors.a2inet", "regressors.dualpath"),
)


def register_module(name: str) -> Callable:
    """Decorator registering a head-module builder under ``name`` (a taken name is refused)."""
    return HEAD_MODULES.register(name)


def list_modules() -> list[str]:
    """Names of the registered head modules, sorted."""
    return HEAD_MODULES.names()


def build_module(name: str, input_dim: int, **params) -> torch.nn.Module:
    """Build the module registered as ``name`` for ``input_dim`` features per step.

    An unknown ``name`` raises :class:`~regressors.errors.InvalidInputError` with a "did you
    mean" hint.
    """
    return HEAD_MODULES.get(name)(input_dim, **params)
