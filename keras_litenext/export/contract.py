"""The I/O contract of a phone file (`<file>.json`): what to feed it and how to read its output,
and the description its metadata carries.

The wording of the output is the task's (`task.contract()`, `task.output_contract`); this module
writes the input side (pixels, intensity recipe, colour), the metadata summary and the file's
description around it.
"""

import os

from keras_litenext.data.intensity import Intensity
from keras_litenext.export.scoring import fmt, mean_of
from keras_litenext.litert import FILE_KINDS, io_details


def io_contract(path, model_name, kind, config, meta, task):
    """The I/O contract of a `.tflite` file: what to feed it and how to read its output.

    Returns a JSON-able dict: the task and its classes; input size, channels, dtype, scale /
    zero point and the mapping from camera pixels (0..255) to the input tensor; output shape
    `(1, H, W, K)` with its meaning and decoding (`task.contract()`: threshold 0 on the logit
    for binary, arg-max over the last axis for K classes), in the output's own units; model
    name and training data. `config` is the run's `runs.TrainConfig`.
    """
    details = io_details(path)
    inp, out = details["input"], details["output"]
    _, height, width, channels = inp["shape"]
    grey_model = config.channels == 1 and channels == 3
    color = ("RGB; the model is grey: the file averages R, G and B (give a grey image as R = G = B)" if grey_model
             else "RGB" if channels == 3 else "grey (one channel)")
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
    recipe = Intensity.from_dict(config.intensity)
    preprocess = "no mean/std normalisation: the network was trained on pixels / 255"
    if recipe.kind != "uint8":  # the input x in [0, 1] comes from the recipe, not from p / 255
        pixels = (f"q = round(x / {inp['scale']:.9g}) + ({inp['zero_point']}), clipped to the {inp['dtype']} range, "
                  "for the input x in [0, 1] of the intensity recipe" if inp["dtype"] in ("int8", "uint8")
                  else "x in [0, 1] (float32) of the intensity recipe")
        preprocess = f"map the stored values with the intensity recipe ({recipe.formula()})"
    wording = task.contract()
    return {
        "model": model_name,
        "file": os.path.basename(path),
        "kind": kind,
        "description": FILE_KINDS.get(kind, kind),
        "task": task.name,
        "classes": wording["classes"],
        "num_classes": task.num_classes,
        "input": {
            **inp,
            "layout": "NHWC, batch 1",
            "height": height,
            "width": width,
            "channels": channels,
            "color": color,
            "from_camera_pixels": pixels,
            "preprocess": f"resize the image to {width}x{height} ({'RGB channel order' if channels == 3 else 'grey'}); "
            + preprocess,
            "intensity": recipe.contract(),
        },
        "output": {**out, **task.output_contract(out)},
        "metadata": metadata_summary(inp, task, config.intensity),
        "trained_on": {
            "data": meta.get("data"),
            "run": meta.get("run"),
            **{k: getattr(config, k) for k in ("image_size", "channels", "masks_suffix", "mask_threshold")},
        },
    }


def metadata_summary(inp, task, intensity=None):
    """What the TFLite metadata inside the file says (`keras_litenext.export.metadata`), for the contract."""
    from keras_litenext.export.metadata import LABELS_FILE, input_normalization

    mean, std = input_normalization(inp["dtype"], intensity)
    section = {"labels_file": LABELS_FILE, "normalization": {"mean": mean, "std": std}, "color_space": "RGB",
               "reader": f"MediaPipe Tasks: {task.mediapipe_task}"}
    if task.metadata_activation is not None:  # a segmenter's
        section["activation"] = task.metadata_activation
    return section


def description(name, kind, task, config, meta, file_test, float_test):
    """The metadata's description: model, file kind, task and classes, training data, metrics."""
    data = os.path.basename(str(meta.get("data") or "").rstrip("/\\")) or "unknown data"
    size = config.image_size
    what, metrics = task.file_description(file_test, float_test)
    recipe = Intensity.from_dict(config.intensity)
    mapping = "" if recipe.kind == "uint8" else f" Input: the intensity recipe {recipe.formula()}."
    return (f"{name} ({FILE_KINDS.get(kind, kind)}): {what}. Trained on {data} at {size}x{size} px.{mapping} "
            f"This file on the test split (LiteRT): {metrics}. Made with keras-litenext.")


# ----------------------------------------------------------------------------------------------
# The output side, per task (`task.output_contract`, `task.file_description`)
# ----------------------------------------------------------------------------------------------
def _quantized(out):
    return out["dtype"] in ("int8", "uint8"), out.get("scale"), out.get("zero_point")


def _argmax_rule(where):
    return (f"class = arg-max {where}; on this quantized output the arg-max of q itself is the same, "
            "because (q - zero point) * scale with one positive scale is increasing (ties go to the lowest class index)")


def binary_output(task, out):
    """One logit per pixel: the mask rule (logit > 0) in the output's own units."""
    wording = task.contract()
    quantized, s, z = _quantized(out)
    section = {"meaning": f"{wording['output_meaning']}, at the input resolution", "decoding": wording["decoding"],
               "activation": wording["activation"]}
    if quantized:
        section["to_float"] = f"logit = (q - ({z})) * {s:.9g}"
        section["mask"] = f"foreground where logit > 0, i.e. where q > {z} (the output zero point); equivalent to sigmoid(logit) > 0.5"
    else:
        section["to_float"] = "the float32 output is the logit"
        section["mask"] = "foreground where logit > 0, equivalent to sigmoid(logit) > 0.5"
    section["probability"] = "sigmoid(logit); for another probability threshold t use logit > ln(t / (1 - t))"
    return section


def multiclass_output(task, out):
    """K logits per pixel: arg-max over the last axis, in the output's own units."""
    wording, k = task.contract(), task.output_channels
    quantized, s, z = _quantized(out)
    section = {"meaning": f"{wording['output_meaning']}, at the input resolution", "decoding": wording["decoding"],
               "activation": wording["activation"], "classes": wording["classes"],
               "layout": f"NHWC, batch 1; the last axis holds the {k} classes in the order of `classes`"}
    if quantized:
        section["to_float"] = f"logit = (q - ({z})) * {s:.9g}, one scale and zero point for all {k} channels"
        section["mask"] = _argmax_rule("over the last axis")
    else:
        section["to_float"] = "the float32 output is the logits"
        section["mask"] = "class = arg-max over the last axis of the logits"
    section["probability"] = "softmax over the last axis of the logits"
    return section


def classification_output(task, out):
    """K logits per image: arg-max, in the output's own units."""
    wording, k = task.contract(), task.output_channels
    quantized, s, z = _quantized(out)
    section = {"meaning": wording["output_meaning"], "decoding": wording["decoding"], "activation": wording["activation"],
               "classes": wording["classes"], "layout": f"(1, {k}), batch 1; the {k} logits in the order of `classes`"}
    if quantized:
        section["to_float"] = f"logit = (q - ({z})) * {s:.9g}, one scale and zero point for all {k} logits"
        section["class"] = _argmax_rule("of the logits")
    else:
        section["to_float"] = "the float32 output is the logits"
        section["class"] = "class = arg-max of the logits"
    section["probability"] = "softmax over the logits"
    return section


def segmentation_description(task, file_test, float_test):
    """`(what, metrics)` of a segmentation file's description."""
    metrics = (f"test Dice {fmt(mean_of(file_test, 'dice'))}, IoU {fmt(mean_of(file_test, 'iou'))} "
               f"(float Keras model: Dice {fmt(mean_of(float_test, 'dice'))})")
    return f"{task.name} segmentation ({', '.join(task.class_names)}); output: {task.output_wording}", metrics


def classification_description(task, file_test, float_test):
    """`(what, metrics)` of a classification file's description."""
    metrics = (f"test accuracy {fmt(file_test.get('accuracy'))}, macro AUC {fmt(file_test.get('auc'))} "
               f"(float Keras model: {fmt(float_test.get('accuracy'))}, {fmt(float_test.get('auc'))})")
    return f"image classification ({', '.join(task.class_names)}); output: {task.output_wording}", metrics
