"""The pre-flight scan of a segmentation dataset: every pair read once, validated, converted and
resized (`load_pairs`), with the pairing problems of `find_pairs` in the same report
(`scan_dataset`).

The scan collects *all* problems before raising, one line per file after a summary line; with
``skip_bad=True`` unusable pairs are skipped with one warning, and it fails only if nothing usable
is left.
"""

import functools
import os
import warnings

import cv2
import numpy as np

from keras_litenext.data.decode import (
    binary_mask,
    check_channels,
    convert_image,
    decode_file,
    low_bit_depth,
    low_bit_depth_warning,
    read_parallel,
    resize_image,
    size_hw,
)
from keras_litenext.data.errors import (
    BadFile,
    DatasetError,
    MaskError,
    load_failure,
    unusable,
)
from keras_litenext.data.intensity import Intensity
from keras_litenext.data.medical import is_medical
from keras_litenext.data.medical import load_pair as _load_medical_pair
from keras_litenext.data.pairs import find_pairs


def _load_pair(pair, h, w, channels, decode_mask, notes=None, intensity=None):
    """(image, mask, problems): arrays, or None and a list of one-line reasons; a 16-bit image
    with 12-bit values is noted in `notes` as `(path, max)`."""
    problems = []
    image = mask = None
    try:
        raw_image = decode_file(pair.image)
        top = low_bit_depth(raw_image) if intensity is None or intensity.kind == "uint8" else None
        if top is not None and notes is not None:
            notes.append((pair.image, top))
        image = convert_image(raw_image, channels, intensity)
    except BadFile as e:
        problems.append((pair.image, str(e)))
    try:
        raw_mask = decode_file(pair.mask)
        try:
            mask = decode_mask(raw_mask)
        except MaskError as e:
            raise BadFile(str(e)) from None
    except BadFile as e:
        problems.append((pair.mask, str(e)))
    if image is not None and mask is not None and image.shape[:2] != mask.shape[:2]:
        problems.append(
            (pair.image, f"is {image.shape[1]}x{image.shape[0]} (WxH) but its mask "
                         f"{os.path.basename(pair.mask)} is {mask.shape[1]}x{mask.shape[0]}")
        )
    if problems:
        return None, None, problems
    if h is None:  # native size
        return image, mask[..., None], []
    image = resize_image(image, h, w)
    if mask.shape[:2] != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask.reshape(h, w, 1), []


def _display(path, root):
    """`images/a.png` relative to the dataset folder when possible, else the path."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def load_pairs(pairs, image_size, channels=3, mask_threshold=0, binary_check=True, skip_bad=False, task=None,
               intensity=None, slice_axis=2, empty_slices=1.0, nonfinite="minimum"):
    """Pre-flight scan and load: reads every pair once, validates, converts and resizes.

    Images: BGR(A) -> RGB, alpha dropped, 16 bit divided by 257 (so 65535 -> 255 and an
    intensity keeps its meaning across files), grey replicated when ``channels=3``, colour
    converted with `cv2.cvtColor` when ``channels=1``; resized with `INTER_AREA` when shrinking,
    `INTER_LINEAR` when enlarging. Masks: colour masks take the max over channels, then
    ``mask > mask_threshold`` (on the stored values: 0-255 for 8 bit, 0-65535 for 16 bit) and
    resized with exact nearest neighbour. Files are decoded on a few threads.

    Args:
        pairs: list of `Pair` (from `find_pairs`).
        image_size: int or ``(height, width)``; None keeps every pair at its own size (then
            lists of arrays are returned instead of stacked arrays).
        channels: 3 (RGB) or 1 (grey).
        mask_threshold: foreground is ``mask > mask_threshold``; 0 means any non-zero value,
            127 suits JPEG masks with compression artefacts.
        binary_check: with the default ``mask_threshold=0``, reject masks with more than two
            distinct values (lossy or interpolated masks need an explicit threshold). A non-zero
            ``mask_threshold`` turns the check off: the caller has said how to binarise.
        skip_bad: skip unusable pairs with one warning instead of raising.
        task: a `keras_litenext.tasks` task whose `decode_mask` turns a stored mask into a label
            map (a class-index map for `multiclass`: a value outside ``0..K-1`` or a colour
            outside its palette is a problem of that file, listed with the values found).
            Default: the binary task with ``mask_threshold`` and ``binary_check``.
        intensity: an `intensity.Intensity` recipe (default 8-bit: the behaviour described
            above); another recipe maps the raw values and stores uint16 images.
        slice_axis: DICOM/NIfTI volumes: the axis of a NIfTI volume the 2-D slices are taken along.
        empty_slices: DICOM/NIfTI volumes: the fraction of slices with an empty label that is
            kept (evenly spaced; 1 keeps all).
        nonfinite: DICOM/NIfTI images: NaN / infinite values read as the volume's lowest finite
            value with one note per file (``"minimum"``), or the file refused (``"error"``).

    Returns:
        ``(images, masks, stems, report)``: uint8 ``(N, H, W, channels)`` (uint16 for a recipe
        other than 8-bit), uint8 ``(N, H, W, 1)`` label maps ({0, 1} for binary, ``0..K-1`` for
        multiclass), the kept stems in input order (``<stem>#<slice>`` for the slices of a
        volume), and ``{"pairs": total, "kept": N, "skipped": ["file: reason", ...]}``, plus
        ``"unreadable": {pair stem: its lines of "skipped"}`` when some pairs were skipped and
        ``"spacing": {stem: [row mm, column mm, slice mm or None]}`` (of the returned arrays)
        for the examples whose file states it (DICOM, NIfTI).

    Raises:
        DatasetError: unreadable, corrupt, truncated, empty or non-binary files, or image and
            mask of different sizes; all collected, one line each, after a summary line (unless
            ``skip_bad``, when it is raised only if no pair is usable). Also for bad arguments.
    """
    pairs = list(pairs)
    h, w = (None, None) if image_size is None else size_hw(image_size)
    check_channels(channels)
    if not pairs:
        raise DatasetError("load_pairs got no pairs to load")
    root = os.path.dirname(os.path.dirname(pairs[0].image)) or "."
    if task is None:  # the binary task's decoding
        decode_mask = functools.partial(binary_mask, mask_threshold=mask_threshold, binary_check=binary_check)
    else:
        decode_mask = task.decode_mask
    dtype = np.uint8 if intensity is None else intensity.dtype

    if h is None:
        images, masks = [None] * len(pairs), [None] * len(pairs)
    else:
        images = np.empty((len(pairs), h, w, channels), dtype)
        masks = np.empty((len(pairs), h, w, 1), np.uint8)
    kept, problems, notes, spacing, n_good = [], [], [], {}, 0

    def work(pair):
        """`([(stem, image, mask, spacing)], issues)`: one example of a 2-D file, one per slice of a volume."""
        try:
            if is_medical(pair.image) or is_medical(pair.mask):
                return _load_medical_pair(
                    pair, h, w, channels, decode_mask, intensity or Intensity(), slice_axis, empty_slices,
                    read_flat=decode_file, image_channels=lambda raw, c: convert_image(raw, c, intensity), resize=resize_image,
                    nonfinite=nonfinite)
            image, mask, issues = _load_pair(pair, h, w, channels, decode_mask, notes, intensity)
            return ([] if issues else [(pair.stem, image, mask, None)]), issues
        except Exception as e:  # never let an OpenCV/NumPy/pydicom traceback escape
            return [], [(pair.image, load_failure(e))]

    unreadable = {}
    for pair, (samples, issues) in zip(pairs, read_parallel(work, pairs)):
        if issues:
            lines = [f"{_display(path, root)}: {reason}" for path, reason in issues]
            problems.extend(lines)
            unreadable[pair.stem] = lines
            continue
        n_good += 1
        for stem, image, mask, pixel_mm in samples:
            if h is not None and len(kept) == len(images):  # a volume gave several slices: grow
                extra = max(len(samples), len(images))
                images = np.concatenate([images, np.empty((extra, *images.shape[1:]), images.dtype)])
                masks = np.concatenate([masks, np.empty((extra, *masks.shape[1:]), masks.dtype)])
            elif h is None and len(kept) == len(images):
                images.append(None)
                masks.append(None)
            images[len(kept)] = image
            masks[len(kept)] = mask
            if pixel_mm is not None:
                spacing[stem] = list(pixel_mm)
            kept.append(stem)

    if notes:
        low_bit_depth_warning(sorted(notes), len(pairs), root)
    n_bad = len(pairs) - n_good
    report = {"pairs": len(pairs), "kept": len(kept), "skipped": problems}
    if unreadable:
        report["unreadable"] = unreadable
    if spacing:
        report["spacing"] = spacing
    if n_bad:
        unusable(f"{n_bad} of {len(pairs)} pairs in {root} are unusable", problems, n_good, skip_bad)
    n = len(kept)
    return images[:n], masks[:n], kept, report


def scan_dataset(data_dir, image_size, channels=3, masks_suffix="", task=None, skip_bad=False, skip_unreadable=False,
                 **load_kwargs):
    """`find_pairs` then `load_pairs`, with every problem of both (pairing and decoding) in one
    `DatasetError`, so one run lists everything to fix. Returns what `load_pairs` returns
    (`load_kwargs`: its intensity / slice_axis / empty_slices / nonfinite). `skip_unreadable`:
    pairs whose files cannot be read are left out and listed in the report (`"skipped"`,
    `"unreadable"`) while pairing problems still follow `skip_bad`."""
    pairing = []
    pairs = find_pairs(data_dir, masks_suffix=masks_suffix, skip_bad=skip_bad, collect=None if skip_bad else pairing)
    if not pairing:
        return load_pairs(pairs, image_size, channels=channels, task=task, skip_bad=skip_bad or skip_unreadable, **load_kwargs)
    decoding = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            decoding = load_pairs(pairs, image_size, channels=channels, task=task, skip_bad=True, **load_kwargs)[3]["skipped"]
    except DatasetError as err:  # nothing decodable either
        decoding = str(err).splitlines()[1:]
    summary = f"{data_dir}: {len(pairing)} pairing problem(s)" + (f" and {len(decoding)} unusable file(s)" if decoding else "")
    raise DatasetError(f"{summary} (pass --skip-bad / skip_bad=True to skip them):\n" + "\n".join(pairing + decoding))
