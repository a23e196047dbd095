"""Tests for regressors.losses: values against plain-numpy loops, gradients, degenerate batches."""

import math

import numpy as np
import pytest
import torch

from regressors.errors import InvalidInputError
from regressors.losses import (
    LOSSES,
    get_loss,
    hinge_rank_loss,
    list_losses,
    mae_loss,
    mae_rank_loss,
    plcc_loss,
    plcc_rank_loss,
    rank_loss,
    vsfa_l1_loss,
)

PRED = np.array([0.3, 1.2, -0.4, 0.9, 0.9, 2.0])
Y = np.array([3.1, 4.0, 2.2, 3.1, 4.5, 1.0])  # one tie (3.1), one badly ranked video


# ------------------------------------------------------------- references as loops
def ref_mae(p, y):
    return sum(abs(a - b) for a, b in zip(p, y, strict=True)) / len(p)


def ref_a2inet_rank(p, y):
    """A2INet eq. 7-8, written as printed."""
    B = len(p)
    total = 0.0
    for i in range(B):
        for j in range(B):
            phi = 1.0 if y[i] >= y[j] else -1.0
            total += max(0.0, abs(y[i] - y[j]) - phi * (p[i] - p[j]))
    return total / B**2


def ref_plcc(p, y):
    """DOVER plcc_loss with numpy's population std."""
    pn = (p - p.mean()) / (p.std() + 1e-8)
    yn = (y - y.mean()) / (y.std() + 1e-8)
    loss0 = np.mean((pn - yn) ** 2) / 4
    rho = np.mean(pn * yn)
    loss1 = np.mean((rho * pn - yn) ** 2) / 4
    return (loss0 + loss1) / 2


def ref_rank(p, y):
    B = len(p)
    R = np.zeros((B, B))
    for i in range(B):
        for j in range(B):
            R[i, j] = max(0.0, (p[i] - p[j]) * np.sign(y[j] - y[i]))
    return R.sum() / (B * (B - 1)) / (1 + R.max())


def ref_hinge(p, y, margin=1.0, reduction="mean"):
    total, count = 0.0, 0
    for i in range(len(p)):
        for j in range(len(p)):
            s = np.sign(y[i] - y[j])
            if s != 0:
                total += max(0.0, margin - (p[i] - p[j]) * s)
                count += 1
    if reduction == "sum":
        return total
    return total / count if count else 0.0


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ------------------------------------------------------------- values
@pytest.mark.parametrize(
    "fn, ref",
    [
        (mae_loss, ref_mae),
        (vsfa_l1_loss, ref_mae),
        (lambda p, y: mae_rank_loss(p, y), lambda p, y: ref_mae(p, y) + ref_a2inet_rank(p, y)),
        (lambda p, y: mae_rank_loss(p, y, eta=0.25), lambda p, y: ref_mae(p, y) + 0.25 * ref_a2inet_rank(p, y)),
        (plcc_loss, ref_plcc),
        (rank_loss, ref_rank),
        (plcc_rank_loss, lambda p, y: ref_plcc(p, y) + 0.3 * ref_rank(p, y)),
        (hinge_rank_loss, ref_hinge),
        (lambda p, y: hinge_rank_loss(p, y, margin=0.5, reduction="sum"), lambda p, y: ref_hinge(p, y, 0.5, "sum")),
    ],
)
def test_values_match_loops(fn, ref):
    out = fn(t(PRED), t(Y))
    assert out.ndim == 0
    assert out.item() == pytest.approx(ref(PRED, Y), rel=1e-12, abs=1e-14)
    # Batches of other sizes and random values, including B = 2.
    rng = np.random.default_rng(0)
    for B in (2, 3, 17):
        p, y = rng.normal(size=B), np.round(rng.normal(size=B), 1)
        assert fn(t(p), t(y)).item() == pytest.approx(ref(p, y), rel=1e-10, abs=1e-12)


def test_hand_computed_small_cases():
    # Two videos ranked the wrong way round by 1: R = [[0, 1], [1, 0]] -> 2 / 2 / (1 + 1).
    assert rank_loss(t([0.0, 1.0]), t([2.0, 1.0])).item() == pytest.approx(0.5)
    # A2INet: exact predictions cost nothing. Reversed ones: MAE 1, and each ordering
    # costs |dy| + |dp| = 2, so the rank term is 4 / B^2 = 1.
    assert mae_rank_loss(t([0.0, 1.0]), t([0.0, 1.0]), eta=1.0).item() == pytest.approx(0.0)
    assert mae_rank_loss(t([1.0, 0.0]), t([0.0, 1.0]), eta=1.0).item() == pytest.approx(1.0 + 1.0)
    # Hinge: correctly ordered by exactly the margin costs nothing.
    assert hinge_rank_loss(t([0.0, 1.0]), t([0.0, 5.0])).item() == 0.0
    # Perfectly correlated predictions give zero PLCC loss whatever their scale.
    assert plcc_loss(t([1.0, 2.0, 3.0]), t([10.0, 20.0, 30.0])).item() == pytest.approx(0.0, abs=1e-12)
    # Reversed: loss0 = MSE(-yn, yn) / 4 = 1, rho = -1 so loss1 = 0; (1 + 0) / 2.
    assert plcc_loss(t([3.0, 2.0, 1.0]), t([1.0, 2.0, 3.0])).item() == pytest.approx(0.5, abs=1e-7)


def test_a2inet_tie_costs_prediction_gap():
    # Literal eq. 7-8: equal MOS, phi = +1 both ways -> |p_i - p_j| (twice) / B^2.
    assert mae_rank_loss(t([0.0, 0.6]), t([0.0, 0.0]), eta=1.0).item() == pytest.approx(0.3 + 0.6 / 4)


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_and_gradcheck(name):
    loss = get_loss(name)
    p = t(PRED, grad=True)
    loss(p, t(Y)).backward()
    assert torch.isfinite(p.grad).all() and (p.grad != 0).any()
    # Finite differences away from kinks (distinct values, no pair at a hinge corner).
    x = t([0.31, 1.17, -0.42, 0.85, 0.05], grad=True)
    y = t([3.0, 4.1, 2.2, 3.5, 1.3])
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (x,))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_single_video_batch(name):
    p = t([0.7], grad=True)
    out = get_loss(name)(p, t([3.0]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(p.grad).all()
    if name in ("rank", "hinge_rank", "plcc", "plcc_rank"):
        assert out.item() == 0.0 and p.grad.item() == 0.0
    if name == "mae_rank":
        assert out.item() == pytest.approx(2.3)  # the rank term is 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_constant_targets_and_constant_predictions(name):
    loss = get_loss(name)
    for pred, y in (
        ([0.1, 0.5, 0.3], [2.0, 2.0, 2.0]),
        ([0.4, 0.4, 0.4], [1.0, 3.0, 2.0]),
        ([0.4, 0.4, 0.4], [2.0, 2.0, 2.0]),
    ):
        p = t(pred, grad=True)
        out = loss(p, t(y))
        out.backward()
        assert torch.isfinite(out), (name, pred, y)
        assert torch.isfinite(p.grad).all(), (name, pred, y)


def test_constant_targets_rank_and_hinge_are_zero():
    assert rank_loss(t([0.1, 0.5, 0.3]), t([2.0] * 3)).item() == 0.0
    assert hinge_rank_loss(t([0.1, 0.5, 0.3]), t([2.0] * 3)).item() == 0.0


def test_float32_and_batched_shapes():
    p = torch.tensor(PRED, dtype=torch.float32)
    out = plcc_rank_loss(p, torch.tensor(Y, dtype=torch.float32))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref_plcc(PRED, Y) + 0.3 * ref_rank(PRED, Y), rel=1e-5)


# ------------------------------------------------------------- registry and errors
def test_registry():
    assert list_losses() == sorted(["mae", "mae_rank", "plcc", "rank", "plcc_rank", "hinge_rank", "vsfa_l1"])
    assert get_loss("vsfa_l1").label_scaling == "max"
    assert all(LOSSES[n].label_scaling == "none" for n in LOSSES if n != "vsfa_l1")
    bound = get_loss("mae_rank", eta=0.5)
    assert bound.params == (("eta", 0.5),)
    expected = ref_mae(PRED, Y) + 0.5 * ref_a2inet_rank(PRED, Y)
    assert bound(t(PRED), t(Y)).item() == pytest.approx(expected, rel=1e-12)
    assert get_loss("hinge_rank", margin=2.0)(t(PRED), t(Y)).item() == pytest.approx(ref_hinge(PRED, Y, 2.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_loss("plc"), "unknown loss 'plc'. Did you mean plcc"),
        (lambda: get_loss("mae", eta=1.0), "does not take parameters"),
        (lambda: mae_loss(t([1.0, 2.0]), t([1.0]).reshape(1, 1)), "1-D"),
        (lambda: mae_loss(t([[1.0]]), t([[1.0]])), "1-D"),
        (lambda: mae_loss(np.ones(2), t([1.0, 2.0])), "torch tensors"),
        (lambda: rank_loss(torch.zeros(0), torch.zeros(0)), "empty batch"),
        (lambda: plcc_loss(torch.ones(2, dtype=torch.long), torch.ones(2)), "floating-point"),
        (lambda: hinge_rank_loss(t([1.0]), t([1.0]), reduction="max"), "reduction"),
    ],
)
def test_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def test_math_identity_of_vsfa_l1():
    # Same number as mae: the difference is the label scaling the trainer applies.
    assert math.isclose(vsfa_l1_loss(t(PRED / 5), t(Y / 5)).item(), mae_loss(t(PRED), t(Y)).item() / 5)
