"""What the losses share: input shaping, the stable BCE, the soft Dice, the one-hot labels and
softmax cross-entropy of the multi-class losses, and their common base class. `keras.ops` only."""

import keras
from keras import ops

PACKAGE = "keras_litenext"  # the `.keras` registration package of every loss
DEFAULT_SMOOTH = 1e-6


def _as_image_batch(x):
    """`x` as float32 with shape `(batch, height, width, channels)`; a rank-3 input gains a channel."""
    x = ops.cast(x, "float32")
    if len(x.shape) == 3:
        x = ops.expand_dims(x, -1)
    if len(x.shape) != 4:
        raise ValueError(f"Expected masks of shape (batch, height, width[, channels]), got shape {x.shape}.")
    return x


def _align(y_true, y_pred):
    """Both as float32 `(batch, height, width, channels)` tensors of the same rank."""
    return _as_image_batch(y_true), _as_image_batch(y_pred)


def _bce(y_true, y_pred, from_logits):
    """Element-wise binary cross-entropy, stable on logits: `max(z, 0) - z*y + log1p(exp(-|z|))`."""
    if from_logits:
        z = y_pred
        return ops.maximum(z, 0.0) - z * y_true + ops.log1p(ops.exp(-ops.abs(z)))
    eps = keras.config.epsilon()
    p = ops.clip(y_pred, eps, 1.0 - eps)
    return -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))


def _probabilities(y_pred, from_logits):
    return ops.sigmoid(y_pred) if from_logits else y_pred


def _per_image_sum(x):
    return ops.sum(x, axis=(1, 2, 3))


def _per_image_mean(x):
    return ops.mean(x, axis=(1, 2, 3))


def _soft_dice(y_true, probs, smooth):
    """Per-image soft Dice coefficient `(2*sum(p*y) + smooth) / (sum(p) + sum(y) + smooth)`."""
    intersection = _per_image_sum(probs * y_true)
    denominator = _per_image_sum(probs) + _per_image_sum(y_true)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def _base_config(loss):
    return {"name": loss.name, "reduction": loss.reduction, "dtype": loss.dtype}


def _check_num_classes(num_classes):
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"A multi-class loss needs num_classes >= 2, got {num_classes}.")
    return num_classes


def _one_hot(y_true, num_classes):
    """float32 one-hot `(batch, height, width, K)` of an index map `(batch, height, width[, 1])`.

    A `(batch, height, width, K)` input is taken as one-hot (or soft) labels already. Index values
    are rounded, so float maps such as `2.0000001` are read as class 2; values outside `0..K-1`
    give an all-zero row.
    """
    if len(y_true.shape) == 4 and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, "float32")
    if len(y_true.shape) == 4:
        if y_true.shape[-1] != 1:
            raise ValueError(
                f"Expected a class-index map (batch, height, width[, 1]) or one-hot labels with "
                f"{num_classes} channels, got shape {y_true.shape}."
            )
        y_true = ops.squeeze(y_true, -1)
    if len(y_true.shape) != 3:
        raise ValueError(f"Expected a class-index map (batch, height, width[, 1]), got shape {y_true.shape}.")
    if not keras.backend.standardize_dtype(y_true.dtype).startswith(("int", "uint")):
        y_true = ops.round(ops.cast(y_true, "float32"))
    return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype="float32")


def _class_logits(y_pred, num_classes):
    y_pred = ops.cast(y_pred, "float32")
    if len(y_pred.shape) != 4 or y_pred.shape[-1] != num_classes:
        raise ValueError(f"Expected predictions of shape (batch, height, width, {num_classes}), got {y_pred.shape}.")
    return y_pred


def _log_probabilities(y_pred, from_logits):
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    return ops.log(ops.clip(y_pred, keras.config.epsilon(), 1.0))


def _softmax_ce(one_hot, y_pred, from_logits):
    """Per-pixel categorical cross-entropy `-sum_c y_c log p_c`, shape `(batch, height, width)`."""
    return -ops.sum(one_hot * _log_probabilities(y_pred, from_logits), axis=-1)


def _class_probabilities(y_pred, from_logits):
    return ops.softmax(y_pred, axis=-1) if from_logits else y_pred


def _multiclass_dice_loss(one_hot, probs, smooth):
    """Per image: `1 - mean over classes 1..K-1` of the soft Dice of class `c`."""
    y, p = one_hot[..., 1:], probs[..., 1:]
    intersection = ops.sum(p * y, axis=(1, 2))
    denominator = ops.sum(p, axis=(1, 2)) + ops.sum(y, axis=(1, 2))
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - ops.mean(dice, axis=-1)


def _check_class_weights(class_weights, num_classes):
    if class_weights is None:
        return None
    class_weights = tuple(float(w) for w in class_weights)
    if len(class_weights) != num_classes:
        raise ValueError(f"class_weights needs {num_classes} values (one per class), got {len(class_weights)}.")
    return class_weights


def _weighted_ce(one_hot, y_pred, from_logits, class_weights, pixel_weights=None):
    """Per-image mean over pixels of `w_pixel * w_class(true class) * CE`."""
    ce = _softmax_ce(one_hot, y_pred, from_logits)
    if class_weights is not None:
        ce = ce * ops.sum(one_hot * ops.convert_to_tensor(class_weights, dtype="float32"), axis=-1)
    if pixel_weights is not None:
        ce = ce * pixel_weights
    return ops.mean(ce, axis=(1, 2))


class _BinaryLoss(keras.losses.Loss):
    """Common arguments and configuration of the sigmoid (one-logit) losses."""

    def __init__(self, from_logits=True, smooth=DEFAULT_SMOOTH, name=None, reduction=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def get_config(self):
        config = _base_config(self)
        config.update(from_logits=self.from_logits, smooth=self.smooth)
        return config


class _MultiClassLoss(keras.losses.Loss):
    """Common arguments and configuration of the softmax losses."""

    def __init__(self, num_classes, from_logits=True, smooth=DEFAULT_SMOOTH, name=None, reduction=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def _inputs(self, y_true, y_pred):
        return _one_hot(y_true, self.num_classes), _class_logits(y_pred, self.num_classes)

    def get_config(self):
        config = _base_config(self)
        config.update(num_classes=self.num_classes, from_logits=self.from_logits, smooth=self.smooth)
        return config
