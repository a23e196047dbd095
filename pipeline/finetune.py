"""Fine-tuning a CNN backbone on image-quality data, so that a frozen extractor becomes quality-aware.

Data flow of one epoch::

    images (PNG/JPEG/BMP) uint8 [H, W, 3]
      --/255, resize short side (recipe), crop (centre; random + flip if augment), ImageNet norm--> [B, 3, S, S]
      --> backbone + Linear(D, 1) --> [B] predicted quality --loss vs MOS--> Adam step on the trainable tensors
    held-out groups --same preprocessing, centre crop, eval mode--> [N_val] --> val loss, SROCC, PLCC
      --> the best epoch's weights are kept

Recipes (:data:`RECIPES`; every number can be read back from :meth:`Recipe.to_dict`):

``fmc-inception`` (FMC-VQA, seed 002; REFERENCE.md "Fine-tuning")
    torchvision ``inception_v3`` (``transform_input=True``, as the Gram extractor runs it) with
    ``fc`` replaced by Linear(2048, 1). Trained: every parameter registered before
    ``Mixed_5c.branch1x1.conv.weight`` -- Conv2d_1a_3x3, 2a, 2b, 3b, 4a and all of Mixed_5b
    (36 tensors, 428,576 values) -- plus fc (2,049 values). ``Mixed_5c.branch1x1`` itself and
    everything after it stay frozen: the public FMC code walks ``named_parameters()`` switching
    ``requires_grad`` on and stops *at* that name. MSE on the raw MOS, Adam lr 3e-4 (no weight
    decay), 60 epochs, batch 8, 20 % of the groups held out, short side resized to 338 and
    centre-cropped to 299 (the extractor's preprocessing), no augmentation. As in the FMC code
    the whole model is in train mode while training: the dropout before fc is active and the
    BatchNorm running statistics of the *frozen* layers are re-estimated on the IQA images
    (``frozen_bn="train"``; ``"eval"`` keeps them, so frozen layers stay bit-identical). The
    epoch with the lowest validation loss is kept (FMC: ``valid_loss <= valid_loss_min``, so a
    tie goes to the later epoch). The auxiliary classifier is not built: FMC never uses its
    output and never trains it, and the Gram extractor drops it.
``quality-resnet`` / ``quality-resnet50`` (ours, in the manner of UNIQUE)
    torchvision ``resnet34`` (``resnet50``) as ``backbone`` -- its own ImageNet ``fc`` kept,
    unused -- and a quality head ``fc`` = Linear(512 (2048), 1) on the global average pool, the
    layout of UNIQUE's model. Every backbone parameter trains (UNIQUE fine-tunes the whole
    network). L1 loss on the MOS standardised with the training split's mean and std, Adam lr
    1e-4, 30 epochs, batch 16, 20 % of the groups held out; native resolution (resizing would
    rescale the distortions, and UNIQUE's extractor keeps frames at native size below 768 px),
    random 384 x 384 crops and horizontal flips for training, the centre crop for validation;
    the epoch with the best validation SROCC is kept.

Start weights (``start``): ``imagenet`` (torchvision's, from the torch hub cache or downloaded;
offline a clear :class:`~pipeline.errors.WeightsUnavailableError`), ``random[:SEED]`` (explicit,
recorded as random), a checkpoint path (inception: torchvision keys, AuxLogits/fc ignored;
ResNets: UNIQUE's ``module.backbone.*`` / ``backbone.*`` layout, e.g. an earlier fine-tune), or
for the ResNets the published quality checkpoints ``unique`` / ``tcsvt2022``.

Files under ``out``::

    state.pt    resumable state, written after every epoch by the epoch loop the sequence heads
                share (:mod:`vqa_core.training`): model, optimizer, epoch, history, best epoch
                and its weights (None when that is the last epoch: same as model), the
                training's fingerprint; tensors and plain containers only, so weights_only=True
                loads it. A state of another training or of an older layout is refused.
    model.pt    the best epoch's weights as a plain state dict in the layout the recipe's
                extractor loads by path (written when the last epoch is done)
    model.json  its sidecar: recipe, overrides, data, start weights, trainable tensors,
                per-epoch metrics, best epoch, checkpoint sha256 (``pipeline.weights.file_weights``
                puts it under ``spec.weights["training"]``)

The networks live in :mod:`pipeline.finetune_models`, image loading and crops in
:mod:`pipeline.finetune_images`; this module holds the recipes and the training.

Randomness comes from ``seed`` only: the split is the caller's, the head's initialisation and
each epoch's shuffling, crops, flips and dropout are seeded by ``(seed, epoch)``, so a run that
is stopped and resumed gives the same weights as one that is not.

Length (over 600 lines): the recipe table and one training procedure (data, epochs, selection,
checkpoints) that reads best in one place; architectures and image loading are already apart
(``finetune_models``, ``finetune_images``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from vqa_core.atomic import atomic_write
from vqa_core.registry import Registry
from vqa_core.training import Best, Checkpointer, EpochLoop, digest, seeded_torch

from .errors import FinetuneError
from .extractors.base import json_safe, resolve_device
from .finetune_images import check_sizes, image_sizes, load_image, prepare_batch
from .finetune_models import ARCHES, HEAD_PREFIX, QualityRegressor, build_model, select_trainable, set_train_mode

__all__ = [
    "CHECKPOINT_NAME",
    "RECIPES",
    "SIDECAR_NAME",
    "STATE_NAME",
    "FinetuneError",
    "FinetuneResult",
    "QualityRegressor",
    "Recipe",
    "build_model",
    "finetune",
    "get_recipe",
    "list_recipes",
    "load_image",
    "prepare_batch",
    "resolve_recipe",
    "select_trainable",
]

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
CHECKPOINT_NAME = "model.pt"
SIDECAR_NAME = "model.json"  # = CHECKPOINT_NAME with .json: what file_weights looks for
STATE_FORMAT = "vqa-finetune-state"  # layout version: vqa_core.training.STATE_VERSION
SIDECAR_FORMAT = "vqa-finetune/1"
MIN_METRIC_SAMPLES = 3  # a correlation of fewer points means nothing
MAX_LISTED_GROUPS = 100  # the sidecar lists the validation groups up to this many
FMC_RESIZE, FMC_CROP = 338, 299  # the Gram extractor's frame_size and center_crop


@dataclass(frozen=True)
class Recipe:
    """A complete fine-tuning configuration (see the module docstring for the two families).

    ``train_until``: name of the first parameter *not* trained, in registration order (the
    head ``fc`` always trains); ``None`` trains every parameter that reaches the output.
    ``target``: ``"mos"`` (raw) or ``"zscore"`` (training split's mean/std). ``select``:
    ``"val_loss"`` (lowest, ties to the later epoch) or ``"srocc"`` (highest). ``frozen_bn``:
    ``"train"`` (BatchNorm statistics of frozen layers follow train mode) or ``"eval"``.
    """

    name: str
    arch: str
    extractor: str
    loss: str
    lr: float
    epochs: int
    batch_size: int
    val_fraction: float
    resize_short_side: int | None
    image_size: int
    augment: bool
    target: str
    select: str
    train_until: str | None
    frozen_bn: str = "train"
    weight_decay: float = 0.0
    starts: tuple[str, ...] = ("imagenet", "random[:SEED]", "PATH")

    def to_dict(self) -> dict:
        return json_safe(dataclasses.asdict(self))


#: Fine-tuning recipes by name (``RECIPES["fmc-inception"]``, ``list_recipes()``).
RECIPES: Registry[Recipe] = Registry("recipe", error=FinetuneError)
for _name, _recipe in {
    "fmc-inception": Recipe(
        name="fmc-inception",
        arch="inception_v3",
        extractor="inception-gram",
        loss="mse",
        lr=3e-4,
        epochs=60,
        batch_size=8,
        val_fraction=0.2,
        resize_short_side=FMC_RESIZE,
        image_size=FMC_CROP,
        augment=False,
        target="mos",
        select="val_loss",
        train_until="Mixed_5c.branch1x1.conv.weight",
        frozen_bn="train",
    ),
    "quality-resnet": Recipe(
        name="quality-resnet",
        arch="resnet34",
        extractor="unique",
        loss="l1",
        lr=1e-4,
        epochs=30,
        batch_size=16,
        val_fraction=0.2,
        resize_short_side=None,
        image_size=384,
        augment=True,
        target="zscore",
        select="srocc",
        train_until=None,
        starts=("imagenet", "unique", "random[:SEED]", "PATH"),
    ),
    "quality-resnet50": Recipe(
        name="quality-resnet50",
        arch="resnet50",
        extractor="quality-resnet50",
        loss="l1",
        lr=1e-4,
        epochs=30,
        batch_size=16,
        val_fraction=0.2,
        resize_short_side=None,
        image_size=384,
        augment=True,
        target="zscore",
        select="srocc",
        train_until=None,
        starts=("imagenet", "tcsvt2022", "random[:SEED]", "PATH"),
    ),
}.items():
    RECIPES.register(_name, _recipe)

LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss}


def list_recipes() -> list[str]:
    return RECIPES.names()


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; an unknown name gets a "did you mean" hint."""
    return RECIPES.get(name)


def resolve_recipe(
    recipe: str | Recipe,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    image_size: int | None = None,
) -> tuple[Recipe, dict]:
    """Apply overrides; returns ``(effective recipe, {name: value} of the overrides given)``.

    ``image_size`` also rescales a resize step by the recipe's ratio (FMC: 338/299), so the
    crop keeps covering the same part of the image.
    """
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(base, Recipe):
        raise FinetuneError(f"recipe must be a name or a Recipe, got {type(recipe).__name__}")
    overrides: dict[str, Any] = {}
    for name, value, kind in (
        ("epochs", epochs, int),
        ("batch_size", batch_size, int),
        ("lr", lr, float),
        ("image_size", image_size, int),
    ):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or (kind is int and value != int(value))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise FinetuneError(f"{name} must be a positive {kind.__name__}, got {value!r}")
        overrides[name] = kind(value)
    if (
        base.loss not in LOSSES
        or base.arch not in ARCHES
        or base.target not in ("mos", "zscore")
        or base.select not in ("val_loss", "srocc")
        or base.frozen_bn not in ("train", "eval")
    ):
        raise FinetuneError(f"recipe {base.name!r} has an unknown loss, arch, target, select or frozen_bn value")
    changes = dict(overrides)
    if "image_size" in overrides and base.resize_short_side is not None:
        changes["resize_short_side"] = round(overrides["image_size"] * base.resize_short_side / base.image_size)
        overrides["resize_short_side (derived)"] = changes["resize_short_side"]
    effective = dataclasses.replace(base, **changes)
    if effective.image_size < ARCHES[effective.arch]["min_side"]:
        raise FinetuneError(
            f"{effective.arch} needs inputs of at least {ARCHES[effective.arch]['min_side']} px; "
            f"image_size={effective.image_size}"
        )
    return effective, overrides


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class FinetuneResult:
    """What a :func:`finetune` call leaves behind.

    ``checkpoint``/``sidecar`` are ``None`` until every epoch is done (a run stopped early keeps
    only ``state``). ``history``: one dict per epoch done (``epoch`` 1-based, ``train_loss``,
    ``val_loss``, ``srocc``, ``plcc``, ``seconds``; a metric is ``None`` when undefined).
    """

    state: Path
    checkpoint: Path | None
    sidecar: Path | None
    finished: bool
    epochs_done: int
    epochs_run: int
    best_epoch: int | None
    history: list[dict]
    extractor: str
    recipe: dict

    @property
    def best(self) -> dict | None:
        return None if self.best_epoch is None else self.history[self.best_epoch - 1]

    def to_dict(self) -> dict:
        return json_safe(
            {
                **dataclasses.asdict(self),
                "best": self.best,
                **{
                    k: None if v is None else str(v)
                    for k, v in (("state", self.state), ("checkpoint", self.checkpoint), ("sidecar", self.sidecar))
                },
            }
        )


def _metric(fn, y: np.ndarray, p: np.ndarray) -> float | None:
    """A correlation, or ``None`` where it is undefined (too few points, a constant input)."""
    if len(y) < MIN_METRIC_SAMPLES or np.ptp(y) == 0 or np.ptp(p) == 0:
        return None
    value = float(fn(y, p)[0])
    return value if math.isfinite(value) else None


def _better(recipe: Recipe, score: float, best: Best) -> bool:
    """Whether an epoch's score (higher is better) replaces the best so far; the first epoch always does.

    ``select="val_loss"``: FMC's ``valid_loss <= valid_loss_min``, a tie goes to the later
    epoch; ``"srocc"``: strictly higher.
    """
    ties = recipe.select == "val_loss"
    return best.epoch is None or score > best.score or (ties and score == best.score)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` (0-based): one stream per epoch, so a resumed run repeats it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _check_inputs(
    images, mos, train_idx, val_idx, groups
) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    paths = [Path(p) for p in images]
    y = np.asarray(mos, dtype=np.float64)
    if y.ndim != 1 or len(paths) != y.shape[0]:
        raise FinetuneError(f"{len(paths)} images but mos has shape {y.shape}: one MOS per image")
    if not np.isfinite(y).all():
        raise FinetuneError(f"mos holds {int((~np.isfinite(y)).sum())} NaN or infinite values")
    n = len(paths)
    parts = []
    for name, idx in (("train_idx", train_idx), ("val_idx", val_idx)):
        arr = np.asarray(idx, dtype=np.int64).ravel()
        if arr.size == 0:
            raise FinetuneError(f"{name} is empty")
        if arr.min() < 0 or arr.max() >= n or np.unique(arr).size != arr.size:
            raise FinetuneError(f"{name} must hold distinct indices in [0, {n})")
        parts.append(arr)
    if np.intersect1d(*parts).size:
        raise FinetuneError("train_idx and val_idx overlap")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FinetuneError(f"{len(missing)} images do not exist, e.g. {', '.join(map(str, missing[:3]))}")
    if groups is not None:
        groups = [str(g) for g in groups]
        if len(groups) != n:
            raise FinetuneError(f"groups has {len(groups)} entries for {n} images")
    return paths, y, parts[0], parts[1], groups


def finetune(
    images: Sequence[str | Path],
    mos: Sequence[float],
    *,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    out: str | Path,
    recipe: str | Recipe = "fmc-inception",
    start: str = "imagenet",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    image_size: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    resume: bool = True,
    groups: Sequence[str] | None = None,
    data: Mapping[str, Any] | None = None,
    stop_after_epochs: int | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``recipe`` on ``images`` with MOS ``mos [N]``; write the files under ``out``.

    ``train_idx``/``val_idx``: the caller's split (the flow draws it by group with
    ``regressors.protocols.random_splits``). ``epochs``/``batch_size``/``lr``/``image_size``
    override the recipe and are recorded. ``groups [N]`` (source of each image) and ``data``
    (e.g. manifest path and sha256) are only recorded in the sidecar.

    ``resume=True`` continues from ``out/state.pt`` when it exists (it must come from the same
    recipe, start weights, data, split and seed; a larger ``epochs`` extends a finished run);
    ``resume=False`` starts over, replacing it. ``stop_after_epochs`` ends this call after that
    many epochs, state saved (time-limited jobs; resuming continues).

    Raises :class:`FinetuneError` for bad inputs before any training,
    :class:`~pipeline.errors.WeightsUnavailableError` when ``start`` weights cannot be had.
    """
    effective, overrides = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size)
    paths, y, train, val, group_list = _check_inputs(images, mos, train_idx, val_idx, groups)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FinetuneError(f"seed must be a non-negative int, got {seed!r}")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise FinetuneError(f"stop_after_epochs must be >= 0, got {stop_after_epochs}")
    check_sizes(paths, image_sizes(paths), effective)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)

    model, start_identity = build_model(effective, start=start, seed=int(seed))
    trainable = select_trainable(model, effective)
    model.to(device)
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam([params[n] for n in trainable], lr=effective.lr, weight_decay=effective.weight_decay)
    loss_fn = LOSSES[effective.loss]()
    if effective.target == "zscore":
        centre, scale = float(y[train].mean()), float(y[train].std()) or 1.0
    else:
        centre, scale = 0.0, 1.0
    target = torch.tensor((y - centre) / scale, dtype=torch.float32)

    checkpointer = Checkpointer(
        out,
        name=STATE_NAME,
        format=STATE_FORMAT,
        error=FinetuneError,
        # what must match for a saved state to be continued; epochs may grow (extends the run)
        fingerprint={
            "recipe": {k: v for k, v in effective.to_dict().items() if k != "epochs"},
            "start": start_identity,
            "seed": int(seed),
            "data": digest([str(p.resolve()) for p in paths], y.tolist()),
            "split": digest(train.tolist(), val.tolist()),
        },
        remedy="pass resume=False to start over (the state is replaced) or choose another output folder",
    )
    loop = EpochLoop(model, optimizer, checkpointer=checkpointer, better=functools.partial(_better, effective))
    resumed_at = loop.restore() if resume else 0
    if resumed_at:
        logger.info("resuming %s from %s after epoch %d", effective.name, out / STATE_NAME, resumed_at)
    else:
        if (out / STATE_NAME).exists():
            logger.warning("resume=False: starting over; %s is replaced after the first epoch", out / STATE_NAME)
        for stale in (out / SIDECAR_NAME, out / CHECKPOINT_NAME):  # an earlier run's result must not outlive it
            stale.unlink(missing_ok=True)

    from tqdm.auto import tqdm

    def run_epoch(epoch: int) -> tuple[dict, float]:
        """One epoch: train on shuffled batches, then score the validation images."""
        epoch_started = time.perf_counter()
        rng = np.random.default_rng(_epoch_seed(int(seed), epoch))
        order = rng.permutation(train)
        batches = [order[i : i + effective.batch_size] for i in range(0, len(order), effective.batch_size)]
        with seeded_torch(_epoch_seed(int(seed), epoch), device):  # dropout draws from (seed, epoch) only
            set_train_mode(model, effective)
            train_sum = 0.0
            for idx in tqdm(
                batches, desc=f"epoch {epoch + 1}", unit="batch", file=sys.stderr, leave=False, disable=not progress
            ):
                x = prepare_batch([paths[i] for i in idx], recipe=effective, rng=rng if effective.augment else None).to(
                    device
                )
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x).squeeze(1), target[torch.from_numpy(idx)].to(device))
                loss.backward()
                optimizer.step()
                train_sum += float(loss.detach()) * len(idx)
        predictions = _predict(model, [paths[i] for i in val], recipe=effective, device=device)
        val_loss = float(loss_fn(torch.from_numpy(predictions), target[torch.from_numpy(val)]))
        y_val, p_val = y[val], predictions * scale + centre
        row = {
            "epoch": epoch + 1,
            "train_loss": _finite(train_sum / len(train)),
            "val_loss": _finite(val_loss),
            "srocc": _metric(stats.spearmanr, y_val, p_val),
            "plcc": _metric(stats.pearsonr, y_val, p_val),
            "seconds": round(time.perf_counter() - epoch_started, 3),
        }
        if effective.select == "val_loss":
            return row, -val_loss if math.isfinite(val_loss) else -math.inf
        return row, row["srocc"] if row["srocc"] is not None else -math.inf

    def on_epoch(epochs_done: int, row: dict) -> None:
        logger.info(
            "epoch %d/%d: train loss %s, val loss %s, SROCC %s, PLCC %s (%.1f s)%s",
            epochs_done,
            effective.epochs,
            _fmt(row["train_loss"]),
            _fmt(row["val_loss"]),
            _fmt(row["srocc"]),
            _fmt(row["plcc"]),
            row["seconds"],
            " best" if loop.best.epoch == epochs_done else "",
        )
        bar.update(1)
        bar.set_postfix(loss=_fmt(row["train_loss"]), val=_fmt(row["val_loss"]), srocc=_fmt(row["srocc"]))

    logger.info(
        "fine-tuning %s (start %s) on %d images (%d train, %d val): %d of %d trainable tensors, device %s",
        effective.name,
        start,
        len(paths),
        len(train),
        len(val),
        len(trainable),
        len(params),
        device,
    )
    bar = tqdm(
        desc=f"finetune {effective.name}",
        unit="epoch",
        file=sys.stderr,
        disable=not progress,
        initial=resumed_at,
        total=effective.epochs,
    )
    try:
        loop.run(run_epoch, epochs=effective.epochs, stop_after=stop_after_epochs, on_epoch=on_epoch)
    finally:
        bar.close()

    history, best_epoch = loop.history, loop.best.epoch
    finished = len(history) >= effective.epochs and loop.best.state is not None
    checkpoint = sidecar = None
    if finished:
        checkpoint, sidecar = _write_outputs(
            out,
            loop.best.state,
            effective=effective,
            overrides=overrides,
            start=start,
            start_identity=start_identity,
            seed=int(seed),
            trainable=trainable,
            params=params,
            history=history,
            best_epoch=best_epoch,
            paths=paths,
            y=y,
            train=train,
            val=val,
            groups=group_list,
            data=data,
            target=(effective.target, centre, scale),
            device=device,
        )
        logger.info("%s: best epoch %d of %d -> %s", effective.name, best_epoch, effective.epochs, checkpoint)
    return FinetuneResult(
        state=out / STATE_NAME,
        checkpoint=checkpoint,
        sidecar=sidecar,
        finished=finished,
        epochs_done=len(history),
        epochs_run=len(history) - resumed_at,
        best_epoch=best_epoch,
        history=history,
        extractor=effective.extractor,
        recipe=effective.to_dict(),
    )


def _module_of(name: str) -> str:
    """Top-level block of a parameter: ``Mixed_5b``, ``fc``, ``backbone.layer1``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "backbone" else parts[0]


def _finite(value: float) -> float | None:
    """``None`` for NaN/inf (a diverged run), so records stay plain JSON."""
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@torch.no_grad()
def _predict(model: nn.Module, paths: Sequence[Path], *, recipe: Recipe, device: torch.device) -> np.ndarray:
    """Eval-mode predictions ``[N]`` (in target units) for ``paths``, centre crops, in batches."""
    model.eval()
    out = []
    for i in range(0, len(paths), recipe.batch_size):
        x = prepare_batch(paths[i : i + recipe.batch_size], recipe=recipe).to(device)
        out.append(model(x).squeeze(1).float().cpu())
    return torch.cat(out).numpy()


def _write_outputs(
    out: Path,
    best_state: Mapping[str, torch.Tensor],
    *,
    effective: Recipe,
    overrides: dict,
    start: str,
    start_identity: Mapping[str, Any],
    seed: int,
    trainable: list[str],
    params: Mapping[str, nn.Parameter],
    history: list[dict],
    best_epoch: int,
    paths: Sequence[Path],
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    groups: list[str] | None,
    data: Mapping[str, Any] | None,
    target: tuple[str, float, float],
    device: torch.device,
) -> tuple[Path, Path]:
    """Write ``model.pt`` (plain state dict) and ``model.json``; the sidecar first, naming the
    checkpoint's sha256, so an interruption between the two leaves a mismatch that
    ``file_weights`` refuses rather than a checkpoint with no record of its training."""
    import pipeline

    payload = _to_bytes(dict(best_state))
    sha256 = hashlib.sha256(payload).hexdigest()
    checkpoint, sidecar = out / CHECKPOINT_NAME, out / SIDECAR_NAME
    if _outputs_match(checkpoint, sidecar, sha256):
        # Rewriting would change finished_at, hence the weights identity of features made since.
        return checkpoint, sidecar
    val_groups = sorted({groups[i] for i in val}) if groups is not None else None
    data_record = {
        **json_safe(dict(data or {})),
        "n_images": len(paths),
        "n_train": int(train.size),
        "n_val": int(val.size),
        "n_groups": len(set(groups)) if groups is not None else None,
        "n_val_groups": len(val_groups) if val_groups is not None else None,
        "val_groups": val_groups if val_groups is not None and len(val_groups) <= MAX_LISTED_GROUPS else None,
        "val_groups_sha256": digest(val_groups) if val_groups is not None else None,
        "images_sha256": digest([p.name for p in paths], y.tolist()),
        "mos": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean())},
        "target": {"kind": target[0], "centre": target[1], "scale": target[2]},
    }
    record = {
        "format": SIDECAR_FORMAT,
        "checkpoint": CHECKPOINT_NAME,
        "checkpoint_sha256": sha256,
        "extractor": effective.extractor,
        "layout": ARCHES[effective.arch]["layout"],
        "recipe": effective.name,
        "recipe_settings": effective.to_dict(),
        "overrides": overrides,
        "start": start,
        "start_weights": json_safe(dict(start_identity)),
        "seed": seed,
        "trainable": {
            "rule": (
                f"parameters registered before {effective.train_until} + {HEAD_PREFIX}*"
                if effective.train_until
                else f"all parameters except {', '.join(ARCHES[effective.arch]['unused']) or 'none'}"
            ),
            "modules": list(dict.fromkeys(_module_of(n) for n in trainable)),
            "tensors": len(trainable),
            "values": int(sum(params[n].numel() for n in trainable)),
            "frozen_values": int(sum(p.numel() for n, p in params.items() if n not in set(trainable))),
        },
        "data": data_record,
        "history": history,
        "best_epoch": best_epoch,
        "best": history[best_epoch - 1],
        "selected_by": effective.select,
        "device": str(device),
        "torch": torch.__version__,
        "code_version": pipeline.__version__,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write(sidecar, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())
    atomic_write(checkpoint, payload)
    return checkpoint, sidecar


def _outputs_match(checkpoint: Path, sidecar: Path, sha256: str) -> bool:
    """True when both files exist and describe the weights with hash ``sha256``."""
    from .weights import file_sha256

    if not (checkpoint.is_file() and sidecar.is_file()):
        return False
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == sha256 and file_sha256(checkpoint) == sha256
