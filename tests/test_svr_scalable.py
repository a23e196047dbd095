"""Tests for regressors.svr_scalable.NystroemSVRHead: the scalable RBF SVR (Nystroem + liblinear)."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from regressors.errors import InvalidInputError, ModelFormatError
from regressors.persistence import ARRAYS_FILE, META_FILE, list_heads, load_head, save_head
from regressors.svr import SVRHead
from regressors.svr_scalable import (
    DEFAULT_N_COMPONENTS,
    EXACT_SVR_MAX_VIDEOS,
    NystroemSVRHead,
    scalable_svr_preset,
)


def _features(n, d=64, k=6, seed=0):
    """``[n, d]`` float32 features driven by ``k`` latent factors (as pooled CNN features are:
    strongly correlated, non-negative) and a MOS that depends non-linearly on the factors."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    A = rng.normal(size=(k, d)) / np.sqrt(k)
    X = (np.logaddexp(0, z @ A) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    y = np.tanh(z @ rng.normal(size=k) / np.sqrt(k)) + 0.5 * np.sin(z @ rng.normal(size=k) / np.sqrt(k))
    return X, 3 + 0.8 * y + 0.1 * rng.normal(size=n)


# --------------------------------------------------------------- sklearn contract
@parametrize_with_checks([NystroemSVRHead(n_components=20), NystroemSVRHead(preset="bvqa", C=4.0, gamma=0.5)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_params_clone_and_determinism():
    head = NystroemSVRHead(pooling="max", n_components=50, max_iter=500, random_state=3)
    params = head.get_params()
    assert params == {
        "pooling": "max",
        "preset": "fmc",
        "C": None,
        "epsilon": None,
        "gamma": None,
        "n_components": 50,
        "max_iter": 500,
        "tol": 1e-4,
        "inner_cv": 5,
        "random_state": 3,
        "n_jobs": None,
    }
    assert NystroemSVRHead().n_components == DEFAULT_N_COMPONENTS
    twin = clone(head)
    assert twin is not head and twin.get_params() == params
    X, y = _features(120)
    a, b = head.fit(X, y), twin.fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))  # same random_state, same landmarks
    assert not hasattr(clone(a), "support_vectors_")
    other = NystroemSVRHead(pooling="max", n_components=50, max_iter=500, random_state=4).fit(X, y)
    assert not np.array_equal(other.support_vectors_, a.support_vectors_)  # the seed draws the landmarks


@pytest.mark.parametrize("bad", [{"n_components": 0}, {"n_components": 2.5}, {"max_iter": 0}, {"tol": -1.0}])
def test_bad_solver_params_are_refused(bad):
    X, y = _features(20)
    with pytest.raises(InvalidInputError, match=next(iter(bad))):
        NystroemSVRHead(**bad).fit(X, y)


# --------------------------------------------------------------- parity with the exact SVR
@pytest.mark.parametrize("params", [{}, {"preset": "bvqa", "C": 4.0, "gamma": 0.05}])
def test_full_rank_reproduces_the_exact_svr(params):
    """With a landmark per training video the kernel is exact: same model as libsvm's SVR."""
    X, y = _features(150, seed=1)
    exact = SVRHead(**params).fit(X[:120], y[:120])
    fast = NystroemSVRHead(n_components=500, max_iter=20000, **params).fit(X[:120], y[:120])
    assert fast.n_components_ == 120 and fast.converged_
    assert fast.gamma_ == pytest.approx(exact.gamma_, rel=1e-5)
    np.testing.assert_allclose(fast.predict(X), exact.predict(X), rtol=0, atol=2e-3)


def test_low_rank_parity_srcc_within_0_01_of_the_exact_svr():
    X, y = _features(700, d=256, seed=2)
    train, test = slice(0, 560), slice(560, None)
    exact = SVRHead().fit(X[train], y[train]).predict(X[test])
    fast_head = NystroemSVRHead(n_components=140).fit(X[train], y[train])  # m = n_train / 4
    fast = fast_head.predict(X[test])
    assert fast_head.n_components_ == 140 and fast_head.converged_
    srcc_exact, srcc_fast = spearmanr(exact, y[test])[0], spearmanr(fast, y[test])[0]
    assert srcc_exact > 0.8  # the target is learnable
    assert abs(srcc_fast - srcc_exact) <= 0.01
    assert spearmanr(fast, exact)[0] > 0.99  # and the two rank the videos alike


def test_float32_and_video_inputs():
    X, y = _features(100)
    h32 = NystroemSVRHead(n_components=40).fit(X, y)
    h64 = NystroemSVRHead(n_components=40).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(h32.predict(X), h64.predict(X), atol=1e-4)
    videos = [np.stack([row, row]) for row in X]  # two identical steps: mean pooling gives the row
    np.testing.assert_allclose(
        NystroemSVRHead(n_components=40).fit(videos, y).predict(videos), h32.predict(X), atol=1e-4
    )
    pooled_step = NystroemSVRHead(pooling=None, n_components=40).fit(X, y)
    np.testing.assert_allclose(pooled_step.predict(X), h32.predict(X), atol=1e-6)


# --------------------------------------------------------------- bvqa grid search
@pytest.fixture
def loky_workers_stop():
    """The grid search runs in joblib's reusable worker processes, which otherwise idle for
    minutes after it; stop them so that the session's leftover-process check stays meaningful."""
    yield
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.usefixtures("loky_workers_stop")
def test_grid_search_parallel_equals_serial_and_follows_the_grid():
    X, y = _features(80, d=16, seed=3)
    kw = {"preset": "bvqa", "n_components": 30, "max_iter": 300, "inner_cv": 3, "random_state": 1}
    serial = NystroemSVRHead(n_jobs=1, **kw).fit(X, y)
    parallel = NystroemSVRHead(n_jobs=2, **kw).fit(X, y)
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.predict(X), serial.predict(X))
    assert (serial.C_, serial.gamma_) == (serial.best_params_["C"], serial.best_params_["gamma"])
    only_gamma = NystroemSVRHead(C=2.0, n_jobs=-1, **kw).fit(X, y)
    assert only_gamma.best_params_["C"] == 2.0
    with pytest.raises(InvalidInputError, match="inner_cv"):
        NystroemSVRHead(preset="bvqa", inner_cv=1).fit(X, y)


@pytest.mark.slow
def test_exact_svr_grid_search_runs_in_threads_with_the_serial_result():
    X, y = _features(60, d=8, seed=4)
    serial = SVRHead(preset="bvqa", inner_cv=2, n_jobs=1).fit(X, y)
    parallel = SVRHead(preset="bvqa", inner_cv=2, n_jobs=2).fit(X, y)
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.predict(X), serial.predict(X))


def test_presets_build_the_scalable_heads_with_parallel_grids():
    from regressors.presets import make_head

    fast, bvqa_fast = make_head("svr-fast", pooling="max"), make_head("svr-bvqa-fast")
    assert type(fast) is NystroemSVRHead and (fast.preset, fast.pooling) == ("fmc", "max")
    assert type(bvqa_fast) is NystroemSVRHead and (bvqa_fast.preset, bvqa_fast.n_jobs) == ("bvqa", -1)
    assert make_head("svr-bvqa").n_jobs == -1  # the exact grid on every usable core too


# --------------------------------------------------------------- persistence
def test_save_load_round_trip_without_pickle(tmp_path):
    X, y = _features(90)
    head = NystroemSVRHead(pooling="meanmax", n_components=30).fit(X, y)
    out = save_head(head, tmp_path / "model", feature_info={"dims": 64})
    meta = json.loads((out / META_FILE).read_text())
    assert meta["type"] == "svr-nystroem" and meta["version"] == 1 and "svr-nystroem" in list_heads()
    assert meta["params"] == head.get_params()
    assert meta["arrays"]["support_vectors"]["shape"] == [30, 128]  # landmarks after meanmax pooling
    loaded, info = load_head(out)
    assert type(loaded) is NystroemSVRHead and info == {"dims": 64}
    assert (loaded.n_components_, loaded.rank_, loaded.n_iter_, loaded.converged_) == (
        head.n_components_,
        head.rank_,
        head.n_iter_,
        head.converged_,
    )
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda arrays, state: arrays.update(dual_coef=arrays["dual_coef"] * np.nan), "'dual_coef' has 10 NaN"),
        (lambda arrays, state: state.update(n_components_used=7), "landmarks stored"),
        (lambda arrays, state: state.update(rank=0), "landmarks stored"),
        (lambda arrays, state: state.update(intercept=float("inf")), "non-finite number"),
    ],
)
def test_load_refuses_tampered_arrays(tmp_path, corrupt, match):
    X, y = _features(40)
    save_head(NystroemSVRHead(n_components=10).fit(X, y), tmp_path, feature_info={})
    meta = json.loads((tmp_path / META_FILE).read_text())
    with np.load(tmp_path / ARRAYS_FILE) as npz:
        arrays = dict(npz)
    corrupt(arrays, meta["state"])
    np.savez(tmp_path / ARRAYS_FILE, **arrays)
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=match):
        load_head(tmp_path)


# --------------------------------------------------------------- automatic choice
def test_scalable_preset_chosen_above_the_documented_size():
    assert scalable_svr_preset("svr", n_videos=EXACT_SVR_MAX_VIDEOS) is None
    assert scalable_svr_preset("svr", n_videos=EXACT_SVR_MAX_VIDEOS + 1) == "svr-fast"
    assert scalable_svr_preset("svr-bvqa", n_videos=EXACT_SVR_MAX_VIDEOS + 1) == "svr-bvqa-fast"
    assert scalable_svr_preset("vsfa", n_videos=10**6) is None
    assert scalable_svr_preset("svr", n_videos=11, max_exact=10) == "svr-fast"


def _tiny_store(root):
    """A store with one feature set of 24 videos x [4, 16] and a manifest with MOS."""
    from feature_store import FeatureStore

    store = FeatureStore(root / "store")
    spec, sampling = {"name": "probe", "dims": 16}, {"strategy": "uniform", "value": 4}
    set_id = store.ensure_feature_set(spec=spec, sampling=sampling)
    X, y = _features(24, d=16)
    lines = ["video_id,path,mos"]
    for i, (row, mos) in enumerate(zip(X, y, strict=True)):
        store.write_video(
            set_id,
            f"v{i:02d}",
            np.stack([row] * 4),
            provenance={"set": {"spec": spec, "sampling": sampling}, "video": {"source": f"v{i}.mp4"}},
        )
        lines.append(f"v{i:02d},v{i}.mp4,{mos:.6f}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return store.path, manifest


@pytest.mark.parametrize("max_exact, expected", [(10, "svr-fast"), (24, "svr")])
def test_vqa_fit_switches_to_the_scalable_svr_above_the_threshold(tmp_path, monkeypatch, max_exact, expected):
    from flows.fit import fit_job

    monkeypatch.setattr("regressors.svr_scalable.EXACT_SVR_MAX_VIDEOS", max_exact)
    store, manifest = _tiny_store(tmp_path)
    messages = []
    fit_job(
        store=store,
        manifest=manifest,
        features=["probe"],
        out=tmp_path / "run",
        head="svr",
        protocol="fmc",
        n_repeats=1,
        progress=False,
        notify=messages.append,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["settings"]["head"], metrics["settings"]["head_requested"]) == (expected, "svr")
    saved = json.loads((tmp_path / "run" / "model" / META_FILE).read_text())
    head, _ = load_head(tmp_path / "run" / "model")
    if expected == "svr-fast":
        note = "--head svr on 24 videos (more than 10): the scalable svr-fast runs instead"
        assert any(note in m for m in messages) and any(note in n for n in metrics["notes"])
        assert saved["type"] == "svr-nystroem" and type(head) is NystroemSVRHead
        assert metrics["settings"]["head_params"]["n_components"] == DEFAULT_N_COMPONENTS
    else:
        assert not any("scalable" in m for m in messages)
        assert saved["type"] == "svr" and type(head) is SVRHead
