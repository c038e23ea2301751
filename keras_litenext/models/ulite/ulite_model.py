"""U-Lite (Dinh et al., 2023): an 0.88 M-parameter U-Net of axial depthwise convolutions.

Paper: "1M parameters are enough? A lightweight CNN-based model for medical image
segmentation", arXiv:2306.16103; APSIPA ASC 2023, pp. 1279-1284.
"""

import keras
from keras import layers

from keras_litenext.layers import check_input_shape, torch_init
from keras_litenext.models.ulite.ulite_layers import (
    DecoderBlock,
    DilatedAxialBottleneck,
    EncoderBlock,
)

STRIDE = 32  # five 2x2 max-pools
STAGES = 5
# The skip tensors (strides 1 to 16) and the bottleneck output (stride 32): what the decoder uses.
FEATURE_LAYERS = tuple(f"encoder{i}_norm" for i in range(1, STAGES + 1)) + ("bottleneck_act",)


def ULite(
    input_shape=(256, 256, 3),
    num_classes=1,
    width=16,
    kernel_size=7,
    bottleneck_kernel_size=3,
    bottleneck_dilations=(1, 2, 3),
    weights=None,
    name="ulite",
):
    """Build U-Lite, a lightweight U-Net of axial depthwise convolutions.

    Reference: Dinh, Nguyen, Tran, Pham, "1M parameters are enough? A lightweight CNN-based
    model for medical image segmentation", APSIPA ASC 2023, arXiv:2306.16103; code
    github.com/duong-db/U-Lite (`models/ULite.py`, commit 5e2d53e).

    A 7x7 stem convolution to `width` channels; five `EncoderBlock`s (axial depthwise 7x7,
    BatchNorm = the skip, 1x1 conv, max-pool, GELU) doubling the channels to `32 * width`; the
    `DilatedAxialBottleneck` (axial depthwise 3x3 with dilations 1, 2, 3); five
    `DecoderBlock`s (nearest x2, concatenation `[up, skip]`, 1x1, BN, axial depthwise 7x7, 1x1,
    GELU), decoder i taking encoder i's skip; a 1x1 head.

    The defaults give the reference model: **878,417 trainable parameters** (the paper's
    "878K"), plus 3,008 BatchNorm moving statistics that Keras counts in `count_params()`
    (881,425) and PyTorch keeps as buffers; 736.5 M MACs at 256x256 (`count_macs`). With the
    reference's weights (`keras_litenext.load_torch_weights`) the logits match the PyTorch
    code to float32 rounding (max |diff| about 1e-6).

    Deviations from the reference, each an extension that leaves the default model unchanged:
    `kernel_size` is honoured (the reference's blocks ignore their kernel argument and
    hard-code 7, the default here); `num_classes > 1` gives per-class logits and grey (1
    channel) input is accepted (the reference is binary and RGB); every convolution uses
    PyTorch's initialisation (`torch_init`), not Keras' Glorot, so training starts as the
    reference does. The reference's other faults are in its training and evaluation code
    (validation on the test split, a soft Dice "metric", thresholding logits at 0.5 in
    `predict.py`), not in the model, and are handled by the package's training code.

    The output is **logits** at the input resolution, `(batch, height, width, num_classes)`,
    in float32 (also under a mixed-precision policy): with `num_classes=1`, `logits > 0` is the
    mask; with more classes, take the arg-max over the last axis.

    Args:
        input_shape: `(height, width, channels)`. Height and width may be `None` (any size
            at run time) but when given must be multiples of 32; channels 1 (grey) or 3 (RGB).
            Pixels are expected in `[0, 1]` (the reference divides by 255 and does no
            mean/std normalisation). Defaults to `(256, 256, 3)`.
        num_classes: int, output channels. 1 (default) gives one logit map for binary
            segmentation; more gives per-class logits.
        width: int, channels of the stem and of the first skip; stage i has `width * 2**i`.
            Defaults to 16.
        kernel_size: int, odd, the axial kernel of the encoder and decoder blocks. Defaults to 7.
        bottleneck_kernel_size: int, odd, the axial kernel of the bottleneck's branches.
            Defaults to 3.
        bottleneck_dilations: ints, one bottleneck branch per dilation. Defaults to `(1, 2, 3)`.
        weights: `None` (random initialisation) or the path of a `.weights.h5` file saved from
            a model of the same configuration.
        name: str, the model's name. Defaults to `"ulite"`.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = ULite()
    >>> sum(int(np.prod(w.shape)) for w in model.trainable_weights), model.count_params()
    (878417, 881425)
    """
    height, width_px, channels = check_input_shape(input_shape, STRIDE, "ULite")
    if int(num_classes) < 1:
        raise ValueError(f"ULite: num_classes must be >= 1, got {num_classes!r}.")
    if int(width) < 4 or int(width) % 4:
        raise ValueError(f"ULite: width must be a positive multiple of 4 (the bottleneck splits it by 4), got {width!r}.")
    widths = [int(width) * 2**i for i in range(STAGES + 1)]

    inputs = keras.Input((height, width_px, channels), name="image")
    x = layers.Conv2D(widths[0], 7, padding="same", name="stem_conv", **torch_init(7 * 7 * channels))(inputs)
    skips = []
    for i in range(1, STAGES + 1):
        x, skip = EncoderBlock(widths[i], kernel_size, name=f"encoder{i}")(x)
        skips.append(skip)
    x = DilatedAxialBottleneck(widths[-1], bottleneck_kernel_size, tuple(bottleneck_dilations), name="bottleneck")(x)
    for i in range(STAGES, 0, -1):
        x = DecoderBlock(widths[i - 1], kernel_size, name=f"decoder{i}")(x, skips[i - 1])
    outputs = layers.Conv2D(num_classes, 1, name="head", dtype="float32", **torch_init(widths[0]))(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
