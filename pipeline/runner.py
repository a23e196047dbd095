"""Decode once, feed every requested extractor, in bounded batches."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .extractors.base import Extractor
from .sampling import Sampling
from .video import VideoInfo, open_video

log = logging.getLogger(__name__)


def extract_video(
    path: str | Path,
    extractors: Sequence[Extractor],
    *,
    sampling: Sampling,
    batch_size: int = 16,
) -> tuple[list[np.ndarray], VideoInfo]:
    """Decode ``path`` once and run every extractor on the sampled frames.

    Returns one float32 array ``[steps, dims_i]`` per extractor (same order) and the video's
    info. Memory is bounded by ``batch_size`` frames plus the (small) per-frame features.
    """
    outputs: list[list[np.ndarray]] = [[] for _ in extractors]
    with open_video(path) as video:
        timestamps = video.timestamps() if sampling.kind == "fps" else None
        indices = sampling.indices(video.info, timestamps)
        for _, frames in video.frames(indices, batch_size=batch_size):
            for out, extractor in zip(outputs, extractors):
                out.append(extractor(frames))
        info = video.info
    return [np.concatenate(out, axis=0) for out in outputs], info
