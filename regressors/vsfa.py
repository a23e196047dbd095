"""VSFA head (Li et al., ACM MM 2019): linear reduction, GRU, per-frame score, TP pooling.

Registered in :mod:`regressors.modules` as ``"vsfa"``; train it with
:class:`regressors.sequence.SequenceRegressor` (whose defaults are VSFA's: L1 on
MOS / max MOS, Adam lr 1e-5, batch 16, StepLR).

Facts taken from the reference code (lidq92/VSFA ``VSFA.py``, commit b78751b):

* The reduction ``ANN(input_size, 128, n_ANNlayers=1)`` is ``fc0`` only: one Linear with
  no activation and no dropout (its ``fc``/``dropout`` layers exist but are used only
  when ``n_ANNlayers > 1``, so ``ann.fc.*`` in a VSFA state dict is unused).
* ``GRU(128, 32, batch_first=True)``, one layer, unidirectional, h0 = 0.
* ``Linear(32, 1)`` per frame, then TP(tau=12, beta=0.5) over the first ``length``
  frames and the mean of the pooled frame scores.

Our TP (:func:`regressors.temporal_pooling.subjective_tp_torch`) is batched and uses a
shift-stable softmin; the reference loops over videos and computes ``exp(-q)`` directly.
"""

from __future__ import annotations

from numbers import Integral

from torch import nn

from regressors.errors import InvalidInputError
from regressors.modules import register_module
from regressors.temporal_pooling import TP_BETA, TP_TAU, _check_tp_params, subjective_tp_torch

__all__ = ["VSFA_HIDDEN_SIZE", "VSFA_REDUCED_SIZE", "VSFAHead", "build_vsfa"]

#: Width of the linear reduction (VSFA ``reduced_size``).
VSFA_REDUCED_SIZE = 128
#: GRU hidden size (VSFA ``hidden_size``).
VSFA_HIDDEN_SIZE = 32


class VSFAHead(nn.Module):
    """VSFA's trainable head on per-frame features.

    ::

        x [B, T, D] (zero-padded)      lengths [B]
              |                              |
        fc0: Linear(D, 128)                  |
              |                              |
        rnn: GRU(128, 32), h0 = 0            |
              |                              |
        q: Linear(32, 1) -> frame scores [B, T]
              |                              |
        subjective TP (tau, beta) over t < lengths[b]
              |
        mean of pooled frame scores -> [B]

    The GRU is causal, so frames past a video's length cannot change its scores: the
    same video padded to any T gets the same output.
    """

    def __init__(
        self,
        input_dim: int,
        *,
        reduced_size: int = VSFA_REDUCED_SIZE,
        hidden_size: int = VSFA_HIDDEN_SIZE,
        tau: int = TP_TAU,
        beta: float = TP_BETA,
    ):
        super().__init__()
        for name, value in (("input_dim", input_dim), ("reduced_size", reduced_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        _check_tp_params(tau, beta)  # fail at build time, not in the first forward
        self.input_dim = int(input_dim)
        self.tau = tau
        self.beta = beta
        self.fc0 = nn.Linear(self.input_dim, reduced_size)
        self.rnn = nn.GRU(reduced_size, hidden_size, batch_first=True)
        self.q = nn.Linear(hidden_size, 1)

    def frame_scores(self, x):
        """Per-frame scores before pooling: ``x [B, T, D]`` -> ``[B, T]``.

        Entries past a video's length are computed but meaningless.
        """
        if x.ndim != 3 or x.shape[2] != self.input_dim:
            raise InvalidInputError(f"x must be [B, T, {self.input_dim}], got shape {tuple(x.shape)}")
        # Passing no h0 makes nn.GRU start from zeros, as VSFA's _get_initial_state does.
        out, _ = self.rnn(self.fc0(x))
        return self.q(out).squeeze(2)

    def forward(self, x, lengths):
        """Video scores: ``x [B, T, D]`` float, ``lengths [B]`` int64 -> ``[B]``."""
        return subjective_tp_torch(self.frame_scores(x), lengths, tau=self.tau, beta=self.beta)


@register_module("vsfa")
def build_vsfa(input_dim: int, **params) -> VSFAHead:
    """Registry builder: ``VSFAHead(input_dim, **params)`` (``reduced_size``,
    ``hidden_size``, ``tau``, ``beta``)."""
    return VSFAHead(input_dim, **params)
