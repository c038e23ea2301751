"""Segmentation losses: the marginal weight loss of LiteNeXt, Dice, Tversky, focal, cross-entropy.

Binary losses (`LOSSES`, one output channel) take the model's raw output (logits,
`from_logits=True`) of shape `(batch, height, width, 1)` and float masks in `{0, 1}` of the same
shape (a mask without the channel axis is accepted too).

Multi-class losses (`MULTICLASS_LOSSES`, `K > 1` output channels, softmax) take logits
`(batch, height, width, K)` and a class-index map `(batch, height, width[, 1])` of values
`0..K-1` (float or int; 0 is the background), or a one-hot map `(batch, height, width, K)`. Their
Dice term is `1 - mean over the foreground classes 1..K-1` of the per-image soft Dice; the
background is excluded, as MONAI's `include_background=False`.

Predictions are cast to float32 first, so the losses are safe under mixed precision. Each loss
returns one value per image, which Keras then averages over the batch
(`reduction="sum_over_batch_size"`), so `sample_weight` is a per-image weight. `get_loss(name,
num_classes)` picks the binary or the multi-class loss of a name.

Everything is written with `keras.ops` only, so the losses run on every Keras backend, and every
class is registered for `.keras` serialisation.

Reference: Tran et al., "LiteNeXt: A Novel Lightweight ConvMixer-based Model with
Self-embedding Representation Parallel for Medical Image Segmentation", 2024, arXiv:2405.15779,
and the authors' code (`mwl.py`, `Metrics/losses.py`). Deviations are stated per function.
"""

import keras
from keras import ops

PACKAGE = "keras_litenext"
DEFAULT_SMOOTH = 1e-6
# Default (margin, object, background) weights of the marginal weight loss. They emphasise the
# boundary band and gave a better validation Dice than the reference's (2, 3, 5) on two datasets.
MWL_WEIGHTS = (5.0, 3.0, 2.0)
REFERENCE_MWL_WEIGHTS = (2.0, 3.0, 5.0)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Marginal weight map
# ----------------------------------------------------------------------------------------------
def marginal_weight_map(
    masks, kernel_size=7, w_margin=MWL_WEIGHTS[0], w_object=MWL_WEIGHTS[1], w_background=MWL_WEIGHTS[2]
):
    """Per-pixel weights of the marginal weight loss (MWL) of LiteNeXt.

    With `D` the binary dilation and `E` the binary erosion of the mask by a `k x k` square,

        W = w_margin * (D - E) + w_object * E + w_background * (1 - D),

    i.e. the margin band `D - E` (`k // 2` pixels either side of the object boundary, the boundary
    included) gets `w_margin`, the eroded interior `w_object` and the far background
    `w_background`. As in the reference, both morphological operations are convolutions with
    ZERO "same" padding: `D = clip(conv(mask, ones), 0, 1)` and `E` is 1 only where the whole
    window lies in the foreground, so an object touching the image border is eroded there (a
    min-pool would not do that, it ignores padded pixels).

    The weight map is the reference's (`marginweight` in the authors' `mwl.py`). The defaults
    are `MWL_WEIGHTS = (5, 3, 2)` (margin, object, background), which emphasise the boundary as
    the paper intends and scored a better validation Dice; the reference's own defaults
    `REFERENCE_MWL_WEIGHTS = (2, 3, 5)` give the margin the LOWEST weight. Every weight is
    configurable.

    Deviation: the reference computes the erosion as `floor(mean(window) + 0.01)`, which for
    `kernel_size >= 10` also marks windows missing one foreground pixel (`1 - 1/k**2 + 0.01 >= 1`).
    Here `E = [mean(window) + tol >= 1]` with `tol = min(0.01, 0.5 / k**2)`: identical to the
    reference for binary masks when `k <= 9` (for any mask in `[0, 1]` when `k <= 7`), and a true
    erosion for larger kernels. Even kernel sizes are padded like PyTorch's and TensorFlow's
    "same" (one more pixel after than before).

    Args:
        masks: float masks in `{0, 1}`, shape `(batch, height, width, channels)` or
            `(batch, height, width)`; each channel is processed independently.
        kernel_size: int, side of the square structuring element. Defaults to 7.
        w_margin: float, weight of the margin band. Defaults to 5.
        w_object: float, weight of the eroded object interior. Defaults to 3.
        w_background: float, weight of the background outside the dilated object. Defaults to 2.

    Returns:
        float32 tensor of the shape of `masks` (with a channel axis), without gradient.

    Example:
    >>> m = np.zeros((1, 32, 32, 1), "float32"); m[:, 10:22, 10:22] = 1
    >>> w = keras.ops.convert_to_numpy(marginal_weight_map(m))
    >>> [(w == v).sum() for v in (3.0, 5.0, 2.0)]   # interior 6x6, band, background
    [36, 288, 700]
    """
    kernel_size = int(kernel_size)
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}.")
    masks = ops.stop_gradient(_as_image_batch(masks))
    channels = masks.shape[-1]
    if channels is None:
        raise ValueError("marginal_weight_map: the channel axis of the masks must be known.")
    kernel = ops.ones((kernel_size, kernel_size, channels, 1), dtype="float32")
    window_sum = ops.depthwise_conv(masks, kernel, strides=1, padding="same", data_format="channels_last")
    area = float(kernel_size * kernel_size)
    tol = min(0.01, 0.5 / area)
    dilated = ops.clip(window_sum, 0.0, 1.0)
    eroded = ops.cast(ops.greater_equal(window_sum / area + tol, 1.0), "float32")
    weights = float(w_margin) * (dilated - eroded) + float(w_object) * eroded + float(w_background) * (1.0 - dilated)
    return ops.stop_gradient(weights)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class MarginalWeightLoss(keras.losses.Loss):
    """Marginal weight loss (MWL) of LiteNeXt: pixel-weighted BCE plus soft Dice.

    Per image, `L = mean_pixels(W * BCE(sigmoid(z), y)) + dice_weight * (1 - Dice(sigmoid(z), y))`
    with `W = marginal_weight_map(y, kernel_size, w_margin, w_object, w_background)`. The weighted
    BCE is divided by the number of pixels, not by `sum(W)` (like PyTorch's
    `binary_cross_entropy(weight=W, reduction="mean")`), so the weights also scale the loss.

    The weight map is exact to the reference (`marginweight` in the authors' `mwl.py`, Tran et
    al., 2024, arXiv:2405.15779). How `W` enters the loss is not in the authors' released code;
    this is a reconstruction (weighted BCE + the reference's soft Dice). The default weights are
    `MWL_WEIGHTS = (5, 3, 2)`, not the reference's `(2, 3, 5)`; see `marginal_weight_map`.

    Args:
        kernel_size: int, side of the square structuring element. Defaults to 7.
        w_margin: float, weight of the margin band. Defaults to 5.
        w_object: float, weight of the object interior. Defaults to 3.
        w_background: float, weight of the far background. Defaults to 2.
        dice_weight: float, weight of the soft Dice term. Defaults to 1.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        smooth: float, added to the numerator and denominator of Dice; see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        kernel_size=7,
        w_margin=MWL_WEIGHTS[0],
        w_object=MWL_WEIGHTS[1],
        w_background=MWL_WEIGHTS[2],
        dice_weight=1.0,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="marginal_weight_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.kernel_size = int(kernel_size)
        self.w_margin = float(w_margin)
        self.w_object = float(w_object)
        self.w_background = float(w_background)
        self.dice_weight = float(dice_weight)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        weights = marginal_weight_map(y_true, self.kernel_size, self.w_margin, self.w_object, self.w_background)
        weighted_bce = _per_image_mean(weights * _bce(y_true, y_pred, self.from_logits))
        if self.dice_weight == 0.0:
            return weighted_bce
        dice = _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)
        return weighted_bce + self.dice_weight * (1.0 - dice)

    def get_config(self):
        config = _base_config(self)
        config.update(
            kernel_size=self.kernel_size,
            w_margin=self.w_margin,
            w_object=self.w_object,
            w_background=self.w_background,
            dice_weight=self.dice_weight,
            from_logits=self.from_logits,
            smooth=self.smooth,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss, per image: `1 - (2*sum(p*y) + smooth) / (sum(p) + sum(y) + smooth)`.

    `p = sigmoid(z)`; the Dice coefficient is computed per image over all pixels and channels,
    and Keras averages `1 - Dice` over the batch, as the reference `SoftDiceLoss` does.

    Deviation: the reference adds `1e-12` to the denominator only, so an image with an empty
    mask always scores Dice 0 (loss 1) whatever the prediction, and a hard all-zero prediction of
    an empty mask is 0/0-like. Here `smooth` is added to numerator and denominator: an empty
    prediction of an empty mask scores 1, and on non-empty masks the value differs from the
    reference by `O(smooth / sum(y))`. `smooth=1.0` gives the common Laplace-smoothed Dice.

    Args:
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        smooth: float, defaults to `1e-6`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self, from_logits=True, smooth=DEFAULT_SMOOTH, name="dice_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        return 1.0 - _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)

    def get_config(self):
        config = _base_config(self)
        config.update(from_logits=self.from_logits, smooth=self.smooth)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BCEDiceLoss(keras.losses.Loss):
    """`bce_weight * mean_pixels(BCE) + dice_weight * (1 - Dice)`, per image.

    The unweighted counterpart of `MarginalWeightLoss` (equal to it when all three region weights
    are 1). The BCE is the stable form on logits.

    Args:
        bce_weight: float, weight of the BCE term. Defaults to 1.
        dice_weight: float, weight of the soft Dice term. Defaults to 1.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        smooth: float, see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        bce_weight=1.0,
        dice_weight=1.0,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="bce_dice_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        bce = _per_image_mean(_bce(y_true, y_pred, self.from_logits))
        dice = _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)

    def get_config(self):
        config = _base_config(self)
        config.update(
            bce_weight=self.bce_weight, dice_weight=self.dice_weight, from_logits=self.from_logits, smooth=self.smooth
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TverskyLoss(keras.losses.Loss):
    """Tversky loss, per image: `1 - (TP + smooth) / (TP + alpha*FP + beta*FN + smooth)`.

    With `p = sigmoid(z)`: `TP = sum(p*y)`, `FP = sum(p*(1-y))`, `FN = sum((1-p)*y)`. `alpha`
    weights false positives and `beta` false negatives (raise `beta` to favour recall);
    `alpha = beta = 0.5` is the soft Dice loss. Defaults `alpha = beta = 0.5` are the reference's.

    Deviations: the reference flattens the whole batch into one Tversky index and uses
    `smooth=1`; here the index is per image (averaged over the batch, like Dice) and `smooth`
    defaults to `1e-6`, so that `TverskyLoss(0.5, 0.5)` matches `DiceLoss`.

    Args:
        alpha: float, weight of false positives. Defaults to 0.5.
        beta: float, weight of false negatives. Defaults to 0.5.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        smooth: float, defaults to `1e-6`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        alpha=0.5,
        beta=0.5,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="tversky_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        p = _probabilities(y_pred, self.from_logits)
        tp = _per_image_sum(p * y_true)
        fp = _per_image_sum(p * (1.0 - y_true))
        fn = _per_image_sum((1.0 - p) * y_true)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - index

    def get_config(self):
        config = _base_config(self)
        config.update(alpha=self.alpha, beta=self.beta, from_logits=self.from_logits, smooth=self.smooth)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalLoss(keras.losses.Loss):
    """Binary focal loss (Lin et al., 2017), per pixel, averaged per image.

    `FL = alpha_t * (1 - p_t)**gamma * BCE`, with `p_t = p` on foreground and `1 - p` on
    background, `alpha_t = alpha` on foreground and `1 - alpha` on background. On logits,
    `1 - p_t` is computed as `y*sigmoid(-z) + (1-y)*sigmoid(z)` and the BCE in its stable form.

    The defaults `alpha=0.8, gamma=2` are the reference's. Deviation: the reference applies the
    focal modulation once to the batch-mean BCE (`alpha * (1 - exp(-BCE))**gamma * BCE`), which
    does not down-weight easy pixels individually; this is the standard per-pixel form.

    Args:
        alpha: float in `[0, 1]`, weight of the foreground class. Defaults to 0.8.
        gamma: float >= 0, focusing parameter. Defaults to 2.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self, alpha=0.8, gamma=2.0, from_logits=True, name="focal_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        if self.from_logits:
            one_minus_pt = y_true * ops.sigmoid(-y_pred) + (1.0 - y_true) * ops.sigmoid(y_pred)
        else:
            one_minus_pt = y_true * (1.0 - y_pred) + (1.0 - y_true) * y_pred
        alpha_t = self.alpha * y_true + (1.0 - self.alpha) * (1.0 - y_true)
        modulation = ops.power(one_minus_pt, self.gamma) if self.gamma != 0.0 else 1.0
        return _per_image_mean(alpha_t * modulation * _bce(y_true, y_pred, self.from_logits))

    def get_config(self):
        config = _base_config(self)
        config.update(alpha=self.alpha, gamma=self.gamma, from_logits=self.from_logits)
        return config


# ----------------------------------------------------------------------------------------------
# Multi-class (softmax) losses
# ----------------------------------------------------------------------------------------------
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


def multiclass_weight_map(
    labels,
    num_classes,
    kernel_size=7,
    w_margin=MWL_WEIGHTS[0],
    w_object=MWL_WEIGHTS[1],
    w_background=MWL_WEIGHTS[2],
):
    """Per-pixel weights of the multi-class marginal weight loss, `(batch, height, width)`.

    For each class `c` with one-hot map `M_c`, the band of `c` is `dilate(M_c) - erode(M_c)` with
    the `k x k` square and the window rules of `marginal_weight_map`. The margin is the union of
    the bands of all classes (boundaries between two foreground classes included); the object is
    the foreground pixels (class >= 1) outside the margin, the background the class-0 pixels
    outside it. Pixels outside the image count as background (the index map is zero-padded), so
    for a foreground class this is the binary map's zero padding (objects touching the border
    erode there), and the background's band equals the foreground's: with `K = 2` the map is
    exactly `marginal_weight_map` of the foreground mask.

    Args:
        labels: class-index map `(batch, height, width[, 1])` with values `0..K-1`, or one-hot
            labels `(batch, height, width, K)`.
        num_classes: int `K >= 2`, including the background.
        kernel_size: int, side of the square structuring element. Defaults to 7.
        w_margin, w_object, w_background: floats, default `MWL_WEIGHTS = (5, 3, 2)`.

    Returns:
        float32 tensor `(batch, height, width)`, without gradient.
    """
    num_classes = _check_num_classes(num_classes)
    kernel_size = int(kernel_size)
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size}.")
    one_hot = ops.stop_gradient(_one_hot(labels, num_classes))
    kernel = ops.ones((kernel_size, kernel_size, num_classes, 1), dtype="float32")
    window_sum = ops.depthwise_conv(one_hot, kernel, strides=1, padding="same", data_format="channels_last")
    area = float(kernel_size * kernel_size)
    # Padded pixels are background: add to class 0 the number of window pixels outside the image.
    inside = ops.conv(
        ops.ones_like(one_hot[..., :1]), ops.ones((kernel_size, kernel_size, 1, 1), "float32"), padding="same"
    )
    padded = area - inside
    window_sum = ops.concatenate([window_sum[..., :1] + padded, window_sum[..., 1:]], axis=-1)
    tol = min(0.01, 0.5 / area)
    dilated = ops.clip(window_sum, 0.0, 1.0)
    eroded = ops.cast(ops.greater_equal(window_sum / area + tol, 1.0), "float32")
    margin = ops.max(dilated - eroded, axis=-1)
    foreground = ops.sum(one_hot[..., 1:], axis=-1)
    background = one_hot[..., 0]
    weights = (
        float(w_margin) * margin
        + float(w_object) * foreground * (1.0 - margin)
        + float(w_background) * background * (1.0 - margin)
    )
    return ops.stop_gradient(weights)


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class SoftmaxCrossEntropyLoss(_MultiClassLoss):
    """Softmax (categorical) cross-entropy on a class-index map, averaged over the pixels of each image.

    Args:
        num_classes: int `K >= 2`, the number of output channels (background included).
        class_weights: optional `K` floats: the CE of a pixel whose TRUE class is `c` is multiplied
            by `class_weights[c]`, and the sum is divided by the number of pixels (not by the sum
            of the weights, so the weights also scale the loss). Defaults to all ones.
        from_logits: bool, whether `y_pred` is logits (default) or softmax probabilities.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        num_classes,
        class_weights=None,
        from_logits=True,
        name="softmax_cross_entropy_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(num_classes, from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)
        self.class_weights = _check_class_weights(class_weights, self.num_classes)

    def call(self, y_true, y_pred):
        one_hot, y_pred = self._inputs(y_true, y_pred)
        return _weighted_ce(one_hot, y_pred, self.from_logits, self.class_weights)

    def get_config(self):
        config = super().get_config()
        config.pop("smooth")
        config.update(class_weights=self.class_weights)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiClassDiceLoss(_MultiClassLoss):
    """Multi-class soft Dice loss, per image: `1 - mean_{c=1..K-1} Dice_c(softmax(z), onehot(y))`.

    `Dice_c = (2*sum(p_c*y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)` over the pixels of the
    image; the background (class 0) is excluded. With `K = 2` it equals `DiceLoss` on the
    foreground probability. A class absent from the image counts as well (its Dice is near 1 only
    when it is predicted absent).

    Args:
        num_classes: int `K >= 2`, background included.
        from_logits: bool, whether `y_pred` is logits (default) or softmax probabilities.
        smooth: float, defaults to `1e-6`; see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        num_classes,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="multiclass_dice_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(
            num_classes, from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype
        )

    def call(self, y_true, y_pred):
        one_hot, y_pred = self._inputs(y_true, y_pred)
        return _multiclass_dice_loss(one_hot, _class_probabilities(y_pred, self.from_logits), self.smooth)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CEDiceLoss(_MultiClassLoss):
    """`ce_weight * CE + dice_weight * MultiClassDice`, per image: the softmax analogue of `BCEDiceLoss`.

    With `K = 2` and `class_weights=None` it equals `BCEDiceLoss` on the logit difference
    `z_1 - z_0`.

    Args:
        num_classes: int `K >= 2`, background included.
        class_weights: optional `K` floats weighting the CE term only, by the pixel's true class;
            see `SoftmaxCrossEntropyLoss`.
        ce_weight: float, weight of the CE term. Defaults to 1.
        dice_weight: float, weight of the soft Dice term. Defaults to 1.
        from_logits: bool, whether `y_pred` is logits (default) or softmax probabilities.
        smooth: float, see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        num_classes,
        class_weights=None,
        ce_weight=1.0,
        dice_weight=1.0,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="ce_dice_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(
            num_classes, from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype
        )
        self.class_weights = _check_class_weights(class_weights, self.num_classes)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        one_hot, y_pred = self._inputs(y_true, y_pred)
        ce = _weighted_ce(one_hot, y_pred, self.from_logits, self.class_weights)
        dice = _multiclass_dice_loss(one_hot, _class_probabilities(y_pred, self.from_logits), self.smooth)
        return self.ce_weight * ce + self.dice_weight * dice

    def get_config(self):
        config = super().get_config()
        config.update(class_weights=self.class_weights, ce_weight=self.ce_weight, dice_weight=self.dice_weight)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiClassMarginalWeightLoss(_MultiClassLoss):
    """Marginal weight loss for `K` classes: pixel-weighted softmax CE plus multi-class soft Dice.

    Per image, `L = mean_pixels(W * CE) + dice_weight * MultiClassDice` with
    `W = multiclass_weight_map(y, K, kernel_size, w_margin, w_object, w_background)`: the margin
    is the union of the boundary bands of all classes. With `K = 2` it equals `MarginalWeightLoss`
    on the logit difference `z_1 - z_0`.

    Args:
        num_classes: int `K >= 2`, background included.
        kernel_size: int, side of the square structuring element. Defaults to 7.
        w_margin: float, weight of the margin. Defaults to 5.
        w_object: float, weight of foreground pixels outside the margin. Defaults to 3.
        w_background: float, weight of background pixels outside the margin. Defaults to 2.
        dice_weight: float, weight of the soft Dice term. Defaults to 1.
        from_logits: bool, whether `y_pred` is logits (default) or softmax probabilities.
        smooth: float, see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        num_classes,
        kernel_size=7,
        w_margin=MWL_WEIGHTS[0],
        w_object=MWL_WEIGHTS[1],
        w_background=MWL_WEIGHTS[2],
        dice_weight=1.0,
        from_logits=True,
        smooth=DEFAULT_SMOOTH,
        name="multiclass_marginal_weight_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(
            num_classes, from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype
        )
        self.kernel_size = int(kernel_size)
        self.w_margin = float(w_margin)
        self.w_object = float(w_object)
        self.w_background = float(w_background)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        one_hot, y_pred = self._inputs(y_true, y_pred)
        weights = multiclass_weight_map(
            one_hot, self.num_classes, self.kernel_size, self.w_margin, self.w_object, self.w_background
        )
        weighted_ce = _weighted_ce(one_hot, y_pred, self.from_logits, None, weights)
        if self.dice_weight == 0.0:
            return weighted_ce
        dice = _multiclass_dice_loss(one_hot, _class_probabilities(y_pred, self.from_logits), self.smooth)
        return weighted_ce + self.dice_weight * dice

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size,
            w_margin=self.w_margin,
            w_object=self.w_object,
            w_background=self.w_background,
            dice_weight=self.dice_weight,
        )
        return config


# ----------------------------------------------------------------------------------------------
# Image classification (one label per image)
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------
def _bce_loss(**kwargs):
    kwargs.setdefault("from_logits", True)
    return keras.losses.BinaryCrossentropy(**kwargs)


_REGISTRY = {
    "mwl": MarginalWeightLoss,
    "bce_dice": BCEDiceLoss,
    "dice": DiceLoss,
    "bce": _bce_loss,
    "tversky": TverskyLoss,
    "focal": FocalLoss,
}
_MULTICLASS_REGISTRY = {
    "mwl": MultiClassMarginalWeightLoss,
    "ce_dice": CEDiceLoss,
    "dice": MultiClassDiceLoss,
    "ce": SoftmaxCrossEntropyLoss,
}
LOSSES = tuple(_REGISTRY)
MULTICLASS_LOSSES = tuple(_MULTICLASS_REGISTRY)


def get_loss(name, num_classes=1, **kwargs):
    """A loss instance by name, for a model with `num_classes` output channels.

    Args:
        name: with `num_classes=1`, one of `LOSSES`: `"mwl"` (`MarginalWeightLoss`),
            `"bce_dice"`, `"dice"`, `"bce"` (`keras.losses.BinaryCrossentropy(from_logits=True)`),
            `"tversky"`, `"focal"`. With `num_classes > 1`, one of `MULTICLASS_LOSSES`: `"mwl"`
            (`MultiClassMarginalWeightLoss`), `"ce_dice"` (`CEDiceLoss`), `"dice"`
            (`MultiClassDiceLoss`), `"ce"` (`SoftmaxCrossEntropyLoss`). Case and `-`/`_` are
            ignored.
        num_classes: int, the number of model output channels: 1 for a binary (sigmoid) model,
            `K > 1` for a softmax model over `K` classes, background included. Defaults to 1.
        **kwargs: passed to the loss's constructor.

    Returns:
        a `keras.losses.Loss`.

    Raises:
        ValueError: for a name not available for `num_classes`.

    Example:
    >>> get_loss("mwl", w_margin=5, w_background=2).w_margin
    5.0
    >>> get_loss("ce_dice", num_classes=3, class_weights=(0.5, 1, 1)).num_classes
    3
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    key = str(name).strip().lower().replace("-", "_")
    if num_classes == 1:
        if key not in _REGISTRY:
            raise ValueError(f"Unknown binary loss {name!r} (num_classes=1); available: {', '.join(LOSSES)}.")
        return _REGISTRY[key](**kwargs)
    if key not in _MULTICLASS_REGISTRY:
        raise ValueError(
            f"Unknown multi-class loss {name!r} (num_classes={num_classes}); available: {', '.join(MULTICLASS_LOSSES)}."
        )
    return _MULTICLASS_REGISTRY[key](num_classes=num_classes, **kwargs)


__all__ = [
    "LOSSES",
    "MULTICLASS_LOSSES",
    "MWL_WEIGHTS",
    "REFERENCE_MWL_WEIGHTS",
    "BCEDiceLoss",
    "CEDiceLoss",
    "ClassificationCrossEntropy",
    "DiceLoss",
    "FocalLoss",
    "MarginalWeightLoss",
    "MultiClassDiceLoss",
    "MultiClassMarginalWeightLoss",
    "SoftmaxCrossEntropyLoss",
    "TverskyLoss",
    "get_loss",
    "marginal_weight_map",
    "multiclass_weight_map",
]
