"""Tests for regressors.dualpath: the dual-path (slow/fast) head on SlowFast token grids."""

import math

import pytest
import torch

from regressors.dualpath import (
    DualPathHead,
    GlobalPositionIndexing,
    SwinTransformerBlock3D,
    WindowAttention3D,
    build_dualpath,
    position_encoding_split,
    relative_position_index,
    sinusoidal_encoding,
    window_attention_mask,
)
from regressors.errors import InvalidInputError, RegressorError
from regressors.modules import build_module, list_modules

# Tiny grids: slow (C, T, H, W) and fast, as the slowfast-tokens rows lay them out.
SLOW = (8, 4, 2, 2)
FAST = (4, 8, 2, 2)
DIM = math.prod(SLOW) + math.prod(FAST)  # 128 + 128
TINY = dict(slow_shape=SLOW, fast_shape=FAST, embed_dim=16, heads=2, tau=2)

# Video Swin's relative position index for a 2x2x2 window, written out by hand. Tokens in C
# order over (d, h, w): 0=(0,0,0) 1=(0,0,1) 2=(0,1,0) 3=(0,1,1) 4=(1,0,0) ... 7=(1,1,1).
# Entry [i, j] = (dd+1)*9 + (dh+1)*3 + (dw+1) for (dd, dh, dw) = pos_i - pos_j, e.g.
# [0, 7]: offset (-1,-1,-1) -> 0; [7, 0]: (1,1,1) -> 26; the diagonal: (0,0,0) -> 13.
INDEX_2x2x2 = [
    [13, 12, 10, 9, 4, 3, 1, 0],
    [14, 13, 11, 10, 5, 4, 2, 1],
    [16, 15, 13, 12, 7, 6, 4, 3],
    [17, 16, 14, 13, 8, 7, 5, 4],
    [22, 21, 19, 18, 13, 12, 10, 9],
    [23, 22, 20, 19, 14, 13, 11, 10],
    [25, 24, 22, 21, 16, 15, 13, 12],
    [26, 25, 23, 22, 17, 16, 14, 13],
]


def _head(seed=0, **overrides) -> DualPathHead:
    params = {**TINY, **overrides}
    torch.manual_seed(seed)
    return build_dualpath(math.prod(params["slow_shape"]) + math.prod(params["fast_shape"]), **params)


def _videos(lengths, *, seed=1, dim=DIM):
    """Zero-padded batch ``[B, max(lengths), dim]`` and ``lengths`` int64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), dim)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, dim, generator=g)
    return x, torch.tensor(lengths)


# ---------------------------------------------------------------- whole head
def test_registered_and_output_shape():
    assert "dualpath" in list_modules()
    torch.manual_seed(0)
    head = build_module("dualpath", DIM, **TINY)
    x, lengths = _videos([3, 1, 2])
    out = head(x, lengths)
    assert out.shape == (3,) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_video_score_is_mean_of_valid_clip_scores():
    head = _head().eval()
    x, lengths = _videos([3, 1])
    clips = head.clip_scores(x.flatten(0, 1))  # every row, padding included
    expected = torch.stack([clips[0:3].mean(), clips[3]])
    torch.testing.assert_close(head(x, lengths), expected)


def test_gradients_reach_every_parameter():
    head = _head()
    x, lengths = _videos([2, 3])
    head(x, lengths).sum().backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    names = {name.split(".")[0] for name, _ in head.named_parameters()}
    assert {
        "slow_path",
        "fast_path",
        "semantic_transformation",
        "slow_cross_attention",
        "fast_cross_attention",
        "fusion",
        "regressor",
    } <= names


def test_padding_invariance():
    """A video's score does not depend on how many padded clips its batch adds, nor their values."""
    head = _head().eval()
    x, lengths = _videos([2])
    alone = head(x, lengths)
    batch, batch_lengths = _videos([5, 2], seed=7)
    batch[1, :2] = x[0]
    batch[1, 2:] = 1e3  # garbage in the padding must not matter either
    with torch.no_grad():
        torch.testing.assert_close(head(batch, batch_lengths)[1], alone[0])


def test_semantic_transformation_changes_output():
    on = _head(seed=3, semantic=True).eval()
    off = _head(seed=3, semantic=False).eval()
    assert off.semantic_transformation is None
    result = off.load_state_dict(on.state_dict(), strict=False)  # everything but the FiLM layers
    film = sorted(k for k in on.state_dict() if k.startswith("semantic_transformation."))
    assert film and sorted(result.unexpected_keys) == film
    assert not result.missing_keys
    x, lengths = _videos([2, 1])
    with torch.no_grad():
        assert not torch.allclose(on(x, lengths), off(x, lengths))


def test_tau_subsamples_the_slow_path_only():
    head = _head(tau=2)
    assert head.slow_path.grid == (2, 2, 2) and head.fast_path.grid == (8, 2, 2)
    # The slow steps dropped by tau do not reach the score.
    x, lengths = _videos([1])
    y = x.clone().view(1, 1, -1)
    slow = y[..., : math.prod(SLOW)].view(*SLOW)
    slow[:, 1::2] += 5.0  # odd slow time steps
    with torch.no_grad():
        torch.testing.assert_close(head(y, lengths), head(x, lengths))


def test_default_shapes_smoke():
    """The slowfast-tokens layout (98,304 per clip) builds and runs."""
    torch.manual_seed(0)
    head = build_dualpath(98_304)
    assert head.slow_path.grid == (2, 2, 2) and head.fast_path.grid == (32, 2, 2)
    with torch.no_grad():
        out = head(torch.randn(2, 2, 98_304), torch.tensor([2, 1]))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_patch_merging_skipped_on_1x1_grid():
    head = _head(slow_shape=(8, 4, 1, 1), fast_shape=(4, 8, 3, 3))
    assert head.slow_path.patch_merging is None and head.slow_path.out_dim == 16
    assert head.fast_path.patch_merging is not None and head.fast_path.out_dim == 32
    dim = 8 * 4 + 4 * 8 * 9
    x, lengths = _videos([2, 1], dim=dim)
    assert torch.isfinite(head(x, lengths)).all()


def test_odd_grids_patches_and_windows():
    """Grids that are not multiples of the patch or the window (padding, masks) still work."""
    head = _head(slow_shape=(8, 5, 3, 2), fast_shape=(4, 7, 3, 2), patch_size=(2, 1, 1), window=(2, 2, 2), tau=1)
    dim = 8 * 5 * 6 + 4 * 7 * 6
    x, lengths = _videos([2, 3], dim=dim)
    out = head(x, lengths)
    assert torch.isfinite(out).all()
    out.sum().backward()


# ---------------------------------------------------------------- errors
def test_input_dim_mismatch_raises():
    with pytest.raises(RegressorError, match=r"does not match prod\(slow_shape"):
        build_dualpath(DIM + 1, **TINY)
    with pytest.raises(ValueError, match="256"):  # also a ValueError, naming the expected size
        build_module("dualpath", 100, **TINY)


@pytest.mark.parametrize(
    "bad",
    [
        dict(embed_dim=15),
        dict(embed_dim=16, heads=3),
        dict(tau=0),
        dict(window=(2, 2)),
        dict(slow_shape=(8, 4, 2)),
    ],
)
def test_bad_configuration_raises(bad):
    with pytest.raises(RegressorError):
        build_dualpath(DIM, **{**TINY, **bad})


def test_bad_forward_inputs_raise():
    head = _head()
    x, lengths = _videos([2, 1])
    with pytest.raises(InvalidInputError, match="expects x"):
        head(x[..., :-1], lengths)
    with pytest.raises(InvalidInputError, match="1..2"):
        head(x, torch.tensor([3, 1]))
    with pytest.raises(InvalidInputError, match="1..2"):
        head(x, torch.tensor([2, 0]))
    with pytest.raises(InvalidInputError, match="lengths"):
        head(x, torch.tensor([2.0, 1.0]))


# ---------------------------------------------------------------- WindowAttention3D
def test_relative_position_index_2x2x2_against_hand_table():
    assert relative_position_index((2, 2, 2)).tolist() == INDEX_2x2x2
    attn = WindowAttention3D(8, (2, 2, 2), heads=2)
    assert attn.relative_position_bias_table.shape == (27, 2)


def test_relative_position_bias_looks_up_the_table():
    attn = WindowAttention3D(8, (2, 2, 2), heads=2)
    with torch.no_grad():
        attn.relative_position_bias_table.copy_(torch.arange(54.0).view(27, 2))
    bias = attn.relative_position_bias()  # [heads, N, N]
    index = torch.tensor(INDEX_2x2x2, dtype=torch.float32)
    torch.testing.assert_close(bias[0], 2 * index)
    torch.testing.assert_close(bias[1], 2 * index + 1)


def test_relative_position_index_unequal_window():
    index = relative_position_index((1, 2, 3))
    assert index.shape == (6, 6) and index.max() == (1 * 3 * 5) - 1 and index.min() == 0
    # Token 0 = (0,0,0), token 5 = (0,1,2): offset (0,-1,-2) -> 0*15 + 0*5 + 0; reverse -> 14.
    assert index[0, 5] == 0 and index[5, 0] == 14 and (index.diagonal() == 7).all()


def test_window_attention_mask_shift_and_padding():
    # Shift along time on a 4-long grid, window 2, shift 1: rolled-frame regions 0,0,1,2,
    # so window 0 = (0, 0) is open and window 1 = (1, 2) is split.
    mask = window_attention_mask((4, 1, 1), (2, 1, 1), (1, 0, 0))
    inf = float("-inf")
    assert mask.tolist() == [[[0, 0], [0, 0]], [[0, inf], [inf, 0]]]
    # Padding a 3-long grid to 4: the padded token of window 1 is masked from the real one.
    mask = window_attention_mask((3, 1, 1), (2, 1, 1), (0, 0, 0))
    assert mask.tolist() == [[[0, 0], [0, 0]], [[0, inf], [inf, 0]]]
    assert window_attention_mask((4, 2, 2), (2, 2, 2), (0, 0, 0)) is None


def test_padded_tokens_do_not_reach_real_ones():
    """A block on a grid padded to its window gives the real tokens what the unpadded grid would."""
    torch.manual_seed(0)
    padded = SwinTransformerBlock3D(8, grid=(3, 1, 1), window=(2, 1, 1), shift=(0, 0, 0), heads=2, mlp_ratio=2.0)
    exact = SwinTransformerBlock3D(8, grid=(2, 1, 1), window=(2, 1, 1), shift=(0, 0, 0), heads=2, mlp_ratio=2.0)
    exact.load_state_dict(padded.state_dict())
    x = torch.randn(2, 3, 1, 1, 8)
    with torch.no_grad():
        # The third token sits alone in its (padded) window: it must only see itself, like a
        # one-token grid would.
        alone = SwinTransformerBlock3D(8, grid=(1, 1, 1), window=(1, 1, 1), shift=(0, 0, 0), heads=2, mlp_ratio=2.0)
        state = {k: v for k, v in padded.state_dict().items() if "relative_position_bias_table" not in k}
        alone.load_state_dict(state, strict=False)
        alone.attn.relative_position_bias_table.copy_(padded.attn.relative_position_bias_table[1:2])  # offset 0
        out = padded(x)
        torch.testing.assert_close(out[:, :2], exact(x[:, :2]))
        torch.testing.assert_close(out[:, 2:], alone(x[:, 2:]))


# ---------------------------------------------------------------- Global Position Indexing
def test_sinusoidal_encoding_matches_eq_4_5():
    positions = [0.0, 1.0, 5.0, 31.0, 4.428571]
    d = 8
    code = sinusoidal_encoding(torch.tensor(positions), d)
    assert code.shape == (5, d)
    for row, t in enumerate(positions):
        for i in range(d // 2):
            angle = t / 10000 ** (2 * i / d)
            assert code[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert code[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_position_encoding_split():
    assert position_encoding_split(16) == (8, 4, 4)
    assert position_encoding_split(64) == (24, 20, 20)
    assert position_encoding_split(6) == (2, 2, 2)


def test_global_position_indexing_of_both_paths():
    """Each token gets [PE(t) | PE(h) | PE(w)] at its global position; slow time in fast steps."""
    head = _head(tau=2)  # slow T=4 -> steps 0, 2 kept; fast T=8
    d_t, d_s, _ = position_encoding_split(16)

    def expected(t, h, w):
        return torch.cat(
            [
                sinusoidal_encoding(torch.tensor(t), d_t),
                sinusoidal_encoding(torch.tensor(float(h)), d_s),
                sinusoidal_encoding(torch.tensor(float(w)), d_s),
            ]
        )

    fast = head.fast_path.global_position_indexing.encoding  # [8, 2, 2, 16]
    assert fast.shape == (8, 2, 2, 16)
    torch.testing.assert_close(fast[5, 1, 0], expected(5.0, 1, 0))
    slow = head.slow_path.global_position_indexing.encoding  # [2, 2, 2, 16]
    # Kept slow token 1 is slow step 2, which the extractor's linspace(0, 7, 4) puts at frame 2 * 7/3.
    torch.testing.assert_close(slow[1, 0, 1], expected(2 * 7 / 3, 0, 1))
    torch.testing.assert_close(slow[0, 1, 1], expected(0.0, 1, 1))


def test_global_position_indexing_adds_the_encoding():
    gpi = GlobalPositionIndexing([0.0, 3.0], [0.0], [0.0, 1.0], 6)
    x = torch.randn(2, 2, 1, 2, 6)
    torch.testing.assert_close(gpi(x) - x, gpi.encoding.expand_as(x))
