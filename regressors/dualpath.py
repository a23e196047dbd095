"""Dual-path (slow/fast) transformer head on SlowFast token grids (seed 000, KVQ challenge).

Registered as ``"dualpath"`` in :mod:`regressors.modules`. It scores videos from the
``slowfast-tokens`` features: every step (clip) of a video is one row of
``prod(slow_shape) + prod(fast_shape)`` values, the slow stage-5 map pooled to
``slow_shape = (C_s, T_s, H, W)`` (default ``(2048, 8, 2, 2)``) flattened in C order, then the
fast map ``fast_shape = (C_f, T_f, H, W)`` (default ``(256, 32, 2, 2)``). Each clip is scored
alone; a video's score is the mean over its valid clips::

    x [B, T, D] zero-padded, lengths [B]
      -> valid clips only [N, D]   (N = sum(lengths); padded rows are never computed)
      -> split each row
           |                                          |
    slow [N, C_s, T_s, H, W]                  fast [N, C_f, T_f, H, W]
      every tau-th time step (V_s, eq. 1)       all time steps (V_f = V)
           |                                          |
    PatchEmbed3D (Conv3d) -> embed_dim        PatchEmbed3D (Conv3d) -> embed_dim
    + Global Position Indexing (eq. 4-5)      + Global Position Indexing (eq. 4-5)
    depth x SwinTransformerBlock3D            depth x SwinTransformerBlock3D
      (WindowAttention3D + rel. pos. bias)      (WindowAttention3D + rel. pos. bias)
           |------ std / mean pool --------> Semantic Transformation (FiLM):
           |                                   fast * sigmoid(FC(std)) + FC(mean)
           |                                          |
           +<------------- Cross Attention ---------->+   (slow queries fast, fast queries slow)
           |                                          |
    PatchMerging (2x2 -> Linear)              PatchMerging (2x2 -> Linear)
    mean over tokens: V_s [N, d_s]            mean over tokens: V_f [N, d_f]
           |                                          |
           '---------> f = W_s V_s + W_f V_f (eq. 1) <'
                                 |
                 regression MLP -> clip score [N]
                                 |
                 mean over each video's valid clips -> [B]

The paper (Yu, Tian and Li, "A Dual-Path Deep Learning Framework for VQA") names its modules
but gives no sizes, order or wiring. Choices made here:

* **tau subsamples the slow token grid**: the slow path keeps slow time steps
  ``0, tau, 2 tau, ...`` (the paper's ``v_1, v_{tau+1}, ...``); ``tau=1`` keeps all of them.
  The SlowFast extractor already samples its slow frames 4x sparser than the fast ones, so
  the default ``tau=4`` leaves 2 of the 8 slow steps.
* **PatchEmbed3D**: ``Conv3d`` with kernel = stride = ``patch_size`` (default ``(1, 1, 1)``:
  the 2x2 token grid leaves no room for spatial patches), the grid zero-padded up to a
  multiple of the patch as Video Swin does, then ``LayerNorm`` (SlowFast activations are
  large and unnormalised).
* **Global Position Indexing** is the paper's sinusoidal encoding, not the fragment-gated
  relative bias that carries this name in FAST-VQA/DOVER code. Each token's global
  ``(t, h, w)`` position is encoded separately with eq. 4-5 (interleaved sin/cos, ``d`` = width
  of that part) and the three parts are concatenated: ``h`` and ``w`` get ``2 * (E // 6)``
  channels each, ``t`` the rest. Positions share one frame for both paths: ``t`` in fast time
  steps (slow step ``j`` sits at ``j * (T_f - 1) / (T_s - 1)``, where the extractor's
  ``linspace(0, 31, 8)`` puts it), ``h, w`` in grid cells; a patch sits at its first cell.
* **WindowAttention3D** is Video Swin's: learned ``relative_position_bias_table``
  ``[(2Wd-1)(2Wh-1)(2Ww-1), heads]`` indexed by ``relative_position_index``; blocks are
  pre-norm (attention, then a 4x GELU MLP), every second block shifted by half a window.
  A window larger than the grid is clipped to it (and its shift dropped), as Video Swin's
  ``get_window_size``. Unlike Video Swin, tokens padded up to a multiple of the window are
  masked out of the attention, not attended as zeros, so they cannot leak into scores.
* **Semantic Transformation** (from the KVQ challenge code, per REFERENCE.md): FiLM on the
  fast tokens, ``gamma = sigmoid(FC(std over slow tokens))``, ``beta = FC(mean over slow
  tokens)``, ``fast * gamma + beta``, after the window blocks; population std, so a single
  slow token gives 0, not NaN. ``semantic=False`` builds the head without it.
* **Cross Attention**: full (not windowed) multi-head attention within one clip, each path's
  tokens querying the other path's tokens, both computed from the pre-cross features,
  pre-norm with a residual.
* **Patch Merging** is Swin's (2x2 neighbours concatenated, ``LayerNorm(4C)``,
  ``Linear(4C, 2C, bias=False)``, odd sizes zero-padded), applied once after cross attention;
  a path whose grid is already 1x1 skips it and keeps width ``embed_dim``.
* **Fusion** (eq. 1): ``V_s``, ``V_f`` are the token means of each path; ``W_s``, ``W_f`` are
  bias-free linear maps to ``max(d_s, d_f)`` channels, summed; the regression MLP
  (``Linear, GELU, Dropout, Linear``) maps that to one score per clip.
* Weights initialised as Swin (truncated normal, std 0.02, for linear layers and the bias
  table). No batch statistics anywhere, so a clip's score does not depend on its batch.

Length (over 600 lines): one model family (torchvision style): the slow and fast paths, their
fusion and the ASCII data-flow sketch above belong together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError, RegressorError
from .modules import register_module

__all__ = [
    "CrossAttention",
    "DualPathFusion",
    "DualPathHead",
    "GlobalPositionIndexing",
    "PatchEmbed3D",
    "PatchMerging",
    "Pathway",
    "SemanticTransformation",
    "SwinTransformerBlock3D",
    "WindowAttention3D",
    "build_dualpath",
    "position_encoding_split",
    "relative_position_index",
    "sinusoidal_encoding",
    "window_attention_mask",
]

#: Base of the sinusoidal encoding (eq. 4-5).
POSITION_BASE = 10000.0
#: Std of the truncated-normal initialisation (Swin).
INIT_STD = 0.02
#: Defaults: the ``slowfast-tokens`` extractor's grids.
SLOW_SHAPE = (2048, 8, 2, 2)
FAST_SHAPE = (256, 32, 2, 2)

Triple = tuple[int, int, int]


# ---- pure functions (tested alone) -----------------------------------------------------


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """Video Swin's index into the relative position bias table for one window.

    ``window = (Wd, Wh, Ww)`` -> int64 ``[N, N]`` with ``N = Wd*Wh*Ww`` (tokens in C order
    over ``(d, h, w)``). Entry ``[i, j]`` is
    ``(dd + Wd-1)*(2Wh-1)*(2Ww-1) + (dh + Wh-1)*(2Ww-1) + (dw + Ww-1)`` for the offset
    ``(dd, dh, dw) = pos_i - pos_j``: one row of the ``[(2Wd-1)(2Wh-1)(2Ww-1), heads]`` table
    per distinct offset.
    """
    wd, wh, ww = (int(w) for w in window)
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)  # [3, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 3]
    rel = rel + torch.tensor([wd - 1, wh - 1, ww - 1])
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Eq. 4-5: ``[...]`` positions -> ``[..., dim]`` encodings (``dim`` even).

    ``PE(t, 2i) = sin(t / 10000^(2i/dim))``, ``PE(t, 2i+1) = cos(t / 10000^(2i/dim))``.
    Positions may be fractional.
    """
    if dim % 2 or dim < 2:
        raise InvalidInputError(f"sinusoidal encoding needs an even width >= 2, got {dim}")
    positions = torch.as_tensor(positions, dtype=torch.float64)
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim  # 2i / d
    angles = positions[..., None] / POSITION_BASE**exponent
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2).float()


def position_encoding_split(dim: int) -> Triple:
    """Channels of the ``(t, h, w)`` parts of a ``dim``-wide Global Position Indexing code.

    ``h`` and ``w`` get ``2 * (dim // 6)`` each, ``t`` the rest (``dim`` even, >= 6).
    """
    spatial = 2 * (dim // 6)
    return dim - 2 * spatial, spatial, spatial


def window_attention_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor | None:
    """Additive attention mask of shifted / padded windows, or ``None`` when nothing is masked.

    ``grid = (D, H, W)`` is padded up to a multiple of ``window`` and rolled by ``-shift``
    (the block's order). Each token gets a label: Swin's shift region (3 per shifted axis:
    ``< P - window``, ``< P - shift``, the rest, on the padded size ``P``) for real tokens,
    ``-1`` for padding. Returns float ``[nW, N, N]``: 0 where query and key labels agree,
    ``-inf`` elsewhere (every token at least sees itself). Windows in C order over the grid.
    """
    padded = [math.ceil(g / w) * w for g, w in zip(grid, window, strict=True)]
    if padded == list(grid) and not any(shift):
        return None
    labels = torch.zeros(padded, dtype=torch.long)
    for axis, (size, win, sh) in enumerate(zip(padded, window, shift, strict=True)):
        if sh:
            pos = torch.arange(size)
            region = (pos >= size - win).long() + (pos >= size - sh).long()  # 0, 1, 2
            shape = [1, 1, 1]
            shape[axis] = size
            labels = labels * 3 + region.view(shape)
    valid = torch.zeros(padded, dtype=torch.bool)
    valid[: grid[0], : grid[1], : grid[2]] = True
    valid = torch.roll(valid, shifts=[-s for s in shift], dims=(0, 1, 2))
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    windows = window_partition(labels[None, ..., None], window)[0, ..., 0]  # [nW, N]
    same = windows[:, :, None] == windows[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``[B, D, H, W, C]`` (sizes multiples of ``window``) -> ``[B, nW, N, C]``, windows in C order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, N, C]`` -> ``[B, D, H, W, C]``."""
    b, c = windows.shape[0], windows.shape[-1]
    (wd, wh, ww), (d, h, w) = window, grid
    x = windows.reshape(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---- modules named after the paper -----------------------------------------------------


class PatchEmbed3D(nn.Module):
    """Eq. 2: ``P = Conv3D(X)``, kernel = stride = ``patch_size``, then ``LayerNorm``.

    ``[B, C_in, T, H, W]`` -> ``[B, t, h, w, embed_dim]`` with ``t = ceil(T / p_t)`` etc. (the
    input zero-padded up to a multiple of the patch, as Video Swin).
    """

    def __init__(self, in_channels: int, embed_dim: int, *, patch_size: Triple = (1, 1, 1)):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [(-size) % p for size, p in zip(x.shape[2:], self.patch_size, strict=True)]  # T, H, W
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class GlobalPositionIndexing(nn.Module):
    """Adds eq. 4-5 encodings of each token's global ``(t, h, w)`` position.

    ``t_positions [t]``, ``h_positions [h]``, ``w_positions [w]`` (floats, one frame shared by
    both paths) give the fixed buffer ``encoding [t, h, w, dim]``: the concatenation of the
    encodings of ``t``, ``h`` and ``w`` with the widths of :func:`position_encoding_split`.
    ``forward``: ``[B, t, h, w, dim]`` -> same, plus the encoding.
    """

    def __init__(
        self,
        t_positions: Sequence[float],
        h_positions: Sequence[float],
        w_positions: Sequence[float],
        dim: int,
    ):
        super().__init__()
        parts = []
        sizes = (len(t_positions), len(h_positions), len(w_positions))
        axes = zip((t_positions, h_positions, w_positions), position_encoding_split(dim), strict=True)
        for axis, (positions, width) in enumerate(axes):
            code = sinusoidal_encoding(torch.tensor(positions, dtype=torch.float64), width)  # [n, width]
            shape = [1, 1, 1, width]
            shape[axis] = sizes[axis]
            parts.append(code.view(shape).expand(*sizes, width))
        self.register_buffer("encoding", torch.cat(parts, dim=-1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.encoding.to(x.dtype)


class WindowAttention3D(nn.Module):
    """Video Swin's window multi-head self-attention with a relative position bias.

    ``forward(x [B, nW, N, C], mask [nW, N, N] | None) -> [B, nW, N, C]``, ``N`` = window
    volume; ``mask`` is added to the scores (0 or ``-inf``).
    """

    def __init__(self, dim: int, window: Triple, heads: int):
        super().__init__()
        self.heads = heads
        self.window = tuple(window)
        table_rows = math.prod(2 * w - 1 for w in self.window)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=INIT_STD)

    def relative_position_bias(self) -> torch.Tensor:
        """``[heads, N, N]``: the table rows picked by ``relative_position_index``."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, nw, n, c = x.shape
        q, k, v = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = self.relative_position_bias()  # [heads, N, N]
        if mask is not None:
            bias = bias + mask[:, None]  # [nW, heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # [B, nW, heads, N, hd]
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class SwinTransformerBlock3D(nn.Module):
    """Pre-norm Swin block on a fixed token grid: (shifted) window attention, then an MLP.

    ``[B, D, H, W, C]`` -> same. ``window`` and ``shift`` are already clipped to ``grid``; the
    attention mask for the shift and for window padding is a fixed buffer.
    """

    def __init__(self, dim: int, *, grid: Triple, window: Triple, shift: Triple, heads: int, mlp_ratio: float):
        super().__init__()
        self.grid, self.window, self.shift = tuple(grid), tuple(window), tuple(shift)
        self.padded = tuple(_ceil_div(g, w) * w for g, w in zip(self.grid, self.window, strict=True))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.register_buffer("attn_mask", window_attention_mask(self.grid, self.window, self.shift), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = self.grid
        y = self.norm1(x)
        pads = [p - g for p, g in zip(self.padded, self.grid, strict=True)]
        if any(pads):
            y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        if any(self.shift):
            y = torch.roll(y, shifts=[-s for s in self.shift], dims=(1, 2, 3))
        y = self.attn(window_partition(y, self.window), self.attn_mask)
        y = window_reverse(y, self.window, self.padded)
        if any(self.shift):
            y = torch.roll(y, shifts=list(self.shift), dims=(1, 2, 3))
        x = x + y[:, :d, :h, :w]
        return x + self.mlp(self.norm2(x))


class SemanticTransformation(nn.Module):
    """FiLM of the fast tokens by the slow (semantic) tokens.

    ``forward(fast [B, L, C], semantic [B, S, C]) -> [B, L, C]``:
    ``fast * sigmoid(FC_gamma(std_S(semantic))) + FC_beta(mean_S(semantic))`` (population std).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Linear(dim, dim)
        self.beta = nn.Linear(dim, dim)

    def forward(self, fast: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        std, mean = torch.std_mean(semantic, dim=1, correction=0)
        return fast * torch.sigmoid(self.gamma(std))[:, None] + self.beta(mean)[:, None]


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention of ``query`` tokens over ``context`` tokens, with a residual.

    ``forward(query [B, Lq, C], context [B, Lk, C]) -> [B, Lq, C]``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, lq, c = query.shape
        hd = c // self.heads
        q = self.q(self.norm_query(query)).view(b, lq, self.heads, hd).transpose(1, 2)
        k, v = self.kv(self.norm_context(context)).view(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, lq, c)
        return query + self.proj(out)


class PatchMerging(nn.Module):
    """Swin's 2x2 spatial merge: ``[B, D, H, W, C]`` -> ``[B, D, ceil(H/2), ceil(W/2), 2C]``.

    Odd sizes are zero-padded; neighbours concatenated as ``(0,0), (1,0), (0,1), (1,1)``, then
    ``LayerNorm(4C)`` and ``Linear(4C, 2C, bias=False)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class Pathway(nn.Module):
    """One path: PatchEmbed3D, Global Position Indexing, window blocks; Patch Merging apart.

    ``encode``: ``[B, C_in, T, H, W]`` -> ``[B, t, h, w, embed_dim]`` (``grid = (t, h, w)``).
    ``merge``: ``[B, t, h, w, embed_dim]`` -> ``[B, t, h', w', out_dim]``; a 1x1 grid is passed
    through (``patch_merging`` is ``None``, ``out_dim = embed_dim``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        input_grid: Triple,
        t_positions: Sequence[float],
        embed_dim: int,
        patch_size: Triple,
        window: Triple,
        heads: int,
        depth: int,
        mlp_ratio: float,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed3D(in_channels, embed_dim, patch_size=patch_size)
        self.grid = tuple(_ceil_div(g, p) for g, p in zip(input_grid, patch_size, strict=True))
        h_positions = [i * patch_size[1] for i in range(self.grid[1])]
        w_positions = [i * patch_size[2] for i in range(self.grid[2])]
        self.global_position_indexing = GlobalPositionIndexing(t_positions, h_positions, w_positions, embed_dim)
        win = tuple(min(w, g) for w, g in zip(window, self.grid, strict=True))  # Video Swin's get_window_size
        half = tuple(w // 2 if g > w else 0 for w, g in zip(win, self.grid, strict=True))
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(
                embed_dim,
                grid=self.grid,
                window=win,
                shift=half if i % 2 else (0, 0, 0),
                heads=heads,
                mlp_ratio=mlp_ratio,
            )
            for i in range(depth)
        )
        spatial = self.grid[1] * self.grid[2]
        self.patch_merging = PatchMerging(embed_dim) if spatial > 1 else None
        self.out_dim = 2 * embed_dim if spatial > 1 else embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_position_indexing(self.patch_embed(x))
        for block in self.blocks:
            x = block(x)
        return x

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.patch_merging is None else self.patch_merging(x)


class DualPathFusion(nn.Module):
    """Eq. 1: ``f = W_s V_s + W_f V_f``; ``[B, d_s], [B, d_f]`` -> ``[B, dim]`` (bias-free maps)."""

    def __init__(self, slow_dim: int, fast_dim: int, dim: int):
        super().__init__()
        self.slow = nn.Linear(slow_dim, dim, bias=False)
        self.fast = nn.Linear(fast_dim, dim, bias=False)

    def forward(self, v_slow: torch.Tensor, v_fast: torch.Tensor) -> torch.Tensor:
        return self.slow(v_slow) + self.fast(v_fast)


class DualPathHead(nn.Module):
    """The dual-path head (see the module docstring); build it with :func:`build_dualpath`.

    ``forward(x [B, T, input_dim], lengths [B] int64) -> [B]``;
    ``clip_scores(clips [N, input_dim]) -> [N]`` scores clips one by one.
    """

    def __init__(
        self,
        *,
        slow_shape: Sequence[int],
        fast_shape: Sequence[int],
        embed_dim: int,
        tau: int,
        window: Triple,
        heads: int,
        semantic: bool,
        depth: int,
        patch_size: Triple,
        mlp_ratio: float,
        dropout: float,
    ):
        super().__init__()
        self.slow_shape, self.fast_shape = tuple(slow_shape), tuple(fast_shape)
        self.slow_size, self.fast_size = math.prod(self.slow_shape), math.prod(self.fast_shape)
        self.input_dim = self.slow_size + self.fast_size
        self.tau = tau
        c_s, t_s, h_s, w_s = self.slow_shape
        c_f, t_f, h_f, w_f = self.fast_shape
        slow_steps = _ceil_div(t_s, tau)
        # Global time of a slow step: where the extractor's linspace(0, T_f - 1, T_s) puts it.
        slow_time = (t_f - 1) / (t_s - 1) if t_s > 1 else 0.0
        common = dict(
            embed_dim=embed_dim,
            patch_size=patch_size,
            window=window,
            heads=heads,
            depth=depth,
            mlp_ratio=mlp_ratio,
        )
        self.slow_path = Pathway(
            in_channels=c_s,
            input_grid=(slow_steps, h_s, w_s),
            t_positions=[i * patch_size[0] * tau * slow_time for i in range(_ceil_div(slow_steps, patch_size[0]))],
            **common,
        )
        self.fast_path = Pathway(
            in_channels=c_f,
            input_grid=(t_f, h_f, w_f),
            t_positions=[float(i * patch_size[0]) for i in range(_ceil_div(t_f, patch_size[0]))],
            **common,
        )
        self.semantic_transformation = SemanticTransformation(embed_dim) if semantic else None
        self.slow_cross_attention = CrossAttention(embed_dim, heads)  # slow queries fast
        self.fast_cross_attention = CrossAttention(embed_dim, heads)  # fast queries slow
        dim = max(self.slow_path.out_dim, self.fast_path.out_dim)
        self.fusion = DualPathFusion(self.slow_path.out_dim, self.fast_path.out_dim, dim)
        self.regressor = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 1))
        self.apply(_init_weights)

    def clip_scores(self, clips: torch.Tensor) -> torch.Tensor:
        """``[N, input_dim]`` rows of slow then fast grids -> one score per clip ``[N]``."""
        n = clips.shape[0]
        slow = clips[:, : self.slow_size].reshape(n, *self.slow_shape)[:, :, :: self.tau]
        fast = clips[:, self.slow_size :].reshape(n, *self.fast_shape)
        slow = self.slow_path.encode(slow)  # [N, t, h, w, E]
        fast = self.fast_path.encode(fast)
        slow_grid, fast_grid = slow.shape[1:4], fast.shape[1:4]
        slow, fast = slow.flatten(1, 3), fast.flatten(1, 3)  # [N, L, E]
        if self.semantic_transformation is not None:
            fast = self.semantic_transformation(fast, slow)
        slow, fast = self.slow_cross_attention(slow, fast), self.fast_cross_attention(fast, slow)
        v_slow = self.slow_path.merge(slow.unflatten(1, slow_grid)).mean(dim=(1, 2, 3))
        v_fast = self.fast_path.merge(fast.unflatten(1, fast_grid)).mean(dim=(1, 2, 3))
        return self.regressor(self.fusion(v_slow, v_fast)).squeeze(-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.input_dim:
            raise InvalidInputError(
                f"dualpath head expects x [B, T, {self.input_dim}] (slow {self.slow_shape} + fast {self.fast_shape}), "
                f"got shape {tuple(x.shape)}"
            )
        b, t, _ = x.shape
        lengths = torch.as_tensor(lengths, device=x.device)
        if lengths.shape != (b,) or lengths.is_floating_point():
            raise InvalidInputError(f"lengths must be integers [B] = [{b}], got {lengths.dtype} {tuple(lengths.shape)}")
        if b and (int(lengths.min()) < 1 or int(lengths.max()) > t):
            raise InvalidInputError(f"lengths must lie in 1..{t} (the padded number of clips), got {lengths.tolist()}")
        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # [B, T]
        scores = self.clip_scores(x[valid])  # [N], video by video, clip by clip
        video = torch.arange(b, device=x.device).repeat_interleave(lengths)
        total = torch.zeros(b, dtype=scores.dtype, device=x.device).index_add(0, video, scores)
        return total / lengths.to(scores.dtype)


def _init_weights(module: nn.Module) -> None:
    """Swin's initialisation: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _positive_ints(name: str, value, length: int) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != length or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise RegressorError(f"{name} must be {length} positive integers, got {value!r}")
    return items


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RegressorError(f"{name} must be a positive integer, got {value!r}")
    return value


@register_module("dualpath")
def build_dualpath(
    input_dim: int,
    *,
    slow_shape: Sequence[int] = SLOW_SHAPE,
    fast_shape: Sequence[int] = FAST_SHAPE,
    embed_dim: int = 64,
    tau: int = 4,
    window: Sequence[int] = (2, 2, 2),
    heads: int = 4,
    semantic: bool = True,
    depth: int = 2,
    patch_size: Sequence[int] = (1, 1, 1),
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
) -> DualPathHead:
    """Build the dual-path head for ``slowfast-tokens`` rows of ``input_dim`` values.

    ``slow_shape`` / ``fast_shape``: ``(C, T, H, W)`` of the two grids in each row (slow
    first); ``input_dim`` must equal ``prod(slow_shape) + prod(fast_shape)``. ``embed_dim``
    (even, >= 6, divisible by ``heads``): token width of both paths. ``tau``: the slow path
    keeps every ``tau``-th slow time step. ``window``: ``(Wd, Wh, Ww)`` attention window
    (clipped to each grid). ``semantic``: FiLM of the fast path by the slow one. ``depth``:
    window blocks per path (every second one shifted). ``patch_size``: PatchEmbed3D kernel and
    stride. ``dropout``: in the regression MLP. Raises :class:`RegressorError` for a bad
    configuration. See the module docstring for the choices made.
    """
    slow_shape = _positive_ints("slow_shape", slow_shape, 4)
    fast_shape = _positive_ints("fast_shape", fast_shape, 4)
    expected = math.prod(slow_shape) + math.prod(fast_shape)
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim != expected:
        raise InvalidInputError(
            f"dualpath input_dim {input_dim!r} does not match prod(slow_shape={slow_shape}) + "
            f"prod(fast_shape={fast_shape}) = {expected}; set slow_shape/fast_shape to the feature's token grids"
        )
    embed_dim, tau, heads, depth = (
        _positive_int(n, v) for n, v in (("embed_dim", embed_dim), ("tau", tau), ("heads", heads), ("depth", depth))
    )
    if embed_dim % 2 or embed_dim < 6:
        raise RegressorError(f"embed_dim must be even and >= 6 (sinusoidal t, h, w parts), got {embed_dim}")
    if embed_dim % heads:
        raise RegressorError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
    if not mlp_ratio > 0 or not 0 <= dropout < 1:
        raise RegressorError(f"need mlp_ratio > 0 and 0 <= dropout < 1, got {mlp_ratio!r}, {dropout!r}")
    return DualPathHead(
        slow_shape=slow_shape,
        fast_shape=fast_shape,
        embed_dim=embed_dim,
        tau=tau,
        window=_positive_ints("window", window, 3),
        heads=heads,
        semantic=bool(semantic),
        depth=depth,
        patch_size=_positive_ints("patch_size", patch_size, 3),
        mlp_ratio=float(mlp_ratio),
        dropout=float(dropout),
    )
