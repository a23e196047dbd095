"""Video decoding with decord, with one clear error for every unreadable input.

Data flow::

    path --stat/sniff--> decord.VideoReader --get_batch--> (indices [B], frames [B, H, W, 3] uint8 RGB)
                |          (opening: frame count, timestamps, size; sparse reads; rotated videos)
                '--PyAV sequential decoder --> the same batches, for dense sorted reads
                '--PyAV (container metadata: declared duration, why decord failed)

decord defines the video (its frame indices, timestamps, rotation); dense reads stream
through PyAV because a decord reader's native memory grows with every frame it has decoded
(a 10-minute 1080p video: 1.7 GiB for the decoder alone, PyAV 0.1 GiB and 1.8x faster). The
streamed frames are matched to decord's indices by presentation time and are pixel-identical
to decord's (tested on the KoNViD clips and every test format); files PyAV would read
differently (rotation metadata, another size, unmatched timestamps) keep decord.

decord reports most failures as ``RuntimeError("Error reading <path>...")`` with the real
cause only on stderr, some as ``DECORDError``, and a zero-frame stream as an
``AssertionError``; a truncated Matroska file even opens silently with fewer frames. This
module turns each of those into ``VideoDecodeError(path, cause)`` with a cause a person can
act on: it checks existence and size itself, walks MP4 boxes to spot truncation, asks PyAV
for the container's declared duration, and diagnoses failed opens with PyAV.

Hostile inputs (docs/hardening.md):

- What is read is what was checked: the file is opened once, its real path (symbolic links
  followed) and ``fstat`` are checked on that descriptor (a regular, non-empty file, inside
  ``root`` when one is given), and every decoder then reads the file through the descriptor
  (``/proc/self/fd/N``). A file swapped for another, or for a link out of the root, after the
  check is never read. ``VideoInfo`` records the real path and the size and mtime of the file
  that was read.
- Frame size is bounded: the stream header's frame size is checked against a pixel limit
  (:func:`max_frame_pixels`, default 7680x4320) before any frame is decoded; a 6 MB MJPEG
  file of 16000x16000 frames would take 768 MB of RGB per frame (decord: 3.9 GB to decode
  one). PyAV's decoder is given the same limit (FFmpeg's ``max_pixels``), so a stream whose
  frames grow mid-way is refused there too. :meth:`Video.max_batch` caps a batch of frames
  at the same number of pixels, so one batch is never more than one largest allowed frame.

Length (over 600 lines): the two decoders (decord for sparse and rotated reads, PyAV streaming
for dense ones) must agree frame for frame and share the error mapping and the size checks.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat as stat_module
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import decord
import numpy as np
from decord._ffi.base import DECORDError

from .errors import PipelineError, VideoDecodeError

logger = logging.getLogger(__name__)

__all__ = [
    "VideoInfo",
    "Video",
    "probe_video",
    "open_video",
    "max_frame_pixels",
    "DEFAULT_MAX_FRAME_PIXELS",
    "MAX_FRAME_PIXELS_ENV",
]

# Frames with more pixels than this are refused from the stream header, before decoding: 8K
# UHD. One such frame is 100 MB as RGB (16 full-HD frames), and a native-resolution CNN's
# activations take many times that. The environment variable overrides it.
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320
MAX_FRAME_PIXELS_ENV = "VQA_MAX_FRAME_PIXELS"

# A decoded video may fall short of the container's declared duration by this much before it
# counts as truncated: rounding of the last frame's duration and muxer padding are normal.
_TRUNCATION_TOLERANCE_FRAMES = 2.0
_TRUNCATION_TOLERANCE_FRACTION = 0.02

# First bytes read for sniffing the container type.
_SNIFF_BYTES = 16
# Box types that may open an ISO-BMFF (MP4/MOV/3GP) file.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"}
# Guard against looping on a pathological file of tiny boxes.
_MAX_TOP_LEVEL_BOXES = 100_000
# decord prefixes messages with "[hh:mm:ss] /path/file.cc:123: "; people do not need that.
_DECORD_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")
# FFmpeg's AVERROR_DECODER_NOT_FOUND, FFERRTAG(0xF8, 'D', 'E', 'C'). decord reports a stream its
# FFmpeg build has no decoder for (AV1 in decord 0.6.0's wheels) as "Check failed: st_nb >= 0
# (-1128613112 vs. 0) ERROR cannot find video stream with wanted index: -1".
_AVERROR_DECODER_NOT_FOUND = -(0xF8 | ord("D") << 8 | ord("E") << 16 | ord("C") << 24)
_DECODER_NOT_FOUND = re.compile(rf"(?<!\d){_AVERROR_DECODER_NOT_FOUND}(?!\d)")
_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4`"
_MAX_CAUSE_CHARS = 240
# decord keeps timestamps as float32; rounding to whole microseconds drops the float32 noise
# (1.2000000476837158 -> 1.2) without losing anything float32 could represent.
_TIME_DECIMALS = 6
# Sorted reads that keep at least one frame in this many stream through PyAV's sequential
# decoder instead of decord: pixel-identical on the KoNViD clips, and its memory stays flat
# where a decord reader's grows with every frame it has decoded (1080p, 1200 frames: 0.1 vs
# 1.7 GiB; bench/reference_loop.py). Sparser reads keep decord, whose seeking skips whole GOPs.
_STREAM_MAX_MEAN_GAP = 8
# decord 0.6.0 cannot convert frames whose width divides 48 (1, 2, 3, 4, 6, 8, 12, 16, 24 px):
# "Check failed: from_size == to_size ... DECORDArrayCopyFromTo: The size must exactly match".
_DECORD_NARROW_FRAME = "from_size == to_size"


class _NotStreamable(Exception):
    """PyAV cannot stand in for decord on this file (raised before any frame is yielded)."""


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns about a video file (as decord decodes it).

    ``num_frames``: frames decord can index. ``fps``: decord's average frame rate (the nominal
    rate for variable-frame-rate files, see ``Video.timestamps``). ``duration``: seconds from
    the start of the first frame to the end of the last one (from frame timestamps, so it is
    right for variable frame rate too). ``width``/``height``: of decoded frames, rotation
    metadata applied. ``size_bytes``/``mtime``: ``fstat`` of the file that was opened and read,
    for provenance; ``resolved_path``: that file's real path (symbolic links followed, at open
    time), while ``path`` is the path as given.
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    size_bytes: int
    mtime: float
    resolved_path: str = ""

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


class Video:
    """An open video: one decord reader, released on ``close()`` (or leaving a ``with`` block).

    decord keeps decoding ahead in the background once a reader has been used (about 1 GB
    for a 720p file), so keep one ``Video`` open at a time per worker and close it promptly.
    A dense read (``frames`` with sorted indices keeping at least one frame in 8) releases the
    decord reader and streams through PyAV instead; decord is opened again if needed later.

    Opening opens the file once (every later read goes through that descriptor, see the
    module docstring), checks the frame size in the stream header against ``max_pixels``
    (default :func:`max_frame_pixels`), then decodes the first frame (to learn the decoded
    frame size and prove that frames can be decoded). ``root``: refuse a file whose real path
    (symbolic links followed, checked on the opened file) lies outside this folder. Raises
    ``VideoDecodeError`` for a missing, empty, non-video, audio-only, truncated, frameless,
    too large or out-of-root file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_threads: int = 0,
        root: str | os.PathLike | None = None,
        max_pixels: int | None = None,
    ):
        self.path = os.fspath(path)
        self.max_pixels = max_frame_pixels(max_pixels)
        self._num_threads = num_threads
        self._closed = False
        self._container: av.container.InputContainer | None = None  # PyAV's, of the last streamed read
        self._reader: decord.VideoReader | None = None
        fd, self.resolved_path, stat = _open_checked(self.path, root)
        self._close_fd = weakref.finalize(self, os.close, fd)
        # Decoders open the descriptor's file, never the path again (Linux; elsewhere the real path).
        proc = f"/proc/self/fd/{fd}"
        self._source = proc if os.path.exists(proc) else self.resolved_path
        try:
            header = _read_header(self._source)
            self._check_frame_size(header)
            mp4_problem = _mp4_truncation(self._source, stat.st_size)
            if mp4_problem is not None:
                raise VideoDecodeError(self.path, mp4_problem)
            self._reader = _open_reader(self.path, self._source, num_threads)
            self.info = self._read_info(stat, header)
            self._check_declared_duration(header.declared_duration if header else None)
        except BaseException:
            self.close()  # do not leave a decoding reader (or the descriptor) behind on a failed open
            raise
        logger.debug(
            "opened %s: %d frames, %.3f fps, %.3f s, %dx%d",
            self.path,
            self.info.num_frames,
            self.info.fps,
            self.info.duration,
            self.info.width,
            self.info.height,
        )

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Video {self.path!r} {state}>"

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed

    def close(self) -> None:
        """Release the decord reader (and its decode-ahead buffers) and the file now. Idempotent."""
        self._closed = True
        self._release_reader()
        if self._container is not None:  # a streaming read left unfinished: free its decoder now
            self._container.close()
        self._close_fd()  # after the decoders: they read through it

    def max_batch(self, batch_size: int) -> int:
        """``batch_size`` capped so that one batch of frames holds at most ``max_pixels`` pixels
        (at least one frame): 16 frames at 1080p, 4 at 4K, 1 at 8K with the default limit.

        The runner decodes and feeds extractors in batches of this size, so the frames it
        holds and a native-resolution extractor's working memory stay bounded by the same
        number of pixels whatever the frame size."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        frame_pixels = max(1, self.info.width * self.info.height)
        return max(1, min(int(batch_size), self.max_pixels // frame_pixels))

    def _release_reader(self) -> None:
        reader, self._reader = self._reader, None
        # Dropping the last reference runs decord's __del__, which frees the native reader.
        del reader

    # -- reading ---------------------------------------------------------------------------
    def frames(self, indices=None, *, batch_size: int = 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode frames in batches.

        ``indices``: 1-D integer frame indices in ``[0, num_frames)``, read in the given order
        (pass them sorted, as ``Sampling.indices`` returns them, so that runs of consecutive
        frames decode sequentially without seeking); ``None`` means every frame.

        Yields ``(frame_indices, frames)``: int64 ``[B]`` and uint8 RGB ``[B, H, W, 3]``, with
        ``B <= batch_size``; only one batch is held at a time, so memory does not grow with
        the length of the video. Bad arguments raise ``ValueError``/``IndexError`` at once; a
        decoding failure raises ``VideoDecodeError`` naming the frame (at or a few frames
        before the damage: decord's threaded decoder reads ahead).
        """
        self._require_open()
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        idx = self._check_indices(indices)
        return self._iter_batches(idx, int(batch_size))

    def timestamps(self) -> np.ndarray:
        """Start time in seconds of every frame, float64 ``[num_frames]``.

        From decord's ``get_frame_timestamp`` (presentation times as stored in the container,
        not re-based to zero). Use these, not ``fps``, when timing matters: for a
        variable-frame-rate file ``info.fps`` is only the nominal rate.
        """
        reader = self._require_open()
        return _frame_timestamps(reader, self.info.num_frames)[:, 0]

    # -- internals -------------------------------------------------------------------------
    def _require_open(self) -> decord.VideoReader:
        if self._closed:
            raise ValueError(f"video {self.path} is closed")
        if self._reader is None:  # released while PyAV streamed: open again when decord is needed
            self._reader = _open_reader(self.path, self._source, self._num_threads)
        return self._reader

    def _check_indices(self, indices) -> np.ndarray:
        n = self.info.num_frames
        if indices is None:
            return np.arange(n, dtype=np.int64)
        arr = np.asarray(indices)
        if arr.ndim != 1:
            raise ValueError(f"frame indices must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"frame indices must be integers, got dtype {arr.dtype}")
        idx = arr.astype(np.int64)
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= n:
            raise IndexError(f"frame indices must lie in [0, {n}) for {self.path}; got {low}..{high}")
        return idx

    def _iter_batches(self, idx: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(idx) and np.all(np.diff(idx) > 0) and (idx[-1] + 1) <= _STREAM_MAX_MEAN_GAP * len(idx):
            # An idle decord reader keeps decoding ahead in the background: let it go first.
            self._release_reader()
            batches = self._stream_batches(idx, batch_size)
            try:
                first = next(batches)
            except _NotStreamable as why:
                logger.debug("%s: decoding with decord (%s)", self.path, why)
            else:
                yield first
                yield from batches
                return
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size].copy()
            yield chunk, self._decode(chunk)

    def _stream_batches(self, idx: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode from the start with PyAV, keeping the frames of ``idx`` (strictly increasing).

        Decoded frames are matched to decord's frame indices by presentation time, so a frame
        the decoder drops is an error naming it, never a silent shift. Raises ``_NotStreamable``
        before the first batch when the file needs decord (rotation metadata, another frame
        size, timestamps that do not match decord's, an error before the first frame)."""
        starts, n = self._starts, self.info.num_frames
        gaps = np.diff(starts)
        tolerance = 0.25 * float(np.min(gaps[gaps > 0])) if np.any(gaps > 0) else 1e-3
        kept, frames, k, matched_any = [], [], 0, False
        try:
            container = av.open(self._source)
        except av.error.FFmpegError as err:
            raise _NotStreamable(f"PyAV cannot open it: {err}") from err
        self._container = container
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # FFmpeg refuses to allocate a frame over the limit (a stream whose frames grow mid-way).
            stream.codec_context.options = {"max_pixels": str(self.max_pixels)}
            try:
                for frame in container.decode(stream):
                    if frame.pts is None or frame.time_base is None:
                        if not matched_any:
                            raise _NotStreamable("frames without timestamps")
                        continue
                    t = float(frame.pts * frame.time_base)
                    j = int(np.searchsorted(starts, t - tolerance))
                    if j >= n or abs(starts[j] - t) > tolerance:
                        if not matched_any:
                            raise _NotStreamable(f"first frame at {t:.6f} s is not a frame decord indexes")
                        continue  # a frame decord does not index (it never reaches features)
                    if not matched_any:
                        if frame.rotation or (frame.height, frame.width) != (self.info.height, self.info.width):
                            raise _NotStreamable("rotation metadata or another frame size")
                        matched_any = True
                    if j > idx[k]:
                        raise VideoDecodeError(
                            self.path,
                            f"corrupt or truncated: frame {idx[k]} of {n} could "
                            "not be decoded (the decoder skipped it)",
                        )
                    if j < idx[k]:
                        continue
                    kept.append(j)
                    frames.append(frame.to_ndarray(format="rgb24"))
                    k += 1
                    if len(kept) == batch_size or k == len(idx):
                        batch = np.stack(frames)
                        _check_batch(self.path, batch, len(kept), (self.info.height, self.info.width))
                        yield np.asarray(kept, dtype=np.int64), batch
                        if self._closed:
                            raise ValueError(f"video {self.path} is closed")
                        kept, frames = [], []
                    if k == len(idx):
                        return
            except av.error.FFmpegError as err:
                if not matched_any:
                    raise _NotStreamable(f"PyAV failed before the first frame: {err}") from err
                oversized = (
                    f" (or a frame over the limit of {self.max_pixels} pixels)"
                    if isinstance(err, av.error.ArgumentError)
                    else ""
                )
                raise VideoDecodeError(
                    self.path, f"corrupt or truncated{oversized}: decoding failed at frame {idx[k]} of {n}: {err}"
                ) from err
        raise VideoDecodeError(self.path, f"corrupt or truncated: the stream ended before frame {idx[k]} of {n}")

    def _decode(self, chunk: np.ndarray) -> np.ndarray:
        """Decode ``chunk`` (int64 ``[B]``) to uint8 ``[B, H, W, 3]``."""
        reader = self._require_open()  # the caller may close between batches
        try:
            batch = _to_numpy(reader.get_batch(chunk.tolist()))
        except (RuntimeError, DECORDError) as err:
            failed = _first_failing_frame(reader, chunk)
            raise VideoDecodeError(
                self.path,
                f"corrupt or truncated: decoding failed at frame {failed} of "
                f"{self.info.num_frames}: {_decord_cause(err, self._source, self.path)}",
            ) from err
        _check_batch(self.path, batch, len(chunk), (self.info.height, self.info.width))
        return batch

    def _check_frame_size(self, header: _Header | None) -> None:
        """Refuse frames over ``max_pixels`` from the header, before anything is decoded.

        When the header does not give the size, PyAV decodes the first frame with FFmpeg's own
        ``max_pixels`` check, which refuses an oversized frame before allocating it."""
        if header is None:
            return  # not a video PyAV can open: decord's open says why
        width, height = header.width, header.height
        if width <= 0 or height <= 0:
            if not _first_frame_within(self._source, self.max_pixels):
                raise VideoDecodeError(
                    self.path,
                    f"the stream header does not give the frame size and the first "
                    f"frame is over the limit of {self.max_pixels} pixels{_LIMIT_HINT}",
                )
            return
        if width * height > self.max_pixels:
            raise VideoDecodeError(
                self.path,
                f"frames of {width}x{height} ({width * height / 1e6:.1f} megapixels) are over the limit of "
                f"{self.max_pixels} pixels per frame; refused before decoding{_LIMIT_HINT}",
            )

    def _read_info(self, stat: os.stat_result, header: _Header | None) -> VideoInfo:
        reader = self._reader
        num_frames = len(reader)
        if num_frames <= 0:  # decord asserts this, but asserts vanish under `python -O`
            raise VideoDecodeError(self.path, "the video stream has no frames")
        try:
            first = _to_numpy(reader.get_batch([0]))
        except (RuntimeError, DECORDError) as err:
            if _DECORD_NARROW_FRAME in str(err):
                width = f"{header.width} px" if header and header.width > 0 else "this"
                raise VideoDecodeError(
                    self.path,
                    f"frames {width} wide cannot be decoded: decord {getattr(decord, '__version__', '')} fails on "
                    "frames whose width divides 48 (1, 2, 3, 4, 6, 8, 12, 16 or 24 px); re-encode it wider, "
                    "e.g. `ffmpeg -i IN -vf scale=64:-2 -c:v libx264 -crf 18 OUT.mp4`",
                ) from err
            raise VideoDecodeError(
                self.path, f"the first frame cannot be decoded: {_decord_cause(err, self._source, self.path)}"
            ) from err
        _check_batch(self.path, first, 1, None)
        height, width = int(first.shape[1]), int(first.shape[2])
        stamps = _frame_timestamps(reader, num_frames)
        self._starts = stamps[:, 0]
        fps = float(reader.get_avg_fps())
        duration = round(float(stamps[-1, 1] - stamps[0, 0]), _TIME_DECIMALS)
        if not (math.isfinite(duration) and duration > 0):
            # Timestamps unusable (seen with broken edit lists): fall back to the nominal rate.
            duration = num_frames / fps if fps > 0 and math.isfinite(fps) else 0.0
        if not (math.isfinite(fps) and fps > 0) and duration > 0:
            fps = num_frames / duration
        return VideoInfo(
            path=self.path,
            num_frames=num_frames,
            fps=fps,
            duration=duration,
            width=width,
            height=height,
            size_bytes=int(stat.st_size),
            mtime=float(stat.st_mtime),
            resolved_path=self.resolved_path,
        )

    def _check_declared_duration(self, declared: float | None) -> None:
        """Raise if decord sees much less video than the container declares (``declared``
        seconds, from the header; None if unknown).

        A truncated Matroska file opens without error and simply reports fewer frames;
        the header still declares the full duration.
        """
        if declared is None:
            return
        info = self.info
        missing = declared - info.duration
        frame_time = 1.0 / info.fps if info.fps > 0 else 0.0
        tolerance = max(_TRUNCATION_TOLERANCE_FRAMES * frame_time, _TRUNCATION_TOLERANCE_FRACTION * declared)
        if missing > tolerance:
            raise VideoDecodeError(
                self.path,
                f"truncated: only {info.num_frames} frames ({info.duration:.2f} s) can be read "
                f"but the container declares {declared:.2f} s of video",
            )


def open_video(path: str | os.PathLike, **kw) -> Video:
    """Open ``path`` for decoding; keyword arguments go to ``Video`` (``num_threads``, ``root``,
    ``max_pixels``)."""
    return Video(path, **kw)


def probe_video(path: str | os.PathLike, **kw) -> VideoInfo:
    """Open ``path``, read its metadata (decoding one frame), close it, return ``VideoInfo``.

    Keyword arguments go to ``Video``. Raises ``VideoDecodeError`` exactly as ``Video`` does.
    """
    with Video(path, **kw) as video:
        return video.info


def max_frame_pixels(value: int | None = None) -> int:
    """The per-frame pixel limit: ``value`` if given, else ``$VQA_MAX_FRAME_PIXELS`` (a number
    of pixels, ``33177600``, or a size, ``7680x4320``), else :data:`DEFAULT_MAX_FRAME_PIXELS`
    (8K UHD). Raises ``PipelineError`` for a value that is not a positive size."""
    source = "max_pixels"
    if value is None:
        text = os.environ.get(MAX_FRAME_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_FRAME_PIXELS
        source = MAX_FRAME_PIXELS_ENV
        match = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)", text)
        value = int(match[1]) * int(match[2]) if match else (int(text) if text.isdigit() else text)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PipelineError(
            f"{source} must be a positive number of pixels per frame (e.g. 33177600 or 7680x4320), got {value!r}"
        )
    return int(value)


_LIMIT_HINT = (
    f" (set {MAX_FRAME_PIXELS_ENV}, e.g. to 15360x8640, to allow larger frames if the machine has the "
    "memory for them, or downscale the video, e.g. `ffmpeg -i IN -vf scale=-2:2160 OUT.mp4`)"
)


@dataclass(frozen=True)
class _Header:
    """What the container's header says about its video stream (nothing decoded)."""

    width: int
    height: int
    declared_duration: float | None


def _read_header(source: str) -> _Header | None:
    """Frame size and declared duration of the best video stream, from the header (PyAV);
    None when PyAV cannot open it or there is no video stream (decord's open then says why)."""
    try:
        container = av.open(source)
    except (av.error.FFmpegError, OSError) as err:
        logger.debug("PyAV cannot open %s (%s); header unknown", source, err)
        return None
    with container:
        if not container.streams.video:
            return None
        context = container.streams.best("video").codec_context
        return _Header(int(context.width or 0), int(context.height or 0), _declared_duration_of(container))


def _first_frame_within(source: str, max_pixels: int) -> bool:
    """Whether PyAV decodes the first frame under FFmpeg's ``max_pixels`` check (which refuses an
    oversized frame before allocating it). Other failures count as within: decord says why."""
    try:
        with av.open(source) as container:
            stream = container.streams.best("video")
            stream.codec_context.options = {"max_pixels": str(max_pixels)}
            next(iter(container.decode(stream)), None)
    except av.error.ArgumentError:
        return False
    except (av.error.FFmpegError, OSError) as err:
        logger.debug("PyAV cannot decode the first frame of %s (%s)", source, err)
    return True


def _open_checked(path: str, root: str | os.PathLike | None) -> tuple[int, str, os.stat_result]:
    """Open ``path`` and check the file that was opened, before any decoder sees it.

    Returns the descriptor, the opened file's real path (``/proc/self/fd``; ``realpath``
    elsewhere) and its ``fstat``. Refuses a missing, non-regular or empty file, and with
    ``root`` one whose real path lies outside it. Existence, type and size are checked here
    because decord hides the cause. ``O_NONBLOCK``: a FIFO put in a file's place must not hang.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise VideoDecodeError(path, "file does not exist") from None
    except IsADirectoryError:
        raise VideoDecodeError(path, "not a regular file") from None
    except OSError as err:
        raise VideoDecodeError(path, f"cannot read file: {err.strerror or err}") from err
    try:
        stat = os.fstat(fd)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = os.path.realpath(path)
        if root is not None:
            root_real = os.path.realpath(root)
            if real != root_real and Path(root_real) not in Path(real).parents:
                raise VideoDecodeError(path, f"resolves to {real}, outside the dataset root {root_real}; refused")
        if not stat_module.S_ISREG(stat.st_mode):
            raise VideoDecodeError(path, "not a regular file")
        if stat.st_size == 0:
            raise VideoDecodeError(path, "file is empty (0 bytes)")
        try:
            os.pread(fd, 1, 0)
        except OSError as err:
            raise VideoDecodeError(path, f"cannot read file: {err.strerror or err}") from err
    except BaseException:
        os.close(fd)
        raise
    return fd, real, stat


def _sniff(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_SNIFF_BYTES)


def _container_kind(head: bytes) -> str | None:
    """Name of the container family recognised from the first bytes, or None."""
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(b"FLV"):
        return "FLV"
    return None


def _mp4_truncation(path: str, size: int) -> str | None:
    """Walk the top-level boxes of an MP4/MOV file; describe the truncation if there is one.

    Catches both flavours: index at the end (``moov`` missing; decord says only "Error
    reading") and index at the front (``mdat`` runs past the end; decord would open it and
    fail part-way). Returns None for non-MP4 files and for walks that hit unparseable bytes
    (decord then gets its say).
    """
    if _container_kind(_sniff(path)) != "MP4/MOV":
        return None
    seen: set[bytes] = set()
    offset = 0
    with open(path, "rb") as handle:
        for _ in range(_MAX_TOP_LEVEL_BOXES):
            if offset + 8 > size:
                break
            handle.seek(offset)
            header = handle.read(16)
            box_size = int.from_bytes(header[0:4], "big")
            box_type = header[4:8]
            if not all(32 <= c < 127 for c in box_type):
                logger.debug("%s: unparseable bytes at offset %d; box walk stopped", path, offset)
                return None
            header_len = 8
            if box_size == 1:  # 64-bit size follows the type
                if len(header) < 16:
                    return f"truncated: the file ends inside the header of its '{box_type.decode()}' box"
                box_size = int.from_bytes(header[8:16], "big")
                header_len = 16
            elif box_size == 0:  # box extends to the end of the file
                box_size = size - offset
            if box_size < header_len:
                logger.debug("%s: invalid box size %d at offset %d", path, box_size, offset)
                return None
            seen.add(box_type)
            if offset + box_size > size:
                missing = offset + box_size - size
                hint = "" if b"moov" in seen else "; its index ('moov' box) is missing"
                return f"truncated: the file ends {missing} bytes before the end of its '{box_type.decode()}' box{hint}"
            offset += box_size
    if b"moov" not in seen:
        return "truncated or incomplete MP4: it has no index ('moov' box)"
    return None


def _open_reader(path: str, source: str, num_threads: int) -> decord.VideoReader:
    """decord's reader of ``source`` (the opened file); errors name ``path``."""
    try:
        return decord.VideoReader(source, num_threads=num_threads)
    except (RuntimeError, DECORDError) as err:
        raise VideoDecodeError(path, _diagnose_open_failure(source, err).replace(source, path)) from err
    except AssertionError as err:
        # decord's constructor asserts a positive frame count: that is how it reports 0 frames.
        raise VideoDecodeError(path, "the video stream has no frames") from err


def _diagnose_open_failure(path: str, err: Exception) -> str:
    """Why decord could not open ``path``, found out with PyAV (decord's reason is on stderr)."""
    kind = _container_kind(_sniff(path))
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as av_err:
        reason = getattr(av_err, "strerror", None) or str(av_err)
        if kind is not None:
            return f"truncated or corrupt {kind} file: {reason}"
        return f"not a video or unsupported container: {reason}"
    with container:
        if not container.streams.video:
            others = [s.type for s in container.streams]
            if "audio" in others:
                return f"no video stream (audio-only file with {others.count('audio')} audio stream(s))"
            if not others:
                return "no video stream (the container holds no streams at all)"
            return f"no video stream (streams: {', '.join(others)})"
        if _DECODER_NOT_FOUND.search(str(err)):
            return _unsupported_codec(_codec_name(container.streams.best("video")))
        declared = _declared_duration_of(container)
        try:
            has_frame = next(iter(container.decode(video=0)), None) is not None
        except (av.error.FFmpegError, OSError) as av_err:
            return f"the first video frame cannot be decoded: {av_err}"
    if not has_frame:
        cause = "the video stream has no decodable frames"
        if declared:
            cause += f" although the container declares {declared:.2f} s (truncated?)"
        return cause
    return f"decord cannot read it: {_decord_cause(err)}"


def _codec_name(stream) -> str:
    """FFmpeg's name of a stream's codec (``av1``, ``h264``), as PyAV reports it."""
    try:
        codec = stream.codec_context.codec
        return str(codec.canonical_name or codec.name)
    except (AttributeError, ValueError, av.error.FFmpegError):
        return "unknown"


def _unsupported_codec(codec: str) -> str:
    """The cause for a stream whose codec decord's own FFmpeg cannot decode."""
    version = getattr(decord, "__version__", "")
    return (
        f"codec {codec} is not supported by the decoder: decord {version}'s FFmpeg has no {codec} decoder; "
        f"{_REENCODE_HINT}"
    )


def _declared_duration_of(container) -> float | None:
    """Video stream duration, else the Matroska DURATION tag, else the container's duration.

    The container's duration covers every stream, so it is only the last resort (audio that
    outlasts video would look like missing video).
    """
    if not container.streams.video:
        return None
    stream = container.streams.best("video")
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    parsed = _parse_hms(tag) if tag else None
    if parsed is not None:
        return parsed
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _parse_hms(text: str) -> float | None:
    """'HH:MM:SS.fffffffff' (Matroska DURATION tag) -> seconds; None if it does not parse."""
    match = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _frame_timestamps(reader: decord.VideoReader, num_frames: int) -> np.ndarray:
    """decord's (start, end) seconds per frame, float64 ``[num_frames, 2]``, rounded to 1 us."""
    stamps = np.asarray(reader.get_frame_timestamp(np.arange(num_frames)), dtype=np.float64)
    return np.round(stamps.reshape(num_frames, 2), _TIME_DECIMALS)


def _to_numpy(batch) -> np.ndarray:
    """decord output -> uint8 numpy ``[B, H, W, 3]`` whatever decord bridge is set globally."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    return np.asarray(batch)  # torch/tf bridges: a CPU tensor


def _check_batch(path: str, batch: np.ndarray, length: int, size: tuple[int, int] | None) -> None:
    """Refuse decord output that is not uint8 ``[length, H, W, 3]`` (with ``(H, W) == size``).

    Seen with decord 0.6.0: a 64x48 clip with 90-degree rotation metadata decodes to
    4-channel frames with wrong values; better an error than silently wrong pixels.
    """
    shape = tuple(batch.shape)
    ok = batch.dtype == np.uint8 and len(shape) == 4 and shape[0] == length and shape[3] == 3
    if ok and size is not None:
        ok = shape[1:3] == size
    if not ok:
        expected = f"[{length}, {size[0]}, {size[1]}, 3]" if size else f"[{length}, H, W, 3]"
        raise VideoDecodeError(
            path, f"decord returned frames of shape {list(shape)} {batch.dtype}, expected {expected} uint8"
        )


def _first_failing_frame(reader: decord.VideoReader, chunk: np.ndarray) -> int:
    """Re-read ``chunk`` one frame at a time to name the frame that fails (error path only).

    decord's threaded decoder sends packets ahead, so the frame named is at or a few frames
    before the damaged one (timing-dependent). Falls back to the first index of the chunk.
    """
    for index in chunk.tolist():
        try:
            reader.get_batch([index])
        except (RuntimeError, DECORDError):
            return index
    return int(chunk[0])


def _decord_cause(err: BaseException, source: str = "", path: str = "") -> str:
    """decord's message without its timestamps, source paths and stack trace (and naming
    ``path`` where it names ``source``, the descriptor path decord was given)."""
    text = str(err).strip().split("\n")[0]
    if source:
        text = text.replace(source, path)
    text = _DECORD_PREFIX.sub("", text).strip()
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[:_MAX_CAUSE_CHARS] + "..."
    return text or type(err).__name__
