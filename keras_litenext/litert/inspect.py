"""What is inside a `.tflite` file: its I/O tensors, ops with dtypes, float ops, and how
XNNPACK partitions it."""

import collections
import os

import numpy as np

from keras_litenext.litert.runtime import _interpreter

# Ops that only convert between float and integer at the edges of an integer graph.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
# Ops that compute tensor sizes at run time (absent from a statically shaped graph).
DYNAMIC_SHAPE_OPS = ("SHAPE", "SIZE", "RANK", "BROADCAST_ARGS", "FILL", "RANGE", "WHERE")


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

    Uses the builtin kernels only (no XNNPACK), so the op list is the file's own. The dict
    returned holds:

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

    Args:
        model: path or bytes.

    Returns:
        The dict above.
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
