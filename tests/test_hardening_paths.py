"""Hardening, paths: what is read is what was checked (docs/hardening.md, "Hostile inputs").

``read_manifest(..., root=R)`` checks paths when the manifest is read; files are opened later.
``pipeline.video.Video`` therefore checks again on the file it opened (its real path, through
the descriptor) and decodes through that descriptor, so a file swapped between the check and
the open, or after the open, is never read, and provenance names the file that was read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from feature_store import FeatureStore
from pipeline.errors import VideoDecodeError
from pipeline.runner import extract_video
from pipeline.sampling import parse_sampling
from pipeline.video import Video
from tests.helpers import frame_numbers, make_video
from tests.test_hardening_inputs import ProbeExtractor, probe_registered  # noqa: F401  (a fixture)
from vqa_core.manifest import read_manifest


@pytest.fixture
def dataset(tmp_path):
    """``root/`` with a.mp4 (10 frames) and a link inside it; ``outside/secret.mp4`` (20 frames)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    make_video(root / "a.mp4", 10)
    (root / "sub").mkdir()
    os.symlink(root / "a.mp4", root / "sub" / "link.mp4")
    make_video(outside / "secret.mp4", 20, width=32, height=32)
    return root, outside


def swap_for_link(path: Path, target: Path) -> None:
    """Replace ``path`` atomically with a symbolic link to ``target``."""
    tmp = path.with_name(path.name + ".swap")
    os.symlink(target, tmp)
    os.replace(tmp, path)


def test_a_link_swapped_in_after_the_manifest_check_is_refused_at_open(dataset):
    root, outside = dataset
    manifest = root / "manifest.csv"
    manifest.write_text("video_id,path\na,a.mp4\n")
    (entry,) = read_manifest(manifest, root=root)  # the check passes: a.mp4 is a file inside root
    swap_for_link(entry.path, outside / "secret.mp4")
    with pytest.raises(VideoDecodeError) as caught:
        extract_video(entry.path, [ProbeExtractor()], sampling=parse_sampling("all"), root=root)
    real = os.path.realpath(outside / "secret.mp4")
    assert caught.value.cause == f"resolves to {real}, outside the dataset root {os.path.realpath(root)}; refused"
    assert caught.value.path == str(entry.path)


def test_links_inside_the_root_are_followed_and_provenance_names_the_real_file(dataset):
    root, _ = dataset
    real = root / "a.mp4"
    with Video(root / "sub" / "link.mp4", root=root) as video:
        info = video.info
    assert info.path == str(root / "sub" / "link.mp4")
    assert info.resolved_path == os.path.realpath(real)
    assert (info.size_bytes, info.mtime) == (real.stat().st_size, real.stat().st_mtime)
    with pytest.raises(VideoDecodeError, match="outside the dataset root"):  # a real file outside it
        Video(root / "a.mp4", root=root / "sub")


def test_a_file_swapped_after_open_is_never_read(dataset):
    """Replacing the path (by another file, or by a link out of the root) after the open
    changes nothing: every decoder (decord, PyAV's streaming reads, decord reopened after
    them) reads the file that was opened and checked."""
    root, outside = dataset
    path = root / "a.mp4"
    stat, real = path.stat(), os.path.realpath(path)
    with Video(path, root=root) as video:
        swap_for_link(path, outside / "secret.mp4")
        dense = np.concatenate([frames for _, frames in video.frames(batch_size=4)])  # PyAV stream
        sparse = np.concatenate([frames for _, frames in video.frames([9, 0, 5])])  # decord, reopened
        info = video.info
    assert dense.shape == (10, 48, 64, 3)
    assert frame_numbers(dense).tolist() == list(range(10))
    assert frame_numbers(sparse).tolist() == [9, 0, 5]
    assert (info.size_bytes, info.mtime) == (stat.st_size, stat.st_mtime)
    assert info.resolved_path == real


def test_a_fifo_or_device_in_place_of_a_file_is_refused_without_hanging(dataset):
    root, _ = dataset
    fifo = root / "fifo.mp4"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        result: dict[str, str] = {}
        worker = threading.Thread(target=_open_error, args=(path, result), daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), f"opening {path} hangs"
        assert result["error"] == "not a regular file"


def _open_error(path: Path, result: dict) -> None:
    try:
        Video(path)
    except VideoDecodeError as error:
        result["error"] = error.cause


def test_flow_refuses_a_file_swapped_after_the_manifest_check_and_records_the_real_file(
    dataset,
    prefect_harness,
    probe_registered,  # noqa: F811  (the imported fixture)
    monkeypatch,
):
    """``vqa extract --root``: the manifest is checked, then (before any video is opened) one
    file is swapped for a link out of the root. That video fails with the reason, nothing of
    it is stored, the others are; provenance names the file that was read, with its size and
    modification time."""
    from flows import extract as flow_module

    root, outside = dataset
    make_video(root / "b.mp4", 10)
    manifest = root / "manifest.csv"
    manifest.write_text("video_id,path\na,a.mp4\nb,b.mp4\nlinked,sub/link.mp4\n")
    original = flow_module.read_manifest

    def read_then_swap(*args, **kwargs):
        entries = original(*args, **kwargs)
        swap_for_link(root / "b.mp4", outside / "secret.mp4")
        return entries

    monkeypatch.setattr(flow_module, "read_manifest", read_then_swap)
    store = root.parent / "store"
    summary = flow_module.extract_flow(
        manifest=str(manifest),
        store=str(store),
        extractors=[probe_registered],
        sampling="uniform:2",
        device="cpu",
        progress=False,
        root=str(root),
    )
    assert set(summary["failures"]) == {"b"}
    assert "outside the dataset root" in summary["failures"]["b"] and "secret.mp4" in summary["failures"]["b"]
    features = FeatureStore(store)
    (set_id,) = features.feature_sets()
    assert features.video_ids(set_id) == ["a", "linked"]
    source = features.video_provenance(set_id, "linked")["video"]["source"]
    real = root / "a.mp4"
    assert source["path"] == str(root / "sub" / "link.mp4")
    assert source["resolved_path"] == os.path.realpath(real)
    assert (source["size_bytes"], source["mtime"]) == (real.stat().st_size, real.stat().st_mtime)
