"""Tests of feature_store.dataset: joining feature sets by video, lazy reads, cached stats."""

from __future__ import annotations

import numpy as np
import pytest
import zarr.storage

from feature_store import (
    FeatureDataset,
    FeatureNotFoundError,
    FeatureStore,
    InvalidFeaturesError,
    InvalidMetadataError,
    ProvenanceMismatchError,
    encode_node_name,
    feature_stats,
    remove,
    verify,
)

FRAMES = ({"name": "resnet50", "dims": 6}, {"strategy": "uniform", "value": 8})
CLIPS = ({"name": "slowfast", "dims": 4}, {"strategy": "clips", "value": 32})
VIDEOS = ["a.mp4", "b.mp4", "c/d.mp4"]


def feats(seed: int, steps: int, dims: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (offset + np.maximum(rng.standard_normal((steps, dims)), 0)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    store = FeatureStore(tmp_path / "store")
    for k, (spec, sampling) in enumerate([FRAMES, CLIPS]):
        sid = store.ensure_feature_set(spec=spec, sampling=sampling)
        for i, vid in enumerate(VIDEOS):
            x = feats(10 * k + i, steps=3 + i + 2 * k, dims=spec["dims"])
            store.write_video(sid, vid, x, provenance={"set": {"k": k}})
    return store


@pytest.fixture
def sets(store):
    return [store.resolve("resnet50"), store.resolve("slowfast")]


def test_join_by_video(store, sets):
    ds = FeatureDataset(store, sets, ["c/d.mp4", "a.mp4"])
    assert len(ds) == 2 and ds.dims == [6, 4]
    assert ds.shapes(0) == [(5, 6), (7, 4)]
    first = ds[0]
    assert [x.shape for x in first] == [(5, 6), (7, 4)]
    assert all(x.dtype == np.float32 for x in first)
    np.testing.assert_array_equal(first[0], feats(2, 5, 6))
    np.testing.assert_array_equal(first[1], feats(12, 7, 4))
    np.testing.assert_array_equal(ds[-1][0], feats(0, 3, 6))
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError):
        ds["a.mp4"]
    assert "2 videos x 2 feature sets" in repr(ds)
    with pytest.raises(InvalidMetadataError):
        FeatureDataset(store, [], VIDEOS)
    with pytest.raises(InvalidMetadataError):
        FeatureDataset(store, [sets[0], sets[0]], VIDEOS)


def test_lazy_until_computed(store, sets, monkeypatch):
    chunk_reads = []
    real_get = zarr.storage.LocalStore.get

    async def get(self, key, *args, **kwargs):
        if key.startswith("c/"):
            chunk_reads.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    ds = FeatureDataset(store, sets, VIDEOS)
    lazy = ds.to_dask()
    assert len(lazy) == 3 and [len(row) for row in lazy] == [2, 2, 2]
    assert lazy[1][1].shape == (6, 4) and lazy[1][1].dtype == np.float32
    assert chunk_reads == []  # nothing read yet
    np.testing.assert_array_equal(lazy[1][1].compute(), feats(11, 6, 4))
    assert len(chunk_reads) == 1


def test_missing_pairs_are_all_listed(store, sets):
    remove(store, sets[1], video_ids=["b.mp4"])
    with pytest.raises(FeatureNotFoundError) as info:
        FeatureDataset(store, [sets[0], "nope--all--0000000000", sets[1]], ["a.mp4", "b.mp4", "zz"])
    err = info.value
    assert isinstance(err, KeyError)
    assert err.missing == [
        (sets[0], "zz"),
        ("nope--all--0000000000", "a.mp4"),
        ("nope--all--0000000000", "b.mp4"),
        ("nope--all--0000000000", "zz"),
        (sets[1], "b.mp4"),
        (sets[1], "zz"),
    ]
    msg = str(err)
    assert "6 (feature set, video) pairs" in msg
    assert f"feature set {sets[1]!r}: 2 of 3 videos: 'b.mp4', 'zz'" in msg
    assert "'nope--all--0000000000' does not exist (all 3 videos)" in msg


def test_mixed_provenance_is_refused(store, sets):
    store.write_video(sets[0], "odd.mp4", feats(0, 3, 6), provenance={"set": {"k": 99}})
    with pytest.raises(ProvenanceMismatchError):
        FeatureDataset(store, sets[:1], ["a.mp4", "odd.mp4"])
    FeatureDataset(store, sets[:1], ["a.mp4"])  # fine without the odd one
    with pytest.raises(ProvenanceMismatchError):
        feature_stats(store, sets[0])


def all_steps(store, set_id) -> np.ndarray:
    return np.concatenate([store.read_video(set_id, v) for v in store.video_ids(set_id)]).astype(np.float64)


def test_stats_match_numpy_and_are_cached(store, sets, monkeypatch):
    ds = FeatureDataset(store, sets, ["a.mp4"])  # stats cover the whole set, not the dataset
    mean, std = ds.stats(sets[0])
    ref = all_steps(store, sets[0])
    assert mean.shape == std.shape == (6,) and mean.dtype == std.dtype == np.float64
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=0), rtol=1e-12)
    assert (store.path / encode_node_name(sets[0]) / "_stats" / "zarr.json").is_file()
    assert store.video_ids(sets[0]) == sorted(VIDEOS)  # the cache is not a video
    assert verify(store).ok

    # a new dataset (or process) gets the cached values without reading any video
    def no_reads(*args, **kwargs):
        raise AssertionError("video data read although the statistics are cached")

    monkeypatch.setattr(store.layout, "open_video", no_reads)
    m2, s2 = FeatureDataset(store, sets, VIDEOS).stats(sets[0])
    np.testing.assert_array_equal(m2, mean)
    np.testing.assert_array_equal(s2, std)
    monkeypatch.undo()
    with pytest.raises(FeatureNotFoundError):
        ds.stats("other")


@pytest.mark.parametrize("change", ["add", "remove", "replace"])
def test_stats_cache_follows_the_video_list(store, sets, change):
    sid = sets[1]
    before = feature_stats(store, sid)
    if change == "add":
        store.write_video(sid, "new.mp4", feats(5, 9, 4, offset=3), provenance={"set": {"k": 1}})
    elif change == "remove":
        remove(store, sid, video_ids=["a.mp4"])
    else:  # same ids, other values: the write id changes
        store.write_video(sid, "a.mp4", feats(5, 5, 4, offset=3), provenance={"set": {"k": 1}}, overwrite=True)
    mean, std = feature_stats(store, sid)
    ref = all_steps(store, sid)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=0), rtol=1e-12)
    assert not np.allclose(mean, before[0])
    # recomputed once, then cached again
    np.testing.assert_array_equal(feature_stats(store, sid)[0], mean)
    assert store.feature_set_info(sid)["incomplete"] == 0


def test_stats_streaming_is_stable_and_multi_chunk(tmp_path, monkeypatch):
    from feature_store import _format

    monkeypatch.setattr(_format, "MAX_CHUNK_STEPS", 4)  # several chunks per video
    store = FeatureStore(tmp_path / "s")
    sid = store.ensure_feature_set(spec={"name": "big"}, sampling={"strategy": "all"})
    rng = np.random.default_rng(0)
    xs = [(1e4 + rng.standard_normal((11 + i, 3))).astype(np.float32) for i in range(5)]
    xs[0][:, 2] = 7.0
    for i, x in enumerate(xs):
        store.write_video(sid, f"v{i}", x, provenance={"set": {}})
    mean, std = feature_stats(store, sid)
    ref = np.concatenate(xs).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(std, ref.std(axis=0), rtol=1e-9)
    const = store.ensure_feature_set(spec={"name": "const"}, sampling={"strategy": "all"}, dtype="float16")
    store.write_video(const, "v", np.full((9, 2), 3.0), provenance={"set": {}})
    mean, std = feature_stats(store, const)
    np.testing.assert_array_equal(mean, [3.0, 3.0])
    np.testing.assert_array_equal(std, [0.0, 0.0])
    empty = store.ensure_feature_set(spec={"name": "empty"}, sampling={"strategy": "all"})
    with pytest.raises(FeatureNotFoundError, match="no complete video"):
        feature_stats(store, empty)
    for chunk in (store.path / encode_node_name(sid) / "v3" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
            break
    with pytest.raises(InvalidFeaturesError, match="v3: NaN/Inf"):
        feature_stats(store, sid, recompute=True)  # (the cache does not look at data)
