"""The TFLite library: conversion, inspection and LiteRT inference of `.tflite` files.

It knows models and files only, nothing of run folders, tasks or metrics (those are in
`keras_litenext.export`). It is the only package that uses `tf.lite` (the converter still lives
in TensorFlow); running and inspecting `.tflite` files uses `ai-edge-litert`.

- `files`: the kinds of file (`KINDS`, `FILE_KINDS`), the I/O types of an int8 file
  (`IO_TYPES`, `IO_DTYPES`), the int8 modes, `ConversionError`, `write_bytes`;
- `conversion`: a Keras model to `.tflite` bytes at a static shape (`convert`, `convert_phone`,
  `phone_model`, `representative_dataset`);
- `flatbuffer`: surgery on converted files (`float_islands`, `apply_int8_mode`,
  `pin_uint8_input`);
- `inspect`: ops, dtypes, float ops and XNNPACK partitions of a file;
- `runtime`: LiteRT interpreters (`run_tflite`, `TFLiteRunner`);
- `timing`: latency (`benchmark`).
"""

from keras_litenext.litert.conversion import (
    convert,
    convert_phone,
    convert_to_file,
    phone_model,
    representative_dataset,
)
from keras_litenext.litert.files import (
    FILE_KINDS,
    INT8_MODES,
    IO_DTYPES,
    IO_TYPES,
    KINDS,
    PHONE_IO,
    ConversionError,
    write_bytes,
)
from keras_litenext.litert.flatbuffer import (
    ISLAND_OPS,
    WINDOW_OPS,
    apply_int8_mode,
    float_islands,
    pin_uint8_input,
    xnnpack_accepts,
)
from keras_litenext.litert.inspect import (
    BOUNDARY_OPS,
    DYNAMIC_SHAPE_OPS,
    inspect_tflite,
    io_details,
    xnnpack_partitions,
)
from keras_litenext.litert.runtime import TFLiteRunner, _interpreter, run_tflite  # noqa: F401 (_interpreter: tests)
from keras_litenext.litert.timing import benchmark

__all__ = [
    "BOUNDARY_OPS",
    "DYNAMIC_SHAPE_OPS",
    "FILE_KINDS",
    "INT8_MODES",
    "ISLAND_OPS",
    "WINDOW_OPS",
    "IO_DTYPES",
    "IO_TYPES",
    "KINDS",
    "PHONE_IO",
    "ConversionError",
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
    "write_bytes",
    "xnnpack_partitions",
]
