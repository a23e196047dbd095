"""Peak memory of `vqa fit` against the number of videos (docs/analysis.md, "Memory").

    python bench/fit_memory.py [--sizes 500 2000] [--steps 128] [--dims 7680] [--heads svr vsfa]

For each size N: writes a synthetic store of N videos of [steps, dims] float16 through
`FeatureStore` (random features, MOS and 50 groups; timed), then runs `vqa fit` once per head
in a fresh process and reads that process's peak RSS (`ru_maxrss`). The runs are short on
purpose (A2INet protocol, one split, one epoch for sequence heads): memory is decided by how
the features are read, not by how long the head trains. Prints, per head, the peak RSS at
each size, the RSS added per video between the sizes, and the growth exponent
log(RSS_2 / RSS_1) / log(N_2 / N_1) (1: linear in N; 0: independent of N), next to the
store's size on disk and what all features would take in memory as float16 and float32.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store import FeatureStore  # noqa: E402

# Runs `vqa fit` and reports this process's peak resident memory (kB on Linux) on stderr.
CHILD = """
import resource, sys
from flows.cli import main
code = main(sys.argv[1:])
print(f"MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""
HEAD_ARGS = {
    "svr": [],
    "vsfa": ["--head-param", "epochs=1", "--head-param", "batch_size=16"],
}


def write_store(root: Path, n: int, steps: int, dims: int) -> tuple[Path, Path, float]:
    """A store of ``n`` random [steps, dims] float16 videos and its manifest; returns the
    paths and the seconds writing took."""
    if root.exists():
        shutil.rmtree(root)
    store = FeatureStore(root / "store.zarr", create=True)
    spec, sampling = {"name": "synthetic", "dims": dims}, {"strategy": "uniform", "value": steps}
    set_id = store.ensure_feature_set(spec=spec, sampling=sampling, dtype="float16")
    rng = np.random.default_rng(0)
    lines = ["video_id,path,mos,group"]
    started = time.perf_counter()
    for i in range(n):
        x = rng.standard_normal((steps, dims), dtype=np.float32)
        store.write_video(
            set_id, f"v{i:06d}", x, provenance={"set": {"spec": spec, "sampling": sampling}, "video": {"i": i}}
        )
        lines.append(f"v{i:06d},v{i:06d}.mp4,{rng.uniform(1, 5):.4f},g{i % 50}")
    seconds = time.perf_counter() - started
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return root / "store.zarr", manifest, seconds


def peak_rss_fit(store: Path, manifest: Path, out: Path, head: str) -> tuple[float, float]:
    """Peak RSS (bytes) and wall seconds of one `vqa fit --head head` in a fresh process."""
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        "fit",
        "--store",
        str(store),
        "--manifest",
        str(manifest),
        "--features",
        "synthetic",
        "--head",
        head,
        "--protocol",
        "a2inet",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--overwrite",
        "-q",
        *HEAD_ARGS[head],
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"vqa fit --head {head} failed:\n{proc.stderr[-3000:]}")
    kb = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return kb[-1] * 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--dims", type=int, default=7680)
    parser.add_argument("--heads", nargs="+", default=["svr", "vsfa"], choices=sorted(HEAD_ARGS))
    parser.add_argument("--root", type=Path, default=Path("/tmp/vqa-fit-memory"))
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    args = parser.parse_args()

    gib = 2.0**30
    rss: dict[str, list[float]] = {h: [] for h in args.heads}
    for n in args.sizes:
        root = args.root / f"n{n}"
        store, manifest, write_s = write_store(root, n, args.steps, args.dims)
        on_disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        raw16 = n * args.steps * args.dims * 2
        print(
            f"N={n}: store written in {write_s:.0f} s ({write_s / n * 1000:.0f} ms/video), "
            f"{on_disk / gib:.2f} GiB on disk; all features in memory: {raw16 / gib:.2f} GiB float16, "
            f"{2 * raw16 / gib:.2f} GiB float32",
            flush=True,
        )
        for head in args.heads:
            peak, seconds = peak_rss_fit(store, manifest, root / f"fit-{head}", head)
            rss[head].append(peak)
            print(
                f"  vqa fit --head {head:<5} peak RSS {peak / gib:6.2f} GiB  (peak / N: {peak / n / 2**20:6.2f} MiB, "
                f"interpreter and torch included)  {seconds:6.0f} s",
                flush=True,
            )
        if not args.keep:
            shutil.rmtree(root)

    if len(args.sizes) >= 2:
        n1, n2 = args.sizes[0], args.sizes[-1]
        print(f"\ngrowth from N={n1} to N={n2}:")
        for head, values in rss.items():
            r1, r2 = values[0], values[-1]
            exponent = math.log(r2 / r1) / math.log(n2 / n1)
            per_video = (r2 - r1) / (n2 - n1)
            at_5000 = r2 + per_video * (5000 - n2)
            print(
                f"  {head:<5} RSS added per video {per_video / 2**20:7.3f} MiB  growth exponent {exponent:5.2f}  "
                f"(linear extrapolation to 5,000 videos: {at_5000 / gib:.2f} GiB)"
            )


if __name__ == "__main__":
    main()
