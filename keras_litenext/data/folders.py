"""Image-classification datasets: an image folder, its pre-flight scan, splits and `tf.data`.

An image-folder dataset holds one sub-folder per class (its name is the class name; classes are
sorted by name, so class ``i`` is the i-th folder in sorted order)::

    FOLDER/normal/*.png      FOLDER/train/normal/*.png   FOLDER/val/...   FOLDER/test/...
    FOLDER/pneumonia/*.png   FOLDER/train/pneumonia/*.png

With a ``train/`` top level (and ``val/``, ``test/``) the official split is used as is; a
missing ``val/`` or ``test/`` is carved out of ``train/`` (seeded and stratified, with its
configured fraction). Without one, the whole folder is split seeded and stratified (`split_images`,
80/10/10 by default: every class is split with `data.split_stems`, so each split keeps the class
proportions). Images may sit in nested folders inside a class folder. PNG, JPEG, BMP and TIFF,
8 or 16 bit, grey, RGB or RGBA, converted and resized as the segmentation reader does
(`data.read_image`: BGR(A) -> RGB or grey; `INTER_AREA` shrinking, `INTER_LINEAR` enlarging).

A file is named by its *stem*: its path relative to the dataset folder, with ``/`` separators
and the extension (``train/normal/img_0001.png``); `splits.json` and the CSV files use it.

Bad-input policy (as `keras_litenext.data`): every problem is a `data.DatasetError` whose first
line names the folder or file. Structural problems (no class sub-folders, an empty class folder,
a single class, a class missing from a split) are one line each; unreadable files are all
collected by the scan, after a summary line, one line per file; with ``skip_bad=True`` they are
skipped with one warning (and a class left empty is an error). Files without an image extension
and hidden files are ignored, their count is in the report.

Reference data set used in the tests and examples: PneumoniaMNIST (MedMNIST v2; Yang et al.,
"MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41, 2023; CC BY 4.0).
"""

import collections
import csv
import os

import numpy as np
import tensorflow as tf

from keras_litenext.data.augment import augmenter
from keras_litenext.data.decode import (
    check_channels,
    convert_image,
    decode_file,
    quiet_opencv,
    read_parallel,
    resize_image,
    size_hw,
)
from keras_litenext.data.errors import (
    BadFile,
    DatasetError,
    examples,
    load_failure,
    unusable,
)
from keras_litenext.data.medical import IMAGE_EXTENSIONS
from keras_litenext.data.pipeline import batched, map_batches, map_seeded
from keras_litenext.data.splits import SPLIT_NAMES, split_stems
from keras_litenext.utils import atomic_path

__all__ = [
    "ImageFolder",
    "ImageFolderData",
    "classification_augmenter",
    "default_image_size",
    "find_image_folder",
    "load_image_folder",
    "make_classification_dataset",
    "probe_size",
    "read_class_names",
    "split_images",
    "write_predictions_csv",
]

ImageFolder = collections.namedtuple("ImageFolder", "root class_names files labels splits ignored")
ImageFolder.__doc__ = """The listing of an image folder (`find_image_folder`): `root`, sorted
`class_names`, `files` (stems, relative paths), `labels` (class index per file), `splits`
(the top-level split folders found, e.g. `("train", "val", "test")`, or `()`) and `ignored`
(the number of non-image and hidden files skipped)."""

ImageFolderData = collections.namedtuple("ImageFolderData", "images labels stems class_names report")
ImageFolderData.__doc__ = """`load_image_folder`'s result: uint8 `images (N, H, W, C)`, int64
`labels (N,)`, `stems` (relative paths), `class_names` and the scan `report`."""


def _is_hidden(name):
    return name.startswith(".") or name.startswith("__")


def _subfolders(folder):
    return sorted(n for n in os.listdir(folder) if not _is_hidden(n) and os.path.isdir(os.path.join(folder, n)))


def _image_files(folder):
    """`(relative paths of image files under folder (recursive, sorted), ignored count)`."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                ignored += 1
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/"))
            else:
                ignored += 1
    return found, ignored


def _split_layout(root):
    """The split folders at the top of `root` (`()` for a flat class layout)."""
    top = _subfolders(root)
    splits = [n for n in top if n.lower() in SPLIT_NAMES]
    if not splits:
        return ()
    others = [n for n in top if n.lower() not in SPLIT_NAMES]
    if others:
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(splits)}) with other folders ({examples(others)}): "
            "put the class folders inside train/, val/ and test/, or use a flat layout of class folders"
        )
    if "train" not in [n.lower() for n in splits]:
        raise DatasetError(f"{root} has {', '.join(splits)}/ but no train/ folder: the split layout needs train/ (val/ and test/ optional)")
    return tuple(splits)


def read_class_names(root):
    """The class names of an image folder (its class sub-folders, sorted), without reading images.

    Raises:
        DatasetError: as `find_image_folder` for the folder structure.
    """
    return find_image_folder(root).class_names


def find_image_folder(root, class_names=None):
    """Lists an image-folder dataset (no image is read; see the module docstring for the layout).

    Args:
        root: the dataset folder.
        class_names: the expected classes (a run's, in its order); the folders must be exactly
            these. Default: the class folders, sorted by name.

    Returns:
        `ImageFolder`.

    Raises:
        DatasetError (one line naming the folder): `root` missing; no class sub-folders; a class
            folder without images; a single class; a class missing from a split folder; class
            folders that differ from `class_names`.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    splits = _split_layout(root)
    bases = [os.path.join(root, s) for s in splits] or [root]
    per_base = {}
    for base in bases:
        classes = _subfolders(base)
        if not classes:
            loose, _ = _image_files(base)
            found = f" (it holds {len(loose)} image files directly)" if loose else ""
            raise DatasetError(
                f"{base} holds no class sub-folders{found}: an image-folder dataset has one sub-folder of images per class, "
                f"e.g. {os.path.join(base, 'normal')}/ and {os.path.join(base, 'pneumonia')}/"
            )
        per_base[base] = classes
    names = sorted(set().union(*per_base.values()))
    if len(names) < 2:
        raise DatasetError(f"{root} has a single class folder ({names[0]}): classification needs at least 2 classes")
    if len(splits) > 1:
        missing = [f"{os.path.relpath(b, root)}/{n}" for b, cs in per_base.items() for n in names if n not in cs]
        if missing:
            raise DatasetError(f"{root}: a class is missing from a split, every split needs every class (missing: {examples(missing)})")
    if class_names is not None:
        expected = [str(n) for n in class_names]
        if sorted(expected) != names:
            raise DatasetError(
                f"{root}'s class folders ({', '.join(names)}) differ from the run's classes ({', '.join(expected)})"
            )
        names = expected
    index = {n: i for i, n in enumerate(names)}
    files, labels, ignored, empty = [], [], 0, []
    for base in bases:
        prefix = os.path.relpath(base, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in per_base[base]:
            found, n_ignored = _image_files(os.path.join(base, name))
            ignored += n_ignored
            if not found:
                empty.append(os.path.join(base, name))
            files += [f"{prefix}{name}/{f}" for f in found]
            labels += [index[name]] * len(found)
    if empty:
        raise DatasetError(
            f"{len(empty)} class folder(s) hold no image files ({', '.join(IMAGE_EXTENSIONS)}): {examples(empty)}"
        )
    return ImageFolder(root, tuple(names), files, np.asarray(labels, np.int64), splits, ignored)


# --------------------------------------------------------------------------------------------
# Reading and the pre-flight scan
# --------------------------------------------------------------------------------------------


def load_image_folder(root, image_size, channels=3, class_names=None, skip_bad=False):
    """Pre-flight scan and load of an image folder: every file read once, converted and resized.

    Args:
        root: the dataset folder (`find_image_folder`).
        image_size: int or `(height, width)`; None keeps each image at its own size (lists).
        channels: 3 (RGB) or 1 (grey); grey files are replicated, colour files converted.
        class_names: the expected classes, in their index order (a run's); default: sorted folders.
        skip_bad: skip unreadable files with one warning instead of raising.

    Returns:
        `ImageFolderData(images, labels, stems, class_names, report)`; `report` is
        `{"files": total, "kept": N, "skipped": ["stem: reason", ...], "ignored": non-image files,
        "splits": top-level split folders, "per_class": {name: count}}`.

    Raises:
        DatasetError: the structural errors of `find_image_folder`; unreadable files, all listed
            one per line after a summary line (unless `skip_bad`); a class left without images
            after skipping.
    """
    listing = find_image_folder(root, class_names=class_names)
    h, w = (None, None) if image_size is None else size_hw(image_size)
    check_channels(channels)
    root = listing.root
    n = len(listing.files)
    images = [None] * n if h is None else np.empty((n, h, w, channels), np.uint8)
    keep, problems = [], []

    def work(stem):
        try:
            image = convert_image(decode_file(os.path.join(root, stem)), channels)
            return (image if h is None else resize_image(image, h, w)), None
        except BadFile as e:
            return None, str(e)
        except Exception as e:  # never let an OpenCV/NumPy traceback escape
            return None, load_failure(e)

    for i, (stem, (image, reason)) in enumerate(zip(listing.files, read_parallel(work, listing.files))):
        if reason is not None:
            problems.append(f"{stem}: {reason}")
            continue
        images[len(keep)] = image
        keep.append(i)
    if problems:
        # a class left empty is reported below, so no "none left" error here
        unusable(f"{len(problems)} of {n} images in {root} are unusable", problems, len(keep), skip_bad, none_left=False)
    labels = listing.labels[keep]
    counts = np.bincount(labels, minlength=len(listing.class_names))
    emptied = [n for n, c in zip(listing.class_names, counts) if c == 0]
    if emptied:
        raise DatasetError(f"{root}: no usable image is left in class folder(s) {', '.join(emptied)} after skipping unreadable files")
    stems = [listing.files[i] for i in keep]
    images = images[: len(keep)]
    report = {"files": n, "kept": len(keep), "skipped": problems, "ignored": listing.ignored, "splits": list(listing.splits),
              "per_class": {name: int(c) for name, c in zip(listing.class_names, counts)}}
    return ImageFolderData(images, labels, stems, listing.class_names, report)


def probe_size(root, per_class=1):
    """`(height, width)`: the largest of the first `per_class` images of each class folder (of
    the train split when there is one), read to find a dataset's native size cheaply."""
    listing = find_image_folder(root)
    seen, h, w = collections.Counter(), 0, 0
    train = [i for i, s in enumerate(listing.files) if not listing.splits or s.split("/", 1)[0].lower() == "train"]
    with quiet_opencv():
        for i in train:
            label = int(listing.labels[i])
            if seen[label] >= per_class:
                continue
            try:
                shape = decode_file(os.path.join(listing.root, listing.files[i])).shape
            except BadFile:
                continue
            seen[label] += 1
            h, w = max(h, shape[0]), max(w, shape[1])
    if not h:
        raise DatasetError(f"{root}: no readable image to take the image size from; pass --image-size")
    return h, w


def default_image_size(native, multiple=1, cap=256):
    """The training size of a classification run without `--image-size`.

    The data's native size (the larger side, `probe_size`) rounded up to the model's size
    multiple, and at least twice that multiple (so the deepest feature map is at least 2x2),
    at most `cap` (rounded down to the multiple): small images (PneumoniaMNIST is 28x28) are not
    blown up to a large default size that adds compute and no information, and large ones are
    trained at the segmentation default of 256.
    """
    m = max(1, int(multiple))
    size = -(-int(native) // m) * m
    size = max(size, 2 * m)
    top = max(m, (int(cap) // m) * m)
    return int(min(size, top))


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_images(stems, labels, fractions=(0.8, 0.1, 0.1), seed=42):
    """Train/val/test stems of an image folder: the official split when the stems carry a
    ``train/`` (``val/``, ``test/``) top level, else a seeded stratified split.

    Stratified: the stems of each class are split on their own with `data.split_stems`
    (`fractions`, `seed`), so each split keeps the class proportions and holds every class.
    Official: ``train/``, ``val/``, ``test/`` are used as is; a missing ``val/`` or ``test/`` is
    carved out of ``train/`` the same stratified way, with the fractions of train and the
    missing splits renormalised (e.g. no ``val/`` and the default fractions: 1/9 of train).

    Returns:
        `{"train", "val", "test"}` lists of stems, sorted.

    Raises:
        DatasetError: a class with fewer images than non-empty splits (named).
    """
    stems = list(stems)
    labels = np.asarray(labels, np.int64).ravel()
    top = [s.split("/", 1)[0].lower() if "/" in s else "" for s in stems]
    official = bool(stems) and all(t in SPLIT_NAMES for t in top) and "train" in top
    fractions = tuple(float(f) for f in fractions)
    if not official:
        return _stratified(stems, labels, fractions, seed)
    out = {name: sorted(s for s, t in zip(stems, top) if t == name) for name in SPLIT_NAMES}
    missing = [name for name in ("val", "test") if not out[name]]
    if missing:
        pick = {"train": fractions[0], **{name: fractions[SPLIT_NAMES.index(name)] for name in missing}}
        total = sum(pick.values())
        sub = tuple(pick.get(name, 0.0) / total for name in SPLIT_NAMES)
        train = [i for i, t in enumerate(top) if t == "train"]
        carved = _stratified([stems[i] for i in train], labels[train], sub, seed)
        out["train"] = carved["train"]
        for name in missing:
            out[name] = carved[name]
    return out


def _stratified(stems, labels, fractions, seed):
    out = {name: [] for name in SPLIT_NAMES}
    needed = sum(f > 0 for f in fractions)
    for c in np.unique(labels):
        members = [s for s, label in zip(stems, labels) if label == c]
        if len(members) < needed:
            folder = members[0].rsplit("/", 1)[0] if members else f"class {c}"
            raise DatasetError(
                f"class folder {folder} has {len(members)} image(s), fewer than the {needed} splits it must be in "
                f"(fractions {', '.join(f'{f:g}' for f in fractions)}): add images or pass --splits"
            )
        part = split_stems(members, fractions=fractions, seed=seed)
        for name in SPLIT_NAMES:
            out[name] += part[name]
    return {name: sorted(v) for name, v in out.items()}


# --------------------------------------------------------------------------------------------
# Augmentation and tf.data
# --------------------------------------------------------------------------------------------


def classification_augmenter(seed=None, rotation=10, flip=True):
    """The image-only augmentation of classification runs: independent horizontal and vertical
    flips and a rotation in `[-rotation, rotation]` degrees (one resampling, reflect padding;
    `data.augmenter` with no zoom, brightness, contrast or blur, and no mask)."""
    return augmenter(seed=seed, rotation=rotation, flip=flip, scale=0.0, brightness=0.0, contrast=0.0, blur=0.0)


def make_classification_dataset(images, labels, batch_size, augment=None, shuffle=False, seed=None, drop_remainder=False):
    """`tf.data` pipeline of `(float32 images (B, H, W, C) in [0, 1], int32 labels (B,))` batches.

    As `data.make_dataset`: uint8 arrays in memory, seeded whole-set shuffle reshuffled each
    epoch, batch, then float conversion and `augment(image, None, seed=...)` per batch with a
    per-batch seed, prefetch.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1).astype(np.int32)
    if images.dtype != np.uint8:
        raise ValueError(f"make_classification_dataset expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"make_classification_dataset: images {images.shape} and labels {labels.shape} do not match")
    if len(images) == 0:
        raise ValueError("make_classification_dataset got no examples")
    ds = batched((images, labels), batch_size, shuffle, seed, drop_remainder=drop_remainder)
    if augment is None:
        ds = map_batches(ds, lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
    else:
        def fn(batch, call_seed):
            x, y = batch
            x, _ = augment(tf.cast(x, tf.float32) / 255.0, None, seed=call_seed)
            return x, y

        ds = map_seeded(ds, fn, seed)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# Predictions as CSV
# --------------------------------------------------------------------------------------------


def write_predictions_csv(path, files, probabilities, class_names, true_labels=None):
    """A CSV of class probabilities, atomically: columns `file`, [`true`,] `predicted`, then one
    column per class name holding its probability (softmax), rows in the order of `files`."""
    probabilities = np.asarray(probabilities, np.float64)
    predicted = probabilities.argmax(axis=-1)
    header = ["file"] + (["true"] if true_labels is not None else []) + ["predicted"] + [str(n) for n in class_names]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i, name in enumerate(files):
                row = [name] + ([class_names[int(true_labels[i])]] if true_labels is not None else [])
                writer.writerow(row + [class_names[int(predicted[i])]] + [f"{p:.6f}" for p in probabilities[i]])
