"""`LayerScale`: a learned per-channel multiplier on a residual branch (CaiT / ConvNeXt), with
its QAT form (`QuantLayerScale`) and quantization rule.

Keras' own `LayerScale` (`keras.src.applications.convnext`) is private, hence this copy.
"""

import keras
from keras import layers, ops

from keras_litenext.quantization.core import (
    QuantLayerMixin,
    quantize_constant,
    quantize_weights,
)
from keras_litenext.quantization.rules import OWN, register_quant_rule

PACKAGE = "keras_litenext"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(layers.Layer):
    """Multiply the last (channel) axis by a learned vector `gamma`, initialised to `init_value`.

    Touvron et al., "Going deeper with Image Transformers" (CaiT, arXiv:2103.17239), and ConvNeXt
    (arXiv:2201.03545) scale each residual branch this way; a small `init_value` (1e-6) makes every
    block start close to the identity.

    Args:
        init_value: float, the initial value of every channel's multiplier. Defaults to `1e-6`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> LayerScale(0.5)(x).shape
    (2, 8, 8, 16)
    """

    def __init__(self, init_value=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis (last) must be known, got shape {input_shape}.")
        self.gamma = self.add_weight(
            name="gamma", shape=(channels,), initializer=keras.initializers.Constant(self.init_value)
        )

    def call(self, inputs):
        return ops.multiply(inputs, ops.cast(self.gamma, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config


@register_quant_rule(LayerScale, output=OWN)
@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantLayerScale(QuantLayerMixin, LayerScale):
    """`LayerScale` as the int8 op it converts to: a depthwise 1x1 convolution with kernel `gamma`.

    On a 4-D (NHWC) input the multiplier is written as `DepthwiseConv2D(1)` with one weight per
    channel, quantized per channel as `QuantDepthwiseConv2D`'s kernel: each channel's `gamma` is
    the end of its own range, so it is exactly on its int8 grid (`127 * scale`), and the file has
    one DEPTHWISE_CONV_2D with no float op. (A MUL with a constant would put every channel's
    `gamma` on one per-tensor grid: the small ones of a trained model round to 0.) Other ranks
    use that MUL, the constant quantized per tensor as the converter does. The output gets its
    own quantizer (the rule's `OWN`).

    Args:
        init_value: float, as `LayerScale`. Defaults to `1e-6`.
        decay: unused (no range of its own; the output's `FakeQuant` follows it).
    """

    def __init__(self, init_value=1e-6, decay=0.99, **kwargs):
        super().__init__(init_value=init_value, **kwargs)
        self._init_quant(decay)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        gamma = ops.cast(self.gamma, "float32")
        channels = int(gamma.shape[0])
        quantize = self.quant_mode == "quantize"
        if len(x.shape) == 4:
            kernel = ops.reshape(gamma, (1, 1, 1, channels))
            if quantize:
                kernel = quantize_weights(kernel, -1)
            outputs = ops.depthwise_conv(x, ops.reshape(kernel, (1, 1, channels, 1)), strides=1, padding="valid")
        else:
            outputs = ops.multiply(x, quantize_constant(gamma) if quantize else gamma)
        return ops.cast(outputs, inputs.dtype)
