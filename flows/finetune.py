"""Fine-tuning as a Prefect flow: manifest of MOS-labelled images -> grouped split -> ``pipeline.finetune``.

::

    manifest.csv (video_id,path,mos[,group]; paths to images)
      --read_manifest(require_mos)--> entries
      --random_splits(test_size=recipe.val_fraction, by group, seed)--> train / val indices
      --pipeline.finetune.finetune--> out/model.pt + out/model.json (+ out/state.pt, resumable)

The checkpoint loads into the recipe's extractor by path (``vqa extract --weights
NAME=out/model.pt``); its sidecar ends up in the features' provenance under
``spec.weights["training"]``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.finetune import finetune, resolve_recipe
from pipeline.weights import file_sha256
from regressors.protocols import random_splits
from vqa_core.manifest import read_manifest

from . import prefect_env  # noqa: F401  (must precede the prefect import)

logger = logging.getLogger(__name__)


@task(name="finetune-train", cache_policy=NO_CACHE)
def finetune_task(
    paths: list[str], mos: list[float], groups: list[str], train_idx: list[int], val_idx: list[int], options: dict
) -> dict:
    """Run the training library; returns its JSON-safe summary (Prefect records task results)."""
    return finetune(paths, mos, train_idx=train_idx, val_idx=val_idx, groups=groups, **options).to_dict()


@flow(name="vqa-finetune")
def finetune_flow(
    manifest: str,
    out: str,
    recipe: str = "fmc-inception",
    start: str = "imagenet",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    image_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Fine-tune ``recipe`` (``fmc-inception``, ``quality-resnet``, ``quality-resnet50``) on the
    images of ``manifest`` and write ``out/model.pt`` with its sidecar ``out/model.json``.

    ``start``: ``imagenet`` | ``random[:SEED]`` | PATH (| ``unique`` / ``tcsvt2022`` for the
    ResNet recipes). ``epochs``, ``batch_size``, ``lr``, ``image_size`` override the recipe and
    are recorded. The validation part is ``recipe.val_fraction`` of the manifest's groups
    (every image its own group when there is no ``group`` column), drawn with ``seed``.
    ``resume=True`` continues an interrupted run in ``out``; ``False`` starts over.

    Returns the library's summary: ``checkpoint``, ``sidecar``, ``state``, ``finished``,
    ``epochs_done``, ``epochs_run``, ``best_epoch``, ``best`` (its metrics), ``history``,
    ``extractor`` (which extractor loads the checkpoint), ``recipe``, plus ``manifest``,
    ``n_train`` and ``n_val``.
    """
    manifest_path = Path(manifest)
    entries = read_manifest(manifest_path, require_mos=True)  # validated before anything is written
    effective, _ = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size)
    grouped = any(e.group for e in entries)
    groups = [e.group or e.video_id for e in entries]
    train, val = random_splits(
        len(entries),
        groups=groups if grouped else None,
        test_size=effective.val_fraction,
        n_repeats=1,
        random_state=seed,
    )[0]
    data = {
        "manifest": str(manifest_path.resolve()),
        "manifest_sha256": file_sha256(manifest_path),
        "split": f"regressors.protocols.random_splits(test_size={effective.val_fraction}, n_repeats=1, "
        f"random_state={seed}) over {'groups' if grouped else 'images'}",
    }
    logger.info(
        "fine-tuning %s on %s: %d images, %d train / %d val",
        effective.name,
        manifest,
        len(entries),
        len(train),
        len(val),
    )
    options = {
        "out": str(out),
        "recipe": recipe,
        "start": start,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "image_size": image_size,
        "device": device,
        "seed": seed,
        "resume": resume,
        "data": data,
        "progress": progress,
    }
    summary = finetune_task(
        [str(e.path) for e in entries], [float(e.mos) for e in entries], groups, train.tolist(), val.tolist(), options
    )
    return {**summary, "manifest": data["manifest"], "n_train": len(train), "n_val": len(val)}
