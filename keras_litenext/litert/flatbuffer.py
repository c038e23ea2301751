"""Surgery on converted `.tflite` flatbuffers: float islands for XNNPACK inside an int8 graph
(`float_islands`, `apply_int8_mode`), the camera-pixel uint8 input (`pin_uint8_input`), and a
named metadata buffer (`set_metadata_buffer`, for the TFLite metadata)."""

import copy
import os
import tempfile

import numpy as np

from keras_litenext.litert.files import INT8_MODES, ConversionError
from keras_litenext.notes import note

# Ops that XNNPACK runs in float but not in int8 (its delegate's type checks, LiteRT 2026): in an
# int8 file each one is an XNNPACK partition break, with a hand-over to the builtin kernels.
ISLAND_OPS = ("RSQRT", "GELU", "SOFTMAX", "HARD_SWISH", "BATCH_MATMUL")
# Ops it runs in int8 only when their scales fit (`float_islands`): a window of ratios, or the
# same scale in and out (RELU).
WINDOW_OPS = ("ADD", "SUB", "MUL", "RELU")


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
    note("convert: XNNPACK could not plan the int8 file with float islands; kept the strict int8 file.", stacklevel=2)
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


def io_tensor_types(data):
    """`(input types, output types)` of the first subgraph: the schema's `TensorType` numbers
    (FLOAT32 0, UINT8 3, INT8 9)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(bytearray(data), 0).Subgraphs(0)
    types = [[graph.Tensors(getter(i)).Type() for i in range(length())]
             for getter, length in ((graph.Inputs, graph.InputsLength), (graph.Outputs, graph.OutputsLength))]
    return types[0], types[1]


def set_metadata_buffer(data, name, payload):
    """The model flatbuffer (bytes) with `payload` as the buffer of its `metadata` entry `name`:
    the entry's buffer replaced when there is one, else a new buffer and entry appended. The
    model is rewritten (with the schema of `ai-edge-litert`), so bytes after the flatbuffer
    (an archive of associated files) are left out."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(payload), np.uint8)
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if (m.name or b"").decode("utf-8") == name), None)
    if entry is not None:
        model.buffers[entry.buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
