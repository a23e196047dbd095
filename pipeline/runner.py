"""Decode once, feed every requested extractor, in bounded batches, decoding ahead in a worker.

Each extractor has its own sampling. A sampling's *plan* is an index array ``[steps, L]``:
``L = 1`` for per-frame strategies, ``L > 1`` for clips (e.g. 32 frames per clip). The runner
decodes the union of all planned frames once, in order, keeps only frames some pending step
still needs, and hands each extractor a batch as soon as ``batch_size`` frames of its steps
(whole steps) are complete::

    decode worker (thread)                                      caller's thread
    ----------------------                                      ---------------
    decord batches -> frames still needed -> per-extractor      extractor(batch) -> rows
      batches uint8 [B, L, H, W, 3] (pinned for CUDA) --queue(prefetch)-->  (OOM: halve, retry)

With ``prefetch > 0`` decoding and batch assembly run in a background thread (decord releases
the GIL while it decodes) and at most ``prefetch`` assembled batches wait in the queue, so
decoding the next batch overlaps inference on the current one. The frames the runner holds
stay bounded by about ``(prefetch + 2)`` batches plus the frames pending steps still need,
whatever the video's length. ``prefetch=0`` runs the same producer in the caller's thread (no
overlap); both paths give identical features. The decord reader is closed as soon as the last
needed frame is decoded, and on any error or early exit: decord 0.6.0 keeps decoding in
background threads while a reader is open and idle (CPU and up to a few GB of RAM at 720p that
later reads do not reuse; ``bench/reference_loop.py``), so a reader must not outlive its
frames. An error in the worker (``VideoDecodeError``) reaches the caller as the same exception
object. Batches for a CUDA extractor are assembled in pinned (page-locked)
memory, so the extractor's host-to-device copy is ``non_blocking``.

Out of memory: when an extractor raises ``torch.cuda.OutOfMemoryError`` (or any
``RuntimeError`` saying "out of memory"), the runner empties the CUDA cache, halves that
extractor's batch for the rest of the video and retries the same steps; the features are the
same as with the full batch. A single step that does not fit raises
``ExtractorOutOfMemoryError``.

Several GPUs: one worker process per GPU, each with its own extractors; see
:func:`assign_devices`, and :func:`gpu_worker_envs` for pinning each worker process to its own
GPU with ``CUDA_VISIBLE_DEVICES`` (what ``flows.orchestration.make_task_runner`` does for a
local Dask cluster).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import ExtractorOutOfMemoryError, PipelineError
from .extractors.base import Extractor
from .sampling import Sampling
from .video import Video, VideoInfo, open_video

logger = logging.getLogger(__name__)

DEFAULT_PREFETCH = 2
# How often a blocked worker checks whether the consumer has gone away (seconds).
_POLL_SECONDS = 0.05
# How long the caller waits for the worker to finish its current decode after an early exit.
_JOIN_SECONDS = 30.0
WORKER_THREAD_NAME = "vqa-decode"


def step_plan(sampling: Sampling, info: VideoInfo, timestamps: np.ndarray | None) -> np.ndarray:
    """Frame indices per step, int64 ``[steps, L]`` (clip strategies provide ``clips()``)."""
    clips = getattr(sampling, "clips", None)
    if clips is not None:
        return np.asarray(clips(info, timestamps), dtype=np.int64)
    return sampling.indices(info, timestamps)[:, None]


def pinned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 numpy array in pinned (page-locked) host memory; needs CUDA.

    The array is a view of a pinned torch tensor, which it keeps alive (``array.base``)."""
    return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()


def wants_pinned_memory(extractor: Extractor) -> bool:
    """Whether batches for ``extractor`` should be assembled in pinned memory: only when it
    runs on a CUDA device and CUDA is actually available (pinning needs the CUDA driver)."""
    device = getattr(extractor, "device", None)
    return isinstance(device, torch.device) and device.type == "cuda" and torch.cuda.is_available()


class _Batch:
    """One extractor's batch: ``steps`` int64 ``[B, L]`` and their frames uint8 ``[B, L, H, W, 3]``."""

    __slots__ = ("feed", "steps", "frames")

    def __init__(self, feed: int, steps: np.ndarray, frames: np.ndarray):
        self.feed, self.steps, self.frames = feed, steps, frames


def _assemble(frames: dict[int, np.ndarray], steps: np.ndarray, *, pinned: bool) -> np.ndarray:
    """Copy the frames of ``steps`` (``[B, L]``) into one uint8 ``[B, L, H, W, 3]`` array (one copy)."""
    first = frames[int(steps[0, 0])]
    shape = (*steps.shape, *first.shape)
    out = pinned_empty(shape) if pinned else np.empty(shape, dtype=first.dtype)
    for b, step in enumerate(steps.tolist()):
        for position, index in enumerate(step):
            out[b, position] = frames[index]
    return out


def _produce(video: Video, plans: Sequence[np.ndarray], *, batch_size: int, pinned: Sequence[bool]) -> Iterator[_Batch]:
    """Decode the union of ``plans`` once, in order; yield each extractor's batches of whole steps.

    A batch holds ``max(1, batch_size // L)`` steps (full batches while decoding, the rest at
    the end). Frames are dropped as soon as no pending step needs them, and the reader is
    closed as soon as decoding ends (or the consumer stops early: generator close).
    """
    per_batch = [max(1, batch_size // plan.shape[1]) for plan in plans]
    next_step = [0] * len(plans)
    frames: dict[int, np.ndarray] = {}

    def ready_until(k: int, decoded_up_to: int) -> int:
        plan, stop = plans[k], next_step[k]
        while stop < len(plan) and stop - next_step[k] < per_batch[k] and plan[stop].max() <= decoded_up_to:
            stop += 1
        return stop

    def take(k: int, stop: int) -> _Batch:
        steps = plans[k][next_step[k] : stop]
        next_step[k] = stop
        return _Batch(k, steps, _assemble(frames, steps, pinned=pinned[k]))

    non_empty = [plan.ravel() for plan in plans if plan.size]
    wanted = np.unique(np.concatenate(non_empty)) if non_empty else np.empty(0, dtype=np.int64)
    try:
        for indices, decoded in video.frames(wanted, batch_size=batch_size):
            frames.update(zip(indices.tolist(), decoded))
            for k in range(len(plans)):
                while (stop := ready_until(k, int(indices[-1]))) - next_step[k] == per_batch[k]:
                    yield take(k, stop)
            keep_from = min(
                (int(plan[next_step[k] :].min()) for k, plan in enumerate(plans) if next_step[k] < len(plan)),
                default=np.iinfo(np.int64).max,
            )
            for index in [i for i in frames if i < keep_from]:
                del frames[index]
    finally:
        video.close()  # decoding is over: free decord's decode-ahead buffers before the last batches
    for k, plan in enumerate(plans):
        while next_step[k] < len(plan):
            yield take(k, min(next_step[k] + per_batch[k], len(plan)))


class _Prefetcher:
    """Runs an iterator in a daemon thread, ``depth`` items ahead, through a bounded queue.

    Iterating yields the items in order; an exception raised by the iterator is re-raised in
    the consumer (the same object). ``close()`` stops the worker at its next item and waits
    for it (so the source's ``finally`` blocks, e.g. closing the reader, have run).
    """

    _ITEM, _ERROR, _DONE = "item", "error", "done"

    def __init__(self, source: Iterator, *, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(source,), name=WORKER_THREAD_NAME, daemon=True)
        self._thread.start()

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put((self._ITEM, item)) or self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((self._ERROR, exc))
        else:
            self._put((self._DONE, None))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator stopped early runs its finally blocks here, in this thread

    def __iter__(self) -> Iterator:
        while True:
            kind, payload = self._queue.get()
            if kind == self._DONE:
                return
            if kind == self._ERROR:
                raise payload
            yield payload

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a worker waiting on a full queue; drop batches nobody will use
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=_JOIN_SECONDS)
        if self._thread.is_alive():
            logger.warning("the decode worker did not stop within %.0f s; leaving it (daemon thread)", _JOIN_SECONDS)


class _Feed:
    """One extractor's accumulator and batch limit within one video (consumer side)."""

    def __init__(self, extractor: Extractor, video_key: str):
        self.extractor = extractor
        self.accumulator = extractor.accumulator(video_key=video_key)
        self.max_steps: int | None = None  # lowered after an out-of-memory error

    def run(self, steps: np.ndarray, frames: np.ndarray) -> None:
        """Run the extractor on ``frames`` (uint8 ``[B, L, H, W, 3]`` for ``steps`` ``[B, L]``),
        at most ``max_steps`` steps at a time, halving that limit on out-of-memory errors.

        Per-frame extractors get ``[B, H, W, 3]``, clip extractors ``[B, L, H, W, 3]``."""
        start = 0
        while start < len(steps):
            size = len(steps) - start if self.max_steps is None else min(self.max_steps, len(steps) - start)
            part = frames[start : start + size]
            try:
                self.accumulator.consume(
                    self.extractor, part[:, 0] if steps.shape[1] == 1 else part, steps=steps[start : start + size]
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            else:
                start += size
                continue
            # Out of memory: handled outside the except block, so the traceback (which holds
            # the failed batch's tensors) is released before the cache is emptied.
            del part
            release_accelerator_memory()
            name, device = self.extractor.spec.name, str(self.extractor.device)
            if size == 1:
                height, width = frames.shape[2:4]
                on_gpu = device.startswith("cuda") or "cuda" in message.lower()
                advice = (
                    "Use a device with more free memory, or run on the CPU (--device cpu)"
                    if on_gpu
                    else "Free some memory, or lower the frame-size limit (VQA_MAX_FRAME_PIXELS) so that frames "
                    "this large are refused before decoding"
                )
                raise ExtractorOutOfMemoryError(
                    f"extractor {name} ran out of memory on {device} even with a batch of 1 step "
                    f"({steps.shape[1]} frame(s) of {width}x{height}): {message}. {advice}",
                    extractor=name,
                    device=device,
                )
            self.max_steps = max(1, size // 2)
            logger.warning(
                "%s ran out of memory on %s with a batch of %d step(s); retrying with %d",
                name,
                device,
                size,
                self.max_steps,
            )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` reports an out-of-memory condition: CUDA's, any ``RuntimeError`` whose
    message says "out of memory", torch's CPU allocator refusing (``DefaultCPUAllocator: can't
    allocate memory``, e.g. under a ulimit) or numpy's ``MemoryError``."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_accelerator_memory() -> None:
    """Return cached CUDA blocks to the driver (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def extract_video(
    path: str | Path,
    extractors: Sequence[Extractor],
    *,
    sampling: Sampling | Sequence[Sampling],
    batch_size: int = 16,
    video_key: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    root: str | Path | None = None,
) -> tuple[list[np.ndarray], VideoInfo]:
    """Decode ``path`` once and run every extractor on its sampled frames or clips.

    ``sampling``: one strategy for all extractors, or one per extractor. Returns one float32
    array ``[steps, dims_i]`` per extractor (same order) and the video's info. ``video_key``
    (default: the file name) seeds per-video randomness such as crop positions.

    ``prefetch``: batches decoded ahead in a background thread (0: decode in the caller's
    thread, no overlap); the features do not depend on it. Host memory holds about
    ``(prefetch + 2) * batch_size`` frames plus those pending steps still need, not the whole
    video. Raises ``VideoDecodeError`` for an unreadable video (also when the worker hits it
    mid-way), and whatever an extractor raises; the reader is closed in every case.

    Memory bound: ``batch_size`` is capped by :meth:`pipeline.video.Video.max_batch` so that a
    batch holds at most one largest allowed frame's pixels (``VQA_MAX_FRAME_PIXELS``, 8K by
    default; 16 frames at 1080p, 1 at 8K); frames over that limit are refused before decoding.
    ``root``: refuse a file whose real path lies outside it, checked on the opened file.
    """
    if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ValueError(f"prefetch must be a non-negative integer, got {prefetch!r}")
    video_key = video_key if video_key is not None else Path(path).name
    samplings = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * len(extractors)
    if len(samplings) != len(extractors):
        raise PipelineError(f"got {len(samplings)} samplings for {len(extractors)} extractors")
    with open_video(path, root=root) as video:
        batch_size = video.max_batch(batch_size)
        needs_times = any(s.kind == "fps" or hasattr(s, "clips") for s in samplings)
        timestamps = video.timestamps() if needs_times else None
        plans = [step_plan(s, video.info, timestamps) for s in samplings]
        feeds = [_Feed(e, video_key) for e in extractors]
        batches = _produce(video, plans, batch_size=batch_size, pinned=[wants_pinned_memory(e) for e in extractors])
        source = _Prefetcher(batches, depth=int(prefetch)) if prefetch else batches
        try:
            for batch in source:
                feeds[batch.feed].run(batch.steps, batch.frames)
        finally:
            source.close()  # stops and joins the worker; closes the reader on an early exit
        info = video.info
    return [f.accumulator.result() for f in feeds], info


def assign_devices(n_workers: int, *, gpu_count: int | None = None) -> list[str]:
    """The device each of ``n_workers`` extraction workers should use: one GPU per worker.

    Worker ``rank`` gets ``f"cuda:{rank % gpu_count}"`` (round-robin; with more workers than
    GPUs some share one, which only pays when decoding is the bottleneck); without GPUs every
    worker gets ``"cpu"``. ``gpu_count`` defaults to ``torch.cuda.device_count()``, which
    honours ``CUDA_VISIBLE_DEVICES``.

    Patterns (each worker builds its own extractors once and keeps them):

    - Dask / Prefect ``DaskTaskRunner``: start ``n`` single-threaded worker processes
      (``LocalCluster(n_workers=n, threads_per_worker=1)``) and give each its device by rank,
      e.g. ``device = assign_devices(n)[rank]`` with the rank from the worker's name, or
      start worker ``rank`` with ``CUDA_VISIBLE_DEVICES=rank`` (:func:`cuda_visible_devices`,
      :func:`gpu_worker_envs`: what ``flows.orchestration.make_task_runner`` does for a local
      cluster) and ``device="cuda"`` inside it. Declare ``resources={"GPU": 1}`` per worker and
      annotate extraction tasks with it, so one task runs per GPU at a time.
    - Plain processes / Slurm arrays: ``device = assign_devices(world_size)[rank]``.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    gpus = torch.cuda.device_count() if gpu_count is None else int(gpu_count)
    if gpus < 0:
        raise ValueError(f"gpu_count must be >= 0, got {gpu_count!r}")
    if gpus == 0:
        return ["cpu"] * int(n_workers)
    if n_workers > gpus:
        logger.info("%d workers on %d GPU(s): some GPUs are shared", n_workers, gpus)
    return [f"cuda:{rank % gpus}" for rank in range(int(n_workers))]


def cuda_visible_devices(rank: int, *, gpu_count: int | None = None, visible: str | None = None) -> dict[str, str]:
    """Environment for worker ``rank`` so that it sees exactly one GPU (then ``device="cuda"``).

    ``visible``: the parent's ``CUDA_VISIBLE_DEVICES`` (default: the environment's), whose
    entries (indices or UUIDs) are handed out round-robin; when it is unset, ``0..gpu_count-1``
    (``gpu_count`` defaults to ``torch.cuda.device_count()``).
    Returns ``{}`` when there is no GPU, so the worker runs on the CPU.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is not None:  # "" hides every GPU
        ids = [v.strip() for v in visible.split(",") if v.strip()]
    else:
        count = torch.cuda.device_count() if gpu_count is None else int(gpu_count)
        ids = [str(i) for i in range(count)]
    if not ids:
        return {}
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    return {"CUDA_VISIBLE_DEVICES": ids[int(rank) % len(ids)]}


def pins_gpus(device: str | None) -> bool:
    """Whether workers running extractors on ``device`` should each be pinned to one GPU: yes
    for ``"auto"`` and ``"cuda"`` (inside a pinned worker they mean its one visible GPU), no for
    ``"cpu"`` and for an explicit ``"cuda:N"`` (the caller chose that GPU for every worker)."""
    return str(device if device is not None else "auto").strip().lower() in ("auto", "cuda")


def visible_gpu_count() -> int:
    """CUDA devices this process can use (0 without CUDA; honours ``CUDA_VISIBLE_DEVICES``)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_worker_count(device: str | None = "auto") -> int:
    """How many extraction worker processes make one per GPU: the number of visible CUDA
    devices when ``device`` pins GPUs (:func:`pins_gpus`) and there are some, else 1."""
    gpus = visible_gpu_count() if pins_gpus(device) else 0
    return max(1, gpus)


def gpu_worker_envs(n_workers: int, *, device: str | None = "auto") -> list[dict[str, str]]:
    """Per-worker environment pinning each of ``n_workers`` worker processes to one GPU.

    Worker ``rank`` gets ``{"CUDA_VISIBLE_DEVICES": ids[rank % len(ids)]}`` (:func:`cuda_visible_devices`:
    the parent's ``CUDA_VISIBLE_DEVICES`` entries, else ``0..count-1``), so inside it ``"cuda"``
    and ``"auto"`` mean its own GPU (``cuda:0`` there) and nothing it does, pinned host memory
    included, creates a context on another GPU. Every worker gets ``{}`` (unchanged, CPU
    behaviour) when ``device`` does not pin GPUs (:func:`pins_gpus`) or no CUDA device is
    visible. With more workers than GPUs some share one (round-robin, as :func:`assign_devices`).
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    gpus = visible_gpu_count() if pins_gpus(device) else 0
    if gpus == 0:
        return [{} for _ in range(int(n_workers))]
    if n_workers > gpus:
        logger.info("%d workers on %d GPU(s): some GPUs are shared", n_workers, gpus)
    return [cuda_visible_devices(rank, gpu_count=gpus) for rank in range(int(n_workers))]
