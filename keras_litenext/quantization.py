"""Quantization-aware training (QAT) for int8 TFLite, written for Keras 3.

`tensorflow-model-optimization` only quantizes `tf_keras` models, so this module does it on
Keras 3 itself, with `keras.quantizers.fake_quant_with_min_max_vars`. With the TensorFlow
backend that function lowers to TensorFlow's FakeQuant ops, which `tf.lite.TFLiteConverter`
turns into the int8 scales and zero points of the converted model (`keras_litenext.export`).

`quantize_model(model)` rebuilds a trained float model's functional graph so that it computes
what the int8 TFLite file will compute:

- weights: `Conv2D`, `DepthwiseConv2D` and `Dense` become `QuantConv2D`,
  `QuantDepthwiseConv2D` and `QuantDense`, which keep the float kernel and fake-quantize it in
  `call`, per output channel, symmetric, on [-127, 127] (the TFLite int8 weight spec);
- activations: a `FakeQuant` layer (per-tensor, asymmetric, 8 bit, range tracked as a moving
  average of the batch min/max) follows every tensor the converter gives an int8 scale of its
  own: the input, conv/dense outputs, activations, adds, concatenations, global average pools;
- ops that keep their input's scale in TFLite int8 (max-pooling, reshapes, `RepeatVector`, the
  global max-pool, padding) get no quantizer; bilinear up-sampling and average pooling, which
  must keep the input's scale but compute new values, re-use their input's quantizer (the same
  `FakeQuant` layer called a second time, without updating its range);
- softmax and sigmoid outputs use TFLite's fixed output scale (1/256, zero point -128);
- the inputs of a concatenation share its output's range (`tie_ranges`), as the int8
  CONCATENATION op requires and the converter enforces;
- `ChannelLayerNorm` becomes `QuantChannelLayerNorm`, which fake-quantizes every intermediate
  tensor of the int8 graph (mean, centred values, squared difference, variance, variance +
  epsilon, rsqrt, normalised values, x gamma, + beta; gamma and beta as int8 constants), and
  `ScaleWeightedSum` becomes `QuantScaleWeightedSum` (every product and partial sum);
- a `BatchNormalization` right after a convolution or dense layer is folded into it first
  (`fold_batch_norms`); any other layer the module does not know raises
  `UnsupportedLayerError` naming it and what to do.

Weights and biases start from the float model. Ranges start uncalibrated: `calibrate` runs a
few batches through the model with quantization off and sets every range to the min/max seen
(what the TFLite converter's own calibration does for post-training quantization), and
`qat_finetune` calibrates, then fine-tunes with the training loss and data pipeline
(`finetune_run` does it from a run folder's config). After calibration and before any
fine-tuning, the QAT model predicts what the post-training-quantized file computes.

Everything here except the conversion itself uses `keras.layers` / `keras.ops` and runs on
every Keras backend; converting to TFLite needs TensorFlow (`keras_litenext.export`).

Example:
>>> qat = quantize_model(model)                 # model: a trained float LiteNeXt
>>> calibrate(qat, train_images[:64])
>>> qat = qat_finetune(qat, train_ds, val_ds, epochs=3, lr=1e-5, loss=get_loss("bce_dice"))
"""

import math

import keras
import numpy as np
from keras import layers, ops

from keras_litenext.layers import ChannelLayerNorm, ScaleWeightedSum

PACKAGE = "keras_litenext"
MODES = ("quantize", "calibrate", "float")

# TFLite's fixed int8 output scales: softmax/sigmoid 1/256 (zero point -128), tanh 1/128 (0).
UNIT_RANGE = (0.0, 255.0 / 256.0)
TANH_RANGE = (-1.0, 127.0 / 128.0)
FIXED_ACTIVATION_RANGES = {"sigmoid": UNIT_RANGE, "softmax": UNIT_RANGE, "tanh": TANH_RANGE}
# Activations the converter fuses into the preceding conv/dense op (one output scale).
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")


__all__ = [
    "FakeQuant",
    "QuantChannelLayerNorm",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantScaleWeightedSum",
    "UnsupportedLayerError",
    "ConcatRepeatVector",
    "DeployChannelLayerNorm",
    "DeployScaleWeightedSum",
    "calibrate",
    "deployment_model",
    "fold_batch_norms",
    "is_qat_model",
    "quantize_model",
    "quantizer_ranges",
    "set_quant_mode",
    "uncalibrated_quantizers",
]


class UnsupportedLayerError(ValueError):
    """A layer that `quantize_model` cannot turn into an int8-faithful QAT layer."""


# ----------------------------------------------------------------------------------------------
# Fake quantization primitives
# ----------------------------------------------------------------------------------------------
def _fake_quant(x, min_value, max_value, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, min_value, max_value, num_bits=8, narrow_range=narrow_range, axis=axis
    )


def _safe_range(min_value, max_value):
    """A range that holds 0 (as TFLite ranges do) and is not empty."""
    min_value = ops.minimum(min_value, 0.0)
    max_value = ops.maximum(ops.maximum(max_value, 0.0), min_value + 1e-6)
    return min_value, max_value


def quantize_weights(kernel, axis=-1, fake_quant_op=True):
    """Per-channel symmetric int8 fake quantization on [-127, 127] (narrow range), scale
    `max|w| / 127` per channel along `axis`: exactly TFLite's int8 weight quantization.

    With `fake_quant_op=True` it is `keras.quantizers.fake_quant_with_min_max_vars` (a FakeQuant
    op the converter reads). With False the kernel is rounded onto the same grid with a
    straight-through gradient and no FakeQuant op: the converter then quantizes the weights
    itself, with the same scale, and finds them on the grid already. Dense kernels use this
    form because TFLite transposes them, which the converter refuses to do to a per-channel
    FakeQuant.
    """
    rank = len(kernel.shape)
    axis = axis % rank
    reduce_axes = tuple(i for i in range(rank) if i != axis)
    bound = ops.stop_gradient(ops.maximum(ops.max(ops.abs(kernel), axis=reduce_axes, keepdims=not fake_quant_op), 1e-8))
    if fake_quant_op:
        return _fake_quant(kernel, -bound, bound, narrow_range=True, axis=axis)
    scale = bound / 127.0
    rounded = ops.clip(ops.round(kernel / scale), -127.0, 127.0) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def quantize_constant(values):
    """Per-tensor asymmetric int8 fake quantization of a constant (norm gamma/beta), on the range
    the converter gives it: `[min(values, 0), max(values, 0)]`."""
    lo, hi = _safe_range(ops.stop_gradient(ops.min(values)), ops.stop_gradient(ops.max(values)))
    return _fake_quant(values, lo, hi)


class _Range:
    """The min/max of one activation tensor, stored as non-trainable variables of `layer`.

    Modes (`layer.quant_mode`): `"quantize"` fake-quantizes with the stored range and, in
    training, moves it towards the batch min/max (moving average with `layer.decay`);
    `"calibrate"` passes values through unquantized and sets the range to the mean of the
    batch min/max seen (`layer.calibration == "mean"`, the default) or to their extremes
    (`"minmax"`); `"float"` passes values through. A fixed range (softmax, sigmoid, model input) never moves.
    """

    def __init__(self, layer, name, fixed=None, batch_max=None):
        self.layer = layer
        self.name = name
        self.batch_max = batch_max  # how a batch's upper end is taken (None: its max)
        self.fixed = None if fixed is None else (float(fixed[0]), float(fixed[1]))
        if self.fixed is None:
            self.min = layer.add_weight(name=f"{name}_min", shape=(), initializer=keras.initializers.Constant(-6.0), trainable=False)
            self.max = layer.add_weight(name=f"{name}_max", shape=(), initializer=keras.initializers.Constant(6.0), trainable=False)
            self.count = layer.add_weight(name=f"{name}_count", shape=(), initializer="zeros", trainable=False)

    def __call__(self, x, training=False, observe=True):
        mode = self.layer.quant_mode
        if mode == "float":
            return x
        if self.fixed is not None:
            return x if mode == "calibrate" else _fake_quant(x, *self.fixed)
        x32 = ops.cast(x, "float32")
        if observe and mode == "calibrate":
            lo, hi = ops.min(x32), self._batch_max(x32)
            old_lo, old_hi, n = (ops.convert_to_tensor(v) for v in (self.min, self.max, self.count))
            if self.layer.calibration == "minmax":  # the extremes of all batches
                first = ops.equal(n, 0.0)
                self._store(ops.where(first, lo, ops.minimum(old_lo, lo)), ops.where(first, hi, ops.maximum(old_hi, hi)))
            else:  # the mean of the batch extremes
                self._store((old_lo * n + lo) / (n + 1.0), (old_hi * n + hi) / (n + 1.0))
            return x
        if observe and training:  # moving average of the batch min/max (ranges start calibrated)
            d = self.layer.decay
            old_lo, old_hi = ops.convert_to_tensor(self.min), ops.convert_to_tensor(self.max)
            lo, hi = ops.min(x32), self._batch_max(x32)
            lo = ops.where(ops.isfinite(lo), lo, old_lo)
            hi = ops.where(ops.isfinite(hi), hi, old_hi)
            self.min.assign(ops.minimum(d * old_lo + (1.0 - d) * lo, 0.0))
            self.max.assign(ops.maximum(d * old_hi + (1.0 - d) * hi, 0.0))
        if mode == "calibrate":
            return x
        lo, hi = _safe_range(self.min, self.max)
        return ops.cast(_fake_quant(x32, lo, hi), x.dtype)

    def _batch_max(self, x):
        return ops.max(x) if self.batch_max is None else self.batch_max(x)

    def _store(self, lo, hi):
        lo, hi = _safe_range(lo, hi)
        self.min.assign(lo)
        self.max.assign(hi)
        self.count.assign(self.count + 1.0)

    def value(self):
        """`(min, max)` as floats (the fixed range, or the stored one)."""
        if self.fixed is not None:
            return self.fixed
        lo, hi = _safe_range(self.min, self.max)
        return float(ops.convert_to_numpy(lo)), float(ops.convert_to_numpy(hi))


class _QuantLayerMixin:
    """Shared attributes of the layers that own `_Range`s: `quant_mode` and `decay`."""

    quant_mode = "quantize"
    calibration = "mean"

    def _init_quant(self, decay):
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"{self.name}: decay must be in [0, 1), got {decay!r}.")
        self.quant_mode = "quantize"
        self._ranges = {}

    def _add_range(self, name, fixed=None, batch_max=None):
        self._ranges[name] = _Range(self, name, fixed, batch_max)
        return self._ranges[name]

    def ranges(self):
        """`{name: (min, max)}` of every activation range of the layer."""
        return {name: r.value() for name, r in self._ranges.items()}

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class FakeQuant(_QuantLayerMixin, layers.Layer):
    """Per-tensor asymmetric int8 fake quantization of an activation, range tracked by EMA.

    Args:
        fixed_range: optional `(min, max)` that never changes (a softmax output, the input
            image in [0, 1]); None (default) tracks the range.
        decay: moving-average decay of the tracked range in training. Defaults to 0.99.
        **kwargs: standard layer arguments.

    Call arguments:
        observe: bool, default True. False quantizes with the current range without updating
            it, for a second call of the same layer on a tensor that must share its scale.

    A `FakeQuant` after a concatenation lists in `tied` the ranges (`"layer/range"`) of the
    concatenation's inputs: int8 CONCATENATION has one scale for its inputs and output, which
    the converter enforces by writing the inputs on the output's grid. `tie_ranges` gives the
    tied ranges one common range, so that the simulation rounds as the file does.
    """

    def __init__(self, fixed_range=None, decay=0.99, tied=None, **kwargs):
        super().__init__(**kwargs)
        self.fixed_range = None if fixed_range is None else [float(v) for v in fixed_range]
        self.tied = [str(t) for t in tied] if tied else []
        self._init_quant(decay)

    def build(self, input_shape):
        self.range = self._add_range("range", self.fixed_range)

    def call(self, inputs, training=None, observe=True):
        return self.range(inputs, training=bool(training), observe=observe)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "fixed_range": self.fixed_range, "tied": self.tied}


class _QuantKernelMixin(_QuantLayerMixin):
    """Fake-quantized kernel; a non-fusable activation gets its own pre-activation range."""

    def __init__(self, *args, decay=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(decay)
        name = keras.activations.serialize(self.activation) if self.activation is not None else "linear"
        name = name if isinstance(name, str) else str(name.get("config", name))
        self._split_activation = name not in FUSED_ACTIVATIONS

    def build(self, input_shape):
        super().build(input_shape)
        if self._split_activation:
            self.pre_activation = self._add_range("pre_activation")

    def _finish(self, outputs, training):
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (len(outputs.shape) - 1) + (-1,)))
        if self._split_activation:
            outputs = self.pre_activation(outputs, training=bool(training))
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv2D(_QuantKernelMixin, layers.Conv2D):
    """`Conv2D` whose kernel is fake-quantized per output channel (int8, symmetric) in `call`."""

    def call(self, inputs, training=None):
        kernel = self.kernel if self.quant_mode != "quantize" else quantize_weights(self.kernel, -1)
        return self._finish(self.convolution_op(inputs, kernel), training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDepthwiseConv2D(_QuantKernelMixin, layers.DepthwiseConv2D):
    """`DepthwiseConv2D` with a per-channel fake-quantized kernel.

    TFLite stores a depthwise kernel `(kh, kw, C, M)` as `(1, kh, kw, C * M)` with one scale per
    output channel `c * M + m`; the kernel is reshaped the same way to be quantized.
    """

    def call(self, inputs, training=None):
        kernel = self.kernel
        if self.quant_mode == "quantize":
            kh, kw, c, m = kernel.shape
            kernel = ops.reshape(quantize_weights(ops.reshape(kernel, (kh, kw, 1, c * m)), -1), (kh, kw, c, m))
        outputs = ops.depthwise_conv(
            inputs, kernel, strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format
        )
        return self._finish(outputs, training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDense(_QuantKernelMixin, layers.Dense):
    """`Dense` with a per-output-unit fake-quantized kernel (TFLite FULLY_CONNECTED, per channel)."""

    def call(self, inputs, training=None):
        kernel = self.kernel if self.quant_mode != "quantize" else quantize_weights(self.kernel, -1, fake_quant_op=False)
        return self._finish(ops.matmul(inputs, kernel), training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantChannelLayerNorm(_QuantLayerMixin, ChannelLayerNorm):
    """`ChannelLayerNorm` with a quantizer on every tensor of its int8 TFLite lowering.

    It computes the norm as the int8 TFLite graph does, one op at a time, with a fake quantizer
    on every op output: mean, SUB, MUL (centred x centred), mean, ADD (epsilon), RSQRT, MUL,
    MUL (gamma), ADD (beta); gamma and beta are int8 constants. The two channel means are 1x1
    convolutions with weights 1/C, which the int8 kernels round to nearest as the simulation
    does (the int8 MEAN kernel does not, and the norm amplifies those one-step differences).
    Two more choices keep the int8 graph on XNNPACK: the square is a MUL of the quantized centred values (`square(x - mean)` becomes a
    SQUARED_DIFFERENCE op, which XNNPACK does not run in int8 and which made the int8 file
    about 2x slower), and epsilon is put on the variance's grid (an ADD with a constant of a
    much smaller scale is not delegated either). Only RSQRT stays outside XNNPACK.
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
        values near 0. `choose_rsqrt_quantile` picks the quantile by validation Dice.
        """
        if self.rsqrt_quantile is None:
            return ops.max(x)
        return ops.quantile(ops.reshape(ops.where(ops.isfinite(x), x, 0.0), (-1,)), self.rsqrt_quantile)

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


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantScaleWeightedSum(_QuantLayerMixin, ScaleWeightedSum):
    """`ScaleWeightedSum` with a quantizer on every product and partial sum (int8 MUL / ADD)."""

    def __init__(self, decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self._init_quant(decay)

    def build(self, input_shape):
        n = len(input_shape) - 1
        self.q_products = [self._add_range(f"product{i + 1}") for i in range(n)]
        self.q_sums = [self._add_range(f"sum{i + 1}") for i in range(1, n)]

    def call(self, inputs, training=None):
        t = bool(training)
        weights, *values = inputs
        fused = None
        for i, (w, value) in enumerate(zip(ops.split(weights, len(values), axis=1), values)):
            term = self.q_products[i](ops.multiply(value, ops.expand_dims(w, 1)), t)
            fused = term if fused is None else self.q_sums[i - 1](ops.add(fused, term), t)
        return fused


# ----------------------------------------------------------------------------------------------
# TFLite-friendly float equivalents (same math, ops that XNNPACK runs)
# ----------------------------------------------------------------------------------------------
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeployScaleWeightedSum(ScaleWeightedSum):
    """`ScaleWeightedSum` that takes the per-scale weights with one SPLIT instead of a
    STRIDED_SLICE per scale (XNNPACK runs SPLIT, not STRIDED_SLICE). Same result."""

    def call(self, inputs):
        weights, *values = inputs
        fused = None
        for w, value in zip(ops.split(weights, len(values), axis=1), values):
            term = ops.multiply(value, ops.expand_dims(w, 1))
            fused = term if fused is None else ops.add(fused, term)
        return fused


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConcatRepeatVector(layers.RepeatVector):
    """`RepeatVector` as a CONCATENATION of copies (XNNPACK runs it; it does not run TILE)."""

    def call(self, inputs):
        return ops.concatenate([ops.expand_dims(inputs, 1)] * self.n, axis=1)


_DEPLOY = {ChannelLayerNorm: DeployChannelLayerNorm, ScaleWeightedSum: DeployScaleWeightedSum, layers.RepeatVector: ConcatRepeatVector}


def deployment_model(model):
    """A copy of a float `model` with the same weights and outputs (up to float rounding) whose
    TFLite graph XNNPACK runs in one piece: `ChannelLayerNorm`, `ScaleWeightedSum` and
    `RepeatVector` become `DeployChannelLayerNorm`, `DeployScaleWeightedSum` and
    `ConcatRepeatVector`. `keras_litenext.export.convert` applies it to float models.
    Returns `model` itself when it has none of them."""
    if not any(type(layer) in _DEPLOY for layer in model.layers):
        return model

    def clone(layer):
        cls = _DEPLOY.get(type(layer), layer.__class__)
        return cls.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new


QUANT_LAYERS = (FakeQuant, QuantConv2D, QuantDepthwiseConv2D, QuantDense, QuantChannelLayerNorm, QuantScaleWeightedSum)
_NORMS = (ChannelLayerNorm, DeployChannelLayerNorm)
_WEIGHTED_SUMS = (ScaleWeightedSum, DeployScaleWeightedSum)

# ----------------------------------------------------------------------------------------------
# Layer classification
# ----------------------------------------------------------------------------------------------
# Ops whose int8 output keeps the input's scale and values (no new rounding).
_PASSTHROUGH = (
    layers.InputLayer, layers.MaxPooling1D, layers.MaxPooling2D, layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D,
    layers.Reshape, layers.Flatten, layers.RepeatVector, layers.Permute, layers.ZeroPadding2D, layers.Cropping2D,
    layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout, layers.Identity,
)
# Ops that must keep the input's scale but compute new values: re-use the input's quantizer.
_SAME_SCALE = (layers.AveragePooling2D,)
# Ops with an int8 output scale of their own.
_OWN_SCALE = (
    layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum, layers.Concatenate,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.ReLU, layers.LeakyReLU, layers.ELU,
    layers.Rescaling,
)


def _activation_name(layer):
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else str(name)


def _float_config(layer):
    config = layer.get_config()
    config["dtype"] = "float32"
    return config


def _clone_as(cls, layer, **extra):
    config = _float_config(layer)
    config.update(extra)
    return cls.from_config(config)


def _unsupported(layer, why=""):
    supported = ("Conv2D, DepthwiseConv2D, Dense, ChannelLayerNorm, LayerNormalization (last axis), ScaleWeightedSum, "
                 "BatchNormalization right after a Conv2D/DepthwiseConv2D/Dense, Activation, Add, Concatenate, pooling, "
                 "UpSampling2D, Reshape, Softmax and friends")
    return UnsupportedLayerError(
        f"quantize_model: layer {layer.name!r} ({layer.__class__.__name__}) cannot be quantized{why}. Supported: {supported}. "
        f"Rewrite that part of the model with supported layers, or, if the layer only moves values around "
        f"(no arithmetic), pass passthrough=({layer.__class__.__name__!r},)."
    )


def _clone_layer(layer, passthrough, decay):
    """The QAT counterpart of `layer` (a new layer with the same config)."""
    name = layer.__class__.__name__
    if isinstance(layer, QUANT_LAYERS):
        raise UnsupportedLayerError(f"quantize_model: {layer.name!r} is already a QAT layer; pass the float model.")
    if isinstance(layer, keras.Model):
        raise _unsupported(layer, " (a nested model; build the model as one flat functional graph)")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, " (channels_first; TFLite is channels_last)")
    if type(layer) is layers.Conv2D:
        return _clone_as(QuantConv2D, layer, decay=decay)
    if type(layer) is layers.DepthwiseConv2D:
        return _clone_as(QuantDepthwiseConv2D, layer, decay=decay)
    if type(layer) is layers.Dense:
        if len(layer.kernel.shape) != 2:
            raise _unsupported(layer, " (quantized Dense kernels must be 2-D)")
        return _clone_as(QuantDense, layer, decay=decay)
    if type(layer) in _NORMS:
        return _clone_as(QuantChannelLayerNorm, layer, decay=decay)
    if type(layer) is layers.LayerNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if axis not in (-1, len(layer.input.shape) - 1) or layer.rms_scaling:
            raise _unsupported(layer, " (only a LayerNormalization over the last axis, without rms_scaling)")
        return QuantChannelLayerNorm(epsilon=layer.epsilon, decay=decay, name=layer.name, dtype="float32")
    if type(layer) in _WEIGHTED_SUMS:
        return _clone_as(QuantScaleWeightedSum, layer, decay=decay)
    if type(layer) in (layers.RepeatVector, ConcatRepeatVector):
        return _clone_as(ConcatRepeatVector, layer)
    if isinstance(layer, layers.BatchNormalization):
        raise _unsupported(
            layer, " (a BatchNormalization is folded only when it directly follows a Conv2D, DepthwiseConv2D or Dense whose "
            "output nothing else uses; move it there or remove it)"
        )
    if isinstance(layer, (layers.Activation, layers.Softmax, layers.UpSampling2D, *_PASSTHROUGH, *_SAME_SCALE, *_OWN_SCALE)):
        return layer.__class__.from_config(_float_config(layer))
    if name in passthrough:
        return layer.__class__.from_config(_float_config(layer))
    if isinstance(layer, layers.Lambda):
        raise _unsupported(layer, " (Lambda layers cannot be analysed)")
    raise _unsupported(layer)


def _output_rule(layer, passthrough):
    """How the output of (float) `layer` is quantized: None (keeps the input's scale), "same"
    (re-use the input's quantizer), "own", ("fixed", range) or "self" (the layer does it)."""
    if isinstance(layer, (ChannelLayerNorm, ScaleWeightedSum, layers.LayerNormalization)):
        return "self"
    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
        act = _activation_name(layer)
        return ("fixed", FIXED_ACTIVATION_RANGES[act]) if act in FIXED_ACTIVATION_RANGES else "own"
    if isinstance(layer, layers.Activation):
        act = _activation_name(layer)
        if act == "linear":
            return None
        return ("fixed", FIXED_ACTIVATION_RANGES[act]) if act in FIXED_ACTIVATION_RANGES else "own"
    if isinstance(layer, layers.Softmax):
        return ("fixed", UNIT_RANGE)
    if isinstance(layer, layers.UpSampling2D):
        return "same" if layer.interpolation != "nearest" else None
    if isinstance(layer, _SAME_SCALE):
        return "same"
    if isinstance(layer, _OWN_SCALE):
        return "own"
    if isinstance(layer, _PASSTHROUGH) or layer.__class__.__name__ in passthrough:
        return None
    if isinstance(layer, layers.Lambda):
        raise _unsupported(layer, " (Lambda layers cannot be analysed)")
    raise _unsupported(layer)


# ----------------------------------------------------------------------------------------------
# BatchNorm folding
# ----------------------------------------------------------------------------------------------
def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _foldable_pairs(model):
    """`{bn_name: conv_name}` for each BatchNormalization that can be folded into its producer."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        nodes = layer._inbound_nodes
        axis = layer.axis if isinstance(layer.axis, int) else None
        producer = _producer(nodes[0].input_tensors[0]) if len(nodes) == 1 else None
        ok = (
            isinstance(producer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))
            and type(producer) in (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
            and axis in (-1, len(layer.input.shape) - 1)
            and len(producer._inbound_nodes) == 1
            and len(producer._outbound_nodes) == 1
            and _activation_name(producer) == "linear"
        )
        if ok:
            pairs[layer.name] = producer.name
    return pairs


def fold_batch_norms(model):
    """A copy of `model` with every foldable `BatchNormalization` merged into the Conv2D,
    DepthwiseConv2D or Dense layer before it (same outputs in inference, up to float rounding).

    A BatchNormalization is foldable when it normalises the last axis of a conv/dense output
    that nothing else uses and that has no activation. Returns `model` itself when there is none.
    """
    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded_into = {conv: bn for bn, conv in pairs.items()}
    dropped = set()

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            dropped.add(layer.name)
        elif layer.name in folded_into:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in dropped:  # the BatchNorm leaves the graph: its input goes on
            return args[0]
        return layer(*args, **kwargs)

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if layer.name in pairs or not layer.weights:
            continue
        target = new.get_layer(layer.name)
        if layer.name in folded_into:
            bn = model.get_layer(folded_into[layer.name])
            kernel = ops.convert_to_numpy(layer.kernel).astype(np.float64)
            bias = ops.convert_to_numpy(layer.bias).astype(np.float64) if layer.use_bias else 0.0
            gamma = ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else 1.0
            beta = ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else 0.0
            mean = ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
            var = ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
            scale = gamma / np.sqrt(var + bn.epsilon)
            if isinstance(layer, layers.DepthwiseConv2D):
                kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
            else:
                kernel = kernel * scale
            target.set_weights([kernel.astype("float32"), ((bias - mean) * scale + beta).astype("float32")])
        else:
            target.set_weights(layer.get_weights())
    return new


# ----------------------------------------------------------------------------------------------
# The QAT model
# ----------------------------------------------------------------------------------------------
def quantize_model(model, input_range=(0.0, 1.0), decay=0.99, passthrough=()):
    """The quantization-aware-training version of a trained float functional model.

    Args:
        model: a functional `keras.Model` (e.g. `LiteNeXt`), trained; its weights are copied.
        input_range: `(min, max)` of the input values, fixed for the input quantizer. The
            default `(0, 1)` gives the int8 input scale 1/255 and zero point -128, so a camera
            pixel `p` in 0..255 is the int8 value `p - 128`. None tracks the range like any
            other activation.
        decay: moving-average decay of the activation ranges during fine-tuning. Defaults to
            0.99.
        passthrough: class names of custom layers that only move values (like `Reshape`), to be
            kept as they are with no quantizer.

    Returns:
        A functional `keras.Model` with the same inputs, outputs and layer names, plus
        `FakeQuant` layers named `<layer>_quant`. Its quantizer ranges are not calibrated yet:
        call `calibrate` (or `qat_finetune`, which does) before using or converting it.

    Raises:
        UnsupportedLayerError: a layer has no int8-faithful QAT form (the message names it).
    """
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedLayerError("quantize_model: expected a functional keras.Model (built with keras.Input).")
    passthrough = tuple(passthrough)
    source = fold_batch_norms(model)
    for layer in source.layers:  # fail before building anything, naming the first unsupported layer
        if not isinstance(layer, layers.InputLayer):
            _clone_layer(layer, passthrough, decay)
            _output_rule(layer, passthrough)

    originals = {}
    quantizer_of = {}  # id(new tensor) -> the FakeQuant layer whose grid it is on
    grid_of = {}  # id(new tensor) -> "layer/range" of the range whose grid it is on
    inputs = [keras.Input(batch_shape=x.shape, dtype="float32", name=x.name) for x in source.inputs]
    input_ids = {id(x) for x in inputs}
    quantized_inputs = {}

    def clone_function(layer):
        new = _clone_layer(layer, passthrough, decay)
        originals[id(new)] = layer
        return new

    def quantized_input(tensor):
        if id(tensor) not in quantized_inputs:
            fixed = None if input_range is None else tuple(input_range)
            fq = FakeQuant(fixed_range=fixed, decay=decay, name=f"{tensor.name}_quant", dtype="float32")
            q = fq(tensor)
            quantizer_of[id(q)] = fq
            grid_of[id(q)] = f"{fq.name}/range"
            quantized_inputs[id(tensor)] = q
        return quantized_inputs[id(tensor)]

    def call_function(layer, *args, **kwargs):
        original = originals[id(layer)]
        args = keras.tree.map_structure(
            lambda t: quantized_input(t) if id(t) in input_ids else t, args
        )
        flat_in = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
        out = layer(*args, **kwargs)
        rule = _output_rule(original, passthrough)
        source_fq = quantizer_of.get(id(flat_in[0])) if flat_in else None
        if rule is None:
            if source_fq is not None and len(flat_in) == 1:
                quantizer_of[id(out)] = source_fq
            if flat_in and len(flat_in) == 1 and id(flat_in[0]) in grid_of:
                grid_of[id(out)] = grid_of[id(flat_in[0])]
            return out
        if rule == "self":  # the layer's last range quantizes its output
            grid_of[id(out)] = f"{layer.name}/{list(layer._ranges)[-1]}"
            return out
        if rule == "same" and source_fq is not None:
            q = source_fq(out, observe=False)
            quantizer_of[id(q)] = source_fq
            grid_of[id(q)] = f"{source_fq.name}/range"
            return q
        fixed = rule[1] if isinstance(rule, tuple) else None
        tied = [grid_of[id(t)] for t in flat_in if id(t) in grid_of] if isinstance(original, layers.Concatenate) else None
        fq = FakeQuant(fixed_range=fixed, decay=decay, tied=tied, name=f"{layer.name}_quant", dtype="float32")
        q = fq(out)
        quantizer_of[id(q)] = fq
        grid_of[id(q)] = f"{fq.name}/range"
        return q

    structured = keras.tree.pack_sequence_as(source.input, inputs)
    qat = keras.models.clone_model(source, input_tensors=structured, clone_function=clone_function, call_function=call_function)
    _copy_float_weights(source, qat)
    set_quant_mode(qat, "quantize")
    return qat


def _copy_float_weights(source, target):
    by_path = {v.path: v for v in target.weights}
    for layer in source.layers:
        for variable in layer.weights:
            path = variable.path
            if path not in by_path:
                raise RuntimeError(f"quantize_model: no place for weight {path!r} in the QAT model.")
            by_path[path].assign(ops.convert_to_numpy(variable).astype("float32"))


def is_qat_model(model):
    """True when `model` holds `quantize_model`'s layers."""
    return any(isinstance(layer, QUANT_LAYERS) for layer in getattr(model, "layers", []))


def _quant_layers(model):
    return [layer for layer in model.layers if isinstance(layer, _QuantLayerMixin)]


def set_quant_mode(model, mode):
    """Set every quantizer of a QAT model to `"quantize"` (default), `"calibrate"` or `"float"`.

    Compiled train/predict functions are dropped, so the next call traces the new mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    for layer in _quant_layers(model):
        layer.quant_mode = mode
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    return model


def quantizer_ranges(model):
    """`{layer_name/range_name: (min, max)}` of every activation quantizer."""
    out = {}
    for layer in _quant_layers(model):
        for name, value in layer.ranges().items():
            out[f"{layer.name}/{name}"] = value
    return out


def tie_ranges(model):
    """Give each group of tied ranges (a concatenation's inputs and output, see `FakeQuant`)
    their common range: the smallest min and the largest max of the group. `calibrate` and
    `qat_finetune` call it; a group that holds a fixed range is left as it is.

    Returns:
        The number of ranges changed.
    """
    layers_by_name = {layer.name: layer for layer in _quant_layers(model)}

    def lookup(name):
        layer, _, range_name = name.rpartition("/")
        owner = layers_by_name.get(layer)
        return None if owner is None else owner._ranges.get(range_name)

    parent = {}

    def find(name):
        while parent.setdefault(name, name) != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for layer in layers_by_name.values():
        for tied in getattr(layer, "tied", []):
            parent[find(tied)] = find(f"{layer.name}/range")
    groups = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    changed = 0
    for names in groups.values():
        ranges = [lookup(n) for n in names]
        if len(ranges) < 2 or any(r is None or r.fixed is not None for r in ranges):
            continue
        values = [r.value() for r in ranges]
        lo, hi = min(v[0] for v in values), max(v[1] for v in values)
        for r, v in zip(ranges, values):
            if v != (lo, hi):
                r.min.assign(lo)
                r.max.assign(hi)
                changed += 1
    return changed


def uncalibrated_quantizers(model):
    """Names (`layer/range`) of the tracked ranges that never saw data."""
    names = []
    for layer in _quant_layers(model):
        for name, r in layer._ranges.items():
            if r.fixed is None and float(ops.convert_to_numpy(r.count)) == 0.0:
                names.append(f"{layer.name}/{name}")
    return names


def _image_batches(data, batch_size=8):
    """Float image batches from arrays (`(N, H, W, C)` float in [0, 1] or uint8 0-255) or an
    iterable of batches / `(image, mask)` batches (a `tf.data.Dataset`)."""
    if hasattr(data, "shape"):
        arr = np.asarray(data)
        arr = arr.astype("float32") / 255.0 if arr.dtype == np.uint8 else arr.astype("float32")
        for i in range(0, len(arr), batch_size):
            yield arr[i : i + batch_size]
        return
    iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
    for element in iterator:
        x = element[0] if isinstance(element, (tuple, list)) else element
        yield np.asarray(x, dtype="float32")


def calibrate(model, data, steps=None, batch_size=8, statistic="mean"):
    """Set every activation range of a QAT model from data.

    Quantization is off while calibrating, so the ranges are those of the float model.
    `statistic="mean"` (default) sets each range to the mean over batches of the batch min and
    max, what the moving averages of QAT converge to; `"minmax"` to the extremes over all
    batches, as the TFLite converter's post-training calibration does. On the 96x96 DSB 2018
    LiteNeXt the mean of batches of 8 gave a simulated int8 test Dice 0.4 points below float,
    the extremes 1.1 points below: rare outliers waste most of the int8 steps. Runs eagerly
    (layer by layer), which is fine for the few dozen batches it needs.

    Args:
        model: a model from `quantize_model`.
        data: images (float `[0, 1]` or uint8 arrays), or batches / `(image, mask)` batches.
        steps: optional number of batches to use. Defaults to all.
        batch_size: for arrays; it sets what a "batch" extreme is. Defaults to 8.
        statistic: `"mean"` or `"minmax"`.

    Returns:
        The model, in "quantize" mode.
    """
    if not is_qat_model(model):
        raise ValueError("calibrate: the model has no quantizers; build it with quantize_model first.")
    if statistic not in ("mean", "minmax"):
        raise ValueError(f"statistic must be 'mean' or 'minmax', got {statistic!r}.")
    for layer in _quant_layers(model):
        layer.calibration = statistic
        for r in layer._ranges.values():
            if r.fixed is None:
                r.count.assign(0.0)
    set_quant_mode(model, "calibrate")
    seen = 0
    try:
        for i, batch in enumerate(_image_batches(data, batch_size)):
            if steps is not None and i >= steps:
                break
            model(batch, training=False)
            seen += 1
    finally:
        set_quant_mode(model, "quantize")
    if not seen:
        raise ValueError("calibrate: the data gave no batch.")
    tie_ranges(model)
    return model


RSQRT_QUANTILES = (None, 0.99, 0.9, 0.5)


def choose_rsqrt_quantile(model, calibration_data, images, masks, candidates=RSQRT_QUANTILES, steps=8, batch_size=8,
                          calibrate_best=True):
    """Calibrate with each candidate `rsqrt_quantile` of the layer norms (None: the max) and
    keep the one with the best simulated Dice on `images`/`masks` (validation data).

    Which range end is best depends on the images: on BBBC039 (mostly black background) the
    median gave a simulated Dice 4 points above the max, on DSB 2018 the max was best.

    Args:
        calibrate_best: calibrate once more with the best candidate (False when the caller
            calibrates next anyway, as `qat_finetune` does).

    Returns:
        `{candidate: dice}`; the norms keep the best candidate (and, with `calibrate_best`,
        the model is calibrated with it).
    """
    from keras_litenext.metrics import per_image_scores

    norms = [layer for layer in model.layers if isinstance(layer, QuantChannelLayerNorm)]
    scores = {}
    for candidate in candidates:
        for layer in norms:
            layer.rsqrt_quantile = None if candidate is None else float(candidate)
        calibrate(model, calibration_data, steps=steps, batch_size=batch_size)
        logits = np.concatenate([ops.convert_to_numpy(model(b, training=False)) for b in _image_batches(images, batch_size)])
        scores[candidate] = float(np.nanmean(per_image_scores(masks, logits)["dice"]))
    best = max(scores, key=lambda c: scores[c])
    for layer in norms:
        layer.rsqrt_quantile = None if best is None else float(best)
    if calibrate_best:
        calibrate(model, calibration_data, steps=steps, batch_size=batch_size)
    return scores
