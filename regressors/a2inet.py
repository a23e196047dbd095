"""A2INet head (seed 001): semantic-aware and quality-aware interaction network.

Registered as ``"a2inet"`` (:func:`build_a2inet`). Each step of the input carries two
aware features side by side, ``x = [quality | content]`` with ``dims = (d_q, d_s)``:
UNIQUE-style quality 1920 with ResNet-50 semantic 7680 (S+S) or SlowFast per-step fast
512 (S+M). Families sampled at different rates are put on one time axis first, by
:func:`align_steps`. Names follow the paper (CAGI, CGIN, FGIN, AdaIN, CATM)::

    x [B, T, d_q + d_s], lengths [B]          (padding zeroed on entry)
      |                        |
      x[..., :d_q]             x[..., d_q:]
      FC -> F_f^q [B, T, D]    FC -> F_f^s [B, T, D]
      |                        |
    CAGI   +---------+---------+
           CGIN (eq. 3-4): f(F_f^q, F_f^s) (+) f(F_f^s, F_f^q)  -> F^pe [B, T, 2D]
             (or AdaIN eq. 1 / FGIN eq. 2 / concat / concat + MLP)
           global self-attention over frames, padded keys masked,
           plus residual (eq. 5)                                -> F^e  [B, T, 2D]
                     |
    CATM   FC -> F^e [B, T, D]  (zeroed at padded steps)
             |                                   |
           quality saliency block             content variation block
           max over valid t -> [B, D]         std over valid t -> [B, D]
           FC-ReLU-FC-Sigmoid -> F_max        FC-ReLU-FC-Sigmoid -> F_std
           temporal conv(F^e) * F_max         temporal conv(F^e) * F_std
             -> F^qt [B, T, D]                  -> F^st [B, T, D]
             +------------------+----------------+
                  concat -> F^z [B, T, 2D]
           temporal network (VSFAHead): FC -> [B, T, 128] -> GRU(32, h0 = 0)
                  -> FC -> frame scores q [B, T]
           subjective TP pooling (tau 12, beta 0.5) over valid frames -> [B]

Choices (where the paper is vague; REFERENCE.md: no public code, the choice is ours):

1. Instance statistics mu, sigma (eq. 1-3) are taken per frame over the D channels of
   its FC'd feature vector: the frame is the "instance". This keeps CGIN local, as the
   paper describes it, and leaves all exchange between frames to the attention.
   sigma is the population std with ``EPS`` = 1e-5 inside the root (torch's
   InstanceNorm).
2. gamma_s and theta_s (eq. 2-3) are one FC D -> D each, with bias, applied to the raw
   guide Y; each direction of CGIN (eq. 4) has its own pair, so CGIN holds four FCs.
3. The one-direction ablations of Table 6 (``direction="s_to_q"``: S deformed towards Q,
   i.e. f(F_f^s, F_f^q); ``"q_to_s"``) deform one feature and keep the other as it is.
   The concatenation order is always [quality, semantic].
4. Global self-attention (eq. 5): one head, Q/K/V projections without bias (eq. 5 names
   the matrices only, and a key bias cancels in the softmax), scale 1/sqrt(2D), no
   output projection, no normalisation, no dropout, residual F^pe added, as MANIQA's
   transposed attention block (the paper's ref. 50). Padded frames are masked as keys;
   their own rows are computed and never used.
5. ``fusion="concat"`` / ``"concat_mlp"`` replace CGIN only; the MLP is Linear(2D, 2D),
   ReLU, Dropout(``mlp_dropout`` = 0.5, VSFA's ``dropout_p``). The paper's Table 5 rows
   also leave out the attention and the CATM blocks: ``global_attention=False,
   temporal_gates=False`` (Table 7's "GC"/"TM" columns are these two switches).
6. Each gate is a squeeze-excitation bottleneck D -> D // ``gate_reduction`` (16, as
   SE-Net) -> D; the two blocks (Figure 3) have their own gate and their own temporal
   convolution, Conv1d(D, D, ``conv_kernel`` = 3, "same" zero padding). The gate, one
   vector per video, multiplies the convolved features at every step; no residual.
7. Max and std pooling count valid steps only; F^e is zeroed at padded steps before the
   convolution, so a video's last steps see the same zeros whether or not it is padded.
8. The FC layers to D (per family, and CATM's 2D -> D) are plain linear maps. The
   temporal network is VSFA's head itself (:class:`regressors.vsfa.VSFAHead`): its GRU
   is causal, so padding at the end never reaches a valid step (no packing needed), and
   TP pools valid frames only. Without the CATM blocks it takes F^e [2D] directly.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from regressors.errors import InvalidInputError
from regressors.modules import register_module
from regressors.temporal_pooling import TP_BETA, TP_TAU
from regressors.vsfa import VSFA_HIDDEN_SIZE, VSFA_REDUCED_SIZE, VSFAHead

__all__ = [
    "ALIGN_METHODS",
    "DIRECTIONS",
    "FUSIONS",
    "A2INet",
    "AdaIN",
    "CAGI",
    "CATM",
    "CGIN",
    "FGIN",
    "GlobalSelfAttention",
    "PerceptionBlock",
    "align_steps",
    "build_a2inet",
]

#: Local fusions of the two aware features (``cgin`` is the paper's; the rest are ablations).
FUSIONS = ("cgin", "adain", "fgin", "concat", "concat_mlp")
#: Which features the instance normalisations deform (Table 6); ``both`` is eq. 4.
DIRECTIONS = ("both", "q_to_s", "s_to_q")
#: Resampling methods of :func:`align_steps`.
ALIGN_METHODS = ("nearest",)
#: Added to variances before the square root (torch's InstanceNorm default).
EPS = 1e-5


# ---------------------------------------------------------------- statistics
def _mean_std(x: torch.Tensor, dim: int, mask: torch.Tensor | None = None):
    """Mean and population std (``EPS`` inside the root) of ``x`` along ``dim``.

    ``mask`` (bool, broadcastable to ``x``, True where a value counts) restricts both to
    the valid entries. Returns two tensors shaped like ``x`` with ``dim`` kept as 1.
    """
    if mask is None:
        mean = x.mean(dim, keepdim=True)
        var = (x - mean).pow(2).mean(dim, keepdim=True)
    else:
        count = mask.sum(dim, keepdim=True).to(x.dtype)
        mean = torch.where(mask, x, 0.0).sum(dim, keepdim=True) / count
        var = torch.where(mask, (x - mean).pow(2), 0.0).sum(dim, keepdim=True) / count
    return mean, torch.sqrt(var + EPS)


def _instance_norm(x: torch.Tensor) -> torch.Tensor:
    """(X - mu(X)) / sigma(X) per frame over channels: ``[B, T, D] -> [B, T, D]``."""
    mean, std = _mean_std(x, -1)
    return (x - mean) / std


def masked_max(f: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Temporal max over valid steps: ``f [B, T, D]``, ``valid [B, T]`` -> ``[B, D]``."""
    return f.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)


def masked_std(f: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Temporal population std over valid steps: ``[B, T, D]``, ``[B, T]`` -> ``[B, D]``."""
    return _mean_std(f, 1, valid.unsqueeze(-1))[1].squeeze(1)


# ---------------------------------------------------------------- CAGI
class AdaIN(nn.Module):
    """Adaptive instance normalisation (eq. 1), no parameters.

    ``AdaIN(X, Y) = sigma(Y) (X - mu(X)) / sigma(X) + mu(Y)``; ``x, y [B, T, D] -> [B, T, D]``.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mean_y, std_y = _mean_std(y, -1)
        return std_y * _instance_norm(x) + mean_y


class FGIN(nn.Module):
    """Feature-guided instance normalisation (eq. 2), optionally with CGIN's residual (eq. 3).

    ``f(X, Y) = gamma_s(Y) X^ + theta_s(Y) + gamma1 X^`` with ``X^ = (X - mu(X)) / sigma(X)``
    and gamma_s, theta_s FC layers ``D -> D``. ``gamma1 = 0`` is FGIN (eq. 2); ``gamma1 = 1``
    is the f of CGIN (eq. 3). ``x, y [B, T, D] -> [B, T, D]``.
    """

    def __init__(self, d_model: int, *, gamma1: float = 0.0):
        super().__init__()
        self.gamma_s = nn.Linear(d_model, d_model)
        self.theta_s = nn.Linear(d_model, d_model)
        self.gamma1 = float(gamma1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_hat = _instance_norm(x)
        return self.gamma_s(y) * x_hat + self.theta_s(y) + self.gamma1 * x_hat

    def extra_repr(self) -> str:
        return f"gamma1={self.gamma1}"


class CGIN(nn.Module):
    """Cross-aware guided instance normalisation (eq. 4) and its Table 6 ablations.

    ``CGIN(F_f^q, F_f^s) = f(F_f^q, F_f^s) (+) f(F_f^s, F_f^q) = F^qs (+) F^sq`` with f of
    eq. 3 (``block="cgin"``); ``block="fgin"`` uses eq. 2, ``block="adain"`` eq. 1.
    ``direction`` deforms both features (``"both"``, eq. 4), only the quality feature
    towards the semantic one (``"q_to_s"``: F^qs (+) F_f^s) or only the semantic one
    (``"s_to_q"``: F_f^q (+) F^sq). ``f_q, f_s [B, T, D] -> [B, T, 2D]``.
    """

    def __init__(self, d_model: int, *, block: str = "cgin", gamma1: float = 1.0, direction: str = "both"):
        super().__init__()

        def make() -> nn.Module:
            if block == "adain":
                return AdaIN()
            return FGIN(d_model, gamma1=gamma1 if block == "cgin" else 0.0)

        self.qs = make() if direction in ("both", "q_to_s") else None
        self.sq = make() if direction in ("both", "s_to_q") else None

    def forward(self, f_q: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        f_qs = self.qs(f_q, f_s) if self.qs is not None else f_q
        f_sq = self.sq(f_s, f_q) if self.sq is not None else f_s
        return torch.cat([f_qs, f_sq], dim=-1)


class Concat(nn.Module):
    """Ablation fusion "Concat": ``f_q, f_s [B, T, D] -> [B, T, 2D]``."""

    def forward(self, f_q: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        return torch.cat([f_q, f_s], dim=-1)


class ConcatMLP(nn.Module):
    """Ablation fusion "Concat+MLP": concat, then FC (2D -> 2D), ReLU, dropout."""

    def __init__(self, d_model: int, *, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, f_q: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([f_q, f_s], dim=-1))


class GlobalSelfAttention(nn.Module):
    """Global self-attention over frames with residual (eq. 5).

    ``F^e = softmax(F^pe W_Q (F^pe W_K)^T / sqrt(dim)) F^pe W_V + F^pe``, padded frames
    masked as keys. ``x [B, T, dim]``, ``valid [B, T]`` bool -> ``[B, T, dim]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = self.w_q(x) @ self.w_k(x).transpose(1, 2) * self.scale  # [B, T, T]
        # Every row keeps at least one valid key (lengths >= 1), so no row is all -inf.
        scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.w_v(x) + x


class CAGI(nn.Module):
    """Cross-aware guided interaction: FC each aware feature to D, fuse locally, attend globally.

    ``x_q [B, T, d_quality]``, ``x_s [B, T, d_content]``, ``valid [B, T]`` -> ``F^e [B, T, 2D]``.
    """

    def __init__(
        self,
        d_quality: int,
        d_content: int,
        d_model: int,
        *,
        fusion: str = "cgin",
        gamma1: float = 1.0,
        direction: str = "both",
        mlp_dropout: float = 0.5,
        global_attention: bool = True,
    ):
        super().__init__()
        self.fc_q = nn.Linear(d_quality, d_model)
        self.fc_s = nn.Linear(d_content, d_model)
        if fusion == "concat":
            self.fusion = Concat()
        elif fusion == "concat_mlp":
            self.fusion = ConcatMLP(d_model, dropout=mlp_dropout)
        else:
            self.fusion = CGIN(d_model, block=fusion, gamma1=gamma1, direction=direction)
        self.attention = GlobalSelfAttention(2 * d_model) if global_attention else None

    def forward(self, x_q: torch.Tensor, x_s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        f = self.fusion(self.fc_q(x_q), self.fc_s(x_s))
        return self.attention(f, valid) if self.attention is not None else f


# ---------------------------------------------------------------- CATM
class PerceptionBlock(nn.Module):
    """Quality saliency (``pool=masked_max``) or content variation (``masked_std``) block.

    ``gate = Sigmoid(FC(ReLU(FC(pool_t F^e))))`` ``[B, D]``; output
    ``temporal_conv(F^e) * gate`` broadcast over time. ``f [B, T, D]`` (zero at padded
    steps), ``valid [B, T]`` -> ``[B, T, D]``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        reduction: int = 16,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.pool = pool
        hidden = max(1, d_model // reduction)
        self.gate = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, d_model), nn.Sigmoid())
        self.temporal_conv = nn.Conv1d(d_model, d_model, kernel_size, padding="same")

    def forward(self, f: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        gate = self.gate(self.pool(f, valid))  # [B, D]
        conv = self.temporal_conv(f.transpose(1, 2)).transpose(1, 2)  # [B, T, D]
        return conv * gate.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"pool={getattr(self.pool, '__name__', self.pool)}"


class CATM(nn.Module):
    """Cross-aware temporal modelling: FC to D, two perception blocks, temporal network.

    ``f [B, T, in_dim]``, ``lengths [B]``, ``valid [B, T]`` -> scores ``[B]``. The temporal
    network is VSFA's head (:class:`regressors.vsfa.VSFAHead`: FC to 128, GRU 32 with
    h0 = 0, FC to frame scores, subjective TP). Its GRU is causal, so steps past a
    video's length never reach a valid one, and TP counts valid frames only. With
    ``temporal_gates=False`` (ablation) only the temporal network remains.
    ``temporal_network``: VSFAHead's keyword arguments (``reduced_size``,
    ``hidden_size``, ``tau``, ``beta``).
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        *,
        temporal_gates: bool = True,
        gate_reduction: int = 16,
        conv_kernel: int = 3,
        **temporal_network,
    ):
        super().__init__()
        if temporal_gates:
            self.fc = nn.Linear(in_dim, d_model)
            block = dict(reduction=gate_reduction, kernel_size=conv_kernel)
            self.quality_saliency = PerceptionBlock(d_model, pool=masked_max, **block)
            self.content_variation = PerceptionBlock(d_model, pool=masked_std, **block)
            in_dim = 2 * d_model
        else:
            self.fc = self.quality_saliency = self.content_variation = None
        self.temporal_network = VSFAHead(in_dim, **temporal_network)

    def forward(self, f: torch.Tensor, lengths: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.fc is not None:
            # Zero padded steps: the convolutions then see a padded video's end exactly
            # as they see an unpadded one's (zero padding).
            f = torch.where(valid.unsqueeze(-1), self.fc(f), 0.0)
            f = torch.cat([self.quality_saliency(f, valid), self.content_variation(f, valid)], dim=-1)
        return self.temporal_network(f, lengths)


# ---------------------------------------------------------------- the head
def _choice(name: str, value, options: Sequence[str]) -> None:
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidInputError(f"unknown {name} {value!r}, expected one of {tuple(options)}{hint}")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class A2INet(nn.Module):
    """A2INet head: CAGI then CATM (see the module docstring for the data flow).

    ``forward(x [B, T, d_quality + d_content], lengths [B]) -> [B]``: zero-padded steps
    (any padding value is ignored), true lengths 1 <= n <= T.

    Parameters
    ----------
    d_quality, d_content : int
        Widths of the two aware features, in that order in each step.
    d_model : int
        D, the width both aware features are mapped to (1024 in the paper).
    fusion : {"cgin", "adain", "fgin", "concat", "concat_mlp"}
        Local fusion in CAGI: CGIN (eq. 3-4), AdaIN (eq. 1), FGIN (eq. 2), or the
        ablations Concat and Concat+MLP.
    gamma1 : float
        Weight of the normalised-feature residual of eq. 3 (CGIN only; 1 in the paper).
    direction : {"both", "q_to_s", "s_to_q"}
        Which features the normalisations deform (Table 6); "both" is eq. 4. Only for
        the normalising fusions.
    mlp_dropout : float
        Dropout of the Concat+MLP fusion, in [0, 1).
    global_attention, temporal_gates : bool
        Keep the eq. 5 attention and the CATM perception blocks (ablations switch them off).
    gate_reduction, conv_kernel : int
        Bottleneck ratio of the CATM gates and kernel of their temporal convolutions.
    reduced_size, hidden_size : int
        VSFA's FC width before the GRU (128) and the GRU's hidden size (32).
    tau, beta : int, float
        Subjectively-inspired temporal pooling window (12) and memory/current weight (0.5).
    """

    def __init__(
        self,
        *,
        d_quality: int,
        d_content: int,
        d_model: int = 1024,
        fusion: str = "cgin",
        gamma1: float = 1.0,
        direction: str = "both",
        mlp_dropout: float = 0.5,
        global_attention: bool = True,
        temporal_gates: bool = True,
        gate_reduction: int = 16,
        conv_kernel: int = 3,
        reduced_size: int = VSFA_REDUCED_SIZE,
        hidden_size: int = VSFA_HIDDEN_SIZE,
        tau: int = TP_TAU,
        beta: float = TP_BETA,
    ):
        super().__init__()
        _choice("fusion", fusion, FUSIONS)
        _choice("direction", direction, DIRECTIONS)
        if direction != "both" and fusion in ("concat", "concat_mlp"):
            raise InvalidInputError(f"direction {direction!r} applies to the normalising fusions, not {fusion!r}")
        if not isinstance(gamma1, Real) or not np.isfinite(gamma1):
            raise InvalidInputError(f"gamma1 must be a finite number, got {gamma1!r}")
        if not isinstance(mlp_dropout, Real) or not 0.0 <= mlp_dropout < 1.0:
            raise InvalidInputError(f"mlp_dropout must lie in [0, 1), got {mlp_dropout!r}")
        d_model = _positive_int("d_model", d_model)
        self.d_quality = _positive_int("d_quality", d_quality)
        self.input_dim = self.d_quality + _positive_int("d_content", d_content)
        self.cagi = CAGI(
            self.d_quality,
            int(d_content),
            d_model,
            fusion=fusion,
            gamma1=float(gamma1),
            direction=direction,
            mlp_dropout=float(mlp_dropout),
            global_attention=bool(global_attention),
        )
        # VSFAHead checks reduced_size, hidden_size, tau and beta.
        self.catm = CATM(
            2 * d_model,
            d_model,
            temporal_gates=bool(temporal_gates),
            gate_reduction=_positive_int("gate_reduction", gate_reduction),
            conv_kernel=_positive_int("conv_kernel", conv_kernel),
            reduced_size=reduced_size,
            hidden_size=hidden_size,
            tau=tau,
            beta=beta,
        )

    def _check_inputs(self, x, lengths) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInputError(f"x must be a tensor [B, T, {self.input_dim}], got {got}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise InvalidInputError(f"x has an empty batch or no steps: shape {tuple(x.shape)}")
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (x.shape[0],) or lengths.is_floating_point() or lengths.is_complex():
            raise InvalidInputError(
                f"lengths must be integers [B] with B = {x.shape[0]}, got {lengths.dtype} {tuple(lengths.shape)}"
            )
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > x.shape[1]:
            raise InvalidInputError(f"lengths must lie in [1, T={x.shape[1]}], got min {low}, max {high}")
        return lengths.to(device=x.device, dtype=torch.long)

    def forward(self, x: torch.Tensor, lengths) -> torch.Tensor:
        """Video scores: ``x [B, T, d_quality + d_content]`` float, ``lengths [B]`` -> ``[B]``."""
        lengths = self._check_inputs(x, lengths)
        valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        # Padding may hold anything (even NaN); zero it so nothing non-finite enters.
        x = torch.where(valid.unsqueeze(-1), x, 0.0)
        f = self.cagi(x[..., : self.d_quality], x[..., self.d_quality :], valid)
        return self.catm(f, lengths, valid)


@register_module("a2inet")
def build_a2inet(
    input_dim: int,
    *,
    dims: tuple[int, int],
    d_model: int = 1024,
    fusion: str = "cgin",
    gamma1: float = 1.0,
    **params,
) -> A2INet:
    """Registry builder: A2INet for steps ``[B, T, input_dim]`` split as ``dims = (d_quality, d_content)``.

    ``input_dim`` must equal ``d_quality + d_content``: quality-aware first (e.g. 1920),
    then the second aware feature (semantic 7680 for S+S, SlowFast per-step fast 512 for
    S+M). ``params`` are :class:`A2INet`'s other keyword arguments (``direction``,
    ``mlp_dropout``, ``global_attention``, ``temporal_gates``, ``gate_reduction``,
    ``conv_kernel``, ``reduced_size``, ``hidden_size``, ``tau``, ``beta``).
    Returns the module; ``forward(x [B, T, input_dim], lengths [B]) -> [B]``.
    """
    if (
        not isinstance(dims, Sequence)
        or len(dims) != 2
        or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in dims)
    ):
        raise InvalidInputError(f"dims must be two positive integers (d_quality, d_content), got {dims!r}")
    if input_dim != dims[0] + dims[1]:
        raise InvalidInputError(
            f"input_dim {input_dim} does not match dims {tuple(dims)}: expected "
            f"{dims[0]} + {dims[1]} = {dims[0] + dims[1]} features per step"
        )
    return A2INet(d_quality=dims[0], d_content=dims[1], d_model=d_model, fusion=fusion, gamma1=gamma1, **params)


# ---------------------------------------------------------------- frame-rate alignment
def align_steps(features: Sequence[np.ndarray], *, steps: int | None = None, method: str = "nearest") -> np.ndarray:
    """Resample feature families to one step count and concatenate them along features.

    Each family ``[T_i, D_i]`` is taken to cover the video uniformly: its step j stands
    for the normalised time interval ``[j / T_i, (j + 1) / T_i)``. Output step k of S
    takes, from each family, the step whose interval holds the centre ``(k + 0.5) / S``:
    ``j = floor((k + 0.5) T_i / S)`` (torch's ``nearest-exact``). Equal counts are left
    as they are; 128 -> 32 keeps steps 2, 6, 10, ...; 32 -> 128 repeats each step 4
    times. Where a family does not span the video evenly (the last SlowFast clip runs
    past the end, repeating the last frame), the alignment is off by at most that overrun.

    Parameters
    ----------
    features : sequence of arrays ``[T_i, D_i]``, T_i >= 1
        The families in the order they are to be concatenated (quality first for A2INet).
    steps : int, optional
        Common step count S; default the first family's T_0.
    method : {"nearest"}
        Resampling method.

    Returns
    -------
    array ``[S, sum_i D_i]``; dtype by numpy's promotion of the inputs (float32 stays).
    """
    _choice("alignment method", method, ALIGN_METHODS)
    if isinstance(features, np.ndarray) or not isinstance(features, Sequence) or len(features) == 0:
        raise InvalidInputError("features must be a non-empty list of [T, D] arrays")
    arrays = [np.asarray(f) for f in features]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] == 0:
            raise InvalidInputError(f"feature family {i} must be 2-D [T, D] with T >= 1, got shape {a.shape}")
    steps = arrays[0].shape[0] if steps is None else _positive_int("steps", steps)
    k = np.arange(steps)
    # Integer form of floor((k + 0.5) * T / S): exact, no rounding at interval edges.
    picked = [a[((2 * k + 1) * a.shape[0]) // (2 * steps)] for a in arrays]
    return np.concatenate(picked, axis=1)
