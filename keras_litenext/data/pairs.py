"""Segmentation dataset folders: the bundled sample, and listing and pairing ``images/`` with ``masks/``.

A dataset folder holds ``images/`` and ``masks/``, paired by file stem (a mask stem may carry a
suffix, e.g. ``ISIC_0001.jpg`` and ``ISIC_0001_segmentation.png`` with
``masks_suffix="_segmentation"``); extensions may differ. Image files and DICOM/NIfTI files
(`keras_litenext.data.medical`) are listed; hidden and other files are ignored.
"""

import dataclasses
import os

from keras_litenext.data.errors import DatasetError, examples
from keras_litenext.data.medical import (
    IMAGE_EXTENSIONS,
    MEDICAL_EXTENSIONS,
    file_stem,
    is_medical,
)
from keras_litenext.data.medical import split_name as _split_name
from keras_litenext.notes import note


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its mask.

    Attributes:
        stem: the image file name without extension (the pairing key).
        image: path of the image file.
        mask: path of the mask file.
    """

    stem: str
    image: str
    mask: str


def sample_data_dir():
    """Path of the small dataset bundled with the package (96x96 DSB2018 nuclei).

    Returns:
        str, ``<package>/assets/dsb2018_96`` (with ``images/`` and ``masks/`` inside).
    """
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "dsb2018_96")


def _list_images(folder, data_dir):
    """`{stem: file name}` of the image files directly in `folder` (hidden files ignored)."""
    if not os.path.isdir(folder):
        raise DatasetError(
            f"{folder} does not exist or is not a folder (a dataset folder needs images/ and masks/ "
            f"subfolders; got {data_dir})"
        )
    by_stem, duplicates, others = {}, {}, []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not os.path.isfile(os.path.join(folder, name)):
            continue
        path = os.path.join(folder, name)
        stem, ext = file_stem(path)
        if ext.lower() not in IMAGE_EXTENSIONS and not is_medical(path):
            others.append(name)
            continue
        if stem in by_stem:
            duplicates.setdefault(stem, [by_stem[stem]]).append(name)
        else:
            by_stem[stem] = name
    if not by_stem:
        extra = f"; found only other files: {examples(others)}" if others else ""
        raise DatasetError(f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)}){extra}")
    return by_stem, duplicates


def _suggest_suffix(mask_stems, image_stems):
    """A ' (... pass masks_suffix=...)' hint when unpaired mask stems are an image stem plus a suffix."""
    for stem in mask_stems:
        for i in range(len(stem) - 1, 0, -1):
            if stem[:i] in image_stems:
                suffix = stem[i:]
                return f" (the masks look named <stem>{suffix}: pass masks_suffix={suffix!r})"
    return ""


def find_pairs(data_dir, masks_suffix="", skip_bad=False, collect=None):
    """Pairs the files of ``data_dir/images`` and ``data_dir/masks`` by stem.

    A mask ``<stem><masks_suffix>.<ext>`` belongs to the image ``<stem>.<ext>``; extensions may
    differ (``.jpg`` image, ``.png`` mask). Hidden files and files without an image extension are
    ignored.

    Args:
        data_dir: dataset folder with ``images/`` and ``masks/`` subfolders.
        masks_suffix: what mask stems add to image stems, e.g. ``"_segmentation"`` (ISIC).
        skip_bad: skip unpaired or ambiguous files (one warning with the count) instead of raising.
        collect: a list: the pairing problems are appended to it (one line each) and the usable
            pairs returned, for a caller that reports them with other problems (`scan_dataset`).

    Returns:
        list of `Pair`, sorted by stem, never empty.

    Raises:
        DatasetError: a folder is missing or holds no image files, an image has no mask, a mask
            has no image, or two files share a stem (unless ``skip_bad``); no pair at all.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DatasetError(f"dataset folder {data_dir} does not exist or is not a folder")
    image_dir = os.path.join(data_dir, "images")
    mask_dir = os.path.join(data_dir, "masks")
    images, image_dups = _list_images(image_dir, data_dir)
    masks_raw, mask_dups = _list_images(mask_dir, data_dir)

    masks, unmatched_masks = {}, []
    for stem, name in masks_raw.items():
        if masks_suffix and not stem.endswith(masks_suffix):
            unmatched_masks.append(stem)
            continue
        key = stem[: len(stem) - len(masks_suffix)] if masks_suffix else stem
        masks[key] = name

    problems = []
    for what, dups in (("images", image_dups), ("masks", mask_dups)):
        if dups:
            names = [" / ".join(v) for v in dups.values()]
            problems.append(
                f"{len(dups)} stems in {what}/ have several files, which is ambiguous: {examples(names)}"
            )
    no_mask = sorted(s for s in images if s not in masks)
    if no_mask:
        named = f" named <stem>{masks_suffix}" if masks_suffix else ""
        problems.append(
            f"{len(no_mask)} images in {image_dir} have no mask{named} in {mask_dir}: "
            f"{examples(images[s] for s in no_mask)}"
        )
    no_image = sorted([s for s in masks if s not in images])
    orphan_masks = sorted([masks_raw[s] for s in unmatched_masks] + [masks[s] for s in no_image])
    if orphan_masks:
        orphan_stems = [_split_name(n)[0] for n in orphan_masks]
        problems.append(
            f"{len(orphan_masks)} masks in {mask_dir} have no image in {image_dir}: {examples(orphan_masks)}"
            + _suggest_suffix(orphan_stems, images)
        )

    ambiguous = set(image_dups) | {k for k in masks if (k + masks_suffix) in mask_dups}
    pairs = [
        Pair(stem, os.path.join(image_dir, images[stem]), os.path.join(mask_dir, masks[stem]))
        for stem in sorted(images)
        if stem in masks and not ((skip_bad or collect is not None) and stem in ambiguous)
    ]
    if problems and collect is not None and pairs and not skip_bad:
        collect.extend(problems)
        return pairs
    if problems:
        if not skip_bad or not pairs:
            hint = "" if skip_bad else " (pass --skip-bad / skip_bad=True to skip unpaired files)"
            if not pairs:
                hint = f"; no image/mask pair found in {data_dir}"
            raise DatasetError("\n".join(problems) + hint)
        n_files = sum(len(v) - 1 for d in (image_dups, mask_dups) for v in d.values())
        skipped = len(images) + len(masks_raw) + n_files - 2 * len(pairs)
        note(
            f"skipping {skipped} unpaired or ambiguous files in {data_dir}, keeping {len(pairs)} pairs: "
            + "; ".join(problems),
            stacklevel=2,
        )
    return pairs
