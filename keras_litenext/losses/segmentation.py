"""Segmentation losses other than the MWL (`mwl.py`): binary soft Dice, BCE + Dice, Tversky,
focal; softmax cross-entropy, multi-class soft Dice, CE + Dice. See the package docstring."""

import keras
from keras import ops

from keras_litenext.losses.base import (
    DEFAULT_SMOOTH,
    PACKAGE,
    _align,
    _base_config,
    _BinaryLoss,
    _bce,
    _check_class_weights,
    _class_probabilities,
    _multiclass_dice_loss,
    _MultiClassLoss,
    _per_image_mean,
    _per_image_sum,
    _probabilities,
    _soft_dice,
    _weighted_ce,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceLoss(_BinaryLoss):
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
        super().__init__(from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        return 1.0 - _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BCEDiceLoss(_BinaryLoss):
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
        super().__init__(from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        bce = _per_image_mean(_bce(y_true, y_pred, self.from_logits))
        dice = _soft_dice(y_true, _probabilities(y_pred, self.from_logits), self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "dice_weight": self.dice_weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TverskyLoss(_BinaryLoss):
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
        super().__init__(from_logits=from_logits, smooth=smooth, name=name, reduction=reduction, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        y_true, y_pred = _align(y_true, y_pred)
        p = _probabilities(y_pred, self.from_logits)
        tp = _per_image_sum(p * y_true)
        fp = _per_image_sum(p * (1.0 - y_true))
        fn = _per_image_sum((1.0 - p) * y_true)
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return 1.0 - index

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


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
