"""Published weights are verified against their published sha256 prefix when downloaded.

The "download" is served from a ``file://`` URL through the real ``torch.hub.download_url_to_file``
(no network); the torch hub cache is the test's own (``TORCH_HOME``, see conftest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.errors import WeightsError, WeightsUnavailableError
from pipeline.weights import HubCheckpoint, file_sha256, torchvision_weights


def _publish(folder: Path, state: dict, *, stem: str = "tiny") -> tuple[Path, str]:
    """Save ``state`` as torchvision names its files, ``<stem>-<sha256[:8]>.pth``; returns (file, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "staging.pth"
    torch.save(state, staging)
    digest = file_sha256(staging)
    path = folder / f"{stem}-{digest[:8]}.pth"
    staging.rename(path)
    return path, digest


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _cache_listing() -> list[str]:
    folder = _cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _weights_enum(url: str):
    """Stands for a torchvision ``Weights`` enum member (what ``from_torchvision`` reads: url, name)."""
    return SimpleNamespace(url=url, name="TINY_V1")


def test_download_with_matching_checksum_is_accepted_and_cached(tmp_path):
    state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.ones(2)}
    published, digest = _publish(tmp_path / "server", state)
    checkpoint = HubCheckpoint(title="tiny", filename=published.name, url=published.as_uri(), sha256_prefix=digest[:8])

    cached = checkpoint.resolve(allow_download=True)
    assert cached == _cache_dir() / published.name
    assert cached.read_bytes() == published.read_bytes() and file_sha256(cached) == digest
    assert _cache_listing() == [published.name]  # no temporary files left beside it

    published.unlink()  # cached now: no second download
    assert checkpoint.resolve(allow_download=True) == cached

    # through the torchvision path: loaded safely, sha256 recorded in the identity
    resolved = torchvision_weights(_weights_enum(published.as_uri()), allow_download=False)
    assert resolved.identity["sha256"] == digest and resolved.identity["source"] == "torchvision"
    assert torch.equal(resolved.state_dict["weight"], state["weight"])


def test_tampered_download_is_refused_and_nothing_is_cached(tmp_path):
    genuine, digest = _publish(tmp_path / "genuine", {"weight": torch.zeros(4)})
    # the server now hands out other bytes under the genuine name (the prefix in the name is the published one)
    served = tmp_path / "server" / genuine.name
    served.parent.mkdir()
    torch.save({"weight": torch.full((4,), 666.0)}, served)
    actual = hashlib.sha256(served.read_bytes()).hexdigest()
    assert not actual.startswith(digest[:8])

    checkpoint = HubCheckpoint(title="tiny", filename=genuine.name, url=served.as_uri(), sha256_prefix=digest[:8])
    with pytest.raises(WeightsError) as caught:
        checkpoint.resolve(allow_download=True)
    message = str(caught.value)
    assert "does not match its published checksum" in message
    assert f"expected a sha256 starting with {digest[:8]}" in message and f"got {actual}" in message
    assert "nothing was cached" in message
    assert not isinstance(caught.value, WeightsUnavailableError)
    assert _cache_listing() == []  # neither the file nor a temporary one

    # the same through torchvision_weights, as an extractor would call it
    with pytest.raises(WeightsError, match=f"got {actual}"):
        torchvision_weights(_weights_enum(served.as_uri()), allow_download=True)
    assert _cache_listing() == []


def test_tampered_file_already_in_the_cache_is_refused_naming_both_hashes(tmp_path):
    genuine, digest = _publish(tmp_path / "genuine", {"weight": torch.zeros(4)})
    cached = _cache_dir() / genuine.name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(genuine.read_bytes()[:-10])  # a cut-short copy put there by hand
    checkpoint = HubCheckpoint(title="tiny", filename=genuine.name, url=genuine.as_uri(), sha256_prefix=digest[:8])
    with pytest.raises(WeightsError, match=rf"expected a sha256 starting with {digest[:8]}, got {file_sha256(cached)}"):
        checkpoint.resolve(allow_download=True)


def test_failed_or_forbidden_download_leaves_nothing_behind(tmp_path):
    missing = tmp_path / "server" / "tiny-0123abcd.pth"
    checkpoint = HubCheckpoint(title="tiny", filename=missing.name, url=missing.as_uri(), sha256_prefix="0123abcd")
    with pytest.raises(WeightsUnavailableError, match="cannot download tiny"):
        checkpoint.resolve(allow_download=True)
    assert _cache_listing() == []
    # VQA_OFFLINE (set for every test) forbids the attempt altogether
    with pytest.raises(WeightsUnavailableError, match="downloads are disabled"):
        checkpoint.resolve()
    assert _cache_listing() == []
