"""What every metric module shares: the overlap-metric names, the empty-ground-truth policies,
the argument checks, and the metric-safe class names (`class_names_for`)."""

import math
import re

PACKAGE = "keras_litenext"  # the `.keras` registration package of every metric
OVERLAP_METRICS = ("dice", "iou", "precision", "recall")  # the per-image overlap scores, in report order
EMPTY_POLICIES = ("skip", "score")


def check_args(threshold, empty, from_logits):
    """`threshold` as a float, after checking it and the `empty` policy."""
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
    threshold = float(threshold)
    if from_logits and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1) when from_logits=True, got {threshold}.")
    return threshold


def logit_threshold(threshold, from_logits):
    """The cut applied to `y_pred`: `logit(threshold)` for logits (0 for 0.5), else `threshold`."""
    return math.log(threshold / (1.0 - threshold)) if from_logits else threshold


def default_class_names(num_classes):
    """`("background", "class1", ..., "class{K-1}")`."""
    return ("background",) + tuple(f"class{c}" for c in range(1, int(num_classes)))


def class_names_for(num_classes, class_names=None):
    """`num_classes` metric-safe names: lowercase, `[a-z0-9_]` (other runs become `_`), unique.

    Args:
        num_classes: int `K`, background included.
        class_names: `K` names, index 0 the background; defaults to `default_class_names(K)`.

    Raises:
        ValueError: for the wrong number of names, or names equal after sanitising.
    """
    num_classes = int(num_classes)
    if class_names is None:
        return default_class_names(num_classes)
    class_names = list(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"class_names needs {num_classes} names (background first), got {len(class_names)}.")
    names = []
    for index, name in enumerate(class_names):
        clean = re.sub(r"[^a-z0-9_]+", "_", str(name).strip().lower()).strip("_")
        names.append(clean or f"class{index}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct after sanitising, got {names}.")
    return tuple(names)

