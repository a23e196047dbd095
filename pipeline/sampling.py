"""Which frames of a video to decode: every frame, N uniform frames, or K frames per second.

A ``Sampling`` is part of a feature set's identity in the store (``name`` goes into ids,
``to_dict`` into provenance), so it is a small frozen value with a canonical form:
``parse_sampling("uniform:16") == Sampling("uniform", 16)``.

Rounding is half-up everywhere (``floor(x + 0.5)``), not numpy's half-to-even, so that an
index never depends on whether a midpoint lands on an even number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import SamplingError

if TYPE_CHECKING:  # only for annotations: importing .video would pull in decord
    from .video import VideoInfo

__all__ = ["Sampling", "parse_sampling", "SAMPLING_FORMS"]

KINDS = ("all", "uniform", "fps")
# Kind -> (argument parser, what the argument must be) for the "kind:value" forms.
_ARGUMENT_PARSERS = {
    "uniform": (int, "N must be a positive integer"),
    "fps": (float, "K must be a positive number"),
}
# Targets closer than this to the end of the video count as at the end (float noise).
_TIME_EPSILON = 1e-9
SAMPLING_FORMS = (
    '"all" (every frame), "uniform:N" (N frames at equal intervals, N a positive integer) '
    'or "fps:K" (K frames per second, K a positive number) '
    'or "clips:L" (one clip of L consecutive frames per second, L a positive integer)'
)


@dataclass(frozen=True)
class Sampling:
    """A frame-sampling strategy.

    ``kind``: ``"all"``, ``"uniform"`` or ``"fps"``. ``value``: ``None`` for all, the frame
    count N for uniform (stored as ``int``), the rate K for fps (stored as ``float``).
    Invalid combinations raise ``SamplingError``.
    """

    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        # Canonicalise so equal strategies compare, hash and serialise equal.
        object.__setattr__(self, "value", _canonical_value(self.kind, self.value))

    @property
    def name(self) -> str:
        """Filesystem-safe name used in store ids: ``"all"``, ``"uniform-16"``, ``"fps-2"``, ``"fps-0.5"``."""
        if self.kind == "all":
            return "all"
        return f"{self.kind}-{_format_number(self.value)}"

    def __str__(self) -> str:
        """The form ``parse_sampling`` accepts: ``"all"``, ``"uniform:16"``, ``"fps:2"``."""
        if self.kind == "all":
            return "all"
        return f"{self.kind}:{_format_number(self.value)}"

    def to_dict(self) -> dict:
        """``{"strategy": kind, "value": value}`` for provenance records."""
        return {"strategy": self.kind, "value": self.value}

    def indices(self, info: VideoInfo, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Frame indices to decode, int64 ``[S]``, sorted ascending, without duplicates.

        ``info`` supplies ``num_frames`` (and ``fps``, ``duration`` for fps sampling).
        ``timestamps``: optional float ``[num_frames]`` frame start times in seconds
        (``Video.timestamps()``), used by fps sampling so it stays right on variable frame
        rate; they are taken relative to the earliest frame (containers may start at t > 0).

        - all: ``0 .. num_frames-1``.
        - uniform:N: ``round(linspace(0, num_frames-1, N))``, so the first and last frames are
          always included (N=1 gives frame 0); if ``N >= num_frames``, every frame once.
        - fps:K: targets ``t_j = j / K`` for ``j = 0, 1, ...`` while ``t_j < duration``; each
          picks the frame whose start time is nearest (ties go to the later frame); without
          timestamps frame ``i`` is assumed to start at ``i / fps``, i.e. the pick is
          ``round_half_up(t_j * fps)`` clipped to the last frame. Duplicates are dropped, so
          K above the native rate yields every frame once, not repeats.
        """
        num_frames = int(info.num_frames)
        if num_frames <= 0:
            raise SamplingError(f"cannot sample {info.path}: it has no frames")
        if self.kind == "all":
            return np.arange(num_frames, dtype=np.int64)
        if self.kind == "uniform":
            return _uniform(num_frames, int(self.value))
        return _per_second(info, float(self.value), timestamps)


def parse_sampling(text: str) -> Sampling:
    """Parse ``"all"``, ``"uniform:N"`` or ``"fps:K"`` (case and surrounding spaces ignored).

    Raises ``SamplingError`` naming the accepted forms for anything else.
    """
    if not isinstance(text, str):
        raise SamplingError(f"sampling must be a string, got {type(text).__name__}; expected {SAMPLING_FORMS}")
    kind, sep, arg = text.strip().lower().partition(":")
    kind, arg = kind.strip(), arg.strip()
    if kind == "all" and not sep:
        return Sampling("all")
    if kind in _ARGUMENT_PARSERS and sep:
        convert, requirement = _ARGUMENT_PARSERS[kind]
        try:
            return Sampling(kind, convert(arg))
        except ValueError as err:  # SamplingError is a ValueError too
            detail = err if isinstance(err, SamplingError) else requirement
            raise SamplingError(f"bad sampling {text!r}: {detail}; expected {SAMPLING_FORMS}") from None
    if kind == "clips" and sep:  # ClipSampling is defined at the end of this module
        try:
            return ClipSampling(int(arg))
        except ValueError:
            raise SamplingError(f"bad sampling {text!r}: L must be a positive integer; expected {SAMPLING_FORMS}") from None
    raise SamplingError(f"bad sampling {text!r}; expected {SAMPLING_FORMS}")


def _canonical_value(kind: str, value) -> float | int | None:
    """Validate ``value`` for ``kind``; uniform -> int, fps -> float, all -> None."""
    if kind not in KINDS:
        raise SamplingError(f"unknown sampling kind {kind!r}; expected {SAMPLING_FORMS}")
    if kind == "all":
        if value is not None:
            raise SamplingError(f'"all" takes no value, got {value!r}')
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SamplingError(f"{kind} needs a number, got {value!r}; expected {SAMPLING_FORMS}")
    if not math.isfinite(value) or value <= 0:
        raise SamplingError(f"{kind} needs a positive finite number, got {value!r}")
    if kind == "uniform":
        if value != int(value):
            raise SamplingError(f"uniform needs a whole number of frames, got {value!r}")
        return int(value)
    return float(value)


def _format_number(value: float) -> str:
    """Shortest exact text: 16 -> "16", 2.0 -> "2", 0.5 -> "0.5" (repr is round-trip exact)."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _round_half_up(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).astype(np.int64)


def _uniform(num_frames: int, count: int) -> np.ndarray:
    if count >= num_frames:
        return np.arange(num_frames, dtype=np.int64)
    # Spacing is >= 1 here, so rounding cannot produce duplicates; unique() is a safety net.
    return np.unique(_round_half_up(np.linspace(0, num_frames - 1, count)))


def _per_second(info: VideoInfo, rate: float, timestamps: np.ndarray | None) -> np.ndarray:
    num_frames = int(info.num_frames)
    duration = float(info.duration)
    # t_j = j / rate while t_j < duration. Filtering j / rate itself (not ceil(duration * rate))
    # keeps float noise such as 1.2 * 25 = 30.000000000000004 from adding a target at the end.
    targets = np.arange(math.ceil(duration * rate) + 1, dtype=np.float64) / rate
    targets = targets[targets < duration - _TIME_EPSILON]
    if targets.size == 0:  # zero or unknown duration: still take the first frame
        targets = np.zeros(1)
    if timestamps is None:
        if not (info.fps > 0 and math.isfinite(info.fps)):
            raise SamplingError(f"cannot sample {info.path} per second: unknown frame rate {info.fps!r}")
        picks = _round_half_up(targets * float(info.fps))
        return np.unique(np.clip(picks, 0, num_frames - 1))
    stamps = np.asarray(timestamps, dtype=np.float64)
    if stamps.shape != (num_frames,):
        raise SamplingError(
            f"timestamps for {info.path} must have shape ({num_frames},), got {stamps.shape}"
        )
    relative = stamps - stamps.min()
    # decord returns presentation order already; sorting guards other sources of timestamps.
    order = np.argsort(relative, kind="stable")
    return np.unique(order[_nearest(relative[order], targets)])


def _nearest(sorted_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the nearest ``sorted_times`` entry for each target; ties go to the later one,
    as half-up rounding does on the path without timestamps."""
    if len(sorted_times) == 1:
        return np.zeros(len(targets), dtype=np.int64)
    right = np.clip(np.searchsorted(sorted_times, targets, side="left"), 1, len(sorted_times) - 1)
    left = right - 1
    take_left = (targets - sorted_times[left]) < (sorted_times[right] - targets)
    return np.where(take_left, left, right).astype(np.int64)


# ---- clips: one run of L consecutive frames per second (SimpleVQA / KVQ SlowFast input) ----

__all__ += ["ClipSampling", "DEFAULT_CLIP_LENGTH"]

DEFAULT_CLIP_LENGTH = 32  # SlowFast 8x8: 32 fast frames per clip
# decord timestamps are kept to whole microseconds: a frame starting within this of a clip's
# start second counts as starting at it.
_CLIP_START_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ClipSampling(Sampling):
    """``clips:L``: one clip of ``L`` consecutive frames per second of video.

    ``ClipSampling(32)`` == ``parse_sampling("clips:32")``; ``name`` ``"clips-32"``,
    ``to_dict()`` ``{"strategy": "clips", "value": 32}``. A subclass of :class:`Sampling` so
    it serialises and compares the same way; the runner sees :meth:`clips` and feeds the
    extractor ``uint8 [B, L, H, W, 3]`` clips instead of single frames.

    Clip ``i`` (``i = 0 .. n-1``, ``n = ceil(duration)``, at least 1)::

        start_i = first frame whose start time >= i s      (with timestamps, VFR-safe)
                = round_half_up(i * fps)                   (without)
        clip_i  = start_i, start_i + 1, ..., start_i + L - 1   (past the end: the last frame)

    SimpleVQA cuts clip ``i`` at ``i * round(fps)`` and makes ``floor(num_frames / round(fps))``
    clips (then repeats the last clip up to a per-dataset minimum); the rule here keeps a
    partial last second and follows real time on variable-frame-rate files.
    """

    kind: str = field(default="clips", init=False)
    value: int = DEFAULT_CLIP_LENGTH

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SamplingError(f"clips needs a positive whole number of frames per clip, got {value!r}")
        object.__setattr__(self, "value", int(value))

    @property
    def length(self) -> int:
        """Frames per clip (``L``)."""
        return int(self.value)

    def clips(self, info: VideoInfo, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Frame indices of every clip, int64 ``[n_clips, L]`` (see the class docstring).

        ``timestamps``: optional float ``[num_frames]`` frame start times in seconds
        (``Video.timestamps()``), taken relative to the earliest frame. Without them the frame
        rate ``info.fps`` must be known.
        """
        num_frames = int(info.num_frames)
        if num_frames <= 0:
            raise SamplingError(f"cannot sample {info.path}: it has no frames")
        duration = float(info.duration) if math.isfinite(info.duration) else 0.0
        # ceil(duration), computed so float noise (8.000000001 s) adds no extra clip.
        count = max(1, math.ceil(duration - _TIME_EPSILON))
        seconds = np.arange(count, dtype=np.float64)
        if timestamps is None:
            if not (info.fps > 0 and math.isfinite(info.fps)):
                raise SamplingError(f"cannot cut {info.path} into clips: unknown frame rate {info.fps!r}")
            order = np.arange(num_frames, dtype=np.int64)
            starts = _round_half_up(seconds * float(info.fps))
        else:
            stamps = np.asarray(timestamps, dtype=np.float64)
            if stamps.shape != (num_frames,):
                raise SamplingError(f"timestamps for {info.path} must have shape ({num_frames},), got {stamps.shape}")
            relative = stamps - stamps.min()
            order = np.argsort(relative, kind="stable")  # presentation order (decord's already)
            starts = np.searchsorted(relative[order], seconds - _CLIP_START_TOLERANCE, side="left")
        positions = starts[:, None] + np.arange(self.length, dtype=np.int64)[None, :]
        return order[np.clip(positions, 0, num_frames - 1)].astype(np.int64)

    def indices(self, info: VideoInfo, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Every frame some clip uses, int64 ``[S]``, sorted ascending, without duplicates."""
        return np.unique(self.clips(info, timestamps))
