"""Per-image segmentation metrics: Dice, IoU, precision, recall and HD95, binary and multi-class.

Every metric is computed on hard masks, per image, and then averaged over images, as in the
LiteNeXt evaluation (Tran et al., 2024, arXiv:2405.15779; the authors' `eval.py`):

- binary model (one output channel): prediction `P`: `sigmoid(logit) > threshold` (for
  `threshold=0.5`, `logit > 0`); ground truth `G`: `mask > 0.5`;
- multi-class model (`K > 1` channels): the prediction is the arg-max over the channels and the
  ground truth a class-index map (`0..K-1`, 0 the background); each foreground class `c` is
  scored as the binary pair `P = (pred == c)`, `G = (mask == c)`;
- `Dice = 2|P∩G| / (|P| + |G|)`, `IoU = |P∩G| / |P∪G|`, `precision = |P∩G| / |P|`,
  `recall = |P∩G| / |G|`; an empty prediction has precision 0 when `G` is not empty (the
  reference's torchmetrics default, `zero_division=0`);
- HD95 (`hausdorff95`, NumPy side only): the 95th percentile symmetric Hausdorff distance
  between the surfaces of `P` and `G`, in pixels (or in `spacing` units), MONAI's
  `compute_hausdorff_distance(percentile=95)`; a non-empty `G` predicted empty scores the image
  diagonal `sqrt(H² + W²)`, a finite worst case.

Multi-class: an image's value of a metric is the MEAN OVER THE FOREGROUND CLASSES 1..K-1 present
in its ground truth (the background is excluded, as MONAI's `include_background=False`); the
per-class values (`dice_{class_name}`, ...) are averaged over the images where the class is
present. With `K = 2` every number equals the binary one of the foreground.

Empty ground truths (an image, or a class in an image), where these ratios are undefined or
meaningless, follow the `empty` policy:

- `"skip"` (default, the reference's): they are not counted, for any metric (NaN per image,
  HD95 included); a multi-class image without any foreground class is not counted;
- `"score"`: they are counted, every overlap metric scoring 1 when the prediction is empty too
  and 0 otherwise, and HD95 0 or the image diagonal.

Two interfaces give the same numbers: streaming `keras.metrics.Metric`s for `compile`/`fit`/
`evaluate` (written with `keras.ops` only, so they run on every backend and under `jit`; no
HD95), and NumPy functions for offline evaluation (`per_image_scores`, `summarize`,
`evaluate_model`).
"""

import math
import re

import cv2
import keras
import numpy as np
from keras import ops

PACKAGE = "keras_litenext"
METRICS = ("dice", "iou", "precision", "recall")
EMPTY_POLICIES = ("skip", "score")


def _check_args(threshold, empty, from_logits):
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
    threshold = float(threshold)
    if from_logits and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1) when from_logits=True, got {threshold}.")
    return threshold


def _logit_threshold(threshold, from_logits):
    """The cut applied to `y_pred`: `logit(threshold)` for logits (0 for 0.5), else `threshold`."""
    return math.log(threshold / (1.0 - threshold)) if from_logits else threshold


def _ratio(numerator, denominator):
    """`numerator / denominator`, 0 where the denominator is 0 (counts: 0 or >= 1)."""
    return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), 0.0)


_SCORES = {
    "dice": lambda tp, n_pred, n_true: _ratio(2.0 * tp, n_pred + n_true),
    "iou": lambda tp, n_pred, n_true: _ratio(tp, n_pred + n_true - tp),
    "precision": lambda tp, n_pred, n_true: _ratio(tp, n_pred),
    "recall": lambda tp, n_pred, n_true: _ratio(tp, n_true),
}


class _PerImageScore(keras.metrics.Metric):
    """Mean over images of a per-image score of hard masks; see the module docstring.

    State: the running sum of the per-image scores of the counted images and their number.
    `result()` is their ratio, 0 before any image was counted.
    """

    _metric = None

    def __init__(self, threshold=0.5, from_logits=True, empty="skip", name=None, dtype=None):
        super().__init__(name=name or self._metric, dtype=dtype)
        self.threshold = _check_args(threshold, empty, from_logits)
        self.from_logits = bool(from_logits)
        self.empty = empty
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch of images.

        Args:
            y_true: masks, `(batch, height, width[, 1])`; `> 0.5` is foreground.
            y_pred: logits (or probabilities with `from_logits=False`), `batch` first, with as
                many pixels per image as `y_true`.
            sample_weight: optional per-image weights, shape `(batch,)`: an image then adds
                `weight * score` to the sum and `weight` to the count.
        """
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        batch = ops.shape(y_pred)[0]
        gt = ops.cast(ops.greater(ops.reshape(y_true, (batch, -1)), 0.5), "float32")
        cut = _logit_threshold(self.threshold, self.from_logits)
        pred = ops.cast(ops.greater(ops.reshape(y_pred, (batch, -1)), cut), "float32")
        tp = ops.sum(pred * gt, axis=1)
        n_pred = ops.sum(pred, axis=1)
        n_true = ops.sum(gt, axis=1)
        nonempty = n_true > 0
        score = _SCORES[self._metric](tp, n_pred, n_true)
        if self.empty == "score":
            score = ops.where(nonempty, score, ops.cast(ops.equal(n_pred, 0.0), "float32"))
            weight = ops.ones_like(score)
        else:
            weight = ops.cast(nonempty, "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(ops.sum(weight * score))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, from_logits=self.from_logits, empty=self.empty)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceScore(_PerImageScore):
    """Mean per-image Dice `2|P∩G| / (|P| + |G|)` of thresholded predictions.

    Args:
        threshold: float, probability above which a pixel is foreground. Defaults to 0.5.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        empty: `"skip"` (default) or `"score"`: the policy for images with an empty ground truth
            (module docstring).
        name: defaults to `"dice"`.
        dtype: the metric's dtype.
    """

    _metric = "dice"


@keras.saving.register_keras_serializable(package=PACKAGE)
class IoUScore(_PerImageScore):
    """Mean per-image IoU (Jaccard) `|P∩G| / |P∪G|` of thresholded predictions.

    Args: as `DiceScore`; `name` defaults to `"iou"`.
    """

    _metric = "iou"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PrecisionScore(_PerImageScore):
    """Mean per-image precision `|P∩G| / |P|`; 0 for an empty prediction of a non-empty mask.

    Args: as `DiceScore`; `name` defaults to `"precision"`.
    """

    _metric = "precision"


@keras.saving.register_keras_serializable(package=PACKAGE)
class RecallScore(_PerImageScore):
    """Mean per-image recall `|P∩G| / |G|` of thresholded predictions.

    Args: as `DiceScore`; `name` defaults to `"recall"`.
    """

    _metric = "recall"


_CLASSES = {"dice": DiceScore, "iou": IoUScore, "precision": PrecisionScore, "recall": RecallScore}


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


def _index_map(y_true, num_classes):
    """int32 class indices `(batch, pixels)` from an index map, or from one-hot `(..., K)` labels."""
    batch = ops.shape(y_true)[0]
    if len(y_true.shape) == 4 and y_true.shape[-1] == num_classes:
        return ops.reshape(ops.cast(ops.argmax(y_true, axis=-1), "int32"), (batch, -1))
    y_true = ops.reshape(y_true, (batch, -1))
    if not keras.backend.standardize_dtype(y_true.dtype).startswith(("int", "uint")):
        y_true = ops.round(ops.cast(y_true, "float32"))
    return ops.cast(y_true, "int32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiClassScore(keras.metrics.Metric):
    """Mean per-image score of one foreground class, or of all present ones, for a softmax model.

    The prediction is the arg-max over the `K` channels of `y_pred` (logits or probabilities,
    the same); `y_true` is a class-index map. Per image and class `c >= 1`, the score is that of
    the binary masks `pred == c` and `true == c` (module docstring). With `class_index=None` an
    image's value is the mean over the foreground classes present in its ground truth, and an
    image with none is not counted; with `class_index=c` it is the score of class `c`, counted on
    the images where `c` is present. Under `empty="score"` every class and image counts, an
    absent class scoring 1 when it is also not predicted and 0 otherwise.

    Args:
        num_classes: int `K >= 2`, background included.
        metric: one of `METRICS`. Defaults to `"dice"`.
        class_index: `None` (mean over the foreground classes, default) or an int in `1..K-1`.
        empty: `"skip"` (default) or `"score"`.
        name: defaults to `metric` (`class_index=None`) or `f"{metric}_class{class_index}"`.
        dtype: the metric's dtype.
    """

    def __init__(self, num_classes, metric="dice", class_index=None, empty="skip", name=None, dtype=None):
        num_classes = int(num_classes)
        if num_classes < 2:
            raise ValueError(f"MultiClassScore needs num_classes >= 2, got {num_classes}.")
        if metric not in _SCORES:
            raise ValueError(f"Unknown metric {metric!r}; available: {', '.join(METRICS)}.")
        if class_index is not None:
            class_index = int(class_index)
            if not 1 <= class_index < num_classes:
                raise ValueError(f"class_index must be in 1..{num_classes - 1}, got {class_index}.")
        if empty not in EMPTY_POLICIES:
            raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}.")
        default = metric if class_index is None else f"{metric}_class{class_index}"
        super().__init__(name=name or default, dtype=dtype)
        self.num_classes = num_classes
        self.metric = metric
        self.class_index = class_index
        self.empty = empty
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch of images.

        Args:
            y_true: class-index map `(batch, height, width[, 1])`, values `0..K-1`.
            y_pred: `(batch, height, width, K)` logits or probabilities.
            sample_weight: optional per-image weights, shape `(batch,)`.
        """
        k = self.num_classes
        y_pred = ops.cast(y_pred, "float32")
        if y_pred.shape[-1] != k:
            raise ValueError(f"Expected predictions with {k} channels, got shape {y_pred.shape}.")
        batch = ops.shape(y_pred)[0]
        pred = ops.one_hot(ops.reshape(ops.argmax(y_pred, axis=-1), (batch, -1)), k, dtype="float32")
        gt = ops.one_hot(_index_map(y_true, k), k, dtype="float32")
        tp = ops.sum(pred * gt, axis=1)[:, 1:]
        n_pred = ops.sum(pred, axis=1)[:, 1:]
        n_true = ops.sum(gt, axis=1)[:, 1:]
        score = _SCORES[self.metric](tp, n_pred, n_true)
        if self.empty == "score":
            present = ops.ones_like(score)
            score = ops.where(n_true > 0, score, ops.cast(ops.equal(n_pred, 0.0), "float32"))
        else:
            present = ops.cast(n_true > 0, "float32")
        if self.class_index is None:
            counted = ops.sum(present, axis=1)
            image_score = _ratio(ops.sum(score * present, axis=1), counted)
            weight = ops.cast(counted > 0, "float32")
        else:
            image_score = score[:, self.class_index - 1]
            weight = present[:, self.class_index - 1]
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(ops.sum(weight * image_score))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, metric=self.metric, class_index=self.class_index, empty=self.empty)
        return config


def get_metrics(names=METRICS, num_classes=1, class_names=None, per_class=True, **kwargs):
    """Metric instances by name, for a model with `num_classes` output channels.

    With `num_classes=1` (sigmoid), the binary `DiceScore`, `IoUScore`, `PrecisionScore` and
    `RecallScore`. With `K > 1` (softmax, arg-max), `MultiClassScore`s of the same names whose
    per-image value is the mean over the foreground classes present, followed (with
    `per_class=True`) by one Dice metric per foreground class named `f"dice_{class_name}"`. The
    monitored name (`val_dice`) is the same for both.

    Args:
        names: iterable of names from `METRICS` (`"dice"`, `"iou"`, `"precision"`, `"recall"`),
            or one name.
        num_classes: int, number of model output channels. Defaults to 1.
        class_names: for `K > 1`, `K` names with the background first (sanitised to lowercase
            `[a-z0-9_]`); defaults to `("background", "class1", ...)`.
        per_class: bool, for `K > 1`, whether to add the per-class Dice metrics. Defaults to True.
        **kwargs: passed to every constructor: `threshold`, `from_logits`, `empty` for `K = 1`;
            `empty` for `K > 1` (`threshold` and `from_logits` do not change an arg-max and are
            ignored there).

    Returns:
        list of `keras.metrics.Metric`.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in _CLASSES]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; available: {', '.join(METRICS)}.")
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if num_classes == 1:
        return [_CLASSES[n](**kwargs) for n in names]
    kwargs.pop("threshold", None)
    kwargs.pop("from_logits", None)
    labels = class_names_for(num_classes, class_names)
    metrics = [MultiClassScore(num_classes, metric=n, **kwargs) for n in names]
    if per_class:
        metrics += [
            MultiClassScore(num_classes, metric="dice", class_index=c, name=f"dice_{labels[c]}", **kwargs)
            for c in range(1, num_classes)
        ]
    return metrics


# ----------------------------------------------------------------------------------------------
# NumPy evaluation
# ----------------------------------------------------------------------------------------------
def _surface(mask):
    """Pixels of a boolean mask with one of their 8 neighbours outside it (outside the image too)."""
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & (eroded == 0)


def _distance_to(surface, spacing):
    """Exact Euclidean distance of every pixel to the nearest `surface` pixel, in pixels or
    `spacing` units (SciPy's `distance_transform_edt`, anisotropic pixels included)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~surface, sampling=spacing)


def _check_spacing(spacing):
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive numbers (row, column), got {spacing}.")
    return spacing


def _spacing_rows(spacing, n):
    """One `(row, column)` spacing (or None) per image from None, one pair, or `n` pairs."""
    if spacing is None:
        return [None] * n
    array = np.asarray(spacing, np.float64)
    if array.ndim == 2:
        if array.shape != (n, 2):
            raise ValueError(f"per-image spacing must have shape ({n}, 2), got {array.shape}.")
        return [_check_spacing(row) for row in array]
    return [_check_spacing(spacing)] * n


def surface_distances(truth, prediction, spacing=None):
    """`(predicted surface -> true surface, true surface -> predicted surface)` distances of two
    non-empty binary masks (surfaces as in `hausdorff95`), in pixels or `spacing` units."""
    surface_true, surface_pred = _surface(truth), _surface(prediction)
    return _distance_to(surface_true, spacing)[surface_pred], _distance_to(surface_pred, spacing)[surface_true]


def average_surface_distance(truth, prediction, spacing=None, empty="skip"):
    """Average symmetric surface distance (ASSD): the mean over both surfaces' pixels of the
    distance to the other surface (MONAI's `compute_average_surface_distance(symmetric=True)`).
    Empty masks as in `hausdorff95`."""
    truth, prediction, spacing, worst = _surface_args(truth, prediction, spacing)
    if not truth.any():
        return math.nan if empty == "skip" else (0.0 if not prediction.any() else worst)
    if not prediction.any():
        return worst
    to_true, to_pred = surface_distances(truth, prediction, spacing)
    return float(np.concatenate([to_true, to_pred]).mean())


def _surface_args(truth, prediction, spacing):
    truth = np.asarray(truth).astype(bool)
    prediction = np.asarray(prediction).astype(bool)
    if truth.ndim != 2 or truth.shape != prediction.shape:
        raise ValueError(
            f"surface metrics need two masks (height, width) of one shape, got {truth.shape}, {prediction.shape}."
        )
    spacing = _check_spacing(spacing)
    sy, sx = spacing or (1.0, 1.0)
    return truth, prediction, spacing, math.hypot(truth.shape[0] * sy, truth.shape[1] * sx)


def hausdorff95(truth, prediction, spacing=None, empty="skip"):
    """95th-percentile symmetric Hausdorff distance between two binary 2-D masks.

    `max(P95 of the distances from each predicted surface pixel to the true surface, P95 of the
    distances from each true surface pixel to the predicted surface)`, MONAI's
    `compute_hausdorff_distance(percentile=95)`. Surface pixels are mask pixels with one of their
    8 neighbours outside the mask (pixels on the image edge included); distances are exact
    Euclidean (SciPy's `distance_transform_edt`). Empty masks: see the module docstring.

    Args:
        truth, prediction: boolean (or 0/1) arrays `(height, width)`.
        spacing: optional `(row, column)` pixel size (e.g. millimetres); distances are in pixels
            when None, and may differ per axis.
        empty: `"skip"` (an empty truth gives NaN) or `"score"` (0 if the prediction is empty too,
            else the image diagonal).

    Returns:
        float.
    """
    try:
        truth, prediction, spacing, diagonal = _surface_args(truth, prediction, spacing)
    except ValueError as err:
        raise ValueError(str(err).replace("surface metrics need", "hausdorff95 needs")) from None
    if not truth.any():
        if empty == "skip":
            return math.nan
        return 0.0 if not prediction.any() else diagonal
    if not prediction.any():
        return diagonal
    to_true, to_pred = surface_distances(truth, prediction, spacing)
    return float(max(np.percentile(to_true, 95), np.percentile(to_pred, 95)))


def _ratio_np(num, den):
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _nanmean_rows(values):
    """Mean of each row over its non-NaN entries; NaN for a row without any."""
    valid = ~np.isnan(values)
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


def _binary_counts(gt, pred):
    """`(tp, n_pred, n_true)` float64 arrays over the last axis of boolean `(..., pixels)` arrays."""
    return (
        np.sum(gt & pred, axis=-1).astype(np.float64),
        np.sum(pred, axis=-1).astype(np.float64),
        np.sum(gt, axis=-1).astype(np.float64),
    )


def _overlap_scores(tp, n_pred, n_true, empty):
    """Dice/IoU/precision/recall arrays, empty ground truths filled by the `empty` policy."""
    scores = {
        "dice": _ratio_np(2.0 * tp, n_pred + n_true),
        "iou": _ratio_np(tp, n_pred + n_true - tp),
        "precision": _ratio_np(tp, n_pred),
        "recall": _ratio_np(tp, n_true),
    }
    empty_gt = n_true == 0
    fill = np.where(n_pred == 0, 1.0, 0.0) if empty == "score" else np.full(n_true.shape, np.nan)
    for values in scores.values():
        values[empty_gt] = fill[empty_gt]
    return scores


def per_image_scores(
    masks,
    logits,
    threshold=0.5,
    empty="skip",
    from_logits=True,
    class_names=None,
    hd95=True,
    spacing=None,
    areas=False,
    surface=False,
):
    """Dice, IoU, precision, recall and HD95 of every image, as NumPy arrays.

    The number of classes is read off the output: `K = logits.shape[-1]` for 4-D `logits`, else
    1. For `K = 1` the prediction is `sigmoid(logit) > threshold` and `masks > 0.5` the ground
    truth. For `K > 1` the prediction is the arg-max over the channels, `masks` is a class-index
    map, each foreground class `c` is scored as the binary pair `(pred == c, mask == c)`, and the
    image's value is the mean over the foreground classes present (module docstring).

    Args:
        masks: ground truth, `(n, height, width[, 1])`: binary masks for `K = 1`, class-index maps
            (values `0..K-1`) for `K > 1`.
        logits: model outputs for the same images, `(n, height, width[, K])` (probabilities with
            `from_logits=False`).
        threshold: float, probability above which a pixel is foreground (`K = 1` only).
            Defaults to 0.5.
        empty: `"skip"` (default; an image or class with an empty ground truth gets NaN) or
            `"score"` (module docstring).
        from_logits: bool, defaults to True. An arg-max does not depend on it.
        class_names: for `K > 1`, `K` names with the background first (sanitised as in
            `get_metrics`); defaults to `("background", "class1", ...)`.
        hd95: bool, whether to compute the HD95 (`hausdorff95`). Defaults to True.
        spacing: optional `(row, column)` pixel size for the HD95, ASSD and areas (e.g. mm), one
            pair for all images or one per image `(n, 2)`; pixels when None.
        areas: add `"area_true"` / `"area_pred"` (binary; for `K > 1` per class,
            `f"area_true_{class_name}"` ...): the pixel count times the pixel area (mm² with a
            spacing in mm), every image counted (0 for an absent class).
        surface: add `"assd"` (`average_surface_distance`, same empty policy as the HD95).

    Returns:
        dict of float64 arrays of shape `(n,)`: `"dice"`, `"iou"`, `"precision"`, `"recall"`,
        `"hd95"`, and for `K > 1` then `f"{metric}_{class_name}"` for every metric and
        foreground class; then the areas and ASSD when asked for.
    """
    threshold = _check_args(threshold, empty, from_logits)
    masks = np.asarray(masks)
    logits = np.asarray(logits, dtype=np.float32)
    k = int(logits.shape[-1]) if logits.ndim == 4 else 1
    n = masks.shape[0] if masks.ndim else 0
    rows = _spacing_rows(spacing, n)
    if k > 1:
        return _multiclass_scores(masks, logits, k, empty, class_names, hd95, rows, areas, surface)
    if logits.shape[0] != n or logits.size != masks.size:
        raise ValueError(f"masks {masks.shape} and logits {logits.shape} do not describe the same images.")
    gt = masks.reshape(n, -1).astype(np.float32) > 0.5
    pred = logits.reshape(n, -1) > np.float32(_logit_threshold(threshold, from_logits))
    counts = _binary_counts(gt, pred)
    scores = _overlap_scores(*counts, empty)
    if hd95 or surface:
        if masks.ndim < 3:
            raise ValueError(f"hd95 needs masks of shape (n, height, width[, 1]), got {masks.shape}.")
        shape = masks.shape[1:3]
        gt, pred = gt.reshape((n, *shape)), pred.reshape((n, *shape))
    if hd95:
        scores["hd95"] = np.array([hausdorff95(g, p, s, empty) for g, p, s in zip(gt, pred, rows)], np.float64)
    if areas:
        pixel = _pixel_areas(rows)
        scores["area_true"], scores["area_pred"] = counts[2] * pixel, counts[1] * pixel
    if surface:
        scores["assd"] = np.array([average_surface_distance(g, p, s, empty) for g, p, s in zip(gt, pred, rows)], np.float64)
    return scores


def _pixel_areas(rows):
    """`(n,)` area of one pixel per image (1 where the spacing is unknown)."""
    return np.array([1.0 if s is None else s[0] * s[1] for s in rows], np.float64)


def _multiclass_scores(masks, logits, k, empty, class_names, hd95, rows, areas=False, surface=False):
    names = class_names_for(k, class_names)
    n, height, width = logits.shape[:3]
    if masks.ndim == 4 and masks.shape[-1] == k:
        masks = np.argmax(masks, axis=-1)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != (n, height, width):
        raise ValueError(f"masks {masks.shape} and logits {logits.shape} do not describe the same images.")
    labels = np.rint(masks).astype(np.int64) if masks.dtype.kind == "f" else masks.astype(np.int64)
    pred = np.argmax(logits, axis=-1)
    classes = np.arange(1, k)
    gt_c = labels.reshape(n, 1, -1) == classes[None, :, None]  # (n, K-1, pixels)
    pred_c = pred.reshape(n, 1, -1) == classes[None, :, None]
    counts = _binary_counts(gt_c, pred_c)
    per_class = _overlap_scores(*counts, empty)  # each (n, K-1)
    shape = (height, width)

    def per_image_class(fn):
        return np.array(
            [[fn(gt_c[i, j].reshape(shape), pred_c[i, j].reshape(shape), rows[i], empty) for j in range(k - 1)] for i in range(n)],
            np.float64,
        ).reshape(n, k - 1)

    if hd95:
        per_class["hd95"] = per_image_class(hausdorff95)
    if surface:
        per_class["assd"] = per_image_class(average_surface_distance)
    scores = {metric: _nanmean_rows(values) for metric, values in per_class.items() if metric != "assd"}
    for metric, values in per_class.items():
        if metric == "assd":
            continue
        for j, name in enumerate(names[1:]):
            scores[f"{metric}_{name}"] = values[:, j].copy()
    if areas:
        pixel = _pixel_areas(rows)[:, None]
        for j, name in enumerate(names[1:]):
            scores[f"area_true_{name}"] = counts[2][:, j] * pixel[:, 0]
            scores[f"area_pred_{name}"] = counts[1][:, j] * pixel[:, 0]
    if surface:
        scores["assd"] = _nanmean_rows(per_class["assd"])
        for j, name in enumerate(names[1:]):
            scores[f"assd_{name}"] = per_class["assd"][:, j].copy()
    return scores


def summarize(scores):
    """Mean and standard deviation of per-image scores, ignoring skipped (NaN) images.

    Args:
        scores: dict of per-image arrays, as returned by `per_image_scores`.

    Returns:
        dict: `{metric: {"mean": float, "std": float}}` for each metric (NaN when no image was
        counted), plus `"images"` (all images), `"counted"` and `"skipped_empty"` (images with an
        empty ground truth under `empty="skip"`).
    """
    summary = {}
    images = counted = 0
    for index, (name, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=np.float64).ravel()
        valid = values[~np.isnan(values)]
        mean = float(valid.mean()) if valid.size else float("nan")
        std = float(valid.std()) if valid.size else float("nan")
        summary[name] = {"mean": mean, "std": std}
        if index == 0:
            images, counted = int(values.size), int(valid.size)
    summary.update(images=images, counted=counted, skipped_empty=images - counted)
    return summary


def _batches(data):
    """`(is_whole_set, images, masks)` NumPy batches from a pair of arrays or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        yield True, np.asarray(data[0]), np.asarray(data[1])
        return
    iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
    for element in iterator:
        yield False, np.asarray(element[0]), np.asarray(element[1])


def evaluate_model(
    model,
    dataset_or_arrays,
    threshold=0.5,
    empty="skip",
    batch_size=8,
    from_logits=True,
    class_names=None,
    hd95=True,
    spacing=None,
    areas=False,
    surface=False,
):
    """Runs a model over a test set and returns the per-image scores of `per_image_scores`.

    Args:
        model: a Keras model whose (first) output is a logit map per image, `(H, W, 1)` or
            `(H, W, K)`.
        dataset_or_arrays: `(images, masks)` NumPy arrays, or an iterable of batches
            `(images, masks[, ...])` such as a batched `tf.data.Dataset` (read with
            `as_numpy_iterator()` when it has one); unbatched elements count as batches of one.
        threshold: float, defaults to 0.5 (binary models).
        empty: `"skip"` (default) or `"score"`; see the module docstring.
        batch_size: int, for arrays. Defaults to 8.
        from_logits: bool, whether the model outputs logits (default) or probabilities.
        class_names: for `K > 1` outputs, `K` names, background first.
        hd95: bool, whether to compute the HD95. Defaults to True.
        spacing: optional `(row, column)` pixel size for the HD95 (ASSD, areas), or one per
            image `(n, 2)` with `(images, masks)` arrays.
        areas, surface: as in `per_image_scores`.

    Returns:
        dict: `{"dice": {"mean", "std"}, "iou": ..., "precision": ..., "recall": ..., "hd95": ...,
        [per-class keys,] "images": n, "counted": m, "skipped_empty": n - m, "per_image":
        {key: list}}`, the per-image lists in input order with NaN for skipped images.
    """
    _check_args(threshold, empty, from_logits)
    input_rank = len(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    collected = {}
    for is_whole_set, images, masks in _batches(dataset_or_arrays):
        if is_whole_set:
            outputs = model.predict(images, batch_size=batch_size, verbose=0)
        else:
            if input_rank is not None and images.ndim == input_rank - 1:
                images, masks = images[None], masks[None]
            outputs = model.predict_on_batch(images)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        outputs = np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float32)
        scores = per_image_scores(
            masks,
            outputs,
            threshold=threshold,
            empty=empty,
            from_logits=from_logits,
            class_names=class_names,
            hd95=hd95,
            spacing=spacing,
            areas=areas,
            surface=surface,
        )
        for name, values in scores.items():
            collected.setdefault(name, []).append(values)
    if not collected:
        collected = {name: [] for name in METRICS}
    per_image = {
        name: np.concatenate(parts) if parts else np.zeros((0,), np.float64) for name, parts in collected.items()
    }
    result = summarize(per_image)
    result["per_image"] = {name: values.tolist() for name, values in per_image.items()}
    return result



# ----------------------------------------------------------------------------------------------
# Image classification (one label per image)
# ----------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class MacroAUC(keras.metrics.AUC):
    """Streaming macro one-vs-rest ROC AUC of image logits `(batch, K)` against class indices.

    The labels are one-hot encoded and the logits go through a softmax, then `keras.metrics.AUC`
    with `multi_label=True` averages the K per-class AUCs (each from `num_thresholds` bins, so
    it approximates the exact `roc_auc` the test split is scored with). With K = 2 the two
    per-class AUCs are equal (p0 = 1 - p1): the number is the binary ROC AUC.
    """

    def __init__(self, num_classes, name="auc", num_thresholds=200, dtype=None, **kwargs):
        for key in ("multi_label", "num_labels", "from_logits", "label_weights"):
            kwargs.pop(key, None)
        num_classes = int(num_classes)
        if num_classes < 2:
            raise ValueError(f"MacroAUC needs num_classes >= 2, got {num_classes}.")
        super().__init__(num_thresholds=num_thresholds, multi_label=True, num_labels=num_classes, name=name,
                         dtype=dtype, **kwargs)
        self.num_classes = num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.round(ops.cast(ops.reshape(y_true, (-1,)), "float32")), "int32")
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")
        probabilities = ops.softmax(ops.cast(y_pred, "float32"), axis=-1)
        return super().update_state(one_hot, probabilities, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        for key in ("multi_label", "num_labels", "from_logits", "label_weights"):
            config.pop(key, None)
        config["num_classes"] = self.num_classes
        return config


def classification_metrics(num_classes):
    """Streaming metrics for an image classifier's `compile`: `accuracy` (arg-max of the logits)
    and `auc` (`MacroAUC`)."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), MacroAUC(num_classes, name="auc")]


def roc_auc(truth, score):
    """Exact ROC AUC of binary `truth` against real `score`: the Mann-Whitney U statistic,
    `P(score of a positive > score of a negative)`, ties counting one half (mid-ranks), which is
    the area under the ROC curve with linear interpolation (scikit-learn's `roc_auc_score`).

    Returns NaN when `truth` holds a single class (the AUC is undefined).
    """
    truth = np.asarray(truth).ravel().astype(bool)
    score = np.asarray(score, np.float64).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"roc_auc: {truth.size} labels but {score.size} scores.")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(score.size, np.float64)
    # mid-ranks (1-based) of tied groups
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], score.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_matrix(truth, predicted, num_classes):
    """`(K, K)` int counts, row = true class, column = predicted class."""
    truth = np.asarray(truth, np.int64).ravel()
    predicted = np.asarray(predicted, np.int64).ravel()
    return np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_scores(labels, probabilities, class_names):
    """Test-split scores of an image classifier.

    Args:
        labels: `(N,)` true class indices.
        probabilities: `(N, K)` class probabilities (softmax of the logits).
        class_names: the K class names.

    Returns:
        dict: `accuracy`; `balanced_accuracy` (the mean of the per-class recalls over the classes
        present in `labels`); `auc`, the macro one-vs-rest ROC AUC (mean over the classes whose
        one-vs-rest AUC is defined, i.e. present and not alone; for K = 2 the binary AUC) and
        `auc_per_class`; `recall_per_class` and `precision_per_class` (`{name: value}`, None
        where undefined); `confusion_matrix` (rows true, columns predicted); `support`
        (`{name: count}`); `images`.
    """
    labels = np.asarray(labels, np.int64).ravel()
    probabilities = np.asarray(probabilities, np.float64)
    k = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape != (labels.size, k):
        raise ValueError(f"classification_scores: expected ({labels.size}, {k}) probabilities, got {probabilities.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"classification_scores: labels outside 0..{k - 1}.")
    predicted = probabilities.argmax(axis=-1) if labels.size else labels
    cm = confusion_matrix(labels, predicted, k)
    support = cm.sum(axis=1)
    predicted_counts = cm.sum(axis=0)
    recall = [float(cm[c, c] / support[c]) if support[c] else float("nan") for c in range(k)]
    precision = [float(cm[c, c] / predicted_counts[c]) if predicted_counts[c] else float("nan") for c in range(k)]
    aucs = [roc_auc(labels == c, probabilities[:, c]) for c in range(k)]

    def nanmean(values):
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    def named(values):
        return {str(n): (None if math.isnan(v) else v) for n, v in zip(class_names, values)}

    return {
        "accuracy": float((predicted == labels).mean()) if labels.size else float("nan"),
        "balanced_accuracy": nanmean(recall),
        "auc": nanmean(aucs),
        "auc_per_class": named(aucs),
        "recall_per_class": named(recall),
        "precision_per_class": named(precision),
        "confusion_matrix": cm.tolist(),
        "support": {str(n): int(s) for n, s in zip(class_names, support)},
        "images": int(labels.size),
    }

__all__ = [
    "EMPTY_POLICIES",
    "METRICS",
    "DiceScore",
    "IoUScore",
    "MacroAUC",
    "MultiClassScore",
    "PrecisionScore",
    "RecallScore",
    "average_surface_distance",
    "class_names_for",
    "classification_metrics",
    "classification_scores",
    "confusion_matrix",
    "default_class_names",
    "evaluate_model",
    "get_metrics",
    "hausdorff95",
    "per_image_scores",
    "roc_auc",
    "summarize",
    "surface_distances",
    "volumes",
]


def volumes(stems, per_image, thickness):
    """Per-volume totals of the per-image areas (`per_image_scores(..., areas=True)`): the slices
    of a volume are the stems ``<volume>#<slice>`` (`medical_io`), each area times its slice
    thickness; in millilitres when areas are in mm² and thicknesses in mm.

    Args:
        stems: the stem of every image, in the order of `per_image`'s lists.
        per_image: `{"area_true": [...], "area_pred": [...], ...}` (per class: `area_true_<class>`).
        thickness: `{stem: slice thickness}`; volumes with a slice of unknown thickness are left out.

    Returns:
        `{volume: {"slices": n, "<key>_ml": value, ...}}`, one `true`/`pred` pair per area key
        (`area_true` -> `true_ml`, `area_pred_<class>` -> `pred_<class>_ml`).
    """
    keys = [k for k in per_image if k.startswith(("area_true", "area_pred"))]
    out = {}
    for i, stem in enumerate(stems):
        volume, sep, _ = str(stem).partition("#")
        if not sep:
            continue
        entry = out.setdefault(volume, {"slices": 0, **{k: 0.0 for k in keys}})
        dz = thickness.get(stem)
        if entry.get("unknown") or dz is None:
            entry["unknown"] = True
            continue
        entry["slices"] += 1
        for k in keys:
            entry[k] += float(per_image[k][i]) * float(dz)
    result = {}
    for volume, entry in out.items():
        if entry.pop("unknown", False):
            continue
        result[volume] = {"slices": entry.pop("slices"),
                          **{k.replace("area_", "") + "_ml": round(v / 1000.0, 6) for k, v in entry.items()}}
    return result
