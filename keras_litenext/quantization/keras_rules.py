"""QAT forms and quantization rules of stock Keras layers and of `keras.ops` graph nodes.

Weighted layers (`Conv2D`, `DepthwiseConv2D`, `Conv2DTranspose`, `Dense`) become `QuantConv2D`,
`QuantDepthwiseConv2D`, `QuantConv2DTranspose` and `QuantDense`, which keep the float kernel and
fake-quantize it in `call`, per output channel, symmetric, on [-127, 127] (the TFLite int8
weight spec). The other layers are copied, and their rule says how their output is quantized:

- own int8 scale (`OWN`): conv/dense outputs, activations, adds (an `Add` of three or more
  tensors becomes `QuantAdd`, which also quantizes each partial sum, as the chain of int8 ADDs
  it converts to does), products, concatenations
  (inputs tied to the output, as int8 CONCATENATION requires), global average pools, batched
  dot products (`Dot`, int8 BATCH_MATMUL);
- a `BatchNormalization` that `fold_batch_norms` could not fold (after an add or a
  concatenation) becomes `QuantBatchNormalization`, a per-channel depthwise 1x1 convolution;
- the input's scale and values (`KEEP`): max-pooling, reshapes, padding, `RepeatVector`, dropout;
- the input's scale, new values (`SAME`): bilinear up-sampling and average pooling;
- TFLite's fixed output scales: softmax and sigmoid 1/256 (zero point -128), tanh 1/128.

`keras.ops` arithmetic written into a functional graph (`x + 3.0`, `x * (1 / 6)`, `ops.relu6`,
as `keras.applications.MobileNetV3` does) follows the same rules: an add, product or
activation node gets its own `FakeQuant`; an array constant operand is put on the int8 grid
the converter gives it (`QuantConstantOp`; a scalar already is on it: it is an end of its own
range); shape ops keep their input's scale. Nodes without a rule (`ops.divide`, `ops.exp`, ...) raise an error that names the
node and the layer to use instead.
"""

import keras
import numpy as np
from keras import layers, ops
from keras.src.ops import nn as _nn
from keras.src.ops import numpy as _np

from keras_litenext.quantization.core import (
    FIXED_ACTIVATION_RANGES,
    FUSED_ACTIVATIONS,
    PACKAGE,
    TANH_RANGE,
    UNIT_RANGE,
    QuantLayerMixin,
    quantize_constant,
    quantize_weights,
)
from keras_litenext.quantization.rules import (
    KEEP,
    OWN,
    SAME,
    QuantRule,
    clone_as,
    display_name,
    float_config,
    register_quant_rule,
    unsupported_error,
)


def activation_name(layer):
    """The serialized name of a layer's `activation` (`"relu"`, `"gelu"`, ...)."""
    if getattr(layer, "activation", None) is None:
        return "linear"
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else str(name.get("config", name) if isinstance(name, dict) else name)


def activation_output(name):
    """The output rule of an activation function: fixed TFLite scale, own scale, or none (linear)."""
    if name == "linear":
        return KEEP
    return FIXED_ACTIVATION_RANGES.get(name, OWN)


# ----------------------------------------------------------------------------------------------
# QAT forms of the weighted layers
# ----------------------------------------------------------------------------------------------
class _QuantKernelMixin(QuantLayerMixin):
    """Fake-quantized kernel; a non-fusable activation gets its own pre-activation range."""

    def __init__(self, *args, decay=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(decay)
        self._split_activation = activation_name(self) not in FUSED_ACTIVATIONS

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


class _KernelRule(QuantRule):
    """Conv/dense: the QAT kernel class; the output scale is the activation's."""

    def quantize(self, layer, decay):
        if isinstance(layer, layers.Dense) and len(layer.kernel.shape) != 2:
            raise unsupported_error(layer, " (quantized Dense kernels must be 2-D)", hint=False)
        return super().quantize(layer, decay)

    def output(self, layer):
        return FIXED_ACTIVATION_RANGES.get(activation_name(layer), OWN)


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
class QuantConv2DTranspose(_QuantKernelMixin, layers.Conv2DTranspose):
    """`Conv2DTranspose` whose kernel `(kh, kw, out, in)` is put on the int8 grid per output
    channel (TFLite TRANSPOSE_CONV, per channel). As for `QuantDense`, the kernel is rounded with
    a straight-through gradient and no FakeQuant op: TFLite stores it transposed (`(out, kh, kw,
    in)`), which the converter refuses to do to a per-channel FakeQuant; it quantizes the
    rounded kernel itself with the same scales."""

    def call(self, inputs, training=None):
        kernel = self.kernel if self.quant_mode != "quantize" else quantize_weights(self.kernel, -2, fake_quant_op=False)
        outputs = ops.conv_transpose(
            inputs, kernel, strides=list(self.strides), padding=self.padding, output_padding=self.output_padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )
        return self._finish(outputs, training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConcatRepeatVector(layers.RepeatVector):
    """`RepeatVector` as a CONCATENATION of copies (XNNPACK runs it; it does not run TILE)."""

    def call(self, inputs):
        return ops.concatenate([ops.expand_dims(inputs, 1)] * self.n, axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConcatUpSampling2D(layers.UpSampling2D):
    """Nearest-neighbour `UpSampling2D` as CONCATENATION and RESHAPE ops, the same values.

    Keras' own lowers to `repeat` (TILE ops), which XNNPACK does not run, in float or int8: each
    one cut U-Lite's file into partitions (11 for 10 up-samplings). Copies side by side along the
    channels, reshaped, repeat the columns; copies along a new axis, reshaped, repeat the rows.
    """

    def call(self, inputs):
        if self.interpolation != "nearest" or self.data_format != "channels_last" or any(d is None for d in inputs.shape[1:]):
            return super().call(inputs)
        rows, cols = self.size
        _, h, w, c = inputs.shape
        x = ops.reshape(ops.concatenate([inputs] * cols, axis=-1), (-1, h, 1, w * cols * c)) if cols > 1 else (
            ops.reshape(inputs, (-1, h, 1, w * c)))
        x = ops.concatenate([x] * rows, axis=2) if rows > 1 else x
        return ops.reshape(x, (-1, h * rows, w * cols, c))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantBatchNormalization(QuantLayerMixin, layers.BatchNormalization):
    """A `BatchNormalization` that no convolution absorbs, as the int8 depthwise 1x1 convolution
    it converts to.

    A BatchNorm right after a conv or dense layer is folded into it (`fold_batch_norms`); one
    after an add or a concatenation (U-Lite's skips and bottleneck) cannot be. In inference it
    is `x * s + (beta - mean * s)`, `s = gamma / sqrt(var + epsilon)` per channel. The stock
    layer converts to MUL and ADD with per-*tensor* int8 constants, one scale for every
    channel's `s`; written as a depthwise 1x1 convolution with kernel `s` and that bias it
    converts to one DEPTHWISE_CONV_2D with per-channel int8 weights (one weight per channel, so
    exactly on its grid) and an int32 bias. The kernel is fake-quantized as
    `QuantDepthwiseConv2D`'s. Statistics stay frozen (the moving ones, also in training), as in
    a folded BatchNorm; gamma and beta stay trainable. The output gets its own quantizer.

    Args:
        decay: unused (no range of its own; the output's `FakeQuant` follows it).
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def __init__(self, *args, decay=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(decay)

    def call(self, inputs, training=None, mask=None):
        channels = inputs.shape[-1]
        x = ops.cast(inputs, "float32")
        scale = ops.rsqrt(ops.add(ops.cast(self.moving_variance, "float32"), self.epsilon))
        if self.scale:
            scale = ops.multiply(scale, ops.cast(self.gamma, "float32"))
        bias = ops.negative(ops.multiply(ops.cast(self.moving_mean, "float32"), scale))
        if self.center:
            bias = ops.add(bias, ops.cast(self.beta, "float32"))
        kernel = ops.reshape(scale, (1, 1, 1, channels))
        if self.quant_mode == "quantize":
            kernel = quantize_weights(kernel, -1)
        outputs = ops.depthwise_conv(x, ops.reshape(kernel, (1, 1, channels, 1)), strides=1, padding="valid")
        outputs = ops.add(outputs, ops.reshape(bias, (1, 1, 1, channels)))
        return ops.cast(outputs, inputs.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantAdd(QuantLayerMixin, layers.Add):
    """An `Add` of three or more tensors with every partial sum quantized, as TFLite computes it.

    `Add()([a, b, c])` lowers to two int8 ADDs, `(a + b) + c`, and the converter gives the
    intermediate `a + b` a scale of its own (calibrated on the representative data): the second
    ADD reads it rounded onto that grid. Summing in float and quantizing once (the output's
    `FakeQuant`) skips that rounding, and a BatchNormalization after the sum (U-Lite's axial
    blocks) multiplies the difference by its scale, up to tens of output steps. Here partial sum
    `i` is quantized by range `partial{i}`; the last sum is quantized by the output's `FakeQuant`.

    Args:
        decay: moving-average decay of the partial-sum ranges in training. Defaults to 0.99.
        **kwargs: `keras.layers.Add` arguments.
    """

    def __init__(self, *args, decay=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(decay)

    def build(self, input_shape):
        super().build(input_shape)
        self._partials = [self._add_range(f"partial{i}") for i in range(1, len(input_shape) - 1)]

    def call(self, inputs, training=None):
        output = inputs[0]
        for i in range(1, len(inputs)):
            output = ops.add(output, inputs[i])
            if i < len(inputs) - 1:
                output = self._partials[i - 1](output, training=bool(training))
        return output


class _AddRule(QuantRule):
    """An `Add` of two tensors is copied (one ADD, its output quantized); of three or more it
    becomes `QuantAdd`, which quantizes each partial sum as the chain of int8 ADDs does."""

    def quantize(self, layer, decay):
        if len(layer._inbound_nodes[0].input_tensors) > 2:
            return super().quantize(layer, decay)
        return layer.__class__.from_config(float_config(layer))


class _BatchNormalizationRule(QuantRule):
    """A BatchNormalization left after folding becomes `QuantBatchNormalization` (4-D,
    channels-last inputs only)."""

    def quantize(self, layer, decay):
        rank = len(layer.input.shape)
        axis = layer.axis if isinstance(layer.axis, int) else None
        if rank != 4 or axis not in (-1, rank - 1):
            raise unsupported_error(
                layer,
                " (a BatchNormalization is folded when it directly follows a Conv2D, DepthwiseConv2D or Dense whose "
                "output nothing else uses, and is otherwise quantized as a depthwise 1x1 convolution, which needs a 4-D "
                "input normalised over its last axis; move it after such a layer)",
                hint=False,
            )
        return super().quantize(layer, decay)


register_quant_rule(layers.Conv2D, _KernelRule(qat_class=QuantConv2D))
register_quant_rule(layers.DepthwiseConv2D, _KernelRule(qat_class=QuantDepthwiseConv2D))
register_quant_rule(layers.Dense, _KernelRule(qat_class=QuantDense))
register_quant_rule(layers.Conv2DTranspose, _KernelRule(qat_class=QuantConv2DTranspose))
register_quant_rule(
    layers.RepeatVector, QuantRule(output=KEEP, qat_class=ConcatRepeatVector, deploy_class=ConcatRepeatVector)
)
register_quant_rule(ConcatRepeatVector, QuantRule(output=KEEP))
register_quant_rule(layers.BatchNormalization, _BatchNormalizationRule(qat_class=QuantBatchNormalization))
register_quant_rule(layers.Add, _AddRule(qat_class=QuantAdd))


# ----------------------------------------------------------------------------------------------
# Layers copied as they are
# ----------------------------------------------------------------------------------------------
@register_quant_rule(layers.Activation)
class _ActivationRule(QuantRule):
    def output(self, layer):
        return activation_output(activation_name(layer))


@register_quant_rule(layers.UpSampling2D)
class _UpSamplingRule(QuantRule):
    """Nearest-neighbour up-sampling copies values (no quantizer); bilinear computes new ones on
    the input's grid (int8 RESIZE_BILINEAR keeps the input's scale)."""

    def output(self, layer):
        return KEEP if layer.interpolation == "nearest" else SAME

    def quantize(self, layer, decay):
        if layer.interpolation == "nearest":  # the int8 graph of the deployment form (no TILE)
            return clone_as(ConcatUpSampling2D, layer)
        return super().quantize(layer, decay)

    def deploy(self, layer):
        if layer.interpolation != "nearest" or type(layer) is ConcatUpSampling2D:
            return None
        return ConcatUpSampling2D.from_config(layer.get_config())


register_quant_rule(layers.Softmax, QuantRule(output=UNIT_RANGE))


@register_quant_rule(layers.Dot)
class _DotRule(QuantRule):
    """A batched dot product converts to int8 BATCH_MATMUL (own output scale); `normalize=True`
    (an L2 normalisation first, with no int8 kernel) is refused."""

    def quantize(self, layer, decay):
        if layer.normalize:
            raise unsupported_error(layer, " (Dot(normalize=True): the L2 normalisation has no int8 kernel)", hint=False)
        return super().quantize(layer, decay)


register_quant_rule(
    (
        layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum,
        layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.ReLU, layers.LeakyReLU, layers.ELU,
        layers.Rescaling,
    ),
    QuantRule(output=OWN),
)
register_quant_rule(layers.Concatenate, QuantRule(output=OWN, tie_inputs=True))
register_quant_rule((layers.AveragePooling1D, layers.AveragePooling2D), QuantRule(output=SAME))
register_quant_rule(
    (
        layers.InputLayer, layers.MaxPooling1D, layers.MaxPooling2D, layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D,
        layers.Reshape, layers.Flatten, layers.Permute, layers.ZeroPadding2D, layers.Cropping2D, layers.Dropout,
        layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout, layers.Identity,
    ),
    QuantRule(output=KEEP),
)
register_quant_rule(layers.Lambda, QuantRule(reject="Lambda layers cannot be analysed; write the step with layers or keras.ops"))


# ----------------------------------------------------------------------------------------------
# keras.ops nodes of a functional graph
# ----------------------------------------------------------------------------------------------
def _array_constant(args):
    """`(position, array)` of the one non-scalar constant operand of a binary op, or None."""
    if len(args) != 2 or sum(isinstance(a, keras.KerasTensor) for a in args) != 1:
        return None
    position = 0 if not isinstance(args[0], keras.KerasTensor) else 1
    value = args[position]
    return None if np.ndim(value) == 0 else (position, np.asarray(ops.convert_to_numpy(value), "float32"))


_ELEMENTWISE = {"add": ops.add, "subtract": ops.subtract, "multiply": ops.multiply, "maximum": ops.maximum, "minimum": ops.minimum}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConstantOp(QuantLayerMixin, layers.Layer):
    """A `keras.ops` elementwise op of a tensor and an array constant, the constant on the int8
    grid the converter gives it (per tensor, `[min(c, 0), max(c, 0)]`) in "quantize" mode and
    exact in "float" mode.

    Args:
        op: `"add"`, `"subtract"`, `"multiply"`, `"maximum"` or `"minimum"`.
        constant: the array operand (nested lists or an array).
        constant_first: bool, the constant is the first operand (`c - x`). Defaults to False.
        decay: unused (no range of its own; the output's `FakeQuant` follows it).
    """

    def __init__(self, op, constant, constant_first=False, decay=0.99, **kwargs):
        super().__init__(**kwargs)
        if op not in _ELEMENTWISE:
            raise ValueError(f"{self.name}: op must be one of {tuple(_ELEMENTWISE)}, got {op!r}.")
        self.op = op
        self.constant = np.asarray(constant, "float32")
        self.constant_first = bool(constant_first)
        self._init_quant(decay)

    def call(self, inputs):
        c = ops.convert_to_tensor(self.constant)
        if self.quant_mode == "quantize":
            c = quantize_constant(c)
        a, b = (c, inputs) if self.constant_first else (inputs, c)
        return _ELEMENTWISE[self.op](a, b)

    def get_config(self):
        return {**super().get_config(), "op": self.op, "constant": self.constant.tolist(), "constant_first": self.constant_first}


class _OpsArithmeticRule(QuantRule):
    """An elementwise `keras.ops` add/subtract/multiply/maximum/minimum gets its own output
    scale. A scalar operand is left as it is (it is an end of its own range, so on its grid); an
    array operand makes the node a `QuantConstantOp`, which quantizes it as the converter does."""

    def quantize(self, layer, decay):
        constant = _array_constant(layer._inbound_nodes[0].arguments.args)
        if constant is None:
            return super().quantize(layer, decay)
        op = display_name(type(layer)).rpartition(".")[2]
        return QuantConstantOp(op, constant[1], constant_first=constant[0] == 0, decay=decay, name=layer.name, dtype="float32")

    def call_arguments(self, layer, args, kwargs):
        if _array_constant(layer._inbound_nodes[0].arguments.args) is None:
            return args, kwargs
        return tuple(a for a in args if isinstance(a, keras.KerasTensor)), {}


def _ops_classes(module, *names):
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


register_quant_rule(_ops_classes(_np, "Add", "Subtract", "Multiply", "Maximum", "Minimum"), _OpsArithmeticRule())
register_quant_rule(
    _ops_classes(_nn, "Relu", "Relu6", "HardSigmoid", "HardSilu", "Silu", "Gelu", "LeakyRelu", "Elu") + _ops_classes(_np, "Mean"),
    QuantRule(output=OWN),
)
register_quant_rule(_ops_classes(_nn, "Sigmoid", "Softmax"), QuantRule(output=UNIT_RANGE))
register_quant_rule(_ops_classes(_np, "Tanh"), QuantRule(output=TANH_RANGE))
register_quant_rule(_ops_classes(_np, "Concatenate"), QuantRule(output=OWN, tie_inputs=True))
register_quant_rule(_ops_classes(_np, "Reshape", "Transpose", "ExpandDims", "Squeeze"), QuantRule(output=KEEP))
register_quant_rule(
    _ops_classes(_np, "Divide", "TrueDivide"),
    QuantRule(reject="int8 TFLite has no DIV; multiply by the reciprocal (x * (1 / c)) or use a keras.layers.Rescaling"),
)
