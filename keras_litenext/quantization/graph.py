"""Graph rewrites: the QAT model (`quantize_model`), large depthwise kernels split for XNNPACK,
the float deployment model, and the utilities that walk a QAT model's quantizers. BatchNorm
folding is in `quantization.batchnorm`."""

import keras
from keras import layers, ops

from keras_litenext.quantization.batchnorm import (
    distribute_batch_norms,
    fold_batch_norms,
)
from keras_litenext.quantization.core import (
    MODES,
    FakeQuant,
    QuantLayerMixin,
    UnsupportedLayerError,
)
from keras_litenext.quantization.keras_rules import activation_name
from keras_litenext.quantization.rules import (
    KEEP,
    SAME,
    SELF,
    QuantRule,
    find_quant_rule,
    get_quant_rule,
    unsupported_error,
)

_PASSTHROUGH_RULE = QuantRule(output=KEEP)


def _operations(model):
    """Every operation of a functional graph: layers and `keras.ops` nodes, inputs excluded."""
    return [op for op in model.operations if not isinstance(op, layers.InputLayer)]


def _rule(layer, passthrough):
    """The rule of a float-model layer, after the checks that hold for every layer."""
    if isinstance(layer, QuantLayerMixin):
        raise UnsupportedLayerError(f"quantize_model: {layer.name!r} is already a QAT layer; pass the float model.")
    if isinstance(layer, keras.Model):
        raise unsupported_error(layer, " (a nested model; build the model as one flat functional graph)", hint=False)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise unsupported_error(layer, " (channels_first; TFLite is channels_last)", hint=False)
    if type(layer).__name__ in passthrough:
        return _PASSTHROUGH_RULE
    return get_quant_rule(layer)


# ----------------------------------------------------------------------------------------------
# Large depthwise kernels
# ----------------------------------------------------------------------------------------------
# XNNPACK's depthwise micro-kernels cover 3, 9 and 25 taps; a larger kernel (LiteNeXt's 7x7)
# falls back to a grouped GEMM, 3-4x slower in float and ~20x in int8 (spec: int8_xnnpack.md).
MAX_DEPTHWISE_TAPS = 25


def depthwise_pieces(kernel_size, dilation_rate=(1, 1), max_taps=MAX_DEPTHWISE_TAPS):
    """How a stride-1 "same" depthwise kernel splits into pieces of at most `max_taps` taps.

    The rows (or columns, for a wide kernel) of a `kh x kw` kernel with centre `c` go into a
    centre band `c-r .. c+r`, as large as `max_taps` allows, and one two-row piece per pair
    `c-j, c+j` left over: a `2 x kw` kernel dilated by `2j` along the split axis, whose "same"
    padding puts its two rows at offsets `-j` and `+j`. The pieces' outputs sum to the whole
    kernel's exactly (up to float rounding), since each tap is in one piece at its own offset.

    Returns:
        A list of `(rows, kernel_size, dilation_rate)` (`rows`: indices along the split axis,
        the centre band first), or None when the kernel needs no split or cannot be split so
        (an even size, or a single row longer than `max_taps`).
    """
    kh, kw = (int(k) for k in kernel_size)
    dh, dw = (int(d) for d in dilation_rate)
    if kh * kw <= max_taps or kh % 2 == 0 or kw % 2 == 0:
        return None
    transpose = kw > kh
    if transpose:
        kh, kw, dh, dw = kw, kh, dw, dh
    if 2 * kw > max_taps:
        return None
    c = kh // 2
    r = max(0, (max_taps // kw - 1) // 2)
    pieces = [(list(range(c - r, c + r + 1)), (2 * r + 1, kw), (dh, dw))]
    for j in range(r + 1, c + 1):
        pieces.append(([c - j, c + j], (2, kw), (2 * j * dh, dw)))
    if transpose:
        pieces = [(rows, size[::-1], dil[::-1]) for rows, size, dil in pieces]
    return pieces


def _splittable_depthwise(layer, max_taps):
    if type(layer) is not layers.DepthwiseConv2D or tuple(layer.strides) != (1, 1) or layer.padding != "same":
        return None
    # A map smaller than the kernel's reach gains nothing from the split, and XNNPACK fails to
    # plan dilated pieces that reach past it (LiteNeXt at 32x32: 2x2 maps under a 7x7 kernel).
    reach = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation_rate)]
    size = tuple(layer.input.shape[1:3])
    if any(s is not None and s < r for s, r in zip(size, reach)):
        return None
    return depthwise_pieces(layer.kernel_size, layer.dilation_rate, max_taps)


def split_depthwise_kernels(model, max_taps=MAX_DEPTHWISE_TAPS):
    """A copy of `model` in which every stride-1 "same" `DepthwiseConv2D` of more than
    `max_taps` taps is the sum of pieces of at most `max_taps` taps (`depthwise_pieces`), on
    maps at least as large as the kernel's reach (smaller ones keep the whole kernel).

    Same outputs up to float rounding (the 7x7 of LiteNeXt: three pieces, 3x7 + 2x7 + 2x7,
    max error ~2e-7); a TFLite file of the copy runs every piece on XNNPACK's 25-tap kernel.
    The pieces are `{name}_split{i}` (the centre first, with the bias), their sum
    `{name}_sum` (an `Add`, quantized as int8 adds, `QuantAdd`), and a non-linear activation
    of the layer `{name}_activation` after it. The Keras training model keeps its kernel:
    the converter (`deployment_model`) and `quantize_model` apply this. Returns `model`
    itself when no layer qualifies.
    """
    plans = {}
    for layer in _operations(model):
        pieces = _splittable_depthwise(layer, max_taps)
        if pieces is not None:
            plans[layer.name] = pieces
    if not plans:
        return model
    made = {}

    def call(layer, *args, **kwargs):
        if layer.name not in plans:
            return layer(*args, **kwargs)
        config = layer.get_config()
        outputs, made[layer.name] = [], []
        for i, (_, size, dilation) in enumerate(plans[layer.name]):
            piece_config = dict(config, name=f"{layer.name}_split{i}", kernel_size=size, dilation_rate=dilation,
                                activation="linear", use_bias=bool(config["use_bias"]) and i == 0)
            piece = layers.DepthwiseConv2D.from_config(piece_config)
            outputs.append(piece(*args, **kwargs))
            made[layer.name].append(piece)
        y = layers.Add(name=f"{layer.name}_sum", dtype=config.get("dtype"))(outputs)
        if activation_name(layer) != "linear":
            y = layers.Activation(config["activation"], name=f"{layer.name}_activation", dtype=config.get("dtype"))(y)
        return y

    new = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(layer.get_config()),
                                   call_function=call)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in plans:
            kernel = ops.convert_to_numpy(layer.kernel)
            wide = layer.kernel_size[1] > layer.kernel_size[0]
            for i, ((rows, _, _), piece) in enumerate(zip(plans[layer.name], made[layer.name])):
                part = kernel[:, rows] if wide else kernel[rows]
                weights = [part] + ([ops.convert_to_numpy(layer.bias)] if piece.use_bias else [])
                piece.set_weights(weights)
        else:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    return new


# ----------------------------------------------------------------------------------------------
# The QAT model
# ----------------------------------------------------------------------------------------------
def quantize_model(model, input_range=(0.0, 1.0), decay=0.99, passthrough=(), max_depthwise_taps=MAX_DEPTHWISE_TAPS):
    """The quantization-aware-training version of a trained float functional model.

    Each layer (and `keras.ops` node) is rebuilt by its `QuantRule` (`register_quant_rule`),
    and a `FakeQuant` named `<layer>_quant` follows every output that the int8 TFLite file
    gives a scale of its own.

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
        max_depthwise_taps: depthwise kernels larger than this are split into pieces
            (`split_depthwise_kernels`), as `deployment_model` splits them in float: XNNPACK
            runs pieces of up to 25 taps on fast kernels. None keeps every kernel whole.

    Returns:
        A functional `keras.Model` with the same inputs, outputs and layer names, plus
        `FakeQuant` layers. Its quantizer ranges are not calibrated yet: call `calibrate`
        before using or converting it.

    Raises:
        UnsupportedLayerError: a layer or node has no rule (the message names it and what to do).
    """
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedLayerError("quantize_model: expected a functional keras.Model (built with keras.Input).")
    passthrough = tuple(passthrough)
    source = distribute_batch_norms(fold_batch_norms(model))
    if max_depthwise_taps:
        source = split_depthwise_kernels(source, max_depthwise_taps)
    rules = {}
    for layer in _operations(source):  # fail before building anything, naming the first unsupported layer
        rule = _rule(layer, passthrough)
        rule.quantize(layer, decay)
        rule.output(layer)
        rules[id(layer)] = rule

    originals = {}
    quantizer_of = {}  # id(new tensor) -> the FakeQuant layer whose grid it is on
    grid_of = {}  # id(new tensor) -> "layer/range" of the range whose grid it is on
    inputs = [keras.Input(batch_shape=x.shape, dtype="float32", name=x.name) for x in source.inputs]
    input_ids = {id(x) for x in inputs}
    quantized_inputs = {}

    def clone_function(layer):
        new = rules[id(layer)].quantize(layer, decay)
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

    def new_quantizer(out, name, fixed=None, tied=None):
        fq = FakeQuant(fixed_range=fixed, decay=decay, tied=tied, name=name, dtype="float32")
        q = fq(out)
        quantizer_of[id(q)] = fq
        grid_of[id(q)] = f"{fq.name}/range"
        return q

    def call_function(layer, *args, **kwargs):
        original = originals[id(layer)]
        rule = rules[id(original)]
        args = keras.tree.map_structure(lambda t: quantized_input(t) if id(t) in input_ids else t, args)
        args, kwargs = rule.call_arguments(original, args, kwargs)
        flat_in = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        out = layer(*args, **kwargs)
        kind = rule.output(original)
        source_fq = quantizer_of.get(id(flat_in[0])) if flat_in else None
        if kind == KEEP:
            if len(flat_in) == 1:
                if source_fq is not None:
                    quantizer_of[id(out)] = source_fq
                if id(flat_in[0]) in grid_of:
                    grid_of[id(out)] = grid_of[id(flat_in[0])]
            return out
        if kind == SELF:  # the layer's last range quantizes its output
            grid_of[id(out)] = f"{layer.name}/{list(layer._ranges)[-1]}"
            return out
        if kind == SAME and source_fq is not None:
            q = source_fq(out, observe=False)
            quantizer_of[id(q)] = source_fq
            grid_of[id(q)] = f"{source_fq.name}/range"
            return q
        fixed = kind if isinstance(kind, tuple) else None
        tied = [grid_of[id(t)] for t in flat_in if id(t) in grid_of] if rule.tie_inputs else None
        return new_quantizer(out, f"{layer.name}_quant", fixed, tied)

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


def deployment_model(model, max_depthwise_taps=MAX_DEPTHWISE_TAPS):
    """A copy of a float `model` with the same weights and outputs (up to float rounding) whose
    TFLite graph XNNPACK runs in one piece and on its fast kernels: each layer whose rule has a
    deployment form is replaced by it (`ChannelLayerNorm` -> `DeployChannelLayerNorm`,
    `RepeatVector` -> `ConcatRepeatVector`, ...), and depthwise kernels of more than
    `max_depthwise_taps` taps are split (`split_depthwise_kernels`; None keeps them whole).
    `keras_litenext.litert.convert` applies it to float models. Returns `model` itself when
    nothing changes."""
    replacements = {}
    for layer in _operations(model):
        found = find_quant_rule(layer)
        new = found[0].deploy(layer) if found is not None else None
        if new is not None:
            replacements[id(layer)] = new
    if replacements:

        def clone(layer):
            return replacements.get(id(layer)) or layer.__class__.from_config(layer.get_config())

        new = keras.models.clone_model(model, clone_function=clone)
        for layer in model.layers:
            if layer.weights:
                new.get_layer(layer.name).set_weights(layer.get_weights())
        model = new
    return split_depthwise_kernels(model, max_depthwise_taps) if max_depthwise_taps else model


# ----------------------------------------------------------------------------------------------
# Quantizers of a QAT model
# ----------------------------------------------------------------------------------------------
def quant_layers(model):
    """The layers of `model` that own quantizer ranges."""
    return [layer for layer in getattr(model, "layers", []) if isinstance(layer, QuantLayerMixin)]


def is_qat_model(model):
    """True when `model` holds `quantize_model`'s layers."""
    return bool(quant_layers(model))


def set_quant_mode(model, mode):
    """Set every quantizer of a QAT model to `"quantize"` (default), `"calibrate"` or `"float"`.

    Compiled train/predict functions are dropped, so the next call traces the new mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    for layer in quant_layers(model):
        layer.quant_mode = mode
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    return model


def quantizer_ranges(model):
    """`{layer_name/range_name: (min, max)}` of every activation quantizer."""
    out = {}
    for layer in quant_layers(model):
        for name, value in layer.ranges().items():
            out[f"{layer.name}/{name}"] = value
    return out


def uncalibrated_quantizers(model):
    """Names (`layer/range`) of the tracked ranges that never saw data."""
    names = []
    for layer in quant_layers(model):
        for name, r in layer._ranges.items():
            if r.fixed is None and float(ops.convert_to_numpy(r.count)) == 0.0:
                names.append(f"{layer.name}/{name}")
    return names
