"""The image classification loss: softmax cross-entropy of image logits (`ClassificationCrossEntropy`)."""

import keras
from keras import ops

from keras_litenext.losses.base import (
    PACKAGE,
    _base_config,
    _check_class_weights,
    _check_num_classes,
    _log_probabilities,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassificationCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy of image logits `(batch, K)` against class indices `(batch,)` or
    `(batch, 1)` (the image-classification task's loss).

    Args:
        num_classes: int `K >= 2` (K = 2 included: one logit per class, softmax).
        class_weights: optional `K` floats: an image whose TRUE class is `c` has its loss
            multiplied by `class_weights[c]` (the batch mean is not renormalised, as
            `SoftmaxCrossEntropyLoss`). Defaults to all ones.
        label_smoothing: float in `[0, 1)`: the target is `(1 - s) * one_hot + s / K`.
        from_logits: bool, whether `y_pred` is logits (default) or softmax probabilities.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(self, num_classes, class_weights=None, label_smoothing=0.0, from_logits=True,
                 name="classification_cross_entropy", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.class_weights = _check_class_weights(class_weights, self.num_classes)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_pred.shape) != 2 or y_pred.shape[-1] != self.num_classes:
            raise ValueError(f"Expected image logits of shape (batch, {self.num_classes}), got {y_pred.shape}.")
        labels = ops.cast(ops.round(ops.cast(ops.reshape(y_true, (-1,)), "float32")), "int32")
        one_hot = ops.one_hot(labels, self.num_classes, dtype="float32")
        target = one_hot
        if self.label_smoothing:
            target = one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        ce = -ops.sum(target * _log_probabilities(y_pred, self.from_logits), axis=-1)
        if self.class_weights is not None:
            ce = ce * ops.sum(one_hot * ops.convert_to_tensor(self.class_weights, dtype="float32"), axis=-1)
        return ce

    def get_config(self):
        config = _base_config(self)
        config.update(num_classes=self.num_classes, class_weights=self.class_weights,
                      label_smoothing=self.label_smoothing, from_logits=self.from_logits)
        return config
