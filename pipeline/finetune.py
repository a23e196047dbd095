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

    state.pt    resumable state, written after every epoch: model, optimizer, epoch, history,
                best epoch and its weights (None when that is the last epoch: same as model);
                tensors and plain containers only, so weights_only=True loads it
    model.pt    the best epoch's weights as a plain state dict in the layout the recipe's
                extractor loads by path (written when the last epoch is done)
    model.json  its sidecar: recipe, overrides, data, start weights, trainable tensors,
                per-epoch metrics, best epoch, checkpoint sha256 (``pipeline.weights.file_weights``
                puts it under ``spec.weights["training"]``)

Randomness comes from ``seed`` only: the split is the caller's, the head's initialisation and
each epoch's shuffling, crops, flips and dropout are seeded by ``(seed, epoch)``, so a run that
is stopped and resumed gives the same weights as one that is not.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .errors import PipelineError
from .extractors.base import IMAGENET_MEAN, IMAGENET_STD, json_safe, resize_and_crop, resolve_device
from .weights import load_checkpoint

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
CHECKPOINT_NAME = "model.pt"
SIDECAR_NAME = "model.json"  # = CHECKPOINT_NAME with .json: what file_weights looks for
STATE_FORMAT = "vqa-finetune-state/1"
SIDECAR_FORMAT = "vqa-finetune/1"
MIN_METRIC_SAMPLES = 3  # a correlation of fewer points means nothing
MAX_LISTED_GROUPS = 100  # the sidecar lists the validation groups up to this many
FMC_RESIZE, FMC_CROP = 338, 299  # the Gram extractor's frame_size and center_crop


class FinetuneError(PipelineError, ValueError):
    """Fine-tuning inputs are invalid (data, split, recipe, overrides) or a saved state does not fit."""


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


RECIPES: Mapping[str, Recipe] = MappingProxyType({
    "fmc-inception": Recipe(
        name="fmc-inception", arch="inception_v3", extractor="inception-gram", loss="mse", lr=3e-4, epochs=60,
        batch_size=8, val_fraction=0.2, resize_short_side=FMC_RESIZE, image_size=FMC_CROP, augment=False,
        target="mos", select="val_loss", train_until="Mixed_5c.branch1x1.conv.weight", frozen_bn="train",
    ),
    "quality-resnet": Recipe(
        name="quality-resnet", arch="resnet34", extractor="unique", loss="l1", lr=1e-4, epochs=30, batch_size=16,
        val_fraction=0.2, resize_short_side=None, image_size=384, augment=True, target="zscore", select="srocc",
        train_until=None, starts=("imagenet", "unique", "random[:SEED]", "PATH"),
    ),
    "quality-resnet50": Recipe(
        name="quality-resnet50", arch="resnet50", extractor="quality-resnet50", loss="l1", lr=1e-4, epochs=30,
        batch_size=16, val_fraction=0.2, resize_short_side=None, image_size=384, augment=True, target="zscore",
        select="srocc", train_until=None, starts=("imagenet", "tcsvt2022", "random[:SEED]", "PATH"),
    ),
})

# Per architecture: smallest input side it accepts, parameters that never reach the output
# (not trained, not in the optimizer), and the checkpoint layout written.
_ARCHES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "inception_v3": {"min_side": 75, "unused": (), "layout":
                     "torchvision inception_v3 keys without AuxLogits; fc = Linear(2048, 1) quality head "
                     "(the Gram extractor drops fc and uses fc = Identity)"},
    "resnet34": {"min_side": 32, "unused": ("backbone.fc.",), "layout":
                 "UNIQUE/pyiqa: backbone.* (torchvision resnet34, ImageNet fc untouched) + fc.* = "
                 "Linear(512, 1) quality head (dropped by name by the extractor)"},
    "resnet50": {"min_side": 32, "unused": ("backbone.fc.",), "layout":
                 "UNIQUE/pyiqa: backbone.* (torchvision resnet50, ImageNet fc untouched) + fc.* = "
                 "Linear(2048, 1) quality head (dropped by name by the extractor)"},
})
HEAD_PREFIX = "fc."
LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; an unknown name gets a "did you mean" hint."""
    try:
        return RECIPES[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), RECIPES, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise FinetuneError(f"unknown recipe {name!r}.{hint} Known: {', '.join(list_recipes())}") from None


def resolve_recipe(
    recipe: str | Recipe, *, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
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
    for name, value, kind in (("epochs", epochs, int), ("batch_size", batch_size, int), ("lr", lr, float),
                              ("image_size", image_size, int)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or (kind is int and value != int(value)) or not math.isfinite(value) or value <= 0:
            raise FinetuneError(f"{name} must be a positive {kind.__name__}, got {value!r}")
        overrides[name] = kind(value)
    if base.loss not in LOSSES or base.arch not in _ARCHES or base.target not in ("mos", "zscore") \
            or base.select not in ("val_loss", "srocc") or base.frozen_bn not in ("train", "eval"):
        raise FinetuneError(f"recipe {base.name!r} has an unknown loss, arch, target, select or frozen_bn value")
    changes = dict(overrides)
    if "image_size" in overrides and base.resize_short_side is not None:
        changes["resize_short_side"] = round(overrides["image_size"] * base.resize_short_side / base.image_size)
        overrides["resize_short_side (derived)"] = changes["resize_short_side"]
    effective = dataclasses.replace(base, **changes)
    if effective.image_size < _ARCHES[effective.arch]["min_side"]:
        raise FinetuneError(f"{effective.arch} needs inputs of at least {_ARCHES[effective.arch]['min_side']} px; "
                            f"image_size={effective.image_size}")
    return effective, overrides


# ----------------------------------------------------------------------------- models
class QualityRegressor(nn.Module):
    """UNIQUE's layout: a torchvision ResNet ``backbone`` and a quality head ``fc``.

    ``x [B, 3, H, W]`` -> stem, layer1..layer4 -> global average pool ``[B, C]`` -> ``fc`` ->
    ``[B, 1]``. The backbone's own ImageNet classifier ``backbone.fc`` stays in the state dict
    (the extractor's strict load expects it) but is not on the path.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.fc.in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return self.fc(torch.flatten(b.avgpool(x), 1))


def build_model(recipe: Recipe, *, start: str, seed: int) -> tuple[nn.Module, dict]:
    """The recipe's network with ``start`` weights and a fresh head seeded by ``seed``.

    Returns ``(model [B, 3, S, S] -> [B, 1], start weights identity)``; every parameter has
    ``requires_grad=False`` until :func:`select_trainable`.
    """
    if recipe.arch == "inception_v3":
        from .extractors.gram import INCEPTION_PRETRAINED, _construct, _trim, feature_state_dict
        from .extractors.backbones import build_backbone

        # The Gram extractor's own construction and file adapter, so the trained weights load
        # back into exactly the network they were trained in.
        constructor = functools.partial(_construct, transform_input=True,
                                        for_torchvision_file=start in INCEPTION_PRETRAINED)
        model, identity = build_backbone(constructor, weights=start, pretrained=INCEPTION_PRETRAINED,
                                         adapt_checkpoint=feature_state_dict)
        model = _trim(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.fc = nn.Linear(2048, 1)
    else:
        from torchvision.models import ResNet34_Weights, ResNet50_Weights, resnet34, resnet50

        from .extractors.quality import LI_CHECKPOINT, LI_CHOICE, UNIQUE_CHECKPOINT, UNIQUE_CHOICE, build_quality_backbone

        constructor, named, choice, imagenet = {
            "resnet34": (resnet34, UNIQUE_CHECKPOINT, UNIQUE_CHOICE, ResNet34_Weights.IMAGENET1K_V1),
            "resnet50": (resnet50, LI_CHECKPOINT, LI_CHOICE, ResNet50_Weights.IMAGENET1K_V1),
        }[recipe.arch]
        backbone, identity = build_quality_backbone(constructor, weights=start, named=named, choice=choice,
                                                    imagenet=imagenet)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = QualityRegressor(backbone)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, identity


def select_trainable(model: nn.Module, recipe: Recipe) -> list[str]:
    """Switch ``requires_grad`` on for the recipe's trainable parameters; return their names.

    With ``train_until``: the parameters registered before it (FMC's rule) plus the head;
    without: every parameter except those that never reach the output.
    """
    names = [name for name, _ in model.named_parameters()]
    if recipe.train_until is not None:
        if recipe.train_until not in names:
            raise FinetuneError(f"recipe {recipe.name!r}: no parameter {recipe.train_until!r} in {recipe.arch}")
        chosen = names[: names.index(recipe.train_until)] + [n for n in names if n.startswith(HEAD_PREFIX)]
    else:
        unused = _ARCHES[recipe.arch]["unused"]
        chosen = [n for n in names if not n.startswith(unused)] if unused else names
    chosen_set = set(chosen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen_set)
    return [n for n in names if n in chosen_set]


def _set_train_mode(model: nn.Module, recipe: Recipe) -> None:
    """Train mode; with ``frozen_bn="eval"``, BatchNorm layers without trainable parameters stay in eval."""
    model.train()
    if recipe.frozen_bn == "eval":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


# ----------------------------------------------------------------------------- data
def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB (grey and palette images converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise FinetuneError(f"{path}: not a readable image ({exc}). Fine-tuning takes images (an IQA set such "
                            "as TID2013 or KADID-10k, or pipeline.synthetic.make_iqa_dataset)") from exc


def _image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """``(width, height)`` of every image from its header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    sizes, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            bad.append(f"{path}: {exc}")
    if bad:
        raise FinetuneError(f"{len(bad)} of {len(paths)} images cannot be read (fine-tuning takes image files): "
                            + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    return sizes


def _check_sizes(paths: Sequence[Path], sizes: Sequence[tuple[int, int]], recipe: Recipe) -> None:
    """Every image must give at least an ``image_size`` square after the recipe's resize."""
    if recipe.resize_short_side is not None:
        if recipe.resize_short_side < recipe.image_size:
            raise FinetuneError(f"resize_short_side {recipe.resize_short_side} < image_size {recipe.image_size}")
        return
    small = [(p, s) for p, s in zip(paths, sizes) if min(s) < recipe.image_size]
    if small:
        shown = ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in small[:5])
        raise FinetuneError(f"{len(small)} images are smaller than the {recipe.image_size} px crop of recipe "
                            f"{recipe.name!r} ({shown}); pass a smaller image_size")


def prepare_batch(
    paths: Sequence[Path], *, recipe: Recipe, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Load and preprocess images -> float32 ``[B, 3, S, S]`` (``S = recipe.image_size``).

    uint8 -> [0, 1] -> resize short side (if the recipe resizes) -> crop -> ImageNet
    normalisation, the order of :meth:`pipeline.extractors.base.Extractor.preprocess`. The crop
    is central, or with ``rng`` (training with ``augment``) at a random position, then flipped
    horizontally with probability 1/2.
    """
    size, batch = recipe.image_size, []
    for path in paths:
        x = torch.from_numpy(load_image(path)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        x = resize_and_crop(x, short_side=recipe.resize_short_side, crop=None)
        h, w = x.shape[-2:]
        if rng is None:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        x = x[..., top:top + size, left:left + size]
        if rng is not None and rng.random() < 0.5:
            x = x.flip(-1)
        batch.append(x)
    x = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


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
        return json_safe({**dataclasses.asdict(self), "best": self.best,
                          **{k: None if v is None else str(v) for k, v in
                             (("state", self.state), ("checkpoint", self.checkpoint), ("sidecar", self.sidecar))}})


def _metric(fn, y: np.ndarray, p: np.ndarray) -> float | None:
    """A correlation, or ``None`` where it is undefined (too few points, a constant input)."""
    if len(y) < MIN_METRIC_SAMPLES or np.ptp(y) == 0 or np.ptp(p) == 0:
        return None
    value = float(fn(y, p)[0])
    return value if math.isfinite(value) else None


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` (0-based): one stream per epoch, so a resumed run repeats it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(parts), sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _check_inputs(images, mos, train_idx, val_idx, groups) -> tuple[list[Path], np.ndarray, np.ndarray,
                                                                       np.ndarray, list[str] | None]:
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
    effective, overrides = resolve_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                          image_size=image_size)
    paths, y, train, val, group_list = _check_inputs(images, mos, train_idx, val_idx, groups)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FinetuneError(f"seed must be a non-negative int, got {seed!r}")
    if stop_after_epochs is not None and stop_after_epochs < 0:
        raise FinetuneError(f"stop_after_epochs must be >= 0, got {stop_after_epochs}")
    _check_sizes(paths, _image_sizes(paths), effective)
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

    # What must match for a saved state to be continued; epochs may grow (extends the run).
    fingerprint = {
        "recipe": {k: v for k, v in effective.to_dict().items() if k != "epochs"},
        "start": start_identity, "seed": int(seed),
        "data": _digest([str(p.resolve()) for p in paths], y.tolist()),
        "split": _digest(train.tolist(), val.tolist()),
    }
    state_path = out / STATE_NAME
    history: list[dict] = []
    best_epoch: int | None = None
    best_score = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    if state_path.exists() and resume:
        saved = load_checkpoint(state_path)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise FinetuneError(f"{state_path} is not a fine-tuning state; move it away or pass resume=False")
        saved_fp = json.loads(saved["fingerprint"])
        differ = sorted(k for k in fingerprint if json_safe(fingerprint[k]) != saved_fp.get(k))
        if differ:
            raise FinetuneError(f"{state_path} was made with a different {', '.join(differ)}; pass resume=False to "
                                "start over (it is replaced) or choose another output folder")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = list(saved["history"])
        best_epoch, best_score = saved["best_epoch"], float(saved["best_score"])
        best_state = saved["model"] if saved["best_model"] is None else saved["best_model"]
        log.info("resuming %s from %s after epoch %d", effective.name, state_path, len(history))
    else:
        if state_path.exists():
            log.warning("resume=False: starting over; %s is replaced after the first epoch", state_path)
        for stale in (out / SIDECAR_NAME, out / CHECKPOINT_NAME):  # an earlier run's result must not outlive it
            stale.unlink(missing_ok=True)

    resumed_at = len(history)
    started = time.perf_counter()
    todo = range(len(history), effective.epochs)
    if stop_after_epochs is not None:
        todo = todo[:stop_after_epochs]
    from tqdm.auto import tqdm

    log.info("fine-tuning %s (start %s) on %d images (%d train, %d val): %d of %d trainable tensors, device %s",
             effective.name, start, len(paths), len(train), len(val), len(trainable), len(params), device)
    bar = tqdm(todo, desc=f"finetune {effective.name}", unit="epoch", file=sys.stderr, disable=not progress,
               initial=len(history), total=effective.epochs)
    for epoch in bar:
        epoch_started = time.perf_counter()
        rng = np.random.default_rng(_epoch_seed(int(seed), epoch))
        order = rng.permutation(train)
        batches = [order[i:i + effective.batch_size] for i in range(0, len(order), effective.batch_size)]
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws from (seed, epoch), never global state
            torch.manual_seed(_epoch_seed(int(seed), epoch))
            _set_train_mode(model, effective)
            train_sum = 0.0
            for idx in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", file=sys.stderr, leave=False,
                            disable=not progress):
                x = prepare_batch([paths[i] for i in idx], recipe=effective,
                                  rng=rng if effective.augment else None).to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x).squeeze(1), target[torch.from_numpy(idx)].to(device))
                loss.backward()
                optimizer.step()
                train_sum += float(loss.detach()) * len(idx)
        predictions = _predict(model, [paths[i] for i in val], recipe=effective, device=device)
        val_loss = float(loss_fn(torch.from_numpy(predictions), target[torch.from_numpy(val)]))
        y_val, p_val = y[val], predictions * scale + centre
        row = {"epoch": epoch + 1, "train_loss": _finite(train_sum / len(train)), "val_loss": _finite(val_loss),
               "srocc": _metric(stats.spearmanr, y_val, p_val), "plcc": _metric(stats.pearsonr, y_val, p_val),
               "seconds": round(time.perf_counter() - epoch_started, 3)}
        history.append(row)
        if effective.select == "val_loss":
            score = -val_loss if math.isfinite(val_loss) else -math.inf
            better = score >= best_score  # FMC keeps the later epoch on a tie
        else:
            score = row["srocc"] if row["srocc"] is not None else -math.inf
            better = score > best_score
        current = _cpu_state(model)
        if best_epoch is None or better:
            best_epoch, best_score, best_state = epoch + 1, score, current
        _atomic_write(state_path, _to_bytes({
            "format": STATE_FORMAT, "fingerprint": json.dumps(json_safe(fingerprint), sort_keys=True),
            "model": current, "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "history": history,
            "best_epoch": best_epoch, "best_score": best_score,
            # None: the best epoch is this one (saves writing the weights twice)
            "best_model": None if best_epoch == epoch + 1 else best_state,
        }))
        log.info("epoch %d/%d: train loss %s, val loss %s, SROCC %s, PLCC %s (%.1f s)%s", epoch + 1,
                 effective.epochs, _fmt(row["train_loss"]), _fmt(val_loss), _fmt(row["srocc"]), _fmt(row["plcc"]),
                 row["seconds"],
                 " best" if best_epoch == epoch + 1 else "")
        bar.set_postfix(loss=_fmt(row["train_loss"]), val=_fmt(val_loss), srocc=_fmt(row["srocc"]))
    bar.close()

    finished = len(history) >= effective.epochs and best_state is not None
    checkpoint = sidecar = None
    if finished:
        checkpoint, sidecar = _write_outputs(
            out, best_state, effective=effective, overrides=overrides, start=start, start_identity=start_identity,
            seed=int(seed), trainable=trainable, params=params, history=history,
            best_epoch=best_epoch, paths=paths, y=y, train=train, val=val, groups=group_list, data=data,
            target=(effective.target, centre, scale), device=device,
        )
        log.info("%s: best epoch %d of %d -> %s", effective.name, best_epoch, effective.epochs, checkpoint)
    return FinetuneResult(
        state=state_path, checkpoint=checkpoint, sidecar=sidecar, finished=finished, epochs_done=len(history),
        epochs_run=len(history) - resumed_at, best_epoch=best_epoch, history=history,
        extractor=effective.extractor, recipe=effective.to_dict(),
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
        x = prepare_batch(paths[i:i + recipe.batch_size], recipe=recipe).to(device)
        out.append(model(x).squeeze(1).float().cpu())
    return torch.cat(out).numpy()


def _write_outputs(
    out: Path, best_state: Mapping[str, torch.Tensor], *, effective: Recipe, overrides: dict, start: str,
    start_identity: Mapping[str, Any], seed: int, trainable: list[str], params: Mapping[str, nn.Parameter],
    history: list[dict], best_epoch: int, paths: Sequence[Path], y: np.ndarray, train: np.ndarray, val: np.ndarray,
    groups: list[str] | None, data: Mapping[str, Any] | None, target: tuple[str, float, float], device: torch.device,
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
        "n_images": len(paths), "n_train": int(train.size), "n_val": int(val.size),
        "n_groups": len(set(groups)) if groups is not None else None,
        "n_val_groups": len(val_groups) if val_groups is not None else None,
        "val_groups": val_groups if val_groups is not None and len(val_groups) <= MAX_LISTED_GROUPS else None,
        "val_groups_sha256": _digest(val_groups) if val_groups is not None else None,
        "images_sha256": _digest([p.name for p in paths], y.tolist()),
        "mos": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean())},
        "target": {"kind": target[0], "centre": target[1], "scale": target[2]},
    }
    record = {
        "format": SIDECAR_FORMAT,
        "checkpoint": CHECKPOINT_NAME,
        "checkpoint_sha256": sha256,
        "extractor": effective.extractor,
        "layout": _ARCHES[effective.arch]["layout"],
        "recipe": effective.name,
        "recipe_settings": effective.to_dict(),
        "overrides": overrides,
        "start": start,
        "start_weights": json_safe(dict(start_identity)),
        "seed": seed,
        "trainable": {
            "rule": (f"parameters registered before {effective.train_until} + {HEAD_PREFIX}*" if effective.train_until
                     else f"all parameters except {', '.join(_ARCHES[effective.arch]['unused']) or 'none'}"),
            "modules": list(dict.fromkeys(_module_of(n) for n in trainable)),
            "tensors": len(trainable), "values": int(sum(params[n].numel() for n in trainable)),
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
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write(sidecar, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())
    _atomic_write(checkpoint, payload)
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
