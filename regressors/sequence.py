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
their ratio is the data-wait fraction. Reading is synchronous (:mod:`regressors.batching`).

Checkpoints and resume (:mod:`vqa_core.training`, the loop fine-tuning shares):
``fit(..., checkpoint_dir=DIR)`` writes ``DIR/epoch-NNNN.pt`` after every epoch (NNNN:
epochs completed, 1-based; written to a temporary file and renamed into place, the previous
one then removed). It holds everything the loop needs to go on exactly as if it had not
stopped: module, optimiser and scheduler state, epoch, best epoch, its score and weights,
early-stopping counter, history, and the RNG states (torch CPU and CUDA generators, the
numpy shuffling generator), as plain containers of tensors, numbers and strings, read back
with ``torch.load(..., weights_only=True)``: nothing is unpickled. A later ``fit`` with the
same ``DIR`` continues after the last completed epoch and gives bit-identical weights and
predictions at the same torch thread count. Each checkpoint carries a fingerprint of the
parameters, the data (lengths, labels, validation split, standardisation) and
``checkpoint_key``; a checkpoint from different training (or of an older layout) is refused
with :class:`CheckpointMismatchError`, never silently continued. The last checkpoint is
kept after ``fit`` (a repeated ``fit`` with the same ``DIR`` then trains nothing);
deleting ``DIR`` is the caller's business.

Length (over 600 lines): one estimator class, most of it the documented parameters of the
scikit-learn contract; schedules, batching and the epoch loop live apart.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from tqdm import tqdm

from regressors.batching import Batcher, check_source, check_y, chunks
from regressors.errors import (
    CheckpointMismatchError,
    InvalidInputError,
    ModelFormatError,
    NotFittedError,
    TrainingError,
)
from regressors.losses import LABEL_SCALINGS, get_loss
from regressors.metrics import MIN_SAMPLES, srcc
from regressors.modules import build_module
from regressors.persistence import register_head
from regressors.protocols import random_splits
from regressors.schedules import SCHEDULES, lr_factors
from vqa_core.training import Checkpointer, EpochLoop, RngStreams, digest, latest_checkpoint_epoch, seeded_torch

__all__ = [
    "CheckpointMismatchError",
    "OPTIMIZERS",
    "SCHEDULES",
    "SequenceRegressor",
    "latest_checkpoint_epoch",
    "lr_factors",
]

logger = logging.getLogger(__name__)

#: Optimiser names accepted by :class:`SequenceRegressor`.
OPTIMIZERS = ("adam", "adamw")
_ARRAY_PREFIX = "module."
_HISTORY_KEYS = ("train_loss", "val_srcc", "lr")
_CHECKPOINT_FORMAT = "vqa-sequence-checkpoint"


def _build(name: str, input_dim: int, params: dict):
    """Build head module ``name`` (:mod:`regressors.modules`, which imports the built-in ones)."""
    try:
        return build_module(name, input_dim, **params)
    except TypeError as exc:  # wrong or missing module_params; the cause stays chained
        raise InvalidInputError(f"module {name!r} cannot be built with module_params {params!r}: {exc}") from exc


def _safe_srcc(y: np.ndarray, p: np.ndarray) -> float:
    """SROCC, or NaN where it is undefined (constant predictions early in training)."""
    try:
        return srcc(y, p)
    except InvalidInputError:
        return float("nan")


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
        tqdm bar on stderr (epochs, with train loss and validation SROCC). Off by default,
        so that ``GridSearchCV`` / ``cross_val_score`` print nothing unless asked.

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
        progress=False,
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
    def fit(
        self,
        X,
        y,
        groups=None,
        *,
        X_val=None,
        y_val=None,
        checkpoint_dir=None,
        checkpoint_key=None,
        epoch_callback=None,
    ):
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
        source, lengths, dims = check_source(X, "X")
        y = check_y(y, len(source), "y")
        if checkpoint_dir is not None and (
            isinstance(self.random_state, bool) or not isinstance(self.random_state, Integral)
        ):
            raise InvalidInputError(
                f"checkpoint_dir needs an integer random_state (resuming redoes the same split and "
                f"initialisation), got {self.random_state!r}"
            )
        rng = np.random.default_rng(self.random_state)
        val_lengths = None
        if X_val is not None or y_val is not None:
            if X_val is None or y_val is None:
                raise InvalidInputError("pass both X_val and y_val, or neither")
            val_source, val_lengths, val_dims = check_source(X_val, "X_val")
            if val_dims != dims:
                raise InvalidInputError(f"X_val has {val_dims} features per step, X has {dims}")
            y_val = check_y(y_val, len(val_source), "y_val")
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
                raise InvalidInputError(f"label_scaling='max' needs a positive maximum training MOS, got {label_scale}")
        else:
            label_scale = 1.0

        batcher = Batcher(dims)
        if self.standardize:
            batcher.mean, batcher.std = batcher.feature_stats(source, train_idx, "X")

        steps_per_epoch = math.ceil(train_idx.size / self.batch_size)
        factors = lr_factors(
            self.schedule,
            epochs=int(self.epochs),
            steps_per_epoch=steps_per_epoch,
            step_size=self.step_size,
            gamma=self.gamma,
            warmup_epochs=int(self.warmup_epochs),
            min_lr_ratio=float(self.min_lr) / float(self.lr),
        )
        shuffle_rng = np.random.default_rng(rng.integers(2**63))
        torch_seed = int(rng.integers(2**63))
        checkpointer = None
        if checkpoint_dir is not None:
            params = {k: repr(v) for k, v in self.get_params(deep=False).items() if k != "progress"}
            training = digest(
                params,
                dict(
                    dims=int(dims),
                    lengths=lengths,
                    val_lengths=val_lengths,
                    y=y,
                    y_val=y_val,
                    train_idx=train_idx,
                    val_idx=val_idx,
                    label_scale=label_scale,
                    x_mean=batcher.mean,
                    x_std=batcher.std,
                    torch_seed=torch_seed,
                    device=device.type,
                ),
            )
            checkpointer = Checkpointer(
                checkpoint_dir,
                format=_CHECKPOINT_FORMAT,
                error=CheckpointMismatchError,
                fingerprint={
                    "parameters or training data": training,
                    "checkpoint key": "" if checkpoint_key is None else str(checkpoint_key),
                },
                remedy=f"delete {checkpoint_dir} to train from scratch, or use another checkpoint_dir",
            )
        stats_wait = batcher.wait_seconds
        with seeded_torch(torch_seed, device):
            module = _build(self.module, dims, dict(self.module_params or {})).to(device)
            loop = self._train(
                module,
                loss_fn,
                batcher,
                device,
                factors,
                source,
                train_idx,
                torch.as_tensor(y_train / label_scale, dtype=torch.float32),
                val_source,
                val_idx,
                y_val[val_idx],
                shuffle_rng,
                val_where,
                checkpointer=checkpointer,
                epoch_callback=epoch_callback,
            )
        module.eval()
        history = {key: [row[key] for row in loop.history] for key in _HISTORY_KEYS}
        best_epoch = len(loop.history) - 1 if loop.best.epoch is None else loop.best.epoch - 1

        self.module_ = module
        self.n_features_in_ = int(dims)
        self.label_scale_ = label_scale
        self.x_mean_ = batcher.mean
        self.x_std_ = batcher.std
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.n_epochs_ = len(loop.history)
        self.resumed_from_epoch_ = loop.resumed_from
        # this call's standardisation pass + every epoch's reading, those before a restart included
        self.data_wait_seconds_ = stats_wait + sum(row["data_wait_seconds"] for row in loop.history)
        self.train_seconds_ = time.perf_counter() - start
        logger.info(
            "SequenceRegressor(%s) fitted on %d videos in %.1f s (%.0f%% waiting for data); "
            "%d epochs, best epoch %d, validation SROCC %.4f",
            self.module,
            train_idx.size,
            self.train_seconds_,
            100.0 * self.data_wait_seconds_ / max(self.train_seconds_, 1e-12),
            self.n_epochs_,
            best_epoch,
            history["val_srcc"][best_epoch],
        )
        return self

    def _train(
        self,
        module,
        loss_fn,
        batcher,
        device,
        factors,
        source,
        train_idx,
        y_train_scaled,
        val_source,
        val_idx,
        y_val,
        shuffle_rng,
        val_where,
        checkpointer=None,
        epoch_callback=None,
    ):
        """The epoch loop (:class:`vqa_core.training.EpochLoop`); returns it, done.

        Leaves ``module`` at the best epoch. With a ``checkpointer`` it first restores the
        newest saved state (module, optimiser, scheduler, history, best epoch, RNG streams)
        and goes on from the next epoch; after every epoch it saves the state again. History
        rows: ``train_loss``, ``val_srcc``, ``lr`` and ``data_wait_seconds`` of the epoch.
        """
        opt_cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        optimizer = opt_cls(module.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        # Past the planned steps (never reached) the last factor holds.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: float(factors[min(s, factors.shape[0] - 1)]))
        y_dev = y_train_scaled.to(device)
        loop = EpochLoop(
            module,
            optimizer,
            scheduler=scheduler,
            checkpointer=checkpointer,
            rng=RngStreams(device, [shuffle_rng]),
            patience=self.patience,
        )
        start_epoch = loop.restore()
        if start_epoch:
            logger.info(
                "resuming %s training from %s after epoch %d of %d%s",
                self.module,
                checkpointer.directory,
                start_epoch,
                int(self.epochs),
                " (stopped early)" if loop.stopped else "",
            )

        def run_epoch(epoch: int) -> tuple[dict, float | None]:
            lr = float(optimizer.param_groups[0]["lr"])
            waited = batcher.wait_seconds
            module.train()
            order = shuffle_rng.permutation(train_idx.size)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for pos in chunks(order, int(self.batch_size)):
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
            val_srcc, score = float("nan"), None  # None: no validation, nothing to choose on
            if val_idx.size:
                val_pred = self._forward_all(module, batcher, val_source, val_idx, device, where=val_where)
                val_srcc = score = _safe_srcc(y_val, val_pred)  # strictly higher wins, as VSFA; NaN never
            return {
                "train_loss": train_loss,
                "val_srcc": val_srcc,
                "lr": lr,
                "data_wait_seconds": batcher.wait_seconds - waited,
            }, score

        def on_epoch(epochs_done: int, row: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4g}", val_srcc=f"{row['val_srcc']:.4f}")
            logger.debug(
                "epoch %d: train loss %.6g, val SROCC %.4f", epochs_done - 1, row["train_loss"], row["val_srcc"]
            )
            if epoch_callback is not None:
                epoch_callback(epochs_done)

        bar = tqdm(
            total=int(self.epochs),
            initial=start_epoch,
            desc=f"train {self.module}",
            unit="epoch",
            file=sys.stderr,
            disable=not self.progress,
            leave=False,
        )
        try:
            loop.run(run_epoch, epochs=int(self.epochs), on_epoch=on_epoch)
        finally:
            bar.close()
        if loop.best.epoch is None and val_idx.size:
            logger.warning("validation SROCC was never defined (constant predictions); keeping the last epoch")
        return loop

    # ------------------------------------------------------------------ predict
    @staticmethod
    def _forward_all(module, batcher, source, idx, device, batch_size=64, where="X") -> np.ndarray:
        """Module outputs for videos ``idx`` (eval mode, no grad) as float64 ``[len(idx)]``."""
        module.eval()
        out = []
        with torch.no_grad():
            for chunk in chunks(idx, batch_size):
                xb, lb = batcher.batch(source, chunk, where, device)
                out.append(module(xb, lb).double().cpu().numpy())
        return np.concatenate(out)

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit() first")

    def predict(self, X) -> np.ndarray:
        """Predicted MOS of videos ``X`` (N items ``[T_i, D]``, as in :meth:`fit`): ``[N]`` float64."""
        self._check_fitted()
        source, _, dims = check_source(X, "X")
        if dims != self.n_features_in_:  # scikit-learn's wording (its estimator checks test it)
            raise InvalidInputError(
                f"X has {dims} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                f"features as input (it was fitted on {self.n_features_in_} features per step)"
            )
        device = self._torch_device()
        self.module_.to(device)
        batcher = Batcher(dims, self.x_mean_, self.x_std_)
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

    #: Saved arrays that may hold NaN (no validation score in that epoch); all others are finite.
    _nonfinite_arrays = ("history.",)

    @classmethod
    def _check_state(cls, meta: dict, shapes: dict) -> None:
        """Before any weight is allocated (:func:`regressors.persistence.load_head`): the module
        laid out on torch's meta device (shapes only, no memory) for the declared
        ``n_features_in`` must have exactly the saved arrays' shapes. A tampered
        ``n_features_in`` of 4e6 would otherwise allocate its 2 GB first layer before failing."""
        head = cls(**meta["params"])
        dims = meta["n_features_in"]
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise ModelFormatError(f"n_features_in must be a positive integer, got {dims!r}")
        with torch.device("meta"):
            module = _build(head.module, dims, dict(head.module_params or {}))
        expected = {_ARRAY_PREFIX + k: tuple(v.shape) for k, v in module.state_dict().items()}
        saved = {k: tuple(v) for k, v in shapes.items() if k.startswith(_ARRAY_PREFIX)}
        if "x_mean" in shapes:
            expected.update(x_mean=(dims,), x_std=(dims,))
            saved.update(x_mean=tuple(shapes["x_mean"]), x_std=tuple(shapes.get("x_std", ())))
        if saved != expected:
            wrong = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
            shown = ", ".join(
                f"{k} {list(saved[k]) if k in saved else 'missing'} (expected "
                f"{list(expected[k]) if k in expected else 'none'})"
                for k in wrong[:4]
            )
            raise ModelFormatError(
                f"saved arrays do not fit module {head.module!r} with n_features_in {dims}: "
                f"{shown}{' ...' if len(wrong) > 4 else ''}"
            )

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict) -> SequenceRegressor:
        """Inverse of :meth:`_state`: rebuilds the module by name and loads its weights."""
        head = cls(**meta["params"])
        dims = int(meta["n_features_in"])
        if not float(meta["label_scale"]) > 0:
            raise ModelFormatError(f"label_scale must be positive, got {meta['label_scale']}")
        if "x_std" in arrays and not np.all(np.asarray(arrays["x_std"]) > 0):
            raise ModelFormatError("x_std must be positive (features are divided by it)")
        # Building initialises weights from the torch RNG: do it on a private seed so that
        # loading a head does not move the caller's random stream.
        with seeded_torch(0, "cpu"):
            module = _build(head.module, dims, dict(head.module_params or {}))
        state = {
            k[len(_ARRAY_PREFIX) :]: torch.from_numpy(np.array(v))
            for k, v in arrays.items()
            if k.startswith(_ARRAY_PREFIX)
        }
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # mismatched keys or shapes
            raise ModelFormatError(f"saved weights do not fit module {head.module!r}: {exc}") from exc
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
                raise ModelFormatError(
                    f"x_mean/x_std have shapes {head.x_mean_.shape}/{head.x_std_.shape}, expected ({dims},)"
                )
        return head
