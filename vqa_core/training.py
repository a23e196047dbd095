"""The resumable epoch loop shared by every trainer: checkpoints, RNG streams, best-epoch choice.

``regressors.sequence`` (heads on stored features) and ``pipeline.finetune`` (CNN backbones
on images) train the same way; each brings its own epoch body::

    loop = EpochLoop(module, optimizer, scheduler=..., checkpointer=..., rng=..., better=...)
    loop.restore()          newest checkpoint -> module, optimiser, scheduler, history, best, RNG
    loop.run(run_epoch, epochs=E)
        for each epoch not done yet:
            row, score = run_epoch(epoch)      trainer's code: train, validate
            best epoch? better(score, best)    -> CPU copy of the weights
            checkpointer.save(...)             everything needed to go on exactly
            on_epoch(epochs_done, row)         (progress, logging; may raise to stop)
            patience used up? stop
        module <- the best epoch's weights

Checkpoints hold tensors and plain containers only (``torch.save``), are written atomically
(:mod:`vqa_core.atomic`) and are read back with ``torch.load(..., weights_only=True)``:
nothing is unpickled. Each carries the trainer's format name, the layout version
(:data:`STATE_VERSION`) and a fingerprint of the training (its parameters and data); a file
of another format, layout version or training is refused with the caller's error class,
never silently continued. A run stopped after any epoch and resumed gives bit-identical
weights when the trainer's randomness is either captured (:class:`RngStreams`) or derived
from the epoch number, at the same torch thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .errors import CheckpointError

logger = logging.getLogger(__name__)

#: Layout of the state :class:`EpochLoop` saves. 1: the per-trainer layouts before the shared
#: loop (``vqa-sequence-checkpoint`` version 1, ``vqa-finetune-state/1``); refused with a clear error.
STATE_VERSION = 2
_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")


# ---------------------------------------------------------------------------- small pieces
def _json_default(value: Any) -> Any:
    """JSON for the values fingerprints hold: arrays by dtype, shape and content hash."""
    if isinstance(value, np.ndarray):
        data = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return f"{value.dtype.str}{list(value.shape)}:{data}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} cannot be digested; pass plain values, tuples, dicts or arrays")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def digest(*parts: Any) -> str:
    """sha256 (hex) of ``parts`` as canonical JSON: sorted keys, tuples as lists, numpy arrays
    by dtype, shape and a hash of their bytes. Equal inputs give equal digests across runs."""
    return hashlib.sha256(_canonical(list(parts)).encode("utf-8")).hexdigest()


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``module.state_dict()``, detached (later steps do not change it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's CPU generator (and ``device``'s, if CUDA) for the block; the caller's
    RNG state is restored after it, so the block neither reads nor moves the global stream."""
    device = torch.device(device)
    cuda = None
    if device.type == "cuda":
        cuda = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if cuda is None else [cuda]):
        torch.random.default_generator.manual_seed(seed)
        if cuda is not None:
            with torch.cuda.device(cuda):
                torch.cuda.manual_seed(seed)
        yield


class RngStreams:
    """The random streams a training draws from, saved with each checkpoint and restored on resume.

    torch's global CPU generator, the CUDA generator of ``device`` (when it is a CUDA device)
    and the numpy ``generators`` (e.g. the one that shuffles). Trainers that seed every epoch
    from the epoch number need none of this (pass ``rng=None`` to :class:`EpochLoop`).
    """

    def __init__(self, device: torch.device | str, generators: Sequence[np.random.Generator] = ()):
        self.device = torch.device(device)
        self.generators = list(generators)

    def state(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
            "numpy": [g.bit_generator.state for g in self.generators],
        }

    def restore(self, state: Mapping) -> None:
        if len(state["numpy"]) != len(self.generators):
            raise ValueError(f"{len(state['numpy'])} numpy generator states for {len(self.generators)} generators")
        torch.random.set_rng_state(state["torch"])
        if self.device.type == "cuda" and state["cuda"] is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)
        for generator, saved in zip(self.generators, state["numpy"], strict=True):
            generator.bit_generator.state = saved


# ---------------------------------------------------------------------------- checkpoints
def _epoch_files(directory: Path) -> list[tuple[int, Path]]:
    """``(epochs completed, path)`` of every ``epoch-NNNN.pt`` in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint_epoch(directory: str | Path) -> int | None:
    """Epochs completed by the newest ``epoch-NNNN.pt`` in ``directory`` (1-based), or None if none."""
    files = _epoch_files(Path(directory))
    return files[-1][0] if files else None


class Checkpointer:
    """Saves and loads the training state of one training in one directory.

    Without ``name`` every epoch writes ``directory/epoch-NNNN.pt`` (NNNN: epochs completed)
    and then removes the older file, so a listing tells how far training got
    (:func:`latest_checkpoint_epoch`); with ``name`` one file ``directory/name`` is replaced
    after every epoch.

    ``format``: what kind of training state this is; ``fingerprint``: ``{aspect: JSON value}``
    naming this training (parameters, data, split, seed). A file of another format or layout
    version, or whose fingerprint differs, is refused with ``error`` (the caller's package
    error), naming the aspects that differ; ``remedy`` ends every refusal (what to do).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        format: str,
        fingerprint: Mapping[str, Any],
        name: str | None = None,
        error: type[Exception] = CheckpointError,
        remedy: str = "",
    ):
        self.directory = Path(directory)
        self.format = format
        self.fingerprint = json.loads(_canonical(dict(fingerprint)))  # as it reads back
        self.name = name
        self.error = error
        self.remedy = remedy

    def _refuse(self, message: str) -> Exception:
        return self.error(f"{message}; {self.remedy}" if self.remedy else message)

    def latest(self) -> tuple[int | None, Path | None]:
        """``(epochs completed or None when unknown, path)`` of the newest file; ``(None, None)`` if none."""
        if self.name is not None:
            path = self.directory / self.name
            return (None, path) if path.is_file() else (None, None)
        files = _epoch_files(self.directory)
        return files[-1] if files else (None, None)

    def load(self) -> dict | None:
        """The newest checkpoint's contents, checked to be this training's; None if there is none."""
        epochs, path = self.latest()
        if path is None:
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for damaged or unsafe files
            raise self._refuse(f"training checkpoint {path} cannot be read ({exc})") from exc
        found = state.get("format") if isinstance(state, dict) else None
        version = state.get("version") if isinstance(state, dict) else None
        if isinstance(found, str) and found.startswith(f"{self.format}/"):  # layout 1 put its version there
            found, version = self.format, found.partition("/")[2]
            version = int(version) if version.isdigit() else version
        if found != self.format:
            raise self._refuse(f"{path} is not a {self.format} checkpoint")
        if version != STATE_VERSION:
            raise self._refuse(f"{path} has state layout version {version!r}, this code reads {STATE_VERSION}")
        try:
            saved = json.loads(state["fingerprint"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._refuse(f"{path} has no readable fingerprint") from exc
        differ = sorted(k for k in self.fingerprint.keys() | saved.keys() if self.fingerprint.get(k) != saved.get(k))
        if differ:
            raise self._refuse(
                f"training checkpoint {path} belongs to another training (different "
                f"{', '.join(differ)}); refusing to resume from it"
            )
        if epochs is not None and state.get("epoch") != epochs:
            raise self._refuse(f"{path} says it was written after epoch {state.get('epoch')!r}")
        return state

    def save(self, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (with ``epoch``: epochs completed) atomically; remove older checkpoints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pattern = ".epoch-*.tmp" if self.name is None else f".{self.name}.*.tmp"
        for path in self.directory.glob(pattern):  # left by a writer killed mid-write
            path.unlink(missing_ok=True)
        epochs = int(state["epoch"])
        path = self.directory / (self.name or f"epoch-{epochs:04d}.pt")
        doc = {"format": self.format, "version": STATE_VERSION, "fingerprint": _canonical(self.fingerprint), **state}
        atomic_write(path, lambda fh: torch.save(doc, fh))
        if self.name is None:
            for older, old_path in _epoch_files(self.directory):
                if older != epochs:
                    old_path.unlink(missing_ok=True)
        return path


# ---------------------------------------------------------------------------- the loop
@dataclass
class Best:
    """The epoch chosen so far: ``epoch`` (1-based epochs completed; None before any), its
    ``score``, how many scored epochs followed without a better one (``since``) and its
    weights as a CPU state dict (``state``)."""

    epoch: int | None = None
    score: float = -math.inf
    since: int = 0
    state: dict[str, torch.Tensor] | None = None


def higher(score: float, best: Best) -> bool:
    """The default choice: strictly higher than the best so far (a tie keeps the earlier epoch;
    NaN never wins)."""
    return score > best.score


#: ``run_epoch(epoch)`` (0-based) -> ``(history row, score or None)``.
RunEpoch = Callable[[int], tuple[dict, float | None]]


class EpochLoop:
    """Runs epochs, keeps the best one, checkpoints after each, resumes from the newest checkpoint.

    ``module``/``optimizer``/``scheduler`` (optional, stepped by the trainer): what is saved
    and restored. ``checkpointer``: None trains without checkpoints. ``rng``: the streams to
    save and restore (None when the trainer seeds each epoch itself). ``better(score, best)``:
    whether an epoch's score beats :class:`Best` (default :func:`higher`). ``patience``: stop
    after this many scored epochs without a better one (None: never).

    After :meth:`run`: ``history`` (one row per epoch done), ``best``, ``epochs_done``,
    ``stopped`` (early, by patience) and ``resumed_from`` (epochs restored; 0 for a fresh run).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler=None,
        checkpointer: Checkpointer | None = None,
        rng: RngStreams | None = None,
        better: Callable[[float, Best], bool] = higher,
        patience: int | None = None,
    ):
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.rng = rng
        self.better = better
        self.patience = patience
        self.history: list[dict] = []
        self.best = Best()
        self.stopped = False
        self.resumed_from = 0

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def restore(self) -> int:
        """Load the newest checkpoint of this training, if any; returns the epochs it had done."""
        saved = self.checkpointer.load() if self.checkpointer is not None else None
        if saved is None:
            return 0
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if self.rng is not None:
            self.rng.restore(saved["rng"])
        self.history = [dict(row) for row in saved["history"]]
        best = saved["best"]
        # None: the best epoch is the last one saved (its weights are "model", not written twice)
        state = saved["model"] if best["model"] is None and best["epoch"] is not None else best["model"]
        self.best = Best(epoch=best["epoch"], score=float(best["score"]), since=int(best["since"]), state=state)
        self.stopped = bool(saved["stopped"])
        self.resumed_from = int(saved["epoch"])
        return self.resumed_from

    def _save(self, current: dict[str, torch.Tensor]) -> None:
        done = self.epochs_done
        self.checkpointer.save(
            {
                "epoch": done,
                "stopped": self.stopped,
                "model": current,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "history": self.history,
                "best": {
                    "epoch": self.best.epoch,
                    "score": float(self.best.score),
                    "since": self.best.since,
                    "model": None if self.best.epoch == done else self.best.state,
                },
                "rng": None if self.rng is None else self.rng.state(),
            }
        )

    def run(
        self,
        run_epoch: RunEpoch,
        *,
        epochs: int,
        stop_after: int | None = None,
        on_epoch: Callable[[int, dict], None] | None = None,
    ) -> EpochLoop:
        """Run the epochs from ``epochs_done`` up to ``epochs`` (at most ``stop_after`` in this
        call), then leave the module at the best epoch's weights (the last epoch's when no
        score was ever better). Returns self.

        ``run_epoch(epoch)`` (0-based) trains and validates one epoch and returns ``(row,
        score)``: ``row`` plain numbers for the history, ``score`` the choice criterion (higher
        is better) or None when there is nothing to choose on (no validation data).
        ``on_epoch(epochs_done, row)`` runs once the epoch's checkpoint is on disk; an
        exception there stops the loop with that checkpoint kept.
        """
        todo = range(self.epochs_done, self.epochs_done if self.stopped else epochs)
        if stop_after is not None:
            todo = todo[:stop_after]
        for epoch in todo:
            row, score = run_epoch(epoch)
            self.history.append(row)
            current = None
            if score is not None:
                if self.better(score, self.best):
                    current = cpu_state(self.module)
                    self.best = Best(epoch=epoch + 1, score=score, since=0, state=current)
                else:
                    self.best.since += 1
            self.stopped = (
                self.patience is not None and self.best.epoch is not None and self.best.since >= self.patience
            )
            if self.checkpointer is not None:
                self._save(current if current is not None else cpu_state(self.module))
            if on_epoch is not None:
                on_epoch(epoch + 1, row)
            if self.stopped:
                logger.info("early stop after epoch %d: no better score since epoch %d", epoch + 1, self.best.epoch)
                break
        if self.best.state is not None:
            self.module.load_state_dict(self.best.state)
        return self
