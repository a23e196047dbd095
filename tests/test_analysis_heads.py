"""Composable heads: TemporalPooling, head presets (make_head), the regressors exports,
scikit-learn's estimator checks on SequenceRegressor, quiet model selection, and
regressors.evaluate returning vqa fit's metrics structure."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import regressors
from regressors import (
    HEAD_PRESETS,
    InvalidInputError,
    SequenceRegressor,
    SVRHead,
    TemporalPooling,
    evaluate,
    make_head,
)
from regressors.presets import HeadPreset
from regressors.report import write_report
from regressors.temporal_pooling import join_pooling, pool_features, split_pooling

ROOT = Path(__file__).resolve().parents[1]


def _videos(n=36, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(3, 9)), d)) + rng.uniform(-1, 1) for _ in range(n)]
    y = np.array([x[:, 0].mean() * 1.5 + x[:, 1].max() * 0.3 for x in X]) + rng.normal(0, 0.05, n) + 3
    groups = np.arange(n) % 6
    return X, y, groups


# ---------------------------------------------------------------- TemporalPooling
def test_temporal_pooling_pools_each_video_in_float64():
    X, _, _ = _videos(5)
    X[2] = X[2].astype(np.float16)  # as stored: pooled in float64 all the same
    for method in ("mean", "max", "meanmax"):
        out = TemporalPooling(method).fit_transform(X)
        assert out.dtype == np.float64 and out.shape == (5, 10 if method == "meanmax" else 5)
        for i, x in enumerate(X):
            np.testing.assert_array_equal(out[i], pool_features(np.asarray(x, np.float64), method))
    pooling = TemporalPooling("meanmax").fit(X)
    assert pooling.n_features_in_ == 5
    assert list(pooling.get_feature_names_out())[:2] == ["mean_x0", "mean_x1"]
    assert pooling.get_feature_names_out()[5] == "max_x0"
    np.testing.assert_array_equal(
        TemporalPooling().fit_transform(np.stack([x[:3] for x in X])),
        np.stack([np.asarray(x[:3], np.float64).mean(axis=0) for x in X]),
    )  # 3-D input


def test_temporal_pooling_errors():
    X, _, _ = _videos(4)
    with pytest.raises(InvalidInputError, match="Did you mean mean"):
        TemporalPooling("maen").fit(X)
    bad = [x.copy() for x in X]
    bad[2][0, 0] = np.nan
    with pytest.raises(InvalidInputError, match=r"X\[2\] has 1 NaN"):
        TemporalPooling().fit_transform(bad)
    fitted = TemporalPooling().fit(X)
    with pytest.raises(InvalidInputError, match="expecting 5 features"):
        fitted.transform([np.ones((3, 6))])
    with pytest.raises(InvalidInputError, match="different feature dims"):
        TemporalPooling().fit([np.ones((2, 3)), np.ones((2, 4))])


def test_pipeline_starting_with_temporal_pooling_cross_validates():
    X, y, groups = _videos(36)
    pipe = make_pipeline(TemporalPooling("meanmax"), StandardScaler(), Ridge())
    scores = cross_val_score(pipe, X, y, groups=groups, cv=GroupKFold(3), scoring="r2")
    assert scores.shape == (3,) and scores.min() > 0.5
    search = GridSearchCV(
        pipe, {"temporalpooling__method": ["mean", "meanmax"], "ridge__alpha": [0.1, 10.0]}, cv=GroupKFold(3)
    ).fit(X, y, groups=groups)
    assert search.best_params_["temporalpooling__method"] in ("mean", "meanmax")


@parametrize_with_checks([TemporalPooling(), TemporalPooling("meanmax")])
def test_temporal_pooling_passes_sklearn_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- pooling out of the SVR
def test_svr_pools_through_temporal_pooling_and_splits_apart():
    X, y, _ = _videos(30)
    head = SVRHead(pooling="meanmax", C=2.0)
    pooling, rest = split_pooling(head)
    assert isinstance(pooling, TemporalPooling) and pooling.method == "meanmax"
    assert isinstance(rest, SVRHead) and rest.pooling is None and rest.C == 2.0 and head.pooling == "meanmax"
    Xp = pooling.fit_transform(X)
    joined = join_pooling(pooling, clone(rest).fit(Xp[:20], y[:20]))
    direct = clone(head).fit(X[:20], y[:20])
    assert isinstance(joined, SVRHead) and joined.pooling == "meanmax" and joined.n_features_in_ == 5
    np.testing.assert_array_equal(joined.predict(X[20:]), direct.predict(X[20:]))
    same = make_pipeline(TemporalPooling("meanmax"), SVRHead(pooling=None, C=2.0)).fit(X[:20], y[:20])
    np.testing.assert_array_equal(same.predict(X[20:]), direct.predict(X[20:]))
    with pytest.raises(InvalidInputError, match="pooling=None.*takes pooled"):
        SVRHead(pooling=None).fit(X, y)
    # any pipeline that starts with the pooling splits too, and joins back into a pipeline
    pipe = make_pipeline(TemporalPooling("max"), StandardScaler(), Ridge())
    pooling, rest = split_pooling(pipe)
    assert pooling.method == "max" and isinstance(rest, Pipeline) and len(rest.steps) == 2
    back = join_pooling(pooling, clone(rest).fit(pooling.fit_transform(X), y))
    np.testing.assert_allclose(back.predict(X), clone(pipe).fit(X, y).predict(X))
    gru = SequenceRegressor()
    assert split_pooling(gru) == (None, gru)  # a head that does not pool is left whole


# ---------------------------------------------------------------- presets
def test_make_head_presets_and_overrides():
    assert {"svr", "svr-bvqa", "vsfa", "a2inet", "dualpath"} <= set(HEAD_PRESETS.names())
    svr = make_head("svr", pooling="max", C=3.0)
    assert isinstance(svr, SVRHead) and (svr.pooling, svr.preset, svr.C) == ("max", "fmc", 3.0)
    assert make_head("svr-bvqa").preset == "bvqa"
    vsfa = make_head("vsfa")
    assert (vsfa.module, vsfa.loss, vsfa.batch_size, vsfa.epochs, vsfa.progress) == ("vsfa", "vsfa_l1", 16, 40, False)
    paper = make_head("vsfa", paper_schedule=True, batch_size=8)
    assert (paper.epochs, paper.lr, paper.patience, paper.batch_size) == (2000, 1e-5, None, 8)
    a2 = make_head("a2inet", feature_dims=[6, 4], module_params={"d_model": 16})
    assert a2.module_params == {"dims": (6, 4), "d_model": 16}  # merged: the preset's dims stay
    assert HEAD_PRESETS.get("vsfa").protocol == "vsfa" and HEAD_PRESETS.get("a2inet").protocol == "a2inet"
    assert HEAD_PRESETS.get("svr").protocol == "fmc"
    with pytest.raises(InvalidInputError, match="unknown head 'vfsa'. Did you mean vsfa"):
        make_head("vfsa")
    with pytest.raises(InvalidInputError, match="takes 2 feature sets, got 1"):
        make_head("a2inet", feature_dims=[6])
    with pytest.raises(InvalidInputError, match="bad parameter for the svr head"):
        make_head("svr", epochs=3)


def test_a_module_adds_a_preset_by_registering_it():
    preset = HeadPreset(
        lambda dims: make_pipeline(TemporalPooling("mean"), StandardScaler(), Ridge()),
        "a2inet",
        "pooled ridge regression",
    )
    with HEAD_PRESETS.override("ridge-test", preset):
        head = make_head("ridge-test", ridge__alpha=2.0)
        assert isinstance(head, Pipeline) and head.get_params()["ridge__alpha"] == 2.0
    assert "ridge-test" not in HEAD_PRESETS


# ---------------------------------------------------------------- exports
def test_regressors_exports_the_heads_lazily():
    assert (
        {
            "SVRHead",
            "SequenceRegressor",
            "TemporalPooling",
            "make_head",
            "evaluate",
            "HEAD_PRESETS",
            "load_head",
            "save_head",
        }
        <= set(regressors.__all__)
        <= set(dir(regressors))
    )
    assert regressors.SVRHead is SVRHead and regressors.evaluate is evaluate
    with pytest.raises(AttributeError):
        regressors.NoSuchHead  # noqa: B018
    code = (
        "import sys, regressors; from regressors import SVRHead, TemporalPooling, make_head; "
        "make_head('svr'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


# ---------------------------------------------------------------- SequenceRegressor and sklearn
FAST = {"epochs": 2, "batch_size": 8, "val_fraction": 0, "patience": None, "lr": 1e-3, "device": "cpu"}
# Skipped, with the reason: float32 inference in batches, whose scores can differ in the 7th
# digit with the batch a video is computed in (BLAS picks kernels by batch size); the checks
# ask for 1e-7. test_batch_composition_changes_scores_by_float32_rounding_only checks 1e-5.
SEQUENCE_XFAIL = {
    "check_methods_subset_invariance": "float32 batched inference: scores agree to ~1e-7 relative, not exactly",
    "check_methods_sample_order_invariance": "float32 batched inference: scores agree to ~1e-7 relative, not exactly",
}


@parametrize_with_checks([SequenceRegressor(**FAST)], expected_failed_checks=lambda est: SEQUENCE_XFAIL)
def test_sequence_regressor_passes_sklearn_checks(estimator, check):
    torch.set_num_threads(1)
    check(estimator)


def test_batch_composition_changes_scores_by_float32_rounding_only():
    X, y, _ = _videos(40)
    head = SequenceRegressor(**FAST).fit(X, y)
    full = head.predict(X)
    np.testing.assert_allclose(head.predict(X[::-1])[::-1], full, rtol=1e-5)
    np.testing.assert_allclose(head.predict(X[5:9]), full[5:9], rtol=1e-5)


def test_model_selection_draws_no_progress_bars(capfd):
    X, y, groups = _videos(24)
    head = SequenceRegressor(**dict(FAST, epochs=1))
    cross_val_score(head, X, y, groups=groups, cv=GroupKFold(3))
    GridSearchCV(make_head("svr"), {"C": [0.5, 1.0]}, cv=3).fit(X, y)
    evaluate(make_head("svr"), X, y, groups=groups, protocol="a2inet", n_repeats=2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# ---------------------------------------------------------------- regressors.evaluate
def test_evaluate_runs_a_protocol_and_returns_vqa_fits_metrics(tmp_path):
    X, y, groups = _videos(36)
    result = evaluate(make_head("svr"), X, y, groups=groups, protocol="fmc", n_repeats=2)
    metrics = result.metrics
    assert metrics["protocol"] == "fmc" and metrics["protocol_params"] == {"n_splits": 5, "n_repeats": 2}
    assert metrics["n_splits"] == 10 and 1 <= metrics["n_distinct_splits"] <= 10
    assert set(metrics["pooled"]) >= {"srcc", "plcc", "plcc_raw", "logistic_degenerate", "n_videos"}
    write_report(tmp_path, result, video_ids=list(range(36)), mos=y, settings={"head": "svr"})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written) == [*metrics, "settings"]  # the same structure, in the same order
    assert written["n_distinct_splits"] == metrics["n_distinct_splits"]
    # pooling is taken out of the head and done once: the same numbers as pooling by hand
    pooled_once = evaluate(
        SVRHead(pooling=None), TemporalPooling().fit_transform(X), y, groups=groups, protocol="fmc", n_repeats=2
    )
    assert pooled_once.median == result.median
