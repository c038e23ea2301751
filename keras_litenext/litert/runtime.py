"""Running `.tflite` files with LiteRT (`ai-edge-litert`): interpreters and float in, float out."""

import os

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.notes import native_quiet


def _interpreter(model, num_threads=1, xnnpack=False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": os.fspath(model)}
    if "model_path" in source and not os.path.isfile(source["model_path"]):
        raise FileNotFoundError(f"{source['model_path']} does not exist or is not a file.")
    with native_quiet():  # "Created TensorFlow Lite XNNPACK delegate for CPU." in a command's output
        interpreter = Interpreter(**source, **kwargs)
        interpreter.allocate_tensors()
    return interpreter


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
