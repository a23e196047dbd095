"""Hardening, imports (docs/hardening.md, "Imports"): HDF5 and ``.npy`` imports are all or
nothing per feature set, and check declared sizes against the file and a limit before
allocating anything.
"""

from __future__ import annotations

import errno
import io
import json
import tracemalloc

import h5py
import numpy as np
import pytest

from feature_store import (
    FeatureStore,
    InvalidFeaturesError,
    encode_node_name,
    export_hdf5,
    import_hdf5,
    import_npy_folder,
)

SPEC = {"name": "probe", "version": 1, "dims": 8}
SAMPLING = {"strategy": "uniform", "value": 4}
SET_PROV = {"spec": SPEC, "sampling": SAMPLING}
IDS = ["a", "b", "c"]


def prov(video_id: str) -> dict:
    return {"set": dict(SET_PROV), "video": {"source": f"{video_id}.mp4"}}


def feats(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 8)).astype(np.float32)


@pytest.fixture
def export(tmp_path):
    """An export of one set holding videos a, b, c; returns (path, set_id)."""
    store = FeatureStore(tmp_path / "source")
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    for i, video_id in enumerate(IDS):
        store.write_video(set_id, video_id, feats(i), provenance=prov(video_id))
    path = tmp_path / "export.h5"
    export_hdf5(store, path)
    return path, set_id


def dataset(h5, set_id: str, video_id: str):
    return h5[encode_node_name(set_id)][encode_node_name(video_id)]


def test_nan_in_the_second_video_stores_nothing_and_leaves_no_set(export, tmp_path):
    path, set_id = export
    with h5py.File(path, "r+") as h5:
        dataset(h5, set_id, "b")[1, 2] = np.nan
    fresh = FeatureStore(tmp_path / "fresh")
    with pytest.raises(InvalidFeaturesError) as caught:
        import_hdf5(fresh, path)
    message = str(caught.value)
    assert "nothing was imported" in message and "'b': 1 of 24 feature values are NaN/Inf" in message
    assert fresh.feature_sets() == []  # video a was not stored first, and no empty set is left


def test_into_an_existing_set_a_refused_import_adds_nothing(export, tmp_path):
    path, set_id = export
    store = FeatureStore(tmp_path / "target")
    store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    store.write_video(set_id, "kept", feats(9), provenance=prov("kept"))
    with h5py.File(path, "r+") as h5:
        dataset(h5, set_id, "c")[0, 0] = np.inf
    with pytest.raises(InvalidFeaturesError, match="'c'"):
        import_hdf5(store, path)
    assert store.video_ids(set_id) == ["kept"]


@pytest.mark.parametrize("kind", ["hdf5", "npy"])
def test_a_write_failing_part_way_removes_what_the_import_added(export, tmp_path, monkeypatch, kind):
    """Disk full on the third video: the two written before it are removed again, and the set
    too when the import created it; videos stored before the import stay."""
    path, set_id = export
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, video_id in enumerate(IDS):
        np.save(folder / f"{video_id}.npy", feats(i))
    original = FeatureStore.write_video

    def full_on_c(self, set_id, video_id, *args, **kwargs):
        if video_id == "c":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, set_id, video_id, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_video", full_on_c)

    def run(store):
        if kind == "hdf5":
            return import_hdf5(store, path)
        return import_npy_folder(store, folder, spec=SPEC, sampling=SAMPLING)

    fresh = FeatureStore(tmp_path / "fresh")
    with pytest.raises(OSError, match="No space left"):
        run(fresh)
    assert fresh.feature_sets() == []
    existing = FeatureStore(tmp_path / "existing")
    sid = existing.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    original(existing, sid, "kept", feats(9), provenance=prov("kept"))
    with pytest.raises(OSError, match="No space left"):
        run(existing)
    assert existing.video_ids(sid) == ["kept"]


def test_a_small_file_declaring_57_gib_is_refused_before_allocating(export, tmp_path):
    """The review's case: a 250 KB file whose dataset declares [2,000,000, 7680] float32 (57 GiB,
    gzip-chunked, one chunk written) ended in numpy's _ArrayMemoryError."""
    path, set_id = export
    with h5py.File(path, "r+") as h5:
        group = h5[encode_node_name(set_id)]
        attrs = dict(group[encode_node_name("b")].attrs)
        del group[encode_node_name("b")]
        big = group.create_dataset(
            encode_node_name("b"), shape=(2_000_000, 7680), dtype="<f4", chunks=(8, 7680), compression="gzip"
        )
        big[:8] = np.ones((8, 7680), np.float32)
        big.attrs.update(attrs)
    assert path.stat().st_size < 300_000
    fresh = FeatureStore(tmp_path / "fresh")
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFeaturesError) as caught:
            import_hdf5(fresh, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "b: shape (2000000, 7680) declares 61440000000 bytes, over the import limit of 8589934592 bytes" in str(
        caught.value
    )
    assert peak < 20 * 2**20, peak
    assert fresh.feature_sets() == []


def test_a_dataset_declaring_more_than_its_file_holds_is_refused(export, tmp_path):
    """Under the limit, but the stored chunks could not hold the declared data even at
    deflate's best ratio: the rest would be fill values read as features."""
    path, set_id = export
    with h5py.File(path, "r+") as h5:
        group = h5[encode_node_name(set_id)]
        attrs = dict(group[encode_node_name("b")].attrs)
        del group[encode_node_name("b")]
        sparse = group.create_dataset(
            encode_node_name("b"), shape=(100_000, 8), dtype="<f4", chunks=(4, 8), compression="gzip"
        )
        sparse[:4] = 1.0
        sparse.attrs.update(attrs)
        plain = group.create_dataset("plain-c", shape=(1000, 8), dtype="<f4", chunks=(10, 8))
        plain[:10] = 1.0  # uncompressed: 320 of 32000 bytes stored
        plain.attrs.update(video_id="c2", provenance=json.dumps(prov("c2")))
    with pytest.raises(InvalidFeaturesError) as caught:
        import_hdf5(FeatureStore(tmp_path / "fresh"), path)
    message = str(caught.value)
    assert "b: shape (100000, 8) declares 3200000 bytes but the file holds" in message
    assert "c2: shape (1000, 8) declares 32000 bytes but the file holds 320 bytes" in message


def test_npy_nan_in_one_file_stores_nothing(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, video_id in enumerate(IDS):
        data = feats(i)
        if video_id == "b":
            data[2, 7] = np.nan
        np.save(folder / f"{video_id}.npy", data)
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(InvalidFeaturesError) as caught:
        import_npy_folder(store, folder, spec=SPEC, sampling=SAMPLING)
    assert "b.npy: video 'b': 1 of 24 feature values are NaN/Inf" in str(caught.value)
    assert store.feature_sets() == []


def test_npy_declared_sizes_are_checked_against_the_file_and_the_limit(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", feats(0))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2_000_000, 7680)})
    (folder / "b.npy").write_bytes(header.getvalue() + bytes(250_000))  # 250 KB declaring 57 GiB
    store = FeatureStore(tmp_path / "store")
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFeaturesError) as caught:
            import_npy_folder(store, folder, spec=SPEC, sampling=SAMPLING)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "b.npy: shape (2000000, 7680) declares 61440000000 bytes, over the import limit" in str(caught.value)
    assert peak < 20 * 2**20, peak
    with pytest.raises(
        InvalidFeaturesError,
        match=r"b.npy: shape \(2000000, 7680\) declares 61440000000 bytes but "
        r"the file holds 250000",
    ):
        import_npy_folder(store, folder, spec=SPEC, sampling=SAMPLING, max_video_bytes=2**40)
    with pytest.raises(InvalidFeaturesError, match="a.npy: shape .* over the import limit of 64 bytes"):
        import_npy_folder(store, folder, spec=SPEC, sampling=SAMPLING, max_video_bytes=64)
    assert store.feature_sets() == []
