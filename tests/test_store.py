"""Tests of feature_store.store: round trips, id escaping, atomicity, provenance, info."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store import (
    FeatureNotFoundError,
    FeatureStore,
    FeatureStoreError,
    InvalidFeaturesError,
    InvalidMetadataError,
    ProvenanceMismatchError,
    _format,
    _naming,
    decode_node_name,
    encode_node_name,
    format_store_info,
)

REPO = Path(__file__).resolve().parents[1]
SPEC = {"name": "resnet50", "version": 1, "dims": 8, "layer": "avgpool"}
SAMPLING = {"strategy": "uniform", "value": 16}
SET_PROV = {"spec": SPEC, "sampling": SAMPLING, "code_version": "abc123", "weights_sha256": "ff00"}
TRICKY_IDS = [
    "plain",
    "dir/sub/video.mp4",
    "with space.mp4",
    "vidéo_日本語.mkv",
    ".hidden",
    "..",
    ".",
    "__x",
    "_staging",
    "zarr.json",
    "ZARR.JSON",
    "100%25 done",
    "a%2Fb",
    "back\\slash",
    "tab\tnewline\n",
    "~tilde",
    "x" * 300,
    "é" * 120,
]


def prov(**video) -> dict:
    return {"set": dict(SET_PROV), "video": {"source": "x.mp4", "num_frames": 100, **video}}


def feats(seed: int, steps: int = 5, dims: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, dims)).astype(np.float32)


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


@pytest.fixture
def set_id(store) -> str:
    return store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)


# --------------------------------------------------------------------------- ids


def test_feature_set_id_is_readable_and_content_addressed():
    sid = FeatureStore.feature_set_id(SPEC, SAMPLING)
    assert sid.startswith("resnet50--uniform-16--") and len(sid.rsplit("--", 1)[1]) == 10
    # key order and int/float spelling do not matter; content does
    reordered = dict(reversed(list(SPEC.items())))
    assert FeatureStore.feature_set_id(reordered, {"value": 16.0, "strategy": "uniform"}) == sid
    assert FeatureStore.feature_set_id({**SPEC, "version": 2}, SAMPLING) != sid
    assert FeatureStore.feature_set_id(SPEC, {"strategy": "all", "value": None}).startswith("resnet50--all--")
    assert "--fps-2--" in FeatureStore.feature_set_id(SPEC, {"strategy": "fps", "value": 2})
    with pytest.raises(InvalidMetadataError):
        FeatureStore.feature_set_id({"dims": 3}, SAMPLING)
    with pytest.raises(InvalidMetadataError):
        FeatureStore.feature_set_id(SPEC, {"value": 3})
    with pytest.raises(InvalidMetadataError):
        FeatureStore.feature_set_id({**SPEC, "obj": object()}, SAMPLING)


def test_node_names_are_safe_reversible_and_distinct():
    names = [encode_node_name(v) for v in TRICKY_IDS]
    assert len(set(names)) == len(names)
    assert len({n.lower() for n in names}) == len(names)
    for vid, name in zip(TRICKY_IDS, names, strict=True):
        assert set(name) <= set(_naming.SAFE_CHARS) | {"%", "~"}
        assert not name.startswith((".", "_")) and name.lower() != "zarr.json"
        assert len(name) <= 185
        if "~" not in name:
            assert decode_node_name(name) == vid
    for bad in ["", None, 3, "lone\udcff"]:
        with pytest.raises(InvalidMetadataError):
            encode_node_name(bad)
    for bad in ["%G1", "%C3", "caf\u00e9"]:  # bad escape, truncated UTF-8, not escaped
        with pytest.raises(InvalidMetadataError, match="not an escaped node name"):
            decode_node_name(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_node_name_round_trip_property(vid):
    name = encode_node_name(vid)
    assert not name.startswith((".", "_")) and len(name) <= 185
    # long ids are shortened with a hash; only then is the name not reversible
    assert decode_node_name(name) == (None if "~" in name else vid)


# --------------------------------------------------------------------------- round trips


def test_round_trip_numpy_and_dask_with_tricky_ids(store, set_id):
    data = {vid: feats(i, steps=3 + i) for i, vid in enumerate(TRICKY_IDS)}
    for vid, x in data.items():
        assert not store.has_video(set_id, vid)
        store.write_video(set_id, vid, x, provenance=prov(source=vid))
    assert store.video_ids(set_id) == sorted(TRICKY_IDS)
    reopened = FeatureStore(store.path, create=False)
    for vid, x in data.items():
        assert reopened.has_video(set_id, vid)
        got = reopened.read_video(set_id, vid)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got, x)
        lazy = reopened.read_video_dask(set_id, vid)
        assert lazy.shape == x.shape and lazy.dtype == np.float32
        np.testing.assert_array_equal(lazy.compute(), x)
        assert reopened.video_provenance(set_id, vid)["video"]["source"] == vid
    # plain Zarr sees one array per video with the original id and dimension names
    import zarr

    group = zarr.open_group(store.path / encode_node_name(set_id), mode="r")
    arr = group[encode_node_name("dir/sub/video.mp4")]
    assert arr.attrs["video_id"] == "dir/sub/video.mp4"
    assert arr.metadata.dimension_names == ("step", "dim")


def test_chunking_and_dtype_conversion(store):
    sid = store.ensure_feature_set(spec={"name": "wide"}, sampling={"strategy": "all"})
    x = np.arange(600 * 3, dtype=np.float64).reshape(600, 3)
    store.write_video(sid, "v", x, provenance={"set": {}})
    meta = json.loads((store.path / encode_node_name(sid) / "v" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [256, 3]
    assert meta["fill_value"] == "NaN" and meta["codecs"][1]["name"] == "blosc"
    np.testing.assert_array_equal(store.read_video(sid, "v"), x.astype(np.float32))
    assert _format.chunk_shape(1000, 2**20) == (4, 2**20)  # 16 MiB cap
    assert _format.chunk_shape(10, 2**23) == (1, 2**22)


def test_overwrite_false_is_noop_true_replaces(store, set_id):
    a, b = feats(1), feats(2, steps=7)
    store.write_video(set_id, "v", a, provenance=prov(run=1))
    store.write_video(set_id, "v", b, provenance=prov(run=2))
    np.testing.assert_array_equal(store.read_video(set_id, "v"), a)
    assert store.video_provenance(set_id, "v")["video"]["run"] == 1
    store.write_video(set_id, "v", b, provenance=prov(run=2), overwrite=True)
    np.testing.assert_array_equal(store.read_video(set_id, "v"), b)
    assert store.video_provenance(set_id, "v")["video"]["run"] == 2
    assert store.feature_set_info(set_id)["incomplete"] == 0


def test_race_lost_at_rename_keeps_first(store, set_id, monkeypatch):
    """Another writer places the video between our check and our rename: first wins."""
    a, b = feats(1), feats(2)
    real_rename = os.rename

    def rename(src, dst):
        if "new." in str(src) and not Path(dst).exists() and not store.has_video(set_id, "v"):
            monkeypatch.setattr(os, "rename", real_rename)
            store.write_video(set_id, "v", a, provenance=prov())
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    store.write_video(set_id, "v", b, provenance=prov())
    np.testing.assert_array_equal(store.read_video(set_id, "v"), a)
    assert store.feature_set_info(set_id)["incomplete"] == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.full((4, 8), np.nan, np.float32), "32 of 32"),
        (np.where(np.eye(4, 8) > 0, np.inf, 0.0), "4 of 32"),
        (np.full((2, 8), 1e300), "16 of 16"),  # overflows float32
        (np.zeros((4, 7)), "7 dims, the spec says 8"),
        (np.zeros(8), "2-D"),
        (np.zeros((0, 8)), "empty"),
        (np.array([["a"] * 8]), "numeric"),
        (np.zeros((2, 8), bool), "numeric"),
        ([[0.0] * 8, [0.0] * 7], "not an array"),  # ragged rows
    ],
)
def test_invalid_features_rejected_and_nothing_stored(store, set_id, x, match):
    with pytest.raises(InvalidFeaturesError, match=match) as info:
        store.write_video(set_id, "bad vid", x, provenance=prov())
    assert "bad vid" in str(info.value)
    assert not store.has_video(set_id, "bad vid")
    assert store.video_ids(set_id) == []
    assert store.feature_set_info(set_id)["incomplete"] == 0


def test_invalid_provenance_rejected(store, set_id):
    x = feats(0)
    for bad in [None, {"video": {}}, {"set": {}, "other": 1}, {"set": {"t": float("nan")}}]:
        with pytest.raises(InvalidMetadataError):
            store.write_video(set_id, "v", x, provenance=bad)
    with pytest.raises(ProvenanceMismatchError, match="spec"):
        store.write_video(set_id, "v", x, provenance={"set": {"spec": {**SPEC, "dims": 9}}})
    assert not store.has_video(set_id, "v")


# --------------------------------------------------------------------------- crashes


def test_crash_before_rename_leaves_nothing(store, set_id, monkeypatch):
    def broken_rename(src, dst):
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="simulated"):
        store.write_video(set_id, "v", feats(0), provenance=prov())
    monkeypatch.undo()
    assert not store.has_video(set_id, "v")
    assert store.video_ids(set_id) == []
    assert store.feature_set_info(set_id)["incomplete"] == 0  # the writer cleaned up
    store.write_video(set_id, "v", feats(0), provenance=prov())
    assert store.has_video(set_id, "v")


def test_failed_replace_restores_previous_copy(store, set_id, monkeypatch):
    store.write_video(set_id, "v", feats(1), provenance=prov())
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(Path(src).name)
        if len(calls) == 3:  # new -> dest fails after the old copy was moved aside
            raise OSError(5, "simulated failure mid-replace")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="mid-replace"):
        store.write_video(set_id, "v", feats(2), provenance=prov(), overwrite=True)
    monkeypatch.undo()
    assert calls[0].startswith("new.") and calls[1] == "v" and calls[2].startswith("new.")
    np.testing.assert_array_equal(store.read_video(set_id, "v"), feats(1))
    assert store.feature_set_info(set_id)["incomplete"] == 0


def test_half_written_leftovers_are_absent_and_removed(store, set_id):
    set_dir = store.path / encode_node_name(set_id)
    staging = set_dir / "_staging"
    # a killed writer's complete-looking staging copy and a half-written one
    store.write_video(set_id, "donor", feats(0), provenance=prov())
    import shutil

    shutil.copytree(set_dir / "donor", staging / "new.999999999.deadbeef.otherhost")
    shutil.copytree(set_dir / "donor", staging / f"new.999999999.deadbeef.{_naming.host_tag()}")
    half = staging / "garbage-name"
    (half / "c" / "0").mkdir(parents=True)
    (half / "c" / "0" / "0").write_bytes(b"\0" * 10)
    # a node in place without "complete" (hand-made or foreign) and one with torn zarr.json
    shutil.copytree(set_dir / "donor", set_dir / "v1")
    meta = json.loads((set_dir / "v1" / "zarr.json").read_text())
    meta["attributes"].update(status="writing", video_id="v1")
    (set_dir / "v1" / "zarr.json").write_text(json.dumps(meta))
    (set_dir / "v2").mkdir()
    (set_dir / "v2" / "zarr.json").write_text('{"shape": [3,')
    for vid in ["v1", "v2"]:
        assert not store.has_video(set_id, vid)
        with pytest.raises(FeatureNotFoundError):
            store.read_video(set_id, vid)
    assert store.video_ids(set_id) == ["donor"]
    assert store.feature_set_info(set_id)["incomplete"] == 5
    # the foreign-host entry is young: kept by default, removed when old enough
    assert store.remove_incomplete() == 4
    assert store.feature_set_info(set_id)["incomplete"] == 1
    assert store.remove_incomplete(min_age_s=0) == 1
    assert store.feature_set_info(set_id)["incomplete"] == 0
    assert store.video_ids(set_id) == ["donor"]
    np.testing.assert_array_equal(store.read_video(set_id, "donor"), feats(0))


def test_live_writer_staging_is_kept(store, set_id):
    own = store.path / encode_node_name(set_id) / "_staging" / _naming.staging_name("new")
    own.mkdir()
    assert store.remove_incomplete(min_age_s=0) == 0
    assert own.exists()


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from feature_store import FeatureStore
    store = FeatureStore(sys.argv[1])
    sid = store.ensure_feature_set(spec={"name": "kill", "dims": 512},
                                   sampling={"strategy": "all"})
    for i in range(100000):
        vid = f"v{i % 30:03d}"
        x = np.random.default_rng(i % 30).standard_normal((100, 512)).astype(np.float32)
        store.write_video(sid, vid, x, provenance={"set": {"code": "1"}, "video": {"i": i}},
                          overwrite=i >= 30)
        print(i, flush=True)
    """
)


def _kill_mid_write(path: Path, n_done: int, delay_s: float) -> int:
    """Run WRITER until it has stored ``n_done`` videos and has a staging array on disk,
    wait ``delay_s`` (to land later in the write), then SIGKILL it; return the number of
    staging entries seen."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        for _ in range(n_done):
            assert proc.stdout.readline(), "writer died early"
        (set_dir,) = [p for p in path.iterdir() if not p.name.startswith(("_", ".")) and p.is_dir()]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # kill as soon as a write is in flight, so the kill lands inside write_video
            staged = [n for n in os.listdir(set_dir / "_staging") if n.startswith("new.")]
            if staged:
                time.sleep(delay_s)
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return len(staged)


@pytest.mark.parametrize(("n_done", "delay_s"), [(8, 0.0), (34, 0.004)], ids=["first-write", "overwrite"])
@pytest.mark.slow
def test_sigkill_mid_write_leaves_only_complete_videos(tmp_path, n_done, delay_s):
    path = tmp_path / "killed"
    assert _kill_mid_write(path, n_done, delay_s) >= 1
    store = FeatureStore(path, create=False)
    (sid,) = store.feature_sets()
    expected = {f"v{i:03d}": np.random.default_rng(i).standard_normal((100, 512)).astype(np.float32) for i in range(30)}
    assert len(store.video_ids(sid)) >= min(n_done, 30) - 1
    for vid, x in expected.items():
        if store.has_video(sid, vid):
            np.testing.assert_array_equal(store.read_video(sid, vid), x)
        else:
            with pytest.raises(FeatureNotFoundError):
                store.read_video(sid, vid)
    # the kill came after the staging dir appeared, unless the write finished meanwhile
    leftovers = store.feature_set_info(sid)["incomplete"]
    assert store.remove_incomplete() == leftovers
    assert store.feature_set_info(sid)["incomplete"] == 0
    # a re-run completes everything
    for vid, x in expected.items():
        store.write_video(sid, vid, x, provenance={"set": {"code": "1"}})
    assert store.video_ids(sid) == sorted(expected)
    assert len(store.read_videos(sid, sorted(expected)[:5])) == 5


# --------------------------------------------------------------------------- sets, reads


def test_resolve_and_feature_sets(store):
    a = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    b = store.ensure_feature_set(spec=SPEC, sampling={"strategy": "fps", "value": 2})
    c = store.ensure_feature_set(spec={"name": "swin3d", "dims": 768}, sampling=SAMPLING)
    assert store.ensure_feature_set(spec=SPEC, sampling=SAMPLING) == a  # idempotent
    assert store.feature_sets() == sorted([a, b, c])
    assert store.resolve(a) == a
    assert store.resolve("swin3d") == c
    assert store.resolve("resnet50--fps") == b
    with pytest.raises(FeatureNotFoundError, match="ambiguous") as amb:
        store.resolve("resnet50")
    assert a in str(amb.value) and b in str(amb.value)
    with pytest.raises(FeatureNotFoundError, match="Did you mean") as unk:
        store.resolve("resnt50")
    assert "Known feature sets" in str(unk.value)
    assert isinstance(unk.value, KeyError)
    with pytest.raises(FeatureNotFoundError, match="no feature set"):
        store.has_video("nope", "v")


def test_read_videos_missing_and_provenance_mismatch(store, set_id):
    for i in range(3):
        store.write_video(set_id, f"v{i}", feats(i), provenance=prov(i=i))
    got = store.read_videos(set_id, ["v2", "v0"])
    np.testing.assert_array_equal(got[0], feats(2))
    np.testing.assert_array_equal(got[1], feats(0))
    with pytest.raises(FeatureNotFoundError) as info:
        store.read_videos(set_id, ["v0", "m1", "v1", "m2"])
    assert info.value.missing == ["m1", "m2"]
    assert "'m1'" in str(info.value) and "'m2'" in str(info.value)
    other = {"set": {**SET_PROV, "code_version": "def456"}, "video": {}}
    store.write_video(set_id, "odd", feats(9), provenance=other)
    store.read_videos(set_id, ["v0", "v1"])  # still fine without the odd one
    with pytest.raises(ProvenanceMismatchError, match="code_version") as mm:
        store.read_videos(set_id, ["v0", "odd", "v1"])
    assert "'odd'" in str(mm.value)
    info = store.feature_set_info(set_id)
    assert not info["provenance"]["consistent"] and info["provenance"]["n_distinct"] == 2
    assert "MIXED" in format_store_info([info])


def test_info_and_format(store, set_id):
    empty = store.ensure_feature_set(spec={"name": "empty", "dims": 4}, sampling={"strategy": "all"})
    store.write_video(set_id, "a", feats(0, steps=5), provenance=prov())
    store.write_video(set_id, "b", feats(1, steps=7), provenance=prov())
    infos = store.info()
    assert [i["id"] for i in infos] == sorted([set_id, empty])
    info = store.feature_set_info(set_id)
    assert info["n_videos"] == 2 and info["dims"] == 8 and info["total_steps"] == 12
    assert info["bytes_on_disk"] > 0 and info["dtype"] == "float32"
    assert info["spec"] == SPEC and info["sampling"] == SAMPLING
    assert info["provenance"]["consistent"] and info["provenance"]["set"] == SET_PROV
    assert info["incomplete"] == 0
    e = store.feature_set_info(empty)
    assert e["n_videos"] == 0 and e["dims"] == 4 and e["total_steps"] == 0
    text = format_store_info(infos)
    assert set_id in text and "videos: 2" in text and "dims: 8" in text and "steps: 12" in text
    assert "2 feature set(s), 2 video(s)" in text
    assert format_store_info([]) == "no feature sets"


def test_store_opening_rules(tmp_path):
    with pytest.raises(FeatureNotFoundError):
        FeatureStore(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatureStoreError):
        FeatureStore(tmp_path / "file")
    s = FeatureStore(tmp_path / "ok")
    assert FeatureStore(tmp_path / "ok", create=False).feature_sets() == []
    assert [p.name for p in s.path.iterdir() if p.name.startswith(".")] == []
    import pickle

    assert pickle.loads(pickle.dumps(s)).path == s.path


def test_import_boundaries():
    code = (
        "import sys, feature_store; "
        "bad = [m for m in ('pipeline', 'regressors', 'flows') if m in sys.modules]; "
        "sys.exit(repr(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
