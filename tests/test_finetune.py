"""Fine-tuning (``pipeline.finetune``, ``flows.finetune``) and the synthetic IQA set it trains on.

CPU-sized: one synthetic IQA set of 21 images (3 photos x (reference + 3 distortions x 2
levels), 80x80 PNG) shared by the module; InceptionV3 runs at its smallest input (75 px) for
one epoch, ResNet-34 at 48-64 px for one or two.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError, WeightsError, WeightsUnavailableError
from pipeline.extractors import create_extractor
from pipeline.finetune import (
    CHECKPOINT_NAME,
    RECIPES,
    SIDECAR_NAME,
    STATE_NAME,
    FinetuneError,
    build_model,
    finetune,
    get_recipe,
    resolve_recipe,
    select_trainable,
)
from pipeline.synthetic import (
    IQA_DISTORTIONS,
    IQA_PSEUDO_MOS,
    REFERENCE_MOS,
    distort_image,
    iqa_pseudo_mos,
    load_source,
    make_iqa_dataset,
    render_camera_clip,
)
from pipeline.weights import file_sha256, load_checkpoint
from vqa_core.manifest import read_manifest

IQA = dict(n_sources=3, size=(80, 80), distortions=("blur", "noise", "jpeg"), levels=(2, 5), seed=0, progress=False)
N_IMAGES = 3 * (1 + 3 * 2)
INCEPTION_SIZE = 75  # inception_v3's smallest input


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against the other
    processes and run 5-10x slower. Restored afterwards (it is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def iqa(tmp_path_factory) -> Path:
    return make_iqa_dataset(tmp_path_factory.mktemp("iqa"), **IQA)


@pytest.fixture(scope="module")
def entries(iqa):
    return read_manifest(iqa, require_mos=True)


def subset(entries, n=12):
    """``n`` images of the first photos as training data and one photo held out (a grouped split)."""
    held_out = entries[-1].group
    val = [i for i, e in enumerate(entries) if e.group == held_out][:4]
    train = [i for i, e in enumerate(entries) if e.group != held_out][: n - len(val)]
    keep = train + val
    return (
        [str(entries[i].path) for i in keep],
        [entries[i].mos for i in keep],
        [entries[i].group for i in keep],
        list(range(len(train))),
        list(range(len(train), len(keep))),
    )


def initial_state(recipe: str, **overrides) -> dict[str, torch.Tensor]:
    """The weights a run with ``start="random"``, seed 0 begins from."""
    effective, _ = resolve_recipe(recipe, **overrides)
    model, _ = build_model(effective, start="random", seed=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trainable_names(recipe: str) -> set[str]:
    effective, _ = resolve_recipe(recipe)
    model, _ = build_model(effective, start="random", seed=0)
    return set(select_trainable(model, effective))


# --------------------------------------------------------------------------- synthetic IQA set
def test_iqa_manifest_reads_with_groups_and_graded_mos(iqa, entries):
    assert len(entries) == N_IMAGES
    with open(iqa, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["video_id", "path", "mos", "group", "distortion", "level"]
    assert {e.group for e in entries} == {"astronaut", "chelsea", "coffee"}
    for row, entry in zip(rows, entries):
        assert entry.path.suffix == ".png" and entry.path.is_file()
        assert entry.mos == pytest.approx(iqa_pseudo_mos(row["distortion"], int(row["level"])))
        assert row["video_id"].startswith(f"{row['group']}__v0__")
    for distortion in IQA["distortions"]:
        ladder = [e.mos for e, r in zip(entries, rows) if r["distortion"] == distortion and r["group"] == "chelsea"]
        assert ladder == sorted(ladder, reverse=True) and max(ladder) < REFERENCE_MOS
    from PIL import Image

    with Image.open(entries[0].path) as image:
        assert image.size == (80, 80) and image.mode == "RGB"


def test_iqa_tables_cover_five_monotone_levels():
    assert set(IQA_DISTORTIONS) >= {"blur", "noise", "jpeg", "contrast", "saturation"}
    for name, ladder in IQA_PSEUDO_MOS.items():
        assert len(ladder) == len(IQA_DISTORTIONS[name]) == 5
        assert list(ladder) == sorted(ladder, reverse=True) and ladder[0] < REFERENCE_MOS


def test_distortions_grow_with_the_level():
    image = next(render_camera_clip(load_source("coffee"), num_frames=1, size=(96, 72), seed=1))
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    ref = image.astype(np.float64)

    def error(d, k):
        return float(np.abs(distort_image(image, d, k, rng=rng()).astype(np.float64) - ref).mean())

    for name in IQA_DISTORTIONS:
        errors = [error(name, k) for k in range(1, 6)]
        assert errors == sorted(errors) and errors[0] > 0, (name, errors)
    grey = distort_image(image, "saturation", 5, rng=rng())
    assert np.abs(grey.astype(int) - grey[..., :1]).max() <= 1  # saturation 0: every pixel grey
    flat = distort_image(image, "contrast", 5, rng=rng())
    assert (flat.std(axis=(0, 1)) < 0.3 * image.std(axis=(0, 1))).all()  # factor 0.25 about each channel mean


def test_iqa_dataset_is_deterministic_and_skips_saturation_of_grey_photos(tmp_path):
    small = dict(size=(32, 32), distortions=("noise", "jpeg", "saturation"), levels=(1,), seed=3, progress=False)
    first = make_iqa_dataset(tmp_path / "a", n_sources=1, **small)
    second = make_iqa_dataset(tmp_path / "b", n_sources=1, **small)
    assert first.read_text() == second.read_text()
    for row in read_manifest(first):
        assert row.path.read_bytes() == (second.parent / row.path.relative_to(first.parent)).read_bytes()
    with pytest.raises(PipelineError, match="exists"):
        make_iqa_dataset(tmp_path / "a", n_sources=1, **small)
    # photo 6 is scikit-image's greyscale "camera": no saturation rows for it
    grey = make_iqa_dataset(tmp_path / "c", n_sources=6, **small)
    rows = list(csv.DictReader(open(grey)))
    assert {r["distortion"] for r in rows if r["group"] == "camera"} == {"reference", "noise", "jpeg"}
    assert sum(r["distortion"] == "saturation" for r in rows) == 5


def test_iqa_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(PipelineError, match="did you mean 'blur'"):
        make_iqa_dataset(tmp_path, n_sources=1, distortions=("blurr",), progress=False)
    with pytest.raises(PipelineError, match="levels"):
        make_iqa_dataset(tmp_path, n_sources=1, levels=(0, 6), progress=False)
    assert not (tmp_path / "manifest.csv").exists()


# --------------------------------------------------------------------------- recipes
def test_fmc_recipe_is_the_reference_one():
    r = get_recipe("fmc-inception")
    assert (r.arch, r.loss, r.lr, r.epochs, r.batch_size, r.val_fraction) == ("inception_v3", "mse", 3e-4, 60, 8, 0.2)
    assert (r.resize_short_side, r.image_size, r.extractor) == (338, 299, "inception-gram")
    names = trainable_names("fmc-inception")
    blocks = {n.split(".")[0] for n in names}
    assert blocks == {
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "Mixed_5b",
        "fc",
    }
    assert len(names) == 38 and not any(n.startswith("Mixed_5c") for n in names)


def test_quality_recipe_trains_everything_on_the_path():
    names = trainable_names("quality-resnet")
    assert "backbone.conv1.weight" in names and "fc.weight" in names
    assert not any(n.startswith("backbone.fc.") for n in names)  # ImageNet classifier: not on the path


def test_overrides_are_checked_and_rescale_the_resize():
    effective, overrides = resolve_recipe("fmc-inception", image_size=80, epochs=2)
    assert effective.image_size == 80 and effective.resize_short_side == round(80 * 338 / 299)
    assert overrides["epochs"] == 2 and overrides["image_size"] == 80
    with pytest.raises(FinetuneError, match="at least 75"):
        resolve_recipe("fmc-inception", image_size=64)
    with pytest.raises(FinetuneError, match="positive"):
        resolve_recipe("quality-resnet", lr=-1.0)
    with pytest.raises(FinetuneError, match="Did you mean fmc-inception"):
        get_recipe("fmc-inceptoin")


# --------------------------------------------------------------------------- flow, end to end
@pytest.fixture(scope="module")
def fmc_run(iqa, tmp_path_factory, prefect_harness):
    from flows.finetune import finetune_flow

    out = tmp_path_factory.mktemp("fmc")
    summary = finetune_flow(
        manifest=str(iqa),
        out=str(out),
        recipe="fmc-inception",
        start="random",
        epochs=1,
        image_size=INCEPTION_SIZE,
        device="cpu",
        progress=False,
    )
    return summary, out


@pytest.mark.slow
def test_fmc_flow_writes_a_checkpoint_the_gram_extractor_loads(fmc_run, iqa):
    summary, out = fmc_run
    assert summary["finished"] and summary["checkpoint"] == str(out / CHECKPOINT_NAME)
    assert summary["extractor"] == "inception-gram" and summary["n_train"] + summary["n_val"] == N_IMAGES
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["fc.weight"].shape == (1, 2048) and not any(k.startswith("AuxLogits") for k in state)

    extractor = create_extractor("inception-gram", weights=str(out / CHECKPOINT_NAME))
    training = extractor.spec.weights["training"]
    assert training["recipe"] == "fmc-inception" and training["extractor"] == "inception-gram"
    assert training["start_weights"]["source"] == "random"
    assert training["overrides"] == {"epochs": 1, "image_size": 75, "resize_short_side (derived)": 85}
    assert training["data"]["manifest_sha256"] == file_sha256(iqa)
    assert training["data"]["n_images"] == N_IMAGES and training["data"]["n_groups"] == 3
    assert training["best_epoch"] == 1 and set(training["history"][0]) >= {"train_loss", "val_loss", "srocc", "plcc"}
    assert training["trainable"]["tensors"] == 38
    frame = np.full((1, 120, 160, 3), 128, np.uint8)
    assert extractor(frame).shape == (1, extractor.spec.dims)


def test_fmc_changes_only_the_layers_before_mixed_5c_branch1x1(fmc_run):
    _, out = fmc_run
    before = initial_state("fmc-inception", image_size=INCEPTION_SIZE)
    after = load_checkpoint(out / CHECKPOINT_NAME)
    assert set(before) == set(after)
    trainable = trainable_names("fmc-inception")
    for name in trainable:
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    frozen = [
        k
        for k in before
        if k not in trainable and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(frozen) > 200
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"frozen {name} changed"
    # FMC trains in model.train(): BatchNorm statistics of frozen layers follow the IQA data.
    assert not torch.equal(
        before["Mixed_7c.branch_pool.bn.running_mean"], after["Mixed_7c.branch_pool.bn.running_mean"]
    )


@pytest.mark.slow
def test_frozen_bn_eval_keeps_every_frozen_tensor(entries, tmp_path):
    paths, mos, groups, train, val = subset(entries)
    recipe = dataclasses.replace(RECIPES["fmc-inception"], frozen_bn="eval")
    finetune(
        paths,
        mos,
        train_idx=train,
        val_idx=val,
        groups=groups,
        out=tmp_path,
        recipe=recipe,
        start="random",
        epochs=1,
        image_size=INCEPTION_SIZE,
        device="cpu",
        progress=False,
    )
    before = initial_state("fmc-inception", image_size=INCEPTION_SIZE)
    after = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    blocks = ("Conv2d_", "Mixed_5b.", "fc.")
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "Mixed_5b",
        "fc",
    }
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(blocks))


@pytest.fixture(scope="module")
def resnet_run(iqa, tmp_path_factory, prefect_harness):
    from flows.finetune import finetune_flow

    out = tmp_path_factory.mktemp("resnet")
    summary = finetune_flow(
        manifest=str(iqa),
        out=str(out),
        recipe="quality-resnet",
        start="random",
        epochs=2,
        batch_size=8,
        image_size=64,
        device="cpu",
        seed=1,
        progress=False,
    )
    return summary, out


@pytest.mark.slow
def test_quality_flow_writes_a_checkpoint_unique_loads(resnet_run):
    summary, out = resnet_run
    assert summary["finished"] and summary["epochs_done"] == 2 and summary["extractor"] == "unique"
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert all(k.startswith(("backbone.", "fc.")) for k in state) and state["fc.weight"].shape == (1, 512)
    assert state["backbone.fc.weight"].shape == (1000, 512)
    before = initial_state("quality-resnet", image_size=64)
    assert not torch.equal(before["backbone.layer1.0.conv1.weight"], state["backbone.layer1.0.conv1.weight"])

    extractor = create_extractor("unique", weights=str(out / CHECKPOINT_NAME))
    weights = extractor.spec.weights
    assert weights["training"]["recipe"] == "quality-resnet" and weights["layout"] == "backbone.*"
    assert set(weights["dropped_keys"]) == {"fc.weight", "fc.bias"}
    assert weights["training"]["selected_by"] == "srocc" and weights["training"]["seed"] == 1
    assert extractor(np.full((1, 64, 64, 3), 90, np.uint8)).shape == (1, 1920)


@pytest.mark.slow
def test_finished_run_is_not_redone_and_its_record_is_stable(resnet_run, iqa):
    from flows.finetune import finetune_flow

    summary, out = resnet_run
    sidecar = (out / SIDECAR_NAME).read_bytes()
    again = finetune_flow(
        manifest=str(iqa),
        out=str(out),
        recipe="quality-resnet",
        start="random",
        epochs=2,
        batch_size=8,
        image_size=64,
        device="cpu",
        seed=1,
        progress=False,
    )
    assert again["epochs_run"] == 0 and again["best_epoch"] == summary["best_epoch"]
    assert (out / SIDECAR_NAME).read_bytes() == sidecar  # same weights identity for features made since


def test_stale_sidecar_is_refused(resnet_run, tmp_path):
    _, out = resnet_run
    shutil.copy(out / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    record = json.loads((out / SIDECAR_NAME).read_text())
    record["checkpoint_sha256"] = "0" * 64
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(record))
    with pytest.raises(WeightsError, match="stale"):
        create_extractor("unique", weights=str(tmp_path / CHECKPOINT_NAME))


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(entries, tmp_path):
    paths, mos, groups, train, val = subset(entries)
    args = dict(
        train_idx=train,
        val_idx=val,
        groups=groups,
        recipe="quality-resnet",
        start="random",
        epochs=2,
        batch_size=4,
        image_size=48,
        device="cpu",
        seed=5,
        progress=False,
    )
    whole = finetune(paths, mos, out=tmp_path / "whole", **args)

    first = finetune(paths, mos, out=tmp_path / "parts", stop_after_epochs=1, **args)
    assert not first.finished and first.checkpoint is None and first.epochs_done == 1
    saved = load_checkpoint(tmp_path / "parts" / STATE_NAME)  # weights_only=True
    assert saved["epoch"] == 1 and set(saved) >= {"model", "optimizer", "history", "best", "fingerprint"}
    assert saved["best"]["epoch"] == 1 and saved["best"]["model"] is None  # the best epoch's weights are "model"
    rest = finetune(paths, mos, out=tmp_path / "parts", **args)
    assert rest.finished and rest.epochs_run == 1

    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(rest.history) == strip(whole.history)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(rest.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_refuses_a_state_made_differently(entries, tmp_path):
    paths, mos, groups, train, val = subset(entries)
    args = dict(
        train_idx=train,
        val_idx=val,
        recipe="quality-resnet",
        start="random",
        epochs=2,
        batch_size=8,
        image_size=48,
        device="cpu",
        progress=False,
    )
    finetune(paths, mos, out=tmp_path, seed=0, stop_after_epochs=1, **args)
    with pytest.raises(FinetuneError, match="different seed"):
        finetune(paths, mos, out=tmp_path, seed=1, **args)
    restarted = finetune(paths, mos, out=tmp_path, seed=1, resume=False, stop_after_epochs=1, **args)
    assert restarted.epochs_done == 1
    # a state of the layout before the shared epoch loop is refused by its version, not misread
    torch.save({"format": "vqa-finetune-state/1", "epoch": 1}, tmp_path / STATE_NAME)
    with pytest.raises(FinetuneError, match=r"layout version 1, this code reads 2; pass resume=False"):
        finetune(paths, mos, out=tmp_path, seed=1, **args)


# --------------------------------------------------------------------------- refusals
def test_imagenet_start_offline_fails_clearly_before_writing(entries, tmp_path):
    paths, mos, _, train, val = subset(entries)
    with pytest.raises(WeightsUnavailableError, match="Inception_V3_Weights"):
        finetune(
            paths,
            mos,
            train_idx=train,
            val_idx=val,
            out=tmp_path / "out",
            recipe="fmc-inception",
            start="imagenet",
            image_size=INCEPTION_SIZE,
            progress=False,
        )
    assert not (tmp_path / "out" / STATE_NAME).exists()


def test_bad_data_is_refused_before_training(entries, tmp_path):
    paths, mos, _, train, val = subset(entries)
    common = dict(out=tmp_path / "out", recipe="quality-resnet", start="random", progress=False)
    not_image = tmp_path / "clip.mp4"
    not_image.write_bytes(b"\x00" * 64)
    with pytest.raises(FinetuneError, match="images"):
        finetune([str(not_image)] + paths[1:], mos, train_idx=train, val_idx=val, image_size=48, **common)
    with pytest.raises(FinetuneError, match="smaller than the 384 px crop"):
        finetune(paths, mos, train_idx=train, val_idx=val, **common)
    with pytest.raises(FinetuneError, match="overlap"):
        finetune(paths, mos, train_idx=train, val_idx=train[:3], image_size=48, **common)
    with pytest.raises(FinetuneError, match="one MOS per image"):
        finetune(paths, mos[:-1], train_idx=train, val_idx=val, image_size=48, **common)
    assert not (tmp_path / "out" / STATE_NAME).exists()


def test_vqa_extract_uses_the_fine_tuned_checkpoint_and_names_it_in_provenance(resnet_run, tmp_path, capsys):
    from feature_store import FeatureStore
    from flows.cli import main

    from .helpers import make_video

    _, out = resnet_run
    make_video(tmp_path / "v.mp4", 4, width=64, height=48, noise=True)
    (tmp_path / "m.csv").write_text("video_id,path\nv,v.mp4\n")
    assert (
        main(
            [
                "extract",
                str(tmp_path / "m.csv"),
                "--store",
                str(tmp_path / "s"),
                "--extractor",
                "unique",
                "--weights",
                f"unique={out / CHECKPOINT_NAME}",
                "--sampling",
                "uniform:2",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    store = FeatureStore(tmp_path / "s")
    set_id = store.resolve("unique")
    weights = store.video_provenance(set_id, "v")["set"]["spec"]["weights"]
    assert weights["source"] == "file" and weights["training"]["recipe"] == "quality-resnet"
    assert store.read_video(set_id, "v").shape == (2, 1920)


@pytest.mark.slow
def test_vqa_finetune_command_runs_the_flow(iqa, tmp_path, prefect_harness, capsys):
    from flows.cli import main

    assert (
        main(
            [
                "finetune",
                str(iqa),
                "--out",
                str(tmp_path / "ft"),
                "--recipe",
                "quality-resnet",
                "--start",
                "random",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--image-size",
                "64",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    assert "vqa extract ... --weights unique=" in capsys.readouterr().out
    assert (tmp_path / "ft" / CHECKPOINT_NAME).is_file()
