"""PyTorch's initialisation and the convolution-norm-activation unit shared by the models."""

import keras
from keras import layers

from keras_litenext.layers.channel_layer_norm import ChannelLayerNorm

NORMS = ("layer", "batch", None)


def torch_init(fan_in):
    """Initializers of PyTorch's `Conv2d` / `Linear` for a layer with `fan_in` inputs per output.

    Kernel and bias both uniform in `+-1/sqrt(fan_in)` (kaiming-uniform with `a=sqrt(5)`), as
    the reference models are trained from. Keras' defaults (Glorot kernel, zero bias) are not
    just a different start here: with zero biases a convolution over an all-black patch gives
    equal channels, the following channel LayerNorm then has zero variance and gradients of
    ~1/sqrt(epsilon) per norm, and LiteNeXt trained on DSB 2018 at 192x192 turned NaN within
    three steps. Returns `{"kernel_initializer": ..., "bias_initializer": ...}` for the layer.

    Example:
    >>> layers.Dense(8, **torch_init(64))
    """
    bound = 1.0 / max(int(fan_in), 1) ** 0.5
    return {
        "kernel_initializer": keras.initializers.RandomUniform(-bound, bound),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


def conv_fan_in(x, kernel_size, depthwise=False):
    """Inputs per output of a convolution over `x` (what PyTorch's init scales by)."""
    k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    return k[0] * k[1] * (1 if depthwise else int(x.shape[-1]))


def ConvNormAct(
    filters,
    kernel_size,
    strides=1,
    padding="same",
    depthwise=False,
    dilation_rate=1,
    epsilon=1e-5,
    norm="layer",
    activation="gelu",
    use_bias=True,
    name=None,
):
    """Convolution, norm, activation: LiteNeXt's CLG unit by default.

    LiteNeXt (Tran et al., 2024, arXiv:2405.15779, Fig. 1c) uses conv + `ChannelLayerNorm` +
    exact (erf) GELU for the stem, the down-sampling units, the mixers of the LGEMixer block, the
    residual bottleneck and the decoder; `norm="batch"` with `activation="relu"` or
    `"hard_swish"` gives the MobileNet-style unit. Adds the layers `{name}_conv`,
    `{name}_norm` (unless `norm=None`) and `{name}_act` (unless `activation=None`), all
    standard or registered layers, with PyTorch's initialisation (`torch_init`).

    Args:
        filters: int, output channels (ignored when `depthwise=True`, which keeps the channels).
        kernel_size: int or tuple, the convolution window.
        strides: int, defaults to 1.
        padding: `"same"` (default) or `"valid"`.
        depthwise: bool, use a `DepthwiseConv2D` instead of a dense `Conv2D`. Defaults to False.
        dilation_rate: int, defaults to 1.
        epsilon: float, the norm's epsilon. Defaults to `1e-5` (PyTorch's).
        norm: `"layer"` (`ChannelLayerNorm`, default), `"batch"` (`BatchNormalization`, which
            quantization folds into the convolution) or None.
        activation: a Keras activation name, or None. Defaults to `"gelu"` (exact, as
            PyTorch's `nn.GELU`).
        use_bias: bool, the convolution's bias. Defaults to True.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((32, 32, 3))
    >>> ConvNormAct(16, 2, strides=2, padding="valid", name="stem")(x).shape
    (None, 16, 16, 16)
    """
    if norm not in NORMS:
        raise ValueError(f"ConvNormAct {name}: norm must be one of {NORMS}, got {norm!r}.")

    def apply(x):
        if depthwise:
            init = torch_init(conv_fan_in(x, kernel_size, depthwise=True))
            x = layers.DepthwiseConv2D(
                kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate, use_bias=use_bias,
                name=f"{name}_conv", depthwise_initializer=init["kernel_initializer"], bias_initializer=init["bias_initializer"],
            )(x)
        else:
            x = layers.Conv2D(
                filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate, use_bias=use_bias,
                name=f"{name}_conv", **torch_init(conv_fan_in(x, kernel_size)),
            )(x)
        if norm == "layer":
            x = ChannelLayerNorm(epsilon, name=f"{name}_norm")(x)
        elif norm == "batch":
            x = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_norm")(x)
        if activation is not None:
            x = layers.Activation(activation, name=f"{name}_act")(x)
        return x

    return apply
