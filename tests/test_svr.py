"""Tests for regressors.svr.SVRHead and regressors.persistence (save/load without pickle)."""

import json
import zipfile

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR
from sklearn.utils.estimator_checks import parametrize_with_checks

from regressors.errors import (
    HeadExistsError,
    InvalidInputError,
    ModelFormatError,
    NotFittedError,
    RegressorError,
)
from regressors.persistence import ARRAYS_FILE, META_FILE, list_heads, load_head, save_head
from regressors.svr import BVQA_C_GRID, BVQA_GAMMA_GRID, SVRHead
from regressors.temporal_pooling import pool_features


def _videos(n=60, d=6, seed=0):
    """n videos of random length [T_i, d] and a MOS that depends non-linearly on them."""
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(2, 9)), d)) * [1, 2, 3, 0.5, 10, 1][:d] + 5 for _ in range(n)]
    w = rng.normal(size=d)
    y = np.array([np.tanh(pool_features(x, "mean") @ w / 10) for x in X]) * 2 + 3
    return X, y + rng.normal(0, 0.05, n)


# --------------------------------------------------------------- sklearn contract
# The grid-searching "bvqa" preset (no C/gamma given) is not run through the checks:
# its inner 5-fold search refuses the 1- to 9-sample fits several checks make, and 100
# candidate fits per check would make the suite slow. It is tested directly below.
# pooling="meanmax" passes these checks too; it is left out for speed (its 2-D handling
# is covered by test_list_and_2d_inputs_are_consistent).
@parametrize_with_checks([SVRHead(), SVRHead(pooling=None), SVRHead(preset="bvqa", C=4.0, gamma=0.5)])
def test_sklearn_estimator_checks(estimator, check):
    # check_regressor_data_not_an_array is skipped by scikit-learn itself when pandas is
    # missing, and check_array_api_input when SCIPY_ARRAY_API is unset.
    check(estimator)


def test_params_and_clone():
    head = SVRHead(pooling="max", preset="bvqa", C=8.0, inner_cv=3)
    params = head.get_params()
    assert params == {
        "pooling": "max",
        "preset": "bvqa",
        "C": 8.0,
        "epsilon": None,
        "gamma": None,
        "inner_cv": 3,
        "random_state": 0,
        "n_jobs": None,
    }
    twin = clone(head)
    assert twin is not head and twin.get_params() == params
    X, y = _videos(30)
    fitted = SVRHead().fit(X, y)
    assert not hasattr(clone(fitted), "support_vectors_")


def test_unfitted_predict_raises_both_not_fitted_errors():
    with pytest.raises(NotFittedError) as info:
        SVRHead().predict(np.ones((2, 3)))
    assert isinstance(info.value, SklearnNotFittedError)
    with pytest.raises(NotFittedError):
        save_head(SVRHead(), "/nonexistent/never-created", feature_info={})


# --------------------------------------------------------------- parity with sklearn
def test_fmc_predict_equals_sklearn_pipeline():
    X, y = _videos(80)
    head = SVRHead(pooling="meanmax").fit(X[:60], y[:60])
    pooled = np.stack([pool_features(x, "meanmax") for x in X])
    ref = TransformedTargetRegressor(
        regressor=make_pipeline(StandardScaler(), SVR(kernel="rbf", C=1.0, epsilon=0.3, gamma="scale")),
        transformer=StandardScaler(),
    ).fit(pooled[:60], y[:60])
    np.testing.assert_allclose(head.predict(X[60:]), ref.predict(pooled[60:]), rtol=0, atol=1e-10)
    np.testing.assert_allclose(head.predict(X), ref.predict(pooled), rtol=0, atol=1e-10)
    svr = ref.regressor_[-1]
    assert head.gamma_ == pytest.approx(svr._gamma, rel=1e-15)
    assert head.support_vectors_.shape == svr.support_vectors_.shape
    assert (head.C_, head.epsilon_, head.best_params_) == (1.0, 0.3, None)


def test_bvqa_fixed_params_equals_sklearn_pipeline():
    X, y = _videos(50, seed=1)
    head = SVRHead(pooling="max", preset="bvqa", C=16.0, gamma=0.25).fit(X, y)
    pooled = np.stack([pool_features(x, "max") for x in X])
    ref = make_pipeline(MinMaxScaler(), SVR(kernel="rbf", C=16.0, gamma=0.25, epsilon=0.1)).fit(pooled, y)
    np.testing.assert_allclose(head.predict(X), ref.predict(pooled), rtol=0, atol=1e-10)
    assert (head.y_center_, head.y_scale_) == (0.0, 1.0)  # bvqa does not scale y


@pytest.mark.slow
def test_bvqa_grid_search_matches_gridsearchcv_on_training_set():
    X, y = _videos(24, seed=2)
    head = SVRHead(preset="bvqa", inner_cv=2, random_state=7).fit(X, y)
    Xs = MinMaxScaler().fit_transform(np.stack([pool_features(x, "mean") for x in X]))
    search = GridSearchCV(
        SVR(kernel="rbf", epsilon=0.1),
        {"C": list(BVQA_C_GRID), "gamma": list(BVQA_GAMMA_GRID)},
        cv=KFold(2, shuffle=True, random_state=7),
    ).fit(Xs, y)
    assert head.best_params_ == {k: float(v) for k, v in search.best_params_.items()}
    assert (head.C_, head.gamma_) == (head.best_params_["C"], head.best_params_["gamma"])
    assert BVQA_C_GRID[0] == 2.0 and BVQA_C_GRID[-1] == 1024.0
    assert BVQA_GAMMA_GRID[0] == 2.0**-8 and BVQA_GAMMA_GRID[-1] == 2.0
    # A given C leaves only gamma to search.
    only_gamma = SVRHead(preset="bvqa", C=2.0, inner_cv=2).fit(X, y)
    assert only_gamma.best_params_["C"] == 2.0


def test_overrides_replace_preset_defaults():
    X, y = _videos(30)
    head = SVRHead(C=10.0, epsilon=0.05, gamma=0.01).fit(X, y)
    assert (head.C_, head.epsilon_, head.gamma_) == (10.0, 0.05, 0.01)
    auto = SVRHead(pooling="meanmax", gamma="auto").fit(X, y)
    assert auto.gamma_ == pytest.approx(1.0 / 12)


def test_list_and_2d_inputs_are_consistent():
    X, y = _videos(40)
    pooled = np.stack([pool_features(x, "mean") for x in X])
    from_list = SVRHead().fit(X, y)
    from_2d = SVRHead().fit(pooled, y)
    np.testing.assert_allclose(from_list.predict(X), from_2d.predict(pooled), atol=1e-12)
    # A 2-D [N, D] array is N one-step videos, also for meanmax.
    rows = [r[None, :] for r in pooled]
    a = SVRHead(pooling="meanmax").fit(rows, y).predict(rows)
    b = SVRHead(pooling="meanmax").fit(pooled, y).predict(pooled)
    np.testing.assert_allclose(a, b, atol=1e-12)
    # A 3-D [N, T, D] array is N sequences.
    X3 = np.stack([np.resize(x, (4, x.shape[1])) for x in X])
    assert SVRHead().fit(X3, y).n_features_in_ == 6


@pytest.mark.parametrize(
    "make_x, match",
    [
        (lambda X: X[:-1] + [np.ones((3, 5))], "different feature dims"),
        (lambda X: X[:-1] + [np.full((3, 6), np.nan)], "NaN"),
        (lambda X: X[:-1] + [np.ones((0, 6))], "0 sample"),
    ],
)
def test_bad_sequences_raise_value_errors(make_x, match):
    X, y = _videos(10)
    with pytest.raises(ValueError, match=match):
        SVRHead().fit(make_x(X), y)


def test_predict_checks_feature_dims_and_params():
    X, y = _videos(20)
    head = SVRHead().fit(X, y)
    with pytest.raises(InvalidInputError, match="expecting 6 features"):
        head.predict([np.ones((3, 4))])
    with pytest.raises(InvalidInputError, match="unknown preset"):
        SVRHead(preset="vsfa").fit(X, y)
    with pytest.raises(InvalidInputError, match="unknown pooling"):
        SVRHead(pooling="median").fit(X, y)
    with pytest.raises(InvalidInputError, match="C must be a positive"):
        SVRHead(C=-1.0).fit(X, y)
    with pytest.raises(InvalidInputError, match="requires y to be passed"):
        SVRHead().fit(X, None)
    with pytest.raises(InvalidInputError, match="needs at least 6 training videos"):
        SVRHead(preset="bvqa", inner_cv=3).fit(X[:5], y[:5])


# --------------------------------------------------------------- persistence
# The bvqa case searches gamma only (C given) to stay fast; it still stores best_params_.
@pytest.mark.parametrize("params", [{"pooling": "meanmax"}, {"preset": "bvqa", "C": 8.0, "inner_cv": 2}])
def test_save_load_round_trip_without_pickle(tmp_path, params):
    X, y = _videos(30)
    head = SVRHead(**params).fit(X, y)
    info = {"feature_set": "resnet50-a2inet", "dims": 6, "pooling": head.pooling, "n": np.int64(30)}
    out = save_head(head, tmp_path / "model", feature_info=info)
    assert out == tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == [META_FILE, ARRAYS_FILE]

    meta = json.loads((out / META_FILE).read_text())
    assert meta["type"] == "svr" and meta["version"] == 1
    assert meta["params"] == head.get_params()
    assert meta["arrays"]["support_vectors"]["shape"] == list(head.support_vectors_.shape)
    with np.load(out / ARRAYS_FILE, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(meta["arrays"])
        assert all(npz[k].dtype.kind == "f" for k in npz.files)
    with zipfile.ZipFile(out / ARRAYS_FILE) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())

    loaded, feature_info = load_head(out)
    assert isinstance(loaded, SVRHead) and loaded.get_params() == head.get_params()
    assert feature_info == {**info, "n": 30}
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
    assert loaded.best_params_ == head.best_params_


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    X, y = _videos(20)
    head = SVRHead().fit(X, y)
    save_head(head, tmp_path, feature_info={})
    with pytest.raises(HeadExistsError, match="overwrite=True"):
        save_head(head, tmp_path, feature_info={})
    other = SVRHead(C=5.0).fit(X, y)
    save_head(other, tmp_path, feature_info={"v": 2}, overwrite=True)
    loaded, info = load_head(tmp_path)
    assert loaded.C_ == 5.0 and info == {"v": 2}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_save_rejects_unregistered_heads_and_bad_feature_info(tmp_path):
    X, y = _videos(20)
    with pytest.raises(RegressorError, match="not a registered head type"):
        save_head(SVR().fit(np.stack([x[0] for x in X]), y), tmp_path, feature_info={})
    head = SVRHead().fit(X, y)
    with pytest.raises(RegressorError, match="cannot be saved in JSON"):
        save_head(head, tmp_path, feature_info={"bad": object()})
    assert "svr" in list_heads()


@pytest.fixture
def saved(tmp_path):
    X, y = _videos(20)
    save_head(SVRHead().fit(X, y), tmp_path, feature_info={})
    return tmp_path


def _edit_meta(directory, **changes):
    path = directory / META_FILE
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda d: (d / META_FILE).unlink(), "file missing"),
        (lambda d: (d / META_FILE).write_text("{not json"), "not a readable JSON"),
        (lambda d: _edit_meta(d, format="something-else"), "not a saved head"),
        (lambda d: _edit_meta(d, format_version=99), "format version 99"),
        (lambda d: _edit_meta(d, type="svm"), "head.json: unknown head type 'svm'. Did you mean svr"),
        (lambda d: _edit_meta(d, version=2), "head version 2"),
        (lambda d: _edit_meta(d, params=[1, 2]), "'params'"),
        (lambda d: (d / ARRAYS_FILE).unlink(), "array file missing"),
        (lambda d: (d / ARRAYS_FILE).write_bytes(b"garbage"), "unreadable array file"),
        (lambda d: np.savez(d / ARRAYS_FILE, x=np.ones(2)), "do not match"),
        (
            lambda d: np.savez(
                d / ARRAYS_FILE, **{k: np.ones(1) for k in ("x_center", "x_scale", "support_vectors", "dual_coef")}
            ),
            "declared",
        ),
        (
            lambda d: np.savez(
                d / ARRAYS_FILE,
                x_center=np.ones(6),
                x_scale=np.ones(6),
                support_vectors=np.array([None, 1], dtype=object),
                dual_coef=np.ones(2),
            ),
            "unreadable array file",
        ),
        (lambda d: _edit_meta(d, state={}), "inconsistent svr head state"),
    ],
)
def test_load_errors_name_the_file(saved, corrupt, match):
    corrupt(saved)
    with pytest.raises(ModelFormatError, match=match) as info:
        load_head(saved)
    assert str(saved) in str(info.value)


# --------------------------------------------------------------- pooling as a composable step
def test_heads_saved_before_pooling_moved_out_load_and_predict_the_same():
    """tests/fixtures/svr_head_v1 was saved by SVRHead as it was at commit 611005c
    (tests/fixtures/make_svr_head_fixture.py regenerates it)."""
    import importlib.util
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    spec = importlib.util.spec_from_file_location("make_svr_head_fixture", fixtures / "make_svr_head_fixture.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    X, y = maker.data()
    head, info = load_head(fixtures / "svr_head_v1")
    assert isinstance(head, SVRHead) and head.pooling == "meanmax" and head.n_features_in_ == 4
    expected = np.load(fixtures / "svr_head_v1_predictions.npy")
    np.testing.assert_array_equal(head.predict(X[18:]), expected)
    # and today's code, fitting the same data, gives the very same head
    np.testing.assert_array_equal(SVRHead(pooling="meanmax").fit(X[:18], y[:18]).predict(X[18:]), expected)


def test_pooling_none_takes_pooled_features_and_with_pooling_restores_videos(tmp_path):
    X, y = _videos(40)
    pooled = np.stack([pool_features(x, "meanmax") for x in X])
    on_pooled = SVRHead(pooling=None).fit(pooled[:30], y[:30])
    assert on_pooled.n_features_in_ == 12
    on_videos = on_pooled.with_pooling("meanmax")
    assert on_videos.pooling == "meanmax" and on_videos.n_features_in_ == 6 and on_pooled.pooling is None
    direct = SVRHead(pooling="meanmax").fit(X[:30], y[:30])
    np.testing.assert_array_equal(on_videos.predict(X[30:]), direct.predict(X[30:]))
    np.testing.assert_array_equal(on_pooled.predict(pooled[30:]), direct.predict(X[30:]))
    save_head(on_videos, tmp_path / "m", feature_info={})
    loaded, _ = load_head(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(X[30:]), direct.predict(X[30:]))
    with pytest.raises(InvalidInputError, match="needs a head fitted with pooling=None"):
        direct.with_pooling("mean")
    with pytest.raises(InvalidInputError, match="cannot come from 'meanmax'"):
        SVRHead(pooling=None).fit(pooled[:30, :11], y[:30]).with_pooling("meanmax")
    with pytest.raises(NotFittedError):
        SVRHead(pooling=None).with_pooling("mean")
