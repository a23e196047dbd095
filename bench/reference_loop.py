"""Ours vs a VSFA-style reference loop: wall time and peak memory, and memory vs video length.

The reference loop is written here from the facts of VSFA's ``CNNfeatures.py`` (lidq92/VSFA):
for every video it decodes the whole video into memory (here decord ``get_batch`` of every
frame), converts all frames to one normalised float32 tensor ``[T, 3, H, W]``, builds the
ResNet-50 again (loading its weights), and runs it in batches of ``frame_batch_size`` (64 for
KoNViD-1k), keeping layer4's spatial mean and unbiased std. Ours: ``extract_video`` with the
``resnet50-vsfa`` extractor built once, frames streamed in batches, decoding in a worker.

Part 1, the same videos: real KoNViD-1k clips (``/work/shared/media``; synthetic clips where
absent), cut to their first ``--frames`` frames and scaled to ``--width`` x ``--height`` so
that ResNet-50 on 2 CPU cores fits in a few minutes; every frame, same weights (seeded random
ResNet-50 saved to a file, as VSFA loads a file), features compared. Each method runs in a fresh
process: wall time (model builds included) and peak RSS.

Part 2, memory vs video length: a 720p test pattern at a low frame rate, ``--short``,
``--long / 2`` and ``--long`` seconds, every frame. The model is replaced by a per-frame
pooling stand-in (the same for both methods), because the memory that grows with the video is
the frames', not the network's (which depends on the batch only) and ResNet-50 on every 720p
frame would take an hour on the CPU. Ours runs on every length; the reference on the short one
only (on the long one it would need the whole video in memory: estimated, not attempted).
Besides peak RSS, the numpy peak (tracemalloc) shows the frames the method itself holds.
Last, the decoders alone on the short and the long video: decord read in batches of
consecutive frames (as ``Video.frames`` reads) and PyAV's sequential decoder, each dropping
every frame at once, so that what grows with the video is the decoder's own memory.

decord 0.6.0 note (measured here): once a reader has decoded a frame, it keeps decoding in
background threads while the caller is busy elsewhere (about 1.6 of 2 cores and ~700 MB/s of
RGB frames at 720p, up to a few GB per reader), and that work is not reused by later reads.
On a long video with the encoder's default keyframe interval (x264: 250) the reader's memory
also grows with the number of frames read, with no slow consumer at all (the "decoding
alone" rows), while PyAV's sequential decoder stays flat. That is why ``Video.frames`` streams
dense reads through PyAV with the decord reader released: the runner's RSS stays bounded on a
long 1080p video.

    python bench/reference_loop.py [--frames 24 --width 320 --height 180] [--short 60 --long 600 --fps 2]
                                   [--size 1920x1080] [--parts 1,2]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import decord
import numpy as np
import psutil
import torch
from torchvision.models import resnet50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.encode import ffmpeg_exe  # noqa: E402
from pipeline.extractors import ExtractorSpec, create_extractor  # noqa: E402
from pipeline.extractors.base import IMAGENET_MEAN, IMAGENET_STD, Extractor  # noqa: E402
from pipeline.runner import extract_video  # noqa: E402
from pipeline.sampling import parse_sampling  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
VSFA_FRAME_BATCH = 64  # CNNfeatures.py's --frame_batch_size for KoNViD-1k
MB = 2**20


# ---- the two methods (each run in a fresh process) -----------------------------------------


class PoolingStandIn(Extractor):
    """Per frame: mean and std of each normalised channel (6 dims). Stands in for the network
    where only the memory that depends on the video (frames) is measured."""

    def __init__(self):
        super().__init__(
            ExtractorSpec(
                name="pooling-stand-in",
                version="1",
                dims=6,
                backbone="none",
                taps=(),
                pooling="per-channel mean and std",
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 6]``."""
        return stand_in_pool(x)


def stand_in_pool(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 6]``: spatial mean then std of each channel."""
    flat = x.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def _vsfa_body(weights_file: str | None) -> torch.nn.Module:
    """ResNet-50 up to layer4 with the weights of ``weights_file`` (what VSFA builds per video)."""
    model = resnet50(weights=None)
    model.load_state_dict(torch.load(weights_file, weights_only=True))
    body = torch.nn.Sequential(*[m for name, m in model.named_children() if name not in ("avgpool", "fc")])
    return body.eval()


def reference_loop(paths: Sequence[str], weights_file: str | None, frame_batch_size: int) -> dict:
    """VSFA-style extraction of every video in ``paths``; ``weights_file=None``: the stand-in model.

    Per video: all frames decoded at once, the whole video as one float tensor, the model
    built again, batches of ``frame_batch_size``. Returns seconds, memory and the features."""
    baseline = psutil.Process().memory_info().rss
    tracemalloc.start()
    started = time.perf_counter()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    features = []
    with torch.inference_mode():
        for path in paths:
            reader = decord.VideoReader(path)
            video = reader.get_batch(list(range(len(reader)))).asnumpy()  # uint8 [T, H, W, 3], whole video
            del reader
            frames = (torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255 - mean) / std  # [T, 3, H, W]
            model = _vsfa_body(weights_file) if weights_file else None  # rebuilt for every video
            means, stds = [], []
            for start in range(0, len(frames), frame_batch_size):
                batch = frames[start : start + frame_batch_size]
                if model is None:
                    pooled = stand_in_pool(batch)
                    means.append(pooled[:, :3]), stds.append(pooled[:, 3:])
                else:
                    fmap = model(batch).flatten(2)
                    means.append(fmap.mean(2)), stds.append(fmap.std(2))
            features.append(torch.cat([torch.cat(means), torch.cat(stds)], dim=1).numpy())
            del video, frames, model
    return _report(started, baseline, features)


def ours(paths: Sequence[str], weights_file: str | None, batch_size: int, prefetch: int) -> dict:
    """``extract_video`` over ``paths`` with one extractor built once (``resnet50-vsfa`` from
    ``weights_file``, or the stand-in when None), every frame."""
    baseline = psutil.Process().memory_info().rss
    tracemalloc.start()
    started = time.perf_counter()
    extractor = create_extractor("resnet50-vsfa", weights=weights_file) if weights_file else PoolingStandIn()
    features = [
        extract_video(path, [extractor], sampling=parse_sampling("all"), batch_size=batch_size, prefetch=prefetch)[0][0]
        for path in paths
    ]
    return _report(started, baseline, features)


def decode_only(path: str, decoder: str, batch_size: int) -> dict:
    """Decode every frame of ``path`` to RGB and drop it: decord in batches of consecutive frames
    (what ``Video.frames`` does) or PyAV's sequential decoder (``av`` is installed). Isolates the
    decoder's own memory from the pipeline's."""
    baseline = psutil.Process().memory_info().rss
    tracemalloc.start()
    started = time.perf_counter()
    if decoder == "decord":
        reader = decord.VideoReader(path)
        for start in range(0, len(reader), batch_size):
            reader.get_batch(list(range(start, min(len(reader), start + batch_size)))).asnumpy()
        del reader
    else:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
    return _report(started, baseline, [])


def _report(started: float, baseline: int, features: list[np.ndarray]) -> dict:
    return {
        "seconds": time.perf_counter() - started,
        "baseline": baseline,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "numpy": tracemalloc.get_traced_memory()[1],
        "features": features,
    }


def best_of(results: list[dict]) -> dict:
    """The fastest of repeated runs, with the highest memory figures of them all."""
    best = dict(min(results, key=lambda r: r["seconds"]))
    for key in ("peak", "numpy"):
        best[key] = max(r[key] for r in results)
    best["baseline"] = min(r["baseline"] for r in results)
    return best


def in_fresh_process(fn, *args) -> dict:
    """``fn(*args)`` in a new (spawned) process, so that its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---- inputs --------------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def part1_videos(folder: Path, *, frames: int, width: int, height: int, count: int) -> list[str]:
    """The first ``frames`` frames of up to ``count`` KoNViD clips, scaled (synthetic if absent)."""
    sources = sorted(MEDIA.glob("*.mp4"))[:count]
    out = []
    for i in range(count):
        dst = folder / (f"{sources[i].stem}.mp4" if i < len(sources) else f"synthetic{i}.mp4")
        source = (
            ["-i", str(sources[i])]
            if i < len(sources)
            else ["-f", "lavfi", "-i", f"testsrc2=size=960x540:rate=25:duration={frames / 25 + 1}"]
        )
        ffmpeg(
            *source,
            "-frames:v",
            str(frames),
            "-vf",
            f"scale={width}:{height}",
            "-an",
            "-c:v",
            "libx264",
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            str(dst),
        )
        out.append(str(dst))
    return out


def pattern_video(path: Path, *, seconds: float, fps: float, size: str) -> str:
    """A moving test pattern (ffmpeg testsrc2), H.264, ``seconds`` long at ``fps``."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={fps}:duration={seconds}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return str(path)


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="part 1: frames kept per video")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--batch-size", type=int, default=16, help="ours")
    parser.add_argument("--frame-batch-size", type=int, default=VSFA_FRAME_BATCH, help="the reference loop")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="part 1: runs of each method (best time)")
    parser.add_argument("--short", type=float, default=60.0, help="part 2: seconds of the short video")
    parser.add_argument("--long", type=float, default=600.0, help="part 2: seconds of the long video")
    parser.add_argument("--fps", type=float, default=2.0, help="part 2: frame rate")
    parser.add_argument("--size", default="1920x1080", help="part 2: frame size")
    parser.add_argument("--parts", default="1,2", help="which parts to run (1,2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights_file = tmp / "resnet50-random0.pth"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.save(resnet50(weights=None).state_dict(), weights_file)
        parts = {p.strip() for p in args.parts.split(",")}
        if "1" in parts:
            part1(args, tmp, weights_file)
        if "2" in parts:
            part2(args, tmp)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def part1(args, tmp: Path, weights_file: Path) -> None:
    """Ours vs the VSFA-style loop on the same real clips: time, memory, features."""
    paths = part1_videos(tmp, frames=args.frames, width=args.width, height=args.height, count=args.videos)
    names = ", ".join(Path(p).stem for p in paths)
    print(
        f"part 1: {len(paths)} videos ({names}), first {args.frames} frames at {args.width}x{args.height}, "
        f"every frame, ResNet-50 layer4 mean+std (seeded random weights from a file); "
        f"{torch.get_num_threads()} threads; best of {args.repeats} fresh processes each"
    )
    runs = [
        (
            in_fresh_process(ours, paths, str(weights_file), args.batch_size, args.prefetch),
            in_fresh_process(reference_loop, paths, str(weights_file), args.frame_batch_size),
        )
        for _ in range(args.repeats)
    ]  # alternated, so that load changes hit both alike
    mine, ref = (best_of([run[i] for run in runs]) for i in (0, 1))
    worst = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(mine["features"], ref["features"]))
    _table(
        [
            (f"ours (batch {args.batch_size}, prefetch {args.prefetch})", mine),
            (f"VSFA-style loop (frame_batch_size {args.frame_batch_size})", ref),
        ]
    )
    print(
        f"ours / reference: wall time {mine['seconds'] / ref['seconds']:.2f}, peak RSS "
        f"{mine['peak'] / ref['peak']:.2f}, working memory "
        f"{(mine['peak'] - mine['baseline']) / max(1, ref['peak'] - ref['baseline']):.2f}; "
        f"features agree to {worst:.1e} (max abs difference / max abs value)"
    )


def part2(args, tmp: Path) -> None:
    """Memory vs video length: ours at three lengths, the reference on the short one, and the
    decoders alone (decord as the runner uses it vs PyAV sequential) on the long one."""
    lengths = (args.short, args.long / 2, args.long)
    videos = [
        pattern_video(tmp / f"pattern{i}.mp4", seconds=seconds, fps=args.fps, size=args.size)
        for i, seconds in enumerate(lengths)
    ]
    print(
        f"\npart 2: {args.size} test pattern at {args.fps:g} fps, "
        + ", ".join(f"{seconds:g} s ({int(seconds * args.fps)} frames)" for seconds in lengths)
        + "; every frame, pooling stand-in instead of the network"
    )
    rows = [
        (f"ours, {seconds:g} s", in_fresh_process(ours, [video], None, args.batch_size, args.prefetch))
        for seconds, video in zip(lengths, videos)
    ]
    rows += [
        (f"ours, {args.long:g} s, prefetch 0", in_fresh_process(ours, videos[-1:], None, args.batch_size, 0)),
        (
            f"VSFA-style loop, {args.short:g} s",
            in_fresh_process(reference_loop, videos[:1], None, args.frame_batch_size),
        ),
    ]
    _table(rows)
    (_, s), (_, mid), (_, lg), _, (_, r) = rows
    working = [x["peak"] - x["baseline"] for x in (s, mid, lg)]
    per_frame = (r["peak"] - r["baseline"]) / (args.short * args.fps)
    estimate = r["baseline"] + per_frame * args.long * args.fps
    print(
        f"ours, working memory: {lengths[0]:g} -> {lengths[1]:g} s x{working[1] / working[0]:.2f}, "
        f"{lengths[1]:g} -> {lengths[2]:g} s x{working[2] / working[1]:.2f}; numpy peak "
        f"{s['numpy'] / MB:.0f} / {mid['numpy'] / MB:.0f} / {lg['numpy'] / MB:.0f} MiB"
    )
    print(
        f"VSFA-style loop on the {args.long:g} s video: ~{estimate / MB / 1024:.1f} GiB peak RSS "
        f"(estimated from the short run, {per_frame / MB:.1f} MiB per frame; not run)"
    )
    decoders = [
        (f"{name} decoding alone, {seconds:g} s", in_fresh_process(decode_only, video, name, args.batch_size))
        for name in ("decord", "pyav")
        for seconds, video in ((lengths[0], videos[0]), (lengths[2], videos[2]))
    ]
    _table(decoders)


def _table(rows: list[tuple[str, dict]]) -> None:
    print(
        f"{'method':<44}{'wall s':>8}{'peak RSS MiB':>14}{'after imports':>15}{'working MiB':>13}{'numpy peak MiB':>16}"
    )
    for label, r in rows:
        print(
            f"{label:<44}{r['seconds']:>8.1f}{r['peak'] / MB:>14.0f}{r['baseline'] / MB:>15.0f}"
            f"{(r['peak'] - r['baseline']) / MB:>13.0f}{r['numpy'] / MB:>16.0f}"
        )
    print(
        "working = peak RSS - RSS after imports; numpy peak = tracemalloc (numpy and Python objects: the "
        "decoded frames the method holds; not torch tensors, not decord's native buffers)"
    )


if __name__ == "__main__":
    main()
