"""Head presets: the papers' heads by name, as ``vqa fit --head NAME`` and analysts build them.

::

    make_head("svr")                                  # SVRHead, FMC preset, mean pooling
    make_head("svr", pooling="meanmax", C=4.0)        # any head parameter overrides the preset
    make_head("vsfa")                                 # SequenceRegressor, quick schedule
    make_head("vsfa", paper_schedule=True)            # VSFA's full schedule (2000 epochs)
    make_head("a2inet", feature_dims=[1920, 4096])    # two feature sets, quality first

Each preset (:class:`HeadPreset`) builds an unfitted head with its paper's settings and names
the evaluation protocol ``vqa fit`` runs by default for it (``vsfa`` -> the VSFA protocol,
``a2inet`` -> A2INet's; the SVR heads -> FMC's). The sequence heads train by default on a
*quick* schedule (few epochs, early stopping on validation SRCC, a larger learning rate) that
finishes in minutes on a small data set on 2 CPU cores; ``paper_schedule=True`` (``vqa fit
--paper-schedule``) restores the paper's epochs, learning rate and stopping rule. Both are
recorded in the fit's report.

Presets live in :data:`HEAD_PRESETS` (a :class:`vqa_core.registry.Registry`); another module
adds one with ``HEAD_PRESETS.register("name", HeadPreset(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regressors.errors import InvalidInputError
from vqa_core.registry import Registry

__all__ = ["HEAD_PRESETS", "HeadPreset", "make_head"]


@dataclass(frozen=True)
class HeadPreset:
    """A named head with its paper's settings.

    Attributes:
        build: ``build(feature_dims)`` -> an unfitted head (``feature_dims``: the dims of
            each feature set, in order; most heads ignore it).
        protocol: the evaluation protocol ``vqa fit`` runs by default (a
            :data:`regressors.protocols.PROTOCOLS` name).
        description: one line for help texts and docs.
        paper: parameters that turn the default schedule into the paper's full one
            (``paper_schedule=True``); empty when the default is the paper's.
        n_feature_sets: how many feature sets the head takes (None: any number, joined
            along the feature axis).
        pools: the head takes a ``pooling`` parameter (temporal pooling of the SVR family).
    """

    build: Callable[[Sequence[int]], Any]
    protocol: str
    description: str
    paper: Mapping[str, Any] = field(default_factory=dict)
    n_feature_sets: int | None = None
    pools: bool = False


#: Head presets by name, in the order help texts list them.
HEAD_PRESETS: Registry[HeadPreset] = Registry("head", error=InvalidInputError, sort=False)


def make_head(name: str, *, feature_dims: Sequence[int] | None = None, paper_schedule: bool = False, **params):
    """An unfitted head of preset ``name`` with its paper's settings; ``params`` override any
    of them (``module_params`` is merged into the preset's).

    Args:
        name: a :data:`HEAD_PRESETS` name (``svr``, ``svr-bvqa``, ``vsfa``, ``a2inet``,
            ``dualpath``, ...); an unknown one raises with a did-you-mean hint.
        feature_dims: dims of each feature set (needed by ``a2inet``: two sets, quality first).
        paper_schedule: train with the paper's full schedule instead of the quick default.
        params: head parameters (``pooling="meanmax"``, ``C=4.0``, ``epochs=50``, ...).

    Raises:
        InvalidInputError: unknown preset, wrong number of feature sets, or a parameter the
            head does not have.
    """
    preset = HEAD_PRESETS.get(name)
    dims = list(feature_dims or ())
    if preset.n_feature_sets is not None and feature_dims is not None and len(dims) != preset.n_feature_sets:
        raise InvalidInputError(f"the {name} head takes {preset.n_feature_sets} feature sets, got {len(dims)}")
    head = preset.build(dims)
    overrides = dict(preset.paper) if paper_schedule else {}
    overrides.update(params)
    if overrides:
        if "module_params" in overrides and "module_params" in head.get_params(deep=False):
            overrides["module_params"] = {**(head.module_params or {}), **(overrides["module_params"] or {})}
        try:
            head.set_params(**overrides)
        except ValueError as exc:  # sklearn: "Invalid parameter 'x' for estimator ..."
            raise InvalidInputError(f"bad parameter for the {name} head: {exc}") from exc
    return head


# ---------------------------------------------------------------------------- the presets
# Builders import their head class when called: the SVR presets do not pay for torch.
def _svr(preset: str):
    def build(dims):
        from regressors.svr import SVRHead

        return SVRHead(pooling="mean", preset=preset, n_jobs=-1)  # a grid search uses every usable core

    return build


def _sequence(**params):
    def build(dims):
        from regressors.sequence import SequenceRegressor

        return SequenceRegressor(**params)

    return build


def _a2inet(dims):
    from regressors.sequence import SequenceRegressor

    if len(dims) != 2:
        raise InvalidInputError(
            f"the a2inet head takes two feature sets (quality, then semantic or motion), got {len(dims)}: "
            "pass feature_dims=[quality dims, other dims]"
        )
    return SequenceRegressor(
        module="a2inet",
        module_params={"dims": tuple(dims)},
        loss="mae_rank",
        lr=1e-4,
        batch_size=8,
        schedule="none",
        epochs=15,
        patience=4,
        val_fraction=0.25,
    )


# The quick schedules: at most 40 epochs (vsfa's GRU: 0.5M parameters) or 15 (a2inet: 32M,
# dualpath), stopping after 8 or 4 epochs without a better validation SRCC, at 10x the
# paper's learning rate for vsfa and a2inet (at 1e-5 the GRU barely moves in 40 epochs). On 85
# clips in 5 groups on 2 CPU cores a2inet's epoch takes 7-25 s. The paper's rate and epochs are
# one flag away (`paper` below).
HEAD_PRESETS.register(
    "svr",
    HeadPreset(
        _svr("fmc"), "fmc", "temporal pooling, StandardScaler, RBF SVR (FMC: epsilon 0.3, C 1, gamma scale)", pools=True
    ),
)
HEAD_PRESETS.register(
    "svr-bvqa",
    HeadPreset(
        _svr("bvqa"), "fmc", "MinMaxScaler + RBF SVR, grid C 2^1..2^10, gamma 2^-8..2^1 (BVQA_Benchmark)", pools=True
    ),
)


def _svr_fast(preset: str):
    def build(dims):
        from regressors.svr_scalable import NystroemSVRHead

        return NystroemSVRHead(pooling="mean", preset=preset, n_jobs=-1)

    return build


# The scalable SVRs (regressors.svr_scalable): same settings, rank-2048 Nystroem kernel, linear
# in the number of videos; `vqa fit` runs them instead of svr / svr-bvqa above 5,000 videos.
HEAD_PRESETS.register(
    "svr-fast",
    HeadPreset(
        _svr_fast("fmc"),
        "fmc",
        "svr through a rank-2048 Nystroem kernel + linear SVR (scales; auto above 5,000 videos)",
        pools=True,
    ),
)
HEAD_PRESETS.register(
    "svr-bvqa-fast",
    HeadPreset(
        _svr_fast("bvqa"),
        "fmc",
        "svr-bvqa through a rank-2048 Nystroem kernel + linear SVR, parallel grid search",
        pools=True,
    ),
)
HEAD_PRESETS.register(
    "vsfa",
    HeadPreset(
        _sequence(
            module="vsfa",
            loss="vsfa_l1",
            lr=1e-4,
            batch_size=16,
            schedule="step",
            epochs=40,
            patience=8,
            val_fraction=0.25,
        ),
        "vsfa",
        "Linear(D,128) -> GRU(32) -> frame scores -> TP pooling; L1 on MOS/max MOS, Adam, batch 16, StepLR",
        paper={"epochs": 2000, "lr": 1e-5, "patience": None},
    ),
)
HEAD_PRESETS.register(
    "a2inet",
    HeadPreset(
        _a2inet,
        "a2inet",
        "CAGI + CATM on two feature sets (quality first); MAE + rank, Adam, batch 8",
        paper={"epochs": 100, "lr": 2e-5, "patience": None},
        n_feature_sets=2,
    ),
)
HEAD_PRESETS.register(
    "dualpath",
    HeadPreset(
        _sequence(
            module="dualpath",
            loss="plcc_rank",
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.01,
            batch_size=8,
            schedule="cosine",
            warmup_epochs=0,
            epochs=15,
            patience=4,
            val_fraction=0.25,
        ),
        "a2inet",
        "slow/fast transformer on slowfast-tokens; PLCC + 0.3 rank, AdamW 1e-3, wd 0.01, cosine",
        paper={"epochs": 100, "patience": None},
    ),
)
