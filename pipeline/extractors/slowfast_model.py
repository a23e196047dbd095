"""SlowFast R50 (Kinetics-400, ``SLOWFAST_8x8_R50``) as a plain torch module.

An independent re-implementation of pytorchvideo's ``slowfast_r50`` with the same module
names, so its state dict has the same 662 keys (34,566,488 parameters) and the published
checkpoint ``SLOWFAST_8x8_R50.pyth`` (weights under ``checkpoint["model_state"]``) loads
with ``strict=True``. pytorchvideo itself is not a dependency; parity with it is checked by
``tests/test_slowfast_model.py`` against golden values made by
``tests/fixtures/make_slowfast_fixture.py``.

Key layout (``P`` = pathway, 0 slow / 1 fast)::

    blocks.0.multipathway_blocks.P.{conv,norm}                  stems
    blocks.{0..3}.multipathway_fusion.{conv_fast_to_slow,norm}  fast -> slow lateral fusion
    blocks.{1..4}.multipathway_blocks.P.res_blocks.N.
        {branch1_conv,branch1_norm}                             projection shortcut
        branch2.{conv_a,norm_a,conv_b,norm_b,conv_c,norm_c}     bottleneck
    blocks.5                                                    pooling (no parameters)
    blocks.6.proj                                               Linear(2304, 400)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..weights import file_weights, load_into, unwrap_state_dict

ALPHA = 4  # fast/slow frame-rate ratio: 32 fast frames, 8 slow frames
BETA_INV = 8  # slow/fast channel ratio: the fast pathway is 8x thinner
FUSION_CHANNEL_RATIO = 2  # fusion conv doubles the fast channels before concatenation
FUSION_KERNEL_T = 7  # temporal kernel of the fusion conv (stride ALPHA)
STAGE_DEPTHS = (3, 4, 6, 3)  # ResNet-50
STEM_CHANNELS = (64, 64 // BETA_INV)
SLOW_FRAMES = 8
FAST_FRAMES = SLOW_FRAMES * ALPHA
NUM_CLASSES = 400
DROPOUT = 0.5
SLOW_DIM = 2048  # stage-5 channels, slow pathway
FAST_DIM = SLOW_DIM // BETA_INV  # 256
HEAD_POOL = ((SLOW_FRAMES, 7, 7), (FAST_FRAMES, 7, 7))  # fixed AvgPool3d kernels of the head
# conv_a temporal kernel per stage (res2..res5): the slow pathway is 2D until res4.
CONV_A_KERNEL_T = ((1, 1, 3, 3), (3, 3, 3, 3))
STAGE_SPATIAL_STRIDES = (1, 2, 2, 2)


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)


class _Stem(nn.Module):
    """Conv(kt x 7 x 7, stride 1x2x2) -> BN -> ReLU -> MaxPool(1x3x3, stride 1x2x2)."""

    def __init__(self, *, out_channels: int, kernel_t: int):
        super().__init__()
        self.conv = nn.Conv3d(
            3,
            out_channels,
            kernel_size=(kernel_t, 7, 7),
            stride=(1, 2, 2),
            padding=(kernel_t // 2, 3, 3),
            bias=False,
        )
        self.norm = _bn(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class _FuseFastToSlow(nn.Module):
    """Lateral connection: time-strided conv on fast features, concatenated to slow ones.

    ``[B, Cs, Ts, H, W], [B, Cf, Tf, H, W]`` -> ``[B, Cs + 2 Cf, Ts, H, W]`` (fast unchanged).
    """

    def __init__(self, *, fast_channels: int):
        super().__init__()
        out_channels = fast_channels * FUSION_CHANNEL_RATIO
        self.conv_fast_to_slow = nn.Conv3d(
            fast_channels,
            out_channels,
            kernel_size=(FUSION_KERNEL_T, 1, 1),
            stride=(ALPHA, 1, 1),
            padding=(FUSION_KERNEL_T // 2, 0, 0),
            bias=False,
        )
        self.norm = _bn(out_channels)
        self.activation = nn.ReLU()

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fuse = self.activation(self.norm(self.conv_fast_to_slow(fast)))
        return torch.cat([slow, fuse], 1), fast


class _Bottleneck(nn.Module):
    """Conv(kt x 1 x 1) -> BN -> ReLU -> Conv(1 x 3 x 3, spatial stride) -> BN -> ReLU -> Conv(1x1x1) -> BN."""

    def __init__(self, *, dim_in: int, dim_inner: int, dim_out: int, kernel_t: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv3d(
            dim_in, dim_inner, kernel_size=(kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0), bias=False
        )
        self.norm_a = _bn(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            kernel_size=(1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, 1, 1),
            bias=False,
        )
        self.norm_b = _bn(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = _bn(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class _ResBlock(nn.Module):
    """``relu(shortcut(x) + bottleneck(x))``; the shortcut is a 1x1x1 conv + BN when shapes change."""

    def __init__(self, *, dim_in: int, dim_inner: int, dim_out: int, kernel_t: int, stride: int):
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.branch1_conv = nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False)
            self.branch1_norm = _bn(dim_out)
        else:  # identity shortcut: no parameters, so no keys
            self.branch1_conv = None
            self.branch1_norm = None
        self.branch2 = _Bottleneck(
            dim_in=dim_in, dim_inner=dim_inner, dim_out=dim_out, kernel_t=kernel_t, stride=stride
        )
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return self.activation(shortcut + self.branch2(x))


class _ResStage(nn.Module):
    """``depth`` residual blocks; only the first one changes channels and spatial stride."""

    def __init__(self, *, depth: int, dim_in: int, dim_inner: int, dim_out: int, kernel_t: int, stride: int):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            _ResBlock(
                dim_in=dim_in if i == 0 else dim_out,
                dim_inner=dim_inner,
                dim_out=dim_out,
                kernel_t=kernel_t,
                stride=stride if i == 0 else 1,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class _TwoPathwayBlock(nn.Module):
    """One stage on both pathways, then the optional fast -> slow fusion."""

    def __init__(self, *, slow: nn.Module, fast: nn.Module, fusion: _FuseFastToSlow | None):
        super().__init__()
        self.multipathway_blocks = nn.ModuleList([slow, fast])
        # The last stage has no fusion; Identity keeps pytorchvideo's module tree (no keys).
        self.multipathway_fusion = fusion if fusion is not None else nn.Identity()

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slow = self.multipathway_blocks[0](slow)
        fast = self.multipathway_blocks[1](fast)
        if isinstance(self.multipathway_fusion, _FuseFastToSlow):
            slow, fast = self.multipathway_fusion(slow, fast)
        return slow, fast


class _PoolConcat(nn.Module):
    """Per-pathway AvgPool3d with fixed kernels (stride 1), concatenated over channels."""

    def __init__(self):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool3d(kernel_size=k, stride=1, padding=0) for k in HEAD_POOL)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pool[0](slow), self.pool[1](fast)], 1)


class _Head(nn.Module):
    """Dropout -> Linear over channels at every pooled position -> global average."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(DROPOUT)
        self.proj = nn.Linear(SLOW_DIM + FAST_DIM, NUM_CLASSES)
        self.output_pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.dropout(x).permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.output_pool(x).flatten(1)


class SlowFastR50(nn.Module):
    """SlowFast R50 8x8 backbone returning the stage-5 maps of both pathways.

    ::

        slow [B,3,8,H,W]                          fast [B,3,32,H,W]
              |                                          |
        stem 1x7x7 (64)                            stem 5x7x7 (8)          blocks.0
              | <---- concat( conv 7x1x1 /4 (16) ) ----- |
        res2  (256)                                res2 (32)               blocks.1
              | <---- concat( conv 7x1x1 /4 (64) ) ----- |
        res3  (512)                                res3 (64)               blocks.2
              | <---- concat( conv 7x1x1 /4 (128) ) ---- |
        res4  (1024)                               res4 (128)              blocks.3
              | <---- concat( conv 7x1x1 /4 (256) ) ---- |
        res5  (2048)                               res5 (256)              blocks.4
              |                                          |
        slow_map [B,2048,8,H/32,W/32]      fast_map [B,256,32,H/32,W/32]   <- forward()
              |                                          |
        AvgPool 8x7x7                              AvgPool 32x7x7          blocks.5
              +------------- concat (2304) --------------+
                                   |
                 dropout -> Linear(2304, 400) -> mean  -> logits [B,400]   blocks.6  <- classify()

    Spatial size: any H, W that are multiples of 32 give ``H/32 x W/32`` maps (the stems
    and stage strides halve 5 times); :meth:`classify` needs maps of at least 7x7, i.e.
    224 px or more, because the head pools with fixed 7x7 kernels. Input: RGB in [0, 1]
    normalised with mean 0.45 and std 0.225 per channel (Kinetics training recipe). Call
    ``.eval()`` before extracting features: BatchNorm and dropout follow train/eval mode.
    """

    def __init__(self):
        super().__init__()
        slow_stem = _Stem(out_channels=STEM_CHANNELS[0], kernel_t=1)
        fast_stem = _Stem(out_channels=STEM_CHANNELS[1], kernel_t=5)
        blocks: list[nn.Module] = [
            _TwoPathwayBlock(slow=slow_stem, fast=fast_stem, fusion=_FuseFastToSlow(fast_channels=STEM_CHANNELS[1]))
        ]
        dim_in, dim_out = STEM_CHANNELS[0], STEM_CHANNELS[0] * 4
        for idx, depth in enumerate(STAGE_DEPTHS):
            # slow input = own channels + fused fast channels (2 * dim_in / 8)
            slow_in = dim_in + dim_in * FUSION_CHANNEL_RATIO // BETA_INV
            stride = STAGE_SPATIAL_STRIDES[idx]
            slow = _ResStage(
                depth=depth,
                dim_in=slow_in,
                dim_inner=dim_out // 4,
                dim_out=dim_out,
                kernel_t=CONV_A_KERNEL_T[0][idx],
                stride=stride,
            )
            fast = _ResStage(
                depth=depth,
                dim_in=dim_in // BETA_INV,
                dim_inner=dim_out // 4 // BETA_INV,
                dim_out=dim_out // BETA_INV,
                kernel_t=CONV_A_KERNEL_T[1][idx],
                stride=stride,
            )
            last = idx == len(STAGE_DEPTHS) - 1
            fusion = None if last else _FuseFastToSlow(fast_channels=dim_out // BETA_INV)
            blocks.append(_TwoPathwayBlock(slow=slow, fast=fast, fusion=fusion))
            dim_in, dim_out = dim_out, dim_out * 2
        blocks.append(_PoolConcat())
        blocks.append(_Head())
        self.blocks = nn.ModuleList(blocks)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``slow [B,3,Ts,H,W]``, ``fast [B,3,Tf,H,W]`` -> ``(slow_map [B,2048,Ts,h,w], fast_map [B,256,Tf,h,w])``.

        ``Ts = ceil(Tf / 4)`` (8 and 32 for the Kinetics model); ``h, w = H/32, W/32``.
        These are the stage-5 outputs (``blocks.0`` .. ``blocks.4``), before the head.
        """
        _check_pathways(slow, fast)
        for block in self.blocks[:5]:
            slow, fast = block(slow, fast)
        return slow, fast

    def logits_from_maps(self, slow_map: torch.Tensor, fast_map: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 head on stage-5 maps: ``[B,2048,8,h,w], [B,256,32,h,w]`` -> ``[B,400]`` logits.

        Needs ``h, w >= 7`` and exactly 8 / 32 time steps (fixed pooling kernels).
        """
        return self.blocks[6](self.blocks[5](slow_map, fast_map))

    def classify(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """Full network, as pytorchvideo's ``model([slow, fast])``: clips -> ``[B, 400]`` logits."""
        return self.logits_from_maps(*self(slow, fast))


def _check_pathways(slow: torch.Tensor, fast: torch.Tensor) -> None:
    if slow.ndim != 5 or fast.ndim != 5 or slow.shape[1] != 3 or fast.shape[1] != 3:
        raise ValueError(
            f"expected slow [B,3,T,H,W] and fast [B,3,T,H,W], got {tuple(slow.shape)} and {tuple(fast.shape)}"
        )
    # The fusion conv (kernel 7, stride 4, padding 3) maps Tf fast steps to ceil(Tf/4).
    expected_slow_t = (fast.shape[2] - 1) // ALPHA + 1
    if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:] or slow.shape[2] != expected_slow_t:
        raise ValueError(
            f"slow {tuple(slow.shape)} and fast {tuple(fast.shape)} do not pair: same batch and H, W "
            f"are needed and slow must have ceil(Tf/{ALPHA}) = {expected_slow_t} frames (see pack_pathways)"
        )


def pack_pathways(clip: torch.Tensor, *, alpha: int = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """Split one clip into the two pathway inputs: ``[B,3,T,H,W]`` -> ``(slow [B,3,T/alpha,H,W], fast)``.

    The slow frames are ``linspace(0, T-1, T // alpha).long()`` (for T = 32: frames 0, 4, 8,
    13, 17, 22, 26, 31), as pytorchvideo's ``PackPathway`` and SimpleVQA do; ``fast`` is the
    clip itself (not copied).
    """
    if clip.ndim != 5 or clip.shape[1] != 3:
        raise ValueError(f"expected a clip [B,3,T,H,W], got {tuple(clip.shape)}")
    frames = clip.shape[2]
    if frames < alpha or frames % alpha:
        raise ValueError(
            f"clip has {frames} frames; SlowFast needs a multiple of alpha={alpha} (32 for the Kinetics model)"
        )
    index = torch.linspace(0, frames - 1, frames // alpha, device=clip.device).long()
    return clip.index_select(2, index), clip


def load_slowfast_checkpoint(model: SlowFastR50, path: str | Path) -> dict:
    """Load ``SLOWFAST_8x8_R50.pyth`` (or any file holding this model's state dict) strictly.

    The file is read with ``torch.load(..., map_location="cpu", weights_only=True)``; it may
    hold ``{"model_state": state_dict, ...}`` (pytorchvideo / PySlowFast) or a bare state dict.
    Raises ``WeightsUnavailableError`` for a missing file and ``WeightsError`` naming the
    missing and unexpected keys (or the shape mismatch) when the weights do not fit.
    Returns the weights identity for provenance: ``{"source", "path", "sha256",
    "container", "num_tensors"}``.
    """
    checkpoint, identity = file_weights(path)
    container = "model_state" if isinstance(checkpoint, dict) and "model_state" in checkpoint else "bare"
    state_dict = unwrap_state_dict(checkpoint, path=path)
    load_into(model, state_dict, source=str(path))
    return {**identity, "container": container, "num_tensors": len(state_dict)}
