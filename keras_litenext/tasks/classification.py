"""The image classification task: K logits per image, softmax."""

import numpy as np

from keras_litenext.tasks.base import softmax, Task, _fmt, register_task


@register_task
class ClassificationTask(Task):
    """Image classification: K logits per image `(batch, K)`, softmax, the arg-max is the class.

    K = 2 is served the same way (two logits, softmax), not by one sigmoid logit: the output,
    the loss and the export contract are then the same for every K.

    - Loss: softmax cross-entropy of the logits against the class index
      (`losses.ClassificationCrossEntropy`, name `"ce"`), with optional class weights and label
      smoothing.
    - Metrics while training: `accuracy` and `auc`, the streaming macro one-vs-rest ROC AUC
      (`metrics.MacroAUC`).
    - Monitored: `val_auc` (max). AUC rather than accuracy because it is threshold-free and does
      not reward predicting the majority class (on PneumoniaMNIST, 74 % of the test images are
      pneumonia: a constant answer has 0.74 accuracy but AUC 0.5), and it moves smoothly where
      accuracy moves in steps of 1 / (validation images), so `best.keras` is less the luck of
      one epoch.
    - Test split (`scores`): accuracy, balanced accuracy, macro AUC (exact, rank-based), per-class
      AUC / recall / precision, the confusion matrix.
    """

    name = "classification"
    kind = "classification"
    activation = "softmax"
    monitor = "val_auc"
    default_loss = "ce"
    LOSSES = ("ce",)

    @property
    def output_channels(self):
        """Logits per image (one per class)."""
        return self.num_classes

    @property
    def foreground_names(self):
        """Every class (there is no background)."""
        return self.class_names

    # -- training -----------------------------------------------------------------------------
    def loss(self, name=None, class_weights=None, label_smoothing=0.0, **_segmentation_settings):
        """Softmax cross-entropy (`"ce"`, the only one; `"cross_entropy"` is accepted too)."""
        from keras_litenext.losses import ClassificationCrossEntropy

        key = (name or self.default_loss).strip().lower().replace("-", "_")
        if key not in ("ce", "cross_entropy"):
            raise ValueError(f"Loss {name!r} is a segmentation loss; the classification task trains with: {', '.join(self.LOSSES)}.")
        weights = None if class_weights is None else [float(w) for w in class_weights]
        return ClassificationCrossEntropy(self.num_classes, class_weights=weights, label_smoothing=float(label_smoothing or 0.0))

    def metrics(self):
        """`accuracy` and `auc` (monitored as `val_auc`)."""
        from keras_litenext.metrics import classification_metrics

        return classification_metrics(self.num_classes)

    # -- decoding predictions -----------------------------------------------------------------
    def probabilities(self, logits):
        """Softmax over the last axis."""
        return softmax(logits)

    def labels(self, logits):
        """`(N,)` int arg-max of logits `(N, K)`."""
        return np.argmax(np.asarray(logits), axis=-1).astype(np.int64)

    labels_from_probabilities = labels

    def scores(self, labels, logits, from_logits=True, **_ignored):
        """Test-split scores (`metrics.classification_scores`) of true class indices `(N,)` and
        logits `(N, K)` (probabilities with `from_logits=False`)."""
        from keras_litenext.metrics import classification_scores

        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(f"Expected classifier logits of shape (N, {self.num_classes}), got {logits.shape}.")
        probabilities = self.probabilities(logits) if from_logits else logits
        return classification_scores(np.asarray(labels).reshape(-1), probabilities, self.class_names)

    def summary_line(self, scores):
        """One human line of `scores`."""
        recall = ", ".join(f"{n} {_fmt(v)}" for n, v in scores["recall_per_class"].items())
        return (f"accuracy {_fmt(scores['accuracy'])}, balanced accuracy {_fmt(scores['balanced_accuracy'])}, "
                f"AUC {_fmt(scores['auc'])} (recall: {recall})")

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": f"{self.num_classes} logits per image, one per class, shape (1, {self.num_classes})",
            "decoding": "class = arg-max over the last axis (softmax gives the class probabilities)",
            "activation": "none (logits); apply softmax over the last axis",
        }
