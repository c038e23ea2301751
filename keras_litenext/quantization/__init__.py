"""Quantization-aware training (QAT) for int8 TFLite, written for Keras 3.

`tensorflow-model-optimization` only quantizes `tf_keras` models, so this package does it on
Keras 3 itself, with `keras.quantizers.fake_quant_with_min_max_vars`. With the TensorFlow
backend that function lowers to TensorFlow's FakeQuant ops, which `tf.lite.TFLiteConverter`
turns into the int8 scales and zero points of the converted model (`keras_litenext.litert`).
It is a Keras-only core: it knows layers and graphs, nothing of losses, metrics, data or runs.

`quantize_model(model)` rebuilds a trained float model's functional graph so that it computes
what the int8 TFLite file will compute. How each layer is rebuilt is its **rule**
(`QuantRule`), registered beside the layer with `register_quant_rule` and found by MRO:

- stock Keras layers and `keras.ops` nodes (`keras_rules`): weights of `Conv2D`,
  `DepthwiseConv2D` and `Dense` fake-quantized per output channel on [-127, 127]; a
  `FakeQuant` (per tensor, asymmetric, range tracked as a moving average) after every tensor
  the converter gives a scale of its own; none after ops that keep their input's scale
  (max-pooling, reshapes, padding); the input's quantizer again after those that keep its
  scale but compute new values (bilinear up-sampling, average pooling); TFLite's fixed scales
  after softmax and sigmoid; concatenation inputs tied to the output's range (`tie_ranges`);
- the package's layers, in their own modules: `ChannelLayerNorm` (`keras_litenext.layers`)
  becomes `QuantChannelLayerNorm`, which quantizes every intermediate tensor of its int8
  lowering; LiteNeXt's `ScaleWeightedSum` becomes `QuantScaleWeightedSum`;
- a `BatchNormalization` right after a convolution or dense layer is folded into it first
  (`fold_batch_norms`); one after an `Add` of a tensor and conv outputs is moved onto the
  sum's terms (`distribute_batch_norms`: its scale folds into the convs, the tensor keeps the
  layer), so no per-tensor grid is read before a large per-channel scale; a three-input `Add`
  quantizes its partial sum as the two int8 ADDs do (`QuantAdd`); a depthwise kernel of more
  than 25 taps is split into pieces XNNPACK runs fast (`split_depthwise_kernels`, as the float
  `deployment_model` does), each piece and partial sum quantized as the file computes them; a layer or node without a rule raises `UnsupportedLayerError` naming
  it and what to do.

Weights start from the float model. Ranges start uncalibrated: `calibrate` runs a few batches
with quantization off and sets every range from what it saw (what the TFLite converter's own
calibration does for post-training quantization); after it, and before any fine-tuning, the QAT
model predicts what the post-training-quantized file computes. Fine-tuning with a loss and data
is the application's (`keras_litenext.export.finetune`).

Example:
>>> qat = quantize_model(model)                 # model: a trained float LiteNeXt
>>> calibrate(qat, train_images[:64])
>>> tflite_bytes = keras_litenext.litert.convert(qat, "int8", representative_data=train_images[:64])
"""

from keras_litenext.quantization.batchnorm import (
    distribute_batch_norms,
    fold_batch_norms,
)
from keras_litenext.quantization.calibration import (
    RSQRT_QUANTILES,
    calibrate,
    choose_rsqrt_quantile,
    tie_ranges,
)
from keras_litenext.quantization.core import (
    FIXED_ACTIVATION_RANGES,
    FUSED_ACTIVATIONS,
    MODES,
    TANH_RANGE,
    UNIT_RANGE,
    FakeQuant,
    QuantLayerMixin,
    QuantRange,
    UnsupportedLayerError,
    quantize_constant,
    quantize_weights,
)
from keras_litenext.quantization.graph import (
    MAX_DEPTHWISE_TAPS,
    deployment_model,
    depthwise_pieces,
    is_qat_model,
    quant_layers,
    quantize_model,
    quantizer_ranges,
    set_quant_mode,
    split_depthwise_kernels,
    uncalibrated_quantizers,
)
from keras_litenext.quantization.keras_rules import (
    ConcatRepeatVector,
    ConcatUpSampling2D,
    QuantAdd,
    QuantConstantOp,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
)
from keras_litenext.quantization.rules import (
    KEEP,
    OWN,
    SAME,
    SELF,
    QuantRule,
    find_quant_rule,
    get_quant_rule,
    register_quant_rule,
    supported_layers,
)

# QAT and deployment forms that live beside their float layers; importable from here as before.
_ELSEWHERE = {
    "QuantChannelLayerNorm": "keras_litenext.layers",
    "DeployChannelLayerNorm": "keras_litenext.layers",
    "QuantScaleWeightedSum": "keras_litenext.models.litenext.litenext_layers",
    "DeployScaleWeightedSum": "keras_litenext.models.litenext.litenext_layers",
}


def __getattr__(name):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FIXED_ACTIVATION_RANGES",
    "FUSED_ACTIVATIONS",
    "KEEP",
    "MAX_DEPTHWISE_TAPS",
    "MODES",
    "OWN",
    "RSQRT_QUANTILES",
    "SAME",
    "SELF",
    "TANH_RANGE",
    "UNIT_RANGE",
    "ConcatRepeatVector",
    "ConcatUpSampling2D",
    "FakeQuant",
    "QuantAdd",
    "QuantConstantOp",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantLayerMixin",
    "QuantRange",
    "QuantRule",
    "UnsupportedLayerError",
    "calibrate",
    "choose_rsqrt_quantile",
    "deployment_model",
    "depthwise_pieces",
    "distribute_batch_norms",
    "find_quant_rule",
    "fold_batch_norms",
    "get_quant_rule",
    "is_qat_model",
    "quant_layers",
    "quantize_constant",
    "quantize_model",
    "quantize_weights",
    "quantizer_ranges",
    "register_quant_rule",
    "set_quant_mode",
    "split_depthwise_kernels",
    "supported_layers",
    "tie_ranges",
    "uncalibrated_quantizers",
]
