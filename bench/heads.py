"""Stage-2 heads on the demo dataset: grouped-CV metrics side by side, training time per
epoch, and the fraction of training spent waiting for features read lazily from the store.

    python bench/heads.py [--data demo-output] [--repeats 5] [--epochs 15]

Builds the demo dataset and extracts (random weights unless ImageNet weights are cached)
the features each head needs, then runs `vqa fit` per head with the A2INet protocol (random
80/20 splits, grouped by source photo) and `vqa report`. Sequence heads use the papers' losses
and optimisers but fewer epochs, a larger learning rate and smaller widths so the run fits in
minutes on 2 CPU cores; the settings are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store import FeatureStore  # noqa: E402
from flows import prefect_env  # noqa: E402,F401
from flows.cli import main as vqa  # noqa: E402
from flows.extract import extract_flow  # noqa: E402
from flows.fit import load_features  # noqa: E402
from pipeline.synthetic import make_demo_dataset  # noqa: E402
from regressors.presets import make_head  # noqa: E402
from vqa_core.manifest import read_manifest  # noqa: E402

SAMPLING = "fps:4"


def heads(epochs: int) -> dict[str, tuple[list[str], dict]]:
    seq = {"epochs": epochs, "lr": 1e-3, "patience": epochs, "progress": False}
    return {
        "svr": (["unique"], {}),
        "vsfa": (["resnet50-vsfa"], seq),
        "a2inet": (["unique", "resnet50-vsfa"], {**seq, "module_params": {"d_model": 128}}),
        "dualpath": (["slowfast-tokens"], {**seq, "module_params": {"embed_dim": 32, "heads": 2}}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo-output", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()
    manifest = args.data / "data" / "manifest.csv"
    if not manifest.exists():
        manifest = make_demo_dataset(args.data / "data")
    store = args.data / "store"
    extractors = ["unique", "resnet50-vsfa", "slowfast-tokens"]
    extract_flow(
        manifest=str(manifest),
        store=str(store),
        extractors=extractors,
        weights={e: args.weights for e in extractors},
        sampling=SAMPLING,
        device="auto",
    )

    runs = args.data / "heads"
    table = heads(args.epochs)
    for head, (features, params) in table.items():
        out = runs / head
        cmd = [
            "fit",
            "--store",
            str(store),
            "--manifest",
            str(manifest),
            "--head",
            head,
            "--protocol",
            "a2inet",
            "--repeats",
            str(args.repeats),
            "--out",
            str(out),
            "--overwrite",
            "-q",
            *[f"--features={f}" for f in features],
            *[f"--head-param={k}={json.dumps(v)}" for k, v in params.items()],
        ]
        started = time.perf_counter()
        if vqa(cmd) != 0:
            raise SystemExit(f"vqa fit --head {head} failed")
        print(f"{head}: {args.repeats} splits in {time.perf_counter() - started:.1f} s  settings {params or 'paper'}")
    vqa(["report", *(str(runs / h) for h in table), "--out", str(runs / "comparison")])

    print("\ntraining on all videos, features read lazily (dask) from the store:")
    print(f"{'head':<10}{'epochs':>7}{'s/epoch':>9}{'data wait':>11}")
    entries = read_manifest(manifest, require_mos=True)
    feature_store = FeatureStore(store, create=False)
    y = [e.mos for e in entries]
    for head, (features, params) in table.items():
        if head == "svr":
            continue
        set_ids = [feature_store.resolve(f) for f in features]
        if len(set_ids) == 1:
            X = [feature_store.read_video_dask(set_ids[0], e.video_id) for e in entries]
        else:  # joined families are aligned in memory by load_features
            X, _ = load_features(feature_store, entries, features)
        dims = [feature_store.feature_set_info(s)["dims"] for s in set_ids]
        model = make_head(head, feature_dims=dims, **params).fit(X, y)
        per_epoch = model.train_seconds_ / model.n_epochs_
        wait = model.data_wait_seconds_ / model.train_seconds_
        print(f"{head:<10}{model.n_epochs_:>7}{per_epoch:>9.2f}{wait:>10.1%}")


if __name__ == "__main__":
    main()
