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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ComputeOptionError, ExtractorOptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Spec resamplers that resize uint8 frames with PIL -> the PIL filter. torchvision's Resize on
# a PIL image (UNIQUE, FMC, SimpleVQA) hands the image to PIL's resize with that filter.
PIL_FILTERS = {"pil-bilinear": "BILINEAR", "pil-bicubic": "BICUBIC"}
# A builder's ``resampler`` option: "torch" (default) or "pil" (the reference code's PIL filter).
RESAMPLER_CHOICES = ("torch", "pil")
# Precision names -> the dtype autocast runs the networks in (None: no autocast, float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that determines an extractor's output; stored as provenance with the features.

    ``resize_short_side``/``crop``: ``None`` means native resolution (VSFA feeds full frames).
    ``weights`` is the identity of the weights (source, name or file sha256, or random seed).
    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``) and ``channels_last``: how the networks
    run (:meth:`Extractor.set_compute`); part of the identity, since reduced precision changes
    the features slightly. ``resampler``: how frames are resized, ``None`` for the default
    (float32 torch, bilinear antialiased: :func:`resize_and_crop`) or a PIL filter on the
    uint8 frames (``"pil-bilinear"``, ``"pil-bicubic"``: :func:`pil_resize_and_crop`), as the
    reference codes resize; left out of :meth:`to_dict` when ``None``, so specs written before
    the field existed keep their feature-set ids. Resize and crop geometry is torchvision's
    (:func:`resized_size`, :func:`center_crop_box`). Bump ``version`` whenever the computation
    changes, so old and new features never mix.
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
    resampler: str | None = None

    def __post_init__(self) -> None:
        if self.resampler is not None and self.resampler not in PIL_FILTERS:
            raise ExtractorOptionError(
                f"spec resampler must be None (torch) or one of {', '.join(PIL_FILTERS)}, got {self.resampler!r}"
            )

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists); ``resampler`` only when set (see the class docstring)."""
        out = json_safe(dataclasses.asdict(self))
        if out["resampler"] is None:
            del out["resampler"]
        return out


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
            f"precision fp16 needs a CUDA device, but the extractor runs on {device}; use bf16 (or fp32) on the CPU"
        )
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ComputeOptionError(f"precision bf16 runs on cpu or cuda devices, not on {device}; use fp32")
    if (
        precision == "bf16"
        and device.type == "cuda"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
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
        """``uint8 [B, H, W, 3]`` -> normalised float ``[B, 3, h, w]`` on the device.

        Resized to :meth:`resize_target` (by ``spec.resampler``), centre-cropped to
        ``spec.crop``, scaled to [0, 1] and normalised: torchvision's ``Resize``,
        ``CenterCrop``, ``ToTensor``, ``Normalize`` in that order."""
        frames = np.asarray(frames)
        size = self.resize_target(frames.shape[1], frames.shape[2])
        x = frames_to_unit_float(
            frames, device=self.device, size=size, crop=self.spec.crop, resampler=self.spec.resampler
        )
        return normalize(x, self.spec.mean, self.spec.std)

    def resize_target(self, height: int, width: int) -> tuple[int, int] | None:
        """``(h, w)`` a ``height`` x ``width`` frame is resized to, ``None`` for no resize.

        Default: shorter side to ``spec.resize_short_side`` (:func:`resized_size`), if set."""
        short_side = self.spec.resize_short_side
        return None if short_side is None else resized_size(height, width, short_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        feats = self.forward(self.preprocess(frames))
        return feats.float().cpu().numpy()

    def accumulator(self, *, video_key: str = "") -> FeatureAccumulator:
        """Per-video state: how per-step outputs combine (default: keep every row).

        ``video_key`` identifies the video (its id) for extractors that draw per-video
        randomness from a seeded generator (A2INet's crop positions)."""
        return StackAccumulator()

    def networks(self) -> dict[str, torch.nn.Module]:
        """The neural networks :meth:`set_compute` applies to, by attribute name.

        Default: every ``torch.nn.Module`` attribute of the extractor (``self.model`` for the
        built-in ones). Override when a network is kept elsewhere (in a list, say)."""
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.nn.Module)}

    def set_compute(self, *, precision: str = "fp32", channels_last: bool = False) -> Extractor:
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
        return (
            f"ComputeForward(dtype={self.dtype}, channels_last={self.channels_last}, device_type={self.device_type!r})"
        )


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

    def consume(self, extractor: Extractor, batch: np.ndarray, *, steps: np.ndarray | None = None) -> None:
        """Run ``extractor`` on one batch of this video and keep its rows. Accumulators holding
        per-video state (crop positions, frames already covered) override this.

        ``steps``: the batch's frame indices, int64 ``[B, L]`` (the runner passes them), for
        accumulators whose rows depend on which frames a step holds."""
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


def resampler_option(choice: str, *, reference: str) -> str | None:
    """A builder's ``resampler`` option -> the spec's ``resampler``.

    ``"torch"`` -> ``None``: frames are converted to float32 first and resized on the device
    (bilinear, antialiased; fast, GPU-friendly). ``"pil"`` -> ``reference``, the PIL filter
    the reference code resizes its uint8 frames with (``"pil-bilinear"`` for UNIQUE, FMC and
    SimpleVQA): bit-identical to the reference's input, on the CPU, one frame at a time.
    Raises :class:`ExtractorOptionError` for anything else.
    """
    if choice == "torch":
        return None
    if choice == "pil":
        return reference
    raise ExtractorOptionError(f"resampler must be one of {', '.join(RESAMPLER_CHOICES)}, got {choice!r}")


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(h, w)`` of torchvision's ``Resize(short_side)``: the shorter side becomes
    ``short_side``, the longer one ``int(short_side * long / short)`` (truncated, the aspect
    ratio kept as nearly as whole pixels allow). 960 x 540 -> 600 x 338 for 338."""
    if short_side < 1:
        raise ExtractorOptionError(f"short side must be a positive number of pixels, got {short_side!r}")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)  # torchvision's expression, evaluated in the same order
    return (new_long, short_side) if width <= height else (short_side, new_long)


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of torchvision's ``CenterCrop(crop)``.

    Offsets are ``int(round((side - crop) / 2))`` (Python's round, half to even: 338 -> 299
    gives top 20, 600 -> 299 gives left 150). A side shorter than ``crop`` is kept whole (no
    padding; torchvision would pad it with zeros): the registered extractors always resize to
    at least their crop first.
    """
    crop_h, crop_w = min(crop, height), min(crop, width)
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w


def resize_and_crop(
    x: torch.Tensor, *, short_side: int | None = None, crop: int | None = None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Float ``[B, C, H, W]`` -> resized, centre-cropped ``[B, C, h, w]``, as torchvision's
    ``Resize`` + ``CenterCrop`` do to a float tensor (bit-identical: the same
    ``interpolate(bilinear, antialias=True)`` call at the same size, the same crop box).

    ``size``: exact ``(h, w)``; else ``short_side`` gives :func:`resized_size`. ``crop``:
    :func:`center_crop_box`. ``None`` skips the step; a resize to the input size is no resize.
    """
    if size is None and short_side is not None:
        size = resized_size(x.shape[-2], x.shape[-1], short_side)
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    if crop is not None:
        top, left, crop_h, crop_w = center_crop_box(x.shape[-2], x.shape[-1], crop)
        x = x[..., top : top + crop_h, left : left + crop_w]
    return x


def pil_resize_and_crop(
    frames: np.ndarray, *, size: tuple[int, int] | None, crop: int | None, resampler: str
) -> np.ndarray:
    """uint8 ``[B, H, W, 3]`` -> uint8 ``[B, h, w, 3]``: each frame resized to ``size``
    ``(h, w)`` by PIL with ``resampler``'s filter (:data:`PIL_FILTERS`), then centre-cropped
    (:func:`center_crop_box`), as torchvision's ``Resize`` + ``CenterCrop`` do to a PIL image.
    ``None`` skips a step."""
    from PIL import Image

    resample = getattr(Image.Resampling, PIL_FILTERS[resampler])
    out = []
    for frame in frames:
        if size is not None and tuple(size) != frame.shape[:2]:
            frame = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((size[1], size[0]), resample))
        if crop is not None:
            top, left, crop_h, crop_w = center_crop_box(frame.shape[0], frame.shape[1], crop)
            frame = frame[top : top + crop_h, left : left + crop_w]
        out.append(frame)
    return np.stack(out) if out else np.asarray(frames)


def frames_to_unit_float(
    frames: np.ndarray,
    *,
    device: torch.device,
    size: tuple[int, int] | None = None,
    crop: int | None = None,
    resampler: str | None = None,
) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, h, w]`` in [0, 1] on ``device``, resized to
    ``size`` then centre-cropped to ``crop``.

    ``resampler`` ``None``: converted first (``x / 255``, torchvision's ``ToTensor``), then
    :func:`resize_and_crop` on the device; a PIL filter name: :func:`pil_resize_and_crop` on
    the uint8 frames, then converted.
    """
    if resampler is not None and (size is not None or crop is not None):
        frames = pil_resize_and_crop(frames, size=size, crop=crop, resampler=resampler)
        size = crop = None
    x = frames_to_device(frames, device).permute(0, 3, 1, 2).float().div_(255.0)
    return resize_and_crop(x, size=size, crop=crop)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, inplace: bool = False) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[B, 3, ...]`` (torchvision's ``Normalize``: the
    same float32 subtraction and division). ``inplace`` reuses ``x`` (large native clips)."""
    shape = (1, 3) + (1,) * (x.dim() - 2)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return x.sub_(mean_t).div_(std_t) if inplace else (x - mean_t) / std_t


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
