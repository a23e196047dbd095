"""Learning-rate schedules of the trainable heads, as one multiplier per optimiser step.

:func:`lr_factors` gives the whole schedule up front (``[epochs * steps_per_epoch]``), so a
``LambdaLR`` over it is resumable from its step count alone and a test can read the curve
without training.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from regressors.errors import InvalidInputError

__all__ = ["SCHEDULES", "lr_factors"]

#: Learning-rate schedules accepted by :class:`~regressors.sequence.SequenceRegressor` and :func:`lr_factors`.
SCHEDULES = ("step", "cosine", "none")
#: Fraction of the epochs after which StepLR decays when ``step_size`` is None
#: (lidq92/VSFA: ``decay_interval = epochs / 10``, ``decay_ratio = 0.8``).
_STEP_FRACTION = 10


def lr_factors(
    schedule: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    step_size: int | None = None,
    gamma: float = 0.8,
    warmup_epochs: int = 0,
    min_lr_ratio: float = 0.0,
) -> np.ndarray:
    """Multiplier of the base learning rate for every optimiser step.

    Returns ``[epochs * steps_per_epoch]`` float64; step ``s`` is in epoch
    ``s // steps_per_epoch``. With ``W = warmup_epochs * steps_per_epoch`` warm-up steps:

    * warm-up (any schedule): ``(s + 1) / W`` for ``s < W`` (linear, reaching 1 at the
      last warm-up step, so no step runs at lr 0);
    * ``step`` (VSFA's StepLR, stepped once per epoch): ``gamma ** (epoch // step_size)``;
      ``step_size`` None means ``max(1, epochs // 10)``, VSFA's ``decay_interval``;
    * ``cosine`` (dual-path paper eq. 8, per step over the steps after warm-up):
      ``r + (1 - r) (1 + cos(pi t / T_max)) / 2`` with ``t = s - W``, ``T_max =
      total - W`` and ``r = min_lr_ratio`` (eta_min / eta_max);
    * ``none``: 1.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}, expected one of {SCHEDULES}")
    for name, value, low in (
        ("epochs", epochs, 1),
        ("steps_per_epoch", steps_per_epoch, 1),
        ("warmup_epochs", warmup_epochs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if warmup_epochs >= epochs and warmup_epochs > 0:
        raise InvalidInputError(f"warmup_epochs={warmup_epochs} leaves no epoch after warm-up (epochs={epochs})")
    total = epochs * steps_per_epoch
    steps = np.arange(total)
    epoch = steps // steps_per_epoch
    warm = warmup_epochs * steps_per_epoch
    if schedule == "step":
        if step_size is None:
            step_size = max(1, epochs // _STEP_FRACTION)
        if isinstance(step_size, bool) or not isinstance(step_size, Integral) or step_size < 1:
            raise InvalidInputError(f"step_size must be a positive integer or None, got {step_size!r}")
        if not (isinstance(gamma, Real) and 0 < gamma <= 1):
            raise InvalidInputError(f"gamma must lie in (0, 1], got {gamma!r}")
        factors = float(gamma) ** (epoch // step_size)
    elif schedule == "cosine":
        if not (isinstance(min_lr_ratio, Real) and 0 <= min_lr_ratio <= 1):
            raise InvalidInputError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
        t = np.clip(steps - warm, 0, None)
        factors = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + np.cos(np.pi * t / (total - warm)))
    else:
        factors = np.ones(total)
    factors = np.asarray(factors, dtype=np.float64)
    if warm:
        factors[:warm] = (steps[:warm] + 1) / warm
    return factors
