"""What a `.tflite` file can be, defined once: the kinds of file, the I/O types of an int8 file
and the int8 modes; the conversion error and the atomic write of a file.

Every other module (the export, its command line, the benchmark suite) imports these names from
`keras_litenext.litert` rather than writing the lists out again.
"""

from keras_litenext.utils import atomic_path

# What `convert` makes: float32 weights and activations, float16 weights, full-integer int8.
KINDS = ("fp32", "fp16", "int8")
# The files of an export (`<name>_<kind>.tflite`), with what each is; "int8" is the file to ship.
FILE_KINDS = {  # suffix -> description
    "int8": "int8, quantization-aware fine-tuned (QAT)",
    "int8_ptq": "int8, post-training quantized (PTQ)",
    "fp16": "float16 weights, float32 compute",
    "fp32": "float32",
}
INT8_MODES = ("cpu", "strict")
IO_TYPES = ("int8", "uint8", "float", "uint8_float")
# Input and output dtypes of an int8 file per `io`; "uint8_float" is what MediaPipe Tasks read
# by default: camera pixels in, one float32 output (the int8 graph ends in a DEQUANTIZE).
IO_DTYPES = {"int8": ("int8", "int8"), "uint8": ("uint8", "uint8"), "float": ("float32", "float32"),
             "uint8_float": ("uint8", "float32")}
PHONE_IO = "uint8_float"  # the I/O of a phone file's int8 graph (an export's default)


class ConversionError(RuntimeError):
    """The TFLite converter failed; the message keeps its first lines."""


def write_bytes(path, data):
    """Write `data` to `path` atomically (all or nothing under the final name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
