"""Tests for regressors.metrics: parity with scipy.stats and the BVQA_Benchmark logistic."""

import logging

import numpy as np
import pytest
from scipy import optimize, stats

from regressors import metrics
from regressors.errors import InvalidInputError, RegressorError
from regressors.metrics import (
    evaluate_predictions,
    fit_logistic4,
    krcc,
    logistic4,
    plcc,
    plcc_raw,
    rmse,
    srcc,
)

Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
P = np.array([1.2, 1.9, 3.5, 3.1, 5.6, 5.9, 7.4])
# With ties on both sides, Kendall tau-b and tau-c differ.
Y_TIES = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0])
P_TIES = np.array([1.0, 3.0, 2.0, 3.0, 5.0, 4.0, 4.0, 7.0])


def test_rank_and_raw_correlations_match_scipy():
    assert srcc(Y, P) == pytest.approx(stats.spearmanr(Y, P)[0], abs=1e-15)
    assert krcc(Y, P) == pytest.approx(stats.kendalltau(Y, P)[0], abs=1e-15)
    assert plcc_raw(Y, P) == pytest.approx(stats.pearsonr(Y, P)[0], abs=1e-15)
    # A hand value: one swapped pair out of 21 -> tau = (20 - 1) / 21.
    assert krcc(Y, P) == pytest.approx(19 / 21, abs=1e-15)


def test_krcc_is_tau_b_with_ties():
    tau_b = stats.kendalltau(Y_TIES, P_TIES, variant="b")[0]
    tau_c = stats.kendalltau(Y_TIES, P_TIES, variant="c")[0]
    assert abs(tau_b - tau_c) > 1e-3  # the example does discriminate
    assert krcc(Y_TIES, P_TIES) == pytest.approx(tau_b, abs=1e-15)
    assert srcc(Y_TIES, P_TIES) == pytest.approx(stats.spearmanr(Y_TIES, P_TIES)[0], abs=1e-15)


def test_logistic4_formula_and_abs_b4():
    x = np.array([-1.0, 0.0, 0.5, 2.0])
    b1, b2, b3, b4 = 5.0, 1.0, 0.5, 0.25
    expected = b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / b4))
    np.testing.assert_allclose(logistic4(x, b1, b2, b3, b4), expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(logistic4(x, b1, b2, b3, -b4), logistic4(x, b1, b2, b3, b4))
    assert logistic4(0.5, b1, b2, b3, b4) == pytest.approx(3.0)
    # Far from the centre exp() overflows: the limit b2 comes out, without a warning.
    with np.errstate(all="raise"):
        assert logistic4(-1e6, b1, b2, b3, b4) == b2


def _bvqa_reference(y, p):
    """BVQA_Benchmark / SimpleVQA code, restated: curve_fit from the documented start."""

    def f(x, b1, b2, b3, b4):
        return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))

    popt, _ = optimize.curve_fit(f, p, y, p0=[y.max(), y.min(), p.mean(), 0.5], maxfev=100_000)
    mapped = f(p, *popt)
    return stats.pearsonr(y, mapped)[0], np.sqrt(np.mean((y - mapped) ** 2))


def test_plcc_rmse_match_reference_logistic_procedure():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 150)
    y = 1 + 4 / (1 + np.exp(-(p - 0.4) / 0.12)) + rng.normal(0, 0.25, 150)
    ref_plcc, ref_rmse = _bvqa_reference(y, p)
    result = evaluate_predictions(y, p)
    assert result["plcc"] == pytest.approx(ref_plcc, abs=1e-10)
    assert result["rmse"] == pytest.approx(ref_rmse, abs=1e-10)
    assert plcc(y, p) == result["plcc"]
    assert rmse(y, p) == result["rmse"]


def test_fit_logistic4_recovers_noiseless_curve():
    p = np.linspace(-2, 3, 40)
    true = (4.5, 1.2, 0.7, 0.6)
    y = logistic4(p, *true)
    params = fit_logistic4(p, y)
    np.testing.assert_allclose(logistic4(p, *params), y, atol=1e-8)
    assert params.shape == (4,)


def test_perfect_monotonic_nonlinear_predictor():
    p = np.linspace(0, 1, 60)
    y = 1 + 4 / (1 + np.exp(-(p - 0.6) / 0.08))  # monotonic, strongly non-linear
    m = evaluate_predictions(y, p)
    assert set(m) == {"srcc", "krcc", "plcc", "plcc_raw", "rmse"}
    assert m["srcc"] == pytest.approx(1.0, abs=1e-12)
    assert m["krcc"] == pytest.approx(1.0, abs=1e-12)
    assert m["plcc"] == pytest.approx(1.0, abs=1e-8)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert m["plcc"] > m["plcc_raw"] + 0.01
    assert all(isinstance(v, float) for v in m.values())


def test_evaluate_predictions_is_scale_invariant_in_ranks_and_logistic_plcc():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 80)
    y = 2 * p + rng.normal(0, 0.2, 80)
    a = evaluate_predictions(y, p)
    b = evaluate_predictions(y, 100 * p + 3)  # the 0.5 start width does not suit this scale
    for key in ("srcc", "krcc", "plcc_raw"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert a["plcc"] == pytest.approx(b["plcc"], abs=1e-6)


def test_fallback_to_linear_when_fit_does_not_converge(monkeypatch, caplog):
    def failing_curve_fit(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(metrics.optimize, "curve_fit", failing_curve_fit)
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 10, 50)
    y = 0.3 * p + 1 + rng.normal(0, 0.5, 50)
    with caplog.at_level(logging.WARNING, logger="regressors.metrics"):
        params = fit_logistic4(p, y)
    assert "falling back to a linear mapping" in caplog.text
    slope, intercept = np.polyfit(p, y, 1)
    np.testing.assert_allclose(logistic4(p, *params), slope * p + intercept, rtol=0, atol=1e-7)
    m = evaluate_predictions(y, p)
    assert m["plcc"] == pytest.approx(abs(m["plcc_raw"]), abs=1e-9)


def test_fallback_when_fit_is_worse_than_a_line(monkeypatch, caplog):
    # A "converged" fit stuck on a flat plateau is worse than the least-squares line.
    monkeypatch.setattr(metrics.optimize, "curve_fit", lambda *a, **k: (np.array([1.0, 1.0, 0.0, 1.0]), None))
    p = np.linspace(0, 1, 20)
    y = 3 * p
    with caplog.at_level(logging.WARNING, logger="regressors.metrics"):
        params = fit_logistic4(p, y)
    assert "worse fit than a straight line" in caplog.text
    np.testing.assert_allclose(logistic4(p, *params), y, atol=1e-7)


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([1.0, 2.0], [1.0, 2.0], "at least 3"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "differ in length"),
        ([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0], "constant"),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "constant"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "NaN"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, np.inf, 4.0], "NaN or infinite"),
        (np.ones((3, 2)), np.ones((3, 2)), "1-D"),
        (["a", "b", "c"], [1.0, 2.0, 3.0], "numeric"),
    ],
)
@pytest.mark.parametrize("fn", [srcc, krcc, plcc_raw, plcc, rmse, evaluate_predictions])
def test_invalid_inputs_raise_clear_errors(fn, y, p, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        fn(y, p)
    assert isinstance(info.value, RegressorError) and isinstance(info.value, ValueError)


def test_column_vectors_are_accepted():
    assert srcc(Y[:, None], P[:, None]) == srcc(Y, P)
