"""Trainable sequence head: a registered torch module fitted on per-step feature matrices.

::

    X: N videos, each [T_i, D]  (numpy, dask, zarr, ...: materialised one batch at a time)
        |  standardise (optional; per-dim mean/std of all training steps)
        |  pad to the longest video of the batch -> x [B, T, D], lengths [B]
        v
    module (regressors.modules registry, e.g. "vsfa") -> scores [B]
        |  loss (regressors.losses registry) against y / label_scale
        v
    Adam/AdamW + schedule; each epoch: SROCC on the validation part, keep the best

:class:`SequenceRegressor` follows the scikit-learn estimator contract (``clone`` and
``get_params`` work; learned attributes end in ``_``) and is registered with
:mod:`regressors.persistence` as ``"sequence"``: ``save_head`` writes the module's state
dict as plain arrays and rebuilds the module from its registered name on load, so no
pickle is involved.

Validation and checkpoint (VSFA): a part of the training videos (``val_fraction``,
whole groups if ``groups`` is given) or an explicit ``X_val``/``y_val`` is held out; after
every epoch its SROCC is computed, and the weights of the epoch with the highest SROCC
are kept (strictly higher, as lidq92/VSFA). ``patience`` stops training after that many
epochs without improvement.

Determinism: with an integer ``random_state`` the validation split, the shuffling, the
initial weights and any dropout draw from seeded generators; on the CPU two fits with the
same torch thread count give identical predictions (the thread count changes the order
of floating-point sums). The global torch RNG state is restored after ``fit``.

Time: ``train_seconds_`` is the wall time of ``fit`` and ``data_wait_seconds_`` the part
spent reading items (``np.asarray``), standardising and padding, validation included;
their ratio is the data-wait fraction. Reading is synchronous (no prefetching).

Checkpoints and resume: ``fit(..., checkpoint_dir=DIR)`` writes ``DIR/epoch-NNNN.pt``
after every epoch (NNNN: epochs completed, 1-based; written to a temporary file and
renamed into place, the previous one then removed). It holds everything the loop needs to
go on exactly as if it had not stopped: module, optimiser and scheduler state, epoch,
best state and score, early-stopping counter, history, and the RNG states (torch CPU and
CUDA generators, the numpy shuffling generator), as plain containers of tensors, numbers
and strings, read back with ``torch.load(..., weights_only=True)``: nothing is unpickled.
A later ``fit`` with the same ``DIR`` continues after the last completed epoch and gives
bit-identical weights and predictions at the same torch thread count. Each checkpoint
carries a fingerprint of the parameters, the data (lengths, labels, validation split,
standardisation) and ``checkpoint_key``; a checkpoint from different training is refused
with :class:`CheckpointMismatchError`, never silently continued. The last checkpoint is
kept after ``fit`` (a repeated ``fit`` with the same ``DIR`` then trains nothing);
deleting ``DIR`` is the caller's business.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import re
import sys
import time
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from tqdm import tqdm

from regressors.errors import InvalidInputError, NotFittedError, RegressorError, TrainingError
from regressors.losses import LABEL_SCALINGS, get_loss
from regressors.metrics import MIN_SAMPLES, _as_vector, srcc
from regressors.modules import build_module, list_modules
from regressors.persistence import atomic_write, register_head
from regressors.protocols import random_splits

__all__ = ["CheckpointMismatchError", "OPTIMIZERS", "SCHEDULES", "SequenceRegressor", "latest_checkpoint_epoch",
           "lr_factors"]

logger = logging.getLogger(__name__)

#: Optimiser names accepted by :class:`SequenceRegressor`.
OPTIMIZERS = ("adam", "adamw")
#: Learning-rate schedules accepted by :class:`SequenceRegressor` and :func:`lr_factors`.
SCHEDULES = ("step", "cosine", "none")
#: Fraction of the epochs after which StepLR decays when ``step_size`` is None
#: (lidq92/VSFA: ``decay_interval = epochs / 10``, ``decay_ratio = 0.8``).
_STEP_FRACTION = 10
# Feature dims whose training std is below this are left unscaled (std 1), not blown up.
_MIN_STD = 1e-12
# Modules that register head modules; imported when a module name is not yet known.
# Our own "vsfa" always; the others are looked for (they may not exist in every checkout).
_MODULE_PROVIDERS = ("regressors.vsfa", "regressors.a2inet", "regressors.dualpath")
_ARRAY_PREFIX = "module."
_HISTORY_KEYS = ("train_loss", "val_srcc", "lr")


def _build(name: str, input_dim: int, params: dict):
    """Build registered module ``name``, importing the known providers on a miss."""
    importlib.import_module(_MODULE_PROVIDERS[0])
    if name not in list_modules():
        for provider in _MODULE_PROVIDERS[1:]:
            if importlib.util.find_spec(provider) is not None:
                importlib.import_module(provider)
    try:
        return build_module(name, input_dim, **params)
    except TypeError as exc:  # wrong or missing module_params; the cause stays chained
        raise InvalidInputError(f"module {name!r} cannot be built with module_params {params!r}: {exc}") from exc


# ---------------------------------------------------------------------------- schedules
def lr_factors(
    schedule: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    step_size: int | None = None,
    gamma: float = 0.8,
    warmup_epochs: int = 0,
    min_lr_ratio: float = 0.0,
) -> np.ndarray:
    """Multiplier of the base learning rate for every optimiser step.

    Returns ``[epochs * steps_per_epoch]`` float64; step ``s`` is in epoch
    ``s // steps_per_epoch``. With ``W = warmup_epochs * steps_per_epoch`` warm-up steps:

    * warm-up (any schedule): ``(s + 1) / W`` for ``s < W`` (linear, reaching 1 at the
      last warm-up step, so no step runs at lr 0);
    * ``step`` (VSFA's StepLR, stepped once per epoch): ``gamma ** (epoch // step_size)``;
      ``step_size`` None means ``max(1, epochs // 10)``, VSFA's ``decay_interval``;
    * ``cosine`` (dual-path paper eq. 8, per step over the steps after warm-up):
      ``r + (1 - r) (1 + cos(pi t / T_max)) / 2`` with ``t = s - W``, ``T_max =
      total - W`` and ``r = min_lr_ratio`` (eta_min / eta_max);
    * ``none``: 1.
    """
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}, expected one of {SCHEDULES}")
    for name, value, low in (("epochs", epochs, 1), ("steps_per_epoch", steps_per_epoch, 1),
                             ("warmup_epochs", warmup_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if warmup_epochs >= epochs and warmup_epochs > 0:
        raise InvalidInputError(f"warmup_epochs={warmup_epochs} leaves no epoch after warm-up (epochs={epochs})")
    total = epochs * steps_per_epoch
    steps = np.arange(total)
    epoch = steps // steps_per_epoch
    warm = warmup_epochs * steps_per_epoch
    if schedule == "step":
        if step_size is None:
            step_size = max(1, epochs // _STEP_FRACTION)
        if isinstance(step_size, bool) or not isinstance(step_size, Integral) or step_size < 1:
            raise InvalidInputError(f"step_size must be a positive integer or None, got {step_size!r}")
        if not (isinstance(gamma, Real) and 0 < gamma <= 1):
            raise InvalidInputError(f"gamma must lie in (0, 1], got {gamma!r}")
        factors = float(gamma) ** (epoch // step_size)
    elif schedule == "cosine":
        if not (isinstance(min_lr_ratio, Real) and 0 <= min_lr_ratio <= 1):
            raise InvalidInputError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
        t = np.clip(steps - warm, 0, None)
        factors = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + np.cos(np.pi * t / (total - warm)))
    else:
        factors = np.ones(total)
    factors = np.asarray(factors, dtype=np.float64)
    if warm:
        factors[:warm] = (steps[:warm] + 1) / warm
    return factors


# ---------------------------------------------------------------------------- inputs
def _item_shape(item, index: int, where: str) -> tuple[int, int]:
    """``(T, D)`` of one video without reading it when it has a ``shape`` (dask, zarr)."""
    shape = getattr(item, "shape", None)
    if shape is None:
        shape = np.shape(item)  # nested lists: small, materialising them is harmless
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        shape = (1,) + shape  # a vector is a one-step video
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise InvalidInputError(f"{where}[{index}] must be a non-empty [T, D] matrix, got shape {shape}")
    return shape


def _check_source(X, where: str):
    """Validate a video collection; returns ``(source, lengths [N] int64, D)``.

    ``X`` is anything with ``len()`` and ``X[i]`` giving ``[T_i, D]`` (a list of numpy or
    dask arrays, a 3-D array); a 2-D array means N one-step videos.
    """
    if isinstance(X, np.ndarray) and X.ndim == 2:
        X = X[:, None, :]
    if isinstance(X, (str, bytes)) or not (hasattr(X, "__len__") and hasattr(X, "__getitem__")):
        raise InvalidInputError(
            f"{where} must be a sequence of [T_i, D] arrays (list, 3-D array), got {type(X).__name__}"
        )
    n = len(X)
    if n == 0:
        raise InvalidInputError(f"{where} is empty (0 videos)")
    shapes = [_item_shape(X[i], i, where) for i in range(n)]
    dims = {d for _, d in shapes}
    if len(dims) > 1:
        raise InvalidInputError(f"{where}: videos have different feature dims D: {sorted(dims)}")
    return X, np.array([t for t, _ in shapes], dtype=np.int64), dims.pop()


def _check_y(y, n: int, where: str) -> np.ndarray:
    """MOS as float64 ``[n]`` (a column ``[n, 1]`` is accepted), finite."""
    y = _as_vector(y, where)
    if y.shape[0] != n:
        raise InvalidInputError(f"{where} must be 1-D with {n} entries (one per video), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise InvalidInputError(f"{where} contains NaN or infinite values")
    return y


class _Batcher:
    """Reads, standardises and pads batches; adds the time spent to ``wait_seconds``."""

    def __init__(self, dims: int, mean=None, std=None):
        self.dims = dims
        self.mean = mean
        self.std = std
        self.wait_seconds = 0.0

    def read(self, source, i: int, where: str) -> np.ndarray:
        """One video as float32 ``[T, D]`` (np.asarray materialises dask/zarr items)."""
        arr = np.asarray(source[i], dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dims or arr.shape[0] < 1:
            raise InvalidInputError(f"{where}[{i}] has shape {arr.shape}, expected [T, {self.dims}]")
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"{where}[{i}] contains NaN or infinite values")
        return arr

    def batch(self, source, idx, where: str, device):
        """``(x [B, T_max, D] float32, lengths [B] int64)`` tensors on ``device``."""
        start = time.perf_counter()
        items = [self.read(source, int(i), where) for i in idx]
        lengths = np.array([a.shape[0] for a in items], dtype=np.int64)
        x = np.zeros((len(items), int(lengths.max()), self.dims), dtype=np.float32)
        for b, arr in enumerate(items):
            if self.mean is not None:
                arr = (arr - self.mean) / self.std
            x[b, : arr.shape[0]] = arr  # zero padding past the length
        self.wait_seconds += time.perf_counter() - start
        return torch.from_numpy(x).to(device), torch.from_numpy(lengths).to(device)

    def feature_stats(self, source, idx, where: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dim mean and population std over every step of the videos ``idx``.

        Streams one video at a time (Chan et al.'s pairwise merge), so memory stays at
        one video whatever the data set size.
        """
        start = time.perf_counter()
        count = 0
        mean = np.zeros(self.dims, dtype=np.float64)
        m2 = np.zeros(self.dims, dtype=np.float64)
        for i in idx:
            arr = self.read(source, int(i), where).astype(np.float64)
            n_b = arr.shape[0]
            mean_b = arr.mean(axis=0)
            delta = mean_b - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += ((arr - mean_b) ** 2).sum(axis=0) + delta**2 * (count * n_b / total)
            count = total
        std = np.sqrt(m2 / count)
        std[std < _MIN_STD] = 1.0
        self.wait_seconds += time.perf_counter() - start
        return mean.astype(np.float32), std.astype(np.float32)


def _chunks(idx: np.ndarray, size: int):
    for start in range(0, idx.shape[0], size):
        yield idx[start:start + size]


def _safe_srcc(y: np.ndarray, p: np.ndarray) -> float:
    """SROCC, or NaN where it is undefined (constant predictions early in training)."""
    try:
        return srcc(y, p)
    except InvalidInputError:
        return float("nan")


class _SeededTorch:
    """Context: torch RNG seeded for the block, the caller's RNG state restored after."""

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        cuda = device.type == "cuda"
        self.cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
        self._fork = torch.random.fork_rng(devices=[self.cuda_index] if cuda else [])

    def __enter__(self):
        self._fork.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        if self.cuda_index is not None:
            with torch.cuda.device(self.cuda_index):
                torch.cuda.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


# ---------------------------------------------------------------------------- checkpoints
class CheckpointMismatchError(RegressorError, ValueError):
    """A checkpoint directory holds training state that is not this training's, or is unreadable."""


_CHECKPOINT_FORMAT = "vqa-sequence-checkpoint"
_CHECKPOINT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^epoch-(\d{4,})\.pt$")


def _checkpoint_files(directory: Path) -> list[tuple[int, Path]]:
    """``(epochs completed, path)`` of every checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint_epoch(directory) -> int | None:
    """Epochs completed by the newest checkpoint in ``directory`` (1-based), or None if none."""
    files = _checkpoint_files(Path(directory))
    return files[-1][0] if files else None


def _digest(value) -> str:
    return hashlib.sha256(value).hexdigest()


class _Checkpointer:
    """Writes and reads the per-epoch training state of one ``fit`` in one directory."""

    def __init__(self, directory, fingerprint: str, key: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.key = key

    def _remove_temporaries(self) -> None:
        for path in self.directory.glob(".epoch-*.tmp"):  # left by a writer killed mid-write
            path.unlink(missing_ok=True)

    def load(self) -> dict | None:
        """The newest checkpoint's contents, checked to be this training's; None if there is none."""
        files = _checkpoint_files(self.directory)
        if not files:
            return None
        epochs, path = files[-1]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for damaged or unsafe files
            raise CheckpointMismatchError(
                f"training checkpoint {path} cannot be read ({exc}); delete {self.directory} to train from scratch"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(f"{path} is not a SequenceRegressor training checkpoint")
        if state.get("version") != _CHECKPOINT_VERSION:
            raise CheckpointMismatchError(
                f"{path} has checkpoint version {state.get('version')!r}, this code reads {_CHECKPOINT_VERSION}; "
                f"delete {self.directory} to train from scratch"
            )
        if state.get("key") != self.key or state.get("fingerprint") != self.fingerprint:
            what = "checkpoint key" if state.get("key") != self.key else "parameters or training data"
            raise CheckpointMismatchError(
                f"training checkpoint {path} belongs to another training (its {what} differ from this fit's); "
                f"refusing to resume from it. Delete {self.directory} or use another checkpoint_dir"
            )
        if state.get("epoch") != epochs:
            raise CheckpointMismatchError(f"{path} says it was written after epoch {state.get('epoch')!r}")
        return state

    def save(self, state: dict) -> Path:
        """Write ``state`` atomically as ``epoch-NNNN.pt``, then remove older checkpoints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        epochs = int(state["epoch"])
        path = self.directory / f"epoch-{epochs:04d}.pt"
        doc = {"format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION,
               "fingerprint": self.fingerprint, "key": self.key, **state}
        atomic_write(path, lambda fh: torch.save(doc, fh))
        for older, old_path in _checkpoint_files(self.directory):
            if older != epochs:
                old_path.unlink(missing_ok=True)
        return path


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _fingerprint(params: dict, **data) -> str:
    """sha256 naming one training: the estimator's parameters and what it is trained on."""
    parts = {"params": {k: repr(v) for k, v in sorted(params.items())}}
    for name, value in data.items():
        if isinstance(value, np.ndarray):
            value = f"{value.dtype.str}{list(value.shape)}:{_digest(np.ascontiguousarray(value).tobytes())}"
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = repr(value)
        parts[name] = value
    return _digest(json.dumps(parts, sort_keys=True).encode("utf-8"))


# ---------------------------------------------------------------------------- estimator
@register_head("sequence", version=1)
class SequenceRegressor(RegressorMixin, BaseEstimator):
    """A registered torch head module trained on per-step features ``[T_i, D]``.

    Defaults reproduce VSFA's training (lidq92/VSFA): module ``vsfa``, L1 on MOS / max
    MOS, Adam lr 1e-5, no weight decay, batch 16, StepLR with ``gamma`` 0.8 every tenth
    of the epochs, best-validation-SROCC checkpoint. VSFA trains 2000 epochs; the default
    here is 100 with early stopping (``patience``).

    Parameters
    ----------
    module : str
        Name in :mod:`regressors.modules` (``"vsfa"``; ``"a2inet"``, ``"dualpath"`` ...).
    module_params : dict or None
        Keyword arguments of the module builder.
    loss : str
        Name in :data:`regressors.losses.LOSSES` (``vsfa_l1``, ``mae``, ``mae_rank``,
        ``plcc``, ``rank``, ``plcc_rank``, ``hinge_rank``).
    loss_params : dict or None
        Keyword arguments bound to the loss (``eta``, ``margin``, ``rank_weight``).
    label_scaling : {"auto", "max", "none"}
        ``max`` trains on MOS / max(training MOS) and multiplies predictions back;
        ``auto`` takes what the loss declares (``max`` for ``vsfa_l1``, else ``none``).
    optimizer : {"adam", "adamw"}
    lr, weight_decay : float
    batch_size : int
        Training batch size (also used for prediction). The last batch may be smaller.
    epochs : int
        Most epochs to train.
    schedule : {"step", "cosine", "none"}
        See :func:`lr_factors`; ``step_size`` (None: epochs // 10), ``gamma`` belong to
        ``step``, ``min_lr`` (absolute eta_min) to ``cosine``; ``warmup_epochs`` of
        linear warm-up apply to all.
    val_fraction : float in [0, 1)
        Part of the training videos (of the groups, with ``groups``) held out for the
        checkpoint choice; 0 trains on all and keeps the last epoch. Ignored when
        ``X_val`` is passed to :meth:`fit`.
    patience : int or None
        Stop after this many epochs without a better validation SROCC; None never stops.
    standardize : bool
        Standardise each feature dim with the mean and population std of all training
        steps (computed streaming, saved with the head). VSFA does not.
    device : "auto", "cpu", "cuda", "cuda:N" or torch.device
        "auto": CUDA when available.
    random_state : int or None
        Seeds validation split, shuffling, weight initialisation and dropout.
    progress : bool
        tqdm bar on stderr (epochs, with train loss and validation SROCC).

    Learned attributes
    ------------------
    ``module_`` (the trained ``nn.Module``, best checkpoint), ``n_features_in_`` (D),
    ``label_scale_`` (predictions = module output * label_scale_), ``x_mean_``/``x_std_``
    ``[D]`` (None without ``standardize``), ``history_`` (dict of per-epoch lists
    ``train_loss`` (scaled labels), ``val_srcc`` (NaN without validation) and ``lr``
    (at the epoch's first step)), ``best_epoch_`` (0-based), ``n_epochs_`` (epochs run),
    ``train_seconds_`` (wall time of ``fit``), ``data_wait_seconds_`` (part of it spent
    reading, standardising and padding batches; with a resumed fit both include the
    epochs' reading before the restart, the wall time only this call) and
    ``resumed_from_epoch_`` (epochs restored from ``checkpoint_dir``; 0 for a fresh fit).
    """

    def __init__(
        self,
        module="vsfa",
        module_params=None,
        loss="vsfa_l1",
        loss_params=None,
        label_scaling="auto",
        optimizer="adam",
        lr=1e-5,
        weight_decay=0.0,
        batch_size=16,
        epochs=100,
        schedule="step",
        step_size=None,
        gamma=0.8,
        warmup_epochs=0,
        min_lr=0.0,
        val_fraction=0.2,
        patience=20,
        standardize=False,
        device="auto",
        random_state=0,
        progress=True,
    ):
        self.module = module
        self.module_params = module_params
        self.loss = loss
        self.loss_params = loss_params
        self.label_scaling = label_scaling
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.schedule = schedule
        self.step_size = step_size
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.min_lr = min_lr
        self.val_fraction = val_fraction
        self.patience = patience
        self.standardize = standardize
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ settings
    def _check_params(self):
        """Validate the parameters; returns ``(loss_spec, label_scaling)``."""

        def integer(name, low, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")

        integer("batch_size", 1)
        integer("epochs", 1)
        integer("warmup_epochs", 0)
        integer("patience", 1, allow_none=True)
        for name in ("lr", "weight_decay", "min_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise InvalidInputError(f"lr must be positive, got {self.lr!r}")
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise InvalidInputError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {self.optimizer!r}, expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown schedule {self.schedule!r}, expected one of {SCHEDULES}")
        if not (isinstance(self.val_fraction, Real) and 0 <= self.val_fraction < 1):
            raise InvalidInputError(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        for name in ("module_params", "loss_params"):
            if not isinstance(getattr(self, name), (dict, type(None))):
                raise InvalidInputError(f"{name} must be a dict or None, got {getattr(self, name)!r}")
        spec = get_loss(self.loss, **(self.loss_params or {}))
        scaling = spec.label_scaling if self.label_scaling == "auto" else self.label_scaling
        if scaling not in LABEL_SCALINGS:
            raise InvalidInputError(
                f"unknown label_scaling {self.label_scaling!r}, expected 'auto' or one of {LABEL_SCALINGS}"
            )
        return spec, scaling

    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(f"invalid device {self.device!r}: {exc}") from exc

    def _split(self, n: int, groups, rng) -> tuple[np.ndarray, np.ndarray]:
        """``(train_idx, val_idx)`` of the ``n`` fitting videos (val may be empty)."""
        if self.val_fraction == 0:
            return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)
        try:
            ((train, val),) = random_splits(
                n, groups=groups, test_size=float(self.val_fraction), n_repeats=1, random_state=rng
            )
        except InvalidInputError as exc:
            raise InvalidInputError(f"cannot hold out val_fraction={self.val_fraction}: {exc}") from exc
        return train, val

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, groups=None, *, X_val=None, y_val=None, checkpoint_dir=None, checkpoint_key=None,
            epoch_callback=None):
        """Train on videos ``X`` (N items ``[T_i, D]``) with MOS ``y [N]``; returns self.

        Parameters
        ----------
        X : sequence of ``[T_i, D]`` arrays
            numpy, dask, zarr, ...: each batch's items are materialised with
            ``np.asarray`` when the batch is formed, so memory stays bounded by one batch.
            A 2-D array ``[N, D]`` means N one-step videos.
        y : array ``[N]``
        groups : array ``[N]`` or None
            Keeps every group on one side of the validation split.
        X_val, y_val : validation videos and MOS, or None
            An explicit validation set (VSFA 60/20/20 protocol); all of ``X`` then trains.
        checkpoint_dir : path or None
            Save the training state there after every epoch, and resume from the newest
            checkpoint found there (see the module docstring). Needs an integer
            ``random_state`` (a resumed run must redo the same split and initialisation).
        checkpoint_key : str or None
            Extra identity the checkpoint must match (e.g. a run's configuration hash and
            split); a checkpoint written under another key is refused.
        epoch_callback : callable or None
            Called as ``epoch_callback(epochs_completed)`` after each epoch, once its
            checkpoint (if any) is on disk. An exception raised there stops ``fit``
            (tests use it to simulate a crash).
        """
        start = time.perf_counter()
        loss_fn, scaling = self._check_params()
        device = self._torch_device()
        source, lengths, dims = _check_source(X, "X")
        y = _check_y(y, len(source), "y")
        if checkpoint_dir is not None and (isinstance(self.random_state, bool)
                                           or not isinstance(self.random_state, Integral)):
            raise InvalidInputError(
                f"checkpoint_dir needs an integer random_state (resuming redoes the same split and "
                f"initialisation), got {self.random_state!r}"
            )
        rng = np.random.default_rng(self.random_state)
        val_lengths = None
        if X_val is not None or y_val is not None:
            if X_val is None or y_val is None:
                raise InvalidInputError("pass both X_val and y_val, or neither")
            val_source, val_lengths, val_dims = _check_source(X_val, "X_val")
            if val_dims != dims:
                raise InvalidInputError(f"X_val has {val_dims} features per step, X has {dims}")
            y_val = _check_y(y_val, len(val_source), "y_val")
            val_where = "X_val"
            train_idx, val_idx = np.arange(len(source), dtype=np.int64), np.arange(len(val_source), dtype=np.int64)
        else:
            val_source, val_where = source, "X"
            train_idx, val_idx = self._split(len(source), groups, rng)
            y_val = y
        if val_idx.size and val_idx.size < MIN_SAMPLES:
            raise InvalidInputError(
                f"{val_idx.size} validation videos; SROCC needs at least {MIN_SAMPLES} "
                "(raise val_fraction, pass X_val, or set val_fraction=0)"
            )

        y_train = y[train_idx]
        if scaling == "max":
            label_scale = float(y_train.max())
            if label_scale <= 0:
                raise InvalidInputError(
                    f"label_scaling='max' needs a positive maximum training MOS, got {label_scale}"
                )
        else:
            label_scale = 1.0

        batcher = _Batcher(dims)
        if self.standardize:
            batcher.mean, batcher.std = batcher.feature_stats(source, train_idx, "X")

        steps_per_epoch = math.ceil(train_idx.size / self.batch_size)
        factors = lr_factors(
            self.schedule, epochs=int(self.epochs), steps_per_epoch=steps_per_epoch,
            step_size=self.step_size, gamma=self.gamma, warmup_epochs=int(self.warmup_epochs),
            min_lr_ratio=float(self.min_lr) / float(self.lr),
        )
        shuffle_rng = np.random.default_rng(rng.integers(2**63))
        torch_seed = int(rng.integers(2**63))
        checkpointer = None
        if checkpoint_dir is not None:
            params = {k: v for k, v in self.get_params(deep=False).items() if k != "progress"}
            fingerprint = _fingerprint(
                params, dims=int(dims), lengths=lengths, val_lengths=val_lengths, y=y, y_val=y_val,
                train_idx=train_idx, val_idx=val_idx, label_scale=label_scale, x_mean=batcher.mean,
                x_std=batcher.std, torch_seed=torch_seed, device=device.type,
            )
            key = "" if checkpoint_key is None else str(checkpoint_key)
            checkpointer = _Checkpointer(checkpoint_dir, fingerprint, key)
        with _SeededTorch(torch_seed, device):
            module = _build(self.module, dims, dict(self.module_params or {})).to(device)
            history, best_epoch = self._train(
                module, loss_fn, batcher, device, factors, steps_per_epoch,
                source, train_idx, torch.as_tensor(y_train / label_scale, dtype=torch.float32),
                val_source, val_idx, y_val[val_idx], shuffle_rng, val_where,
                checkpointer=checkpointer, epoch_callback=epoch_callback,
            )
        module.eval()

        self.module_ = module
        self.n_features_in_ = int(dims)
        self.label_scale_ = label_scale
        self.x_mean_ = batcher.mean
        self.x_std_ = batcher.std
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.n_epochs_ = len(history["train_loss"])
        self.data_wait_seconds_ = batcher.wait_seconds
        self.train_seconds_ = time.perf_counter() - start
        logger.info(
            "SequenceRegressor(%s) fitted on %d videos in %.1f s (%.0f%% waiting for data); "
            "%d epochs, best epoch %d, validation SROCC %.4f",
            self.module, train_idx.size, self.train_seconds_,
            100.0 * self.data_wait_seconds_ / max(self.train_seconds_, 1e-12),
            self.n_epochs_, best_epoch, history["val_srcc"][best_epoch],
        )
        return self

    def _train(self, module, loss_fn, batcher, device, factors, steps_per_epoch,
               source, train_idx, y_train_scaled, val_source, val_idx, y_val, shuffle_rng, val_where,
               checkpointer=None, epoch_callback=None):
        """The epoch loop; leaves ``module`` at the best checkpoint, returns ``(history, best_epoch)``.

        With a ``checkpointer`` it first restores the newest saved state (module, optimiser,
        scheduler, counters, history, RNG states) and goes on from the next epoch; after
        every epoch it saves the state again.
        """
        opt_cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        optimizer = opt_cls(module.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        # Past the planned steps (never reached) the last factor holds.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: float(factors[min(s, factors.shape[0] - 1)])
        )
        y_dev = y_train_scaled.to(device)
        history = {key: [] for key in _HISTORY_KEYS}
        best_srcc, best_epoch, best_state, since_best = -math.inf, None, None, 0
        start_epoch, finished, prior_wait = 0, False, 0.0
        saved = checkpointer.load() if checkpointer is not None else None
        if saved is not None:
            module.load_state_dict(saved["module"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            history = {key: list(saved["history"][key]) for key in _HISTORY_KEYS}
            best = saved["best"]
            best_srcc, since_best = float(best["srcc"]), int(best["since_best"])
            best_epoch = None if best["epoch"] < 0 else int(best["epoch"])
            best_state = None if best["state"] is None else {k: v.to(device) for k, v in best["state"].items()}
            shuffle_rng.bit_generator.state = saved["rng"]["shuffle"]
            torch.random.set_rng_state(saved["rng"]["torch"])
            if device.type == "cuda" and saved["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
            start_epoch, finished = int(saved["epoch"]), bool(saved["finished"])
            prior_wait = float(saved["data_wait_seconds"])  # the loop's reading time before the restart
            logger.info("resuming %s training from %s after epoch %d of %d%s", self.module,
                        checkpointer.directory, start_epoch, int(self.epochs), " (finished)" if finished else "")
        self.resumed_from_epoch_ = start_epoch
        loop_wait_start = batcher.wait_seconds

        def save(epochs_done: int, done: bool) -> None:
            checkpointer.save({
                "epoch": epochs_done,
                "finished": done,
                "module": _cpu_state(module),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": {key: [float(v) for v in history[key]] for key in _HISTORY_KEYS},
                "best": {"srcc": float(best_srcc), "epoch": -1 if best_epoch is None else int(best_epoch),
                         "since_best": int(since_best),
                         "state": None if best_state is None else {k: v.detach().to("cpu", copy=True)
                                                                   for k, v in best_state.items()}},
                "rng": {"shuffle": shuffle_rng.bit_generator.state,
                        "torch": torch.random.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "data_wait_seconds": prior_wait + batcher.wait_seconds - loop_wait_start,
            })

        bar = tqdm(total=int(self.epochs), initial=start_epoch, desc=f"train {self.module}", unit="epoch",
                   file=sys.stderr, disable=not self.progress, leave=False)
        try:
            for epoch in range(start_epoch, 0 if finished else int(self.epochs)):
                history["lr"].append(float(optimizer.param_groups[0]["lr"]))
                module.train()
                order = shuffle_rng.permutation(train_idx.size)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                for pos in _chunks(order, int(self.batch_size)):
                    xb, lb = batcher.batch(source, train_idx[pos], "X", device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(module(xb, lb), y_dev[torch.from_numpy(pos).to(device)])
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach().double() * pos.size
                train_loss = float(loss_sum) / train_idx.size  # one sync per epoch
                if not math.isfinite(train_loss):
                    raise TrainingError(
                        f"training diverged in epoch {epoch}: loss {train_loss} "
                        f"(lr {self.lr}, loss {self.loss!r}); lower lr or standardize the features"
                    )
                val_srcc = float("nan")
                if val_idx.size:
                    val_pred = self._forward_all(module, batcher, val_source, val_idx, device, where=val_where)
                    val_srcc = _safe_srcc(y_val, val_pred)
                    if val_srcc > best_srcc:  # strict, as VSFA; NaN never wins
                        best_srcc, best_epoch, since_best = val_srcc, epoch, 0
                        best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                    else:
                        since_best += 1
                history["train_loss"].append(train_loss)
                history["val_srcc"].append(val_srcc)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4g}", val_srcc=f"{val_srcc:.4f}")
                logger.debug("epoch %d: train loss %.6g, val SROCC %.4f", epoch, train_loss, val_srcc)
                stop = self.patience is not None and best_state is not None and since_best >= self.patience
                if checkpointer is not None:
                    save(epoch + 1, stop or epoch + 1 == int(self.epochs))
                if epoch_callback is not None:
                    epoch_callback(epoch + 1)
                if stop:
                    logger.info("early stop after epoch %d: no better validation SROCC since epoch %d",
                                epoch, best_epoch)
                    break
        finally:
            bar.close()
        batcher.wait_seconds += prior_wait
        if best_state is None:
            if val_idx.size:
                logger.warning("validation SROCC was never defined (constant predictions); keeping the last epoch")
            return history, len(history["train_loss"]) - 1
        module.load_state_dict(best_state)
        return history, best_epoch

    # ------------------------------------------------------------------ predict
    @staticmethod
    def _forward_all(module, batcher, source, idx, device, batch_size=64, where="X") -> np.ndarray:
        """Module outputs for videos ``idx`` (eval mode, no grad) as float64 ``[len(idx)]``."""
        module.eval()
        out = []
        with torch.no_grad():
            for chunk in _chunks(idx, batch_size):
                xb, lb = batcher.batch(source, chunk, where, device)
                out.append(module(xb, lb).double().cpu().numpy())
        return np.concatenate(out)

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit() first")

    def predict(self, X) -> np.ndarray:
        """Predicted MOS of videos ``X`` (N items ``[T_i, D]``, as in :meth:`fit`): ``[N]`` float64."""
        self._check_fitted()
        source, _, dims = _check_source(X, "X")
        if dims != self.n_features_in_:
            raise InvalidInputError(
                f"X has {dims} features per step, but this head was fitted on {self.n_features_in_}"
            )
        device = self._torch_device()
        self.module_.to(device)
        batcher = _Batcher(dims, self.x_mean_, self.x_std_)
        idx = np.arange(len(source), dtype=np.int64)
        return self._forward_all(self.module_, batcher, source, idx, device, int(self.batch_size)) * self.label_scale_

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict, dict]:
        """``(meta, arrays)`` for :func:`regressors.persistence.save_head`."""
        self._check_fitted()
        meta = {
            "params": self.get_params(deep=False),
            "n_features_in": int(self.n_features_in_),
            "label_scale": float(self.label_scale_),
            "best_epoch": int(self.best_epoch_),
            "n_epochs": int(self.n_epochs_),
            "train_seconds": float(self.train_seconds_),
            "data_wait_seconds": float(self.data_wait_seconds_),
        }
        arrays = {_ARRAY_PREFIX + k: v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}
        # History goes to the arrays: NaN (no validation) is not valid JSON.
        arrays.update({f"history.{k}": np.asarray(self.history_[k], dtype=np.float64) for k in _HISTORY_KEYS})
        if self.x_mean_ is not None:
            arrays["x_mean"], arrays["x_std"] = self.x_mean_, self.x_std_
        return meta, arrays

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict) -> "SequenceRegressor":
        """Inverse of :meth:`_state`: rebuilds the module by name and loads its weights."""
        head = cls(**meta["params"])
        dims = int(meta["n_features_in"])
        # Building initialises weights from the torch RNG: do it on a private seed so that
        # loading a head does not move the caller's random stream.
        with _SeededTorch(0, torch.device("cpu")):
            module = _build(head.module, dims, dict(head.module_params or {}))
        state = {k[len(_ARRAY_PREFIX):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                 if k.startswith(_ARRAY_PREFIX)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # mismatched keys or shapes
            raise ValueError(f"saved weights do not fit module {head.module!r}: {exc}") from exc
        head.module_ = module
        head.n_features_in_ = dims
        head.label_scale_ = float(meta["label_scale"])
        head.best_epoch_ = int(meta["best_epoch"])
        head.n_epochs_ = int(meta["n_epochs"])
        head.train_seconds_ = float(meta["train_seconds"])
        head.data_wait_seconds_ = float(meta["data_wait_seconds"])
        head.history_ = {k: arrays[f"history.{k}"].tolist() for k in _HISTORY_KEYS}
        head.x_mean_ = head.x_std_ = None
        if "x_mean" in arrays:
            head.x_mean_ = np.asarray(arrays["x_mean"], dtype=np.float32)
            head.x_std_ = np.asarray(arrays["x_std"], dtype=np.float32)
            if head.x_mean_.shape != (dims,) or head.x_std_.shape != (dims,):
                raise ValueError(
                    f"x_mean/x_std have shapes {head.x_mean_.shape}/{head.x_std_.shape}, expected ({dims},)"
                )
        return head
