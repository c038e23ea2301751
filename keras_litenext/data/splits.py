"""Seeded train/val/test splits of stems, the split file (``splits.json``) that keeps them, and
selecting a split's rows from loaded arrays."""

import json
import math
import os
import random

import numpy as np

from keras_litenext.data.errors import DatasetError, examples
from keras_litenext.data.medical import SLICE_SEPARATOR
from keras_litenext.utils import write_json

SPLIT_NAMES = ("train", "val", "test")


def split_stems(stems, fractions=(0.8, 0.1, 0.1), seed=42):
    """Deterministic train/val/test split.

    The stems are sorted, shuffled with a Fisher-Yates shuffle driven by
    `random.Random(seed).random()` (whose sequence Python guarantees across versions), and cut
    into consecutive parts. Counts: ``round(n * fraction)`` for val and test, at least 1 for a
    positive fraction, the rest for train (at least 1). The slices of one volume
    (``<volume>#<slice>``, `data.medical`) stay together: the volumes are split, not the slices.

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
        raise DatasetError(f"split_stems got duplicate stems: {examples(dups)}")
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
            f"{examples(missing)} (removed files, pairs skipped as unusable, or a split file made "
            "for another dataset?)"
        )
    idx = np.asarray([index[s] for s in wanted_stems], dtype=np.int64)
    return images[idx], masks[idx]
