"""Tests for regressors.a2inet: the A2INet head (through the registry) and align_steps."""

import numpy as np
import pytest
import torch

import regressors.a2inet as a2inet
from regressors.a2inet import CGIN, FGIN, FUSIONS, AdaIN, GlobalSelfAttention, align_steps
from regressors.errors import InvalidInputError, RegressorError
from regressors.modules import build_module, list_modules

DIMS = (6, 10)
D_IN = sum(DIMS)
D_MODEL = 16
LENGTHS = [4, 7, 10]

# (fusion, extra builder params): every fusion, the one-direction ablations, the switches.
VARIANTS = [(f, {}) for f in FUSIONS] + [
    ("adain", {"direction": "s_to_q"}),
    ("fgin", {"direction": "q_to_s"}),
    ("concat", {"global_attention": False, "temporal_gates": False}),
    ("cgin", {"temporal_gates": False}),
]
IDS = [f + "".join(f"-{k}={v}" for k, v in kw.items()) for f, kw in VARIANTS]


def _build(fusion="cgin", seed=0, **params):
    torch.manual_seed(seed)
    # gate_reduction 4: a one-unit gate bottleneck (16 // 16) could sit dead on 3 videos.
    params.setdefault("gate_reduction", 4)
    return build_module("a2inet", D_IN, dims=DIMS, d_model=D_MODEL, fusion=fusion, **params)


def _batch(lengths, T=None, *, pad=float("nan"), dtype=torch.float32, seed=1):
    """``[B, T, D_IN]`` with video i = the first lengths[i] rows of a fixed random video i."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths) if T is None else T
    videos = [torch.randn(n, D_IN, generator=g, dtype=dtype) for n in lengths]
    x = torch.full((len(lengths), T, D_IN), pad, dtype=dtype)
    for i, v in enumerate(videos):
        x[i, : len(v)] = v
    return x, torch.tensor(lengths)


# ---------------------------------------------------------------- shapes, gradients
def test_registered():
    assert "a2inet" in list_modules()


@pytest.mark.parametrize("fusion, params", VARIANTS, ids=IDS)
def test_output_shape(fusion, params):
    model = _build(fusion, **params)
    x, lengths = _batch(LENGTHS)
    out = model(x, lengths)
    assert out.shape == (3,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fusion, params", VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(fusion, params):
    model = _build(fusion, **params).train()
    x, lengths = _batch(LENGTHS)
    model(x, lengths).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion, params", VARIANTS, ids=IDS)
def test_padding_invariance(fusion, params):
    """A video's score is the same alone and padded (with NaN) in a longer batch.

    Checks the key mask of the attention, the masked max/std pooling, the zeroing before
    the temporal convolutions, the packed GRU and the TP mask.
    """
    model = _build(fusion, **params).double().eval()
    with torch.no_grad():
        x, lengths = _batch(LENGTHS, T=13, dtype=torch.float64)
        batched = model(x, lengths)
        for i, n in enumerate(LENGTHS):
            alone = model(x[i : i + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-12)
        zero_padded, _ = _batch(LENGTHS, T=10, pad=0.0, dtype=torch.float64)
        torch.testing.assert_close(model(zero_padded, lengths), batched, rtol=0, atol=1e-12)


def test_padding_gets_no_gradient():
    model = _build("cgin")
    x, lengths = _batch(LENGTHS, pad=0.0)
    x.requires_grad_(True)
    model(x, lengths).sum().backward()
    for i, n in enumerate(LENGTHS):
        assert (x.grad[i, n:] == 0).all()
        assert x.grad[i, :n].abs().sum() > 0


# ---------------------------------------------------------------- equations, written out
def _stats(v):
    """Per-frame mean and population std over channels, EPS inside the root (Choice 1)."""
    mu = v.mean(axis=-1, keepdims=True)
    return mu, np.sqrt(v.var(axis=-1, keepdims=True) + a2inet.EPS)


def _ref_adain(x, y):  # eq. 1
    (mx, sx), (my, sy) = _stats(x), _stats(y)
    return sy * (x - mx) / sx + my


def _ref_f(x, y, fc_gamma, fc_theta, gamma1):  # eq. 2 (gamma1 = 0) and eq. 3
    mx, sx = _stats(x)
    x_hat = (x - mx) / sx
    linear = lambda fc, v: v @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()  # noqa: E731
    return linear(fc_gamma, y) * x_hat + linear(fc_theta, y) + gamma1 * x_hat


@pytest.fixture
def xy():
    rng = np.random.default_rng(3)
    return rng.normal(size=(2, 3, 5)) * 2 + 1, rng.normal(size=(2, 3, 5)) * 0.5 - 3


def test_adain_formula(xy):
    x, y = xy
    out = AdaIN()(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(out, _ref_adain(x, y), rtol=1e-12)
    # A frame with Y's mean and std pattern is mapped onto Y itself (up to EPS).
    np.testing.assert_allclose(
        AdaIN()(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[10.0, 20.0, 30.0]]])).numpy(),
        [[[10.0, 20.0, 30.0]]],
        atol=1e-4,
    )


def test_fgin_formula(xy):
    x, y = xy
    torch.manual_seed(0)
    fgin = FGIN(5).double()
    out = fgin(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    np.testing.assert_allclose(out, _ref_f(x, y, fgin.gamma_s, fgin.theta_s, 0.0), rtol=1e-12)


def test_cgin_formula(xy):
    f_q, f_s = xy
    torch.manual_seed(0)
    cgin = CGIN(5, block="cgin", gamma1=1.0).double()
    out = cgin(torch.from_numpy(f_q), torch.from_numpy(f_s)).detach().numpy()
    f_qs = _ref_f(f_q, f_s, cgin.qs.gamma_s, cgin.qs.theta_s, 1.0)
    f_sq = _ref_f(f_s, f_q, cgin.sq.gamma_s, cgin.sq.theta_s, 1.0)
    np.testing.assert_allclose(out, np.concatenate([f_qs, f_sq], axis=-1), rtol=1e-12)
    # gamma1 adds exactly gamma1 * normalised X to both halves.
    cgin2 = CGIN(5, block="cgin", gamma1=2.5).double()
    cgin2.load_state_dict(cgin.state_dict())
    out2 = cgin2(torch.from_numpy(f_q), torch.from_numpy(f_s)).detach().numpy()
    x_hat = np.concatenate([(v - _stats(v)[0]) / _stats(v)[1] for v in (f_q, f_s)], axis=-1)
    np.testing.assert_allclose(out2 - out, 1.5 * x_hat, atol=1e-12)


def test_one_direction_ablations(xy):
    f_q, f_s = map(torch.from_numpy, xy)
    s_to_q = CGIN(5, block="adain", direction="s_to_q")(f_q, f_s).numpy()
    np.testing.assert_allclose(s_to_q, np.concatenate([xy[0], _ref_adain(xy[1], xy[0])], -1), rtol=1e-12)
    q_to_s = CGIN(5, block="adain", direction="q_to_s")(f_q, f_s).numpy()
    np.testing.assert_allclose(q_to_s, np.concatenate([_ref_adain(xy[0], xy[1]), xy[1]], -1), rtol=1e-12)


def test_global_self_attention_formula():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 4, 6))
    torch.manual_seed(0)
    att = GlobalSelfAttention(6).double()
    valid = torch.tensor([[True, True, True, False]])
    out = att(torch.from_numpy(x), valid).detach().numpy()[0, :3]
    w = {k: getattr(att, k).weight.detach().numpy() for k in ("w_q", "w_k", "w_v")}
    v3 = x[0, :3]  # eq. 5 on the three valid frames only
    scores = (v3 @ w["w_q"].T) @ (v3 @ w["w_k"].T).T / np.sqrt(6)
    a = np.exp(scores - scores.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, a @ (v3 @ w["w_v"].T) + v3, rtol=1e-12)


# ---------------------------------------------------------------- errors
def test_input_dim_must_match_dims():
    with pytest.raises(RegressorError, match=r"6 \+ 10 = 16"):
        build_module("a2inet", 15, dims=DIMS, d_model=D_MODEL)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"dims": (16,)}, "two positive integers"),
        ({"dims": (0, 16)}, "two positive integers"),
        ({"fusion": "cgn"}, "did you mean 'cgin'"),
        ({"direction": "s_to_q", "fusion": "concat"}, "normalising fusions"),
        ({"mlp_dropout": 1.0}, r"\[0, 1\)"),
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"tau": 0}, "tau must be a positive integer"),
    ],
)
def test_builder_errors(params, match):
    params = {"dims": DIMS, **params}
    with pytest.raises(InvalidInputError, match=match):
        build_module("a2inet", sum(params["dims"]), **params)


def test_forward_errors():
    model = _build()
    x, lengths = _batch(LENGTHS, pad=0.0)
    with pytest.raises(InvalidInputError, match=r"\[B, T, 16\]"):
        model(x[..., :15], lengths)
    with pytest.raises(InvalidInputError, match=r"lengths must lie in \[1, T=10\]"):
        model(x, torch.tensor([0, 7, 10]))
    with pytest.raises(InvalidInputError, match=r"lengths must lie in \[1, T=10\]"):
        model(x, torch.tensor([4, 7, 11]))
    with pytest.raises(InvalidInputError, match="integers"):
        model(x, torch.tensor([4.0, 7.0, 10.0]))


# ---------------------------------------------------------------- align_steps
def test_align_steps_upsamples_by_nearest_centre():
    a = np.arange(8, dtype=np.float32).reshape(8, 1)
    b = (100 + np.arange(8, dtype=np.float32)).reshape(4, 2)
    out = align_steps([a, b])  # default: the first family's 8 steps
    assert out.shape == (8, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], np.arange(8))
    np.testing.assert_array_equal(out[:, 1:], b[[0, 0, 1, 1, 2, 2, 3, 3]])


def test_align_steps_downsamples_and_keeps_equal_counts():
    a = np.arange(8.0).reshape(8, 1)
    b = np.arange(4.0).reshape(4, 1) * 10
    np.testing.assert_array_equal(align_steps([a, b], steps=4), [[1, 0], [3, 10], [5, 20], [7, 30]])
    np.testing.assert_array_equal(align_steps([b, b]), np.concatenate([b, b], axis=1))
    # 128 PR frames with 32 per-step SlowFast features: each step serves 4 frames.
    pr = np.zeros((128, 2))
    fast = np.arange(32.0).reshape(32, 1)
    np.testing.assert_array_equal(align_steps([pr, fast])[:, 2], np.repeat(np.arange(32.0), 4))
    np.testing.assert_array_equal(align_steps([fast, pr])[:, 0], np.arange(32.0))
    # Uneven ratio, 3 steps onto 7: floor((k + 0.5) * 3 / 7)
    # = floor(.21, .64, 1.07, 1.5, 1.93, 2.36, 2.79).
    three = np.arange(3.0)[:, None]
    np.testing.assert_array_equal(align_steps([three], steps=7)[:, 0], [0, 0, 1, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "features, kwargs, match",
    [
        ([], {}, "non-empty"),
        ([np.ones(4)], {}, r"2-D \[T, D\]"),
        ([np.ones((4, 2)), np.ones((0, 2))], {}, "family 1"),
        ([np.ones((4, 2))], {"steps": 0}, "steps must be a positive integer"),
        ([np.ones((4, 2))], {"method": "linear"}, "unknown alignment method"),
    ],
)
def test_align_steps_errors(features, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        align_steps(features, **kwargs)
