"""`vqa extract --precision / --channels-last / --prefetch`: the compute options go through
ExtractionConfig, the per-process extractor cache and create_extractor into the feature set's
spec (precision, channels-last: their own feature sets) or only into the run record (prefetch).

Measured here (resnet50-vsfa, seeded random weights, 4 demo clips of 64x48 at native
resolution, 2 frames each, 1 torch thread): bf16 on the CPU vs fp32, per-frame relative
error ||f_bf16 - f_fp32|| / ||f_fp32|| between 0.72% and 0.79%; channels-last fp32 equal to
the standard layout here (the extractor tests bound it at 1e-5).
"""

import json
from pathlib import Path

import numpy as np
import pytest

import flows.extract
from feature_store import FeatureStore
from flows.cli import main as vqa
from flows.errors import FlowError
from flows.extract import ExtractionConfig, build_extractors, extract_flow
from pipeline.errors import ComputeOptionError
from tests.helpers import tiny_demo_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXTRACTOR = "resnet50-vsfa"
SAMPLING = "uniform:2"
BF16_BOUND = 0.02  # per-frame relative error; measured 0.72-0.79% (module docstring)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """1 photo x (reference + 3 blur levels) = 4 tiny clips."""
    root = tmp_path_factory.mktemp("compute_data")
    return tiny_demo_dataset(root, n_sources=1)


def _extract(manifest: Path, store: Path, *options: str) -> int:
    return vqa(
        [
            "extract",
            str(manifest),
            "--store",
            str(store),
            "--extractor",
            EXTRACTOR,
            "--weights",
            "random",
            "--sampling",
            SAMPLING,
            "--device",
            "cpu",
            "-q",
            *options,
        ]
    )


def _spec(store: FeatureStore, set_id: str) -> dict:
    return store.video_provenance(set_id, store.video_ids(set_id)[0])["set"]["spec"]


def _run_records(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "_runs").glob("extract-*.json"))]


def _relative_errors(store: FeatureStore, set_id: str, reference: str) -> np.ndarray:
    errors = []
    for video_id in store.video_ids(reference):
        a, b = store.read_video(set_id, video_id), store.read_video(reference, video_id)
        assert a.shape == b.shape == (2, 4096)
        errors.extend(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))
    return np.asarray(errors)


@pytest.mark.slow
def test_bf16_is_its_own_feature_set_within_a_bound_of_fp32(manifest, tmp_path, prefect_harness, capsys):
    store_path = tmp_path / "store"
    assert _extract(manifest, store_path) == 0
    assert _extract(manifest, store_path, "--precision", "bf16") == 0
    assert capsys.readouterr().out.count("done 4  skipped 0  failed 0") == 2  # bf16 reused nothing of fp32
    store = FeatureStore(store_path, create=False)
    fp32, bf16 = _run_records(store_path)[0]["feature_sets"][0], _run_records(store_path)[1]["feature_sets"][0]
    assert fp32 != bf16 and sorted(store.feature_sets()) == sorted([fp32, bf16])
    assert _spec(store, fp32)["precision"] == "fp32" and _spec(store, bf16)["precision"] == "bf16"
    assert store.video_provenance(bf16, "astronaut__blur_1")["set"]["spec"]["channels_last"] is False
    assert _run_records(store_path)[1]["config"]["precision"] == "bf16"
    errors = _relative_errors(store, bf16, fp32)
    assert len(errors) == 8
    assert 0 < errors.max() < BF16_BOUND, errors  # bf16 did run (not equal), and stays close
    assert vqa(["store", "verify", str(store_path)]) == 0


@pytest.mark.slow
def test_channels_last_is_its_own_set_and_prefetch_only_reaches_the_run_record(
    manifest, tmp_path, prefect_harness, capsys
):
    store_path = tmp_path / "store"
    assert _extract(manifest, store_path) == 0
    assert _extract(manifest, store_path, "--channels-last", "--prefetch", "0") == 0
    assert _extract(manifest, store_path, "--prefetch", "0") == 0
    out = capsys.readouterr().out
    assert out.count("done 4  skipped 0  failed 0") == 2
    assert "done 0  skipped 4  failed 0" in out  # prefetch 0: the fp32 set, nothing redone
    records = _run_records(store_path)
    assert [r["config"]["prefetch"] for r in records] == [2, 0, 0]
    assert [r["config"]["channels_last"] for r in records] == [False, True, False]
    standard, channels_last = records[0]["feature_sets"][0], records[1]["feature_sets"][0]
    assert records[2]["feature_sets"] == [standard] and channels_last != standard
    store = FeatureStore(store_path, create=False)
    assert _spec(store, channels_last)["channels_last"] is True and _spec(store, channels_last)["precision"] == "fp32"
    assert "prefetch" not in json.dumps(
        store.video_provenance(standard, "astronaut__blur_1")
    )  # not part of the features
    assert _relative_errors(store, channels_last, standard).max() < 1e-5


@pytest.mark.parametrize(
    "options, message",
    [
        (["--precision", "fp16"], "fp16 needs a CUDA device"),  # --device cpu
        (["--precision", "fp16", "--device", "auto"], "fp16 needs a CUDA device"),  # no GPU on this machine
    ],
)
def test_an_invalid_combination_exits_2_and_writes_nothing(manifest, tmp_path, capsys, monkeypatch, options, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store_path = tmp_path / "store"
    assert _extract(manifest, store_path, *options) == 2
    assert message in capsys.readouterr().err
    assert not store_path.exists()


@pytest.mark.parametrize("options", [["--precision", "fp64"], ["--prefetch", "-1"], ["--prefetch", "x"]])
def test_malformed_options_are_usage_errors(manifest, tmp_path, capsys, options):
    with pytest.raises(SystemExit) as exit_info:
        _extract(manifest, tmp_path / "store", *options)
    assert exit_info.value.code == 2 and not (tmp_path / "store").exists()
    assert f"argument {options[0]}" in capsys.readouterr().err


def test_the_flow_refuses_bad_options_before_creating_the_store(manifest, tmp_path):
    store = tmp_path / "store"
    common = dict(
        manifest=str(manifest),
        store=str(store),
        extractors=[EXTRACTOR],
        weights={EXTRACTOR: "random"},
        sampling=SAMPLING,
        progress=False,
    )
    with pytest.raises(ComputeOptionError, match="fp16 needs a CUDA device"):
        extract_flow.fn(**common, device="cpu", precision="fp16")
    with pytest.raises(ComputeOptionError, match="precision must be one of"):
        extract_flow.fn(**common, device="cpu", precision="int8")
    with pytest.raises(FlowError, match="prefetch must be a non-negative integer"):
        extract_flow.fn(**common, device="cpu", prefetch=-1)
    assert not store.exists()


@pytest.mark.slow
def test_the_extractor_cache_key_includes_the_compute_options():
    flows.extract._build.cache_clear()
    configs = [
        ExtractionConfig(
            (EXTRACTOR,), {EXTRACTOR: "random"}, {EXTRACTOR: SAMPLING}, "cpu", precision=p, channels_last=c
        )
        for p, c in (("fp32", False), ("bf16", False), ("fp32", True))
    ]
    built = [build_extractors(c)[0] for c in configs]
    assert [(e.spec.precision, e.spec.channels_last) for e in built] == [
        ("fp32", False),
        ("bf16", False),
        ("fp32", True),
    ]
    assert len({id(e) for e in built}) == 3
    again = ExtractionConfig(
        (EXTRACTOR,), {EXTRACTOR: "random"}, {EXTRACTOR: SAMPLING}, "cpu", precision="bf16", prefetch=0
    )
    assert build_extractors(again)[0] is built[1]  # prefetch is not part of the extractor
    flows.extract._build.cache_clear()


@pytest.mark.slow
def test_extract_folder_takes_the_compute_options(manifest, tmp_path, prefect_harness, capsys):
    store_path = tmp_path / "store"
    assert (
        vqa(
            [
                "extract-folder",
                str(manifest.parent),
                "--store",
                str(store_path),
                "--extractor",
                EXTRACTOR,
                "--weights",
                "random",
                "--sampling",
                SAMPLING,
                "--device",
                "cpu",
                "-q",
                "--precision",
                "bf16",
                "--prefetch",
                "0",
            ]
        )
        == 0
    )
    store = FeatureStore(store_path, create=False)
    (set_id,) = store.feature_sets()
    assert _spec(store, set_id)["precision"] == "bf16" and len(store.video_ids(set_id)) == 4
    assert _run_records(store_path)[0]["config"]["prefetch"] == 0
