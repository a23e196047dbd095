"""Extraction throughput on this machine, as ratios measured in one run.

For each extractor: frames/s of the bare model on frames already in memory, and of the full
path (decode + sample + preprocess + model) through ``pipeline.runner.extract_video``; their
ratio is the pipeline efficiency. Then one decode-once pass feeding all extractors vs one pass
per extractor. Random weights (throughput does not depend on the values).

    python bench/extraction.py [--width 480 --height 270 --seconds 2 --fps 25]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.encode import encode_video  # noqa: E402
from pipeline.extractors import create_extractor  # noqa: E402
from pipeline.runner import extract_video, step_plan  # noqa: E402
from pipeline.sampling import parse_sampling  # noqa: E402
from pipeline.synthetic import load_source, render_camera_clip  # noqa: E402
from pipeline.video import open_video  # noqa: E402

# extractor -> the sampling it is used with in the papers (clip extractors need clips)
JOBS = {
    "resnet50": "uniform:16",
    "unique": "uniform:16",
    "inception-gram": "uniform:16",
    "slowfast": "clips:32",
}


def timed(fn, repeats: int = 2):
    """Best of ``repeats`` runs: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        frames = render_camera_clip(load_source("astronaut"), num_frames=int(args.seconds * args.fps),
                                    size=(args.width, args.height), seed=0)
        encode_video(video, frames, fps=args.fps, crf=23)
        extractors = {name: create_extractor(name, weights="random") for name in JOBS}
        samplings = {name: parse_sampling(s) for name, s in JOBS.items()}

        print(f"video {args.width}x{args.height}, {args.seconds} s at {args.fps} fps; torch threads {torch.get_num_threads()}")
        print(f"{'extractor':<16}{'sampling':<12}{'frames':>7}{'model f/s':>11}{'pipeline f/s':>14}{'efficiency':>12}")
        separate_total = 0.0
        for name, extractor in extractors.items():
            with open_video(video) as v:
                plan = step_plan(samplings[name], v.info, v.timestamps())
                decoded = dict(zip(*next(v.frames(np.unique(plan), batch_size=10_000))))
            steps = np.stack([np.stack([decoded[i] for i in step]) for step in plan])
            batches = [steps[i:i + args.batch_size] for i in range(0, len(steps), args.batch_size)]
            feed = (lambda b: b[:, 0]) if plan.shape[1] == 1 else (lambda b: b)
            extractor(feed(batches[0][:1]))  # warm-up
            _, model_s = timed(lambda: [extractor(feed(b)) for b in batches])
            _, pipe_s = timed(lambda: extract_video(video, [extractor], sampling=samplings[name],
                                                    batch_size=args.batch_size))
            n = plan.size
            separate_total += pipe_s
            print(f"{name:<16}{JOBS[name]:<12}{n:>7}{n / model_s:>11.1f}{n / pipe_s:>14.1f}{model_s / pipe_s:>12.2f}")

        _, once_s = timed(lambda: extract_video(video, list(extractors.values()),
                                                sampling=list(samplings.values()), batch_size=args.batch_size))
        def decode_all():
            with open_video(video) as v:
                return sum(len(i) for i, _ in v.frames(None, batch_size=args.batch_size))

        n_decoded, decode_s = timed(decode_all)
        print(f"\ndecoding alone: {n_decoded / decode_s:.0f} frames/s")
        print(f"all four extractors: one decode-once pass {once_s:.2f} s vs four separate passes "
              f"{separate_total:.2f} s -> ratio {once_s / separate_total:.2f} (lower is better)")


if __name__ == "__main__":
    main()
