"""Segmentation losses for binary masks: the marginal weight loss of LiteNeXt, Dice, Tversky, focal.

All losses take the model's raw output (logits, `from_logits=True`) of shape `(batch, height,
width, 1)` and float masks in `{0, 1}` of the same shape (a mask without the channel axis is
accepted too). Predictions are cast to float32 first, so the losses are safe under mixed
precision. Each loss returns one value per image, which Keras then averages over the batch
(`reduction="sum_over_batch_size"`), so `sample_weight` is a per-image weight.

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
def marginal_weight_map(masks, kernel_size=7, w_margin=2.0, w_object=3.0, w_background=5.0):
    """Per-pixel weights of the marginal weight loss (MWL) of LiteNeXt.

    With `D` the binary dilation and `E` the binary erosion of the mask by a `k x k` square,

        W = w_margin * (D - E) + w_object * E + w_background * (1 - D),

    i.e. the margin band `D - E` (`k // 2` pixels either side of the object boundary, the boundary
    included) gets `w_margin`, the eroded interior `w_object` and the far background
    `w_background`. As in the reference, both morphological operations are convolutions with
    ZERO "same" padding: `D = clip(conv(mask, ones), 0, 1)` and `E` is 1 only where the whole
    window lies in the foreground, so an object touching the image border is eroded there (a
    min-pool would not do that, it ignores padded pixels).

    The weight map is the reference's (`marginweight` in the authors' `mwl.py`), including its
    defaults `w_margin=2 < w_object=3 < w_background=5`. Note that these defaults give the margin
    the LOWEST weight, the opposite of the paper's stated aim of emphasising object boundaries;
    they are kept for fidelity, and every weight is configurable (e.g. `w_margin=5,
    w_object=3, w_background=2` to emphasise the boundary).

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
        w_margin: float, weight of the margin band. Defaults to 2 (reference).
        w_object: float, weight of the eroded object interior. Defaults to 3 (reference).
        w_background: float, weight of the background outside the dilated object. Defaults to
            5 (reference).

    Returns:
        float32 tensor of the shape of `masks` (with a channel axis), without gradient.

    Example:
    >>> m = np.zeros((1, 32, 32, 1), "float32"); m[:, 10:22, 10:22] = 1
    >>> w = keras.ops.convert_to_numpy(marginal_weight_map(m))
    >>> [(w == v).sum() for v in (3.0, 2.0, 5.0)]   # interior 6x6, band, background
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
    weights = (
        float(w_margin) * (dilated - eroded) + float(w_object) * eroded + float(w_background) * (1.0 - dilated)
    )
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
    this is a reconstruction (weighted BCE + the reference's soft Dice). The defaults
    `w_margin=2, w_object=3, w_background=5` are the reference's and give the boundary band the
    lowest weight; see `marginal_weight_map`.

    Args:
        kernel_size: int, side of the square structuring element. Defaults to 7.
        w_margin: float, weight of the margin band. Defaults to 2.
        w_object: float, weight of the object interior. Defaults to 3.
        w_background: float, weight of the far background. Defaults to 5.
        dice_weight: float, weight of the soft Dice term. Defaults to 1.
        from_logits: bool, whether `y_pred` is logits (default) or probabilities.
        smooth: float, added to the numerator and denominator of Dice; see `DiceLoss`.
        name, reduction, dtype: standard `keras.losses.Loss` arguments.
    """

    def __init__(
        self,
        kernel_size=7,
        w_margin=2.0,
        w_object=3.0,
        w_background=5.0,
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
LOSSES = tuple(_REGISTRY)


def get_loss(name, **kwargs):
    """A loss instance by name.

    Args:
        name: one of `LOSSES`: `"mwl"` (`MarginalWeightLoss`), `"bce_dice"`, `"dice"`, `"bce"`
            (`keras.losses.BinaryCrossentropy(from_logits=True)`), `"tversky"`, `"focal"`.
            Case and `-`/`_` are ignored.
        **kwargs: passed to the loss's constructor.

    Returns:
        a `keras.losses.Loss`.

    Raises:
        ValueError: for an unknown name.

    Example:
    >>> get_loss("mwl", w_margin=5, w_background=2).w_margin
    5.0
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; available: {', '.join(LOSSES)}.")
    return _REGISTRY[key](**kwargs)


__all__ = [
    "BCEDiceLoss",
    "DiceLoss",
    "FocalLoss",
    "LOSSES",
    "MarginalWeightLoss",
    "TverskyLoss",
    "get_loss",
    "marginal_weight_map",
]
