"""Pipeline efficiency on this machine, as ratios measured in one run.

1. Per extractor: frames/s of the whole path (decode + sample + preprocess + model) through
   ``pipeline.runner.extract_video``, with the decode worker on (``prefetch=2``) and off
   (``prefetch=0``), divided by the bare model's frames/s on the same frames already in
   memory (goal: >= 0.9).
2. Decode once: one ``extract_video`` pass feeding every extractor vs one pass per extractor.
3. bf16 vs fp32 (and channels-last): speed and feature error of ResNet-50 on skimage photos.
4. On a GPU only (``torch.cuda.is_available()``, else "skipped: no GPU"): per extractor at
   540p, frames/s in fp32 / bf16 / fp16 (channels-last), pipeline efficiency with and without
   the decode worker, and the fp16 FLOP rate as a fraction of the GPU's dense fp16 peak.

Random weights unless ``--weights`` names others (throughput does not depend on the values;
the bf16 error does, see section 3). Times are the best of ``--repeats`` runs: the least
disturbed by other work on a shared machine.

    python bench/pipeline_efficiency.py [--width 480 --height 270 --seconds 2 --fps 25]
        [--batch-size 16] [--repeats 2] [--photo-side 160] [--weights random:0] [--peak-tflops T]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.encode import encode_video  # noqa: E402
from pipeline.errors import WeightsError  # noqa: E402
from pipeline.extractors import Extractor, create_extractor  # noqa: E402
from pipeline.runner import extract_video, step_plan  # noqa: E402
from pipeline.sampling import parse_sampling  # noqa: E402
from pipeline.synthetic import SOURCE_PHOTOS, load_source, render_camera_clip  # noqa: E402
from pipeline.video import open_video  # noqa: E402

# extractor -> the sampling it is used with in the papers (clip extractors need clips)
JOBS = {
    "resnet50": "uniform:16",
    "unique": "uniform:16",
    "inception-gram": "uniform:16",
    "slowfast": "clips:32",
}
EFFICIENCY_GOAL = 0.9
GPU_SIZE = (960, 540)  # KoNViD-1k's resolution
GPU_BATCH = 32
# Dense fp16 tensor-core peak (TFLOP/s, no sparsity) by device name; --peak-tflops overrides.
FP16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def timed(fn: Callable, repeats: int):
    """``(result, seconds)``: the best of ``repeats`` runs of ``fn()``."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def make_clip(path: Path, *, size: tuple[int, int], seconds: float, fps: float) -> Path:
    """A synthetic camera clip (an skimage photo filmed by a moving camera), H.264 crf 23."""
    frames = render_camera_clip(load_source("astronaut"), num_frames=int(seconds * fps), size=size, seed=0)
    return encode_video(path, frames, fps=fps, crf=23)


def steps_in_memory(video: Path, sampling, batch_size: int) -> tuple[list[np.ndarray], int]:
    """The batches ``extract_video`` would feed, decoded up front: ``([B, (L,) H, W, 3] ...], frames)``."""
    with open_video(video) as v:
        plan = step_plan(sampling, v.info, v.timestamps())
        decoded = dict(zip(*next(v.frames(np.unique(plan), batch_size=10_000))))
    steps = np.stack([np.stack([decoded[i] for i in step]) for step in plan])
    if plan.shape[1] == 1:
        steps = steps[:, 0]
    per_batch = max(1, batch_size // plan.shape[1])
    return [steps[i : i + per_batch] for i in range(0, len(steps), per_batch)], plan.size


def best_interleaved(runs: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Best seconds of each of ``runs``, run in turn ``repeats`` times (round robin, so that a
    change in the machine's load affects every run alike)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for label, fn in runs.items():
            best[label] = min(best[label], timed(fn, 1)[1])
    return best


def flops_per_step(extractor: Extractor, batch: np.ndarray) -> float:
    """FLOPs (2 x multiply-adds of convolutions and matrix products) of one step, counted by
    ``torch.utils.flop_counter`` on the first step of ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        extractor(batch[:1])
    return float(counter.get_total_flops())


# ---- 1 and 2: efficiency per extractor, decode once ------------------------------------------


def measure(extractor: Extractor, video: Path, sampling, *, batch_size: int, repeats: int) -> dict:
    """One extractor on ``video``: ``frames`` (sampled), ``steps``, best seconds of the bare
    ``model`` on the frames in memory and of the ``pipeline`` with ``prefetch`` 0 and 2
    (``pipe0``, ``pipe2``), and the in-memory ``batches``."""
    batches, frames = steps_in_memory(video, sampling, batch_size)
    extractor(batches[0][:1])  # warm-up
    best = best_interleaved(
        {
            "model": lambda: [extractor(b) for b in batches],
            **{
                f"pipe{p}": lambda p=p: extract_video(
                    video, [extractor], sampling=sampling, batch_size=batch_size, prefetch=p
                )
                for p in (0, 2)
            },
        },
        repeats,
    )
    return {"frames": frames, "steps": sum(len(b) for b in batches), "batches": batches, **best}


def efficiency_section(args, video: Path, *, title: str) -> None:
    """Sections 1 and 2 for ``video`` on the CPU; prints a table and the decode-once ratio."""
    extractors = {name: create_extractor(name, weights="random:0") for name in JOBS}
    samplings = {name: parse_sampling(s) for name, s in JOBS.items()}
    print(f"\n{title}")
    print(
        f"{'extractor':<16}{'sampling':<12}{'frames':>7}{'model f/s':>11}{'pipe f/s':>12}{'pipe f/s':>12}"
        f"{'eff.':>7}{'eff.':>7}"
    )
    print(f"{'':<46}{'prefetch 0':>12}{'prefetch 2':>12}{'pf 0':>7}{'pf 2':>7}")
    separate_total, worst = 0.0, float("inf")
    for name, extractor in extractors.items():
        m = measure(extractor, video, samplings[name], batch_size=args.batch_size, repeats=args.repeats)
        n = m["frames"]
        separate_total += m["pipe2"]
        worst = min(worst, m["model"] / m["pipe2"])
        print(
            f"{name:<16}{JOBS[name]:<12}{n:>7}{n / m['model']:>11.1f}{n / m['pipe0']:>12.1f}{n / m['pipe2']:>12.1f}"
            f"{m['model'] / m['pipe0']:>7.2f}{m['model'] / m['pipe2']:>7.2f}"
        )
    verdict = "met" if worst >= EFFICIENCY_GOAL else "NOT met"
    print(f"efficiency goal >= {EFFICIENCY_GOAL} with prefetch 2: {verdict} (lowest {worst:.2f})")

    _, once_s = timed(
        lambda: extract_video(
            video, list(extractors.values()), sampling=list(samplings.values()), batch_size=args.batch_size
        ),
        args.repeats,
    )

    def decode_all():
        with open_video(video) as v:
            return sum(len(i) for i, _ in v.frames(None, batch_size=args.batch_size))

    n_decoded, decode_s = timed(decode_all, args.repeats)
    print(f"decoding alone: {n_decoded / decode_s:.0f} frames/s")
    print(
        f"decode once: one pass feeding all {len(extractors)} extractors {once_s:.2f} s vs one pass per "
        f"extractor {separate_total:.2f} s -> ratio {once_s / separate_total:.2f} (lower is better)"
    )


# ---- 3: bf16 vs fp32 -------------------------------------------------------------------------


def photo_batch(short_side: int) -> np.ndarray:
    """Every skimage source photo resized to ``short_side`` x ``4/3 short_side`` (aspect ratio
    not kept, so they stack): uint8 ``[N, H, W, 3]``."""
    size = (short_side, short_side * 4 // 3)
    photos = [torch.from_numpy(load_source(name)).permute(2, 0, 1)[None].float() for name in SOURCE_PHOTOS]
    resized = [F.interpolate(p, size=size, mode="bilinear", antialias=True, align_corners=False) for p in photos]
    return torch.cat(resized).permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


def calibrate_batchnorm(extractor: Extractor, photos: np.ndarray) -> None:
    """Set every BatchNorm's running statistics to those of ``photos`` (one photo per step).

    A proxy for trained weights when none are available: activations are normalised layer by
    layer as in a trained network, instead of growing through the residual stages as they do
    with torchvision's random initialisation."""
    model = extractor.model
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration steps
    model.train()
    with torch.no_grad():
        for photo in photos:
            model(extractor.preprocess(photo[None]))
    model.eval()


def precision_section(args) -> None:
    """bf16 / channels-last vs fp32 on the CPU: frames/s and feature error, ResNet-50."""
    photos = photo_batch(args.photo_side)
    try:
        reference = create_extractor("resnet50", weights=args.weights)
    except WeightsError as exc:
        print(f"\nbf16 vs fp32: skipped: weights {args.weights!r} unavailable ({str(exc).splitlines()[0]})")
        return
    print(
        f"\nbf16 vs fp32 on the CPU: resnet50 (weights {args.weights}), {len(photos)} skimage photos at "
        f"{photos.shape[2]}x{photos.shape[1]}, batch {args.batch_size}"
    )
    print(
        f"{'precision':<10}{'layout':<15}{'frames/s':>9}{'speed vs fp32':>15}{'rel. error median':>19}"
        f"{'max':>10}{'GFLOP/s':>9}"
    )
    batches = [photos[i : i + args.batch_size] for i in range(0, len(photos), args.batch_size)]
    flops = flops_per_step(reference, photos)
    want = np.concatenate([reference(b) for b in batches])
    base_s = None
    for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        extractor = create_extractor("resnet50", weights=args.weights, precision=precision, channels_last=channels_last)
        extractor(photos[:1])  # warm-up
        outputs, seconds = timed(
            lambda extractor=extractor: np.concatenate([extractor(b) for b in batches]), args.repeats
        )
        base_s = base_s or seconds
        errors = relative_errors(outputs, want)
        print(
            f"{precision:<10}{'channels-last' if channels_last else 'standard':<15}{len(photos) / seconds:>9.2f}"
            f"{base_s / seconds:>15.2f}{np.median(errors):>19.2e}{errors.max():>10.2e}"
            f"{flops * len(photos) / seconds / 1e9:>9.1f}"
        )
    if args.weights.startswith("random"):
        # Random weights understate or overstate the error of trained ones: a second proxy.
        fp32 = create_extractor("resnet50", weights=args.weights)
        calibrate_batchnorm(fp32, photos)
        bf16 = create_extractor("resnet50", weights=args.weights, precision="bf16")
        bf16.model.load_state_dict(fp32.model.state_dict())
        errors = relative_errors(bf16(photos), fp32(photos))
        print(
            f"bf16 error with BatchNorm statistics calibrated on the photos (normalised activations; "
            f"likely pessimistic): median {np.median(errors):.2e}, max {errors.max():.2e}"
        )
    print("relative error: per photo ||f_bf16 - f_fp32|| / ||f_fp32|| over the 7680 features")


def relative_errors(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per row ``||approx - exact|| / ||exact||``."""
    return np.linalg.norm(approx - exact, axis=1) / np.linalg.norm(exact, axis=1)


# ---- 4: GPU ----------------------------------------------------------------------------------


def fp16_peak_tflops(name: str, override: float | None) -> float | None:
    """The dense fp16 tensor-core peak of GPU ``name`` (TFLOP/s), or ``override``; None if unknown."""
    if override:
        return override
    return next((peak for key, peak in FP16_PEAK_TFLOPS if key in name), None)


def gpu_section(
    args,
    workdir: Path,
    *,
    device: str = "cuda",
    precisions: Sequence[str] = ("fp32", "bf16", "fp16"),
    size: tuple[int, int] = GPU_SIZE,
    batch_size: int = GPU_BATCH,
) -> None:
    """Frames/s per extractor and precision at 540p on ``device``, pipeline efficiency, and the
    fp16 roofline fraction. Prints "skipped: no GPU" without CUDA (for ``device="cuda"``)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("\nGPU: skipped: no GPU")
        return
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = fp16_peak_tflops(name, args.peak_tflops)
    video = make_clip(workdir / "gpu540p.mp4", size=size, seconds=args.gpu_seconds, fps=args.fps)
    print(
        f"\nGPU {name}: {size[0]}x{size[1]}, {args.gpu_seconds} s at {args.fps} fps, batch {batch_size}, "
        f"channels-last for bf16/fp16; fp16 peak {peak or 'unknown'} TFLOP/s"
    )
    print(
        f"{'extractor':<16}{'precision':<10}{'model f/s':>10}{'pipe f/s pf0':>13}{'pipe f/s pf2':>13}"
        f"{'eff. pf2':>9}{'TFLOP/s':>9}{'of peak':>8}"
    )
    for extractor_name, sampling_text in JOBS.items():
        for precision in precisions:
            extractor = create_extractor(
                extractor_name,
                weights="random:0",
                device=device,
                precision=precision,
                channels_last=precision != "fp32",
            )
            m = measure(extractor, video, parse_sampling(sampling_text), batch_size=batch_size, repeats=args.repeats)
            n = m["frames"]
            tflops = flops_per_step(extractor, m["batches"][0]) * m["steps"] / m["model"] / 1e12
            fraction = f"{tflops / peak:>8.2f}" if peak and precision == "fp16" else f"{'-':>8}"
            print(
                f"{extractor_name:<16}{precision:<10}{n / m['model']:>10.1f}{n / m['pipe0']:>13.1f}"
                f"{n / m['pipe2']:>13.1f}{m['model'] / m['pipe2']:>9.2f}{tflops:>9.2f}{fraction}"
            )
            del extractor, m
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--photo-side", type=int, default=128, help="short side of the photos for bf16 vs fp32")
    parser.add_argument("--weights", default="random:0", help="resnet50 weights for bf16 vs fp32 (e.g. imagenet)")
    parser.add_argument("--gpu-seconds", type=float, default=4.0, help="length of the 540p clip (GPU only)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense fp16 peak, if not in the table"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        video = make_clip(Path(tmp) / "bench.mp4", size=(args.width, args.height), seconds=args.seconds, fps=args.fps)
        efficiency_section(
            args,
            video,
            title=f"CPU: {args.width}x{args.height}, {args.seconds} s at {args.fps} fps, "
            f"batch {args.batch_size}, random weights",
        )
        precision_section(args)
        gpu_section(args, Path(tmp))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
