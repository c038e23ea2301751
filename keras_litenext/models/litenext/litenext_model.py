"""LiteNeXt (Tran et al., 2024): a 0.71 M-parameter ConvMixer-style segmentation network.

Paper: "LiteNeXt: A Novel Lightweight ConvMixer-based Model with Self-embedding Representation
Parallel for Medical Image Segmentation", arXiv:2405.15779; Biomedical Signal Processing and
Control, 2025.
"""

import keras
from keras import layers

from keras_litenext.layers import ConvNormAct, check_input_shape, torch_init
from keras_litenext.models.litenext.litenext_layers import (
    DownsampleBlock,
    LGEMixerBlock,
    MultiScaleAttentionFusion,
    ResidualBottleneck,
)

STRIDE = 16  # the stem halves the input, then three down-sampling stages


def LiteNeXt(
    input_shape=(256, 256, 3),
    num_classes=1,
    width=16,
    kernel_size=7,
    depths=(1, 1, 1, 1),
    dilation_rate=1,
    weights=None,
    name="litenext",
):
    """Build LiteNeXt, a lightweight ConvMixer-based segmentation network.

    Reference: Tran, Tran, Nguyen, Vu, Pham, "LiteNeXt: A Novel Lightweight ConvMixer-based
    Model with Self-embedding Representation Parallel for Medical Image Segmentation",
    arXiv:2405.15779 (BSPC 2025).

    Encoder: a 2x2/2 CLG stem and four stages of `LGEMixerBlock`s at widths `width * (1, 2, 4,
    8)`, stages 2-4 opened by a `DownsampleBlock`; a `ResidualBottleneck`; then a single
    `MultiScaleAttentionFusion` of all four stage outputs and the bottleneck at half resolution,
    a 1x1 CLG unit, bilinear up-sampling x2 and a 1x1 head. There are no U-Net skip
    concatenations.

    The defaults give the paper's model: 711,201 parameters, 412 M MACs at 256x256.
    `kernel_size=3` gives the authors' repository default (701,601 parameters). With the
    reference's weights (`keras_litenext.load_torch_weights`) the outputs match the PyTorch code
    to float32 rounding. Deviation: the reference builds DropBlock layers it never calls; they
    are omitted.

    The output is **logits** at the input resolution, `(batch, height, width, num_classes)`:
    with `num_classes=1`, `sigmoid(logits) > 0.5` (i.e. `logits > 0`) is the mask; with more
    classes, take the arg-max of the softmax over the last axis.

    Args:
        input_shape: `(height, width, channels)`. Height and width may be `None` (any size
            at run time) but when given must be multiples of 16; channels 1 (grey) or 3 (RGB).
            Pixels are expected in `[0, 1]`. Defaults to `(256, 256, 3)`.
        num_classes: int, output channels. 1 (default) gives one logit map for binary
            segmentation; more gives per-class logits.
        width: int, channels of the first stage. Defaults to 16.
        kernel_size: int, the depthwise (FarMixer) kernel of every stage. Defaults to 7.
        depths: four ints, LGEMixer blocks per stage. Defaults to `(1, 1, 1, 1)`.
        dilation_rate: int, dilation of the depthwise kernels. Defaults to 1.
        weights: `None` (random initialisation) or the path of a `.weights.h5` file saved from
            a model of the same configuration.
        name: str, the model's name. Defaults to `"litenext"`.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = LiteNeXt()
    >>> model.count_params()
    711201
    """
    height, width_px, channels = check_input_shape(input_shape, STRIDE, "LiteNeXt")
    depths = tuple(int(d) for d in depths)
    if len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"LiteNeXt: depths must be four positive ints, got {depths!r}.")
    if int(num_classes) < 1:
        raise ValueError(f"LiteNeXt: num_classes must be >= 1, got {num_classes!r}.")
    widths = [width * 2**i for i in range(4)]

    inputs = keras.Input((height, width_px, channels), name="image")
    x = ConvNormAct(widths[0], 2, strides=2, padding="valid", name="stem")(inputs)
    features = []
    for stage, (filters, depth) in enumerate(zip(widths, depths), start=1):
        if stage > 1:
            x = DownsampleBlock(filters, name=f"stage{stage}_down")(x)
        for block in range(1, depth + 1):
            x = LGEMixerBlock(filters, kernel_size, dilation_rate, name=f"stage{stage}_block{block}")(x)
        features.append(x)
    bottleneck = ResidualBottleneck(widths[-1], name="bottleneck")(x)
    x = MultiScaleAttentionFusion(8 * width, scales=(1, 2, 4, 8, 8), name="fusion")([*features, bottleneck])
    x = ConvNormAct(width, 1, name="decoder")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="decoder_up")(x)
    outputs = layers.Conv2D(num_classes, 1, name="head", dtype="float32", **torch_init(x.shape[-1]))(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def feature_layers(model):
    """LiteNeXt's encoder features, shallow to deep: the output of the last LGEMixer block of
    each stage (`stage{s}_block{depth}_mix_act`, at strides 2, 4, 8 and 16)."""
    names = {layer.name for layer in model.layers}
    found = []
    for stage in range(1, 5):
        depth = 0
        while f"stage{stage}_block{depth + 1}_mix_act" in names:
            depth += 1
        if depth:
            found.append(f"stage{stage}_block{depth}_mix_act")
    return tuple(found)
