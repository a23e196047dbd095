"""The extractor abstraction: a frozen spec plus one call, frames in, features out.

Compute options (:meth:`Extractor.set_compute`, applied by ``create_extractor(...,
precision=..., channels_last=...)`` to every registered extractor) change how the networks run,
not what they compute::

    frames uint8 [B, H, W, 3] --preprocess (float32, always)--> x [B, 3, h, w]
      --> network(s)   under torch.autocast(device type, bf16|fp16); inputs and weights
      |                channels-last when asked (4-D: channels_last, 5-D: channels_last_3d)
      '--> outputs cast back to float32, standard layout --> pooling (float32, always)

Only the networks run in reduced precision: pooling (mean/std, Gram products, which can pass
65504 and overflow fp16) stays in float32. Both options are recorded in the spec, hence in
the feature-set identity: bf16 features are close to, not equal to, fp32 ones.

Measured (``tests/test_runner.py`` asserts < 1%; ``bench/pipeline_efficiency.py`` prints it):
bf16 on the CPU against fp32, ``resnet50`` (all 7680 features), 13 skimage photos, per-photo
relative error ``||f_bf16 - f_fp32|| / ||f_fp32||``: 0.38%-0.51% (128 to 224 px) with seeded
random weights (torchvision's initialisation). Trained weights were not available offline.
With the BatchNorm statistics calibrated on the photos (activations normalised layer by layer
as in a trained network; random networks in that regime amplify perturbations with depth, so
likely pessimistic) the error reaches 5-10%, mostly from layer3/layer4 (layer1/2: < 0.5%).
Measure with the real weights before relying on bf16 features
(``bench/pipeline_efficiency.py --weights imagenet``). channels-last
alone (fp32) changes features by ~1e-7. On a CPU without native bf16 (this one: AVX2 only)
bf16 is much slower than fp32: it is meant for GPUs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ComputeOptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Precision names -> the dtype autocast runs the networks in (None: no autocast, float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that determines an extractor's output; stored as provenance with the features.

    ``resize_short_side``/``crop``: ``None`` means native resolution (VSFA feeds full frames).
    ``weights`` is the identity of the weights (source, name or file sha256, or random seed).
    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``) and ``channels_last``: how the networks
    run (:meth:`Extractor.set_compute`); part of the identity, since reduced precision changes
    the features slightly. Bump ``version`` whenever the computation changes, so old and new
    features never mix.
    """

    name: str
    version: str
    dims: int
    backbone: str
    taps: tuple[str, ...]
    pooling: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_short_side: int | None = None
    crop: int | None = None
    frames_per_step: int = 1
    weights: Mapping[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    channels_last: bool = False

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        return json_safe(dataclasses.asdict(self))


def json_safe(value):
    """Recursively turn tuples into lists and mappings into dicts so values survive JSON."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_compute_options(*, precision: str, channels_last: bool, device: str | torch.device) -> None:
    """Refuse compute options that are unknown or do not suit ``device``.

    ``precision``: ``"fp32"`` anywhere; ``"bf16"`` on the CPU or on a CUDA GPU that supports
    it; ``"fp16"`` on CUDA only (the CPU would run it slowly and it is not validated there).
    Raises :class:`~pipeline.errors.ComputeOptionError` (a ``ValueError``).
    """
    if precision not in PRECISIONS:
        raise ComputeOptionError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if not isinstance(channels_last, bool):
        raise ComputeOptionError(f"channels_last must be True or False, got {channels_last!r}")
    device = resolve_device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ComputeOptionError(
            f"precision fp16 needs a CUDA device, but the extractor runs on {device}; "
            "use bf16 (or fp32) on the CPU"
        )
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ComputeOptionError(f"precision bf16 runs on cpu or cuda devices, not on {device}; use fp32")
    if precision == "bf16" and device.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ComputeOptionError(f"the GPU {device} does not support bf16; use fp16 or fp32")


def frames_to_device(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` numpy frames -> a tensor on ``device`` (same shape and dtype).

    The copy to a CUDA device is ``non_blocking``: asynchronous when the frames lie in pinned
    memory (the runner's decode worker assembles them there for CUDA extractors), an ordinary
    copy otherwise. The caller must keep ``frames`` alive until the device work that reads them
    has finished; an extractor's call does, since it ends by copying its features back to the host.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x.to(device, non_blocking=True) if x.device != device else x


class Extractor:
    """Base class. Subclasses implement ``forward(x: [B, 3, H, W] float) -> [B, dims]``.

    ``__call__`` takes decoded frames ``uint8 [B, H, W, 3]`` (RGB) and returns float32
    ``[B, dims]`` numpy features, one row per frame.
    """

    spec: ExtractorSpec

    def __init__(self, spec: ExtractorSpec, *, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = resolve_device(device)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> normalised float ``[B, 3, h, w]`` on the device."""
        x = frames_to_device(frames, self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = resize_and_crop(x, short_side=self.spec.resize_short_side, crop=self.spec.crop)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        feats = self.forward(self.preprocess(frames))
        return feats.float().cpu().numpy()

    def accumulator(self, *, video_key: str = "") -> "FeatureAccumulator":
        """Per-video state: how per-step outputs combine (default: keep every row).

        ``video_key`` identifies the video (its id) for extractors that draw per-video
        randomness from a seeded generator (A2INet's crop positions)."""
        return StackAccumulator()

    def networks(self) -> dict[str, torch.nn.Module]:
        """The neural networks :meth:`set_compute` applies to, by attribute name.

        Default: every ``torch.nn.Module`` attribute of the extractor (``self.model`` for the
        built-in ones). Override when a network is kept elsewhere (in a list, say)."""
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.nn.Module)}

    def set_compute(self, *, precision: str = "fp32", channels_last: bool = False) -> "Extractor":
        """Run the networks in ``precision`` and/or channels-last memory layout; returns ``self``.

        ``precision``: ``"fp32"`` (default), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only):
        each network's forward runs under ``torch.autocast(device type, dtype)``; its outputs
        come back as float32, so preprocessing and pooling stay in float32.
        ``channels_last``: 4-D weights and inputs in ``torch.channels_last``, 5-D ones (3-D
        convolutions) in ``torch.channels_last_3d``; outputs come back in the standard layout.
        The options are recorded in ``spec`` (``spec.precision``, ``spec.channels_last``), so
        features computed with them form their own feature set. Calling again replaces the
        previous options; the defaults restore plain float32.

        Raises :class:`~pipeline.errors.ComputeOptionError` for options the device cannot run
        (see :func:`check_compute_options`) or non-default options on an extractor without
        networks (they would have no effect but would be recorded).
        """
        check_compute_options(precision=precision, channels_last=channels_last, device=self.device)
        networks = self.networks()
        dtype = PRECISIONS[precision]
        if not networks and (dtype is not None or channels_last):
            raise ComputeOptionError(
                f"extractor {self.spec.name!r} has no torch networks: precision={precision!r}, "
                f"channels_last={channels_last} would have no effect"
            )
        for network in networks.values():
            if isinstance(network.__dict__.get("forward"), ComputeForward):
                del network.forward  # back to the class's own forward
            set_memory_format(network, channels_last=channels_last)
            if dtype is not None or channels_last:
                network.forward = ComputeForward(
                    network.forward, device_type=self.device.type, dtype=dtype, channels_last=channels_last
                )
        self.spec = dataclasses.replace(self.spec, precision=precision, channels_last=channels_last)
        return self

    def __repr__(self) -> str:
        options = "" if self.spec.precision == "fp32" else f", precision={self.spec.precision}"
        options += ", channels_last" if self.spec.channels_last else ""
        return f"{type(self).__name__}({self.spec.name!r}, dims={self.spec.dims}, device={self.device}{options})"


class ComputeForward:
    """A network's ``forward`` run with compute options (installed by :meth:`Extractor.set_compute`).

    Tensor inputs (also inside lists, tuples and dicts) are made channels-last when asked
    (4-D and 5-D ones), the forward runs under ``torch.autocast(device_type, dtype)`` when
    ``dtype`` is given, and floating-point outputs come back as float32 in the standard layout.
    """

    def __init__(self, forward: Callable, *, device_type: str, dtype: torch.dtype | None, channels_last: bool):
        self.forward, self.device_type, self.dtype, self.channels_last = forward, device_type, dtype, channels_last

    def __call__(self, *args, **kwargs):
        if self.channels_last:
            args, kwargs = map_tensors(_channels_last, args), map_tensors(_channels_last, kwargs)
        autocast = (
            contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device_type, dtype=self.dtype)
        )
        with autocast:
            out = self.forward(*args, **kwargs)
        return map_tensors(_float32_standard, out)

    def __repr__(self) -> str:
        return f"ComputeForward(dtype={self.dtype}, channels_last={self.channels_last}, device_type={self.device_type!r})"


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value):
    """Apply ``fn`` to every tensor in ``value`` (nested lists, tuples and dicts); other values pass."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(map_tensors(fn, v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def _memory_format(ndim: int, channels_last: bool) -> torch.memory_format | None:
    """The layout for a tensor of ``ndim`` dims: channels-last variants for 4-D/5-D, else None."""
    if ndim not in (4, 5):
        return None
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    fmt = _memory_format(t.dim(), True)
    return t if fmt is None else t.contiguous(memory_format=fmt)


def _float32_standard(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    return t.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def set_memory_format(module: torch.nn.Module, *, channels_last: bool) -> None:
    """Lay out ``module``'s 4-D / 5-D parameters and buffers channels-last (or back to standard)."""
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            fmt = _memory_format(tensor.dim(), channels_last)
            if fmt is not None and not tensor.is_contiguous(memory_format=fmt):
                tensor.data = tensor.data.contiguous(memory_format=fmt)


class FeatureAccumulator:
    """Collects an extractor's outputs for one video, batch by batch."""

    def consume(self, extractor: "Extractor", batch: np.ndarray) -> None:
        """Run ``extractor`` on one batch of this video and keep its rows. Accumulators holding
        per-video state (crop positions) override this to pass that state to the extractor."""
        self.add(extractor(batch))

    def add(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        """float32 ``[steps, dims]`` for the whole video."""
        raise NotImplementedError


class StackAccumulator(FeatureAccumulator):
    """Keeps every step: the result is all rows in order."""

    def __init__(self):
        self._rows: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        self._rows.append(rows)

    def result(self) -> np.ndarray:
        return np.concatenate(self._rows, axis=0).astype(np.float32, copy=False)


def resize_and_crop(x: torch.Tensor, *, short_side: int | None, crop: int | None) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` so its shorter side is ``short_side`` (bilinear, antialiased), then
    centre-crop to ``crop`` x ``crop``. ``None`` skips the step."""
    if short_side is not None:
        h, w = x.shape[-2:]
        scale = short_side / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if crop is not None:
        h, w = x.shape[-2:]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        x = x[..., top : top + crop, left : left + crop]
    return x


@dataclass(frozen=True)
class ExtractorEntry:
    """A registry row: how to build an extractor and what it produces."""

    name: str
    builder: Callable[..., Extractor]
    dims: int
    description: str
    weights_choices: tuple[str, ...]
    default_weights: str
    sampling_kinds: tuple[str, ...] = ("all", "uniform", "fps")
    default_sampling: str = "all"


def tapped_model(model: torch.nn.Module, taps: Sequence[str]) -> torch.nn.Module:
    """Wrap ``model`` so it returns ``{tap: tensor}`` for the named layers (torchvision FX)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model, return_nodes={t: t for t in taps})
