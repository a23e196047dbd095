"""Reports of an evaluation: metrics JSON, per-video predictions CSV, scatter plot.

``write_report`` produces, in ``out_dir``::

    metrics.json      {"srcc", "krcc", "plcc", "plcc_raw", "rmse": medians over splits,
                       "n_splits", "n_distinct_splits", "n_degenerate_logistic",
                       "pooled": metrics of the plotted points, "protocol", "protocol_params",
                       "notes": [...], "per_split": [...], "settings": {...}}
    predictions.csv   video_id, mos, prediction, n_tested  (prediction empty if never tested)
    scatter.png       MOS against each video's mean test prediction, with the logistic fit

The scatter plot shows one thing and its title reports exactly that: each point is a
video's mean test prediction over the splits that tested it, and the title's metrics are
those of the plotted points (``pooled`` in metrics.json). The per-split medians, the
protocol's numbers, are named in a footnote, never in the title. A logistic fit that
collapsed to a step is drawn dashed and labelled so, with the raw PLCC beside it.

Text cells a spreadsheet would evaluate (a video id ``=cmd|...``) are written with a leading
apostrophe; ``vqa_core.csvsafe.DictReader`` reads them back unchanged.

The plot uses matplotlib's Agg canvas directly (chosen inside the function, never at
import and never through pyplot), so it works headless and leaves global state alone.
Existing report files in ``out_dir`` are replaced: reports are derived artefacts.
"""

from __future__ import annotations

import json
import logging
import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from regressors.errors import InvalidInputError, RegressorError
from regressors.metrics import METRIC_NAMES, MIN_SAMPLES, fit_logistic4, logistic4
from regressors.persistence import to_json
from vqa_core import csvsafe

__all__ = [
    "compare_runs",
    "format_metrics_table",
    "format_settings_diff",
    "settings_diff",
    "write_comparison",
    "write_report",
]

logger = logging.getLogger(__name__)

_LABELS = {"srcc": "SRCC", "krcc": "KRCC", "plcc": "PLCC", "plcc_raw": "PLCC (raw)", "rmse": "RMSE"}


def _title(pooled: dict | None, n_points: int) -> str:
    """The scatter's title: the metrics of exactly the plotted points."""
    if pooled is None:
        values = "metrics undefined (fewer than 3 tested videos, or constant values)"
    else:
        values = "  ".join(f"{_LABELS[k]} {pooled[k]:.4f}" for k in METRIC_NAMES)
    return (
        f"{values}\nof these {n_points} points: each is a video's mean test prediction over the splits that tested it"
    )


def _footnote(metrics: dict) -> str:
    """Where the protocol's numbers (per-split medians) are, so nobody reads them off the plot."""
    n, distinct = metrics["n_splits"], metrics["n_distinct_splits"]
    splits = f"{n} splits" + (f" ({distinct} distinct)" if distinct != n else "")
    return (
        f"protocol result, median over {splits}: SRCC {metrics['srcc']:.4f}, PLCC {metrics['plcc']:.4f} (metrics.json)"
    )


def _scatter(path: Path, pred: np.ndarray, mos: np.ndarray, title: str, footnote: str, pooled: dict | None) -> None:
    """Scatter MOS ``[M]`` against predictions ``[M]`` with the logistic fit, to PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas for this figure only; no global backend switch
    ax = fig.add_subplot()
    ax.scatter(pred, mos, s=10, alpha=0.6, edgecolors="none", label="videos")
    if pooled is not None:  # the same fit as the title's PLCC and RMSE
        params = fit_logistic4(pred, mos)
        grid = np.linspace(pred.min(), pred.max(), 200)
        if pooled.get("logistic_degenerate"):
            label, style = f"logistic fit: degenerate (a step); raw PLCC {pooled['plcc_raw']:.4f}", "--"
        else:
            label, style = "logistic fit", "-"
        ax.plot(grid, logistic4(grid, *params), style, color="C3", linewidth=1.5, label=label)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("mean test prediction")
    ax.set_ylabel("MOS")
    ax.set_title(title, fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.01, 0.01, footnote, fontsize=7, color="0.35")
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
    if result.pooled is None and np.isfinite(np.asarray(result.predictions, dtype=np.float64)).sum() >= MIN_SAMPLES:
        result = _with_pooled(result, np.asarray(mos, dtype=np.float64))
    predictions = np.asarray(result.predictions, dtype=np.float64)
    n_tested = np.asarray(result.n_tested)
    video_ids = list(video_ids)
    mos = np.asarray(mos, dtype=np.float64)
    n = predictions.shape[0]
    if len(video_ids) != n or mos.shape != (n,) or n_tested.shape != (n,):
        raise InvalidInputError(
            f"lengths disagree: {n} predictions, {len(n_tested)} n_tested, {len(video_ids)} video_ids, {mos.shape} mos"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / "metrics.json",
        "predictions": out_dir / "predictions.csv",
        "scatter": out_dir / "scatter.png",
    }

    doc = dict(result.metrics)
    doc["settings"] = settings
    paths["metrics"].write_text(
        json.dumps(to_json(doc, strict=False), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )

    with paths["predictions"].open("w", newline="", encoding="utf-8") as fh:
        writer = csvsafe.writer(fh)  # ids a spreadsheet would evaluate are escaped (vqa_core.csvsafe)
        writer.writerow(["video_id", "mos", "prediction", "n_tested"])
        for vid, m, p, k in zip(video_ids, mos, predictions, n_tested, strict=True):
            # repr keeps full float precision; a video never tested gets an empty cell.
            writer.writerow([vid, repr(float(m)), repr(float(p)) if np.isfinite(p) else "", int(k)])

    tested = np.isfinite(predictions)
    pooled = doc["pooled"]
    if pooled is not None and pooled.get("n_videos", int(tested.sum())) != int(tested.sum()):
        pooled = None  # computed on other predictions than those given: do not title the plot with it
    _scatter(
        paths["scatter"], predictions[tested], mos[tested], _title(pooled, int(tested.sum())), _footnote(doc), pooled
    )
    logger.info("wrote report to %s", out_dir)
    return paths


def _with_pooled(result, mos: np.ndarray):
    """``result`` with its ``pooled`` metrics computed from its predictions (results built by
    hand, or by an older version, lack them)."""
    import dataclasses

    from regressors.protocols import pooled_metrics  # protocols imports sklearn; reports need it rarely

    predictions = np.asarray(result.predictions, dtype=np.float64)
    if mos.shape != predictions.shape:
        return result  # write_report reports the mismatch
    return dataclasses.replace(result, pooled=pooled_metrics(mos, predictions))


def format_metrics_table(metrics: dict) -> str:
    """A small aligned two-column text table of the scalar entries of ``metrics``.

    The five standard metrics come first (``SRCC, KRCC, PLCC, PLCC (raw), RMSE``), then
    any other scalar entries in their order; lists and dicts (``per_split``,
    ``settings``) are left out. Floats are shown with 4 decimals. ``notes`` (a list of
    sentences) follow the table, one ``note:`` line each.
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
    lines += [f"note: {note}" for note in metrics.get("notes") or ()]
    return "\n".join(lines)


def _flatten(value, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``{"head_params.lr": "0.0001", "feature_sets.0.id": "...", ...}``
    (leaves as compact JSON, strings as they are)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{i}"))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value, sort_keys=True)}


def _comparable(settings) -> dict[str, str]:
    """A run's settings flattened for comparison: feature sets by their ids (content-addressed
    from spec and sampling, so equal ids mean equal specs), without what does not change
    results (``progress``)."""
    if not isinstance(settings, dict):
        return {}
    settings = dict(settings)
    for key in ("feature_sets", "test_feature_sets"):
        if isinstance(settings.get(key), list):
            settings[key] = " + ".join(str(s.get("id", "?")) if isinstance(s, dict) else str(s) for s in settings[key])
    return {k: v for k, v in _flatten(settings).items() if not k.endswith(".progress")}


def settings_diff(rows: list[dict]) -> list[tuple[str, list[str | None]]]:
    """The recorded settings whose values differ between the runs of :func:`compare_runs`:
    ``[(setting, [value in each run, None where absent]), ...]`` in setting order."""
    flat = [r.get("settings") or {} for r in rows]
    keys = sorted({k for f in flat for k in f})
    return [(k, [f.get(k) for f in flat]) for k in keys if len({f.get(k) for f in flat}) > 1]


def format_settings_diff(rows: list[dict], *, width: int = 48) -> str:
    """A markdown table of :func:`settings_diff` (one column per run; long values cut to
    ``width`` characters), or a sentence saying every recorded setting is equal."""
    diff = settings_diff(rows)
    if len(rows) < 2:
        return "One run: nothing to compare settings with."
    if not diff:
        return "Settings: every recorded setting is the same in these runs."
    cut = lambda v: "(absent)" if v is None else (v if len(v) <= width else v[: width - 3] + "...")  # noqa: E731
    lines = [
        "### Settings that differ between these runs",  # no blank line: one block with its table
        "| setting | " + " | ".join(r["run"] for r in rows) + " |",
        "|" + "---|" * (len(rows) + 1),
    ]
    lines += [f"| {key} | " + " | ".join(cut(v).replace("|", "\\|") for v in values) + " |" for key, values in diff]
    return "\n".join(lines)


def compare_runs(run_dirs) -> list[dict]:
    """One row per run folder written by :func:`write_report`: its name, head, features,
    protocol and median metrics, and ``settings`` (its recorded settings, flattened to
    dotted keys, feature sets by id, for :func:`settings_diff`). Raises ``RegressorError`` naming a folder
    without a readable ``metrics.json``."""
    rows = []
    for run in map(Path, run_dirs):
        path = run / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegressorError(f"{path}: not a run report ({exc}); pass folders written by `vqa fit`") from exc
        settings = metrics.get("settings", {})
        features = "+".join(s.get("spec", {}).get("name", s.get("id", "?")) for s in settings.get("feature_sets", []))
        rows.append(
            {
                "run": run.name,
                "head": settings.get("head", "?"),
                "features": features or "?",
                "protocol": settings.get("protocol", "?"),
                "n_videos": settings.get("n_videos", ""),
                **{k: metrics.get(k) for k in METRIC_NAMES},
                "scatter": str(run / "scatter.png"),
                "settings": _comparable(settings),
            }
        )
    return rows


def write_comparison(out_dir, rows: list[dict]) -> dict[str, Path]:
    """Write ``comparison.md`` (a paper-style table, the settings that differ between the
    runs, then each run's scatter plot) and ``comparison.csv`` into ``out_dir``; returns
    their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["run", "head", "features", "protocol", "n_videos", *METRIC_NAMES]
    csv_path = out_dir / "comparison.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csvsafe.DictWriter(fh, fieldnames=columns, extrasaction="ignore")  # run names escaped
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    header = ["run", "head", "features", "protocol", "N", *(_LABELS.get(k, k) for k in METRIC_NAMES)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", format_settings_diff(rows)]
    lines += ["", *(f"![{r['run']}]({os.path.relpath(r['scatter'], out_dir)})" for r in rows)]
    md_path = out_dir / "comparison.md"
    md_path.write_text("\n".join(lines) + "\n")
    return {"markdown": md_path, "csv": csv_path}
