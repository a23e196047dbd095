"""The scalable SVR (Nystroem + liblinear) against the exact RBF SVR: accuracy where both run,
fit time and memory up to LSVQ's 28,000 training videos.

    python bench/svr_scale.py [--parts parity,real,scale] [--parity-n 2000,6000]
                              [--scale-n 3500,7000,14000,28000] [--components 512,1024,2048]

parity  synthetic pooled features [n, 4,096] float32 driven by k latent factors through a
        softplus (non-negative, correlated, as pooled CNN features are) plus noise, and a MOS
        that is a non-linear function of the factors plus noise. Two regimes: k = 32 (low rank)
        and k = 256 (higher rank: the kernel spectrum decays slowly, the hard case for any
        rank-m approximation). 5-fold CV: test SRCC of ``SVRHead`` (libsvm) and of
        ``NystroemSVRHead`` per number of landmarks m, their difference, the agreement of the two
        predictions (SRCC), and fit times. fmc preset (the ``svr`` head).
real    real covariates and MOS: the YouTube-UGC metadata table in /work/shared/labels (log
        pixels, frame rate, resolution class, content category), the only real labelled data on
        this machine with a learnable MOS (KoNViD-1k's metadata predict its MOS at SRCC ~0.07);
        low-dimensional, so it checks the real-target side, not the 4,096-dim side. Same 5-fold
        comparison with m below the training size.
scale   fit time (wall and CPU) and peak RSS of ``NystroemSVRHead()`` (defaults: m = 2,048, fmc)
        on [n, 4,096] float32, each n in a fresh process (peak RSS counted from just before the
        fit, the data included); growth exponent of the fit time in n.

Prints tables and one JSON line per part (``RESULT {...}``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regressors.svr import SVRHead  # noqa: E402
from regressors.svr_scalable import NystroemSVRHead  # noqa: E402

DIMS = 4096
LABELS = Path("/work/shared/labels")


def synthetic(n: int, *, k: int, d: int = DIMS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X [n, d]`` float32 and a learnable MOS ``y [n]``, built in row blocks (peak ~ X itself)."""
    rng = np.random.default_rng(seed)
    A = (rng.normal(size=(k, d)) / np.sqrt(k)).astype(np.float32)
    w, v = rng.normal(size=k), rng.normal(size=k)
    X = np.empty((n, d), dtype=np.float32)
    y = np.empty(n)
    for start in range(0, n, 4096):
        rows = slice(start, min(n, start + 4096))
        z = rng.normal(size=(rows.stop - start, k)).astype(np.float32)
        X[rows] = np.logaddexp(0, z @ A) + 0.3 * rng.standard_normal(size=(rows.stop - start, d), dtype=np.float32)
        y[rows] = np.tanh(z @ w / np.sqrt(k)) + 0.5 * np.sin(2 * z @ v / np.sqrt(k))
    return X, 3 + 0.8 * y + 0.16 * rng.normal(size=n)


def real_metadata() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, X [n, p], MOS [n]) from the shared metadata table; rows with missing values dropped."""
    sets = []
    ugc = LABELS / "youtube_ugc_metadata.csv"
    if ugc.is_file():
        rows = list(csv.DictReader(ugc.open()))
        cats = sorted({r["category"] for r in rows})
        X, y = [], []
        for r in rows:
            try:
                w, h, fps = float(r["width"]), float(r["height"]), float(r["framerate"])
                feats = [math.log(w * h), fps, float(r["resolution"])]
                mos = float(r["MOSFull"])
            except ValueError:
                continue
            if all(map(math.isfinite, feats + [mos])):
                X.append(feats + [float(r["category"] == c) for c in cats])
                y.append(mos)
        sets.append(("youtube-ugc", np.array(X), np.array(y)))
    return [(name, X, y) for name, X, y in sets if len(y) >= 100]


def _srcc(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def compare(X, y, *, components, folds=5, seed=0) -> dict:
    """5-fold test SRCC of the exact SVR and of the Nystroem SVR per m (fmc preset)."""
    from sklearn.model_selection import KFold

    rows = {"exact": {"srcc": [], "fit_s": []}}
    rows.update({m: {"srcc": [], "fit_s": [], "agree": [], "delta": []} for m in components})
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        t = time.perf_counter()
        exact = SVRHead().fit(X[train], y[train]).predict(X[test])
        rows["exact"]["fit_s"].append(time.perf_counter() - t)
        rows["exact"]["srcc"].append(_srcc(exact, y[test]))
        for m in components:
            t = time.perf_counter()
            fast = NystroemSVRHead(n_components=m).fit(X[train], y[train]).predict(X[test])
            r = rows[m]
            r["fit_s"].append(time.perf_counter() - t)
            r["srcc"].append(_srcc(fast, y[test]))
            r["delta"].append(r["srcc"][-1] - rows["exact"]["srcc"][-1])
            r["agree"].append(_srcc(fast, exact))
    out = {}
    for k, r in rows.items():
        out[str(k)] = {key: float(np.mean(v)) for key, v in r.items()}  # means over the folds
        if k != "exact":
            out[str(k)]["max_abs_delta"] = float(np.max(np.abs(r["delta"])))
    return out


def print_compare(title: str, n: int, result: dict) -> None:
    ex = result["exact"]
    print(f"\n{title}: n={n} (5-fold, train {int(n * 0.8)}), exact SVR: SRCC {ex['srcc']:.4f}, fit {ex['fit_s']:.1f} s")
    print(f"  {'m':>6} {'SRCC':>7} {'mean d':>7} {'max|d|':>7} {'agree':>6} {'fit s':>6}")
    for m, r in result.items():
        if m != "exact":
            print(
                f"  {m:>6} {r['srcc']:7.4f} {r['delta']:+7.4f} {r['max_abs_delta']:7.4f} {r['agree']:6.4f} "
                f"{r['fit_s']:6.1f}"
            )


def part_parity(sizes, components) -> dict:
    out = {}
    for k in (32, 256):
        for n in sizes:
            X, y = synthetic(n, k=k, seed=n + k)
            comps = [m for m in components if m < 0.8 * n]
            res = compare(X, y, components=comps)
            print_compare(f"synthetic k={k}", n, res)
            out[f"k{k}-n{n}"] = res
    return out


def part_real(components) -> dict:
    out = {}
    for name, X, y in real_metadata():
        comps = sorted({m for m in (32, 64, 128) if m < 0.8 * len(y)} | {m for m in components if m < 0.8 * len(y)})
        res = compare(X, y, components=comps)
        print_compare(f"real metadata {name} ({X.shape[1]} covariates)", len(y), res)
        out[name] = res
    return out


def _rss_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _scale_child(n: int, queue) -> None:
    X, y = synthetic(n, k=32, seed=1)
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) here: the fit's own
    before = _rss_gib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    head = NystroemSVRHead().fit(X, y)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    queue.put(
        {
            "n": n,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_gib": _rss_gib("VmHWM"),
            "data_rss_gib": before,
            "n_iter": head.n_iter_,
            "converged": head.converged_,
            "rank": head.rank_,
        }
    )


def part_scale(sizes) -> dict:
    ctx = mp.get_context("spawn")
    rows = []
    print(
        f"\nNystroemSVRHead() fit on [n, {DIMS}] float32 (m=2048, fmc), one fresh process per n; "
        f"{len(os.sched_getaffinity(0))} usable cores"
    )
    print(f"  {'n':>6} {'wall s':>7} {'cpu s':>7} {'peak RSS GiB':>13} {'(before fit)':>12} {'passes':>6}")
    for n in sizes:
        queue = ctx.Queue()
        proc = ctx.Process(target=_scale_child, args=(n, queue))
        proc.start()
        row = queue.get()
        proc.join()
        rows.append(row)
        print(
            f"  {n:>6} {row['wall_s']:7.1f} {row['cpu_s']:7.1f} {row['peak_rss_gib']:13.2f} "
            f"{row['data_rss_gib']:12.2f} {row['n_iter']:>6}"
        )
    exponents = {}
    if len(rows) > 1:
        ns = np.log([r["n"] for r in rows])
        for key in ("wall_s", "cpu_s"):
            exponents[key] = float(np.polyfit(ns, np.log([r[key] for r in rows]), 1)[0])
        print(
            f"  fit time grows as n^{exponents['wall_s']:.2f} (wall), n^{exponents['cpu_s']:.2f} (CPU), "
            "least squares on log-log"
        )
    return {"rows": rows, "exponents": exponents}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="parity,real,scale")
    parser.add_argument("--parity-n", default="2000,6000")
    parser.add_argument("--scale-n", default="3500,7000,14000,28000")
    parser.add_argument("--components", default="512,1024,2048")
    args = parser.parse_args()
    parts = args.parts.split(",")
    components = [int(m) for m in args.components.split(",")]
    if "parity" in parts:
        print("RESULT " + json.dumps({"parity": part_parity([int(n) for n in args.parity_n.split(",")], components)}))
    if "real" in parts:
        print("RESULT " + json.dumps({"real": part_real(components)}))
    if "scale" in parts:
        print("RESULT " + json.dumps({"scale": part_scale([int(n) for n in args.scale_n.split(",")])}))


if __name__ == "__main__":
    main()
