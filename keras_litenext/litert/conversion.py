"""Conversion of a Keras model to `.tflite` bytes, and the phone form of a model.

Conversion (`convert`, `convert_to_file`) always traces the model at a static shape: batch 1
and a fixed height, width and channels. With a static shape every size is known when the graph
is built, so the file has no SHAPE / GATHER / STRIDED_SLICE ops that compute sizes at run time,
and XNNPACK plans the whole graph ahead.

Kinds of file (`KINDS`):

- `"fp32"`: float32 weights and activations;
- `"fp16"`: float16 weights (half the size), float32 activations;
- `"int8"`: full-integer int8. A float model is quantized post-training (PTQ: activation
  ranges calibrated on `representative_data`, weights per channel). A QAT model from
  `keras_litenext.quantization` is converted with the ranges it learned (its FakeQuant ops);
  TF 2.21's converter still needs `representative_data` for it, so pass the same images.
  `io` picks the input/output type: `"int8"` (default), `"uint8"` or `"float"` (QUANTIZE /
  DEQUANTIZE ops at the two ends), or `"uint8_float"` (uint8 in, float32 out: MediaPipe's).
  `TFLITE_BUILTINS_INT8` is enforced: conversion fails rather than leave a float op in the graph.

Every file is written atomically (`write_bytes`): a failed conversion leaves nothing under the
final name.
"""

import contextlib
import os
import tempfile
import warnings

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.litert.files import (
    INT8_MODES,
    IO_DTYPES,
    IO_TYPES,
    KINDS,
    ConversionError,
    write_bytes,
)
from keras_litenext.litert.flatbuffer import apply_int8_mode, pin_uint8_input


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
            rewrite=True, int8_mode="cpu", frozen=None):
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
        frozen: a dict the caller keeps across conversions of one model (its fp32, fp16 and PTQ
            files): the traced, frozen graph is made on the first and reused by the others (the
            same graph, so the same files, without tracing the model again).

    Returns:
        bytes of the `.tflite` file.

    Raises:
        ValueError: bad arguments, or an uncalibrated QAT model.
        ConversionError: the converter failed (e.g. an op with no int8 kernel).
    """
    import tensorflow as tf

    from keras_litenext.quantization import (
        deployment_model,
        is_qat_model,
        uncalibrated_quantizers,
    )

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
    elif rewrite and not (frozen and frozen.get("shape") == shape):
        model = deployment_model(model)
    if kind == "int8" and representative_data is None:
        raise ValueError("convert: int8 conversion needs representative_data (training images).")

    with _converter(model, shape, frozen) as converter:
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


@contextlib.contextmanager
def _converter(model, shape, frozen=None):
    """A `TFLiteConverter` of `model(x, training=False)` at the static input shape `(1, *shape)`.

    The graph is traced once and its variables frozen into constants, then converted from the
    concrete function: about 3x faster than exporting a SavedModel first (the same file, same
    ops; 2.7 s vs 9.2 s for LiteNeXt at 64x64). TensorFlow keeps the freezing helper under
    `tensorflow.python`; if it moves, the SavedModel route (`keras.export.ExportArchive`) is used.
    """
    import tensorflow as tf

    signature = tf.TensorSpec((1, *shape), tf.float32, name="image")
    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )
    except ImportError:  # pragma: no cover - depends on the TensorFlow version
        convert_variables_to_constants_v2 = None
    if convert_variables_to_constants_v2 is not None:
        if frozen is not None and frozen.get("shape") == shape:
            constant = frozen["function"]
        else:
            function = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature)
            constant = convert_variables_to_constants_v2(function)
            if frozen is not None:
                frozen.update(shape=shape, function=constant)
        yield tf.lite.TFLiteConverter.from_concrete_functions([constant])
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


def convert_to_file(model, path, kind="int8", **kwargs):
    """`convert` and write the bytes to `path` atomically. Returns the number of bytes."""
    data = convert(model, kind=kind, **kwargs)
    write_bytes(path, data)
    return len(data)
