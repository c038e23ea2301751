"""Segmentation datasets (binary masks or class-index maps): pairing, a pre-flight scan, splits, augmentation and `tf.data`.

A dataset folder holds ``images/`` and ``masks/``, paired by file stem (a mask stem may carry a
suffix, e.g. ``ISIC_0001.jpg`` and ``ISIC_0001_segmentation.png`` with
``masks_suffix="_segmentation"``). PNG, JPEG, BMP and TIFF files, 8 or 16 bit, grey, RGB or RGBA;
DICOM and NIfTI files through `keras_litenext.data.medical` (volumes give one example per slice).
How stored values become the network's input is the dataset's intensity recipe
(`keras_litenext.data.intensity`; default: 8-bit, ``p / 255``).

Pipeline:

1. `find_pairs` lists and pairs the files (sorted by stem).
2. `load_pairs` reads every pair once (the pre-flight scan): it decodes, converts and resizes
   images to uint8 ``(N, H, W, channels)`` and masks, decoded by the task, to uint8
   ``(N, H, W, 1)`` label maps ({0, 1} binary, ``0..K-1`` multi-class).
3. `split_stems` / `save_splits` / `load_splits` / `select` make and reuse a seeded
   train/val/test split.
4. `make_dataset` builds the `tf.data` pipeline (shuffle, batch, float conversion, in-graph
   augmentation from `augmenter`, prefetch) that yields ``(image, mask)`` batches for
   `model.fit`.

Bad-input policy: every problem is reported as a `DatasetError` (a `ValueError`) whose message
names the file(s) and says what is wrong, never as a TensorFlow or OpenCV traceback. The scan
collects *all* problems before raising, one line per file. With ``skip_bad=True`` unusable files
are skipped with one `warnings.warn` line that gives the count, and the scan fails only if
nothing usable is left.
"""

import concurrent.futures
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import warnings

import cv2
import numpy as np
import tensorflow as tf

from keras_litenext.data.intensity import IntensityError
from keras_litenext.data.medical import IMAGE_EXTENSIONS, MEDICAL_EXTENSIONS, SLICE_SEPARATOR, file_stem, is_medical
from keras_litenext.data.medical import load_pair as _load_medical_pair
from keras_litenext.data.medical import split_name as _split_name
from keras_litenext.utils import write_json

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "Pair",
    "augmenter",
    "find_pairs",
    "load_pairs",
    "load_splits",
    "make_dataset",
    "read_image",
    "sample_data_dir",
    "save_splits",
    "scan_dataset",
    "select",
    "split_stems",
]

SPLIT_NAMES = ("train", "val", "test")
_SHOW = 5  # how many names an error message lists before "and N more"


class DatasetError(ValueError):
    """A dataset problem, with a human message naming the file(s) and what is wrong."""


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
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "dsb2018_96")


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


def _examples(names, show=_SHOW):
    """'a, b, c' or 'a, b, c and 7 more'."""
    names = list(names)
    text = ", ".join(names[:show])
    if len(names) > show:
        text += f" and {len(names) - show} more"
    return text


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
        extra = f"; found only other files: {_examples(others)}" if others else ""
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
                f"{len(dups)} stems in {what}/ have several files, which is ambiguous: {_examples(names)}"
            )
    no_mask = sorted(s for s in images if s not in masks)
    if no_mask:
        named = f" named <stem>{masks_suffix}" if masks_suffix else ""
        problems.append(
            f"{len(no_mask)} images in {image_dir} have no mask{named} in {mask_dir}: "
            f"{_examples(images[s] for s in no_mask)}"
        )
    no_image = sorted([s for s in masks if s not in images])
    orphan_masks = sorted([masks_raw[s] for s in unmatched_masks] + [masks[s] for s in no_image])
    if orphan_masks:
        orphan_stems = [_split_name(n)[0] for n in orphan_masks]
        problems.append(
            f"{len(orphan_masks)} masks in {mask_dir} have no image in {image_dir}: {_examples(orphan_masks)}"
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
        warnings.warn(
            f"skipping {skipped} unpaired or ambiguous files in {data_dir}, keeping {len(pairs)} pairs: "
            + "; ".join(problems),
            stacklevel=2,
        )
    return pairs


# --------------------------------------------------------------------------------------------
# Reading and the pre-flight scan
# --------------------------------------------------------------------------------------------


def _size_hw(image_size):
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise DatasetError(f"image_size must be an int or (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise DatasetError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _read(path):
    """Decodes a file as stored (`IMREAD_UNCHANGED`). Raises `_BadFile` with a short reason."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise _BadFile(f"cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    if data.size == 0:
        raise _BadFile("is empty (0 bytes)")
    # OpenCV 4's libjpeg returns a grey-padded image for a truncated JPEG: insist on an end marker
    # (0xFFD9 occurs nowhere else in a JPEG but as the end of the image or of a thumbnail).
    if data[:3].tobytes() == b"\xff\xd8\xff" and data.tobytes().rfind(b"\xff\xd9") < 0:
        raise _BadFile("is a truncated JPEG (no end-of-image marker)")
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "cv2.error"
        raise _BadFile(f"cannot be decoded ({first})") from None
    if array is None:
        raise _BadFile("cannot be decoded (corrupt, truncated or not a PNG/JPEG/BMP/TIFF image)")
    if array.size == 0 or array.shape[0] == 0 or array.shape[1] == 0:
        raise _BadFile(f"has zero size {array.shape}")
    if array.ndim not in (2, 3):
        raise _BadFile(f"has an unsupported layout {array.shape} (multi-page or volume?)")
    return array


class _BadFile(Exception):
    """Internal: a per-file problem (reason text) that becomes one report line."""


@contextlib.contextmanager
def _quiet_opencv():
    """Silences OpenCV's own log lines about bad files: the `DatasetError` says it better."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = logging.getLogLevel() if hasattr(logging, "getLogLevel") else None
    if level is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        if level is not None:
            logging.setLogLevel(level)


def _to_uint8(array):
    """uint8 as is, uint16 divided by 257 (65535 -> 255, intensities keep their meaning),
    float in [0, 1] times 255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype.kind == "f" and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1:
        return np.round(array * 255).astype(np.uint8)
    raise _BadFile(f"has unsupported pixel type {array.dtype} (expected 8/16-bit, or float in [0, 1])")


def _image_channels(array, channels):
    """BGR(A) or grey -> RGB (channels=3) or grey (channels=1), alpha dropped; (H, W, channels)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        array = array[:, :, 0]
    if array.ndim == 2:
        if channels == 3:
            return np.repeat(array[:, :, None], 3, axis=2)
        return array[:, :, None]
    if array.shape[2] not in (3, 4):
        raise _BadFile(f"has {array.shape[2]} channels (expected grey, RGB or RGBA)")
    alpha = array.shape[2] == 4
    if channels == 1:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2GRAY if alpha else cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if alpha else cv2.COLOR_BGR2RGB)


def _convert_image(raw, channels, intensity=None):
    """A decoded image as the model's stored input: the 8-bit recipe exactly as before recipes
    (`_to_uint8`, then channels), any other recipe on the channel-converted raw values (uint16)."""
    if intensity is None or intensity.kind == "uint8":
        return _image_channels(_to_uint8(raw), channels)
    try:
        return intensity.to_array(_image_channels(raw, channels))
    except IntensityError as e:
        raise _BadFile(str(e)) from None


def _resize_image(image, h, w):
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if (h <= ih and w <= iw) else cv2.INTER_LINEAR
    out = cv2.resize(image, (w, h), interpolation=interpolation)
    return out.reshape(h, w, image.shape[2])


def read_image(path, channels=3, intensity=None):
    """Reads one image as `load_pairs` does, at its own size (for prediction).

    Args:
        path: PNG, JPEG, BMP or TIFF file (8 or 16 bit, grey, RGB or RGBA).
        channels: 3 (RGB) or 1 (grey).
        intensity: the run's `intensity.Intensity` (default: 8-bit).

    Returns:
        uint8 array ``(H, W, channels)`` (uint16 for a recipe other than 8-bit).

    Raises:
        DatasetError: one line naming the file and what is wrong with it.
    """
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r}")
    path = os.fspath(path)
    try:
        with _quiet_opencv():
            raw = _read(path)
            top = _low_bit_depth(raw) if intensity is None or intensity.kind == "uint8" else None
            if top is not None:
                _low_bit_depth_warning([(path, top)], 1, os.path.dirname(path) or ".")
            return _convert_image(raw, channels, intensity)
    except _BadFile as e:
        raise DatasetError(f"{path}: {e}") from None
    except Exception as e:  # never let an OpenCV/NumPy traceback escape
        raise DatasetError(f"{path}: cannot be loaded ({type(e).__name__}: {e})".splitlines()[0]) from None


def _low_bit_depth(array):
    """The largest value of a 16-bit image that uses 12 bits or fewer (else None)."""
    if array.dtype == np.uint16:
        top = int(array.max())
        if 0 < top < 4096:
            return top
    return None


def _low_bit_depth_warning(notes, total, where):
    """One line about 16-bit files holding 12-bit (or fewer) values, squashed by the /257 mapping."""
    top = max(v for _, v in notes)
    warnings.warn(
        f"{len(notes)} of {total} images in {where} are 16-bit files with values only up to {top} (12-bit data?): "
        f"16-bit images are divided by 257, which leaves them about {round(top / 257) + 1} grey levels; rescale them "
        f"to the full 16-bit range (or to 8 bit) first, or keep their levels with an intensity recipe (--intensity percentile): {_examples(os.path.basename(p) for p, _ in notes)}",
        stacklevel=3,
    )


def _load_pair(pair, h, w, channels, decode_mask, notes=None, intensity=None):
    """(image, mask, problems): arrays, or None and a list of one-line reasons; a 16-bit image
    with 12-bit values is noted in `notes` as `(path, max)`."""
    from keras_litenext.tasks import MaskError

    problems = []
    image = mask = None
    try:
        raw_image = _read(pair.image)
        top = _low_bit_depth(raw_image) if intensity is None or intensity.kind == "uint8" else None
        if top is not None and notes is not None:
            notes.append((pair.image, top))
        image = _convert_image(raw_image, channels, intensity)
    except _BadFile as e:
        problems.append((pair.image, str(e)))
    try:
        raw_mask = _read(pair.mask)
        try:
            mask = decode_mask(raw_mask)
        except MaskError as e:
            raise _BadFile(str(e)) from None
    except _BadFile as e:
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
    image = _resize_image(image, h, w)
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
               intensity=None, slice_axis=2, empty_slices=1.0):
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

    Returns:
        ``(images, masks, stems, report)``: uint8 ``(N, H, W, channels)`` (uint16 for a recipe
        other than 8-bit), uint8 ``(N, H, W, 1)`` label maps ({0, 1} for binary, ``0..K-1`` for
        multiclass), the kept stems in input order (``<stem>#<slice>`` for the slices of a
        volume), and ``{"pairs": total, "kept": N, "skipped": ["file: reason", ...]}``, plus
        ``"spacing": {stem: [row mm, column mm, slice mm or None]}`` (of the returned arrays)
        for the examples whose file states it (DICOM, NIfTI).

    Raises:
        DatasetError: unreadable, corrupt, truncated, empty or non-binary files, or image and
            mask of different sizes; all collected, one line each, after a summary line (unless
            ``skip_bad``, when it is raised only if no pair is usable). Also for bad arguments.
    """
    pairs = list(pairs)
    h, w = (None, None) if image_size is None else _size_hw(image_size)
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r}")
    if not pairs:
        raise DatasetError("load_pairs got no pairs to load")
    root = os.path.dirname(os.path.dirname(pairs[0].image)) or "."
    if task is None:
        from keras_litenext.tasks import BinaryTask

        task = BinaryTask(mask_threshold=mask_threshold, binary_check=binary_check)
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
                from keras_litenext.data.intensity import Intensity

                return _load_medical_pair(
                    pair, h, w, channels, decode_mask, intensity or Intensity(), slice_axis, empty_slices,
                    read_flat=_read, image_channels=lambda raw, c: _convert_image(raw, c, intensity), resize=_resize_image)
            image, mask, issues = _load_pair(pair, h, w, channels, decode_mask, notes, intensity)
            return ([] if issues else [(pair.stem, image, mask, None)]), issues
        except Exception as e:  # never let an OpenCV/NumPy/pydicom traceback escape
            return [], [(pair.image, f"cannot be loaded ({type(e).__name__}: {e})".splitlines()[0])]

    with _quiet_opencv():
        workers = max(1, min(8, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for pair, (samples, issues) in zip(pairs, pool.map(work, pairs)):
                if issues:
                    problems.extend(f"{_display(path, root)}: {reason}" for path, reason in issues)
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
        _low_bit_depth_warning(sorted(notes), len(pairs), root)
    n_bad = len(pairs) - n_good
    report = {"pairs": len(pairs), "kept": len(kept), "skipped": problems}
    if spacing:
        report["spacing"] = spacing
    if n_bad:
        summary = f"{n_bad} of {len(pairs)} pairs in {root} are unusable"
        if not skip_bad:
            raise DatasetError(
                f"{summary} (pass --skip-bad / skip_bad=True to skip them):\n" + "\n".join(problems)
            )
        if not n_good:
            raise DatasetError(f"{summary}, none left to use:\n" + "\n".join(problems))
        warnings.warn(
            f"{summary}; skipping them and keeping {n_good}: " + "; ".join(problems[:_SHOW])
            + (f"; and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""),
            stacklevel=2,
        )
    n = len(kept)
    return images[:n], masks[:n], kept, report


def scan_dataset(data_dir, image_size, channels=3, masks_suffix="", task=None, skip_bad=False, **load_kwargs):
    """`find_pairs` then `load_pairs`, with every problem of both (pairing and decoding) in one
    `DatasetError`, so one run lists everything to fix. Returns what `load_pairs` returns
    (`load_kwargs`: its intensity / slice_axis / empty_slices)."""
    pairing = []
    pairs = find_pairs(data_dir, masks_suffix=masks_suffix, skip_bad=skip_bad, collect=None if skip_bad else pairing)
    if not pairing:
        return load_pairs(pairs, image_size, channels=channels, task=task, skip_bad=skip_bad, **load_kwargs)
    decoding = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            decoding = load_pairs(pairs, image_size, channels=channels, task=task, skip_bad=True, **load_kwargs)[3]["skipped"]
    except DatasetError as err:  # nothing decodable either
        decoding = str(err).splitlines()[1:]
    summary = f"{data_dir}: {len(pairing)} pairing problem(s)" + (f" and {len(decoding)} unusable file(s)" if decoding else "")
    raise DatasetError(f"{summary} (pass --skip-bad / skip_bad=True to skip them):\n" + "\n".join(pairing + decoding))


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_stems(stems, fractions=(0.8, 0.1, 0.1), seed=42):
    """Deterministic train/val/test split.

    The stems are sorted, shuffled with a Fisher-Yates shuffle driven by
    `random.Random(seed).random()` (whose sequence Python guarantees across versions), and cut
    into consecutive parts. Counts: ``round(n * fraction)`` for val and test, at least 1 for a
    positive fraction, the rest for train (at least 1). The slices of one volume
    (``<volume>#<slice>``, `medical_io`) stay together: the volumes are split, not the slices.

    Args:
        stems: iterable of unique stems.
        fractions: ``(train, val, test)``, non-negative, summing to 1; a 0 fraction gives an
            empty split.
        seed: int.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted; every split with a
        positive fraction is non-empty.

    Raises:
        DatasetError: fractions invalid, duplicate stems, or fewer stems than non-empty splits.
    """
    stems = sorted(stems)
    if len(set(stems)) != len(stems):
        dups = sorted({s for s in stems if stems.count(s) > 1})
        raise DatasetError(f"split_stems got duplicate stems: {_examples(dups)}")
    volumes = {}
    for stem in stems:
        volumes.setdefault(stem.split(SLICE_SEPARATOR)[0], []).append(stem)
    if len(volumes) < len(stems):  # slices of volumes: split the volumes
        parts = split_stems(list(volumes), fractions, seed)
        return {name: sorted(s for v in part for s in volumes[v]) for name, part in parts.items()}
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DatasetError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(fractions) != 3 or any(f < 0 or not math.isfinite(f) for f in fractions):
        raise DatasetError(f"fractions must be three non-negative numbers (train, val, test), got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DatasetError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions):g})")
    if fractions[0] == 0:
        raise DatasetError(f"the train fraction must be positive, got {fractions!r}")
    n = len(stems)
    needed = sum(f > 0 for f in fractions)
    if n < needed:
        raise DatasetError(f"cannot split {n} stems into {needed} non-empty parts {fractions!r}")

    rng = random.Random(seed)
    order = list(stems)
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]

    counts = [0, 0, 0]
    for k in (1, 2):
        if fractions[k] > 0:
            counts[k] = max(1, int(math.floor(n * fractions[k] + 0.5)))
    while n - counts[1] - counts[2] < 1:  # give train at least one
        k = 1 if counts[1] >= counts[2] else 2
        counts[k] -= 1
    counts[0] = n - counts[1] - counts[2]
    a, b = counts[0], counts[0] + counts[1]
    return {"train": sorted(order[:a]), "val": sorted(order[a:b]), "test": sorted(order[b:])}


def _check_splits(splits, where):
    for name in SPLIT_NAMES:
        if name not in splits:
            raise DatasetError(f"{where}: no {name!r} split (expected keys {', '.join(SPLIT_NAMES)})")
        value = splits[name]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise DatasetError(f"{where}: split {name!r} must be a list of stems (strings)")
    seen = {}
    for name in SPLIT_NAMES:
        for stem in splits[name]:
            if stem in seen and seen[stem] != name:
                raise DatasetError(f"{where}: stem {stem!r} is in both {seen[stem]!r} and {name!r}")
            seen[stem] = name


def save_splits(path, splits, **meta):
    """Writes a split file atomically (temporary file in the same folder, then `os.replace`).

    Args:
        path: JSON file to write; missing parent folders are created.
        splits: dict with lists ``"train"``, ``"val"``, ``"test"`` (e.g. from `split_stems`).
        **meta: extra JSON-serialisable entries stored alongside, e.g. ``seed=42, data_dir=...``.

    Raises:
        DatasetError: a split is missing or not a list of strings, a stem is in two splits, or a
            meta key collides with a split name.
    """
    path = os.fspath(path)
    _check_splits(splits, "save_splits")
    clash = sorted(set(meta) & set(SPLIT_NAMES))
    if clash:
        raise DatasetError(f"save_splits: meta keys {clash} collide with split names")
    content = {name: list(splits[name]) for name in SPLIT_NAMES}
    content.update(meta)
    write_json(path, content)


def load_splits(path):
    """Reads a split file written by `save_splits`.

    Args:
        path: JSON file.

    Returns:
        dict with ``"train"``, ``"val"``, ``"test"`` lists plus the stored meta entries.

    Raises:
        DatasetError: the file is missing or not valid JSON, or the splits are malformed.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"split file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"split file {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(content, dict):
        raise DatasetError(f"split file {path} must hold a JSON object with train/val/test lists")
    _check_splits(content, f"split file {path}")
    return content


def select(stems_in_order, images, masks, wanted_stems, name="split"):
    """The rows of ``images``/``masks`` for ``wanted_stems``, in that order.

    Args:
        stems_in_order: stems of the rows of ``images`` and ``masks`` (from `load_pairs`).
        images: array ``(N, ...)``.
        masks: array ``(N, ...)``.
        wanted_stems: stems to take (e.g. ``load_splits(path)["val"]``).
        name: what the stems are, for the error message (e.g. ``"val split"``).

    Returns:
        ``(images[idx], masks[idx])``.

    Raises:
        DatasetError: some wanted stems are not loaded (names the first few and the count).
    """
    index = {stem: i for i, stem in enumerate(stems_in_order)}
    wanted_stems = list(wanted_stems)
    missing = [s for s in wanted_stems if s not in index]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(wanted_stems)} stems of the {name} are not in the loaded dataset: "
            f"{_examples(missing)} (removed files, pairs skipped as unusable, or a split file made "
            "for another dataset?)"
        )
    idx = np.asarray([index[s] for s in wanted_stems], dtype=np.int64)
    return images[idx], masks[idx]


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------

# 3x3 binomial kernel (a Gaussian of sigma ~0.85), per channel for depthwise_conv2d.
_BLUR_KERNEL = (np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0).astype(np.float32)


def _geometry(u, height, width, rotation, flip, scale):
    """Per-image projective transforms (output pixel -> input pixel) for ImageProjectiveTransformV3.

    ``input = c + R(angle) F (output - c) / zoom`` with c the image centre, F the flips, so every
    transform is one resampling.
    """
    ones = tf.ones_like(u[:, 0])
    fh = tf.where(u[:, 0] < 0.5, -ones, ones) if flip else ones
    fv = tf.where(u[:, 1] < 0.5, -ones, ones) if flip else ones
    angle = (2.0 * u[:, 2] - 1.0) * (rotation * math.pi / 180.0)
    zoom = 1.0 + (2.0 * u[:, 3] - 1.0) * scale
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * fh, -sin * fv, sin * fh, cos * fv
    cx = tf.cast(width - 1, tf.float32) / 2.0
    cy = tf.cast(height - 1, tf.float32) / 2.0
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _warp(images, transforms, interpolation):
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation=interpolation, fill_mode="REFLECT",
    )


class _Augmenter:
    """See `augmenter`."""

    def __init__(self, seed, rotation, flip, scale, brightness, contrast, blur):
        self.seed = seed
        self.config = dict(seed=seed, rotation=rotation, flip=flip, scale=scale,
                           brightness=brightness, contrast=contrast, blur=blur)
        self._generator = None

    def __repr__(self):
        return "augmenter(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    def _next_seed(self):
        if self._generator is None:  # created on first use, eagerly or while tracing
            with tf.init_scope():
                self._generator = (
                    tf.random.Generator.from_seed(self.seed) if self.seed is not None
                    else tf.random.Generator.from_non_deterministic_state()
                )
        return self._generator.uniform_full_int([2], tf.int64)

    def __call__(self, image, mask, seed=None):
        c = self.config
        no_mask = mask is None  # image-only (classification): the mask steps are left out
        image = tf.cast(tf.convert_to_tensor(image), tf.float32)
        mask = image[..., :1] if no_mask else tf.cast(tf.convert_to_tensor(mask), tf.float32)
        single = image.shape.rank == 3
        if single:
            image, mask = image[None], mask[None]
        if image.shape.rank != 4 or mask.shape.rank != 4:
            raise ValueError(
                f"augment expects (H, W, C) or (B, H, W, C) image and mask, got {image.shape} and {mask.shape}"
            )
        if seed is None:
            seed = self._next_seed()
        seed = tf.reshape(tf.cast(seed, tf.int64), [2])
        shape = tf.shape(image)
        u = tf.random.stateless_uniform([shape[0], 8], seed)

        if c["flip"] or c["rotation"] or c["scale"]:
            transforms = _geometry(u, shape[1], shape[2], c["rotation"], c["flip"], c["scale"])
            image = _warp(image, transforms, "BILINEAR")
            if not no_mask:
                mask = _warp(mask, transforms, "NEAREST")

        if c["brightness"] or c["contrast"]:
            # x * k + (mean * (1 - k) + delta): contrast around the per-channel mean, then brightness.
            k = tf.reshape(1.0 + (2.0 * u[:, 4] - 1.0) * c["contrast"], [-1, 1, 1, 1])
            delta = tf.reshape((2.0 * u[:, 5] - 1.0) * c["brightness"], [-1, 1, 1, 1])
            offset = delta
            if c["contrast"]:
                offset = tf.reduce_mean(image, axis=[1, 2], keepdims=True) * (1.0 - k) + delta
            image = image * k + offset

        if c["blur"]:
            channels = image.shape[-1] or tf.shape(image)[3]
            kernel = tf.tile(tf.constant(_BLUR_KERNEL)[:, :, None, None], [1, 1, channels, 1])
            padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
            blurred = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")
            strength = tf.where(u[:, 6] < c["blur"], 0.25 + 0.75 * u[:, 7], tf.zeros_like(u[:, 7]))
            image = image + tf.reshape(strength, [-1, 1, 1, 1]) * (blurred - image)

        image = tf.clip_by_value(image, 0.0, 1.0)
        if no_mask:
            return (image[0] if single else image), None
        mask = tf.round(mask)  # nearest sampling copies labels; rounding only guards float noise
        if single:
            image, mask = image[0], mask[0]
        return image, mask


def augmenter(seed=None, rotation=20, flip=True, scale=0.1, brightness=0.1, contrast=0.1, blur=0.5):
    """In-graph augmentation for ``(image, mask)`` float tensors, single or batched.

    Geometry, identical for image and mask and applied as ONE resampling (a composed projective
    transform, `tf.raw_ops.ImageProjectiveTransformV3`, reflect padding): independent horizontal
    and vertical flips, a rotation in ``[-rotation, rotation]`` degrees and a zoom in
    ``[1 - scale, 1 + scale]``; images are sampled bilinearly, masks with nearest neighbour, so
    label maps keep exactly their values ({0, 1} or class indices; no class id is interpolated). Then, on the image only: contrast ``k`` in
    ``[1 - contrast, 1 + contrast]`` around the per-channel mean and a brightness shift in
    ``[-brightness, brightness]`` (the semantics of Keras `RandomContrast` / `RandomBrightness`
    with ``value_range=(0, 1)``), and with probability ``blur`` a 3x3 Gaussian blur mixed in at a
    random strength in [0.25, 1]; the image is clipped to [0, 1]. Every parameter is drawn per
    image; a 0/False argument leaves that step out.

    This fuses the work of Keras' RandomFlip, RandomRotation, RandomZoom, RandomBrightness,
    RandomContrast and RandomGaussianBlur: chained, those layers resample three times and ran
    about 2x slower on 2 CPU cores.

    Args:
        seed: int seed of the draws for calls without a per-call ``seed`` (a stateful
            `tf.random.Generator`); None for a non-deterministic start.
        rotation: maximum rotation in degrees (either way).
        flip: random horizontal and vertical flips.
        scale: maximum zoom, as a fraction (either way).
        brightness: maximum brightness shift, as a fraction of the [0, 1] range.
        contrast: maximum contrast change.
        blur: probability of blurring an image.

    Returns:
        callable ``augment(image, mask, seed=None) -> (image, mask)``; ``mask=None`` augments the
        image alone and returns ``(image, None)`` (classification). Inputs: images in [0, 1]
        and label maps (masks in {0, 1} or class indices), shaped ``(H, W, C)`` or ``(B, H, W, C)``. Outputs: float32, same
        shapes, image in [0, 1], mask values exactly those of the input. Given ``seed`` (an int tensor of shape
        (2,)), the result is a pure function of inputs and seed, which is how `make_dataset`
        keeps parallel augmentation deterministic. Pure TensorFlow ops: usable in `tf.data.map`
        and `tf.function` (no `py_function`).
    """
    for name, value, low, high in (("rotation", rotation, 0, 180), ("scale", scale, 0, 0.9),
                                   ("brightness", brightness, 0, 1), ("contrast", contrast, 0, 1),
                                   ("blur", blur, 0, 1)):
        if not low <= value <= high:
            raise ValueError(f"augmenter: {name} must be in [{low}, {high}], got {value!r}")
    return _Augmenter(seed, float(rotation), bool(flip), float(scale), float(brightness),
                      float(contrast), float(blur))


# --------------------------------------------------------------------------------------------
# tf.data
# --------------------------------------------------------------------------------------------


def _accepts_seed(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def make_dataset(images, masks, batch_size, augment=None, shuffle=False, seed=None, repeat=False,
                 drop_remainder=False, binary=True):
    """`tf.data` pipeline of ``(image, mask)`` batches for `model.fit`.

    ``from_tensor_slices`` (the uint8 arrays stay uint8 in memory) -> shuffle (whole dataset,
    seeded, reshuffled each epoch) -> repeat -> batch -> map (image float32 in [0, 1]: uint8
    ``/ 255``, uint16 (an intensity recipe's) ``/ 65535``, mask
    float32 in {0, 1} with any non-zero value foreground, then ``augment`` per batch;
    ``num_parallel_calls=AUTOTUNE``, ordered) -> prefetch.

    With a ``seed``, the shuffle order and the augmentation of every batch are deterministic
    (identical for two datasets built alike) yet differ from epoch to epoch: each batch gets a
    per-call seed from ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, passed
    to ``augment`` when it takes a ``seed`` argument (like `augmenter`'s callable).

    Args:
        images: uint8 or uint16 ``(N, H, W, C)`` (or ``(N, H, W)``, treated as C=1).
        masks: uint8 ``(N, H, W, 1)`` or ``(N, H, W)``.
        batch_size: int.
        augment: None or ``augment(image, mask[, seed]) -> (image, mask)`` on batches.
        shuffle: shuffle the examples each epoch.
        seed: int or None.
        repeat: repeat forever (then pass ``steps_per_epoch`` to fit).
        drop_remainder: drop the last partial batch.
        binary: masks are binary (any non-zero value is foreground, 1.0); False keeps the
            values as class indices (multi-class label maps).

    Returns:
        `tf.data.Dataset` of ``(float32 (B, H, W, C), float32 (B, H, W, 1))``.

    Raises:
        ValueError: inconsistent shapes or a non-positive batch size.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"make_dataset expects uint8 or uint16 images (as load_pairs returns), got {images.dtype}")
    full_scale = 255.0 if images.dtype == np.uint8 else 65535.0  # intensity.to_float
    if images.ndim == 3:
        images = images[..., None]
    if masks.ndim == 3:
        masks = masks[..., None]
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 1:
        raise ValueError(
            f"make_dataset expects images (N, H, W, C) and masks (N, H, W, 1), got {images.shape} and {masks.shape}"
        )
    if images.shape[:3] != masks.shape[:3]:
        raise ValueError(f"make_dataset: images {images.shape} and masks {masks.shape} do not match")
    if len(images) == 0:
        raise ValueError("make_dataset got no examples")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    batch_size = int(batch_size)

    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def to_float(image, mask):
        mask = tf.cast(mask > 0, tf.float32) if binary else tf.cast(mask, tf.float32)
        return tf.cast(image, tf.float32) / full_scale, mask

    height, width = images.shape[1:3]

    def static(batch):  # augmenting a batch of unknown size loses the static height and width
        return tf.nest.map_structure(lambda t: tf.ensure_shape(t, [None, height, width, t.shape[-1]]), batch)

    if augment is None:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif _accepts_seed(augment):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

        def fn(batch, call_seed):
            image, mask = to_float(*batch)
            return static(augment(image, mask, seed=call_seed))

        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        def fn(image, mask):
            return static(augment(*to_float(image, mask)))

        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
