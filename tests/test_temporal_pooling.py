"""Tests for regressors.temporal_pooling: feature pooling and VSFA's subjective TP."""

import numpy as np
import pytest
import torch

from regressors.errors import InvalidInputError
from regressors.temporal_pooling import pool_features, subjective_tp, subjective_tp_torch

# Test vectors of REFERENCE.md ("VSFA GRU"), computed with the reference code in float64.
Q_RAMP = np.arange(1, 21) / 10.0
MEAN_RAMP = 0.8211372605
Q_SHORT = np.array([0.3, 0.9, 0.1, 0.5, 0.7])
FRAMES_SHORT = np.array([0.3606772, 0.3792940, 0.2346056, 0.3450166, 0.4])
MEAN_SHORT = 0.3439186837


def _tp_loops(q, tau=12, beta=0.5):
    """The REFERENCE.md formulas written as plain loops (independent of the library)."""
    q = np.asarray(q, dtype=np.float64)
    T = len(q)
    out = np.empty(T)
    for t in range(T):
        memory = q[max(0, t - tau + 1) : t + 1].min()
        window = q[t : min(T, t + tau)]
        w = np.exp(-(window - window.min()))  # same ratio as e^{-q}; the shift avoids overflow
        out[t] = beta * (window * w).sum() / w.sum() + (1 - beta) * memory
    return out


# ---------------------------------------------------------------- pool_features
def test_pool_features_methods():
    x = np.array([[1.0, 5.0], [3.0, -1.0], [2.0, 2.0]])
    np.testing.assert_array_equal(pool_features(x, "mean"), [2.0, 2.0])
    np.testing.assert_array_equal(pool_features(x, "max"), [3.0, 5.0])
    np.testing.assert_array_equal(pool_features(x, "meanmax"), [2.0, 2.0, 3.0, 5.0])
    np.testing.assert_array_equal(pool_features(x), [2.0, 2.0])  # mean by default


def test_pool_features_dtypes_and_single_step():
    x32 = np.ones((4, 3), dtype=np.float32)
    assert pool_features(x32, "meanmax").dtype == np.float32
    assert pool_features(np.ones((2, 3), dtype=np.int64), "max").dtype == np.float64
    row = np.array([[0.5, -2.0]])
    np.testing.assert_array_equal(pool_features(row, "meanmax"), [0.5, -2.0, 0.5, -2.0])


@pytest.mark.parametrize(
    "x, method, match",
    [
        (np.ones(3), "mean", r"2-D \[T, D\]"),
        (np.ones((0, 3)), "mean", "T = 0"),
        (np.ones((2, 3)), "maen", "unknown pooling method 'maen'. Did you mean mean"),
        (np.ones((2, 3)), "median", "unknown pooling method"),
    ],
)
def test_pool_features_errors(x, method, match):
    with pytest.raises(InvalidInputError, match=match):
        pool_features(x, method)


# ---------------------------------------------------------------- subjective TP
def test_subjective_tp_reference_vectors():
    frames, score = subjective_tp(Q_RAMP)
    assert frames.shape == (20,) and frames.dtype == np.float64
    assert score == pytest.approx(MEAN_RAMP, abs=1e-10)

    frames, score = subjective_tp(Q_SHORT, tau=12, beta=0.5)
    np.testing.assert_allclose(frames, FRAMES_SHORT, rtol=0, atol=5e-8)
    assert score == pytest.approx(MEAN_SHORT, abs=1e-10)
    assert isinstance(score, float)


def test_subjective_tp_torch_reference_vectors_batched_with_padding():
    q = torch.full((2, 24), float("nan"), dtype=torch.float64)  # garbage in the padding
    q[0, :20] = torch.from_numpy(Q_RAMP)
    q[1, :5] = torch.from_numpy(Q_SHORT)
    out = subjective_tp_torch(q, torch.tensor([20, 5]))
    assert out.shape == (2,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [MEAN_RAMP, MEAN_SHORT], rtol=0, atol=1e-10)


@pytest.mark.parametrize("tau, beta", [(12, 0.5), (3, 0.2), (1, 0.9), (30, 1.0), (5, 0.0)])
def test_vectorised_matches_loops(tau, beta):
    rng = np.random.default_rng(tau)
    lengths = [1, 2, 5, 12, 13, 29]
    seqs = [rng.normal(size=n) * 2 for n in lengths]
    padded = torch.zeros((len(seqs), max(lengths)), dtype=torch.float64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = torch.from_numpy(s)
        frames, score = subjective_tp(s, tau=tau, beta=beta)
        np.testing.assert_allclose(frames, _tp_loops(s, tau, beta), rtol=0, atol=1e-12)
        assert score == pytest.approx(_tp_loops(s, tau, beta).mean(), abs=1e-12)
    batched = subjective_tp_torch(padded, lengths, tau=tau, beta=beta).numpy()
    np.testing.assert_allclose(batched, [_tp_loops(s, tau, beta).mean() for s in seqs], atol=1e-12)


def test_tau_one_is_identity():
    q = np.array([0.4, -1.0, 3.0])
    frames, _ = subjective_tp(q, tau=1)
    np.testing.assert_allclose(frames, q, atol=1e-15)


def test_large_scores_do_not_overflow():
    # e^{-q} alone overflows at q = -800; the pooled values must stay exact.
    q = np.array([800.0, 801.0, -800.0, -799.0])
    frames, score = subjective_tp(q, tau=2)
    np.testing.assert_allclose(frames, _tp_loops(q, tau=2), rtol=1e-15)
    assert frames[1] == pytest.approx(0.0, abs=1e-12)  # 0.5 * -800 + 0.5 * 800
    # Shifting every score shifts the pooled scores by the same amount.
    base = np.array([0.3, 0.9, 0.1, 0.5, 0.7])
    np.testing.assert_allclose(subjective_tp(base + 1000.0)[0], subjective_tp(base)[0] + 1000.0, atol=1e-9)


def test_torch_is_differentiable_and_padding_gets_no_gradient():
    q = torch.zeros((2, 8), dtype=torch.float64)
    q[0, :8] = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4])
    q[1, :3] = torch.tensor([1.0, 0.5, 2.0])
    q[1, 3:] = float("nan")
    q.requires_grad_(True)
    subjective_tp_torch(q, torch.tensor([8, 3]), tau=3).sum().backward()
    assert torch.isfinite(q.grad).all()
    assert (q.grad[1, 3:] == 0).all()
    assert (q.grad[0] != 0).any() and (q.grad[1, :3] != 0).any()

    # Finite differences on distinct values (no ties in the min).
    x = torch.tensor(
        [[0.31, 0.92, 0.13, 0.55, 0.74, 0.0], [0.6, 0.2, 0.45, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    lengths = torch.tensor([5, 3])
    assert torch.autograd.gradcheck(lambda t: subjective_tp_torch(t, lengths, tau=2), (x,))


def test_torch_float32_close_to_float64():
    q = torch.from_numpy(Q_RAMP).float().unsqueeze(0)
    out = subjective_tp_torch(q, [20])
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(MEAN_RAMP, abs=1e-6)


@pytest.mark.parametrize(
    "q, lengths, kwargs, match",
    [
        (torch.zeros(2, 4), [4, 5], {}, r"lengths must lie in \[1, T=4\]"),
        (torch.zeros(2, 4), [0, 2], {}, "lengths must lie"),
        (torch.zeros(2, 4), [4], {}, r"lengths must be 1-D \[B\]"),
        (torch.zeros(2, 4), [1.5, 2.0], {}, "integers"),
        (torch.zeros(4), [4], {}, r"2-D tensor \[B, T\]"),
        (torch.zeros(1, 4, dtype=torch.long), [4], {}, "floating-point"),
        (torch.zeros(1, 4), [4], {"tau": 0}, "tau must be a positive integer"),
        (torch.zeros(1, 4), [4], {"beta": 1.5}, r"beta must lie in \[0, 1\]"),
    ],
)
def test_torch_errors(q, lengths, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        subjective_tp_torch(q, lengths, **kwargs)


@pytest.mark.parametrize("q, match", [([], "non-empty"), ([[1.0]], "non-empty 1-D"), ([1.0, np.nan], "NaN")])
def test_numpy_errors(q, match):
    with pytest.raises(InvalidInputError, match=match):
        subjective_tp(q)
