"""The analysts' read API: FeatureStore.open, to_frame, to_xarray, read_manifest outside Prefect,
and every example of docs/analysis.md, executed."""

import re
import shlex
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from feature_store import (
    FeatureNotFoundError,
    FeatureStore,
    InvalidMetadataError,
    ManifestEntry,
    ProvenanceMismatchError,
    read_manifest,
)
from vqa_core.pooling import pool_steps

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "analysis.md"


def _write_set(store, name="resnet50", dims=16, n=30, n_groups=6, dtype="float16", seed=0, tag="a"):
    """``n`` videos of 8-12 steps in ``n_groups`` groups; MOS follows feature 0. Returns
    ``(set id, manifest lines, features by id)``."""
    spec, sampling = {"name": name, "dims": dims}, {"strategy": "fps", "value": 4}
    set_id = store.ensure_feature_set(spec=spec, sampling=sampling, dtype=dtype)
    rng = np.random.default_rng(seed)
    lines, stored = ["video_id,path,mos,group"], {}
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(8, 13)), dims)).astype(np.float32)
        x[:, 0] += rng.uniform(-2, 2)
        vid = f"{tag}{i:02d}"
        store.write_video(
            set_id, vid, x, provenance={"set": {"spec": spec, "sampling": sampling, "tag": tag}, "video": {"i": i}}
        )
        stored[vid] = store.read_video(set_id, vid)
        lines.append(f"{vid},videos/{vid}.mp4,{3 + 0.8 * float(x[:, 0].mean()):.6f},src{i % n_groups}")
    return set_id, lines, stored


@pytest.fixture
def analysis_dir(tmp_path, monkeypatch):
    """The files docs/analysis.md names: features.zarr (set 'resnet50') and manifest.csv."""
    store = FeatureStore(tmp_path / "features.zarr", create=True)
    set_id, lines, stored = _write_set(store)
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path, set_id, stored


# ---------------------------------------------------------------- FeatureStore.open
def test_open_refuses_a_missing_store_and_creates_nothing(tmp_path):
    with pytest.raises(FeatureNotFoundError, match="no feature store at"):
        FeatureStore.open(tmp_path / "typo.zarr")
    assert not (tmp_path / "typo.zarr").exists()
    FeatureStore(tmp_path / "made.zarr", create=True)  # creating is explicit
    assert FeatureStore.open(tmp_path / "made.zarr").feature_sets() == []


# ---------------------------------------------------------------- to_frame
def test_pooled_frame_is_indexed_named_and_joined_to_the_manifest(analysis_dir):
    root, set_id, stored = analysis_dir
    store = FeatureStore.open(root / "features.zarr")
    entries = read_manifest(root / "manifest.csv")
    order = entries[::-1]  # the manifest's order is kept, whatever it is
    df = store.to_frame("resnet50", pooling="meanmax", manifest=order)
    assert df.index.name == "video_id" and list(df.index) == [e.video_id for e in order]
    assert list(df.columns[:2]) == ["mos", "group"]
    features = df.attrs["feature_columns"]
    assert features[0] == "mean_resnet50_00" and features[16] == "max_resnet50_00" and len(features) == 32
    assert list(df.columns[2:]) == features and df.attrs["feature_set"] == set_id
    assert df["mos"].tolist() == [e.mos for e in order] and df["group"].tolist() == [e.group for e in order]
    for vid in ("a00", "a17"):
        np.testing.assert_array_equal(
            df.loc[vid, features].to_numpy(dtype=np.float64), pool_steps(stored[vid], "meanmax")
        )
    assert (df[features].dtypes == np.float64).all()
    # without a manifest: every stored video, sorted, no label columns
    plain = store.to_frame(set_id, pooling="max")
    assert list(plain.index) == sorted(stored) and plain.columns[0] == "resnet50_00"
    np.testing.assert_array_equal(plain.loc["a03"].to_numpy(), stored["a03"].max(axis=0))


def test_frame_per_step_has_a_step_level(analysis_dir):
    root, _, stored = analysis_dir
    store = FeatureStore.open(root / "features.zarr")
    steps = store.to_frame("resnet50", pooling=None, manifest=root / "manifest.csv")
    assert steps.index.names == ["video_id", "step"]
    assert len(steps) == sum(len(v) for v in stored.values())
    np.testing.assert_array_equal(steps.loc["a05"][steps.attrs["feature_columns"]].to_numpy(), stored["a05"])
    assert steps.loc["a05"].index.tolist() == list(range(len(stored["a05"])))
    assert (steps.loc["a05", "mos"] == steps.loc["a05", "mos"].iloc[0]).all()
    assert steps[steps.attrs["feature_columns"]].dtypes.iloc[0] == np.float32


def test_frame_errors_name_what_is_wrong(analysis_dir):
    root, _, _ = analysis_dir
    store = FeatureStore.open(root / "features.zarr")
    with pytest.raises(InvalidMetadataError, match="unknown pooling 'maen'. Did you mean mean"):
        store.to_frame("resnet50", pooling="maen")
    extra = [
        ManifestEntry("a01", Path("x.mp4"), 3.0),
        ManifestEntry("ghost1", Path("y.mp4")),
        ManifestEntry("ghost2", Path("z.mp4")),
    ]
    with pytest.raises(FeatureNotFoundError, match="ghost1.*ghost2") as info:
        store.to_frame("resnet50", manifest=extra)
    assert {v for _, v in info.value.missing} == {"ghost1", "ghost2"}
    with pytest.raises(FeatureNotFoundError, match="no feature set matches 'vgg'"):
        store.to_frame("vgg")


def test_frames_refuse_videos_made_differently(tmp_path):
    store = FeatureStore(tmp_path / "s", create=True)
    set_id, _, _ = _write_set(store, n=3, tag="a")
    spec, sampling = {"name": "resnet50", "dims": 16}, {"strategy": "fps", "value": 4}
    store.write_video(
        set_id,
        "other",
        np.ones((4, 16), np.float32),
        provenance={"set": {"spec": spec, "sampling": sampling, "tag": "b"}, "video": {}},
    )
    with pytest.raises(ProvenanceMismatchError):
        store.to_frame(set_id)
    with pytest.raises(ProvenanceMismatchError):
        store.to_xarray(set_id)


def test_pooled_frame_gives_the_numbers_vqa_fit_trains_on(analysis_dir):
    """An SVR fitted on the frame predicts exactly what the SVR head fitted on the videos does."""
    from regressors import SVRHead

    root, set_id, stored = analysis_dir
    store = FeatureStore.open(root / "features.zarr")
    df = store.to_frame("resnet50", pooling="mean", manifest=root / "manifest.csv")
    videos = store.read_videos(set_id, df.index)
    on_frame = SVRHead(pooling=None).fit(df[df.attrs["feature_columns"]], df["mos"])
    on_videos = SVRHead(pooling="mean").fit(videos, df["mos"].to_numpy())
    np.testing.assert_array_equal(on_frame.predict(df[df.attrs["feature_columns"]]), on_videos.predict(videos))


# ---------------------------------------------------------------- to_xarray
def test_xarray_dims_coords_padding_and_selection(analysis_dir):
    root, set_id, stored = analysis_dir
    store = FeatureStore.open(root / "features.zarr")
    ds = store.to_xarray("resnet50", manifest=root / "manifest.csv")
    longest = max(len(v) for v in stored.values())
    assert dict(ds.features.sizes) == {"video": 30, "step": longest, "feature": 16}
    assert ds.features.dtype == np.float32 and type(ds.features.data).__module__.startswith("dask")
    assert list(ds.video.values) == [f"a{i:02d}" for i in range(30)]
    one = ds.sel(video="a07")
    n = int(one.length)
    assert n == len(stored["a07"])
    values = one.features.values
    np.testing.assert_array_equal(values[:n], stored["a07"])
    assert np.isnan(values[n:]).all()
    assert float(one.mos) == pytest.approx(read_manifest(root / "manifest.csv")[7].mos)
    assert str(one.group.values) == "src1" and ds.attrs["feature_names"][3] == "resnet50_03"
    np.testing.assert_allclose(
        ds.features.mean(dim="step", skipna=True).sel(video="a07").values, stored["a07"].mean(axis=0), rtol=1e-6
    )


def test_xarray_opens_a_large_set_without_reading_it(tmp_path):
    """Opening reads metadata only: allocations stay far below the set's size in memory."""
    store = FeatureStore(tmp_path / "big", create=True)
    spec, sampling = {"name": "wide", "dims": 4096}, {"strategy": "all"}
    set_id = store.ensure_feature_set(spec=spec, sampling=sampling, dtype="float16")
    row = np.zeros((64, 4096), np.float32)
    for i in range(60):
        row[0, 0] = i
        store.write_video(
            set_id, f"v{i:03d}", row, provenance={"set": {"spec": spec, "sampling": sampling}, "video": {}}
        )
    tracemalloc.start()
    ds = FeatureStore.open(tmp_path / "big").to_xarray("wide")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ds.features.nbytes == 60 * 64 * 4096 * 4  # 63 MB as float32
    assert peak < ds.features.nbytes / 8, peak
    assert float(ds.sel(video="v042").features[0, 0]) == 42.0


# ---------------------------------------------------------------- read_manifest outside Prefect
def test_read_manifest_is_public_without_prefect():
    code = (
        "import sys; from feature_store import read_manifest, FeatureStore; "
        "assert 'prefect' not in sys.modules and 'flows' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


# ---------------------------------------------------------------- docs/analysis.md, executed
def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)


def test_the_analyst_path_is_under_ten_lines():
    (lang, first), *_ = _blocks(DOC.read_text())
    statements = [line for line in first.splitlines() if line.strip() and not line.startswith(("from ", "import "))]
    assert lang == "python" and len(statements) < 10, statements


def test_every_example_of_the_analysis_doc_runs(analysis_dir, capsys):
    from flows.cli import main as vqa

    blocks = _blocks(DOC.read_text())
    assert len(blocks) >= 8
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 -- our own documentation
            continue
        for line in code.splitlines():
            if line.strip():
                args = shlex.split(line)
                assert args[0] == "vqa" and vqa(args[1:]) == 0, line
    out = capsys.readouterr().out
    result = namespace["result"]
    assert result.metrics["n_splits"] == 100 and result.metrics["n_distinct_splits"] <= 100
    assert len(namespace["scores"]) == 5 and namespace["first"].shape == (namespace["ds"].sizes["step"], 16)
    assert namespace["paper"].epochs == 2000 and namespace["gru"].epochs == 5
    assert "no feature store at" in out and "Settings that differ" in out and "head" in out
