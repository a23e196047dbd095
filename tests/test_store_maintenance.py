"""Tests of feature_store.maintenance (verify, remove, HDF5 export/import, .npy import) and
of the float16 storage option."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from feature_store import (
    FeatureNotFoundError,
    FeatureStore,
    InvalidFeaturesError,
    InvalidMetadataError,
    OutputExistsError,
    ProvenanceMismatchError,
    _naming,
    encode_node_name,
    export_hdf5,
    format_store_info,
    format_verify_report,
    import_hdf5,
    import_npy_folder,
    remove,
    verify,
)
from feature_store import transfer as transfer_mod

SPEC = {"name": "resnet50", "version": 1, "dims": 8}
SAMPLING = {"strategy": "uniform", "value": 16}
SET_PROV = {"spec": SPEC, "sampling": SAMPLING, "code_version": "abc"}
IDS = ["plain", "dir/sub/video.mp4", "vidéo 日本.mkv", ".hidden", "zarr.json", "x" * 300]


def prov(**video) -> dict:
    return {"set": dict(SET_PROV), "video": {"source": "x.mp4", **video}}


def feats(seed: int, steps: int = 5, dims: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((steps, dims)), 0).astype(np.float32)


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


@pytest.fixture
def set_id(store) -> str:
    sid = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    for i, vid in enumerate(IDS):
        store.write_video(sid, vid, feats(i, steps=3 + i), provenance=prov(i=i))
    return sid


def video_dir(store, set_id, video_id) -> Path:
    return store.path / encode_node_name(set_id) / encode_node_name(video_id)


def edit_meta(node: Path, fn) -> None:
    meta = json.loads((node / "zarr.json").read_text())
    fn(meta)
    (node / "zarr.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------- verify


def test_verify_clean_store(store, set_id):
    other = store.ensure_feature_set(spec={"name": "nodims"}, sampling={"strategy": "all"})
    store.write_video(other, "a", feats(0, dims=3), provenance={"set": {}})
    report = verify(store)
    assert report.ok and report.problems == [] and report.leftovers == []
    assert report.n_videos == {set_id: len(IDS), other: 1}
    text = format_verify_report(report)
    assert text == str(report)
    assert "verify OK" in text and f"{set_id}: {len(IDS)} complete video(s) checked, ok" in text
    assert verify(store, set_ids=[other]).n_videos == {other: 1}
    with pytest.raises(FeatureNotFoundError, match="Did you mean"):
        verify(store, set_ids=[set_id[:-1]])


def test_verify_finds_damage_and_names_set_and_video(store, set_id):
    # 1. a chunk file deleted: reads as NaN (the fill value)
    shutil.rmtree(video_dir(store, set_id, "plain") / "c")
    # 2. a chunk file corrupted
    chunk = next((video_dir(store, set_id, "dir/sub/video.mp4") / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"garbage" * 10)
    # 3. provenance edited by hand (its hash no longer matches)
    edit_meta(
        video_dir(store, set_id, ".hidden"),
        lambda m: m["attributes"]["provenance"]["set"].update(code_version="zzz"),
    )
    # 4. a video made with other set-level provenance
    other = {"set": {**SET_PROV, "code_version": "def"}, "video": {}}
    store.write_video(set_id, "odd one", feats(9), provenance=other)
    # 5. a node renamed by hand, a stray file, a foreign directory at the root
    set_dir = store.path / encode_node_name(set_id)
    os.rename(video_dir(store, set_id, "zarr.json"), set_dir / "moved")
    (store.path / encode_node_name(set_id) / "notes.txt").write_text("x")
    (store.path / "foreign").mkdir()

    report = verify(store)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"{set_id} / plain: " in text and "NaN" in text and "chunk file may be missing" in text
    assert f"{set_id} / dir/sub/video.mp4: chunks do not decode" in text
    assert f"{set_id} / .hidden: provenance does not match its stored hash" in text
    assert f"{set_id} / odd one: set-level provenance differs" in text and "code_version" in text
    assert f"{set_id} / zarr.json: stored under node 'moved'" in text
    assert f"{set_id} / notes.txt: stray file" in text
    assert "(store) foreign" in text
    assert len(report.problems) == 7, report.problems
    summary = format_verify_report(report)
    assert "verify FAILED" in summary and "7 problem(s)" in summary
    # metadata-only mode skips the data checks
    quick = verify(store, read_data=False)
    assert not any("NaN" in p or "decode" in p for p in quick.problems)
    with pytest.raises(InvalidFeaturesError, match="dir/sub/video.mp4: chunks do not decode"):
        export_hdf5(store, store.path.parent / "x.h5", set_ids=[set_id])
    assert not (store.path.parent / "x.h5").exists()


def test_verify_dims_and_dtype(store):
    sid = store.ensure_feature_set(spec={"name": "nodims"}, sampling={"strategy": "all"})
    for i in range(3):
        store.write_video(sid, f"v{i}", feats(i, dims=4), provenance={"set": {}})
    store.write_video(sid, "wide", feats(5, dims=6), provenance={"set": {}})
    (problem,) = verify(store).problems
    assert problem == f"{sid} / wide: 6 dims, the set has 4"
    edit_meta(store.path / encode_node_name(sid), lambda m: m["attributes"].update(dtype="float16"))
    problems = verify(store).problems
    assert sum("dtype float32, the set stores float16" in p for p in problems) == 4


def test_verify_lists_leftovers_but_stays_ok(store, set_id):
    staging = store.path / encode_node_name(set_id) / "_staging"
    dead = staging / f"new.999999999.ab.{_naming.host_tag()}"
    shutil.copytree(video_dir(store, set_id, "plain"), dead)
    live = staging / _naming.staging_name("new")  # our own pid: a write in flight
    live.mkdir()
    torn = store.path / encode_node_name(set_id) / "torn"
    torn.mkdir()
    (torn / "zarr.json").write_text('{"shape": [')
    report = verify(store)
    assert report.ok
    assert len(report.leftovers) == 2 and len(report.in_flight) == 1
    assert any(p.endswith("/torn") for p in report.leftovers)
    assert "leftovers of killed runs (2" in format_verify_report(report)
    assert "vqa store clean" in format_verify_report(report)


def test_cli_clean_removes_leftovers_keeps_live_writes_and_videos(store, set_id, capsys):
    from flows.cli import main

    staging = store.path / encode_node_name(set_id) / "_staging"
    shutil.copytree(video_dir(store, set_id, "plain"), staging / f"new.999999999.ab.{_naming.host_tag()}")
    live = staging / _naming.staging_name("new")  # our own pid: a write in flight
    live.mkdir()
    before = store.read_video(set_id, "plain")
    assert main(["store", "clean", str(store.path)]) == 0
    assert "removed 1 leftover(s)" in capsys.readouterr().out
    assert live.is_dir()  # a live writer's staging entry is never deleted
    np.testing.assert_array_equal(store.read_video(set_id, "plain"), before)
    live.rmdir()
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.in_flight == []


# --------------------------------------------------------------------------- remove


def test_remove_videos_and_sets(store, set_id):
    other = store.ensure_feature_set(spec={**SPEC, "version": 2}, sampling=SAMPLING)
    store.write_video(other, "plain", feats(0), provenance={"set": {}})
    with pytest.raises(FeatureNotFoundError) as info:
        remove(store, set_id, video_ids=["plain", "nope", "nada"])
    assert info.value.missing == ["nope", "nada"] and "nothing was removed" in str(info.value)
    assert store.has_video(set_id, "plain")
    assert remove(store, set_id, video_ids=["plain", "x" * 300, "plain"]) == 2
    assert store.video_ids(set_id) == sorted(set(IDS) - {"plain", "x" * 300})
    assert verify(store).ok and verify(store).leftovers == []
    assert remove(store, set_id) == len(IDS) - 2
    assert store.feature_sets() == [other]
    assert store.video_ids(other) == ["plain"]
    with pytest.raises(FeatureNotFoundError):
        remove(store, set_id)
    report = verify(store)
    assert report.ok and report.leftovers == [] and report.n_videos == {other: 1}
    # the set can be made again
    assert store.ensure_feature_set(spec=SPEC, sampling=SAMPLING) == set_id
    assert store.video_ids(set_id) == []


# --------------------------------------------------------------------------- HDF5


def test_hdf5_round_trip_is_exact(tmp_path, store, set_id):
    half = store.ensure_feature_set(spec={"name": "half"}, sampling={"strategy": "all"}, dtype="float16")
    store.write_video(half, "h/1", feats(1, steps=4, dims=300) * 100, provenance={"set": {"k": 1}})
    out = tmp_path / "exp" / "features.h5"
    assert export_hdf5(store, out) == {set_id: len(IDS), half: 1}
    assert [p.name for p in out.parent.iterdir()] == ["features.h5"]  # no temp file left
    with h5py.File(out, "r") as h5:
        assert h5.attrs["feature_store_hdf5_format"] == 1
        group = h5[encode_node_name(half)]
        assert group.attrs["dtype"] == "float16"
        assert json.loads(group.attrs["spec"]) == {"name": "half"}
        assert group[encode_node_name("h/1")].dtype == np.float16

    fresh = FeatureStore(tmp_path / "fresh")
    counts = import_hdf5(fresh, out)
    assert counts.written == {set_id: len(IDS), half: 1} and counts.n_skipped == 0
    assert f"imported {len(IDS) + 1} video(s) into 2 feature set(s)" in str(counts)
    assert fresh.feature_sets() == store.feature_sets()
    for sid in store.feature_sets():
        assert fresh.feature_set_info(sid)["dtype"] == store.feature_set_info(sid)["dtype"]
        assert fresh.video_ids(sid) == store.video_ids(sid)
        for vid in store.video_ids(sid):
            a, b = store.read_video(sid, vid), fresh.read_video(sid, vid)
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b)
            assert fresh.video_provenance(sid, vid) == store.video_provenance(sid, vid)
            dtypes = {video_meta(s, sid, vid)["data_type"] for s in (store, fresh)}
            assert len(dtypes) == 1
    assert verify(fresh).ok
    # again: everything is already there
    again = import_hdf5(fresh, out)
    assert again.n_written == 0 and again.n_skipped == len(IDS) + 1
    assert import_hdf5(fresh, out, set_ids=[half], overwrite=True).written == {half: 1}
    with pytest.raises(FeatureNotFoundError, match="not in"):
        import_hdf5(fresh, out, set_ids=["nope"])


def video_meta(store, sid, vid) -> dict:
    return json.loads((video_dir(store, sid, vid) / "zarr.json").read_text())


def test_export_refuses_to_clobber_and_is_atomic(tmp_path, store, set_id, monkeypatch):
    out = tmp_path / "f.h5"
    out.write_bytes(b"previous")
    with pytest.raises(OutputExistsError):
        export_hdf5(store, out)
    assert isinstance(OutputExistsError("x"), FileExistsError)

    def boom(*args, **kwargs):
        raise OSError(28, "simulated: disk full")

    monkeypatch.setattr(transfer_mod, "_export_set", boom)
    with pytest.raises(OSError, match="disk full"):
        export_hdf5(store, out, overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "store"]
    # a temp file of a dead export is cleaned by the next export
    stale = tmp_path / f".f.h5.tmp.999999999.ab.{_naming.host_tag()}"
    stale.write_bytes(b"half")
    assert export_hdf5(store, out, set_ids=[set_id], overwrite=True, compression=None) == {set_id: len(IDS)}
    assert not stale.exists()
    assert import_hdf5(FeatureStore(tmp_path / "s2"), out).n_written == len(IDS)


def test_import_hdf5_checks_everything_first(tmp_path, store, set_id):
    out = tmp_path / "f.h5"
    export_hdf5(store, out)
    with h5py.File(out, "r+") as h5:
        group = h5[encode_node_name(set_id)]
        del group[encode_node_name("plain")]
        group.create_dataset("flat", data=np.zeros(8, np.float32)).attrs["video_id"] = "flat"
        group["flat"].attrs["provenance"] = json.dumps(prov())
        group.create_dataset("narrow", data=np.zeros((2, 3))).attrs["video_id"] = "narrow"
        group["narrow"].attrs["provenance"] = json.dumps(prov())
        group[encode_node_name(".hidden")].attrs["provenance"] = "{not json"
    fresh = FeatureStore(tmp_path / "fresh")
    (tmp_path / "not.h5").write_bytes(b"plain text, not HDF5")
    with pytest.raises(InvalidMetadataError, match="is not an HDF5 file"):
        import_hdf5(fresh, tmp_path / "not.h5")
    with pytest.raises(InvalidMetadataError, match="nothing was imported") as info:
        import_hdf5(fresh, out)
    assert ".hidden: attribute 'provenance' is not valid JSON" in str(info.value)
    assert fresh.feature_sets() == []
    with h5py.File(out, "r+") as h5:
        hidden = h5[encode_node_name(set_id)][encode_node_name(".hidden")]
        hidden.attrs["provenance"] = json.dumps(prov())
    with pytest.raises(InvalidFeaturesError) as info:
        import_hdf5(fresh, out)
    assert "flat: shape (8,) is not 2-D" in str(info.value)
    assert "narrow: 3 dims, the spec says 8" in str(info.value)
    assert fresh.feature_sets() == []
    # NaN is caught before anything is written (all or nothing per set): no set is left behind
    with h5py.File(out, "r+") as h5:
        group = h5[encode_node_name(set_id)]
        del group["flat"], group["narrow"]
        group[encode_node_name(".hidden")][0, 0] = np.nan
    with pytest.raises(InvalidFeaturesError, match="NaN"):
        import_hdf5(fresh, out)
    assert fresh.feature_sets() == []
    (tmp_path / "other.h5").write_bytes(b"")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.create_dataset("x", data=np.zeros((2, 2)))
    with pytest.raises(InvalidMetadataError, match="not a feature-store export"):
        import_hdf5(fresh, tmp_path / "other.h5")
    with pytest.raises(FeatureNotFoundError):
        import_hdf5(fresh, tmp_path / "absent.h5")


# --------------------------------------------------------------------------- .npy folders


def test_import_vsfa_style_npy_folder(tmp_path, store):
    folder = tmp_path / "CNN_features_KoNViD-1k"
    folder.mkdir()
    data = {i: feats(i, steps=6 + i, dims=16) for i in range(4)}
    for i, x in data.items():
        np.save(folder / f"{i}_resnet-50_res5c.npy", x)
        np.save(folder / f"{i}_score.npy", np.array([3.5]))  # VSFA's labels: not matched
    names = {str(i): f"{1000 + i}.mp4" for i in range(4)}
    spec = {"name": "vsfa-resnet50", "dims": 16}
    counts = import_npy_folder(
        store,
        folder,
        spec=spec,
        sampling={"strategy": "all"},
        pattern="{video_id}_resnet-50_res5c.npy",
        id_map=names,
        set_provenance={"paper": "VSFA"},
    )
    (sid,) = store.feature_sets()
    assert counts.written == {sid: 4}
    assert store.video_ids(sid) == sorted(names.values())
    for i, x in data.items():
        np.testing.assert_array_equal(store.read_video(sid, names[str(i)]), x)
        p = store.video_provenance(sid, names[str(i)])
        raw = (folder / f"{i}_resnet-50_res5c.npy").read_bytes()
        assert p["video"]["imported_from"] == str(folder)
        assert p["video"]["file"] == f"{i}_resnet-50_res5c.npy"
        assert p["video"]["sha256"] == hashlib.sha256(raw).hexdigest()
        assert p["set"]["origin"] == "imported npy" and p["set"]["paper"] == "VSFA"
    assert verify(store).ok
    # imported features are not mixed with extracted ones of the same spec
    store.write_video(
        sid, "ours.mp4", feats(9, dims=16), provenance={"set": {"spec": spec, "sampling": {"strategy": "all"}}}
    )
    with pytest.raises(ProvenanceMismatchError, match="origin"):
        store.read_videos(sid, ["1000.mp4", "ours.mp4"])
    # without id_map the ids come from the file names; reruns skip what is stored
    counts = import_npy_folder(
        store, folder, spec=spec, sampling={"strategy": "all"}, pattern="{video_id}_resnet-50_res5c.npy"
    )
    assert counts.written == {sid: 4}
    assert set(store.video_ids(sid)) >= {"0", "1", "2", "3"}
    again = import_npy_folder(
        store, folder, spec=spec, sampling={"strategy": "all"}, pattern="{video_id}_resnet-50_res5c.npy"
    )
    assert again.n_written == 0 and again.n_skipped == 4


def test_import_npy_folder_reports_all_bad_files(tmp_path, store):
    folder = tmp_path / "feats"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "a.npy", feats(0, dims=4))
    np.save(folder / "b.npy", feats(1, dims=4))
    np.save(folder / "flat.npy", np.zeros(4, np.float32))
    np.save(folder / "wide.npy", feats(2, dims=5))
    np.save(folder / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "strings.npy", np.array([["a", "b"]]))
    (folder / "junk.npy").write_bytes(b"not numpy")
    np.save(folder / "sub" / "deep.npy", feats(3, dims=4))  # '{video_id}' does not match '/'
    with pytest.raises(InvalidFeaturesError, match="nothing was imported") as info:
        import_npy_folder(store, folder, spec={"name": "x"}, sampling={"strategy": "all"})
    msg = str(info.value)
    assert "5 problem(s)" in msg
    for part in [
        "flat.npy: shape (4,) is not 2-D",
        "[1, dims]",
        "wide.npy: 5 dims, expected 4",
        "obj.npy: not a plain .npy",
        "strings.npy: dtype <U1",
        "junk.npy: not a plain",
    ]:
        assert part in msg
    assert store.feature_sets() == []
    with pytest.raises(FeatureNotFoundError, match="2 of 3 files") as info:
        import_npy_folder(
            store, folder, spec={"name": "x"}, sampling={"strategy": "all"}, id_map={"a": "A", "zz": "Z", "yy": "Y"}
        )
    assert "zz.npy" in str(info.value) and "yy.npy" in str(info.value)
    with pytest.raises(InvalidMetadataError, match="exactly once"):
        import_npy_folder(store, folder, spec={"name": "x"}, sampling={"strategy": "all"}, pattern="features.npy")
    with pytest.raises(FeatureNotFoundError, match="no file"):
        import_npy_folder(store, folder, spec={"name": "x"}, sampling={"strategy": "all"}, pattern="{video_id}.feat")
    counts = import_npy_folder(
        store, folder, spec={"name": "x"}, sampling={"strategy": "all"}, id_map={"a": "A", "b": "B"}, dtype="float16"
    )
    assert counts.n_written == 2
    (sid,) = store.feature_sets()
    assert store.feature_set_info(sid)["dtype"] == "float16"


# --------------------------------------------------------------------------- float16


def test_float16_sets(store, tmp_path):
    sid = store.ensure_feature_set(spec={"name": "h", "dims": 64}, sampling={"strategy": "all"}, dtype="float16")
    again = store.ensure_feature_set(spec={"name": "h", "dims": 64}, sampling={"strategy": "all"})
    assert again == sid  # dtype=None: whatever the set has
    with pytest.raises(ProvenanceMismatchError, match="stored as float16, not float32"):
        store.ensure_feature_set(spec={"name": "h", "dims": 64}, sampling={"strategy": "all"}, dtype="float32")
    with pytest.raises(InvalidMetadataError, match="storage dtype"):
        store.ensure_feature_set(spec={"name": "h"}, sampling={"strategy": "all"}, dtype="int8")
    x = feats(0, steps=50, dims=64) * 1000
    x[0, :3] = [65504.0, -65504.0, 1e-3]
    store.write_video(sid, "v", x, provenance={"set": {}})
    got = store.read_video(sid, "v")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, rtol=2**-11, atol=2**-24)
    assert got[0, 0] == 65504.0 and got[0, 1] == -65504.0
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    assert store.read_video_dask(sid, "v").dtype == np.float32
    info = store.feature_set_info(sid)
    assert info["dtype"] == "float16" and "float16" in format_store_info([info])
    assert video_meta(store, sid, "v")["data_type"] == "float16"
    for bad, n in [(65505.0, 1), (65519.0, 1), (-7e4, 1), (1e6, 1)]:
        y = x.copy()
        y[3, 5] = bad
        with pytest.raises(InvalidFeaturesError, match=rf"{n} of 3200 .* exceed the float16 range"):
            store.write_video(sid, "big", y, provenance={"set": {}})
    assert not store.has_video(sid, "big")
    assert verify(store).ok and verify(store).leftovers == []
    # sets made before the option existed read as float32
    f32 = store.ensure_feature_set(spec={"name": "old"}, sampling={"strategy": "all"})
    edit_meta(store.path / encode_node_name(f32), lambda m: m["attributes"].pop("dtype"))
    store.write_video(f32, "v", x + 0.1, provenance={"set": {}})
    np.testing.assert_array_equal(store.read_video(f32, "v"), x + 0.1)
    assert store.feature_set_info(f32)["dtype"] == "float32"


def test_default_layout_is_recorded(store, set_id):
    meta = video_meta(store, set_id, "plain")
    blosc = meta["codecs"][1]
    assert blosc["name"] == "blosc"
    assert blosc["configuration"]["cname"] == "zstd" and blosc["configuration"]["clevel"] == 1
    assert blosc["configuration"]["shuffle"] == "shuffle"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 8]  # the whole video
    assert isinstance(meta["attributes"]["write_id"], str)


def test_cli_verify_export_import_rm(tmp_path, capsys, monkeypatch):
    import json as _json

    from flows.cli import main

    store = FeatureStore(tmp_path / "s")
    set_id = store.ensure_feature_set(spec={"name": "toy", "dims": 3}, sampling={"strategy": "all", "value": None})
    for vid in ("a", "b"):
        store.write_video(set_id, vid, np.ones((2, 3), np.float32), provenance={"set": {}, "video": {}})
    assert main(["store", "verify", str(tmp_path / "s")]) == 0
    assert main(["store", "export", str(tmp_path / "s"), "--out", str(tmp_path / "x.h5")]) == 0
    assert main(["store", "import", str(tmp_path / "t"), str(tmp_path / "x.h5")]) == 0
    assert FeatureStore(tmp_path / "t").video_ids(set_id) == ["a", "b"]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["store", "rm", str(tmp_path / "s"), "toy", "--video", "a"]) == 2  # no confirmation, no tty
    assert "pass --yes" in capsys.readouterr().err
    assert main(["store", "rm", str(tmp_path / "s"), "toy", "--video", "a", "--yes"]) == 0
    assert store.video_ids(set_id) == ["b"]
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "v1.npy", np.zeros((4, 3), np.float32))
    (tmp_path / "spec.json").write_text(_json.dumps({"name": "vsfa-old", "dims": 3}))
    assert (
        main(
            [
                "store",
                "import",
                str(tmp_path / "s"),
                str(npy),
                "--format",
                "npy",
                "--spec",
                str(tmp_path / "spec.json"),
                "--sampling",
                "all",
            ]
        )
        == 0
    )
    imported = FeatureStore(tmp_path / "s")
    assert imported.read_video(imported.resolve("vsfa-old"), "v1").shape == (4, 3)
