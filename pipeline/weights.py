"""Resolving model weights: explicit file > torch hub cache > download > refuse.

Weights are never replaced by random ones behind the user's back: ``random`` must be asked
for, and its identity says so loudly in every provenance record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vqa_core.atomic import atomic_path
from vqa_core.registry import Registry

from .errors import WeightsError, WeightsUnavailableError

logger = logging.getLogger(__name__)

RANDOM_WARNING = "RANDOM WEIGHTS: features carry no learned meaning; use only for tests and demos"


@dataclass(frozen=True)
class ResolvedWeights:
    """A loaded state dict (``None`` for random init) and its identity for provenance."""

    state_dict: Mapping[str, torch.Tensor] | None
    identity: Mapping[str, Any]

    @property
    def is_random(self) -> bool:
        return self.identity.get("source") == "random"


def offline() -> bool:
    """True when ``VQA_OFFLINE`` is set: never try the network (tests, air-gapped clusters)."""
    return os.environ.get("VQA_OFFLINE", "").lower() not in ("", "0", "false", "no")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file safely (tensors and plain containers only, never pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise WeightsError(
            f"cannot load weights file {path}: {exc}. Only plain state dicts "
            "(torch.save(model.state_dict(), path)) are accepted; pickled objects are refused."
        ) from exc


@dataclass(frozen=True)
class HubCheckpoint:
    """A published checkpoint kept in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``).

    ``url``: where it is downloaded from (``None`` when it must be fetched by hand, e.g. from
    Google Drive). ``sha256_prefix``: the published checksum prefix (torchvision puts it in the
    file name); when known, the file is verified whether downloaded now or found in the cache.
    """

    title: str
    filename: str
    url: str | None = None
    sha256_prefix: str | None = None
    how_to_get: str = ""
    alternative: str = ""

    @classmethod
    def from_torchvision(cls, enum_member) -> HubCheckpoint:
        url = enum_member.url
        filename = url.rsplit("/", 1)[-1]
        return cls(
            title=f"{type(enum_member).__name__}.{enum_member.name}",
            filename=filename,
            url=url,
            sha256_prefix=filename.rsplit("-", 1)[-1].split(".")[0],
        )

    @property
    def path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def instructions(self) -> str:
        source = self.how_to_get or f"Download {self.url} on a machine with internet access"
        return (
            f"{source.rstrip('.')}. Save it as {self.path} (or set TORCH_HOME), or pass the file "
            f"with --weights /path/to/{self.filename}. {self.alternative}For a test run only, --weights random."
        )

    def resolve(self, *, allow_download: bool | None = None) -> Path:
        """The verified local file; downloads it first when allowed and a URL is known.

        A download goes to a temporary file beside the cache entry and is renamed into
        place only once its sha256 matches the published prefix: a tampered or truncated
        download raises :class:`WeightsError` naming the expected and the actual hash, and
        leaves nothing in the cache. A cached file is checked the same way on every call.
        """
        cached = self.path
        if allow_download is None:
            allow_download = not offline()
        if not cached.is_file():
            if self.url is None or not allow_download:
                why = (
                    "cannot be downloaded automatically" if self.url is None else "downloads are disabled (VQA_OFFLINE)"
                )
                raise WeightsUnavailableError(f"{self.title} is not at {cached} and {why}. {self.instructions()}")
            self._download(cached)
        elif self.sha256_prefix:
            actual = file_sha256(cached)
            if not actual.startswith(self.sha256_prefix):
                raise WeightsError(
                    f"{cached} does not match its published checksum: expected a sha256 starting with "
                    f"{self.sha256_prefix}, got {actual}. The file is corrupt or not what its name says; "
                    "delete it and retry."
                )
        return cached

    def _download(self, cached: Path) -> None:
        """Download ``self.url`` to ``cached``: into a temporary file, verified, then renamed."""
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:  # any error below leaves nothing in the cache
            logger.info("downloading %s to %s", self.url, cached)
            try:
                # No hash_prefix here: torch's check raises a bare RuntimeError; ours names both hashes.
                torch.hub.download_url_to_file(self.url, tmp, hash_prefix=None, progress=True)
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                raise WeightsUnavailableError(
                    f"cannot download {self.title} from {self.url}: {exc}. {self.instructions()}"
                ) from exc
            actual = file_sha256(tmp)
            if self.sha256_prefix and not actual.startswith(self.sha256_prefix):
                raise WeightsError(
                    f"the file downloaded from {self.url} for {self.title} does not match its published checksum: "
                    f"expected a sha256 starting with {self.sha256_prefix}, got {actual}. It was discarded and "
                    f"nothing was cached at {cached}; the download was damaged or tampered with. Retry, or fetch "
                    "the file by hand and check its sha256."
                )
        logger.info("verified %s (sha256 %s)", cached, actual)


#: Published checkpoints by file name (what ``vqa weights`` lists).
CHECKPOINTS: Registry[HubCheckpoint] = Registry("checkpoint", error=WeightsUnavailableError)
_USED_BY: dict[str, list[str]] = {}


def register_checkpoint(checkpoint: HubCheckpoint, *, used_by: str) -> HubCheckpoint:
    """Record a published checkpoint so ``vqa weights`` can report whether it is available.

    Several extractors may register one checkpoint (equal entries); another checkpoint under
    a taken file name is refused.
    """
    CHECKPOINTS.register(checkpoint.filename, checkpoint)
    _USED_BY.setdefault(checkpoint.filename, []).append(used_by)
    return checkpoint


def known_checkpoints() -> list[dict]:
    """Every registered checkpoint: title, local path, whether present, who uses it, how to get it."""
    rows = []
    for filename, ckpt in CHECKPOINTS.items():
        rows.append(
            {
                "title": ckpt.title,
                "path": str(ckpt.path),
                "present": ckpt.path.is_file(),
                "used_by": sorted(set(_USED_BY[filename])),
                "url": ckpt.url,
                "how_to_get": ckpt.instructions(),
            }
        )
    return rows


def torchvision_weights(enum_member, *, allow_download: bool | None = None) -> ResolvedWeights:
    """Resolve a torchvision ``Weights`` enum member from the torch hub cache or by download."""
    checkpoint = HubCheckpoint.from_torchvision(enum_member)
    cached = checkpoint.resolve(allow_download=allow_download)
    return ResolvedWeights(
        state_dict=load_checkpoint(cached),
        identity={
            "source": "torchvision",
            "name": checkpoint.title,
            "url": checkpoint.url,
            "sha256": file_sha256(cached),
        },
    )


def file_weights(path: str | Path) -> tuple[Any, dict]:
    """Load a local checkpoint; returns ``(raw checkpoint object, identity)``.

    A sidecar ``<checkpoint stem>.json`` beside the file (written by ``pipeline.finetune``) is
    read as plain JSON into ``identity["training"]``, so features made with a fine-tuned
    checkpoint name its training in their provenance.
    """
    path = Path(path).expanduser().resolve()
    checkpoint = load_checkpoint(path)
    identity = {"source": "file", "path": str(path), "sha256": file_sha256(path)}
    training = read_training_sidecar(path, sha256=identity["sha256"])
    if training is not None:
        identity["training"] = training
    return checkpoint, identity


def read_training_sidecar(path: str | Path, *, sha256: str) -> dict | None:
    """The JSON sidecar of checkpoint ``path`` (``path.with_suffix(".json")``), or ``None``.

    A sidecar naming another file's hash (``checkpoint_sha256``) is stale: refused, since the
    provenance would describe training the checkpoint did not have.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"training sidecar {sidecar} of {path} is not readable JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise WeightsError(f"training sidecar {sidecar} of {path} must hold a JSON object")
    if record.get("checkpoint_sha256") not in (None, sha256):
        raise WeightsError(
            f"training sidecar {sidecar} describes another file (sha256 "
            f"{str(record['checkpoint_sha256'])[:12]}..., {path.name} has {sha256[:12]}...): "
            "it is stale; delete it or restore the checkpoint it belongs to"
        )
    return record


def random_weights(seed: int = 0) -> ResolvedWeights:
    logger.warning("%s (seed %d)", RANDOM_WARNING, seed)
    return ResolvedWeights(state_dict=None, identity={"source": "random", "seed": seed, "warning": RANDOM_WARNING})


def parse_random(choice: str) -> int | None:
    """``"random"`` -> 0, ``"random:7"`` -> 7, anything else -> None."""
    if choice == "random":
        return 0
    if choice.startswith("random:"):
        try:
            return int(choice.split(":", 1)[1])
        except ValueError:
            raise WeightsError(f"bad weights choice {choice!r}: expected random or random:SEED") from None
    return None


def unwrap_state_dict(checkpoint: Any, *, path: str | Path = "<checkpoint>") -> dict:
    """Return the state dict inside common checkpoint containers.

    Accepts a bare state dict, or one under ``model_state`` (pytorchvideo), ``state_dict``
    (Lightning, TCSVT-2022) or ``model``.
    """
    if isinstance(checkpoint, Mapping):
        for key in ("model_state", "state_dict", "model"):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint)
    raise WeightsError(f"{path}: no state dict found (expected tensors, or a dict under model_state/state_dict/model)")


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Strict load with a readable error listing the first missing and unexpected keys."""
    result_missing = sorted(set(model.state_dict()) - set(state_dict))
    result_unexpected = sorted(set(state_dict) - set(model.state_dict()))
    if result_missing or result_unexpected:
        raise WeightsError(
            f"{source} does not fit {type(model).__name__}: "
            f"{len(result_missing)} missing keys {result_missing[:5]}, "
            f"{len(result_unexpected)} unexpected keys {result_unexpected[:5]}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"{source} does not fit {type(model).__name__}: {exc}") from exc
