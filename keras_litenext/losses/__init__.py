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

Modules: `base` (shared helpers), `segmentation` (Dice, BCE + Dice, Tversky, focal, softmax CE,
multi-class Dice, CE + Dice), `mwl` (the marginal weight loss and its weight maps),
`classification` (`ClassificationCrossEntropy`); this one holds the registry of names and `get_loss`.
"""

import keras

from keras_litenext.losses.classification import ClassificationCrossEntropy
from keras_litenext.losses.mwl import (
    MWL_WEIGHTS,
    REFERENCE_MWL_WEIGHTS,
    MarginalWeightLoss,
    MultiClassMarginalWeightLoss,
    marginal_weight_map,
    multiclass_weight_map,
)
from keras_litenext.losses.segmentation import (
    BCEDiceLoss,
    CEDiceLoss,
    DiceLoss,
    FocalLoss,
    MultiClassDiceLoss,
    SoftmaxCrossEntropyLoss,
    TverskyLoss,
)


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
