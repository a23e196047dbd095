"""Does fine-tuning on image quality make the ``unique`` features better for an SVR? Before/after, one run.

    synthetic IQA set (13 scikit-image photos x views x 5 KADID-style distortions x 5 levels, PNG)
      |-- photos A (7): fine-tune recipe quality-resnet (ResNet-34), validation = 20 % of A's photos
      '-- photos B (6, never seen in fine-tuning): unique extractor features [N_B, 1920]
            with the start weights ("before") and with the fine-tuned checkpoint ("after")
            -> SVRHead (FMC preset) under grouped repeated k-fold CV on B -> median SROCC, PLCC

ImageNet weights cannot be downloaded on this machine (offline), so the start is ``random:0``:
"before" is a randomly initialised ResNet-34, not ImageNet's. Small on purpose (2 shared
cores): 96x72 images, 64 px training crops, a few epochs, one intra-op thread (two threads
spin against other processes on a busy 2-core machine).

    python bench/finetune_gain.py [--epochs 12 --views 2 --image-size 64 --threads 1 --keep DIR]
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

from pipeline.extractors import create_extractor  # noqa: E402
from pipeline.finetune import finetune, load_image  # noqa: E402
from pipeline.synthetic import list_sources, make_iqa_dataset  # noqa: E402
from regressors.protocols import evaluate, random_splits, repeated_kfold_splits  # noqa: E402
from regressors.svr import SVRHead  # noqa: E402
from vqa_core.manifest import read_manifest  # noqa: E402

START = "random:0"  # ImageNet weights are not downloadable here


def unique_features(weights: str, paths: list[Path], *, batch: int = 32) -> np.ndarray:
    """``unique`` features ``[N, 1920]`` of equally sized images (whole image, native resolution)."""
    extractor = create_extractor("unique", weights=weights, device="cpu")
    rows = [extractor(np.stack([load_image(p) for p in paths[i : i + batch]])) for i in range(0, len(paths), batch)]
    return np.concatenate(rows)


def svr_scores(X: np.ndarray, y: np.ndarray, groups: list[str], *, folds: int, repeats: int) -> dict:
    splits = repeated_kfold_splits(len(y), groups=groups, n_splits=folds, n_repeats=repeats, random_state=0)
    return evaluate(SVRHead(preset="fmc"), X, y, splits=splits, progress=False).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--views", type=int, default=2, help="views of each photo (more images per photo)")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--image-size", type=int, default=64, help="training crop (px)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's 1e-4")
    parser.add_argument("--folds", type=int, default=3, help="grouped CV folds on the held-out photos")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", help="work in this folder instead of a temporary one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline.finetune").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        manifest = work / "iqa" / "manifest.csv"
        if not manifest.exists():
            make_iqa_dataset(
                work / "iqa",
                n_sources=len(list_sources()),
                views=args.views,
                size=(args.width, args.height),
                seed=0,
                progress=False,
            )
        entries = read_manifest(manifest, require_mos=True)
        photos = list(dict.fromkeys(e.group for e in entries))
        held_out = set(photos[1::2])  # alternate photos: both parts mix colour and greyscale ones
        tune = [e for e in entries if e.group not in held_out]
        test = [e for e in entries if e.group in held_out]
        print(
            f"synthetic IQA set: {len(entries)} images ({args.width}x{args.height}) of {len(photos)} photos; "
            f"fine-tune on {len(tune)} images of {len(photos) - len(held_out)} photos, "
            f"evaluate on {len(test)} images of {len(held_out)} other photos: {', '.join(sorted(held_out))}"
        )
        print(f"start weights: {START} (ImageNet weights cannot be downloaded on this machine)")

        groups = [e.group for e in tune]
        train, val = random_splits(len(tune), groups=groups, test_size=0.2, n_repeats=1, random_state=0)[0]
        t0 = time.perf_counter()
        result = finetune(
            [e.path for e in tune],
            [e.mos for e in tune],
            train_idx=train,
            val_idx=val,
            groups=groups,
            out=work / "finetuned",
            recipe="quality-resnet",
            start=START,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            image_size=args.image_size,
            device="cpu",
            seed=0,
            progress=False,
        )
        tune_seconds = time.perf_counter() - t0
        for row in result.history:
            print(
                f"  epoch {row['epoch']}: train L1 {row['train_loss']:.3f}  val L1 {row['val_loss']:.3f}  "
                f"val SROCC {row['srocc'] if row['srocc'] is None else round(row['srocc'], 4)}  "
                f"({row['seconds']:.0f} s)"
            )
        print(
            f"fine-tuning: {len(train)} train / {len(val)} val images, best epoch {result.best_epoch}, "
            f"{tune_seconds:.0f} s"
        )

        paths = [e.path for e in test]
        y = np.array([e.mos for e in test])
        test_groups = [e.group for e in test]
        scores = {}
        for label, weights in (("before (random:0)", START), ("after fine-tuning", str(result.checkpoint))):
            X = unique_features(weights, paths)
            scores[label] = svr_scores(X, y, test_groups, folds=args.folds, repeats=args.repeats)

    print(
        f"\nSVR (FMC preset) on unique features of the {len(test)} held-out images, "
        f"{args.repeats} x {args.folds}-fold CV grouped by photo (median):"
    )
    print(f"  {'weights':<20} {'SROCC':>7} {'PLCC':>7}")
    for label, m in scores.items():
        print(f"  {label:<20} {m['srcc']:7.4f} {m['plcc']:7.4f}")
    before, after = (m["srcc"] for m in scores.values())
    print(f"  SROCC gain {after - before:+.4f}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
