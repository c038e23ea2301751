"""Image classification metrics: the streaming `MacroAUC` and `classification_metrics` for
`compile`, and the test-split scores (`classification_scores`: accuracy, balanced accuracy,
exact ROC AUC, per-class recall and precision, confusion matrix)."""

import math

import keras
import numpy as np
from keras import ops

from keras_litenext.metrics.base import PACKAGE


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
