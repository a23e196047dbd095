"""Training losses of the sequence heads (torch, batched, differentiable).

Every loss takes predictions ``pred [B]`` and targets ``y [B]`` (float tensors of one
dtype and device) and returns a 0-d tensor. Degenerate batches never give NaN: a batch of
one video has no pairs, so the pairwise terms are 0 (with a zero gradient), and constant
targets or predictions are handled without dividing 0 by 0.

==================  ===========================================================  =========
name                definition (source)                                          labels
==================  ===========================================================  =========
``mae``             mean |pred - y|  (A2INet eq. 6)                              raw
``mae_rank``        mae + eta * L_R, L_R of A2INet eq. 7-8                       raw
``plcc``            DOVER / FAST-VQA ``plcc_loss``                               raw
``rank``            DOVER / FAST-VQA ``rank_loss``                               raw
``plcc_rank``       plcc + 0.3 * rank (DOVER, KVQ)                               raw
``hinge_rank``      pairwise hinge of the dual-path paper, eq. 7                 raw
``vsfa_l1``         mean |pred - y| on labels divided by max(MOS) (VSFA)         max
==================  ===========================================================  =========

*Label scaling* is not done inside the losses: a loss only declares it
(:attr:`LossSpec.label_scaling`) and the trainer (:class:`regressors.sequence.
SequenceRegressor`) applies it. For ``vsfa_l1`` the trainer divides the training MOS by
their maximum before the loss and multiplies predictions by the same factor afterwards.
(lidq92/VSFA divides by the maximum MOS of the *whole* dataset, test videos included;
we use the training videos only, so that nothing is learned from the test set.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regressors.errors import InvalidInputError
from vqa_core.registry import Registry

__all__ = [
    "LABEL_SCALINGS",
    "LOSSES",
    "LossSpec",
    "get_loss",
    "hinge_rank_loss",
    "list_losses",
    "mae_loss",
    "mae_rank_loss",
    "plcc_loss",
    "plcc_rank_loss",
    "rank_loss",
    "vsfa_l1_loss",
]

#: Label scalings a loss may declare: ``none`` (raw MOS), ``max`` (MOS / max training MOS).
LABEL_SCALINGS = ("none", "max")
#: Added to the standard deviations in :func:`plcc_loss` (DOVER / FAST-VQA).
PLCC_EPS = 1e-8
#: Weight of :func:`rank_loss` in :func:`plcc_rank_loss` (DOVER, KVQ challenge code).
PLCC_RANK_WEIGHT = 0.3


def _check(pred, y) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"pred and y must be torch tensors, got {type(pred).__name__} and {type(y).__name__}")
    if pred.ndim != 1 or pred.shape != y.shape:
        raise InvalidInputError(
            f"pred and y must both be 1-D [B] of one length, got {tuple(pred.shape)} and {tuple(y.shape)}"
        )
    if pred.shape[0] == 0:
        raise InvalidInputError("empty batch (B = 0)")
    if not pred.is_floating_point():
        raise InvalidInputError(f"pred must be a floating-point tensor, got {pred.dtype}")


def _zero(pred):
    """A 0-d zero that stays attached to the graph (``backward`` works, gradient 0)."""
    return pred.sum() * 0.0


def _pairwise_diff(v):
    """``[B, B]`` matrix with entry ``(i, j) = v_i - v_j``."""
    return v.unsqueeze(1) - v.unsqueeze(0)


def _population_std(v):
    """Population std of ``v [B]`` whose gradient is 0, not NaN, when ``v`` is constant.

    ``torch.std`` backpropagates 0/0 at zero variance; the double ``where`` keeps the
    value (exactly 0) and routes no gradient through the square root there.
    """
    var = (v - v.mean()).square().mean()
    positive = var > 0
    return torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))


def mae_loss(pred, y):
    """Mean absolute error ``mean_i |pred_i - y_i|`` (A2INet eq. 6).

    ``pred [B]``, ``y [B]`` -> 0-d tensor.
    """
    _check(pred, y)
    return (pred - y).abs().mean()


def _a2inet_rank(pred, y):
    """A2INet rank term (eq. 7-8), ``pred [B]``, ``y [B]`` -> 0-d tensor::

        L_R = 1/B^2 sum_i sum_j max(0, |ym_ij| - phi(y_i, y_j) * yp_ij)
        ym_ij = y_i - y_j,  yp_ij = pred_i - pred_j,  phi = +1 if y_i >= y_j else -1

    Taken literally, as printed: the diagonal adds 0, each unordered pair counts twice,
    and a tie y_i = y_j (phi = +1 both ways) costs |pred_i - pred_j|.
    """
    dm = _pairwise_diff(y)
    dp = _pairwise_diff(pred)
    phi = torch.where(dm >= 0, 1.0, -1.0).to(pred.dtype)
    B = pred.shape[0]
    return F.relu(dm.abs() - phi * dp).sum() / (B * B)


def mae_rank_loss(pred, y, *, eta: float = 1.0):
    """A2INet training loss (eq. 9): ``mae + eta * L_R`` with L_R of eq. 7-8.

    ``pred [B]``, ``y [B]`` (raw MOS) -> 0-d tensor. ``eta`` = 1 in the paper. For
    B = 1 the rank term is 0 (its only pair is the diagonal).
    """
    _check(pred, y)
    return (pred - y).abs().mean() + eta * _a2inet_rank(pred, y)


def plcc_loss(pred, y):
    """PLCC loss of DOVER / FAST-VQA, ``pred [B]``, ``y [B]`` -> 0-d tensor::

        pn = (pred - mean) / (std(pred) + 1e-8),  yn likewise   (population std)
        loss0 = MSE(pn, yn) / 4
        rho   = mean(pn * yn)
        loss1 = MSE(rho * pn, yn) / 4
        loss  = (loss0 + loss1) / 2

    Invariant to the scale and offset of ``y``. B = 1 or constant inputs give finite
    values and gradients (the standardised vector is then 0).
    """
    _check(pred, y)
    pn = (pred - pred.mean()) / (_population_std(pred) + PLCC_EPS)
    yn = (y - y.mean()) / (_population_std(y) + PLCC_EPS)
    loss0 = F.mse_loss(pn, yn) / 4
    rho = (pn * yn).mean()
    loss1 = F.mse_loss(rho * pn, yn) / 4
    return (loss0 + loss1) / 2


def rank_loss(pred, y):
    """Rank loss of DOVER / FAST-VQA, ``pred [B]``, ``y [B]`` -> 0-d tensor::

        R_ij = relu((pred_i - pred_j) * sign(y_j - y_i))
        loss = sum(R) / (B (B - 1)) / (1 + max(R))

    As in the reference, ``1 + max(R)`` is not detached. B = 1 gives 0 (no pairs).
    """
    _check(pred, y)
    B = pred.shape[0]
    if B < 2:
        return _zero(pred)
    R = F.relu(_pairwise_diff(pred) * torch.sign(-_pairwise_diff(y)))
    return R.sum() / (B * (B - 1)) / (1 + R.max())


def plcc_rank_loss(pred, y, *, rank_weight: float = PLCC_RANK_WEIGHT):
    """``plcc_loss + rank_weight * rank_loss`` (DOVER / KVQ: weight 0.3).

    ``pred [B]``, ``y [B]`` -> 0-d tensor.
    """
    return plcc_loss(pred, y) + rank_weight * rank_loss(pred, y)


def hinge_rank_loss(pred, y, *, margin: float = 1.0, reduction: str = "mean"):
    """Pairwise hinge rank loss of the dual-path paper (seed 000, eq. 7)::

        sum_{i,j} max(0, margin - (pred_i - pred_j) * sign(y_i - y_j))

    over ordered pairs with ``y_i != y_j``. Pairs with equal labels (the diagonal
    included) are left out: eq. 7 gives them the constant ``margin`` and no gradient, so
    they would only shift the value. ``reduction="sum"`` is eq. 7 as printed (each
    unordered pair counts twice); ``"mean"`` (default) divides by the number of counted
    ordered pairs, so that the scale does not grow with B^2 when the loss is combined
    with others. No counted pair (B = 1, constant y) gives 0.

    ``pred [B]``, ``y [B]`` -> 0-d tensor. ``margin`` is in units of ``pred``.
    """
    _check(pred, y)
    if reduction not in ("mean", "sum"):
        raise InvalidInputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    s = torch.sign(_pairwise_diff(y))
    counted = s != 0
    terms = torch.where(counted, F.relu(margin - _pairwise_diff(pred) * s), torch.zeros_like(s))
    total = terms.sum()
    if reduction == "sum":
        return total
    n_pairs = int(counted.sum())
    return total / n_pairs if n_pairs else _zero(pred)


def vsfa_l1_loss(pred, y):
    """VSFA's ``nn.L1Loss``: mean |pred - y| on *scaled* labels, ``[B]``, ``[B]`` -> 0-d.

    Same computation as :func:`mae_loss`; it differs in the label scaling it declares
    (``max``): the trainer divides MOS by the maximum training MOS before calling it and
    rescales predictions afterwards (see the module docstring).
    """
    return mae_loss(pred, y)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``spec(pred, y)`` calls ``fn`` with the bound ``params``.

    Attributes
    ----------
    name : str
    fn : callable ``(pred [B], y [B], **params) -> 0-d tensor``
    label_scaling : {"none", "max"}
        How the trainer scales MOS before this loss (module docstring).
    params : tuple of (name, value)
        Keyword arguments bound by :func:`get_loss`.
    """

    name: str
    fn: Callable
    label_scaling: str = "none"
    params: tuple = ()

    def __call__(self, pred, y):
        return self.fn(pred, y, **dict(self.params))


#: Registered losses by name (``LOSSES["mae"]``, ``"mae" in LOSSES``); use :func:`get_loss`
#: to bind parameters.
LOSSES: Registry[LossSpec] = Registry("loss", error=InvalidInputError)
for _spec in (
    LossSpec("mae", mae_loss),
    LossSpec("mae_rank", mae_rank_loss),
    LossSpec("plcc", plcc_loss),
    LossSpec("rank", rank_loss),
    LossSpec("plcc_rank", plcc_rank_loss),
    LossSpec("hinge_rank", hinge_rank_loss),
    LossSpec("vsfa_l1", vsfa_l1_loss, label_scaling="max"),
):
    LOSSES.register(_spec.name, _spec)
del _spec


def list_losses() -> list[str]:
    """Names of the registered losses, sorted."""
    return LOSSES.names()


def get_loss(name: str, **params) -> LossSpec:
    """The loss registered as ``name``, with keyword ``params`` bound (e.g. ``eta=0.5``).

    Returns a callable :class:`LossSpec`: ``get_loss("mae_rank", eta=0.5)(pred, y)``.
    Unknown names and parameters raise :class:`~regressors.errors.InvalidInputError`
    (with a "did you mean" hint for names).
    """
    spec = LOSSES.get(name)
    if not params:
        return spec
    try:
        # Bind now so that a wrong keyword fails here, not in the first training step.
        inspect.signature(spec.fn).bind(None, None, **params)
    except TypeError as exc:
        raise InvalidInputError(f"loss {name!r} does not take parameters {sorted(params)}: {exc}") from exc
    return LossSpec(spec.name, spec.fn, spec.label_scaling, tuple(sorted(params.items())))
