"""`ChannelLayerNorm`: layer normalisation over channels, written out so that it quantizes, with
its QAT form (`QuantChannelLayerNorm`), its TFLite deployment form (`DeployChannelLayerNorm`)
and their quantization rules."""

import math

import keras
from keras import layers, ops

from keras_litenext.quantization.core import QuantLayerMixin, quantize_constant
from keras_litenext.quantization.rules import (
    SELF,
    QuantRule,
    register_quant_rule,
    unsupported_error,
)

PACKAGE = "keras_litenext"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelLayerNorm(layers.Layer):
    """Layer normalisation over the last (channel) axis, with a learned scale and shift.

    The same function as `keras.layers.LayerNormalization(axis=-1)`, written out as
    mean, subtract, square, mean, rsqrt, scale and shift. The stock layer lowers to a fused
    float op that the TFLite converter leaves in float32 (wrapped in DEQUANTIZE/QUANTIZE pairs)
    when a model is converted to int8; this form lowers to plain MEAN/SUB/MUL/RSQRT/ADD ops that
    quantize. LiteNeXt (Tran et al., 2024, arXiv:2405.15779) uses it after every convolution,
    with `epsilon=1e-5` (PyTorch's default, which the reference model uses; Keras' own default
    is 1e-3).

    Half-precision inputs are normalised in float32 and cast back, as Keras' own norm layers do.

    Args:
        epsilon: float, added to the variance. Defaults to `1e-5`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> ChannelLayerNorm()(x).shape
    (2, 8, 8, 16)
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel axis (last) must be known, got shape {input_shape}.")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = ops.cast(inputs, "float32") if dtype in ("float16", "bfloat16") else inputs
        mean = ops.mean(x, axis=-1, keepdims=True)
        centered = ops.subtract(x, mean)
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        normed = ops.multiply(centered, ops.rsqrt(ops.add(variance, self.epsilon)))
        outputs = ops.add(ops.multiply(normed, ops.cast(self.gamma, x.dtype)), ops.cast(self.beta, x.dtype))
        return ops.cast(outputs, dtype) if dtype != keras.backend.standardize_dtype(x.dtype) else outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeployChannelLayerNorm(ChannelLayerNorm):
    """`ChannelLayerNorm` with the square written as a MUL of the centred values.

    `square(x - mean)` converts to SQUARED_DIFFERENCE, which XNNPACK runs in float but not in
    int8; the product converts to MUL, which it runs in both. Same result up to float rounding.
    """

    def call(self, inputs):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = ops.cast(inputs, "float32") if dtype in ("float16", "bfloat16") else inputs
        centered = ops.subtract(x, ops.mean(x, axis=-1, keepdims=True))
        variance = ops.mean(ops.multiply(centered, centered), axis=-1, keepdims=True)
        normed = ops.multiply(centered, ops.rsqrt(ops.add(variance, self.epsilon)))
        outputs = ops.add(ops.multiply(normed, ops.cast(self.gamma, x.dtype)), ops.cast(self.beta, x.dtype))
        return ops.cast(outputs, dtype) if dtype != keras.backend.standardize_dtype(x.dtype) else outputs


@register_quant_rule((ChannelLayerNorm, DeployChannelLayerNorm), output=SELF, deploy_class=DeployChannelLayerNorm)
@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantChannelLayerNorm(QuantLayerMixin, ChannelLayerNorm):
    """`ChannelLayerNorm` with a quantizer on every tensor of its int8 TFLite lowering.

    It computes the norm as the int8 TFLite graph does, one op at a time, with a fake quantizer
    on every op output: mean, SUB, MUL (centred x centred), mean, ADD (epsilon), RSQRT, MUL,
    MUL (gamma), ADD (beta); gamma and beta are int8 constants. The two channel means are 1x1
    convolutions with weights 1/C, which the int8 kernels round to nearest as the simulation
    does (the int8 MEAN kernel does not, and the norm amplifies those one-step differences).
    Two more choices keep the int8 graph on XNNPACK: the square is a MUL of the quantized
    centred values (`square(x - mean)` becomes a SQUARED_DIFFERENCE op, which XNNPACK does not
    run in int8 and which made the int8 file about 2x slower), and epsilon is put on the
    variance's grid (an ADD with a constant of a much smaller scale is not delegated either).
    Only RSQRT stays outside XNNPACK.

    Args:
        epsilon: float, as `ChannelLayerNorm`. Defaults to `1e-5`.
        decay: moving-average decay of the ranges in training. Defaults to 0.99.
        rsqrt_quantile: None (default: a batch's max) or the quantile of `1/sqrt(variance)`
            taken as a batch's upper range end (`choose_rsqrt_quantile` picks it).
    """

    STEPS = ("mean", "centered", "squared", "variance", "variance_eps", "rsqrt", "normed", "scaled", "output")

    def __init__(self, epsilon=1e-5, decay=0.99, rsqrt_quantile=None, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        self.rsqrt_quantile = None if rsqrt_quantile is None else float(rsqrt_quantile)
        self._init_quant(decay)

    def build(self, input_shape):
        super().build(input_shape)
        for step in self.STEPS:
            setattr(self, f"q_{step}", self._add_range(step, batch_max=self._rsqrt_top if step == "rsqrt" else None))

    def _rsqrt_top(self, x):
        """A batch's upper end of `1/sqrt(variance)`: its max, or `rsqrt_quantile` of it.

        Flat pixels (a black background) have variances near 0 and values up to
        `1/sqrt(epsilon)` (~316), typical pixels 0.3-3: a range up to the max leaves those one
        or two int8 steps (on BBBC039 that cost 3.6 points of Dice). Clipped pixels have centred
        values near 0. `choose_rsqrt_quantile` picks the quantile by a validation score.
        """
        record = getattr(self, "rsqrt_record", None)  # choose_rsqrt_quantile's one pass for every candidate (eager)
        if record is not None:
            record.batches.append((ops.min(x), {q: self._top(x, q) for q in record.candidates}))
        return self._top(x, self.rsqrt_quantile)

    @staticmethod
    def _top(x, quantile):
        if quantile is None:
            return ops.max(x)
        return ops.quantile(ops.reshape(ops.where(ops.isfinite(x), x, 0.0), (-1,)), quantile)

    def call(self, inputs, training=None):
        t = bool(training)
        quantize = self.quant_mode == "quantize"
        x = ops.cast(inputs, "float32")
        mean = self.q_mean(self._channel_mean(x), t)
        centered = self.q_centered(ops.subtract(x, mean), t)
        variance = self.q_variance(self._channel_mean(self.q_squared(ops.multiply(centered, centered), t)), t)
        # epsilon on the variance's grid: an int8 ADD of two same-scale tensors, which XNNPACK runs
        epsilon = self.q_variance(ops.convert_to_tensor(self.epsilon, "float32"), t, observe=False) if quantize else self.epsilon
        variance = self.q_variance_eps(ops.add(variance, epsilon), t)
        inv = self._inverse_sqrt(variance)  # a variance of 0 gives inf, which the int8 RSQRT clamps to its range
        if t:  # keep the moving-average range finite: the float norm never exceeds 1/sqrt(epsilon)
            inv = ops.minimum(inv, 1.0 / math.sqrt(self.epsilon))
        normed = self.q_normed(ops.multiply(centered, self.q_rsqrt(inv, t)), t)
        gamma, beta = self.gamma, self.beta
        if quantize:
            gamma, beta = quantize_constant(gamma), quantize_constant(beta)
        outputs = ops.add(self.q_scaled(ops.multiply(normed, gamma), t), beta)
        if t and quantize:
            # Forward: the int8 chain above. Backward: the float norm's gradient. Through the
            # chain itself, clipped quantizers break the cancellation between the centred and
            # the variance paths and leave 1/sigma^3 terms: gradients of 1e28 in a trained
            # LiteNeXt.
            reference = self._float_norm(x)
            outputs = reference + ops.stop_gradient(outputs - reference)
        return ops.cast(self.q_output(outputs, t), inputs.dtype)

    @staticmethod
    def _inverse_sqrt(variance):
        return ops.rsqrt(variance)

    def _float_norm(self, x):
        mean = ops.mean(x, axis=-1, keepdims=True)
        centered = ops.subtract(x, mean)
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        normed = ops.multiply(centered, ops.rsqrt(ops.add(variance, self.epsilon)))
        return ops.add(ops.multiply(normed, self.gamma), self.beta)

    @staticmethod
    def _channel_mean(x):
        """Mean over channels as a 1x1 convolution with weights 1/C (exact in int8: one
        per-channel scale, every weight 127). The int8 MEAN kernel rounds differently from
        round-to-nearest in about 10 % of its outputs, and a one-step change of a variance
        near zero moves the normalised values a lot; CONV_2D requantizes to nearest."""
        if len(x.shape) != 4 or x.shape[-1] is None:
            return ops.mean(x, axis=-1, keepdims=True)
        c = x.shape[-1]
        return ops.conv(x, ops.full((1, 1, c, 1), 1.0 / c, dtype="float32"))

    def get_config(self):
        return {**super().get_config(), "rsqrt_quantile": self.rsqrt_quantile}


@register_quant_rule(layers.LayerNormalization)
class _LayerNormalizationRule(QuantRule):
    """A stock `LayerNormalization` over the last axis quantizes as `QuantChannelLayerNorm`
    (the stock layer's fused float op has no int8 kernel)."""

    def quantize(self, layer, decay):
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if axis not in (-1, len(layer.input.shape) - 1) or layer.rms_scaling or not (layer.center and layer.scale):
            raise unsupported_error(
                layer, " (only a LayerNormalization over the last axis, with center and scale, without rms_scaling)", hint=False
            )
        return QuantChannelLayerNorm(epsilon=layer.epsilon, decay=decay, name=layer.name, dtype="float32")

    def output(self, layer):
        return SELF
