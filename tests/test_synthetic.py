"""Tests for the offline synthetic dataset builder (``pipeline.synthetic``).

One tiny dataset (2 photos, 6 frames of 64x48) is built per module and shared.
"""

from __future__ import annotations

import csv
import types
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.synthetic import (
    DISTORTIONS,
    MANIFEST_COLUMNS,
    PSEUDO_MOS,
    REFERENCE_MOS,
    list_sources,
    load_source,
    make_demo_dataset,
    pseudo_mos,
    render_camera_clip,
)

TINY = dict(n_sources=2, clip_seconds=0.5, fps=12, size=(64, 48), seed=0, progress=False)
TINY_FRAMES = 6  # round(0.5 s * 12 fps)
N_LEVELS = sum(len(levels) for levels in DISTORTIONS.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("tiny"), **TINY)


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def decode(path: Path) -> np.ndarray:
    """All frames of ``path`` as uint8 ``[T, H, W, 3]``."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def ladder(rows, group: str, distortion: str) -> list[dict[str, str]]:
    """The reference of ``group`` followed by its ``distortion`` rows in level order."""
    chosen = [r for r in rows if r["group"] == group and r["distortion"] in ("reference", distortion)]
    return sorted(chosen, key=lambda r: int(r["level"]))


# --- manifest --------------------------------------------------------------------------------


def test_manifest_columns_rows_and_relative_paths(tiny):
    with open(tiny, newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(MANIFEST_COLUMNS)
    rows = read_rows(tiny)
    groups = list_sources()[:2]
    assert len(rows) == 2 * (1 + N_LEVELS)
    assert len({r["video_id"] for r in rows}) == len(rows)
    assert {r["group"] for r in rows} == set(groups)
    for row in rows:
        assert row["path"] == f"videos/{row['video_id']}.mp4"
        assert not Path(row["path"]).is_absolute()
        assert row["video_id"] == f"{row['group']}__{row['distortion']}_{row['level']}"
    for group in groups:
        mine = [(r["distortion"], int(r["level"])) for r in rows if r["group"] == group]
        expected = [("reference", 0)] + [
            (name, level) for name, levels in DISTORTIONS.items() for level in range(1, len(levels) + 1)
        ]
        assert mine == expected  # reference once per source, every level once


def test_manifest_reads_with_flows_reader(tiny):
    from vqa_core.manifest import read_manifest

    entries = read_manifest(tiny, require_mos=True)
    assert len(entries) == len(read_rows(tiny))
    assert all(e.path.is_file() and e.group for e in entries)


def test_videos_exist_and_decode_with_declared_size_and_length(tiny):
    for row in read_rows(tiny):
        path = tiny.parent / row["path"]
        assert path.is_file(), row["path"]
        frames = decode(path)
        assert frames.shape == (TINY_FRAMES, 48, 64, 3), row["video_id"]
    leftovers = [
        p.name for folder in (tiny.parent, tiny.parent / "videos") for p in folder.iterdir() if p.name.startswith(".")
    ]  # temporary siblings of the atomic writes
    assert leftovers == []


# --- pseudo-MOS ------------------------------------------------------------------------------


def test_mos_decreases_with_level_within_each_distortion(tiny):
    rows = read_rows(tiny)
    for group in {r["group"] for r in rows}:
        for distortion in DISTORTIONS:
            mos = [float(r["mos"]) for r in ladder(rows, group, distortion)]
            assert mos[0] == pytest.approx(REFERENCE_MOS)
            assert all(a > b for a, b in pairwise(mos)), (group, distortion, mos)
            assert 1.3 <= mos[-1] <= 1.8, (distortion, mos[-1])


def test_mos_table_matches_levels():
    assert set(PSEUDO_MOS) == set(DISTORTIONS)
    for name, levels in DISTORTIONS.items():
        assert len(PSEUDO_MOS[name]) == len(levels)
        assert list(levels) == sorted(levels)  # a higher level is a stronger parameter
        assert pseudo_mos(name, 0) == REFERENCE_MOS
        assert pseudo_mos(name, len(levels)) == PSEUDO_MOS[name][-1]
    with pytest.raises(PipelineError, match="levels 1..3"):
        pseudo_mos("blur", 4)
    with pytest.raises(PipelineError, match="did you mean 'noise'"):
        pseudo_mos("nosie", 1)


def test_measured_quality_follows_the_level(tiny):
    """The clips really degrade in the order the pseudo-MOS says: PSNR against the decoded
    reference falls with the level, for every distortion."""
    rows = read_rows(tiny)
    group = rows[0]["group"]
    reference = decode(tiny.parent / ladder(rows, group, "blur")[0]["path"]).astype(float)
    for distortion in DISTORTIONS:
        psnr = []
        for row in ladder(rows, group, distortion)[1:]:
            error = decode(tiny.parent / row["path"]).astype(float) - reference
            psnr.append(10 * np.log10(255.0**2 / np.mean(error**2)))
        assert all(a > b for a, b in pairwise(psnr)), (distortion, np.round(psnr, 1))


def test_higher_crf_gives_smaller_file(tiny):
    rows = read_rows(tiny)
    for group in {r["group"] for r in rows}:
        sizes = [(tiny.parent / r["path"]).stat().st_size for r in ladder(rows, group, "h264")]
        assert all(a > b for a, b in pairwise(sizes)), (group, sizes)


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_manifest_and_videos(tiny, tmp_path):
    again = make_demo_dataset(tmp_path, **TINY)
    assert again.read_bytes() == tiny.read_bytes()
    for row in read_rows(tiny):  # seeded noise and a single-threaded encoder: identical files
        assert (again.parent / row["path"]).read_bytes() == (tiny.parent / row["path"]).read_bytes()


def test_render_is_deterministic_and_seeded():
    photo = load_source("chelsea")
    first = [f.tobytes() for f in render_camera_clip(photo, num_frames=5, size=(64, 48), seed=3)]
    second = [f.tobytes() for f in render_camera_clip(photo, num_frames=5, size=(64, 48), seed=3)]
    other = [f.tobytes() for f in render_camera_clip(photo, num_frames=5, size=(64, 48), seed=4)]
    assert first == second
    assert first != other


# --- camera ----------------------------------------------------------------------------------


def test_render_is_lazy_and_shaped():
    clip = render_camera_clip(load_source("coffee"), num_frames=3, size=(80, 60), seed=0)
    assert isinstance(clip, types.GeneratorType)
    frame = next(clip)
    assert frame.shape == (60, 80, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert len(list(clip)) == 2


@pytest.mark.parametrize("name,seed", [("astronaut", 0), ("camera", 1), ("retina", 2)])
def test_camera_moves_smoothly(name, seed):
    from skimage.color import rgb2gray
    from skimage.registration import phase_cross_correlation

    frames = np.stack(list(render_camera_clip(load_source(name), num_frames=24, seed=seed)))
    steps = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    whole = np.abs(frames[0].astype(np.int16) - frames[-1]).mean()
    assert steps.min() > 1.0  # every frame moves
    assert steps.max() < 0.5 * whole  # each step is a small part of the whole motion
    assert steps.max() < 2.0 * steps.min()  # evenly spread: no jumps or stalls
    gray = [rgb2gray(f) for f in frames[::4]]
    for a, b in pairwise(gray):  # 4 frames apart, the view has shifted by a few pixels
        shift = np.hypot(*phase_cross_correlation(a, b, upsample_factor=4)[0])
        assert shift < 16


def test_grayscale_sources_become_rgb():
    photo = load_source("camera")
    assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8
    assert np.array_equal(photo[..., 0], photo[..., 2])


# --- errors ----------------------------------------------------------------------------------


def test_too_many_sources_is_refused_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match="source photos"):
        make_demo_dataset(out, **{**TINY, "n_sources": len(list_sources()) + 1})
    assert not out.exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"distortions": ("blurr",)}, "did you mean 'blur'"),
        ({"size": (65, 48)}, "even"),
        ({"clip_seconds": 0.05}, "at least 2 frames"),
        ({"n_sources": 0}, "at least 1"),
        ({"fps": 0}, "fps must be positive"),
        ({"size": "64x48"}, r"\(width, height\)"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, change, message):
    with pytest.raises(PipelineError, match=message):
        make_demo_dataset(tmp_path / "out", **{**TINY, **change})
    assert not (tmp_path / "out").exists()


def test_bad_photo_and_unknown_source_are_refused():
    with pytest.raises(PipelineError, match=r"uint8 \[H, W, 3\]"):
        render_camera_clip(np.zeros((10, 10), np.uint8), num_frames=2, size=(16, 16), seed=0)
    with pytest.raises(PipelineError, match="did you mean 'chelsea'"):
        load_source("chelsey")
    with pytest.raises(PipelineError, match="num_frames"):
        render_camera_clip(load_source("coins"), num_frames=0, seed=0)


def test_photo_missing_offline_is_skipped(tmp_path, monkeypatch, caplog):
    import skimage.data

    def unavailable():
        raise ModuleNotFoundError("pooch is needed to download this file")

    monkeypatch.setattr(skimage.data, "astronaut", unavailable)
    with pytest.raises(PipelineError, match="not available offline"):
        load_source("astronaut")
    manifest = make_demo_dataset(tmp_path, **{**TINY, "n_sources": 1, "distortions": ()})
    assert [r["video_id"] for r in read_rows(manifest)] == ["chelsea__reference_0"]
    assert "astronaut" in caplog.text
    with pytest.raises(PipelineError, match=r"available offline \(missing: astronaut\)"):
        make_demo_dataset(tmp_path / "all", **{**TINY, "n_sources": len(list_sources())})


def test_existing_manifest_needs_overwrite_and_subset_of_distortions(tmp_path, capsys):
    small = {**TINY, "n_sources": 1, "distortions": "noise"}  # one name, as a string
    manifest = make_demo_dataset(tmp_path, **small)
    rows = read_rows(manifest)
    assert [(r["distortion"], r["level"]) for r in rows] == [
        ("reference", "0"),
        ("noise", "1"),
        ("noise", "2"),
        ("noise", "3"),
    ]
    with pytest.raises(PipelineError, match="overwrite=True"):
        make_demo_dataset(tmp_path, **small)
    before = manifest.read_bytes()
    twice = {**small, "distortions": ("noise", "noise")}  # a repeated name counts once
    assert make_demo_dataset(tmp_path, **twice, overwrite=True).read_bytes() == before
    assert capsys.readouterr().err == ""  # progress=False: no bar on stderr
