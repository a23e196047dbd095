"""`vqa fit` for analysts: the head's paper protocol by default, features read from the store
once per fit (pooled as read, or cached as stored), what every fit records, small data."""

import json

import numpy as np
import pytest

from feature_store import FeatureStore
from flows.fit import fit_job, predict_job
from flows.fit_data import FeatureCache, StoredVideos
from regressors.errors import InvalidInputError
from regressors.persistence import load_head


def _store(root, *, n=24, n_groups=6, dims=(32,), dtype="float16"):
    """Sets ``f0``, ``f1``... of ``n`` videos of 8-12 steps; MOS follows feature 0 of f0."""
    store = FeatureStore(root / "store", create=True)
    rng = np.random.default_rng(0)
    shift = rng.uniform(-2, 2, n)
    lengths = rng.integers(8, 13, n)
    for k, d in enumerate(dims):
        spec, sampling = {"name": f"f{k}", "dims": d}, {"strategy": "all"}
        set_id = store.ensure_feature_set(spec=spec, sampling=sampling, dtype=dtype)
        for i in range(n):
            x = rng.normal(size=(int(lengths[i]) + k, d)).astype(np.float32)
            x[:, 0] += shift[i]
            store.write_video(
                set_id, f"v{i:02d}", x, provenance={"set": {"spec": spec, "sampling": sampling}, "video": {}}
            )
    lines = ["video_id,path,mos,group"] + [
        f"v{i:02d},v{i:02d}.mp4,{3 + shift[i]:.5f},g{i % n_groups}" for i in range(n)
    ]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return store, manifest


@pytest.fixture
def count_reads(monkeypatch):
    reads = []
    real = FeatureStore.read_video

    def read_video(self, set_id, video_id):
        reads.append((set_id, video_id))
        return real(self, set_id, video_id)

    monkeypatch.setattr(FeatureStore, "read_video", read_video)
    return reads


QUICK = {"epochs": 3, "batch_size": 4}


@pytest.mark.parametrize(
    "head, dims, protocol, params",
    [
        ("svr", (32,), "fmc", {}),
        ("vsfa", (32,), "vsfa", QUICK),
        ("a2inet", (16, 24), "a2inet", {**QUICK, "module_params": {"d_model": 8}}),
    ],
)
def test_each_video_is_read_once_per_fit_and_the_papers_protocol_is_the_default(
    tmp_path, count_reads, head, dims, protocol, params
):
    store, manifest = _store(tmp_path, dims=dims)
    count_reads.clear()
    summary = fit_job(
        store=store.path,
        manifest=manifest,
        features=[f"f{k}" for k in range(len(dims))],
        out=tmp_path / "run",
        head=head,
        head_params=params,
        progress=False,
    )
    # every split and every epoch ran on what was read once: one read per video and feature set
    assert len(count_reads) == 24 * len(dims) and len(set(count_reads)) == 24 * len(dims)
    assert summary["protocol"] == protocol
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["settings"]["protocol"] == protocol and doc["n_splits"] == len(doc["per_split"])
    assert not (tmp_path / "run" / "fit-checkpoints").exists()  # the feature cache went with the state
    count_reads.clear()
    scores = predict_job(
        model=tmp_path / "run" / "model", store=store.path, manifest=manifest, out=tmp_path / "scores.csv"
    )
    assert len(scores.read_text().splitlines()) == 25
    assert len(count_reads) == 24 * len(dims)  # prediction reads each video once too


def test_every_fit_records_what_it_was_made_of(tmp_path):
    store, manifest = _store(tmp_path)
    summary = fit_job(
        store=store.path,
        manifest=manifest,
        features=["f0"],
        out=tmp_path / "run",
        head="svr",
        pooling="meanmax",
        n_repeats=2,
        progress=False,
    )
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    settings = doc["settings"]
    assert settings["store"] == str(store.path) and settings["manifest"] == str(manifest)
    assert [s["id"] for s in settings["feature_sets"]] == [store.resolve("f0")]
    assert settings["feature_sets"][0]["spec"]["name"] == "f0" and len(settings["manifest_sha256"]) == 64
    assert settings["head_params"]["pooling"] == "meanmax" and settings["head_params"]["preset"] == "fmc"
    assert set(settings["code_version"]) == {"version", "git_commit", "git_dirty"}
    assert settings["code_version"]["version"]
    assert (settings["n_videos"], settings["n_groups"], settings["grouped"]) == (24, 6, True)
    assert settings["protocol_params"] == {"n_splits": 5, "n_repeats": 2, "random_state": 0}
    assert doc["n_splits"] == 10 and doc["n_distinct_splits"] == summary["n_distinct_splits"] <= 10
    head, _ = load_head(tmp_path / "run" / "model")
    assert head.pooling == "meanmax" and head.n_features_in_ == 32  # saved as a head that takes videos


def test_few_groups_are_adapted_and_said(tmp_path):
    store, manifest = _store(tmp_path, n=24, n_groups=3)
    messages = []
    summary = fit_job(
        store=store.path,
        manifest=manifest,
        features=["f0"],
        out=tmp_path / "run",
        head="svr",
        n_repeats=4,
        progress=False,
        notify=messages.append,
    )
    assert summary["protocol_params"]["n_splits"] == 3 and summary["n_distinct_splits"] == 3
    assert any("only 3 groups, so 3-fold instead of 5-fold" in m for m in messages)
    assert any("only 3 distinct splits among the 12 drawn" in n for n in summary["notes"])


def test_too_little_data_is_refused_naming_the_flag_or_adapted(tmp_path):
    store, manifest = _store(tmp_path, n=5, n_groups=5)
    with pytest.raises(InvalidInputError, match="5 videos in 5 groups are too few.*--protocol a2inet"):
        fit_job(store=store.path, manifest=manifest, features=["f0"], out=tmp_path / "r", head="svr", progress=False)
    store, manifest = _store(tmp_path / "eight", n=8, n_groups=8)
    summary = fit_job(
        store=store.path,
        manifest=manifest,
        features=["f0"],
        out=tmp_path / "r8",
        head="svr",
        n_repeats=3,
        progress=False,
    )
    assert summary["protocol_params"]["n_splits"] == 2 and summary["n_splits"] == 6
    assert any("so 2-fold instead of 5-fold" in n for n in summary["notes"])


def test_paper_schedule_is_one_flag_away(tmp_path):
    store, manifest = _store(tmp_path)
    fit_job(
        store=store.path,
        manifest=manifest,
        features=["f0"],
        out=tmp_path / "run",
        head="vsfa",
        paper_schedule=True,
        head_params={"epochs": 2},
        n_repeats=1,
        progress=False,
    )
    settings = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]
    assert settings["schedule"] == "paper"
    assert (settings["head_params"]["lr"], settings["head_params"]["patience"]) == (1e-5, None)
    assert settings["head_params"]["epochs"] == 2  # an explicit --head-param still wins


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sequence_heads_read_a_cache_in_the_stored_dtype(tmp_path, dtype):
    store, manifest = _store(tmp_path, dims=(32, 8), dtype=dtype)
    videos = StoredVideos(store, [store.resolve("f0"), store.resolve("f1")], [f"v{i:02d}" for i in range(24)])
    with FeatureCache.build(videos, tmp_path / "cache.bin", dtype=dtype) as cache:
        assert cache.dtype == np.dtype(dtype) and len(cache) == 24
        sizes = [int(np.prod(item.shape)) for item in cache]
        assert (tmp_path / "cache.bin").stat().st_size == sum(sizes) * np.dtype(dtype).itemsize
        for i in (0, 13, 23):
            item = cache[i]
            assert item.shape == videos[i].shape and item.shape[1] == 40  # two sets joined
            np.testing.assert_array_equal(np.asarray(item, dtype=np.float32), videos.read(i))  # exact
            assert np.asarray(item).dtype == np.dtype(dtype)
