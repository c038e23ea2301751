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
  DEQUANTIZE ops at the two ends). `TFLITE_BUILTINS_INT8` is enforced: conversion fails
  rather than leave a float op in the graph.

Every file is written atomically (`keras_litenext.utils.atomic_path`): a failed conversion
leaves nothing under the final name.
"""

import collections
import contextlib
import os
import tempfile

import numpy as np

from keras_litenext.utils import atomic_path

KINDS = ("fp32", "fp16", "int8")
IO_TYPES = ("int8", "uint8", "float")
# Ops that only convert between float and integer at the edges of an integer graph.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
# Ops that compute tensor sizes at run time (absent from a statically shaped graph).
DYNAMIC_SHAPE_OPS = ("SHAPE", "SIZE", "RANK", "BROADCAST_ARGS", "FILL", "RANGE", "WHERE")

__all__ = [
    "BOUNDARY_OPS",
    "IO_TYPES",
    "KINDS",
    "TFLiteRunner",
    "convert",
    "convert_to_file",
    "benchmark",
    "inspect_tflite",
    "io_details",
    "representative_dataset",
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
            x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
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
            rewrite=True):
    """Convert a Keras model to TFLite and return the flatbuffer bytes.

    Args:
        model: a functional Keras model (float, or QAT from `keras_litenext.quantization`).
        kind: `"fp32"`, `"fp16"` or `"int8"`.
        representative_data: `(N, H, W, C)` images (uint8 0-255 or float [0, 1]), needed for
            `"int8"` (PTQ calibration; the TF 2.21 converter also requires it for QAT models).
        io: for `"int8"`: `"int8"` (default), `"uint8"` or `"float"` input and output.
        input_shape: `(H, W, C)` to convert at, for a model built with a free size.
        num_calibration: images of `representative_data` used. Defaults to 200.
        quiet: hide the converter's native log output.
        rewrite: convert a float model through `quantization.deployment_model` (same math,
            ops that XNNPACK runs: one partition in float32 instead of three, and an int8
            graph without SQUARED_DIFFERENCE, which made PTQ files about 2x slower).

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
            io_type = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io]
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            with (_quiet_native_stderr() if quiet else contextlib.nullcontext()):
                import warnings

                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
                    return bytes(converter.convert())
        except Exception as err:  # the converter raises many types, with pages of MLIR text
            lines = [line for line in str(err).splitlines() if line.strip()][:6]
            raise ConversionError(f"TFLite conversion ({kind}) failed: {type(err).__name__}: " + " | ".join(lines)) from err


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
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
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
