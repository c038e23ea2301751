"""The TFLite library: conversion, inspection and LiteRT inference of `.tflite` files.

It knows models and files only, nothing of run folders, tasks or metrics (those are in
`keras_litenext.export`). It is the only module of the package that uses `tf.lite` (the
converter still lives in TensorFlow); running and inspecting `.tflite` files uses
`ai-edge-litert`.

This is the only module of the package that uses `tf.lite` (the converter still lives in
TensorFlow); running and inspecting `.tflite` files uses `ai-edge-litert`.

Conversion (`convert`, `convert_to_file`) always traces the model at a static shape: batch 1
and a fixed height, width and channels. With a static shape every size is known when the graph
is built, so the file has no SHAPE / GATHER / STRIDED_SLICE ops that compute sizes at run time,
and XNNPACK plans the whole graph ahead.

Kinds of file:

- `"fp32"`: float32 weights and activations;
- `"fp16"`: float16 weights (half the size), float32 activations;
- `"int8"`: full-integer int8. A float model is quantized post-training (PTQ: activation
  ranges calibrated on `representative_data`, weights per channel). A QAT model from
  `keras_litenext.quantization` is converted with the ranges it learned (its FakeQuant ops);
  TF 2.21's converter still needs `representative_data` for it, so pass the same images.
  `io` picks the input/output type: `"int8"` (default), `"uint8"` or `"float"` (QUANTIZE /
  DEQUANTIZE ops at the two ends), or `"uint8_float"` (uint8 in, float32 out: MediaPipe's). `TFLITE_BUILTINS_INT8` is enforced: conversion fails
  rather than leave a float op in the graph.

Every file is written atomically (`keras_litenext.utils.atomic_path`): a failed conversion
leaves nothing under the final name.
"""

import collections
import contextlib
import copy
import os
import tempfile
import warnings

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.utils import atomic_path

KINDS = ("fp32", "fp16", "int8")
INT8_MODES = ("cpu", "strict")
# Ops that XNNPACK runs in float but not in int8 (its delegate's type checks, LiteRT 2026): in an
# int8 file each one is an XNNPACK partition break, with a hand-over to the builtin kernels.
ISLAND_OPS = ("RSQRT", "GELU", "SOFTMAX", "HARD_SWISH", "BATCH_MATMUL")
# Ops it runs in int8 only when their scales fit (`float_islands`): a window of ratios, or the
# same scale in and out (RELU).
WINDOW_OPS = ("ADD", "SUB", "MUL", "RELU")
IO_TYPES = ("int8", "uint8", "float", "uint8_float")
# Input and output dtypes of an int8 file per `io`; "uint8_float" is what MediaPipe Tasks read
# by default: camera pixels in, one float32 output (the int8 graph ends in a DEQUANTIZE).
IO_DTYPES = {"int8": ("int8", "int8"), "uint8": ("uint8", "uint8"), "float": ("float32", "float32"),
             "uint8_float": ("uint8", "float32")}
# Ops that only convert between float and integer at the edges of an integer graph.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
# Ops that compute tensor sizes at run time (absent from a statically shaped graph).
DYNAMIC_SHAPE_OPS = ("SHAPE", "SIZE", "RANK", "BROADCAST_ARGS", "FILL", "RANGE", "WHERE")

__all__ = [
    "BOUNDARY_OPS",
    "INT8_MODES",
    "ISLAND_OPS",
    "WINDOW_OPS",
    "IO_DTYPES",
    "IO_TYPES",
    "KINDS",
    "TFLiteRunner",
    "convert",
    "convert_phone",
    "convert_to_file",
    "apply_int8_mode",
    "float_islands",
    "xnnpack_accepts",
    "benchmark",
    "inspect_tflite",
    "io_details",
    "representative_dataset",
    "phone_model",
    "pin_uint8_input",
    "run_tflite",
    "xnnpack_partitions",
]


class ConversionError(RuntimeError):
    """The TFLite converter failed; the message keeps its first lines."""


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------
def _static_shape(model, input_shape):
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if len(model.inputs) != 1:
        raise ValueError(f"convert: expected a model with one input, got {len(model.inputs)}.")
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(
            f"convert: the input shape must be fully known (height, width, channels), got {shape}; "
            "pass input_shape=(H, W, C) for a model built with a free size."
        )
    return tuple(int(d) for d in shape)


def representative_dataset(images, count=200, seed=0):
    """A TFLite `representative_dataset` callable over up to `count` images (batch 1).

    Args:
        images: `(N, H, W, C)` uint8 (0-255, divided by 255) or float images in [0, 1].
        count: images to use, spread evenly over the set (all when `N <= count`).
        seed: unused; the selection is deterministic.
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"representative_dataset: expected (N, H, W, C) images, got shape {images.shape}.")
    index = np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int)
    index = np.unique(index)

    def generate():
        for i in index:
            x = images[i]
            x = to_float(x)  # uint8 / 255, uint16 (an intensity recipe's) / 65535
            yield [x[None]]

    return generate


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the converter's C++ log lines on file descriptor 2 (Python errors still raise)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def convert(model, kind="int8", representative_data=None, io="int8", input_shape=None, num_calibration=200, quiet=True,
            rewrite=True, int8_mode="cpu"):
    """Convert a Keras model to TFLite and return the flatbuffer bytes.

    Args:
        model: a functional Keras model (float, or QAT from `keras_litenext.quantization`).
        kind: `"fp32"`, `"fp16"` or `"int8"`.
        representative_data: `(N, H, W, C)` images (uint8 0-255 or float [0, 1]), needed for
            `"int8"` (PTQ calibration; the TF 2.21 converter also requires it for QAT models).
        io: for `"int8"`: `"int8"` (default), `"uint8"` or `"float"` input and output, or
            `"uint8_float"`: uint8 input, float32 output (`IO_DTYPES`).
        input_shape: `(H, W, C)` to convert at, for a model built with a free size.
        num_calibration: images of `representative_data` used. Defaults to 200.
        quiet: hide the converter's native log output.
        rewrite: convert a float model through `quantization.deployment_model` (same math,
            ops that XNNPACK runs: one partition in float32 instead of three, and an int8
            graph without SQUARED_DIFFERENCE, which made PTQ files about 2x slower).
        int8_mode: for `"int8"`: `"cpu"` (default) runs the ops that XNNPACK has in float only
            (`ISLAND_OPS`: RSQRT, GELU, SOFTMAX, HARD_SWISH, BATCH_MATMUL,
            and ADD/SUB/MUL/RELU whose scales XNNPACK rejects) as float islands inside the int8
            graph (`float_islands`), so the whole file is one XNNPACK partition; `"strict"`
            keeps every op int8, for accelerators that run pure int8 graphs (NPUs, DSPs).

    Returns:
        bytes of the `.tflite` file.

    Raises:
        ValueError: bad arguments, or an uncalibrated QAT model.
        ConversionError: the converter failed (e.g. an op with no int8 kernel).
    """
    import tensorflow as tf

    from keras_litenext.quantization import deployment_model, is_qat_model, uncalibrated_quantizers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if int8_mode not in INT8_MODES:
        raise ValueError(f"int8_mode must be one of {INT8_MODES}, got {int8_mode!r}.")
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {IO_TYPES}, got {io!r}.")
    shape = _static_shape(model, input_shape)
    qat = is_qat_model(model)
    if qat:
        if kind != "int8":
            raise ValueError(f"convert: a QAT model converts to int8 only, not {kind!r}; convert the float model instead.")
        missing = uncalibrated_quantizers(model)
        if missing:
            raise ValueError(
                f"convert: {len(missing)} quantizer ranges of the QAT model were never calibrated ({', '.join(missing[:3])}...); "
                "run keras_litenext.quantization.calibrate (or qat_finetune) first."
            )
    elif rewrite:
        model = deployment_model(model)
    if kind == "int8" and representative_data is None:
        raise ValueError("convert: int8 conversion needs representative_data (training images).")

    with _converter(model, shape) as converter:
        if kind == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif kind == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset(representative_data, count=num_calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            input_type, output_type = IO_DTYPES[io]
            converter.inference_input_type = tf.as_dtype(input_type)
            converter.inference_output_type = tf.as_dtype(output_type)
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with (_quiet_native_stderr() if quiet else contextlib.nullcontext()):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
                    data = bytes(converter.convert())
        except Exception as err:  # the converter raises many types, with pages of MLIR text
            lines = [line for line in str(err).splitlines() if line.strip()][:6]
            raise ConversionError(f"TFLite conversion ({kind}) failed: {type(err).__name__}: " + " | ".join(lines)) from err
    return apply_int8_mode(data, int8_mode) if kind == "int8" else data


def apply_int8_mode(data, int8_mode="cpu"):
    """A strict int8 file (bytes) in `int8_mode`: itself for `"strict"`; for `"cpu"` its
    `float_islands` when XNNPACK plans them (`xnnpack_accepts`), else itself, with a warning."""
    if int8_mode not in INT8_MODES:
        raise ValueError(f"int8_mode must be one of {INT8_MODES}, got {int8_mode!r}.")
    islands = float_islands(data) if int8_mode == "cpu" else data
    if islands is data:
        return data
    if xnnpack_accepts(islands):
        return islands
    warnings.warn("convert: XNNPACK could not plan the int8 file with float islands; kept the strict int8 file.", stacklevel=2)
    return data


def xnnpack_accepts(data, timeout=120):
    """True when the XNNPACK delegate of LiteRT plans `.tflite` bytes `data` and runs them once.

    Checked in a child process, because a graph the delegate cannot plan may abort the process
    inside it (a double free) instead of raising: seen with dilated depthwise pieces that reach
    past a tiny map, which `split_depthwise_kernels` no longer makes."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="litenext-xnnpack-") as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(data)
        code = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
                "i = Interpreter(model_path=sys.argv[1], num_threads=1)\ni.allocate_tensors()\ni.invoke()\n")
        try:
            done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


@contextlib.contextmanager
def _converter(model, shape):
    """A `TFLiteConverter` of `model(x, training=False)` at the static input shape `(1, *shape)`.

    The graph is traced once and its variables frozen into constants, then converted from the
    concrete function: about 3x faster than exporting a SavedModel first (the same file, same
    ops; 2.7 s vs 9.2 s for LiteNeXt at 64x64). TensorFlow keeps the freezing helper under
    `tensorflow.python`; if it moves, the SavedModel route (`keras.export.ExportArchive`) is used.
    """
    import tensorflow as tf

    signature = tf.TensorSpec((1, *shape), tf.float32, name="image")
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError:  # pragma: no cover - depends on the TensorFlow version
        convert_variables_to_constants_v2 = None
    if convert_variables_to_constants_v2 is not None:
        function = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature)
        yield tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(function)])
        return
    import keras

    with tempfile.TemporaryDirectory(prefix="litenext-export-") as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[signature])
        archive.write_out(folder, verbose=False)
        yield tf.lite.TFLiteConverter.from_saved_model(folder)


def phone_model(model):
    """`model` as its phone file computes it: a one-channel model takes RGB and averages it.

    MediaPipe Tasks feed 3- or 4-channel images only; the file of a grey model then takes RGB
    and averages the channels inside the graph: a 1x1 convolution with weights 1/3 and no bias,
    which XNNPACK runs and int8 quantizes exactly (the weight grid holds 1/3). A grey image
    given as R = G = B reaches the model unchanged. The float model is put in its deployment
    form first (`quantization.deployment_model`, as `convert` does); a QAT model is kept as it
    is. Convert the result with `rewrite=False`. Returns `model` itself for other models.
    """
    import keras

    from keras_litenext.quantization import deployment_model, is_qat_model

    height, width, channels = (tuple(model.inputs[0].shape[1:]) + (None,) * 3)[:3]
    if channels != 1:
        return model
    inner = model if is_qat_model(model) else deployment_model(model)
    inputs = keras.Input((height, width, 3), name="image")
    grey = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_grey",
                               kernel_initializer=keras.initializers.Constant(1.0 / 3.0))(inputs)
    return keras.Model(inputs, inner(grey), name=model.name)


def convert_phone(model, kind="int8", representative_data=None, **kwargs):
    """`convert` for phone clients: a grey model's file takes RGB (`phone_model`), and a uint8
    input is the camera pixel itself (`pin_uint8_input`). Grey `representative_data` is
    repeated to three channels."""
    wrapped = phone_model(model)
    if wrapped is model:
        data = convert(model, kind=kind, representative_data=representative_data, **kwargs)
    else:
        if representative_data is not None and np.asarray(representative_data).shape[-1] == 1:
            representative_data = np.repeat(np.asarray(representative_data), 3, axis=-1)
        data = convert(wrapped, kind=kind, representative_data=representative_data, rewrite=False, **kwargs)
    return pin_uint8_input(data)


def pin_uint8_input(data):
    """A file whose uint8 input has scale 1/255 and zero point 0, so that `q = p` for a camera
    pixel `p` (MediaPipe feeds the pixels as they are, whatever the quantization says).

    The converter gives a uint8 input the range its calibration images span (e.g. scale
    0.996/255 when no image reaches 255) and requantizes it to int8 in a first QUANTIZE op.
    Only the uint8 tensor's scale and zero point are rewritten (with the flatbuffer schema of
    `ai-edge-litert`); that QUANTIZE op then maps `p / 255` onto the int8 grid the calibration
    chose, clipping at its end as the calibrated range always did. Other files (float, int8
    input) are returned unchanged.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    q = tensor.quantization
    if tensor.type != schema.TensorType.UINT8 or q is None or q.scale is None:
        return data
    if abs(float(q.scale[0]) * 255.0 - 1.0) < 1e-6 and int(q.zeroPoint[0]) == 0:
        return data
    first = [op for op in graph.operators if graph.inputs[0] in list(op.inputs)]
    codes = [model.operatorCodes[op.opcodeIndex] for op in first]
    if not codes or any(max(c.builtinCode, c.deprecatedBuiltinCode) != schema.BuiltinOperator.QUANTIZE for c in codes):
        raise ConversionError("pin_uint8_input: the uint8 input does not feed a QUANTIZE (requantize) op; cannot fix its scale")
    q.scale, q.zeroPoint = np.array([1.0 / 255.0], np.float32), np.array([0], np.int64)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def convert_to_file(model, path, kind="int8", **kwargs):
    """`convert` and write the bytes to `path` atomically. Returns the number of bytes."""
    data = convert(model, kind=kind, **kwargs)
    write_bytes(path, data)
    return len(data)


def write_bytes(path, data):
    """Write `data` to `path` atomically (all or nothing under the final name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _outside_window(graph, op, rule, low, high):
    """True when an int8 ADD/SUB (`rule="each"`: every input scale over the output's) or MUL
    (`"product"`: the input scales' product over the output's) is outside XNNPACK's window, or a
    RELU (`"same"`) changes the quantization (XNNPACK runs it as a clamp on the input's grid)."""
    def scale(i):
        q = graph.tensors[i].quantization
        return float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) == 1 else None

    scales = [scale(i) for i in op.inputs if i >= 0]
    out = scale(op.outputs[0])
    if rule == "same":  # a clamp: XNNPACK needs the input's scale and zero point on the output
        (i,), o = [i for i in op.inputs if i >= 0], op.outputs[0]
        zero = [graph.tensors[t].quantization.zeroPoint for t in (i, o)]
        return scales[0] != out or any(z is None for z in zero) or int(zero[0][0]) != int(zero[1][0])
    if out is None or any(s is None for s in scales) or len(scales) != 2:
        return False
    ratios = [s / out for s in scales] if rule == "each" else [scales[0] * scales[1] / out]
    return any(not (low <= r <= high) for r in ratios)


def float_islands(data, ops=ISLAND_OPS, scale_windows=True):
    """An int8 `.tflite` file (bytes) in which each int8 op of a type in `ops` computes in float:
    DEQUANTIZE -> the op in float32 -> QUANTIZE, with the op's own input and output scales.

    XNNPACK runs RSQRT, GELU, SOFTMAX, HARD_SWISH and BATCH_MATMUL (of two activations: MedNeXt's
    linear attention) in float only: in an int8 file each of them
    leaves the delegate, cutting the graph into partitions with a hand-over between the XNNPACK
    and the builtin kernels at each cut (a trained LiteNeXt: 41 partitions). As islands they stay
    inside one partition. The values are those of the int8 kernels, up to rounding: those are
    lookup tables of the same function of the dequantized input, requantized to the same output
    scale, so the QAT simulation (which quantizes the op's input and output) holds for both.
    With `scale_windows`, an int8 ADD, SUB or MUL whose scale ratios are outside the window the
    delegate accepts (ADD/SUB: each input scale / output scale in [1/1024, 256]; MUL: their
    product / output scale in [2^-16, 256]; e.g. an epsilon constant's ADD), and an int8 RELU
    whose output is on another grid than its input, become islands too.
    The file is edited with TensorFlow's flatbuffer tools (`tensorflow.lite.tools`): tensors and
    ops are added, nothing else changes. Files without such ops come back unchanged.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    builtin = schema.BuiltinOperator
    targets = {getattr(builtin, name) for name in ops}
    # ADD / SUB / MUL: XNNPACK takes them in int8 only within a window of scale ratios
    window = {builtin.ADD: ("each", 1 / 1024, 256.0), builtin.SUB: ("each", 1 / 1024, 256.0),
              builtin.MUL: ("product", 2.0**-16, 256.0), builtin.RELU: ("same", 1.0, 1.0)} if scale_windows else {}

    def code_of(code):
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    def opcode(op, version):
        for i, code in enumerate(model.operatorCodes):
            if code_of(code) == op:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = op, min(op, 127), version
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    changed = 0
    for graph in model.subgraphs:

        def float_twin(index):
            tensor = copy.copy(graph.tensors[index])  # shape, shape signature, rank
            tensor.type, tensor.name = schema.TensorType.FLOAT32, (tensor.name or b"tensor") + b"/float"
            tensor.buffer, tensor.quantization = 0, None
            graph.tensors.append(tensor)
            return len(graph.tensors) - 1

        operators = []
        for op in graph.operators:
            inputs = [i for i in op.inputs if i >= 0]  # constants too (an epsilon ADD's): DEQUANTIZE takes them
            int8 = all(graph.tensors[i].type == schema.TensorType.INT8 for i in [*inputs, *op.outputs])
            code = code_of(model.operatorCodes[op.opcodeIndex])
            wanted = code in targets or (code in window and _outside_window(graph, op, *window[code]))
            if not wanted or not int8:
                operators.append(op)
                continue
            new_inputs = list(op.inputs)
            for k, i in enumerate(op.inputs):
                if i >= 0:
                    dequantize = schema.OperatorT()
                    dequantize.opcodeIndex, dequantize.inputs = opcode(builtin.DEQUANTIZE, 2), [i]
                    dequantize.outputs = [float_twin(i)]
                    new_inputs[k] = dequantize.outputs[0]
                    operators.append(dequantize)
            outputs, op.inputs = list(op.outputs), new_inputs
            op.outputs = [float_twin(o) for o in outputs]
            operators.append(op)
            for f, o in zip(op.outputs, outputs):
                quantize = schema.OperatorT()
                quantize.opcodeIndex, quantize.inputs, quantize.outputs = opcode(builtin.QUANTIZE, 2), [f], [o]
                operators.append(quantize)
            changed += 1
        graph.operators = operators
    return data if not changed else bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ----------------------------------------------------------------------------------------------
# Inspection
# ----------------------------------------------------------------------------------------------
def _interpreter(model, num_threads=1, xnnpack=False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), **kwargs)
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist or is not a file.")
        interpreter = Interpreter(model_path=path, **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _tensor_io(detail):
    scales = detail["quantization_parameters"]["scales"]
    zero_points = detail["quantization_parameters"]["zero_points"]
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scales[0]) if len(scales) == 1 else None,
        "zero_point": int(zero_points[0]) if len(zero_points) == 1 else None,
    }


def io_details(model):
    """`{"input": {...}, "output": {...}}`: name, shape, dtype, scale and zero point of the
    (single) input and output of a `.tflite` file (path or bytes)."""
    interpreter = _interpreter(model)
    return {"input": _tensor_io(interpreter.get_input_details()[0]), "output": _tensor_io(interpreter.get_output_details()[0])}


def inspect_tflite(model):
    """The ops of a `.tflite` file with their tensor dtypes, and what is float inside it.

    Uses the builtin kernels only (no XNNPACK), so the op list is the file's own.

    Args:
        model: path or bytes.

    Returns:
        dict with
        - `"ops"`: one entry per op, in execution order: `{"index", "op", "inputs", "outputs"}`,
          inputs/outputs as dtype names (constant inputs marked `"const:<dtype>"`);
        - `"op_counts"`: `{op name: count}`;
        - `"float_ops"`: `{op name: count}` of ops that compute in float: a float32 or float16
          activation (non-constant) input or output, QUANTIZE / DEQUANTIZE excluded;
        - `"boundary_ops"`: `{op name: count}` of QUANTIZE / DEQUANTIZE ops;
        - `"float_tensors"`: number of float activation tensors (model input/output included);
        - `"dynamic_shape_ops"`: `{op name: count}` of ops that compute sizes at run time;
        - `"input"` / `"output"`: as `io_details`;
        - `"size_bytes"`: file size.
    """
    interpreter = _interpreter(model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    produced = {i for op in ops for i in op["outputs"]}
    inputs = {d["index"] for d in interpreter.get_input_details()}
    activation = produced | inputs

    def dtype(i):
        return np.dtype(tensors[i]["dtype"]).name

    listing, counts, float_ops, boundary, dynamic = [], collections.Counter(), collections.Counter(), collections.Counter(), collections.Counter()
    float_tensors = {i for i in activation if dtype(i) in ("float32", "float16")}
    for op in ops:
        name = op["op_name"]
        ins = [i for i in op["inputs"] if i >= 0]
        listing.append({
            "index": int(op["index"]),
            "op": name,
            "inputs": [dtype(i) if i in activation else f"const:{dtype(i)}" for i in ins],
            "outputs": [dtype(i) for i in op["outputs"]],
        })
        counts[name] += 1
        if name in BOUNDARY_OPS:
            boundary[name] += 1
        elif any(i in float_tensors for i in list(ins) + list(op["outputs"])):
            float_ops[name] += 1
        if name in DYNAMIC_SHAPE_OPS:
            dynamic[name] += 1
    size = len(model) if isinstance(model, (bytes, bytearray)) else os.path.getsize(model)
    return {
        "ops": listing,
        "op_counts": dict(sorted(counts.items())),
        "float_ops": dict(sorted(float_ops.items())),
        "boundary_ops": dict(sorted(boundary.items())),
        "float_tensors": len(float_tensors),
        "dynamic_shape_ops": dict(sorted(dynamic.items())),
        "input": _tensor_io(interpreter.get_input_details()[0]),
        "output": _tensor_io(interpreter.get_output_details()[0]),
        "size_bytes": int(size),
    }


def xnnpack_partitions(model, num_threads=1):
    """How XNNPACK splits a `.tflite` file into delegated partitions.

    The runtime appends one DELEGATE node per XNNPACK partition to the op list; the file's own
    ops that feed a partition or another undelegated op (without being a partition output)
    run on the builtin kernels, with a hand-over between each partition and the next.

    Returns:
        `{"partitions": P, "ops": N, "delegated": D, "not_delegated": {op name: count}}`.
    """
    interpreter = _interpreter(model, num_threads=num_threads, xnnpack=True)
    details = interpreter._get_ops_details()
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    own = [op for op in details if op["op_name"] != "DELEGATE"]
    delegate_in = {i for op in delegates for i in op["inputs"]}
    delegate_out = {i for op in delegates for i in op["outputs"]}
    model_out = {d["index"] for d in interpreter.get_output_details()}
    consumers = collections.defaultdict(list)
    for op in own:
        for i in op["inputs"]:
            consumers[i].append(op["index"])
    undelegated = set()
    for op in reversed(own):  # the op list is in execution (topological) order
        outs = set(op["outputs"])
        if outs & delegate_out:
            continue  # the last op of a partition
        if outs & (delegate_in | model_out) or any(c in undelegated for o in outs for c in consumers[o]):
            undelegated.add(op["index"])
    counts = collections.Counter(op["op_name"] for op in own if op["index"] in undelegated)
    return {
        "partitions": len(delegates),
        "ops": len(own),
        "delegated": len(own) - len(undelegated) if delegates else 0,
        "not_delegated": dict(sorted(counts.items())),
    }


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------
class TFLiteRunner:
    """A loaded `.tflite` model that maps float images to float outputs.

    Quantizes the input and dequantizes the output with the tensors' own scale and zero
    point when they are integer, so int8, uint8 and float files are used alike.

    Args:
        model: path or bytes of the `.tflite` file.
        num_threads: CPU threads. Defaults to 2.
        xnnpack: use the default XNNPACK delegate (the deployment path). Defaults to True.
    """

    def __init__(self, model, num_threads=2, xnnpack=True):
        self.interpreter = _interpreter(model, num_threads=num_threads, xnnpack=xnnpack)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"])

    def quantize_input(self, image):
        """A float `(H, W, C)` image in [0, 1] as the model's input tensor `(1, H, W, C)`."""
        x = np.asarray(image, np.float32)[None]
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
        return x.astype(dtype)

    def dequantize_output(self, y):
        dtype = np.dtype(self.output["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = self.output["quantization"]
            return (y.astype(np.float32) - zero_point) * np.float32(scale)
        return y.astype(np.float32)

    def invoke_raw(self, tensor):
        """Run one already-typed input tensor; return the raw output tensor."""
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def __call__(self, images):
        """Float outputs `(N, ...)` for float images `(N, H, W, C)` in [0, 1] (uint8 is /255)."""
        images = np.asarray(images)
        if images.dtype in (np.uint8, np.uint16):
            images = to_float(images)
        if images.ndim == 3:
            images = images[None]
        if tuple(images.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"run_tflite: the model takes images of shape {self.input_shape[1:]} (H, W, C), got {tuple(images.shape[1:])}; "
                "resize them first."
            )
        return np.stack([self.dequantize_output(self.invoke_raw(self.quantize_input(x)))[0] for x in images])


def run_tflite(model, images_float01, num_threads=2, xnnpack=True):
    """Outputs (dequantized to float) of a `.tflite` file for float images in [0, 1].

    Args:
        model: path or bytes.
        images_float01: `(N, H, W, C)` or `(H, W, C)` float images in [0, 1] (uint8 accepted).
        num_threads: CPU threads. Defaults to 2.
        xnnpack: use XNNPACK (default, as on a device). False uses the builtin kernels.

    Returns:
        float32 array `(N, ...)`, e.g. logits `(N, H, W, 1)` for LiteNeXt.
    """
    return TFLiteRunner(model, num_threads=num_threads, xnnpack=xnnpack)(images_float01)


# ----------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------
def benchmark(files, keras_model=None, threads=(1, 2), runs=20, rounds=5, warmup=10, xnnpack=True, seed=0):
    """Latency of `.tflite` files (LiteRT) and optionally of a Keras model, batch 1.

    Every configuration (file x thread count, and the Keras model) is warmed up, then timed in
    `rounds` rounds of `runs` invocations, the rounds interleaved across configurations so
    that a change of machine load hits all of them alike.

    Args:
        files: `.tflite` paths.
        keras_model: optional Keras model, timed with `predict_on_batch` (TensorFlow's own
            thread pool; `threads` does not apply).
        threads: LiteRT thread counts.
        runs: invocations per round (so `runs * rounds` timings per configuration).
        rounds: interleaved rounds.
        warmup: untimed invocations first.
        xnnpack: use the XNNPACK delegate (the default CPU path on devices).
        seed: seed of the random input image.

    Returns:
        list of dicts: `{"name", "threads", "runs", "median_ms", "p10_ms", "p90_ms",
        "round_medians_ms", "size_bytes"}`.
    """
    import time

    rng = np.random.default_rng(seed)
    configs = []
    for path in files:
        for n in threads:
            runner = TFLiteRunner(path, num_threads=int(n), xnnpack=xnnpack)
            tensor = runner.quantize_input(rng.random(runner.input_shape[1:], dtype=np.float32))
            configs.append({"name": os.path.basename(path), "threads": int(n), "size_bytes": os.path.getsize(path),
                            "call": (lambda r=runner, t=tensor: r.invoke_raw(t))})
    if keras_model is not None:
        shape = tuple(keras_model.inputs[0].shape[1:])
        x = rng.random((1, *shape), dtype=np.float32)
        configs.append({"name": f"Keras ({keras_model.name}, predict_on_batch)", "threads": None, "size_bytes": None,
                        "call": (lambda m=keras_model, x=x: m.predict_on_batch(x))})
    for c in configs:
        for _ in range(warmup):
            c["call"]()
        c["times"], c["rounds"] = [], []
    for _ in range(rounds):
        for c in configs:
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                c["call"]()
                times.append(time.perf_counter() - t0)
            c["times"] += times
            c["rounds"].append(float(np.median(times) * 1e3))
    rows = []
    for c in configs:
        t = np.asarray(c["times"]) * 1e3
        rows.append({
            "name": c["name"], "threads": c["threads"], "runs": int(t.size), "size_bytes": c["size_bytes"],
            "median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)), "p90_ms": float(np.percentile(t, 90)),
            "round_medians_ms": [round(v, 3) for v in c["rounds"]],
        })
    return rows
