"""Dataset adapters for image quality datasets (used for fine-tuning the frame extractors).

Each adapter reads its dataset's label files as they ship into :class:`~.base.Labels`; the
framework (:mod:`pipeline.datasets.base`) validates and writes the manifest (one row per
image, ``video_id`` the image's name without suffix).
"""

from __future__ import annotations

from ..errors import DatasetError
from .base import IMAGE_SUFFIXES, Context, Labels, Row, register_dataset, strip_media_suffix
from .readers import as_list, as_text, mat_variables, read_table, read_text, same_length

LIVEC_PRACTICE_IMAGES = 7  # LIVE Challenge: the first 7 entries are the subjects' practice images


@register_dataset(
    "tid2013",
    "mos_with_names.txt ('mos name' lines) + distorted_images/<name>; group = reference (I01..I25, reference_images/)",
    images=True,
)
def _tid2013(ctx: Context) -> Labels:
    """TID2013: ``mos_with_names.txt`` (``<mos> <name>`` per line, e.g. ``5.51429
    i01_01_1.bmp``), images in ``distorted_images/`` (names matched ignoring case). group =
    the reference image (``I01``, as ``reference_images/I01.BMP``), from the name's prefix."""
    path = ctx.find_label_file(("mos_with_names.txt",))
    text, warnings = read_text(path, ctx.name)
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        where = f"{path.name} line {number}"
        if len(parts) != 2:
            problems.append(("malformed line", f"{where}: expected '<mos> <name>', got {line.strip()!r}"))
            continue
        mos, name = parts[0], parts[1].strip()
        rows.append(
            Row(
                strip_media_suffix(name, IMAGE_SUFFIXES),
                (ctx.root / "distorted_images" / name,),
                mos,
                where,
                group=name.split("_", 1)[0].upper(),
            )
        )
    if not rows and not problems:
        raise DatasetError(f"{ctx.name}: label file {path} is empty")
    return Labels(rows, path, problems, warnings)


@register_dataset("kadid10k", "dmos.csv (dist_img,ref_img,dmos) + images/<dist_img>; group = ref_img", images=True)
def _kadid10k(ctx: Context) -> Labels:
    """KADID-10k: ``dmos.csv`` (columns ``dist_img``, ``ref_img``, ``dmos``, ``var``); images
    in ``images/`` (or ROOT). The ``dmos`` value is written as the MOS unchanged (1-5, higher
    is better despite the name). group = the reference image's stem (``I01``)."""
    path = ctx.find_label_file(("dmos.csv",))
    table = read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("dist_img",), "ref": ("ref_img",), "mos": ("dmos",)})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        reference = table.field(fields, cols["ref"])
        rows.append(
            Row(
                strip_media_suffix(name, IMAGE_SUFFIXES),
                (ctx.root / "images" / name, ctx.root / name),
                table.field(fields, cols["mos"]),
                table.where(line),
                group=strip_media_suffix(reference, IMAGE_SUFFIXES) or None,
            )
        )
    return Labels(rows, path, warnings=table.warnings)


@register_dataset(
    "koniq10k", "koniq10k_scores_and_distributions.csv (image_name, MOS) + 1024x768/<image_name>", images=True
)
def _koniq10k(ctx: Context) -> Labels:
    """KonIQ-10k: ``koniq10k_scores_and_distributions.csv`` (columns ``image_name``, ``MOS``
    on 1-5; ``MOS_zscore`` is ignored); images in ``1024x768/`` (the release archive), else
    ``512x384/``, else ROOT. video_id = image name without suffix; no groups."""
    path = ctx.find_label_file(("koniq10k_scores_and_distributions.csv",))
    table = read_table(path, ctx.name)
    cols = table.columns(ctx.name, {"video": ("image_name",), "mos": ("MOS",)})
    rows = []
    for line, fields in table.rows:
        name = table.field(fields, cols["video"])
        rows.append(
            Row(
                strip_media_suffix(name, IMAGE_SUFFIXES),
                (ctx.root / "1024x768" / name, ctx.root / "512x384" / name, ctx.root / name),
                table.field(fields, cols["mos"]),
                table.where(line),
            )
        )
    return Labels(rows, path, warnings=table.warnings)


@register_dataset(
    "livec",
    "Data/AllImages_release.mat + Data/AllMOS_release.mat + Images/<name> (the 7 practice images are left out)",
    images=True,
)
def _livec(ctx: Context) -> Labels:
    """LIVE In the Wild Image Quality Challenge (ChallengeDB_release): ``Data/AllImages_release.mat``
    (cell ``AllImages_release``) and ``Data/AllMOS_release.mat`` (vector ``AllMOS_release``),
    images in ``Images/``. The first 7 entries are the practice images shown to subjects
    (``Images/trainingImages/``) and are left out, as in the published protocol (1162
    images). ``label_file=`` names the AllImages file; AllMOS is read from the same folder."""
    images_path = ctx.find_label_file(("Data/AllImages_release.mat", "AllImages_release.mat"))
    mos_path = images_path.with_name("AllMOS_release.mat")
    if not mos_path.is_file():
        raise DatasetError(f"{ctx.name}: {mos_path} does not exist (it belongs next to {images_path.name})")
    names = [
        as_text(v)
        for v in as_list(
            mat_variables(images_path, ctx.name, ("AllImages_release",))["AllImages_release"], "AllImages_release"
        )
    ]
    scores = as_list(mat_variables(mos_path, ctx.name, ("AllMOS_release",))["AllMOS_release"], "AllMOS_release")
    problems = same_length(ctx.name, images_path, AllImages_release=names, AllMOS_release=scores)
    if len(names) <= LIVEC_PRACTICE_IMAGES:
        problems.append(
            (
                "inconsistent label file",
                f"{images_path.name}: {len(names)} entries, fewer than "
                f"the {LIVEC_PRACTICE_IMAGES} practice images plus one",
            )
        )
    rows = [
        Row(
            strip_media_suffix(name, IMAGE_SUFFIXES),
            (ctx.root / "Images" / name,),
            mos,
            f"{images_path.name} entry {i + 1}",
        )
        for i, (name, mos) in enumerate(zip(names, scores, strict=False))
        if i >= LIVEC_PRACTICE_IMAGES
    ]
    return Labels(rows, images_path, problems)
