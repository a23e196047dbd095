"""Tests for regressors.protocols: split generators and the evaluate loop."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from regressors.errors import InvalidInputError, RegressorError
from regressors.protocols import EvaluationResult, evaluate, random_splits, repeated_kfold_splits


class FirstFeatureHead(RegressorMixin, BaseEstimator):
    """Predicts the mean over time of feature 0 plus ``offset``; counts its fits."""

    fits = 0

    def __init__(self, offset=0.0):
        self.offset = offset

    def fit(self, X, y):
        type(self).fits += 1
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.array([np.asarray(x)[:, 0].mean() for x in X]) + self.offset


class ConstantHead(FirstFeatureHead):
    def predict(self, X):
        return np.zeros(len(X))


GROUPS = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 3, 3])  # 36 samples


def _check_partition(splits, n, n_splits, n_repeats, groups=None):
    assert len(splits) == n_splits * n_repeats
    for r in range(n_repeats):
        tested = np.zeros(n, dtype=int)
        for train, test in splits[r * n_splits : (r + 1) * n_splits]:
            assert train.dtype == np.int64 and test.dtype == np.int64
            assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
            assert np.intersect1d(train, test).size == 0
            if groups is not None:
                assert not set(groups[train]) & set(groups[test])
            tested[test] += 1
        assert np.all(tested == 1)  # every sample tested exactly once per repeat


def test_repeated_kfold_partitions_each_repeat():
    splits = repeated_kfold_splits(23, n_splits=5, n_repeats=3, random_state=0)
    _check_partition(splits, 23, 5, 3)
    sizes = [len(test) for _, test in splits]
    assert set(sizes) == {4, 5}  # as equal as possible
    # Repeats differ from one another.
    assert not all(np.array_equal(splits[i][1], splits[5 + i][1]) for i in range(5))


def test_repeated_kfold_keeps_groups_together():
    splits = repeated_kfold_splits(36, groups=GROUPS, n_splits=4, n_repeats=5, random_state=1)
    _check_partition(splits, 36, 4, 5, groups=GROUPS)
    # String labels work as well.
    labels = np.array([f"src{g}" for g in GROUPS])
    _check_partition(repeated_kfold_splits(36, groups=labels, n_splits=3, n_repeats=2), 36, 3, 2, labels)


def test_splits_are_deterministic_given_a_seed():
    for make in (
        lambda s: repeated_kfold_splits(40, groups=None, n_splits=5, n_repeats=4, random_state=s),
        lambda s: repeated_kfold_splits(36, groups=GROUPS, n_splits=3, n_repeats=4, random_state=s),
        lambda s: random_splits(40, n_repeats=4, random_state=s),
        lambda s: random_splits(36, groups=GROUPS, n_repeats=4, random_state=s),
    ):
        a, b, c = make(3), make(3), make(4)
        assert all(np.array_equal(x[1], y[1]) and np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_default_protocol_sizes():
    assert len(repeated_kfold_splits(50)) == 100  # FMC: 20 x 5-fold
    splits = random_splits(50)  # A2INet: 10 x 80/20
    assert len(splits) == 10
    assert all(len(test) == 10 and len(train) == 40 for train, test in splits)


def test_random_splits_with_groups():
    splits = random_splits(36, groups=GROUPS, test_size=0.25, n_repeats=6, random_state=0)
    for train, test in splits:
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(36))
        assert not set(GROUPS[train]) & set(GROUPS[test])
        assert len(set(GROUPS[test])) == 3  # ceil(0.25 * 12 groups)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: repeated_kfold_splits(30, groups=np.arange(30) % 3, n_splits=5), "only 3 groups"),
        (lambda: repeated_kfold_splits(4, n_splits=5), "only 4 samples"),
        (lambda: repeated_kfold_splits(10, n_splits=1), "n_splits must be an integer >= 2"),
        (lambda: repeated_kfold_splits(10, groups=[1, 2]), "groups must be 1-D with n = 10"),
        (lambda: repeated_kfold_splits(0), "n must be an integer >= 1"),
        (lambda: random_splits(10, test_size=1.2), "strictly between 0 and 1"),
        (lambda: random_splits(3, groups=[0, 0, 1], test_size=0.6), "leaves nothing to train on"),
    ],
)
def test_split_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(1, 5)), 3)) for _ in range(n)]
    y = np.array([x[:, 0].mean() for x in X]) * 2 + rng.normal(0, 0.1, n)
    return X, y


def test_evaluate_collects_metrics_predictions_and_counts():
    X, y = _data(30)
    splits = repeated_kfold_splits(30, n_splits=3, n_repeats=2, random_state=0)
    head = FirstFeatureHead(offset=1.0)
    FirstFeatureHead.fits = 0
    result = evaluate(head, X, y, splits=splits, video_ids=[f"v{i}" for i in range(30)], progress=False)
    assert isinstance(result, EvaluationResult)
    assert FirstFeatureHead.fits == 6 and not hasattr(head, "fitted_")  # clones were fitted
    assert len(result.per_split) == 6
    assert [m["split"] for m in result.per_split] == list(range(6))
    assert all(m["n_train"] + m["n_test"] == 30 for m in result.per_split)
    assert set(result.median) == {"srcc", "krcc", "plcc", "plcc_raw", "rmse"}
    for key, value in result.median.items():
        assert value == pytest.approx(np.median([m[key] for m in result.per_split]))
    np.testing.assert_array_equal(result.n_tested, np.full(30, 2))
    expected = np.array([x[:, 0].mean() for x in X]) + 1.0
    np.testing.assert_allclose(result.predictions, expected, atol=1e-12)
    assert result.video_ids[0] == "v0"


def test_evaluate_marks_untested_videos_with_nan():
    X, y = _data(30)
    splits = random_splits(30, n_repeats=2, random_state=0)
    result = evaluate(FirstFeatureHead(), X, y, splits=splits, progress=False)
    never = result.n_tested == 0
    assert never.any() and np.all(np.isnan(result.predictions[never]))
    assert np.all(np.isfinite(result.predictions[~never]))
    assert result.n_tested.sum() == sum(len(test) for _, test in splits)
    assert result.video_ids is None


def test_evaluate_accepts_2d_arrays():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = X[:, 0] + rng.normal(0, 0.1, 20)

    class Linear(FirstFeatureHead):
        def predict(self, X):
            return np.asarray(X)[:, 0]

    result = evaluate(Linear(), X, y, splits=random_splits(20, n_repeats=3), progress=False)
    assert result.median["srcc"] > 0.8


def test_evaluate_progress_goes_to_stderr(capsys):
    X, y = _data(15)
    splits = repeated_kfold_splits(15, n_splits=3, n_repeats=1)
    evaluate(FirstFeatureHead(), X, y, splits=splits, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    evaluate(FirstFeatureHead(), X, y, splits=splits, progress=True)
    captured = capsys.readouterr()
    assert "evaluate" in captured.err and captured.out == ""


def test_evaluate_refuses_small_test_sets_before_fitting():
    X, y = _data(10)
    FirstFeatureHead.fits = 0
    splits = [(np.arange(3, 10), np.arange(3)), (np.arange(2, 10), np.arange(2))]
    with pytest.raises(InvalidInputError, match="split 1 has 2 test samples"):
        evaluate(FirstFeatureHead(), X, y, splits=splits, progress=False)
    assert FirstFeatureHead.fits == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"splits": [(np.arange(5), np.arange(4, 10))]}, "both train and test"),
        ({"splits": [(np.arange(5), np.arange(5, 11))]}, r"outside \[0, 10\)"),
        ({"splits": [(np.arange(1), np.arange(1, 10))]}, "1 training samples"),
        ({"splits": []}, "no splits"),
        ({"splits": [(np.arange(5), np.arange(5, 10))], "video_ids": ["a"]}, "video_ids has 1"),
    ],
)
def test_evaluate_input_errors(kwargs, match):
    X, y = _data(10)
    with pytest.raises(InvalidInputError, match=match):
        evaluate(FirstFeatureHead(), X, y, progress=False, **kwargs)


def test_evaluate_names_the_split_when_metrics_fail():
    X, y = _data(12)
    splits = repeated_kfold_splits(12, n_splits=3, n_repeats=1)
    with pytest.raises(RegressorError, match=r"split 0 \(4 test videos\).*constant"):
        evaluate(ConstantHead(), X, y, splits=splits, progress=False)


def test_evaluate_length_mismatch():
    X, y = _data(10)
    with pytest.raises(InvalidInputError, match="X has 9 videos but y has 10"):
        evaluate(FirstFeatureHead(), X[:9], y, splits=random_splits(10), progress=False)


# ---------------------------------------------------------------- protocols by name, few groups, small data
from regressors.protocols import (  # noqa: E402
    PROTOCOLS,
    logistic_is_degenerate,
    plan_splits,
    train_val_test_splits,
    vsfa_splits,
)


def test_protocols_are_the_papers():
    assert PROTOCOLS.names() == ["fmc", "a2inet", "vsfa"]
    plan = plan_splits("fmc", 50)
    assert len(plan.splits) == 100 and plan.n_distinct == 100 and plan.notes == []
    assert plan.params == {"n_splits": 5, "n_repeats": 20}
    assert len(plan_splits("a2inet", 50).splits) == 10 and len(plan_splits("vsfa", 50).splits) == 10
    with pytest.raises(InvalidInputError, match="unknown protocol 'fcm'. Did you mean fmc"):
        plan_splits("fcm", 50)


def test_five_groups_give_five_distinct_kfold_splits_and_say_so():
    groups = np.repeat(np.arange(5), 17)  # 85 clips of 5 sources
    plan = plan_splits("fmc", 85, groups=groups)
    assert len(plan.splits) == 100 and plan.n_distinct == 5
    assert any("only 5 distinct splits among the 100 drawn" in n for n in plan.notes)
    X, y = _data(85)
    FirstFeatureHead.fits = 0
    result = evaluate(FirstFeatureHead(), X, y, groups=groups, protocol="fmc")
    assert FirstFeatureHead.fits == 5  # each distinct split fitted once
    assert result.n_distinct_splits == 5 and len(result.per_split) == 100
    assert sum("same_as" in m for m in result.per_split) == 95
    assert result.metrics["n_distinct_splits"] == 5 and result.metrics["notes"] == plan.notes
    # reusing a repeated split changes nothing: the median over all 100 as if each were fitted
    assert result.median["srcc"] == pytest.approx(np.median([m["srcc"] for m in result.per_split]))


def test_fewer_groups_than_folds_become_leave_one_group_out():
    groups = np.repeat(np.arange(3), 6)
    plan = plan_splits("fmc", 18, groups=groups, n_repeats=2)
    assert plan.params["n_splits"] == 3 and len(plan.splits) == 6 and plan.n_distinct == 3
    assert "only 3 groups, so 3-fold instead of 5-fold" in plan.notes[0]
    for _, test in plan.splits:
        assert len(set(groups[test])) == 1


def test_small_test_folds_take_fewer_folds_and_tiny_sets_are_refused_naming_the_flag():
    plan = plan_splits("fmc", 14, n_repeats=1)  # 5 folds of 14 would test 2 or 3 videos
    assert plan.params["n_splits"] == 4 and min(t.size for _, t in plan.splits) >= 3
    assert "5 folds would leave test folds under 3 videos, so 4-fold" in plan.notes[0]
    with pytest.raises(InvalidInputError, match="too few for the fmc protocol.*--protocol a2inet"):
        plan_splits("fmc", 5)
    grown = plan_splits("a2inet", 5, n_repeats=3)  # 1 of 5 videos would be tested: grown to 3
    assert all(t.size == 3 and tr.size == 2 for tr, t in grown.splits)
    assert "3 of 3 random test parts held fewer than 3 videos" in grown.notes[0]
    with pytest.raises(InvalidInputError, match="too few for the a2inet protocol"):
        plan_splits("a2inet", 4)


def test_growing_random_test_parts_keeps_the_draws():
    groups = np.repeat(np.arange(10), [1, 1, 1, 1, 1, 4, 4, 4, 4, 4])
    plain = random_splits(25, groups=groups, n_repeats=8, random_state=3)
    grown = random_splits(25, groups=groups, n_repeats=8, random_state=3, min_test_samples=3)
    for (_, te0), (_, te1) in zip(plain, grown, strict=True):
        assert set(te0) <= set(te1) and te1.size >= 3  # the same draw, extended
        if te0.size >= 3:
            assert np.array_equal(te0, te1)
    triples = train_val_test_splits(12, n_repeats=4, random_state=0, fractions=(0.8, 0.1, 0.1), min_test_samples=3)
    assert all(test.size == 3 and train.size >= 1 for train, _, test in triples)
    pairs = vsfa_splits(12, n_repeats=4, random_state=0, min_test_samples=3)
    assert all(np.array_equal(np.sort(np.concatenate(p)), np.arange(12)) for p in pairs)


@pytest.mark.slow
def test_evaluate_takes_a_protocol_or_splits_not_both():
    X, y = _data(20)
    with pytest.raises(InvalidInputError, match="either splits, or a protocol"):
        evaluate(FirstFeatureHead(), X, y, splits=random_splits(20), protocol="fmc")
    result = evaluate(FirstFeatureHead(), X, y, protocol="a2inet", n_repeats=3)
    assert result.protocol == "a2inet" and len(result.per_split) == 3


def test_degenerate_logistic_is_detected_and_reported_beside_raw_plcc():
    rng = np.random.default_rng(0)
    p = rng.standard_t(2, size=100)  # heavy-tailed predictions ...
    y = 1.5 + 3 * (p > 0.3) + rng.normal(0, 0.15, 100)  # ... of a MOS that is a threshold of them
    assert logistic_is_degenerate(y[:50], p[:50]) and logistic_is_degenerate(y, p)
    linear = rng.uniform(1, 5, 100)
    assert not logistic_is_degenerate(linear, linear + rng.normal(0, 0.5, 100))
    x = rng.normal(size=100)  # a genuinely logistic relation is not a step
    assert not logistic_is_degenerate(1 + 4 / (1 + np.exp(-x / 0.3)) + rng.normal(0, 0.2, 100), x)

    class Given(FirstFeatureHead):
        def predict(self, X):
            return np.array([float(np.asarray(x)[0, 0]) for x in X])

    X = [np.array([[v]]) for v in p]
    result = evaluate(Given(), X, y, splits=[(np.arange(50), np.arange(50, 100))])
    (row,) = result.per_split
    metrics = result.metrics
    assert row["logistic_degenerate"] is True and metrics["n_degenerate_logistic"] == 1
    assert any("collapsed to a step in 1 of 1 splits" in n and "raw PLCC" in n for n in metrics["notes"])
    assert metrics["plcc"] > metrics["plcc_raw"] + 0.2  # what the flag warns about
    assert metrics["pooled"]["logistic_degenerate"] is True
