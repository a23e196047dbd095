"""Hardening, faults: out-of-memory during extraction, disk full while storing, damaged store
metadata, and NaN features at prediction time. The case table is in docs/hardening.md.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.storage import LocalStore

from feature_store import FeatureStore, encode_node_name, format_store_info
from feature_store.errors import FeatureStoreError, InvalidMetadataError
from pipeline.errors import ExtractorOutOfMemoryError, PipelineError
from pipeline.extractors import ExtractorSpec
from pipeline.extractors.base import Extractor
from pipeline.runner import extract_video
from pipeline.sampling import parse_sampling
from regressors.errors import InvalidInputError
from regressors.svr import SVRHead
from tests.helpers import make_video

# ---- out of memory: adaptive batch ---------------------------------------------------------


def cuda_oom(size: int) -> BaseException:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} MiB")


def runtime_oom(size: int) -> BaseException:
    return RuntimeError(f"CUDA error: out of memory (batch of {size})")


def cpu_allocator_oom(size: int) -> BaseException:
    """torch's CPU allocator under a ulimit (what a 16000x16000 frame through resnet50 gave)."""
    return RuntimeError(
        f"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        f"you tried to allocate {size * 2123366400} bytes. Error code 12 (Cannot allocate memory)"
    )


def numpy_oom(size: int) -> BaseException:
    return MemoryError(f"Unable to allocate {size * 99.5:.1f} MiB for an array with shape ({size}, 4320, 7680, 3)")


class FussyExtractor(Extractor):
    """Deterministic per-frame features; raises ``oom(batch)`` for batches larger than ``fits``.

    ``batches`` records every call's batch size, failed ones included."""

    def __init__(self, name: str = "fussy", *, fits: int = 10**9, oom=cuda_oom):
        spec = ExtractorSpec(name=name, version="1", dims=4, backbone="none", taps=(), pooling="test")
        super().__init__(spec, device="cpu")
        self.fits, self.oom, self.batches = fits, oom, []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.batches.append(len(frames))
        if len(frames) > self.fits:
            raise self.oom(len(frames))
        flat = frames.reshape(len(frames), -1).astype(np.float64)
        return np.stack([flat.mean(1), flat.std(1), flat[:, 0], flat[:, -1]], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("oom") / "noise.mp4", 40, noise=True)


@pytest.fixture
def cuda_cache(monkeypatch):
    """Pretend CUDA is there; count empty_cache() calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "oom",
    [cuda_oom, runtime_oom, cpu_allocator_oom, numpy_oom],
    ids=["OutOfMemoryError", "RuntimeError", "CPU allocator", "MemoryError"],
)
def test_out_of_memory_halves_the_batch_and_gives_the_same_features(noise_video, cuda_cache, oom, caplog):
    sampling = parse_sampling("all")
    reference, _ = extract_video(noise_video, [FussyExtractor()], sampling=sampling, batch_size=16)
    fussy, steady = FussyExtractor(fits=5, oom=oom), FussyExtractor("steady")
    features, info = extract_video(noise_video, [fussy, steady], sampling=sampling, batch_size=16)
    np.testing.assert_array_equal(features[0], reference[0])
    np.testing.assert_array_equal(features[1], reference[0])
    # 16 fails, 8 fails, then 4 at a time for the rest of the video (40 frames = 10 x 4)
    assert fussy.batches == [16, 8] + [4] * 10
    assert steady.batches == [16, 16, 8]  # the other extractor keeps its batch
    assert len(cuda_cache) == 2
    assert "fussy ran out of memory on cpu with a batch of 16 step(s); retrying with 8" in caplog.text


def test_out_of_memory_even_for_one_step_is_a_clear_error(noise_video, cuda_cache):
    fussy = FussyExtractor(fits=0)
    with pytest.raises(ExtractorOutOfMemoryError) as caught:
        extract_video(noise_video, [fussy], sampling=parse_sampling("uniform:8"), batch_size=8)
    error = caught.value
    assert isinstance(error, PipelineError) and isinstance(error, MemoryError)
    assert (error.extractor, error.device) == ("fussy", "cpu")
    message = str(error)
    assert "fussy ran out of memory on cpu even with a batch of 1 step (1 frame(s) of 64x48)" in message
    assert "CUDA out of memory" in message and "--device cpu" in message
    assert fussy.batches == [8, 4, 2, 1] and len(cuda_cache) == 4


def test_host_out_of_memory_even_for_one_step_names_the_frame_size_limit(noise_video):
    fussy = FussyExtractor(fits=0, oom=cpu_allocator_oom)
    with pytest.raises(ExtractorOutOfMemoryError) as caught:
        extract_video(noise_video, [fussy], sampling=parse_sampling("uniform:4"), batch_size=4)
    message = str(caught.value)
    assert "fussy ran out of memory on cpu even with a batch of 1 step (1 frame(s) of 64x48)" in message
    assert "DefaultCPUAllocator: can't allocate memory" in message
    assert "lower the frame-size limit (VQA_MAX_FRAME_PIXELS)" in message and "--device cpu" not in message
    assert fussy.batches == [4, 2, 1]


def test_other_runtime_errors_are_not_retried(noise_video, cuda_cache):
    fussy = FussyExtractor(fits=0, oom=lambda n: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        extract_video(noise_video, [fussy], sampling=parse_sampling("all"), batch_size=16)
    assert fussy.batches == [16] and cuda_cache == []


# ---- disk full while storing features ------------------------------------------------------

EXTRACTOR = "resnet50-vsfa"


def _manifest(folder: Path, count: int) -> Path:
    rows = [f"v{i},{make_video(folder / f'v{i}.mp4', 4, width=96, height=64)}" for i in range(count)]
    manifest = folder / "manifest.csv"
    manifest.write_text("video_id,path\n" + "\n".join(rows) + "\n")
    return manifest


def _no_staging_leftovers(store: FeatureStore, set_id: str) -> bool:
    return [p.name for p in (store.path / encode_node_name(set_id) / "_staging").iterdir()] == ["zarr.json"]


@pytest.mark.slow
def test_disk_full_in_a_flow_records_a_clear_failure_and_a_rerun_completes(tmp_path, prefect_harness, monkeypatch):
    """The disk stays full to the end of the run, so the run record cannot be written either:
    the summary is still returned (and printed by the command line), with a warning."""
    from flows import extract_plan
    from flows.extract import extract_flow

    manifest = _manifest(tmp_path, 2)
    store_path = tmp_path / "store"
    kwargs = dict(
        manifest=str(manifest),
        store=str(store_path),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling="uniform:1",
        device="cpu",
        progress=False,
    )
    real_set = LocalStore.set

    async def full_disk(self, key, value):
        if key.startswith("c/"):  # feature chunks; metadata of new feature sets still fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    def no_room_for_the_record(self, name, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    warnings = []
    with monkeypatch.context() as patch:
        patch.setattr(LocalStore, "set", full_disk)
        patch.setattr(FeatureStore, "write_run_file", no_room_for_the_record)
        patch.setattr(extract_plan.logger, "warning", lambda message, *args: warnings.append(message % args))
        summary = extract_flow(**kwargs)
    assert (summary["done"], summary["failed"]) == (0, 2)
    assert summary["run_record"] is None
    assert any("the run record could not be written" in w and "No space left on device" in w for w in warnings)
    for video_id, reason in summary["failures"].items():
        assert reason.startswith("OSError: [Errno 28] disk full (No space left on device)"), reason
        assert repr(video_id) in reason and str(store_path) in reason and "re-run" in reason
    store = FeatureStore(store_path)
    (set_id,) = store.feature_sets()
    assert store.video_ids(set_id) == [] and _no_staging_leftovers(store, set_id)

    again = extract_flow(**kwargs)
    assert (again["done"], again["failed"]) == (2, 0)
    assert store.video_ids(set_id) == ["v0", "v1"]


def test_disk_full_at_the_final_rename_leaves_nothing_half_done(tmp_path, monkeypatch):
    from flows.extract import ExtractionConfig, build_extractors, extract_video_task, feature_set_ids

    manifest = _manifest(tmp_path, 1)
    store_path = str(tmp_path / "store")
    config = ExtractionConfig((EXTRACTOR,), {EXTRACTOR: "random"}, {EXTRACTOR: "uniform:1"}, "cpu", 16)
    video = str(manifest.parent / "v0.mp4")
    feature_set_ids(FeatureStore(store_path), build_extractors(config), config)  # the set exists already
    real_rename = os.rename

    def full_disk_rename(src, dst, *args, **kwargs):
        if "_staging" in str(src) and "_staging" not in str(dst):  # placing a finished video
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_rename(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", full_disk_rename)
        with pytest.raises(OSError) as caught:
            extract_video_task.fn("v0", video, store_path, config)
    assert caught.value.errno == errno.ENOSPC and "disk full" in str(caught.value)
    store = FeatureStore(store_path)
    (set_id,) = store.feature_sets()
    assert not store.has_video(set_id, "v0") and _no_staging_leftovers(store, set_id)
    assert extract_video_task.fn("v0", video, store_path, config)["status"] == "done"
    assert store.has_video(set_id, "v0")


# ---- damaged store metadata: only FeatureStoreError, never a raw KeyError/TypeError ---------

SPEC = {"name": "probe", "dims": 3}
SAMPLING = {"strategy": "uniform", "value": 2}
PROVENANCE = {"set": {"spec": SPEC, "sampling": SAMPLING}, "video": {"source": "x.mp4"}}


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    """A store with one set and two videos, and the zarr.json files a fuzz case may damage."""
    store = FeatureStore(tmp_path_factory.mktemp("fuzz") / "store")
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    for video_id in ("v1", "v 2"):
        store.write_video(set_id, video_id, np.arange(6, dtype=np.float32).reshape(2, 3), provenance=PROVENANCE)
    targets = {
        "root": store.path / "zarr.json",
        "set": store.path / encode_node_name(set_id) / "zarr.json",
        "video": store.path / encode_node_name(set_id) / "v1" / "zarr.json",
        "set staging": store.path / encode_node_name(set_id) / "_staging" / "zarr.json",
    }
    docs = {name: json.loads(path.read_text()) for name, path in targets.items()}
    return store.path, set_id, {n: p.relative_to(store.path) for n, p in targets.items()}, docs


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-3, 2**40)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["complete", "array", "group", "v1", "probe", "float16", "set", 3])
)
JSON = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["set", "name", "id"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    """Every key path into a JSON document (the document itself first)."""
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


@st.composite
def damage(draw, docs):
    """(target, new bytes): random bytes, or the real document with one value replaced or removed."""
    target = draw(st.sampled_from(sorted(docs)))
    how = draw(st.sampled_from(["bytes", "replace", "delete"]))
    if how == "bytes":
        return target, draw(st.binary(max_size=60))
    doc = json.loads(json.dumps(docs[target]))
    paths = list(_paths(doc))
    where = draw(st.sampled_from(paths[1:] if how == "delete" else paths))
    if not where:
        return target, json.dumps(draw(JSON)).encode()
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw(JSON)
    return target, json.dumps(doc).encode()


def _store_operations(path: Path, set_id: str):
    store = FeatureStore(path, create=False)
    operations = {
        "feature_sets": store.feature_sets,
        "info": lambda: format_store_info(store.info()),
        "resolve": lambda: store.resolve("probe"),
        "has_video": lambda: store.has_video(set_id, "v1"),
        "video_ids": lambda: store.video_ids(set_id),
        "read_video": lambda: store.read_video(set_id, "v1"),
        "read_videos": lambda: store.read_videos(set_id, ["v1", "v 2"]),
        "video_provenance": lambda: store.video_provenance(set_id, "v1"),
        "ensure_feature_set": lambda: store.ensure_feature_set(spec=SPEC, sampling=SAMPLING),
        "write_video": lambda: store.write_video(set_id, "v3", np.ones((2, 3)), provenance=PROVENANCE),
        "remove_incomplete": store.remove_incomplete,
    }
    try:
        from feature_store.maintenance import verify
    except ImportError:  # maintenance tools are optional here
        return operations
    return {"verify": lambda: verify(store), **operations}


@pytest.mark.slow
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_damaged_store_metadata_raises_only_feature_store_errors(template_store, data):
    template, set_id, targets, docs = template_store
    target, content = data.draw(damage(docs))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store"
        shutil.copytree(template, path)
        (path / targets[target]).write_bytes(content)
        try:
            operations = _store_operations(path, set_id)
        except FeatureStoreError:
            return
        crashes = {}
        for name, operation in operations.items():
            try:
                operation()
            except FeatureStoreError:
                pass
            except Exception as exc:  # noqa: BLE001 - what this test is looking for
                crashes[name] = f"{type(exc).__name__}: {exc}"
        assert not crashes, f"{target} <- {content[:200]!r}: {crashes}"


def test_damaged_set_metadata_is_named(template_store, tmp_path):
    template, set_id, targets, docs = template_store
    shutil.copytree(template, tmp_path / "store")
    doc = json.loads(json.dumps(docs["set"]))
    doc["attributes"]["spec"] = ["not", "a", "dict"]
    (tmp_path / "store" / targets["set"]).write_text(json.dumps(doc))
    store = FeatureStore(tmp_path / "store")
    assert store.feature_sets() == []  # left out of listings ...
    with pytest.raises(InvalidMetadataError, match="has damaged metadata"):  # ... and named on access
        store.read_video(set_id, "v1")
    with pytest.raises(InvalidMetadataError, match="has damaged metadata"):
        store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)


def test_video_with_damaged_metadata_counts_as_not_stored_and_is_replaced(template_store, tmp_path):
    template, set_id, targets, docs = template_store
    shutil.copytree(template, tmp_path / "store")
    doc = json.loads(json.dumps(docs["video"]))
    doc["attributes"]["provenance"] = "lost"
    (tmp_path / "store" / targets["video"]).write_text(json.dumps(doc))
    store = FeatureStore(tmp_path / "store")
    assert not store.has_video(set_id, "v1") and store.video_ids(set_id) == ["v 2"]
    store.write_video(set_id, "v1", np.full((2, 3), 7.0), provenance=PROVENANCE)  # a re-run replaces it
    np.testing.assert_array_equal(store.read_video(set_id, "v1"), np.full((2, 3), 7.0))


@pytest.mark.parametrize("how", ["nan written into a chunk", "chunk file deleted"])
def test_non_finite_stored_features_are_refused_on_read(template_store, tmp_path, how):
    template, set_id, _, _ = template_store
    shutil.copytree(template, tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    video_dir = store.path / encode_node_name(set_id) / "v1"
    if how == "chunk file deleted":
        for chunk in (video_dir / "c").rglob("*"):
            if chunk.is_file():
                chunk.unlink()
    else:
        zarr.open_array(store=LocalStore(video_dir), mode="r+")[0, 1] = np.nan
    with pytest.raises(InvalidMetadataError, match=r"'v1' of feature set .* is damaged .* NaN/Inf"):
        store.read_video(set_id, "v1")
    np.testing.assert_array_equal(store.read_video(set_id, "v 2"), np.arange(6).reshape(2, 3))


# ---- NaN at prediction time ------------------------------------------------------------------


def test_svr_predict_refuses_nan_and_inf_features_naming_the_videos():
    rng = np.random.default_rng(0)
    X = [rng.normal(size=(4, 5)) for _ in range(12)]
    head = SVRHead().fit(X, rng.normal(size=12))
    bad = [x.copy() for x in X]
    bad[3][1, 2], bad[7][0, 0] = np.nan, -np.inf
    for inputs in (bad, np.stack([x.mean(axis=0) for x in bad])):  # sequences, and pooled [N, D]
        with pytest.raises(InvalidInputError) as caught:
            head.predict(inputs)
        assert "2 of 12 videos contain NaN or inf" in str(caught.value)
        assert "X[3] has 1 NaN and 0 inf" in str(caught.value) and "X[7] has 0 NaN and 1 inf" in str(caught.value)


def test_predict_job_on_damaged_features_names_the_video(tmp_path, capsys):
    from flows.cli import main as vqa
    from flows.fit import feature_set_identity
    from regressors.persistence import save_head

    store = FeatureStore(tmp_path / "store")
    set_id = store.ensure_feature_set(spec=SPEC, sampling=SAMPLING)
    rng = np.random.default_rng(1)
    for i in range(6):
        store.write_video(set_id, f"v{i}", rng.normal(size=(2, 3)), provenance=PROVENANCE)
    features = store.read_videos(set_id, [f"v{i}" for i in range(6)])
    head = SVRHead().fit(features, rng.normal(size=6))
    save_head(head, tmp_path / "model", feature_info={"feature_sets": [feature_set_identity(store, set_id)]})
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path\n" + "".join(f"v{i},v{i}.mp4\n" for i in range(6)))
    zarr.open_array(store=LocalStore(store.path / encode_node_name(set_id) / "v4"), mode="r+")[1, 1] = np.inf
    code = vqa(
        [
            "predict",
            "--model",
            str(tmp_path / "model"),
            "--store",
            str(store.path),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "scores.csv"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "video 'v4' of feature set" in err and "is damaged" in err and "NaN/Inf" in err
    assert not (tmp_path / "scores.csv").exists()
