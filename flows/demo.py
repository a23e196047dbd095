"""``vqa demo``: synthetic dataset -> extraction flow -> grouped-CV SVR -> report, in minutes."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.errors import WeightsUnavailableError
from pipeline.synthetic import make_demo_dataset

from .extract import ExtractionConfig, build_extractors, extract_flow
from .fit import fit_job

log = logging.getLogger(__name__)

DEMO_EXTRACTOR = "resnet50"
DEMO_SAMPLING = "fps:4"

BANNER = """
##########################################################################
#  NO PRETRAINED WEIGHTS: the demo runs with RANDOM weights.             #
#  {reason:<70}#
#  Features and metrics show the pipeline working, not real quality      #
#  prediction. Provenance in the store records source=random.            #
##########################################################################
"""


def run_demo(*, out: str | Path, weights: str | None = None, n_sources: int = 6, progress: bool = True) -> dict:
    """Build the demo dataset under ``out/data``, extract into ``out/store``, fit and report to
    ``out/report``. ``weights=None`` tries ImageNet weights and falls back to random ones with
    a loud banner (the one place a fallback is allowed: it is a demo, and it says so)."""
    out = Path(out)
    manifest = out / "data" / "manifest.csv"
    if manifest.exists():  # a re-run reuses the dataset; extraction then skips finished videos
        log.warning("reusing the demo dataset in %s", manifest.parent)
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
        manifest=str(manifest), store=str(out / "store"), extractors=[DEMO_EXTRACTOR],
        weights={DEMO_EXTRACTOR: weights}, sampling=DEMO_SAMPLING, device="auto", progress=progress,
    )
    metrics = fit_job(
        store=out / "store", manifest=manifest, features=[DEMO_EXTRACTOR], out=out / "report",
        head="svr", protocol="fmc", pooling="mean", progress=progress, overwrite=True,
    )
    return {"extraction": summary, "metrics": metrics, "weights": weights, "report": str(out / "report")}
