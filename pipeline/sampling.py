"""Which frames of a video to decode: every frame, N uniform frames, K frames per second, or
clips of L frames (:class:`ClipSampling`, three named policies).

A ``Sampling`` is part of a feature set's identity in the store (``name`` goes into ids,
``to_dict`` into provenance), so it is a small frozen value with a canonical form:
``parse_sampling("uniform:16") == Sampling("uniform", 16)``.

Rounding is half-up (``floor(x + 0.5)``), not numpy's half-to-even, so that an index never
depends on whether a midpoint lands on an even number; the exceptions reproduce a reference
rule exactly (``clips:L:floor`` rounds the frame rate with Python's ``round`` as SimpleVQA
does, ``clips:L:chunks`` truncates torch's ``linspace`` as TCSVT-2022 does).
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
    'or "clips:L[:POLICY]" (clips of L frames, L a positive integer; POLICY ceil (default: '
    "one clip of L consecutive frames per started second), floor (SimpleVQA) or chunks (TCSVT-2022))"
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
    """Parse ``"all"``, ``"uniform:N"``, ``"fps:K"`` or ``"clips:L[:POLICY]"`` (case and
    surrounding spaces ignored; POLICY ``ceil``, ``floor`` or ``chunks``, see :class:`ClipSampling`).

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
        return _parse_clips(text, arg)
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
        raise SamplingError(f"timestamps for {info.path} must have shape ({num_frames},), got {stamps.shape}")
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


# ---- clips: runs of L frames fed to clip extractors (SimpleVQA, KVQ, TCSVT-2022 SlowFast input) ----

__all__ += ["ClipSampling", "CLIP_POLICIES", "DEFAULT_CLIP_LENGTH", "DEFAULT_CLIP_POLICY"]

DEFAULT_CLIP_LENGTH = 32  # SlowFast 8x8: 32 fast frames per clip
# How a video is cut into clips (see ClipSampling); "ceil" is the default and the only rule
# before policies existed, so ``clips:32`` keeps its meaning and its feature-set ids.
CLIP_POLICIES = ("ceil", "floor", "chunks")
DEFAULT_CLIP_POLICY = "ceil"
# decord timestamps are kept to whole microseconds: a frame starting within this of a clip's
# start second counts as starting at it.
_CLIP_START_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ClipSampling(Sampling):
    """``clips:L[:POLICY]``: the video cut into clips of ``L`` frames by ``POLICY``.

    ``ClipSampling(32)`` == ``parse_sampling("clips:32")`` == ``parse_sampling("clips:32:ceil")``;
    ``ClipSampling(32, "floor")`` == ``parse_sampling("clips:32:floor")``. A subclass of
    :class:`Sampling` so it serialises and compares the same way; the runner sees
    :meth:`clips` and feeds the extractor ``uint8 [B, L, H, W, 3]`` clips instead of single
    frames. ``name`` is ``"clips-32"`` / ``"clips-32-floor"``; ``to_dict()`` is
    ``{"strategy": "clips", "value": 32}`` for the default policy (as before policies existed)
    and adds ``"policy"`` for the others.

    Policies (``n`` = number of frames, ``fps`` = frame rate, clip ``i = 0, 1, ...``):

    - ``ceil`` (default): one clip per started second, ``ceil(duration)`` clips (at least 1)::

          start_i = first frame whose start time >= i s   (with timestamps, VFR-safe)
                  = round_half_up(i * fps)                (without)
          clip_i  = start_i, start_i + 1, ..., start_i + L - 1

      A partial last second gets its own clip. **Frozen tail**: positions past the last frame
      repeat the last frame, so the last clip is often partly, and can be entirely, one
      frozen frame: 240 frames at 29.97 fps (8.008 s) give 9 clips, the 9th starting at
      frame 240 > 239, i.e. frame 239 repeated 32 times.
    - ``floor``: SimpleVQA's rule (``data_loader.VideoDataset_NR_SlowFast_feature``):
      ``r = round(fps)`` (Python's round, half to even), ``floor(n / r)`` clips (at least 1),
      ``start_i = i * r``, same frozen tail. The 240-frame 29.97 fps clip gives 8 clips, the
      last one complete. Frame indices only (timestamps are not used). SimpleVQA then
      repeats its last clip up to a per-dataset minimum (8 clips for KoNViD-1k, 20 for
      YouTube-UGC); that is not done here: the repeated rows equal the last one.
    - ``chunks``: TCSVT-2022's motion input (``CNNfeatures_Motion.get_features``, frame
      batch 64): chunks of ``2L`` consecutive frames from frame 0, each giving the clip
      ``chunk_start + linspace(0, 2L - 1, L).long()`` (torch's float32 linspace, truncated:
      for L = 32 the frames 0, 2, 4, ..., 60, 63 of the chunk). Full chunks start at
      ``0, 2L, 4L, ...`` while they end before the last frame; the rest of the video is
      covered by one last chunk ending at the last frame (``start n - 2L``), which overlaps
      the previous one: the extractor keeps only its rows for frames after those already
      covered (``slowfast-fast-tcsvt``'s accumulator). A video of at most ``2L`` frames is one
      clip ``linspace(0, n - 1, L).long()`` (frames repeat when ``n < L``). Frame indices only.
    """

    kind: str = field(default="clips", init=False)
    value: int = DEFAULT_CLIP_LENGTH
    policy: str = DEFAULT_CLIP_POLICY

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SamplingError(f"clips needs a positive whole number of frames per clip, got {value!r}")
        object.__setattr__(self, "value", int(value))
        if self.policy not in CLIP_POLICIES:
            raise SamplingError(f"unknown clip policy {self.policy!r}; expected one of {', '.join(CLIP_POLICIES)}")

    @property
    def length(self) -> int:
        """Frames per clip (``L``)."""
        return int(self.value)

    @property
    def name(self) -> str:
        """``"clips-32"`` for the default policy, ``"clips-32-floor"`` / ``"clips-32-chunks"`` otherwise."""
        suffix = "" if self.policy == DEFAULT_CLIP_POLICY else f"-{self.policy}"
        return f"clips-{self.length}{suffix}"

    def __str__(self) -> str:
        """The canonical form ``parse_sampling`` accepts: ``"clips:32"``, ``"clips:32:floor"``."""
        suffix = "" if self.policy == DEFAULT_CLIP_POLICY else f":{self.policy}"
        return f"clips:{self.length}{suffix}"

    def to_dict(self) -> dict:
        """``{"strategy": "clips", "value": L}``, plus ``"policy"`` unless it is the default."""
        out = {"strategy": "clips", "value": self.length}
        if self.policy != DEFAULT_CLIP_POLICY:
            out["policy"] = self.policy
        return out

    def clips(self, info: VideoInfo, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Frame indices of every clip, int64 ``[n_clips, L]`` (see the class docstring).

        ``timestamps``: optional float ``[num_frames]`` frame start times in seconds
        (``Video.timestamps()``), taken relative to the earliest frame; only the ``ceil``
        policy uses them. Without them it needs the frame rate ``info.fps``, as ``floor`` does.
        """
        num_frames = int(info.num_frames)
        if num_frames <= 0:
            raise SamplingError(f"cannot sample {info.path}: it has no frames")
        if self.policy == "chunks":
            return _chunk_clips(num_frames, self.length)
        if self.policy == "floor":
            return _floor_clips(info, num_frames, self.length)
        return _ceil_clips(info, num_frames, self.length, timestamps)

    def indices(self, info: VideoInfo, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Every frame some clip uses, int64 ``[S]``, sorted ascending, without duplicates."""
        return np.unique(self.clips(info, timestamps))


def _parse_clips(text: str, arg: str) -> ClipSampling:
    """``"L"`` or ``"L:POLICY"`` (the part after ``clips:``) -> :class:`ClipSampling`."""
    length, sep, policy = arg.partition(":")
    try:
        return ClipSampling(int(length.strip()), policy.strip() if sep else DEFAULT_CLIP_POLICY)
    except ValueError as err:  # SamplingError is a ValueError too
        detail = err if isinstance(err, SamplingError) else "L must be a positive integer"
        raise SamplingError(f"bad sampling {text!r}: {detail}; expected {SAMPLING_FORMS}") from None


def _frame_rate(info: VideoInfo) -> float:
    if not (info.fps > 0 and math.isfinite(info.fps)):
        raise SamplingError(f"cannot cut {info.path} into clips: unknown frame rate {info.fps!r}")
    return float(info.fps)


def _runs(starts: np.ndarray, length: int, num_frames: int) -> np.ndarray:
    """``start .. start + length - 1`` per start, positions past the end on the last frame."""
    positions = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return np.clip(positions, 0, num_frames - 1).astype(np.int64)


def _ceil_clips(info: VideoInfo, num_frames: int, length: int, timestamps: np.ndarray | None) -> np.ndarray:
    duration = float(info.duration) if math.isfinite(info.duration) else 0.0
    # ceil(duration), computed so float noise (8.000000001 s) adds no extra clip.
    count = max(1, math.ceil(duration - _TIME_EPSILON))
    seconds = np.arange(count, dtype=np.float64)
    if timestamps is None:
        return _runs(_round_half_up(seconds * _frame_rate(info)), length, num_frames)
    stamps = np.asarray(timestamps, dtype=np.float64)
    if stamps.shape != (num_frames,):
        raise SamplingError(f"timestamps for {info.path} must have shape ({num_frames},), got {stamps.shape}")
    relative = stamps - stamps.min()
    order = np.argsort(relative, kind="stable")  # presentation order (decord's already)
    starts = np.searchsorted(relative[order], seconds - _CLIP_START_TOLERANCE, side="left")
    return order[_runs(starts, length, num_frames)]


def _floor_clips(info: VideoInfo, num_frames: int, length: int) -> np.ndarray:
    rate = int(round(_frame_rate(info)))  # Python's round, as SimpleVQA's int(round(fps))
    if rate < 1:  # fps below 0.5: SimpleVQA would divide by zero
        raise SamplingError(f"cannot cut {info.path} into clips per second: frame rate {info.fps!r} rounds to 0")
    count = max(1, num_frames // rate)
    return _runs(np.arange(count, dtype=np.int64) * rate, length, num_frames)


def _chunk_clips(num_frames: int, length: int) -> np.ndarray:
    span = 2 * length
    if num_frames <= span:
        return _linspace_long(num_frames - 1, length)[None, :]
    # Full chunks while they end before the last frame (the reference's `while frame_end <
    # video_length`), then one chunk ending at the last frame.
    starts = [*range(0, span * ((num_frames - 1) // span), span), num_frames - span]
    return np.asarray(starts, dtype=np.int64)[:, None] + _linspace_long(span - 1, length)[None, :]


def _linspace_long(stop: int, count: int) -> np.ndarray:
    """``torch.linspace(0, stop, count).long()`` as int64 numpy: torch's own float32 values and
    truncation (``round(linspace)`` would differ: 63 * 16 / 31 = 32.52 -> 32, not 33)."""
    import torch  # the pipeline depends on torch anyway; imported here to keep sampling light

    return torch.linspace(0, stop, count).long().numpy()
