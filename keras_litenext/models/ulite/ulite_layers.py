"""U-Lite's blocks (Dinh et al., 2023, arXiv:2306.16103) as builders of standard Keras layers:
the encoder block, the dilated axial bottleneck and the decoder block.

Every block is written from the reference (`duong-db/U-Lite`, `models/ULite.py`) op for op:
BatchNorm with PyTorch's epsilon 1e-5 and momentum 0.1 (Keras `momentum=0.9`), exact (erf)
GELU, nearest x2 up-sampling, PyTorch's initialisation of every convolution.
"""

from keras import layers

from keras_litenext.layers import AxialDepthwiseConv, torch_init

BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d default (Keras' is 1e-3)
BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1


def pointwise(filters, name):
    """A 1x1 convolution with bias and PyTorch's initialisation, named `name`."""

    def apply(x):
        return layers.Conv2D(filters, 1, name=name, **torch_init(int(x.shape[-1])))(x)

    return apply


def batch_norm(name):
    """`BatchNormalization` with PyTorch's epsilon and momentum, named `name`."""
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def EncoderBlock(filters, kernel_size=7, name=None):
    """U-Lite encoder block: axial depthwise mixing, BatchNorm (the skip), 1x1 conv, max-pool, GELU.

    `s = BN(AxialDW_k(x))` is the skip tensor (input channels, input resolution); the block's
    output is `GELU(MaxPool2x2(PW(s)))` with `filters` channels at half resolution. The order
    (the 1x1 conv before the pool, GELU after it) is the reference's.

    Layers: `{name}_axial_{h,w,add}`, `{name}_norm` (the skip), `{name}_conv`, `{name}_pool`,
    `{name}_act`.

    Args:
        filters: int, output channels.
        kernel_size: int, the axial kernel. Defaults to 7 (the reference hard-codes 7).
        name: str, the prefix of the layers' names.

    Returns:
        A function `x -> (y, skip)`.

    Example:
    >>> y, skip = EncoderBlock(32, name="encoder1")(keras.Input((64, 64, 16)))
    >>> y.shape, skip.shape
    ((None, 32, 32, 32), (None, 64, 64, 16))
    """

    def apply(x):
        skip = batch_norm(f"{name}_norm")(AxialDepthwiseConv(kernel_size, name=f"{name}_axial")(x))
        y = pointwise(filters, f"{name}_conv")(skip)
        y = layers.MaxPooling2D(2, name=f"{name}_pool")(y)
        return layers.Activation("gelu", name=f"{name}_act")(y), skip

    return apply


def DilatedAxialBottleneck(filters, kernel_size=3, dilation_rates=(1, 2, 3), name=None):
    """U-Lite bottleneck: 1x1 reduction, parallel dilated axial depthwise branches, BN, 1x1, GELU.

    `z = PW_(C -> C/4)(x)`; `cat = [z, AxialDW_(k, d1)(z), AxialDW_(k, d2)(z), ...]` (in that
    order, each branch with its own identity term); output `GELU(PW_(-> filters)(BN(cat)))`.
    The paper's "axial dilated depthwise convolutions with filters 3x3", dilations 1, 2, 3.

    Layers: `{name}_in_conv`, `{name}_axial{j}_{h,w,add}` (j = 1, 2, ...), `{name}_concat`,
    `{name}_norm`, `{name}_out_conv`, `{name}_act`.

    Args:
        filters: int, output channels; the branches have `filters // 4` channels.
        kernel_size: int, the axial kernel of the branches. Defaults to 3.
        dilation_rates: ints, one branch per dilation. Defaults to `(1, 2, 3)`.
        name: str, the prefix of the layers' names.

    Example:
    >>> DilatedAxialBottleneck(512, name="bottleneck")(keras.Input((8, 8, 512))).shape
    (None, 8, 8, 512)
    """

    def apply(x):
        z = pointwise(filters // 4, f"{name}_in_conv")(x)
        branches = [
            AxialDepthwiseConv(kernel_size, dilation_rate=d, name=f"{name}_axial{j}")(z) for j, d in enumerate(dilation_rates, 1)
        ]
        y = layers.Concatenate(name=f"{name}_concat")([z, *branches])
        y = pointwise(filters, f"{name}_out_conv")(batch_norm(f"{name}_norm")(y))
        return layers.Activation("gelu", name=f"{name}_act")(y)

    return apply


def DecoderBlock(filters, kernel_size=7, name=None):
    """U-Lite decoder block: nearest x2 up-sampling, concatenation with the skip, 1x1 conv, BN,
    axial depthwise mixing, 1x1 conv, GELU.

    `t = [up(x), skip]` (the up-sampled tensor first); output
    `GELU(PW2(AxialDW_k(BN(PW(t)))))` with `filters` channels (the skip's).

    Layers: `{name}_up`, `{name}_concat`, `{name}_in_conv`, `{name}_norm`,
    `{name}_axial_{h,w,add}`, `{name}_out_conv`, `{name}_act`.

    Args:
        filters: int, output channels.
        kernel_size: int, the axial kernel. Defaults to 7.
        name: str, the prefix of the layers' names.

    Returns:
        A function `(x, skip) -> y`.

    Example:
    >>> DecoderBlock(256, name="decoder5")(keras.Input((8, 8, 512)), keras.Input((16, 16, 256))).shape
    (None, 16, 16, 256)
    """

    def apply(x, skip):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = batch_norm(f"{name}_norm")(pointwise(filters, f"{name}_in_conv")(x))
        x = AxialDepthwiseConv(kernel_size, name=f"{name}_axial")(x)
        x = pointwise(filters, f"{name}_out_conv")(x)
        return layers.Activation("gelu", name=f"{name}_act")(x)

    return apply
