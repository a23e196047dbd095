"""``vqa demo``: synthetic dataset -> extraction flow -> grouped-CV SVR -> report, in minutes.

The features are ``unique-layer1``: ResNet-34's first stage, spatial mean and std per channel
(128 per frame). Offline there are no pretrained weights, and the deeper stages of a randomly
initialised network bury the distortions under noise, while its first stage still responds to
blur, noise and compression (sharpness, noise and blocking energy). Measured on the demo
dataset (6 photos x 12 versions, random weights, 2 shared cores): ``vqa demo`` reports SROCC
0.87 (FMC protocol, 100 grouped splits) in 112 s end to end; the same SVR over 10 x grouped
5-fold splits (median per-split SROCC) scored 0.87 on ``unique-layer1``, 0.11 on ``unique``
(all four stages) and 0.14 on ``resnet50``, the demo's extractor before (issue 14 saw 0.05).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.errors import WeightsUnavailableError
from pipeline.synthetic import make_demo_dataset

from .extract_plan import ExtractionConfig, build_extractors
from .fit import fit_job

logger = logging.getLogger(__name__)

DEMO_EXTRACTOR = "unique-layer1"
DEMO_SAMPLING = "fps:4"

BANNER = """
##########################################################################
#  NO PRETRAINED WEIGHTS: the demo runs with RANDOM weights.             #
#  {reason:<70}#
#  What it shows: the whole pipeline (decode, extract, store, fit,       #
#  report) on clips with graded blur, noise and H.264 compression, and   #
#  a real correlation from features a random network still computes      #
#  usefully: low-level statistics of ResNet-34's first stage (sharpness, #
#  noise, blocking). What changes with real weights (`vqa weights`):     #
#  the features carry learned quality cues, and deeper extractors        #
#  (unique, resnet50) become worth using; with random weights they are   #
#  noise. Provenance in the store records source=random.                 #
##########################################################################
"""


def run_demo(*, out: str | Path, weights: str | None = None, n_sources: int = 6, progress: bool = True) -> dict:
    """Build the demo dataset under ``out/data``, extract into ``out/store``, fit and report to
    ``out/report``. ``weights=None`` tries ImageNet weights and falls back to random ones with
    a loud banner (the one place a fallback is allowed: it is a demo, and it says so).
    Runs Prefect flows: call it with a Prefect server available (``vqa demo`` does)."""
    from .extract import extract_flow

    out = Path(out)
    manifest = out / "data" / "manifest.csv"
    if manifest.exists():  # a re-run reuses the dataset; extraction then skips finished videos
        logger.warning("reusing the demo dataset in %s", manifest.parent)
    else:
        manifest = make_demo_dataset(out / "data", n_sources=n_sources, progress=progress)
    if weights is None:
        try:
            build_extractors(ExtractionConfig((DEMO_EXTRACTOR,), {DEMO_EXTRACTOR: "imagenet"}, device="cpu"))
            weights = "imagenet"
        except WeightsUnavailableError as exc:
            print(BANNER.format(reason=str(exc)[:70]), file=sys.stderr)
            weights = "random"
    summary = extract_flow(
        manifest=str(manifest),
        store=str(out / "store"),
        extractors=[DEMO_EXTRACTOR],
        weights={DEMO_EXTRACTOR: weights},
        sampling=DEMO_SAMPLING,
        device="auto",
        progress=progress,
    )
    metrics = fit_job(
        store=out / "store",
        manifest=manifest,
        features=[DEMO_EXTRACTOR],
        out=out / "report",
        head="svr",
        protocol="fmc",
        pooling="mean",
        progress=progress,
        overwrite=True,
    )
    return {"extraction": summary, "metrics": metrics, "weights": weights, "report": str(out / "report")}
