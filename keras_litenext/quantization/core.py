"""Fake-quantization primitives: the int8 grids of TFLite, activation ranges, `FakeQuant`.

Everything here is `keras.ops`, so it runs on every Keras backend. With the TensorFlow backend
`keras.quantizers.fake_quant_with_min_max_vars` lowers to TensorFlow's FakeQuant ops, which the
TFLite converter turns into the int8 scales and zero points of the converted file.
"""

import keras
from keras import layers, ops

PACKAGE = "keras_litenext"
MODES = ("quantize", "calibrate", "float")

# TFLite's fixed int8 output scales: softmax/sigmoid 1/256 (zero point -128), tanh 1/128 (0).
UNIT_RANGE = (0.0, 255.0 / 256.0)
TANH_RANGE = (-1.0, 127.0 / 128.0)
FIXED_ACTIVATION_RANGES = {"sigmoid": UNIT_RANGE, "softmax": UNIT_RANGE, "tanh": TANH_RANGE}
# Activations the converter fuses into the preceding conv/dense op (one output scale).
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")


class UnsupportedLayerError(ValueError):
    """A layer (or `keras.ops` node) that `quantize_model` cannot turn into an int8-faithful QAT form."""


def fake_quant(x, min_value, max_value, narrow_range=False, axis=None):
    """8-bit fake quantization on `[min_value, max_value]` (per tensor, or per channel along `axis`)."""
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, min_value, max_value, num_bits=8, narrow_range=narrow_range, axis=axis
    )


def safe_range(min_value, max_value):
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
        return fake_quant(kernel, -bound, bound, narrow_range=True, axis=axis)
    scale = bound / 127.0
    rounded = ops.clip(ops.round(kernel / scale), -127.0, 127.0) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def quantize_constant(values):
    """Per-tensor asymmetric int8 fake quantization of a constant (a norm's gamma/beta, the
    operand of `x * c`), on the range the converter gives it: `[min(values, 0), max(values, 0)]`.
    A scalar is on its own grid (it is an end of its range), so only arrays change."""
    lo, hi = safe_range(ops.stop_gradient(ops.min(values)), ops.stop_gradient(ops.max(values)))
    return fake_quant(values, lo, hi)


class QuantRange:
    """The min/max of one activation tensor, stored as non-trainable variables of `layer`.

    Modes (`layer.quant_mode`): `"quantize"` fake-quantizes with the stored range and, in
    training, moves it towards the batch min/max (moving average with `layer.decay`);
    `"calibrate"` passes values through unquantized and sets the range to the mean of the
    batch min/max seen (`layer.calibration == "mean"`, the default) or to their extremes
    (`"minmax"`); `"float"` passes values through. A fixed range (softmax, sigmoid, model
    input) never moves.
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
            return x if mode == "calibrate" else fake_quant(x, *self.fixed)
        x32 = ops.cast(x, "float32")
        if observe and mode == "calibrate":
            self.observe(ops.min(x32), self._batch_max(x32))
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
        lo, hi = safe_range(self.min, self.max)
        return ops.cast(fake_quant(x32, lo, hi), x.dtype)

    def observe(self, lo, hi):
        """Calibration: take one batch's `lo` / `hi` into the range (the running mean of the batch
        extremes, or their extremes with `layer.calibration == "minmax"`) and count the batch."""
        old_lo, old_hi, n = (ops.convert_to_tensor(v) for v in (self.min, self.max, self.count))
        if self.layer.calibration == "minmax":  # the extremes of all batches
            first = ops.equal(n, 0.0)
            self._store(ops.where(first, lo, ops.minimum(old_lo, lo)), ops.where(first, hi, ops.maximum(old_hi, hi)))
        else:  # the mean of the batch extremes
            self._store((old_lo * n + lo) / (n + 1.0), (old_hi * n + hi) / (n + 1.0))

    def _batch_max(self, x):
        return ops.max(x) if self.batch_max is None else self.batch_max(x)

    def _store(self, lo, hi):
        lo, hi = safe_range(lo, hi)
        self.min.assign(lo)
        self.max.assign(hi)
        self.count.assign(self.count + 1.0)

    def value(self):
        """`(min, max)` as floats (the fixed range, or the stored one)."""
        if self.fixed is not None:
            return self.fixed
        lo, hi = safe_range(self.min, self.max)
        return float(ops.convert_to_numpy(lo)), float(ops.convert_to_numpy(hi))


class QuantLayerMixin:
    """What every QAT layer has: `quant_mode`, `calibration`, `decay` and named `QuantRange`s.

    A QAT layer calls `self._init_quant(decay)` in `__init__` and `self._add_range(name)` in
    `build`; `quantize_model`, `calibrate` and the range utilities find it by this mixin.
    """

    quant_mode = "quantize"
    calibration = "mean"

    def _init_quant(self, decay):
        self.decay = float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"{self.name}: decay must be in [0, 1), got {decay!r}.")
        self.quant_mode = "quantize"
        self._ranges = {}

    def _add_range(self, name, fixed=None, batch_max=None):
        self._ranges[name] = QuantRange(self, name, fixed, batch_max)
        return self._ranges[name]

    def ranges(self):
        """`{name: (min, max)}` of every activation range of the layer."""
        return {name: r.value() for name, r in self._ranges.items()}

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FakeQuant(QuantLayerMixin, layers.Layer):
    """Per-tensor asymmetric int8 fake quantization of an activation, range tracked by EMA.

    Args:
        fixed_range: optional `(min, max)` that never changes (a softmax output, the input
            image in [0, 1]); None (default) tracks the range.
        decay: moving-average decay of the tracked range in training. Defaults to 0.99.
        tied: names (`"layer/range"`) of the ranges that must equal this one (see below).
        **kwargs: standard layer arguments.

    Call arguments:
        observe: bool, default True. False quantizes with the current range without updating
            it, for a second call of the same layer on a tensor that must share its scale.

    A `FakeQuant` after a concatenation lists in `tied` the ranges of the concatenation's
    inputs: int8 CONCATENATION has one scale for its inputs and output, which the converter
    enforces by writing the inputs on the output's grid. `tie_ranges` gives the tied ranges one
    common range, so that the simulation rounds as the file does.

    Example:
    >>> fq = FakeQuant(fixed_range=(0.0, 1.0))
    >>> fq(keras.ops.ones((1, 4))).shape
    (1, 4)
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
