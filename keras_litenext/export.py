"""TFLite export: conversion, inspection and LiteRT inference.

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
import re
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
    "evaluate_tflite",
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

    with tempfile.TemporaryDirectory(prefix="litenext-export-") as folder:
        _export_saved_model(model, shape, folder)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
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


def _export_saved_model(model, shape, folder):
    """A SavedModel of `model(x, training=False)` at the static input shape `(1, *shape)`."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda x: model(x, training=False), input_signature=[tf.TensorSpec((1, *shape), tf.float32, name="image")]
    )
    archive.write_out(folder, verbose=False)


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


def evaluate_tflite(model, images, masks, threshold=0.5, empty="skip", num_threads=2, xnnpack=True):
    """Per-image Dice/IoU/precision/recall of a `.tflite` file, as `metrics.evaluate_model` gives
    them for a Keras model (`{"dice": {"mean", "std"}, ..., "per_image": {...}}`)."""
    from keras_litenext.metrics import per_image_scores, summarize

    logits = run_tflite(model, images, num_threads=num_threads, xnnpack=xnnpack)
    scores = per_image_scores(masks, logits, threshold=threshold, empty=empty)
    result = summarize(scores)
    result["per_image"] = {k: v.tolist() for k, v in scores.items()}
    return result


# ----------------------------------------------------------------------------------------------
# From a training run to deployable files
# ----------------------------------------------------------------------------------------------
FILE_KINDS = {  # suffix -> description
    "int8": "int8, quantization-aware fine-tuned (QAT)",
    "int8_ptq": "int8, post-training quantized (PTQ)",
    "fp16": "float16 weights, float32 compute",
    "fp32": "float32",
}


class ExportError(ValueError):
    """A bad input to `export_run` (missing run files, data, sizes), with a one-line message."""


def load_source(source, data=None):
    """`(model, config, arrays, meta)` for a run folder or a `.keras` file.

    A run folder (`training.train`'s output) gives `best.keras`, `config.json` (data folder,
    image size, channels, mask settings, loss) and `splits.json` (train/val/test stems). A
    `.keras` file needs `data` (a dataset folder) and is split 80/10/10 with seed 42, as
    training does by default. `data` also overrides a run's data folder (e.g. on another
    machine).

    Returns:
        model (float, loaded without its training config), config (dict of TrainConfig
        fields), arrays `{"train"|"val"|"test": (uint8 images, uint8 masks)}`, and meta
        (`{"run", "model_path", "data"}`).
    """
    import keras

    from keras_litenext import data as data_lib
    from keras_litenext.training import TrainConfig

    source = os.fspath(source)
    if os.path.isdir(source):
        model_path = os.path.join(source, "best.keras")
        config_path = os.path.join(source, "config.json")
        if not os.path.isfile(model_path):
            raise ExportError(f"{source} has no best.keras: is it a finished run folder of training/fit.py?")
        if not os.path.isfile(config_path):
            raise ExportError(f"{source} has no config.json: is it a run folder of training/fit.py?")
        import json

        with open(config_path, encoding="utf-8") as f:
            config = TrainConfig.from_dict(json.load(f)).to_dict()
        splits_path = os.path.join(source, "splits.json")
        splits = data_lib.load_splits(splits_path) if os.path.isfile(splits_path) else None
        run = os.path.abspath(source)
    elif source.endswith(".keras"):
        if not os.path.isfile(source):
            raise ExportError(f"{source} does not exist.")
        if data is None:
            raise ExportError(f"{source} is a model file: pass --data DATASET_FOLDER (with images/ and masks/) to calibrate and evaluate it.")
        model_path, config, splits, run = source, TrainConfig().to_dict(), None, None
    else:
        raise ExportError(f"{source}: expected a run folder (with best.keras and config.json) or a .keras file.")
    if data is not None:
        config["data"] = os.fspath(data)
    if not config.get("data") or not os.path.isdir(config["data"]):
        raise ExportError(f"dataset folder {config.get('data')!r} not found: pass --data DATASET_FOLDER.")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:
        raise ExportError(f"cannot load {model_path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    height, width, channels = (model.inputs[0].shape[1:] + (None,) * 3)[:3]
    size = config.get("image_size") or height
    if height is not None and size != height:
        raise ExportError(f"{model_path} takes {height}x{width} images but the run's config says image_size={size}.")
    if size is None:
        raise ExportError(f"{model_path} has a free input size and no image_size is known; convert a run folder.")
    config["image_size"] = int(size)
    if channels is not None:
        config["channels"] = int(channels)
    pairs = data_lib.find_pairs(config["data"], masks_suffix=config.get("masks_suffix", ""), skip_bad=config.get("skip_bad", False))
    images, masks, stems, _ = data_lib.load_pairs(
        pairs, config["image_size"], channels=config.get("channels", 3), mask_threshold=config.get("mask_threshold", 0),
        skip_bad=config.get("skip_bad", False),
    )
    if splits is None:
        splits = data_lib.split_stems(stems, fractions=tuple(config.get("split") or (0.8, 0.1, 0.1)), seed=config.get("seed", 42))
    arrays = {k: data_lib.select(stems, images, masks, splits[k], name=f"{k} split") for k in ("train", "val", "test")}
    if len(arrays["test"][0]) == 0 or len(arrays["train"][0]) == 0:
        raise ExportError("the train and test splits must not be empty.")
    meta = {"run": run, "model_path": os.path.abspath(model_path), "data": os.path.abspath(config["data"])}
    return model, config, arrays, meta


def _metrics_summary(result):
    return {
        **{k: {"mean": result[k]["mean"], "std": result[k]["std"]} for k in ("dice", "iou", "precision", "recall")},
        "images": result["images"],
        "counted": result["counted"],
    }


def io_contract(path, model_name, kind, config, meta):
    """The I/O contract of a `.tflite` file: what to feed it and how to read its output.

    Returns a JSON-able dict: input size, channels, dtype, scale / zero point and the mapping
    from camera pixels (0..255) to the input tensor; output shape and meaning (logits,
    threshold 0 = sigmoid 0.5, in the output's own units); model name and training data.
    """
    details = io_details(path)
    inp, out = details["input"], details["output"]
    _, height, width, channels = inp["shape"]
    color = "RGB" if channels == 3 else "grey (one channel)"
    if inp["dtype"] in ("int8", "uint8"):
        s, z = inp["scale"], inp["zero_point"]
        exact = abs(s * 255.0 - 1.0) < 1e-6
        pixels = (
            f"q = round(p / 255 / {s:.9g}) + ({z}), clipped to the {inp['dtype']} range, for a pixel value p in 0..255"
            + (f"; with this scale (1/255) that is exactly q = p {'-' if z < 0 else '+'} {abs(z)}" if exact and z else "")
            + ("; with this scale (1/255) that is exactly q = p" if exact and not z else "")
        )
    else:
        pixels = "x = p / 255 (float32 in [0, 1]) for a pixel value p in 0..255"
    if out["dtype"] in ("int8", "uint8"):
        s, z = out["scale"], out["zero_point"]
        to_float = f"logit = (q - ({z})) * {s:.9g}"
        mask = f"foreground where logit > 0, i.e. where q > {z} (the output zero point); equivalent to sigmoid(logit) > 0.5"
    else:
        to_float = "the float32 output is the logit"
        mask = "foreground where logit > 0, equivalent to sigmoid(logit) > 0.5"
    return {
        "model": model_name,
        "file": os.path.basename(path),
        "kind": kind,
        "description": FILE_KINDS.get(kind, kind),
        "input": {
            **inp,
            "layout": "NHWC, batch 1",
            "height": height,
            "width": width,
            "channels": channels,
            "color": color,
            "from_camera_pixels": pixels,
            "preprocess": f"resize the image to {width}x{height} ({'RGB channel order' if channels == 3 else 'grey'}); "
            "no mean/std normalisation: the network was trained on pixels / 255",
        },
        "output": {
            **out,
            "meaning": "one logit per pixel for the foreground class, at the input resolution",
            "to_float": to_float,
            "mask": mask,
            "probability": "sigmoid(logit); for another probability threshold t use logit > ln(t / (1 - t))",
        },
        "trained_on": {
            "data": meta.get("data"),
            "run": meta.get("run"),
            "image_size": config.get("image_size"),
            "channels": config.get("channels"),
            "masks_suffix": config.get("masks_suffix"),
            "mask_threshold": config.get("mask_threshold"),
        },
    }


def _file_report(path, kind, images, masks, threads):
    info = inspect_tflite(path)
    result = evaluate_tflite(path, images.astype(np.float32) / 255.0, masks, num_threads=threads, xnnpack=True)
    return {
        "file": os.path.basename(path),
        "kind": kind,
        "description": FILE_KINDS.get(kind, kind),
        "size_bytes": info["size_bytes"],
        "op_count": sum(info["op_counts"].values()),
        "op_counts": info["op_counts"],
        "float_ops": info["float_ops"],
        "float_op_count": int(sum(info["float_ops"].values())),
        "boundary_ops": info["boundary_ops"],
        "dynamic_shape_ops": info["dynamic_shape_ops"],
        "xnnpack": xnnpack_partitions(path),
        "input": info["input"],
        "output": info["output"],
        "ops": info["ops"],
        "test": _metrics_summary(result),
    }


def quality_gate(report, max_dice_drop):
    """`(passed, message)`: is the int8 file's test Dice within `max_dice_drop` points
    (Dice x 100) of the float Keras model's?"""
    float_dice = report["keras_float"]["test"]["dice"]["mean"]
    int8 = next(f for f in report["files"] if f["kind"] == "int8")
    int8_dice = int8["test"]["dice"]["mean"]
    drop = 100.0 * (float_dice - int8_dice)
    passed = drop <= max_dice_drop
    message = (
        f"int8 test Dice {100 * int8_dice:.2f} vs float {100 * float_dice:.2f}: "
        f"{'drop' if drop >= 0 else 'gain'} of {abs(drop):.2f} points "
        f"({'within' if passed else 'more than'} the allowed {max_dice_drop:g})"
    )
    return passed, message


def export_run(source, output=None, name=None, io="int8", qat_epochs=3, qat_lr=1e-5, data=None, num_calibration=200,
               max_dice_drop=0.5, threads=2, verbose=1, log=print):
    """Convert a trained model to every deployable TFLite file, evaluate them and write a report.

    Writes to `output` (default `<run>/tflite`):

    - `<name>_int8.tflite`: int8 from the QAT model (`qat_epochs` of fine-tuning with the run's
      loss and data pipeline, from the float weights, after calibration);
    - `<name>_int8_ptq.tflite`: int8, post-training quantized;
    - `<name>_fp16.tflite`, `<name>_fp32.tflite`;
    - `<file>.json` beside each: its I/O contract (`io_contract`);
    - `<name>_qat.keras`: the QAT model (ranges included), which `convert` turns into the int8
      file again;
    - `report.json` and `report.md`: per file size, ops with dtypes, float-op count, XNNPACK
      partitions, and test-split Dice/IoU measured by running the file with LiteRT (XNNPACK,
      `threads` threads), next to the float Keras model's; the quality gate.

    Args:
        source: run folder, or `.keras` file with `data`.
        output: output folder.
        name: file name prefix; defaults to the model's name.
        io: int8 files' input/output type: "int8", "uint8" or "float".
        qat_epochs: QAT fine-tuning epochs (0: calibration only).
        qat_lr: QAT peak learning rate.
        data: dataset folder (required with a `.keras` file; overrides a run's).
        num_calibration: training images for int8 calibration.
        max_dice_drop: the quality gate, in Dice points.
        threads: LiteRT threads for the evaluation.
        verbose: Keras verbosity for the fine-tuning.
        log: callable for progress lines.

    Returns:
        the report dict (also in report.json), with `"gate": {"passed", "message", ...}`.
    """
    import time

    from keras_litenext import quantization as qlib
    from keras_litenext.metrics import evaluate_model
    from keras_litenext.utils import write_json

    if io not in IO_TYPES:
        raise ExportError(f"io must be one of {IO_TYPES}, got {io!r}.")
    if qat_epochs < 0:
        raise ExportError(f"qat_epochs must be >= 0, got {qat_epochs}.")
    model, config, arrays, meta = load_source(source, data=data)
    name = name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"name {name!r} must be letters, digits, '_', '-' or '.'.")
    output = os.fspath(output) if output is not None else os.path.join(meta["run"] or os.path.dirname(meta["model_path"]), "tflite")
    os.makedirs(output, exist_ok=True)
    train_images = arrays["train"][0]
    test_images, test_masks = arrays["test"]
    x_test = test_images.astype(np.float32) / 255.0
    sizes = {k: int(len(v[0])) for k, v in arrays.items()}
    log(f"Model {name} ({model.count_params():,} parameters), data {meta['data']} at {config['image_size']}px, "
        f"train {sizes['train']} / val {sizes['val']} / test {sizes['test']} images")

    started = time.time()
    float_result = evaluate_model(model, (x_test, test_masks.astype(np.float32)), batch_size=8)
    log(f"float Keras test Dice {float_result['dice']['mean']:.4f}")

    files = []

    def emit(kind, build):
        path = os.path.join(output, f"{name}_{kind}.tflite")
        t0 = time.time()
        data_bytes = build()
        write_bytes(path, data_bytes)
        size = len(data_bytes)
        contract = io_contract(path, name, kind, config, meta)
        write_json(os.path.join(output, f"{name}_{kind}.json"), contract)
        entry = _file_report(path, kind, test_images, test_masks, threads)
        entry["convert_seconds"] = round(time.time() - t0, 1)
        files.append(entry)
        log(f"{os.path.basename(path)}: {size / 1024:.0f} KiB, {entry['op_count']} ops, {entry['float_op_count']} float ops, "
            f"{entry['xnnpack']['partitions']} XNNPACK partitions, test Dice {entry['test']['dice']['mean']:.4f}")

    emit("fp32", lambda: convert(model, "fp32"))
    emit("fp16", lambda: convert(model, "fp16"))
    emit("int8_ptq", lambda: convert(model, "int8", representative_data=train_images, io=io, num_calibration=num_calibration))

    log(f"QAT: calibrating, then fine-tuning {qat_epochs} epoch(s) at lr {qat_lr:g}")
    qat = qlib.finetune_run(model, config, arrays, epochs=qat_epochs, lr=qat_lr, verbose=verbose, calibration_steps=max(1, num_calibration // 8))
    qat_result = evaluate_model(qat, (x_test, test_masks.astype(np.float32)), batch_size=8)
    with atomic_path(os.path.join(output, f"{name}_qat.keras")) as tmp:
        qat.save(tmp)
    emit("int8", lambda: convert(qat, "int8", representative_data=train_images, io=io, num_calibration=num_calibration))

    report = {
        "model": name,
        "source": meta,
        "config": {k: config.get(k) for k in ("model", "data", "image_size", "channels", "masks_suffix", "mask_threshold", "loss", "batch_size")},
        "splits": sizes,
        "io": io,
        "evaluation": f"test split ({sizes['test']} images), per-image Dice/IoU; .tflite files run with ai-edge-litert, XNNPACK, {threads} threads",
        "keras_float": {"params": int(model.count_params()), "test": _metrics_summary(float_result)},
        "qat": {
            "epochs": int(qat_epochs),
            "lr": qat_lr,
            "best_epoch": getattr(qat, "qat_best_epoch", None),
            "history": getattr(qat, "qat_history", None),
            "rsqrt_quantile_val_dice": {str(k): v for k, v in (getattr(qat, "rsqrt_quantile_scores", None) or {}).items()},
            "keras_test": _metrics_summary(qat_result),
        },
        "files": sorted(files, key=lambda f: list(FILE_KINDS).index(f["kind"])),
        "seconds": round(time.time() - started, 1),
    }
    float_dice = float_result["dice"]["mean"]
    for entry in report["files"]:
        entry["dice_drop_points"] = round(100.0 * (float_dice - entry["test"]["dice"]["mean"]), 3)
    passed, message = quality_gate(report, max_dice_drop)
    report["gate"] = {"max_dice_drop_points": max_dice_drop, "passed": passed, "message": message}
    report["output"] = os.path.abspath(output)
    write_json(os.path.join(output, "report.json"), report)
    with atomic_path(os.path.join(output, "report.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_markdown(report))
    return report


def _signature(op):
    return f"{','.join(op['inputs'])} -> {','.join(op['outputs'])}"


def report_markdown(report):
    """`report.md` of `export_run`: summary table, quality gate, then each file's ops with dtypes."""
    f = report["keras_float"]["test"]
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); "
        f"splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test Dice | test IoU | Dice vs float (points) |",
        "|---|---|---|---|---|---|---|---|",
        f"| Keras float32 | - | - | - | - | {f['dice']['mean']:.4f} | {f['iou']['mean']:.4f} | - |",
    ]
    q = report["qat"]["keras_test"]
    lines.append(f"| Keras QAT (simulated int8) | - | - | - | - | {q['dice']['mean']:.4f} | {q['iou']['mean']:.4f} | "
                 f"{100 * (q['dice']['mean'] - f['dice']['mean']):+.2f} |")
    for e in report["files"]:
        lines.append(
            f"| `{e['file']}` ({e['description']}) | {e['size_bytes'] / 1024:.0f} KiB | {e['op_count']} | {e['float_op_count']} | "
            f"{e['xnnpack']['partitions']} | {e['test']['dice']['mean']:.4f} | {e['test']['iou']['mean']:.4f} | {-e['dice_drop_points']:+.2f} |"
        )
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_dice_drop_points']:g} points): **{'PASSED' if gate['passed'] else 'FAILED'}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        "(0 = the calibrated model, before fine-tuning).",
    ]
    scores = report["qat"].get("rsqrt_quantile_val_dice") or {}
    if scores:
        chosen = max(scores, key=scores.get)
        lines.append("Layer-norm 1/sqrt(variance) range end, simulated val Dice per candidate (None = max): "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) + f"; kept {chosen}.")
    lines += [
        "",
    ]
    for e in report["files"]:
        lines += [f"## `{e['file']}`", ""]
        lines.append(f"Input {e['input']['dtype']} {e['input']['shape']} (scale {e['input']['scale']}, zero point {e['input']['zero_point']}); "
                     f"output {e['output']['dtype']} {e['output']['shape']} (scale {e['output']['scale']}, zero point {e['output']['zero_point']}).")
        nd = e["xnnpack"]["not_delegated"]
        lines.append(f"XNNPACK: {e['xnnpack']['delegated']} of {e['xnnpack']['ops']} ops in {e['xnnpack']['partitions']} partition(s)"
                     + (f"; not delegated: {', '.join(f'{k} x{v}' for k, v in nd.items())}." if nd else "."))
        if e["float_ops"]:
            lines.append(f"Float ops: {', '.join(f'{k} x{v}' for k, v in e['float_ops'].items())}.")
        if e["dynamic_shape_ops"]:
            lines.append(f"Run-time shape ops: {', '.join(f'{k} x{v}' for k, v in e['dynamic_shape_ops'].items())}.")
        lines += ["", "| op | count | dtypes (inputs -> outputs) |", "|---|---|---|"]
        groups = collections.OrderedDict()
        for op in e["ops"]:
            groups.setdefault((op["op"], _signature(op)), 0)
            groups[(op["op"], _signature(op))] += 1
        for (op, sig), n in sorted(groups.items()):
            lines.append(f"| {op} | {n} | {sig} |")
        lines.append("")
    return "\n".join(lines)


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
