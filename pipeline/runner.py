"""Decode once, feed every requested extractor, in bounded batches.

Each extractor has its own sampling. A sampling's *plan* is an index array ``[steps, L]``:
``L = 1`` for per-frame strategies, ``L > 1`` for clips (e.g. 32 frames per clip). The runner
decodes the union of all planned frames once, in order, keeps only frames some pending step
still needs, and calls each extractor as soon as ``batch_size`` of its steps are complete.

Out of memory: when an extractor raises ``torch.cuda.OutOfMemoryError`` (or any
``RuntimeError`` saying "out of memory"), the runner empties the CUDA cache, halves that
extractor's batch for the rest of the video and retries the same steps; the features are the
same as with the full batch. A single step that does not fit raises
``ExtractorOutOfMemoryError``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import ExtractorOutOfMemoryError, PipelineError
from .extractors.base import Extractor
from .sampling import Sampling
from .video import VideoInfo, open_video

log = logging.getLogger(__name__)


def step_plan(sampling: Sampling, info: VideoInfo, timestamps: np.ndarray | None) -> np.ndarray:
    """Frame indices per step, int64 ``[steps, L]`` (clip strategies provide ``clips()``)."""
    clips = getattr(sampling, "clips", None)
    if clips is not None:
        return np.asarray(clips(info, timestamps), dtype=np.int64)
    return sampling.indices(info, timestamps)[:, None]


class _Feed:
    """One extractor's progress through its plan within one video."""

    def __init__(self, extractor: Extractor, plan: np.ndarray, video_key: str):
        self.extractor, self.plan = extractor, plan
        self.next_step = 0
        self.accumulator = extractor.accumulator(video_key=video_key)
        self.max_steps: int | None = None  # lowered after an out-of-memory error

    def lowest_needed(self) -> int:
        return int(self.plan[self.next_step:].min()) if self.next_step < len(self.plan) else np.iinfo(np.int64).max

    def run_ready(self, frames: dict[int, np.ndarray], decoded_up_to: int, *, batch_size: int, final: bool) -> None:
        """Run the extractor on complete steps, ``batch_size`` frames at a time (the rest at the end).

        Clip steps count all their frames, so a 32-frame clip fills a batch of 16 on its own."""
        batch_size = max(1, batch_size // self.plan.shape[1])
        if self.max_steps is not None:
            batch_size = min(batch_size, self.max_steps)
        while self.next_step < len(self.plan):
            ready = self.next_step
            while ready < len(self.plan) and ready - self.next_step < batch_size and self.plan[ready].max() <= decoded_up_to:
                ready += 1
            if ready == self.next_step or (ready - self.next_step < batch_size and not final):
                return
            steps = self.plan[self.next_step:ready]
            batch = np.stack([np.stack([frames[i] for i in step]) for step in steps])  # [B, L, H, W, 3]
            try:
                self.accumulator.consume(self.extractor, batch[:, 0] if steps.shape[1] == 1 else batch)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            else:
                self.next_step = ready
                continue
            # Out of memory: handled outside the except block, so the traceback (which holds
            # the failed batch's tensors) is released before the cache is emptied.
            del batch
            release_accelerator_memory()
            name, device = self.extractor.spec.name, str(self.extractor.device)
            if len(steps) == 1:
                height, width = frames[int(steps[0, 0])].shape[:2]
                raise ExtractorOutOfMemoryError(
                    f"extractor {name} ran out of memory on {device} even with a batch of 1 step "
                    f"({steps.shape[1]} frame(s) of {width}x{height}): {message}. Use a device with "
                    "more free memory, or run on the CPU (--device cpu)",
                    extractor=name, device=device,
                )
            batch_size = self.max_steps = max(1, len(steps) // 2)
            log.warning("%s ran out of memory on %s with a batch of %d step(s); retrying with %d",
                        name, device, len(steps), batch_size)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` reports an accelerator out-of-memory condition (CUDA, or any
    ``RuntimeError`` whose message says "out of memory")."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


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
) -> tuple[list[np.ndarray], VideoInfo]:
    """Decode ``path`` once and run every extractor on its sampled frames or clips.

    ``sampling``: one strategy for all extractors, or one per extractor. Returns one float32
    array ``[steps, dims_i]`` per extractor (same order) and the video's info. Memory holds at
    most the frames that pending steps still need, not the whole video. ``video_key`` (default:
    the file name) seeds per-video randomness such as crop positions.
    """
    video_key = video_key if video_key is not None else Path(path).name
    samplings = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * len(extractors)
    if len(samplings) != len(extractors):
        raise PipelineError(f"got {len(samplings)} samplings for {len(extractors)} extractors")
    with open_video(path) as video:
        needs_times = any(s.kind == "fps" or hasattr(s, "clips") for s in samplings)
        timestamps = video.timestamps() if needs_times else None
        feeds = [_Feed(e, step_plan(s, video.info, timestamps), video_key) for e, s in zip(extractors, samplings)]
        wanted = np.unique(np.concatenate([f.plan.ravel() for f in feeds]))
        frames: dict[int, np.ndarray] = {}
        for indices, batch in video.frames(wanted, batch_size=batch_size):
            frames.update(zip(indices.tolist(), batch))
            for feed in feeds:
                feed.run_ready(frames, int(indices[-1]), batch_size=batch_size, final=False)
            keep_from = min(f.lowest_needed() for f in feeds)
            for i in [i for i in frames if i < keep_from]:
                del frames[i]
        for feed in feeds:
            feed.run_ready(frames, int(wanted[-1]), batch_size=batch_size, final=True)
        info = video.info
    return [f.accumulator.result() for f in feeds], info
