"""The axial depthwise convolution of U-Lite (Dinh et al., 2023, arXiv:2306.16103)."""

from keras import layers

from keras_litenext.layers.conv_norm_act import torch_init


def _pair(value, what, name):
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"AxialDepthwiseConv {name}: {what} must be a positive int or two of them, got {value!r}.")
    return pair


def AxialDepthwiseConv(kernel_size=7, dilation_rate=1, residual=True, use_bias=True, name=None):
    """Axial depthwise convolution: `x + DW_(k x 1)(x) + DW_(1 x k)(x)`.

    U-Lite's "axial depthwise convolution" (Dinh et al., 2023, arXiv:2306.16103): a vertical
    and a horizontal depthwise convolution applied in parallel to the same input and summed
    with it. A k x k receptive field for `2k` weights per channel instead of `k^2`; with
    `residual=True` the block equals one k x k depthwise convolution whose kernel is a cross
    plus 1 at its centre, with the two biases added (the unit test checks that).

    A builder (keras.applications style): it adds the standard layers `{name}_h`
    (`DepthwiseConv2D((k, 1))`), `{name}_w` (`DepthwiseConv2D((1, k))`) and `{name}_add`
    (`Add`) to a functional graph, so the quantizer, the MAC counter and the PyTorch weight
    importer need no rule of their own and a `.keras` file holds only stock layers. Padding is
    'same', which for odd kernels is PyTorch's symmetric `padding='same'` (even kernels are
    refused: the two frameworks pad them on different sides). Kernels and biases use PyTorch's
    initialisation (`torch_init`).

    Args:
        kernel_size: int or `(kh, kw)`, odd; the vertical branch is `(kh, 1)`, the horizontal
            one `(1, kw)`. Defaults to 7.
        dilation_rate: int or `(dh, dw)`, dilation of the vertical and horizontal branch
            along their own axis. Defaults to 1.
        residual: bool, add the input to the two branches. Defaults to True (U-Lite).
        use_bias: bool, biases of the two branches. Defaults to True (U-Lite).
        name: str, the prefix of the layers' names (required: weight import relies on it).

    Example:
    >>> x = keras.Input((32, 32, 16))
    >>> AxialDepthwiseConv(7, name="encoder1_axial")(x).shape
    (None, 32, 32, 16)
    """
    if not name:
        raise ValueError("AxialDepthwiseConv: name is required (the layers are named '{name}_h', '{name}_w', '{name}_add').")
    kh, kw = _pair(kernel_size, "kernel_size", name)
    dh, dw = _pair(dilation_rate, "dilation_rate", name)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"AxialDepthwiseConv {name}: kernel_size must be odd ('same' padding is then symmetric), got {kernel_size!r}.")

    def branch(kernel, dilation, suffix):
        init = torch_init(kernel[0] * kernel[1])
        return layers.DepthwiseConv2D(
            kernel, padding="same", dilation_rate=dilation, use_bias=use_bias, name=f"{name}_{suffix}",
            depthwise_initializer=init["kernel_initializer"], bias_initializer=init["bias_initializer"],
        )

    def apply(x):
        h = branch((kh, 1), (dh, 1), "h")(x)
        w = branch((1, kw), (1, dw), "w")(x)
        return layers.Add(name=f"{name}_add")([x, h, w] if residual else [h, w])

    return apply
