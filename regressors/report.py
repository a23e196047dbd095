"""Reports of an evaluation: metrics JSON, per-video predictions CSV, scatter plot.

``write_report`` produces, in ``out_dir``::

    metrics.json      {"srcc", "krcc", "plcc", "plcc_raw", "rmse": medians over splits,
                       "n_splits", "per_split": [...], "settings": {...}}
    predictions.csv   video_id, mos, prediction, n_tested  (prediction empty if never tested)
    scatter.png       MOS against mean predicted score, with the fitted logistic curve

The plot uses matplotlib's Agg canvas directly (chosen inside the function, never at
import and never through pyplot), so it works headless and leaves global state alone.
Existing report files in ``out_dir`` are replaced: reports are derived artefacts.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from regressors.errors import InvalidInputError, RegressorError
from regressors.metrics import METRIC_NAMES, MIN_SAMPLES, fit_logistic4, logistic4
from regressors.persistence import to_json

__all__ = ["format_metrics_table", "write_report"]

logger = logging.getLogger(__name__)

_LABELS = {"srcc": "SRCC", "krcc": "KRCC", "plcc": "PLCC", "plcc_raw": "PLCC (raw)", "rmse": "RMSE"}


def _title(metrics: dict, n_splits: int, n_videos: int) -> str:
    values = "  ".join(f"{_LABELS[k]} {metrics[k]:.4f}" for k in METRIC_NAMES)
    return f"{values}\nmedian of {n_splits} splits; {n_videos} videos, mean test prediction each"


def _scatter(path: Path, pred: np.ndarray, mos: np.ndarray, title: str) -> None:
    """Scatter MOS ``[M]`` against predictions ``[M]`` with the logistic fit, to PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.4), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas for this figure only; no global backend switch
    ax = fig.add_subplot()
    ax.scatter(pred, mos, s=10, alpha=0.6, edgecolors="none", label="videos")
    if pred.shape[0] >= MIN_SAMPLES and np.ptp(pred) > 0 and np.ptp(mos) > 0:
        params = fit_logistic4(pred, mos)
        grid = np.linspace(pred.min(), pred.max(), 200)
        ax.plot(grid, logistic4(grid, *params), color="C3", linewidth=1.5, label="logistic fit")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("MOS")
    ax.set_title(title, fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(out_dir, result, *, video_ids, mos, settings: dict) -> dict[str, Path]:
    """Write ``metrics.json``, ``predictions.csv`` and ``scatter.png`` for ``result``.

    Parameters
    ----------
    out_dir : path
        Created if missing; existing report files are replaced.
    result : EvaluationResult
        From :func:`regressors.protocols.evaluate` (``predictions``/``n_tested`` ``[n]``).
    video_ids : sequence ``[n]``
        Ids in the order of ``result.predictions``.
    mos : array ``[n]``
        MOS in the same order.
    settings : dict
        Anything that describes the run (features, head params, protocol); stored as is
        in ``metrics.json`` (numpy values and paths converted).

    Returns
    -------
    ``{"metrics": Path, "predictions": Path, "scatter": Path}``.
    """
    predictions = np.asarray(result.predictions, dtype=np.float64)
    n_tested = np.asarray(result.n_tested)
    video_ids = list(video_ids)
    mos = np.asarray(mos, dtype=np.float64)
    n = predictions.shape[0]
    if len(video_ids) != n or mos.shape != (n,) or n_tested.shape != (n,):
        raise InvalidInputError(
            f"lengths disagree: {n} predictions, {len(n_tested)} n_tested, "
            f"{len(video_ids)} video_ids, {mos.shape} mos"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / "metrics.json",
        "predictions": out_dir / "predictions.csv",
        "scatter": out_dir / "scatter.png",
    }

    doc = {k: result.median[k] for k in METRIC_NAMES}
    doc["n_splits"] = len(result.per_split)
    doc["per_split"] = result.per_split
    doc["settings"] = settings
    paths["metrics"].write_text(
        json.dumps(to_json(doc, strict=False), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )

    with paths["predictions"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "mos", "prediction", "n_tested"])
        for vid, m, p, k in zip(video_ids, mos, predictions, n_tested, strict=True):
            # repr keeps full float precision; a video never tested gets an empty cell.
            writer.writerow([vid, repr(float(m)), repr(float(p)) if np.isfinite(p) else "", int(k)])

    tested = np.isfinite(predictions)
    _scatter(
        paths["scatter"],
        predictions[tested],
        mos[tested],
        _title(result.median, len(result.per_split), int(tested.sum())),
    )
    logger.info("wrote report to %s", out_dir)
    return paths


def format_metrics_table(metrics: dict) -> str:
    """A small aligned two-column text table of the scalar entries of ``metrics``.

    The five standard metrics come first (``SRCC, KRCC, PLCC, PLCC (raw), RMSE``), then
    any other scalar entries in their order; lists and dicts (``per_split``,
    ``settings``) are left out. Floats are shown with 4 decimals.
    """
    keys = [k for k in METRIC_NAMES if k in metrics]
    keys += [k for k in metrics if k not in METRIC_NAMES]
    rows = []
    for key in keys:
        value = metrics[key]
        if isinstance(value, (dict, list, tuple, np.ndarray)):
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Integral, Real)):
            text = str(value)
        elif isinstance(value, Integral):
            text = str(int(value))
        else:
            text = f"{float(value):.4f}"
        rows.append((_LABELS.get(key, str(key)), text))
    name_w = max([len("metric")] + [len(r[0]) for r in rows])
    value_w = max([len("value")] + [len(r[1]) for r in rows])
    lines = [f"{'metric':<{name_w}}  {'value':>{value_w}}", f"{'-' * name_w}  {'-' * value_w}"]
    lines += [f"{name:<{name_w}}  {text:>{value_w}}" for name, text in rows]
    return "\n".join(lines)


def compare_runs(run_dirs) -> list[dict]:
    """One row per run folder written by :func:`write_report`: its name, head, features,
    protocol and median metrics. Raises ``RegressorError`` naming a folder without a
    readable ``metrics.json``."""
    rows = []
    for run in map(Path, run_dirs):
        path = run / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegressorError(f"{path}: not a run report ({exc}); pass folders written by `vqa fit`") from exc
        settings = metrics.get("settings", {})
        features = "+".join(s.get("spec", {}).get("name", s.get("id", "?")) for s in settings.get("feature_sets", []))
        rows.append({
            "run": run.name, "head": settings.get("head", "?"), "features": features or "?",
            "protocol": settings.get("protocol", "?"), "n_videos": settings.get("n_videos", ""),
            **{k: metrics.get(k) for k in METRIC_NAMES},
            "scatter": str(run / "scatter.png"),
        })
    return rows


def write_comparison(out_dir, rows: list[dict]) -> dict[str, Path]:
    """Write ``comparison.md`` (a paper-style table, then each run's scatter plot) and
    ``comparison.csv`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["run", "head", "features", "protocol", "n_videos", *METRIC_NAMES]
    csv_path = out_dir / "comparison.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    header = ["run", "head", "features", "protocol", "N", *(_LABELS.get(k, k) for k in METRIC_NAMES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", *(f"![{r['run']}]({os.path.relpath(r['scatter'], out_dir)})" for r in rows)]
    md_path = out_dir / "comparison.md"
    md_path.write_text("\n".join(lines) + "\n")
    return {"markdown": md_path, "csv": csv_path}
