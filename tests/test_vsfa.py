"""Tests for regressors.vsfa: the VSFA head module (shapes, gradients, padding, TP pooling)."""

import numpy as np
import pytest
import torch

from regressors.errors import InvalidInputError
from regressors.modules import build_module, list_modules
from regressors.temporal_pooling import subjective_tp
from regressors.vsfa import VSFAHead

D = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _module(seed=0, **params):
    torch.manual_seed(seed)
    return build_module("vsfa", D, **params).double().eval()


def _padded(seqs, T=None):
    T = T or max(len(s) for s in seqs)
    x = torch.zeros((len(seqs), T, D), dtype=torch.float64)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(s)
    return x, torch.tensor([len(s) for s in seqs])


def test_registered_and_shapes():
    assert "vsfa" in list_modules()
    m = _module()
    assert isinstance(m, VSFAHead)
    # VSFA sizes: Linear(D, 128) -> GRU(128, 32) -> Linear(32, 1).
    assert (m.fc0.in_features, m.fc0.out_features) == (D, 128)
    assert (m.rnn.input_size, m.rnn.hidden_size, m.rnn.num_layers) == (128, 32, 1)
    assert m.rnn.batch_first and not m.rnn.bidirectional
    assert (m.q.in_features, m.q.out_features) == (32, 1)
    assert m.tau == 12 and m.beta == 0.5
    x = torch.randn(3, 7, D, dtype=torch.float64)
    out = m(x, torch.tensor([7, 2, 5]))
    assert out.shape == (3,) and out.dtype == torch.float64
    assert m.frame_scores(x).shape == (3, 7)
    small = build_module("vsfa", D, reduced_size=16, hidden_size=4, tau=3, beta=0.2)
    assert small(torch.randn(2, 5, D), torch.tensor([5, 1])).shape == (2,)


def test_gradients_reach_every_parameter():
    m = _module().train()
    x = torch.randn(4, 9, D, dtype=torch.float64)
    m(x, torch.tensor([9, 3, 1, 6])).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).any(), name


def test_padding_does_not_change_a_videos_score():
    rng = np.random.default_rng(1)
    video = rng.normal(size=(5, D))
    others = [rng.normal(size=(n, D)) for n in (11, 2)]
    m = _module()
    with torch.no_grad():
        alone = m(*_padded([video]))  # no padding at all
        in_batch = m(*_padded([video] + others))  # padded to 11
        long_pad = m(*_padded([video], T=30))
        x, lengths = _padded([video] + others)
        x[0, 5:] = 1e3  # garbage in the padding
        garbage = m(x, lengths)
    for other in (in_batch[0], long_pad[0], garbage[0]):
        assert other.item() == pytest.approx(alone[0].item(), abs=1e-12)


def test_pooling_is_subjective_tp_of_frame_scores():
    rng = np.random.default_rng(2)
    seqs = [rng.normal(size=(n, D)) for n in (1, 4, 13, 20)]
    m = _module(tau=12, beta=0.5)
    x, lengths = _padded(seqs)
    with torch.no_grad():
        out = m(x, lengths).numpy()
        q = m.frame_scores(x).numpy()
    for i, n in enumerate(lengths.tolist()):
        _, expected = subjective_tp(q[i, :n], tau=12, beta=0.5)
        assert out[i] == pytest.approx(expected, abs=1e-12)


def test_gru_starts_from_zero_state():
    m = _module()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    with torch.no_grad():
        expected, _ = m.rnn(m.fc0(x), torch.zeros(1, 2, 32, dtype=torch.float64))
        got = m.frame_scores(x)
    torch.testing.assert_close(got, m.q(expected).squeeze(2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: build_module("vsfa", 0), "input_dim must be a positive integer"),
        (lambda: build_module("vsfa", D, hidden_size=0), "hidden_size"),
        (lambda: build_module("vsfa", D, tau=0), "tau must be a positive integer"),
        (lambda: build_module("vsfa", D, beta=2.0), "beta"),
        (lambda: build_module("vsfa", D)(torch.zeros(2, 3, D + 1), torch.tensor([3, 3])), r"\[B, T, 8\]"),
        (lambda: build_module("vsfa", D)(torch.zeros(2, 3, D), torch.tensor([4, 3])), "lengths must lie"),
    ],
)
def test_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()
