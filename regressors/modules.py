"""Registry of trainable head modules (torch) used by the sequence regressor.

Contract: ``builder(input_dim: int, **params) -> nn.Module`` whose ``forward(x, lengths)``
takes zero-padded features ``x`` float ``[B, T, input_dim]`` and true lengths ``[B]`` (int64)
and returns one predicted score per video ``[B]``. Heads that need more structure (two
feature families, token grids) take it through ``params`` (e.g. the split of ``input_dim``)
and document it.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch

from .errors import RegressorError

_MODULES: dict[str, Callable[..., torch.nn.Module]] = {}
_BUILTIN = ("regressors.vsfa", "regressors.a2inet", "regressors.dualpath")  # register on first use


def _import_builtins() -> None:
    import importlib

    for module in _BUILTIN:
        importlib.import_module(module)


def register_module(name: str) -> Callable:
    """Decorator registering a head-module builder under ``name``."""

    def decorate(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _MODULES:
            raise ValueError(f"head module {name!r} is registered twice")
        _MODULES[name] = builder
        return builder

    return decorate


def list_modules() -> list[str]:
    _import_builtins()
    return sorted(_MODULES)


def build_module(name: str, input_dim: int, **params) -> torch.nn.Module:
    """Build the module registered as ``name`` for ``input_dim`` features per step."""
    _import_builtins()
    if name not in _MODULES:
        close = difflib.get_close_matches(name, _MODULES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise RegressorError(f"unknown head module {name!r}.{hint} Registered: {', '.join(list_modules())}")
    return _MODULES[name](input_dim, **params)
