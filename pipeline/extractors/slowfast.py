"""SlowFast R50 motion features per 32-frame clip (SimpleVQA; A2INet's motion semantic branch;
TCSVT-2022's motion features).

Input: clips from a ``clips:32[:POLICY]`` sampling (:class:`~pipeline.sampling.ClipSampling`),
``uint8 [B, 32, H, W, 3]`` RGB. Every extractor here shares the network and differs in the
clips it is fed, the preprocessing and how the stage-5 maps are pooled::

    clips uint8 [B, 32, H, W, 3]
      -> each frame resized to 224 x 224 (fixed: aspect ratio not kept, as SimpleVQA's
         transforms.Resize([224, 224])), RGB / 255, (x - 0.45) / 0.225 on every channel
         [slowfast-fast-tcsvt: native resolution, (x - ImageNet mean) / ImageNet std]
      -> clip [B, 3, 32, 224, 224] -> pack_pathways: slow = frames linspace(0, 31, 8), fast = all 32
      -> SlowFastR50 (Kinetics-400) -> slow_map [B, 2048, 8, 7, 7], fast_map [B, 256, 32, 7, 7]
           |
           |-- slowfast             mean over (T, H, W) of each map, slow then fast     [B, 2304]
           |-- slowfast-fast        per fast time step: spatial mean, unbiased std      [B*32, 512]
           |-- slowfast-fast-tcsvt  the same, rows of already covered frames dropped    [<= B*32, 512]
           '-- slowfast-tokens      adaptive avg pool to (T, 2, 2) grids, flattened     [B, 98304]

Rows: one per clip, except the per-step extractors (one per fast time step: clip 0 steps
0..31, then clip 1, ...). ``size`` overrides the 224 (a multiple of 32, e.g. 64 for quick
tests; recorded in the spec's ``resize``, so features of other sizes never mix with 224 ones).
``resampler="pil"`` resizes the uint8 frames with PIL bilinear, as SimpleVQA's transform does
to its PIL frames (bit-identical input; recorded in the spec). ``slowfast-tokens`` is large:
98,304 values (384 KiB as float32, which the store keeps for now) per clip, ~3 MB for an 8 s
video.

``slowfast-fast-tcsvt`` is TCSVT-2022's motion extractor (``CNNfeatures_Motion.py`` with
PySlowFast's ``SLOWFAST_8x8_R50`` config, whose ``DATA.MEAN``/``DATA.STD`` are left at
PySlowFast's ImageNet defaults): clips from ``clips:32:chunks`` (every other frame of
64-frame chunks, the last chunk ending at the last frame), frames at native resolution, 32
rows per chunk, and of the last, overlapping chunk only the rows of frames no earlier chunk
covered (:class:`NewFramesAccumulator`). Native resolution costs: a 540p clip is ~10x the
work of a 224 one, a 1080p clip ~40x and ~0.8 GB of float input.

Weights: ``"kinetics"`` (default) is pytorchvideo's ``SLOWFAST_8x8_R50.pyth``, looked up in
``$TORCH_HOME/hub/checkpoints/`` and downloaded there from :data:`KINETICS_URL` unless
``VQA_OFFLINE`` is set; no hash is published, so its sha256 goes into the provenance. A
path loads any file holding this model's state dict (bare or under ``model_state``);
``random[:SEED]`` is for tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExtractorOptionError, PipelineError, SamplingError
from ..weights import HubCheckpoint, parse_random, random_weights, register_checkpoint
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Extractor,
    ExtractorSpec,
    StackAccumulator,
    frames_to_unit_float,
    normalize,
    resampler_option,
)
from .pooling import mean_std_features
from .registry import register_extractor
from .slowfast_model import (
    FAST_DIM,
    FAST_FRAMES,
    SLOW_DIM,
    SLOW_FRAMES,
    SlowFastR50,
    load_slowfast_checkpoint,
    pack_pathways,
)

logger = logging.getLogger(__name__)

KINETICS_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth"
KINETICS_NAME = "SLOWFAST_8x8_R50 (pytorchvideo, Kinetics-400)"
WEIGHT_CHOICES = ("kinetics", "random[:SEED]", "PATH")
CLIP_FRAMES = FAST_FRAMES  # 32, the clip length the Kinetics model was trained on
INPUT_SIZE = 224  # SimpleVQA's --resize 224 (extract_features.sh)
SIZE_MULTIPLE = 32  # the network halves the spatial size 5 times
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
TOKEN_GRID = 2  # slowfast-tokens: 2 x 2 spatial cells per time step
# Frames converted to float and resized at once: bounds memory for large frames
# (32 float 1080p frames would be ~800 MB).
RESIZE_CHUNK = 8
# Default samplings (also the hint in errors when per-frame input reaches a clip extractor).
CLIP_SAMPLING = f"clips:{CLIP_FRAMES}"
TCSVT_SAMPLING = f"clips:{CLIP_FRAMES}:chunks"


@dataclass(frozen=True)
class SlowFastSpec(ExtractorSpec):
    """:class:`ExtractorSpec` plus the fixed resize the base spec cannot express.

    ``resize``: ``(height, width)`` every frame is resized to, aspect ratio not kept
    (``spec.resampler``), or ``None`` for native resolution; ``resize_short_side`` and
    ``crop`` stay ``None``.
    """

    resize: tuple[int, int] | None = (INPUT_SIZE, INPUT_SIZE)


# ---- weights ---------------------------------------------------------------------------

KINETICS_CHECKPOINT = register_checkpoint(
    HubCheckpoint(title=KINETICS_NAME, filename=KINETICS_URL.rsplit("/", 1)[-1], url=KINETICS_URL),
    used_by="slowfast, slowfast-fast, slowfast-tokens",
)  # pytorchvideo publishes no checksum: the file's sha256 goes into provenance instead


def build_slowfast_model(*, weights: str) -> tuple[SlowFastR50, dict]:
    """A frozen :class:`SlowFastR50` in eval mode and its weights identity for provenance.

    ``weights``: ``"kinetics"``, ``"random"`` / ``"random:SEED"``, or a checkpoint path.
    """
    seed = parse_random(weights)
    if seed is not None:
        identity = dict(random_weights(seed).identity)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG state
            torch.manual_seed(seed)
            model = SlowFastR50()
    elif weights == "kinetics":
        path = KINETICS_CHECKPOINT.resolve()  # before building: fail fast
        model = SlowFastR50()
        loaded = load_slowfast_checkpoint(model, path)
        # No cache path: it differs between machines, and the sha256 identifies the file.
        identity = {
            "source": "pytorchvideo",
            "name": KINETICS_NAME,
            "url": KINETICS_URL,
            "sha256": loaded["sha256"],
            "container": loaded["container"],
            "num_tensors": loaded["num_tensors"],
        }
    else:
        model = SlowFastR50()
        identity = load_slowfast_checkpoint(model, weights)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, identity


# ---- pooling (separate from the model so it is tested alone) ---------------------------


def clip_mean_features(slow_map: torch.Tensor, fast_map: torch.Tensor) -> torch.Tensor:
    """SimpleVQA's per-clip features: ``[B,2048,Ts,h,w], [B,256,Tf,h,w]`` -> ``[B, 2304]``.

    Mean over time and space of each map, slow channels first. SimpleVQA pools with the
    Kinetics head's ``AvgPool3d((8, 7, 7))`` / ``((32, 7, 7))`` and then ``AdaptiveAvgPool3d(1)``,
    which for 224 px clips (7 x 7 maps) is exactly this mean.
    """
    return torch.cat([slow_map.mean(dim=(2, 3, 4)), fast_map.mean(dim=(2, 3, 4))], dim=1)


def fast_step_features(fast_map: torch.Tensor) -> torch.Tensor:
    """Per fast time step, spatial mean then unbiased std of each channel.

    ``[B, C, T, h, w]`` -> ``[B*T, 2C]``, rows ordered clip by clip, step by step
    (row ``b*T + t``); columns ``[mean_0..mean_{C-1}, std_0..std_{C-1}]`` as
    :func:`~pipeline.extractors.pooling.mean_std_features` lays out one map.
    """
    b, c, t, h, w = fast_map.shape
    frames = fast_map.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    return mean_std_features([frames])


def grid_tokens(slow_map: torch.Tensor, fast_map: torch.Tensor, *, grid: int = TOKEN_GRID) -> torch.Tensor:
    """Both maps averaged to ``grid x grid`` cells per time step, flattened, slow first.

    ``[B,2048,Ts,h,w], [B,256,Tf,h,w]`` -> ``[B, 2048*Ts*g*g + 256*Tf*g*g]`` (98,304 for the
    Kinetics model). Each part is the C-order flattening of ``[C, T, g, g]`` (channel, time,
    row, column). Cells follow ``adaptive_avg_pool3d``: a 7 x 7 map gives the overlapping
    row/column ranges 0..3 and 3..6.
    """
    parts = [F.adaptive_avg_pool3d(fmap, (fmap.shape[2], grid, grid)).flatten(1) for fmap in (slow_map, fast_map)]
    return torch.cat(parts, dim=1)


# ---- the extractor ---------------------------------------------------------------------


class SlowFastExtractor(Extractor):
    """Frozen SlowFast R50 on 32-frame clips; ``pool(slow_map, fast_map)`` makes the rows.

    ``__call__(clips uint8 [B, 32, H, W, 3]) -> float32 [rows, dims]`` (rows = B, or B*32
    for per-step pooling). Per-frame input ``[B, H, W, 3]`` raises :class:`SamplingError`
    naming ``sampling_hint`` (the extractor's default sampling).
    """

    def __init__(
        self,
        spec: SlowFastSpec,
        model: SlowFastR50,
        pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        device: str | torch.device = "cpu",
        sampling_hint: str = CLIP_SAMPLING,
        accumulator: Callable[[], StackAccumulator] = StackAccumulator,
    ):
        super().__init__(spec, device=device)
        self.model = model.to(self.device).eval()
        self.pool = pool
        self.sampling_hint = sampling_hint
        self._accumulator = accumulator

    def preprocess(self, clips: np.ndarray) -> torch.Tensor:
        """``uint8 [B, L, H, W, 3]`` -> normalised float ``[B, 3, L, h, w]`` on the device
        (``(h, w) = spec.resize``, or ``(H, W)`` at native resolution)."""
        clips = np.asarray(clips)
        length = self.spec.frames_per_step
        if clips.ndim != 5 or clips.shape[1] != length or clips.shape[-1] != 3:
            raise SamplingError(
                f"{self.spec.name} takes clips uint8 [B, {length}, H, W, 3], got shape {clips.shape}; "
                f"sample the video with {self.sampling_hint!r}"
            )
        b, t, height, width, _ = clips.shape
        size = self.spec.resize or (height, width)
        flat = clips.reshape(b * t, height, width, 3)
        out = torch.empty((b * t, 3, *size), device=self.device)
        for start in range(0, b * t, RESIZE_CHUNK):
            out[start : start + RESIZE_CHUNK] = frames_to_unit_float(
                flat[start : start + RESIZE_CHUNK],
                device=self.device,
                size=self.spec.resize,
                resampler=self.spec.resampler,
            )
        out = normalize(out, self.spec.mean, self.spec.std, inplace=True)
        return out.view(b, t, 3, *size).permute(0, 2, 1, 3, 4).contiguous()

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 32, h, w]`` -> ``[rows, dims]``."""
        slow_map, fast_map = self.model(*pack_pathways(clip))
        return self.pool(slow_map, fast_map)

    def accumulator(self, *, video_key: str = "") -> StackAccumulator:
        return self._accumulator()


class NewFramesAccumulator(StackAccumulator):
    """Per-step rows of clips that may overlap (TCSVT-2022's last chunk): of each clip's rows,
    one per frame position, keeps those whose frame comes after every frame of the earlier
    clips. The first clip keeps all its rows (repeated frames of a short video included).

    Needs the clips' frame indices: the runner passes ``steps`` int64 ``[B, L]`` to
    :meth:`consume`; the extractor must give ``L`` rows per clip.
    """

    def __init__(self):
        super().__init__()
        self._last_frame = -1

    def consume(self, extractor: Extractor, batch: np.ndarray, *, steps: np.ndarray | None = None) -> None:
        if steps is None:
            raise PipelineError(
                f"{extractor.spec.name} drops the rows of frames an earlier clip covered, so it needs the "
                "clips' frame indices: consume(extractor, batch, steps=[B, L] indices)"
            )
        steps = np.asarray(steps, dtype=np.int64).reshape(len(batch), -1)
        rows = extractor(batch)
        if len(rows) != steps.size:
            raise PipelineError(f"{extractor.spec.name} gave {len(rows)} rows for {steps.shape} clip frames")
        for clip_rows, frames in zip(rows.reshape(*steps.shape, -1), steps, strict=True):
            self.add(clip_rows[frames > self._last_frame])
            self._last_frame = max(self._last_frame, int(frames.max()))


# ---- registry ----------------------------------------------------------------------

TOKEN_DIMS = (SLOW_DIM * SLOW_FRAMES + FAST_DIM * FAST_FRAMES) * TOKEN_GRID * TOKEN_GRID  # 98,304
VARIANTS = {
    # name: (dims, pool(slow_map, fast_map) -> [rows, dims], pooling description)
    "slowfast": (
        SLOW_DIM + FAST_DIM,
        clip_mean_features,
        "per clip: mean over (T, H, W) of slow res5 (2048) then fast res5 (256)",
    ),
    "slowfast-fast": (
        2 * FAST_DIM,
        lambda slow_map, fast_map: fast_step_features(fast_map),
        "per fast time step (32 rows per clip): spatial mean (256) then unbiased std (256) of fast res5",
    ),
    "slowfast-tokens": (
        TOKEN_DIMS,
        grid_tokens,
        "per clip: adaptive avg pool to (T, 2, 2); slow [2048, 8, 2, 2] then fast [256, 32, 2, 2], C-order",
    ),
}


def _check_size(size: int) -> int:
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or size < SIZE_MULTIPLE
        or size % SIZE_MULTIPLE
    ):
        raise ExtractorOptionError(
            f"size must be a positive multiple of {SIZE_MULTIPLE} (SimpleVQA: {INPUT_SIZE}), got {size!r}"
        )
    return int(size)


def _build(name: str, *, weights: str, device: str, size: int, resampler: str) -> SlowFastExtractor:
    dims, pool, pooling = VARIANTS[name]
    size = _check_size(size)
    spec_resampler = resampler_option(resampler, reference="pil-bilinear")  # SimpleVQA: PIL Resize, bilinear
    model, identity = build_slowfast_model(weights=weights)
    spec = SlowFastSpec(
        name=name,
        version="1",
        dims=dims,
        backbone="slowfast_r50",
        taps=("slow_res5", "fast_res5"),
        pooling=pooling,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        frames_per_step=CLIP_FRAMES,
        weights=identity,
        resize=(size, size),
        resampler=spec_resampler,
    )
    return SlowFastExtractor(spec, model, pool, device=device)


@register_extractor(
    "slowfast",
    dims=SLOW_DIM + FAST_DIM,
    weights_choices=WEIGHT_CHOICES,
    default_weights="kinetics",
    sampling_kinds=("clips",),
    default_sampling=CLIP_SAMPLING,
    description="SlowFast R50 per-clip slow+fast means (SimpleVQA motion features; needs clips:32)",
)
def build_slowfast(
    *, weights: str, device: str = "cpu", size: int = INPUT_SIZE, resampler: str = "torch"
) -> SlowFastExtractor:
    return _build("slowfast", weights=weights, device=device, size=size, resampler=resampler)


@register_extractor(
    "slowfast-fast",
    dims=2 * FAST_DIM,
    weights_choices=WEIGHT_CHOICES,
    default_weights="kinetics",
    sampling_kinds=("clips",),
    default_sampling=CLIP_SAMPLING,
    description="SlowFast R50 fast pathway mean+std per time step on SimpleVQA's 224 px clips "
    "(32 rows per clip; needs clips:32)",
)
def build_slowfast_fast(
    *, weights: str, device: str = "cpu", size: int = INPUT_SIZE, resampler: str = "torch"
) -> SlowFastExtractor:
    return _build("slowfast-fast", weights=weights, device=device, size=size, resampler=resampler)


@register_extractor(
    "slowfast-tokens",
    dims=TOKEN_DIMS,
    weights_choices=WEIGHT_CHOICES,
    default_weights="kinetics",
    sampling_kinds=("clips",),
    default_sampling=CLIP_SAMPLING,
    description="SlowFast R50 slow+fast res5 on 2x2 grids per time step (98,304 per clip, float32; needs clips:32)",
)
def build_slowfast_tokens(
    *, weights: str, device: str = "cpu", size: int = INPUT_SIZE, resampler: str = "torch"
) -> SlowFastExtractor:
    """Large: 98,304 values per clip, stored as float32 for now (384 KiB per clip)."""
    return _build("slowfast-tokens", weights=weights, device=device, size=size, resampler=resampler)


@register_extractor(
    "slowfast-fast-tcsvt",
    dims=2 * FAST_DIM,
    weights_choices=WEIGHT_CHOICES,
    default_weights="kinetics",
    sampling_kinds=("clips:chunks",),
    default_sampling=TCSVT_SAMPLING,
    description="SlowFast R50 fast pathway mean+std per time step, TCSVT-2022 motion: native resolution, "
    "every other frame of 64-frame chunks (needs clips:32:chunks)",
)
def build_slowfast_fast_tcsvt(*, weights: str, device: str = "cpu") -> SlowFastExtractor:
    """TCSVT-2022's motion features (see the module docstring); no resize, so no ``size`` or
    ``resampler`` option."""
    model, identity = build_slowfast_model(weights=weights)
    spec = SlowFastSpec(
        name="slowfast-fast-tcsvt",
        version="1",
        dims=2 * FAST_DIM,
        backbone="slowfast_r50",
        taps=("fast_res5",),
        pooling="per fast time step (32 rows per chunk of 64 frames): spatial mean (256) then unbiased std (256) "
        "of fast res5; rows of frames an earlier chunk covered are dropped",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        frames_per_step=CLIP_FRAMES,
        weights=identity,
        resize=None,
    )
    return SlowFastExtractor(
        spec,
        model,
        lambda slow_map, fast_map: fast_step_features(fast_map),
        device=device,
        sampling_hint=TCSVT_SAMPLING,
        accumulator=NewFramesAccumulator,
    )
