"""Per-image segmentation metrics: Dice, IoU, precision and recall of binary masks.

Every metric is computed on hard masks, per image, and then averaged over images, as in the
LiteNeXt evaluation (Tran et al., 2024, arXiv:2405.15779; the authors' `eval.py`):

- prediction `P`: `sigmoid(logit) > threshold` (for `threshold=0.5`, `logit > 0`); ground truth
  `G`: `mask > 0.5`;
- `Dice = 2|P∩G| / (|P| + |G|)`, `IoU = |P∩G| / |P∪G|`, `precision = |P∩G| / |P|`,
  `recall = |P∩G| / |G|`;
- an empty prediction has precision 0 when `G` is not empty (the reference's torchmetrics
  default, `zero_division=0`).

Images whose ground truth is empty, where these ratios are undefined or meaningless, follow the
`empty` policy:

- `"skip"` (default, the reference's): they are not counted, for any metric;
- `"score"`: they are counted, and every metric scores 1 when the prediction is empty too and
  0 otherwise.

Two interfaces give the same numbers: streaming `keras.metrics.Metric`s for `compile`/`fit`/
`evaluate` (written with `keras.ops` only, so they run on every backend and under `jit`), and
NumPy functions for offline evaluation (`per_image_scores`, `summarize`, `evaluate_model`).
"""

import math

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


def get_metrics(names=METRICS, **kwargs):
    """Metric instances by name.

    Args:
        names: iterable of names from `METRICS` (`"dice"`, `"iou"`, `"precision"`, `"recall"`),
            or one name.
        **kwargs: passed to every constructor (`threshold`, `from_logits`, `empty`).

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
    return [_CLASSES[n](**kwargs) for n in names]


# ----------------------------------------------------------------------------------------------
# NumPy evaluation
# ----------------------------------------------------------------------------------------------
def per_image_scores(masks, logits, threshold=0.5, empty="skip", from_logits=True):
    """Dice, IoU, precision and recall of every image, as NumPy arrays.

    Args:
        masks: ground-truth masks, `(n, height, width[, 1])`; `> 0.5` is foreground.
        logits: model outputs for the same images (probabilities with `from_logits=False`), with
            as many pixels per image as `masks`.
        threshold: float, probability above which a pixel is foreground. Defaults to 0.5.
        empty: `"skip"` (default; images with an empty ground truth get NaN) or `"score"`
            (module docstring).
        from_logits: bool, defaults to True.

    Returns:
        dict mapping each of `METRICS` to a float64 array of shape `(n,)`.
    """
    threshold = _check_args(threshold, empty, from_logits)
    masks = np.asarray(masks)
    logits = np.asarray(logits, dtype=np.float32)
    n = masks.shape[0] if masks.ndim else 0
    if logits.shape[0] != n or logits.size != masks.size:
        raise ValueError(f"masks {masks.shape} and logits {logits.shape} do not describe the same images.")
    gt = masks.reshape(n, -1).astype(np.float32) > 0.5
    pred = logits.reshape(n, -1) > np.float32(_logit_threshold(threshold, from_logits))
    tp = np.sum(gt & pred, axis=1).astype(np.float64)
    n_pred = np.sum(pred, axis=1).astype(np.float64)
    n_true = np.sum(gt, axis=1).astype(np.float64)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    scores = {
        "dice": ratio(2.0 * tp, n_pred + n_true),
        "iou": ratio(tp, n_pred + n_true - tp),
        "precision": ratio(tp, n_pred),
        "recall": ratio(tp, n_true),
    }
    empty_gt = n_true == 0
    fill = np.where(n_pred == 0, 1.0, 0.0) if empty == "score" else np.full(n, np.nan)
    for values in scores.values():
        values[empty_gt] = fill[empty_gt]
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


def evaluate_model(model, dataset_or_arrays, threshold=0.5, empty="skip", batch_size=8, from_logits=True):
    """Runs a model over a test set and returns per-image Dice, IoU, precision and recall.

    Args:
        model: a Keras model whose (first) output is a logit map per image.
        dataset_or_arrays: `(images, masks)` NumPy arrays, or an iterable of batches
            `(images, masks[, ...])` such as a batched `tf.data.Dataset` (read with
            `as_numpy_iterator()` when it has one); unbatched elements count as batches of one.
        threshold: float, defaults to 0.5.
        empty: `"skip"` (default) or `"score"`; see the module docstring.
        batch_size: int, for arrays. Defaults to 8.
        from_logits: bool, whether the model outputs logits (default) or probabilities.

    Returns:
        dict: `{"dice": {"mean", "std"}, "iou": ..., "precision": ..., "recall": ...,
        "images": n, "counted": m, "skipped_empty": n - m, "per_image": {metric: list}}`, the
        per-image lists in input order with NaN for skipped images.
    """
    _check_args(threshold, empty, from_logits)
    input_rank = len(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    collected = {name: [] for name in METRICS}
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
        scores = per_image_scores(masks, outputs, threshold=threshold, empty=empty, from_logits=from_logits)
        for name in METRICS:
            collected[name].append(scores[name])
    per_image = {
        name: np.concatenate(parts) if parts else np.zeros((0,), np.float64) for name, parts in collected.items()
    }
    result = summarize(per_image)
    result["per_image"] = {name: values.tolist() for name, values in per_image.items()}
    return result


__all__ = [
    "DiceScore",
    "EMPTY_POLICIES",
    "IoUScore",
    "METRICS",
    "PrecisionScore",
    "RecallScore",
    "evaluate_model",
    "get_metrics",
    "per_image_scores",
    "summarize",
]
