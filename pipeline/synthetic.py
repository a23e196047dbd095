"""An offline synthetic VQA dataset: real photographs, a moving virtual camera, graded distortions.

Used by ``vqa demo``, by tests and by anyone without a licensed dataset. Everything comes from
files shipped with scikit-image and the ffmpeg binary of imageio-ffmpeg: nothing is downloaded.

Data flow for one source photograph::

    photo [H, W, 3] --render_camera_clip--> reference frames [T, h, w, 3] (kept in memory)
        |-- encode at PRISTINE_CRF ---------------------------> <photo>__reference_0.mp4
        |-- encode at CRF ladder ------------------------------> <photo>__h264_<k>.mp4
        |-- Gaussian blur per frame, encode at PRISTINE_CRF ---> <photo>__blur_<k>.mp4
        '-- Gaussian noise per frame, encode at PRISTINE_CRF --> <photo>__noise_<k>.mp4

Pseudo-MOS (1-5 scale) is a fixed function of the distortion and its level ``k`` (level 0 is
the reference, shared by all distortions of a source):

    ===========  =====  ==========================  ====================================
    distortion   level  parameter                   pseudo-MOS
    ===========  =====  ==========================  ====================================
    reference    0      CRF 12 (PRISTINE_CRF)       4.8
    h264         1..5   CRF 18, 30, 38, 46, 51      4.5, 3.8, 3.0, 2.1, 1.5
    blur         1..3   sigma 0.8, 1.6, 3.2 px      4.1, 3.0, 1.7
    noise        1..3   sigma 8, 16, 32 (of 255)    3.9, 2.9, 1.6
    ===========  =====  ==========================  ====================================

The numbers are a plausible calibration, not subjective measurements: they fall with the level
within each distortion (as PSNR and SSIM of the decoded clips do) and put the strongest level of
each distortion between 1.3 and 1.8. Blur and noise are applied to the rendered frames, which
are then encoded at ``PRISTINE_CRF`` like the reference, so that only the named distortion
differs from it. A level's parameter is ``DISTORTIONS[distortion][level - 1]``.

Length (over 600 lines): one seeded generator (photos, camera path, distortions, encoding,
manifest) whose parts share the same plan; demo and test tooling rather than library API.
"""

from __future__ import annotations

import difflib
import logging
import math
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from vqa_core.atomic import atomic_path
from vqa_core.manifest import MANIFEST_COLUMNS as BASE_MANIFEST_COLUMNS
from vqa_core.manifest import write_manifest

from .encode import encode_video
from .errors import PipelineError

logger = logging.getLogger(__name__)

REFERENCE_MOS = 4.8
# x264 CRF of the reference and of the blur/noise clips: well below the first rung of the
# h264 ladder, so that encoding adds almost nothing to those distortions.
PRISTINE_CRF = 12

#: Distortion name -> parameter of each level 1..n (level 0 is the reference). ``h264``: x264
#: CRF; ``blur``: Gaussian sigma in output pixels; ``noise``: Gaussian sigma on the 0-255 scale.
DISTORTIONS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "h264": (18, 30, 38, 46, 51),
        "blur": (0.8, 1.6, 3.2),
        "noise": (8, 16, 32),
    }
)

#: Distortion name -> pseudo-MOS of each level 1..n, same order as ``DISTORTIONS``.
PSEUDO_MOS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "h264": (4.5, 3.8, 3.0, 2.1, 1.5),
        "blur": (4.1, 3.0, 1.7),
        "noise": (3.9, 2.9, 1.6),
    }
)

REFERENCE_NAME = "reference"
# The manifest's columns, plus what made each item (extra columns are ignored by read_manifest).
MANIFEST_COLUMNS = (*BASE_MANIFEST_COLUMNS, "distortion", "level")

# Real photographs bundled in scikit-image's own distribution (no pooch download), colour
# first. Grayscale ones are replicated to RGB.
SOURCE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "camera",
    "hubble_deep_field",
    "retina",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
)

# Camera motion over one clip: a geometric zoom between these factors (in or out, by the seed);
# a pan of this many view widths; a view at zoom 1 covering this fraction of the photo's
# largest box of the output's aspect ratio, which leaves room for the pan at the widest view.
ZOOM_RANGE = (1.0, 1.4)
PAN_DISTANCE = 0.2
WINDOW_FRACTION = 0.8


def pseudo_mos(distortion: str, level: int) -> float:
    """Pseudo-MOS (1-5) of ``distortion`` at ``level``; level 0 is the reference (see the table
    in the module docstring). Raises ``PipelineError`` for an unknown name or level."""
    return REFERENCE_MOS if level == 0 else _level_value(PSEUDO_MOS, distortion, level)


def _level_value(table: Mapping[str, tuple[float, ...]], distortion: str, level: int) -> float:
    """``table[distortion][level - 1]`` for level 1..n; ``PipelineError`` for an unknown name or level."""
    _check_distortions([distortion], table)
    ladder = table[distortion]
    if not 1 <= level <= len(ladder):
        raise PipelineError(f"{distortion} has levels 1..{len(ladder)} (0 = reference), got {level}")
    return ladder[level - 1]


def list_sources() -> tuple[str, ...]:
    """Names of the scikit-image photographs that can be used as sources, in the order used."""
    return SOURCE_PHOTOS


def load_source(name: str) -> np.ndarray:
    """Load photograph ``name`` from ``skimage.data`` as uint8 ``[H, W, 3]``.

    Raises ``PipelineError`` when it is not a known source or not available offline.
    """
    if name not in SOURCE_PHOTOS:
        hint = difflib.get_close_matches(name, SOURCE_PHOTOS, n=1)
        raise PipelineError(f"unknown source photo {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    import skimage.data

    try:
        image = getattr(skimage.data, name)()
    except (AttributeError, ImportError, OSError, ValueError) as exc:
        # Older/newer scikit-image without the file, or a build without the bundled data.
        raise PipelineError(f"skimage.data.{name} is not available offline: {exc}") from exc
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise PipelineError(f"skimage.data.{name} is {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def render_camera_clip(
    photo: np.ndarray,
    *,
    num_frames: int,
    size: tuple[int, int] = (192, 144),
    seed: int,
) -> Iterator[np.ndarray]:
    """Film ``photo`` with a moving virtual camera; yield ``num_frames`` frames lazily.

    ``photo`` is uint8 ``[H, W, 3]``; each frame is uint8 ``[height, width, 3]`` with
    ``size = (width, height)``. The camera zooms geometrically between ``ZOOM_RANGE`` (in or out,
    chosen by ``seed``) while its centre pans ``PAN_DISTANCE`` view widths along a gently bent,
    seeded quadratic Bezier curve, both spread evenly over the clip, so consecutive frames
    differ by a small, smooth step (about 2 output pixels at 24 frames; fewer frames, bigger
    steps). Pixels are bilinearly resampled (``scipy.ndimage.map_coordinates``) from the photo,
    first downscaled with anti-aliasing to about the output's resolution so that the
    resampling does not alias. ``seed`` is a non-negative int. Same arguments ->
    byte-identical frames. Raises ``PipelineError`` for a bad photo, size or count.
    """
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise PipelineError(f"photo must be uint8 [H, W, 3], got {photo.dtype} {list(photo.shape)}")
    width, height = _check_size(size)
    if num_frames < 1:
        raise PipelineError(f"num_frames must be at least 1, got {num_frames}")
    _check_seed(seed)
    return _camera_frames(photo, num_frames=num_frames, width=width, height=height, seed=seed)


def _camera_frames(photo: np.ndarray, *, num_frames: int, width: int, height: int, seed: int) -> Iterator[np.ndarray]:
    from scipy import ndimage
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    zoom_from, zoom_to = ZOOM_RANGE if rng.random() < 0.5 else ZOOM_RANGE[::-1]

    win_w, win_h = _window(photo.shape[1], photo.shape[0], width / height)
    scale = width / win_w
    if scale < 1.0:  # downscale once, with anti-aliasing, so bilinear sampling is near 1:1
        photo = rescale(photo, scale, order=1, channel_axis=-1, anti_aliasing=True, preserve_range=True)
        win_w, win_h = _window(photo.shape[1], photo.shape[0], width / height)
    planes_in = np.ascontiguousarray(np.moveaxis(photo, -1, 0), dtype=np.float32)  # [3, H, W]
    photo_h, photo_w = planes_in.shape[1:]

    # Pan: a quadratic Bezier from 0 to PAN_DISTANCE view widths in a seeded direction, bent
    # sideways a little by its control point; [T, 2] offsets (x, y) in photo pixels.
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    angle = rng.uniform(0.0, 2 * np.pi)
    heading = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-heading[1], heading[0]])
    end = PAN_DISTANCE * win_w * heading
    control = end / 2 + rng.uniform(-0.25, 0.25) * PAN_DISTANCE * win_w * normal
    t = times[:, None]
    offsets = 2 * (1 - t) * t * control + t**2 * end
    # Fit the whole path inside the photo at the widest view (zoom 1), shrinking it if the
    # photo leaves less room than PAN_DISTANCE, then place it at a seeded position.
    low, high = offsets.min(axis=0), offsets.max(axis=0)
    room = np.array([photo_w - win_w, photo_h - win_h])
    extent = high - low
    shrink = np.min(room / np.maximum(extent, 1e-9), initial=1.0)
    offsets, low, extent = offsets * shrink, low * shrink, extent * shrink
    # Pixel j of the photo spans [j - 0.5, j + 0.5].
    origin = np.array([win_w, win_h]) / 2 - 0.5 - low + rng.random(2) * np.maximum(room - extent, 0)
    centres = origin + offsets

    cols = (np.arange(width, dtype=np.float64) + 0.5) / width - 0.5  # [-0.5, 0.5) of the view
    rows = (np.arange(height, dtype=np.float64) + 0.5) / height - 0.5
    planes = np.empty((3, height, width), dtype=np.float32)
    for (centre_x, centre_y), time_ in zip(centres, times, strict=True):
        zoom = zoom_from * (zoom_to / zoom_from) ** time_
        view_w, view_h = win_w / zoom, win_h / zoom
        ys, xs = np.meshgrid(centre_y + rows * view_h, centre_x + cols * view_w, indexing="ij")
        coords = np.stack([ys, xs])
        for channel in range(3):
            ndimage.map_coordinates(
                planes_in[channel], coords, output=planes[channel], order=1, mode="nearest", prefilter=False
            )
        yield np.ascontiguousarray(_to_uint8(planes.transpose(1, 2, 0)))


def _window(photo_w: int, photo_h: int, aspect: float) -> tuple[float, float]:
    """Size (w, h) of the zoom-1 view: WINDOW_FRACTION of the largest box of ``aspect``."""
    if photo_w / photo_h > aspect:
        win_h = photo_h * WINDOW_FRACTION
        return win_h * aspect, win_h
    win_w = photo_w * WINDOW_FRACTION
    return win_w, win_w / aspect


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def _blur(frames: Iterable[np.ndarray], sigma: float) -> Iterator[np.ndarray]:
    """Gaussian blur of each frame ``[h, w, 3]`` in space only (sigma 0 on the channel axis)."""
    from scipy import ndimage

    for frame in frames:
        yield _to_uint8(ndimage.gaussian_filter(frame.astype(np.float32), sigma=(sigma, sigma, 0)))


def _noise(frames: Iterable[np.ndarray], sigma: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Additive white Gaussian noise, fresh per frame and per channel, on the 0-255 scale."""
    for frame in frames:
        noise = rng.normal(0.0, sigma, size=frame.shape).astype(np.float32)
        yield _to_uint8(frame.astype(np.float32) + noise)


def _distorted(
    distortion: str, value: float, frames: Sequence[np.ndarray], rng: np.random.Generator
) -> tuple[Iterator[np.ndarray], int]:
    """Frames to encode and the CRF to encode them at for one distortion level."""
    if distortion == "h264":
        return iter(frames), int(value)  # the encoder itself is the distortion
    if distortion == "blur":
        return _blur(frames, value), PRISTINE_CRF
    if distortion == "noise":
        return _noise(frames, value, rng), PRISTINE_CRF
    raise PipelineError(f"no implementation for distortion {distortion!r}")  # DISTORTIONS drifted


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"size must be (width, height), got {size!r}") from exc
    # yuv420p (what players and decoders expect) needs even dimensions.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise PipelineError(f"size must be even and at least 16x16, got {width}x{height}")
    return width, height


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PipelineError(f"seed must be a non-negative int, got {seed!r}")


def _check_distortions(names: Iterable[str] | str, table: Mapping[str, tuple[float, ...]] = DISTORTIONS) -> list[str]:
    if isinstance(names, str):  # one name, not its letters
        names = [names]
    chosen: list[str] = []
    for name in names:
        if name not in table:
            hint = difflib.get_close_matches(str(name), table, n=1)
            raise PipelineError(
                f"unknown distortion {name!r}; known: {', '.join(table)}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def _seed_for(*parts: int | str) -> int:
    """A stable 64-bit seed from the dataset seed and names (crc32: stable across runs,
    unlike ``hash``)."""
    words = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def make_demo_dataset(
    out_dir: str | Path,
    *,
    n_sources: int = 6,
    clip_seconds: float = 2.0,
    fps: float = 12,
    size: tuple[int, int] = (192, 144),
    distortions: Sequence[str] = ("h264", "blur", "noise"),
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a small graded-distortion dataset under ``out_dir``; return the manifest's path.

    Writes ``out_dir/videos/<video_id>.mp4`` (H.264, yuv420p, ``size = (width, height)``,
    ``round(clip_seconds * fps)`` frames) and ``out_dir/manifest.csv`` with columns
    ``video_id,path,mos,group,distortion,level``: ``path`` is relative to ``out_dir``,
    ``group`` is the source photo (all versions of a photo share it, for grouped splits),
    ``video_id`` is ``<photo>__<distortion>_<level>`` and the reference is
    ``<photo>__reference_0``. There are ``n_sources * (1 + sum of chosen ladder lengths)``
    rows; MOS follows the table in the module docstring. Same arguments -> same manifest and
    same frames (the camera path and the noise are seeded by ``seed`` and the photo's name).

    The manifest is written last, atomically, so its presence marks a complete dataset. An
    existing manifest is refused unless ``overwrite=True``. Raises ``PipelineError`` for bad
    arguments (before writing anything) and when ffmpeg fails.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    width, height = _check_size(size)
    chosen = _check_distortions(distortions)
    if not (math.isfinite(fps) and fps > 0):
        raise PipelineError(f"fps must be positive, got {fps}")
    num_frames = round(clip_seconds * fps)
    if num_frames < 2:
        raise PipelineError(f"clip_seconds * fps must give at least 2 frames, got {num_frames}")
    if n_sources < 1:
        raise PipelineError(f"n_sources must be at least 1, got {n_sources}")
    manifest_path, photos = _start_dataset(out_dir, n_sources=n_sources, seed=seed, overwrite=overwrite)

    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    n_clips = n_sources * (1 + sum(len(DISTORTIONS[d]) for d in chosen))
    rows: list[dict[str, str]] = []
    from tqdm.auto import tqdm

    with tqdm(total=n_clips, desc="demo dataset", unit="clip", file=sys.stderr, disable=not progress) as bar:
        for name, photo in photos:
            # Rendered once and kept: T * h * w * 3 bytes (0.2 MB at the defaults).
            reference = list(
                render_camera_clip(photo, num_frames=num_frames, size=(width, height), seed=_seed_for(seed, name))
            )
            jobs: list[tuple[str, int, Iterable[np.ndarray], int]] = [(REFERENCE_NAME, 0, reference, PRISTINE_CRF)]
            for distortion in chosen:
                for level, value in enumerate(DISTORTIONS[distortion], start=1):
                    rng = np.random.default_rng(_seed_for(seed, name, distortion, level))
                    frames, crf = _distorted(distortion, value, reference, rng)
                    jobs.append((distortion, level, frames, crf))
            for distortion, level, frames, crf in jobs:
                video_id = f"{name}__{distortion}_{level}"
                _encode_atomic(video_dir / f"{video_id}.mp4", frames, fps=fps, crf=crf)
                rows.append(
                    {
                        "video_id": video_id,
                        "path": f"videos/{video_id}.mp4",
                        "mos": f"{pseudo_mos(distortion, level):.2f}",
                        "group": name,
                        "distortion": distortion,
                        "level": str(level),
                    }
                )
                bar.update(1)

    write_manifest(manifest_path, rows, columns=MANIFEST_COLUMNS, overwrite=True)
    logger.info(
        "wrote %d clips of %d frames (%dx%d) from %d photos to %s in %.1f s",
        len(rows),
        num_frames,
        width,
        height,
        n_sources,
        out_dir,
        time.perf_counter() - started,
    )
    return manifest_path


def _start_dataset(
    out_dir: Path, *, n_sources: int, seed: int, overwrite: bool
) -> tuple[Path, list[tuple[str, np.ndarray]]]:
    """Checks shared by the dataset builders (seed, photo count, an existing manifest); returns
    the manifest's path and the loaded photos. Nothing is written."""
    _check_seed(seed)
    if n_sources > len(SOURCE_PHOTOS):
        raise PipelineError(
            f"n_sources={n_sources} but only {len(SOURCE_PHOTOS)} source photos exist: {', '.join(SOURCE_PHOTOS)}"
        )
    manifest_path = out_dir / "manifest.csv"
    if manifest_path.exists() and not overwrite:
        raise PipelineError(f"{manifest_path} exists; pass overwrite=True to rebuild it")
    return manifest_path, _load_photos(n_sources)


def _load_photos(n_sources: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n_sources`` photos of ``SOURCE_PHOTOS`` that load offline."""
    photos: list[tuple[str, np.ndarray]] = []
    missing: list[str] = []
    for name in SOURCE_PHOTOS:
        if len(photos) == n_sources:
            break
        try:
            photos.append((name, load_source(name)))
        except PipelineError as exc:
            logger.warning("skipping source photo: %s", exc)
            missing.append(name)
    if len(photos) < n_sources:
        raise PipelineError(
            f"n_sources={n_sources} but only {len(photos)} source photos are available offline "
            f"(missing: {', '.join(missing)})"
        )
    return photos


def _encode_atomic(path: Path, frames: Iterable[np.ndarray], *, fps: float, crf: int) -> None:
    """Encode to a temporary name and rename, so an interrupted build leaves no truncated mp4."""
    with atomic_path(path) as partial:
        # One encoder thread: x264's output depends on its thread count, and these clips are
        # too small to gain from threads anyway. "-f mp4": the temporary name ends in .tmp.
        encode_video(
            partial,
            frames,
            fps=fps,
            codec="libx264",
            crf=crf,
            pix_fmt="yuv420p",
            extra_args=["-threads", "1", "-preset", "medium", "-f", "mp4"],
        )


# --------------------------------------------------------------------------- still images (IQA)
# KADID-10k-style distortion types for fine-tuning on image quality (TID2013 / KADID-10k
# stand-in). The parameters and pseudo-MOS are our calibration, not KADID's: each ladder is
# monotone in the level, and colour saturation, which KADID's subjects judged mild, stays high.
#
#   ==========  ==================================  ==============================  =========================
#   distortion  operation                           parameter of levels 1..5        pseudo-MOS of levels 1..5
#   ==========  ==================================  ==============================  =========================
#   blur        Gaussian blur (space only)          sigma 0.5, 1, 2, 3, 5 px        4.4, 3.8, 2.9, 2.2, 1.4
#   noise       additive white Gaussian noise       sigma 5, 10, 20, 35, 50 (/255)  4.3, 3.6, 2.7, 1.9, 1.3
#   jpeg        JPEG compression (Pillow/libjpeg)   quality 70, 43, 24, 10, 4       4.4, 3.9, 3.1, 2.2, 1.4
#   contrast    contrast decrease about the mean    factor .85, .7, .55, .4, .25    4.5, 4.0, 3.3, 2.6, 1.9
#   saturation  chroma decrease about the luma      factor .8, .6, .4, .2, 0        4.6, 4.3, 3.9, 3.4, 3.0
#   ==========  ==================================  ==============================  =========================
#
# The reference image (level 0) has REFERENCE_MOS, as in the video dataset.

#: Image distortion name -> parameter of each level 1..5 (see the table above).
IQA_DISTORTIONS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "blur": (0.5, 1.0, 2.0, 3.0, 5.0),
        "noise": (5, 10, 20, 35, 50),
        "jpeg": (70, 43, 24, 10, 4),
        "contrast": (0.85, 0.7, 0.55, 0.4, 0.25),
        "saturation": (0.8, 0.6, 0.4, 0.2, 0.0),
    }
)

#: Image distortion name -> pseudo-MOS (1-5) of each level 1..5, same order as ``IQA_DISTORTIONS``.
IQA_PSEUDO_MOS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "blur": (4.4, 3.8, 2.9, 2.2, 1.4),
        "noise": (4.3, 3.6, 2.7, 1.9, 1.3),
        "jpeg": (4.4, 3.9, 3.1, 2.2, 1.4),
        "contrast": (4.5, 4.0, 3.3, 2.6, 1.9),
        "saturation": (4.6, 4.3, 3.9, 3.4, 3.0),
    }
)

IQA_LEVELS = (1, 2, 3, 4, 5)
# ITU-R BT.601 luma weights: the grey that a colour-saturation change keeps.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def iqa_pseudo_mos(distortion: str, level: int) -> float:
    """Pseudo-MOS (1-5) of image ``distortion`` at ``level`` (0 = the reference)."""
    return REFERENCE_MOS if level == 0 else _level_value(IQA_PSEUDO_MOS, distortion, level)


def distort_image(image: np.ndarray, distortion: str, level: int, *, rng: np.random.Generator) -> np.ndarray:
    """Apply ``distortion`` at ``level`` (1..5) to uint8 ``[H, W, 3]``; returns uint8 ``[H, W, 3]``.

    ``rng`` draws the noise (only ``noise`` uses it). Blur and noise are the video dataset's own
    per-frame operations applied to one frame.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PipelineError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    value = _level_value(IQA_DISTORTIONS, distortion, level)  # level 0 is refused here: no distortion
    if distortion == "blur":
        return next(_blur([image], value))
    if distortion == "noise":
        return next(_noise([image], value, rng))
    if distortion == "jpeg":
        return _jpeg(image, int(value))
    pixels = image.astype(np.float32)
    if distortion == "contrast":
        centre = pixels.mean(axis=(0, 1), keepdims=True)  # per channel, so the colour balance stays
    else:  # saturation: mix each pixel with its own grey
        centre = (pixels @ _LUMA)[..., None]
    return _to_uint8(centre + value * (pixels - centre))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through an in-memory JPEG at ``quality`` (Pillow's libjpeg, 4:2:0 chroma)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def make_iqa_dataset(
    out_dir: str | Path,
    *,
    n_sources: int = 6,
    views: int = 1,
    size: tuple[int, int] = (192, 144),
    distortions: Sequence[str] = tuple(IQA_DISTORTIONS),
    levels: Sequence[int] = IQA_LEVELS,
    include_reference: bool = True,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a graded-distortion image-quality dataset under ``out_dir``; return the manifest's path.

    For each of the first ``n_sources`` photos and each of ``views`` seeded views of it (a
    still of the virtual camera of :func:`render_camera_clip`, uint8 ``[height, width, 3]``
    with ``size = (width, height)``), writes the reference (when ``include_reference``) and
    every chosen distortion at every chosen level (see the table above
    :data:`IQA_DISTORTIONS`) as ``out_dir/images/<photo>__v<view>__<distortion>_<level>.png``
    (lossless PNG: a JPEG level is decoded before it is stored). ``out_dir/manifest.csv`` has
    the columns ``video_id,path,mos,group,distortion,level`` (the video manifest's, so
    ``vqa_core.manifest.read_manifest`` reads it): ``path`` relative to ``out_dir``, ``group`` the
    source photo (all views and versions of a photo share it, for grouped splits), ``mos`` from
    :func:`iqa_pseudo_mos`. Rows: ``n_sources * views * (include_reference + len(distortions)
    * len(levels))``, less the ``saturation`` rows of greyscale photos (``camera``, ``coins``,
    ...), where desaturating changes nothing and a lower MOS would be a wrong label. Same
    arguments -> same files (views and noise seeded by ``seed``, photo, view and level).

    The manifest is written last, atomically; an existing one is refused unless
    ``overwrite=True``. Raises ``PipelineError`` for bad arguments before writing anything.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    width, height = _check_size(size)
    chosen = _check_distortions(distortions, IQA_DISTORTIONS)
    chosen_levels = sorted(set(int(level) for level in levels))
    if not chosen_levels or chosen_levels[0] < 1 or chosen_levels[-1] > len(IQA_LEVELS):
        raise PipelineError(f"levels must be a non-empty subset of {list(IQA_LEVELS)}, got {list(levels)}")
    if not chosen and not include_reference:
        raise PipelineError("no distortions and no reference: the dataset would be empty")
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise PipelineError(f"views must be a positive int, got {views!r}")
    if isinstance(n_sources, bool) or not isinstance(n_sources, (int, np.integer)) or n_sources < 1:
        raise PipelineError(f"n_sources must be a positive int, got {n_sources!r}")
    manifest_path, photos = _start_dataset(out_dir, n_sources=n_sources, seed=seed, overwrite=overwrite)

    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = ([(REFERENCE_NAME, 0)] if include_reference else []) + [(d, k) for d in chosen for k in chosen_levels]
    rows: list[dict[str, str]] = []
    from tqdm.auto import tqdm

    with tqdm(
        total=n_sources * views * len(jobs), desc="iqa dataset", unit="image", file=sys.stderr, disable=not progress
    ) as bar:
        for name, photo in photos:
            grey = bool((photo[..., :1] == photo).all())
            if grey and "saturation" in chosen:
                bar.total -= views * len(chosen_levels)
                bar.refresh()
            for view in range(views):
                # One still of the virtual camera: the photo at the output size, seeded framing.
                reference = next(
                    render_camera_clip(
                        photo, num_frames=1, size=(width, height), seed=_seed_for(seed, name, f"view{view}")
                    )
                )
                for distortion, level in jobs:
                    if grey and distortion == "saturation":
                        continue
                    image_id = f"{name}__v{view}__{distortion}_{level}"
                    if level == 0:
                        image = reference
                    else:
                        rng = np.random.default_rng(_seed_for(seed, name, f"view{view}", distortion, level))
                        image = distort_image(reference, distortion, level, rng=rng)
                    _save_png_atomic(image_dir / f"{image_id}.png", image)
                    rows.append(
                        {
                            "video_id": image_id,
                            "path": f"images/{image_id}.png",
                            "mos": f"{iqa_pseudo_mos(distortion, level):.2f}",
                            "group": name,
                            "distortion": distortion,
                            "level": str(level),
                        }
                    )
                    bar.update(1)

    write_manifest(manifest_path, rows, columns=MANIFEST_COLUMNS, overwrite=True)
    logger.info(
        "wrote %d images (%dx%d) from %d photos x %d views to %s in %.1f s",
        len(rows),
        width,
        height,
        n_sources,
        views,
        out_dir,
        time.perf_counter() - started,
    )
    return manifest_path


def _save_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG under a temporary name and rename, so an interrupted build leaves no truncated file."""
    from PIL import Image

    with atomic_path(path) as partial:
        Image.fromarray(image).save(partial, format="PNG")
