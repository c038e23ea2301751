"""The marginal weight loss (MWL) of LiteNeXt: the weight maps (`marginal_weight_map`,
`multiclass_weight_map`) and the losses (`MarginalWeightLoss`, `MultiClassMarginalWeightLoss`).

Reference: Tran et al., 2024, arXiv:2405.15779, and the authors' `mwl.py`.
"""

import keras
from keras import ops

from keras_litenext.losses.base import (
    DEFAULT_SMOOTH,
    PACKAGE,
    _align,
    _as_image_batch,
    _BinaryLoss,
    _bce,
    _check_num_classes,
    _class_probabilities,
    _multiclass_dice_loss,
    _MultiClassLoss,
    _one_hot,
    _per_image_mean,
    _probabilities,
    _soft_dice,
    _weighted_ce,
)

# Default (margin, object, background) weights of the marginal weight loss. They emphasise the
# boundary band and gave a better validation Dice than the reference's (2, 3, 5) on two datasets.
MWL_WEIGHTS = (5.0, 3.0, 2.0)
REFERENCE_MWL_WEIGHTS = (2.0, 3.0, 5.0)


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class MarginalWeightLoss(_BinaryLoss):
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
        super().__init__(from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype)
        self.kernel_size = int(kernel_size)
        self.w_margin = float(w_margin)
        self.w_object = float(w_object)
        self.w_background = float(w_background)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        weights = marginal_weight_map(y_true, self.kernel_size, self.w_margin, self.w_object, self.w_background)
        weighted_bce = _per_image_mean(weights * _bce(y_true, y_pred, self.from_logits))
        if self.dice_weight == 0.0:
            return weighted_bce
        dice = _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)
        return weighted_bce + self.dice_weight * (1.0 - dice)

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
