"""Streaming segmentation metrics for `compile`/`fit`/`evaluate`: per-image Dice, IoU, precision
and recall of hard masks, binary (`DiceScore`, ...) and multi-class (`MultiClassScore`), and
`get_metrics`. Written with `keras.ops` only (every backend, `jit`); the rules are in the
package docstring (`keras_litenext.metrics`)."""

import keras
from keras import ops

from keras_litenext.metrics.base import (
    EMPTY_POLICIES,
    OVERLAP_METRICS,
    PACKAGE,
    check_args,
    class_names_for,
    logit_threshold,
)


class _ImageMean(keras.metrics.Metric):
    """Weighted mean of per-image values: the running sum of `weight * value` and of the weights
    (`total`, `count`). `result()` is their ratio, 0 before any image was counted."""

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def _add(self, values, weight, sample_weight=None):
        """Adds per-image `values` with their `weight` (times the optional per-image `sample_weight`)."""
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(ops.sum(weight * values))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1e-12), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


def _ratio(numerator, denominator):
    """`numerator / denominator`, 0 where the denominator is 0 (counts: 0 or >= 1)."""
    return ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), 0.0)


_SCORES = {
    "dice": lambda tp, n_pred, n_true: _ratio(2.0 * tp, n_pred + n_true),
    "iou": lambda tp, n_pred, n_true: _ratio(tp, n_pred + n_true - tp),
    "precision": lambda tp, n_pred, n_true: _ratio(tp, n_pred),
    "recall": lambda tp, n_pred, n_true: _ratio(tp, n_true),
}


class _PerImageScore(_ImageMean):
    """Mean over images of a per-image score of hard masks; see the package docstring.

    State: the running sum of the per-image scores of the counted images and their number.
    `result()` is their ratio, 0 before any image was counted.
    """

    _metric = None

    def __init__(self, threshold=0.5, from_logits=True, empty="skip", name=None, dtype=None):
        super().__init__(name=name or self._metric, dtype=dtype)
        self.threshold = check_args(threshold, empty, from_logits)
        self.from_logits = bool(from_logits)
        self.empty = empty

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
        cut = logit_threshold(self.threshold, self.from_logits)
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
        self._add(score, weight, sample_weight)

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
            (package docstring).
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
class MultiClassScore(_ImageMean):
    """Mean per-image score of one foreground class, or of all present ones, for a softmax model.

    The prediction is the arg-max over the `K` channels of `y_pred` (logits or probabilities,
    the same); `y_true` is a class-index map. Per image and class `c >= 1`, the score is that of
    the binary masks `pred == c` and `true == c` (package docstring). With `class_index=None` an
    image's value is the mean over the foreground classes present in its ground truth, and an
    image with none is not counted; with `class_index=c` it is the score of class `c`, counted on
    the images where `c` is present. Under `empty="score"` every class and image counts, an
    absent class scoring 1 when it is also not predicted and 0 otherwise.

    Args:
        num_classes: int `K >= 2`, background included.
        metric: one of `OVERLAP_METRICS`. Defaults to `"dice"`.
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
            raise ValueError(f"Unknown metric {metric!r}; available: {', '.join(OVERLAP_METRICS)}.")
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
        self._add(image_score, weight, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, metric=self.metric, class_index=self.class_index, empty=self.empty)
        return config


def get_metrics(names=OVERLAP_METRICS, num_classes=1, class_names=None, per_class=True, **kwargs):
    """Metric instances by name, for a model with `num_classes` output channels.

    With `num_classes=1` (sigmoid), the binary `DiceScore`, `IoUScore`, `PrecisionScore` and
    `RecallScore`. With `K > 1` (softmax, arg-max), `MultiClassScore`s of the same names whose
    per-image value is the mean over the foreground classes present, followed (with
    `per_class=True`) by one Dice metric per foreground class named `f"dice_{class_name}"`. The
    monitored name (`val_dice`) is the same for both.

    Args:
        names: iterable of names from `OVERLAP_METRICS` (`"dice"`, `"iou"`, `"precision"`, `"recall"`),
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
        raise ValueError(f"Unknown metric(s) {unknown}; available: {', '.join(OVERLAP_METRICS)}.")
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

