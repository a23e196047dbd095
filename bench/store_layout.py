"""Feature-store layout: bytes on disk and read throughput, as ratios measured in one run.

For CNN-like features of four shapes -- per-frame matrices of 512, 4096 and 7680 dims
(240 steps) and pooled vectors of 150,000 dims (2 steps) -- compare

* ``zarr f32``: the store's layout (``FeatureStore.write_video`` / ``read_video``),
* ``zarr f16``: the same with a float16 feature set,
* ``npy``: one plain ``.npy`` file per video (VSFA style; ``np.save`` / ``np.load``),
* alternatives to the default codec and chunking (``--variants``), through the same store
  API with the codec/chunk constants of :mod:`feature_store._format` patched.

Reported per video: bytes on disk (all files, metadata included), write MB/s, and read
throughput both from the page cache ("hot") and after ``posix_fadvise(DONTNEED)`` has dropped
the files from it ("cold": the disk of this machine). MB/s always counts float32 megabytes
delivered to the caller (steps x dims x 4 bytes), so layouts compare on equal work. Reads are
timed round-robin over the layouts, best of ``--repeats`` rounds (the least disturbed by
other work on a shared machine, which then hits all layouts alike).

Synthetic data mimic pooled CNN activations: a few smooth latent factors over time mixed into
all channels, per-channel scale and offset, independent noise, then ReLU (~40% exact zeros).

    python bench/store_layout.py [--quick] [--variants] [--mb-per-case 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store import FeatureStore  # noqa: E402
from feature_store import _format as format_mod  # noqa: E402

logger = logging.getLogger("bench.store_layout")

# name -> (steps, dims)
CASES = {
    "frames-512": (240, 512),
    "frames-4096": (240, 4096),
    "frames-7680": (240, 7680),
    "pooled-150k": (2, 150_000),
}
ZERO_FRACTION = 0.40


@dataclass(frozen=True)
class Layout:
    name: str
    kind: str  # "zarr" or "npy"
    dtype: str = "float32"
    codec: dict | None = None  # None: the store's default
    chunk_steps: int | None = None  # None: the store's default


DEFAULT_LAYOUTS = [
    Layout("zarr f32", "zarr"),
    Layout("zarr f16", "zarr", dtype="float16"),
    Layout("npy f32", "npy"),
]
VARIANT_LAYOUTS = [
    Layout("zarr f32 lz4", "zarr", codec={"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}),
    Layout("zarr f32 zstd3", "zarr", codec={"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}),
    Layout("zarr f32 zstd5", "zarr", codec={"cname": "zstd", "clevel": 5, "shuffle": "shuffle"}),
    Layout("zarr f32 zstd5-bit", "zarr", codec={"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle"}),
    Layout("zarr f32 raw", "zarr", codec={"cname": "zstd", "clevel": 0, "shuffle": "noshuffle"}),
    Layout("zarr f32 chunk64", "zarr", chunk_steps=64),
    Layout("zarr f16 lz4", "zarr", dtype="float16", codec={"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}),
]


def cnn_like(rng: np.random.Generator, steps: int, dims: int) -> np.ndarray:
    """Pooled-activation-like features, float32 [steps, dims], ~40% exact zeros.

    8 AR(1) latent factors (rho 0.95 between consecutive steps) mixed into every channel,
    plus independent noise; per-channel lognormal scale and normal offset; ReLU.
    """
    n_factors = 8
    z = np.empty((steps, n_factors), np.float32)
    z[0] = rng.standard_normal(n_factors)
    for t in range(1, steps):
        z[t] = 0.95 * z[t - 1] + np.sqrt(1 - 0.95**2) * rng.standard_normal(n_factors)
    mix = rng.standard_normal((n_factors, dims), dtype=np.float32) / np.sqrt(n_factors)
    pre = 0.8 * (z @ mix) + 0.6 * rng.standard_normal((steps, dims), dtype=np.float32)
    offset = rng.normal(0.0, 0.5, dims).astype(np.float32)
    scale = rng.lognormal(0.0, 0.7, dims).astype(np.float32)
    pre += offset
    # shift so that ZERO_FRACTION of the values fall below zero
    pre -= np.quantile(pre[:: max(1, steps // 8)], ZERO_FRACTION)
    return np.maximum(pre * scale, 0.0, dtype=np.float32)


def drop_from_page_cache(root: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under ``root``."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def dir_bytes(root: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(root) for f in fs)


@contextlib.contextmanager
def patched(layout: Layout):
    with contextlib.ExitStack() as stack:
        if layout.codec is not None:
            stack.enter_context(mock.patch.object(format_mod, "CODEC", layout.codec))
        if layout.chunk_steps is not None:
            stack.enter_context(mock.patch.object(format_mod, "MAX_CHUNK_STEPS", layout.chunk_steps))
        yield


def best(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def prepare(layout: Layout, videos: list[np.ndarray], root: Path):
    """Write ``videos`` in ``layout`` under ``root``; return (write seconds, read function)."""
    ids = [f"video_{i:04d}.mp4" for i in range(len(videos))]
    if layout.kind == "npy":
        root.mkdir()
        paths = [root / f"{i}_features.npy" for i in range(len(videos))]

        def write():
            for p, x in zip(paths, videos):
                np.save(p, x)

        def read():
            return [np.load(p, allow_pickle=False) for p in paths]

    else:
        fs = FeatureStore(root)
        sid = fs.ensure_feature_set(
            spec={"name": "bench", "dims": int(videos[0].shape[1])},
            sampling={"strategy": "all"},
            dtype=layout.dtype,
        )
        prov = {"set": {"code": "bench"}, "video": {}}

        def write():
            with patched(layout):
                for vid, x in zip(ids, videos):
                    fs.write_video(sid, vid, x, provenance=prov, overwrite=True)

        def read():
            return [fs.read_video(sid, vid) for vid in ids]

    t_write = best(write, 1)
    for got, x in zip(read(), videos):
        if layout.dtype == "float32":
            np.testing.assert_array_equal(got, x)
        else:
            np.testing.assert_allclose(got, x, rtol=2**-11, atol=2**-24)
    return t_write, read


def run_case(layouts: list[Layout], videos: list[np.ndarray], tmp: Path, repeats: int) -> list[dict]:
    """Write every layout, then time the reads round-robin (layout after layout, ``repeats``
    rounds, best of each), so that load from other processes hits all layouts alike."""
    roots = [tmp / layout.name.replace(" ", "_") for layout in layouts]
    prepared = [prepare(layout, videos, root) for layout, root in zip(layouts, roots)]
    hot = [float("inf")] * len(layouts)
    cold = [float("inf")] * len(layouts)
    for _ in range(repeats):
        for k, (root, (_w, read)) in enumerate(zip(roots, prepared)):
            hot[k] = min(hot[k], best(read, 1))
            cold[k] = min(cold[k], best(read, 1, before=lambda root=root: drop_from_page_cache(root)))
    out = []
    for k, layout in enumerate(layouts):
        out.append(
            {
                "layout": layout.name,
                "bytes_per_video": dir_bytes(roots[k]) / len(videos),
                "write_s": prepared[k][0],
                "hot_s": hot[k],
                "cold_s": cold[k],
            }
        )
        shutil.rmtree(roots[k])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb-per-case", type=float, default=48.0, help="float32 megabytes of features per case (sets the video count)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="also compare other codecs and chunk shapes")
    parser.add_argument("--quick", action="store_true", help="8 MB per case, two rounds")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--tmp", default=None, help="directory for the stores (default: $TMPDIR)")
    args = parser.parse_args()
    if args.quick:
        args.mb_per_case, args.repeats = 8.0, 2
    logging.basicConfig(level=logging.WARNING)
    layouts = DEFAULT_LAYOUTS + (VARIANT_LAYOUTS if args.variants else [])

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for case in args.cases:
            steps, dims = CASES[case]
            mb_video = steps * dims * 4 / 1e6
            n = int(min(200, max(4, round(args.mb_per_case / mb_video))))
            rng = np.random.default_rng(0)
            videos = [cnn_like(rng, steps, dims) for _ in range(n)]
            zeros = float(np.mean([np.mean(v == 0) for v in videos]))
            print(
                f"{case}: {n} videos of [{steps}, {dims}] ({mb_video:.2f} MB float32 each, {zeros:.0%} zeros)",
                flush=True,
            )
            case_dir = Path(tmp) / case
            case_dir.mkdir()
            for out in run_case(layouts, videos, case_dir, args.repeats):
                out.update(case=case, n=n, mb_video=mb_video)
                rows.append(out)

    header = (
        f"{'case':<12} {'layout':<19} {'MB/video':>9} {'vs npy':>7} {'write MB/s':>10} "
        f"{'hot MB/s':>9} {'hot vid/s':>9} {'cold MB/s':>9} {'cold vid/s':>10} "
        f"{'hot vs npy':>10} {'cold vs npy':>11}"
    )
    print()
    print(header)
    print("-" * len(header))
    for case in args.cases:
        case_rows = [r for r in rows if r["case"] == case]
        ref = next(r for r in case_rows if r["layout"] == "npy f32")
        for r in case_rows:
            mb = r["mb_video"] * r["n"]
            print(
                f"{case:<12} {r['layout']:<19} {r['bytes_per_video'] / 1e6:>9.3f} "
                f"{r['bytes_per_video'] / ref['bytes_per_video']:>7.2f} "
                f"{mb / r['write_s']:>10.0f} {mb / r['hot_s']:>9.0f} "
                f"{r['n'] / r['hot_s']:>9.1f} {mb / r['cold_s']:>9.0f} "
                f"{r['n'] / r['cold_s']:>10.1f} "
                f"{ref['hot_s'] / r['hot_s']:>10.2f} {ref['cold_s'] / r['cold_s']:>11.2f}"
            )
    print(
        "\nMB = float32 megabytes delivered (steps x dims x 4); 'vs npy' columns are ratios "
        "(size: lower is better; speed: higher is better)."
    )


if __name__ == "__main__":
    main()
