"""Run-level export: from a training run to deployable `.tflite` files with a report and a gate.

`export_run` fine-tunes a run's model with quantization-aware training, converts it to int8
(QAT and PTQ), fp16 and fp32 files with `keras_litenext.litert`, scores every file with LiteRT
on the run's test split through the run's task (binary or multi-class, per class), writes the
I/O contract of each file and `report.md`, and applies the quality gate. The TFLite mechanics
live in `keras_litenext.litert`, the run folder in `keras_litenext.runs`, the meaning of the
output in `keras_litenext.tasks`.

A classification run (`tasks.ClassificationTask`) goes the same way; its files are scored by
accuracy, balanced accuracy and macro AUC on the test split, and its gate (`classification_gate`)
fails when the int8 file loses more than `max_accuracy_drop` points of accuracy (default 1.0) or
more than `max_auc_drop` of macro AUC (default 0.01, i.e. one AUC point; a rank score moves
less than accuracy under quantization noise, so the same 1-point budget on a 0-100 scale).
"""

import collections
import math
import os
import re
import sys
import tempfile
import time
import types

import numpy as np

from keras_litenext.data.intensity import Intensity, to_float
from keras_litenext.runs import RunError, file_run, open_source
from keras_litenext.tasks import get_task
from keras_litenext.litert import (
    IO_TYPES,
    ConversionError,
    convert_phone,
    inspect_tflite,
    io_details,
    run_tflite,
    write_bytes,
    xnnpack_partitions,
)
from keras_litenext.utils import atomic_path, write_json

__all__ = [
    "FILE_KINDS",
    "ConversionError",
    "ExportError",
    "Exported",
    "Source",
    "classification_gate",
    "dice_drops",
    "evaluate_tflite",
    "export",
    "export_run",
    "io_contract",
    "load_source",
    "quality_gate",
    "report_markdown",
    "score_logits",
]

FILE_KINDS = {  # suffix -> description
    "int8": "int8, quantization-aware fine-tuned (QAT)",
    "int8_ptq": "int8, post-training quantized (PTQ)",
    "fp16": "float16 weights, float32 compute",
    "fp32": "float32",
}
METRICS = ("dice", "iou", "precision", "recall", "hd95")


class ExportError(ValueError):
    """A bad input to `export_run` (missing run files, data, sizes), with a one-line message."""


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------
# Scores through the task
# ----------------------------------------------------------------------------------------------
def _task_of_output(channels, rank=4):
    """The task a bare output implies: binary for one channel, multi-class (generic names) else;
    classification for a `(batch, K)` output."""
    channels = int(channels)
    if rank == 2:
        return get_task("classification", num_classes=channels)
    return get_task(num_classes=2 if channels == 1 else channels)


def _is_classification(task):
    return getattr(task, "kind", "segmentation") == "classification"


def _class_keys(task):
    """`{class name: score-key suffix}` of the foreground classes (`dice_<suffix>` in the scores)."""
    from keras_litenext.metrics import class_names_for

    if task.output_channels == 1:
        return {task.foreground_names[0]: None}  # binary: the class is the whole score
    return dict(zip(task.foreground_names, class_names_for(task.num_classes, task.class_names)[1:]))


def score_logits(task, masks, logits, threshold=0.5, empty="skip", hd95=True):
    """Per-image scores of logits through the task, summarised as `metrics.evaluate_model` does
    (`{"dice": {"mean", "std"}, ..., "per_image": {...}}`), so files and Keras models are scored
    by the same code."""
    from keras_litenext.metrics import summarize

    if _is_classification(task):  # masks are the class indices; accuracy, balanced accuracy, AUC, ...
        return task.scores(masks, np.asarray(logits, np.float32))
    kwargs = {"empty": empty, "hd95": hd95}
    if task.output_channels == 1:
        kwargs["threshold"] = threshold
    scores = task.scores(masks, np.asarray(logits, np.float32), **kwargs)
    result = summarize(scores)
    result["per_image"] = {k: np.asarray(v, np.float64).tolist() for k, v in scores.items()}
    return result


def evaluate_tflite(model, images, masks, task=None, threshold=0.5, empty="skip", hd95=True, num_threads=2, xnnpack=True):
    """Per-image Dice/IoU/precision/recall/HD95 of a `.tflite` file, as `metrics.evaluate_model`
    gives them for a Keras model, per class too for a multi-class task.

    Args:
        model: path or bytes of the file.
        images: `(N, H, W, C)` float images in [0, 1] (uint8 is divided by 255); grey images
            are repeated to RGB for the RGB file of a grey model.
        masks: `(N, H, W, 1)` label maps (binary {0, 1}, or class indices).
        task: a `keras_litenext.tasks` task; default: binary for a one-channel output, else
            multi-class with generic class names.
    """
    logits = run_tflite(model, _file_input(np.asarray(images), model), num_threads=num_threads, xnnpack=xnnpack)
    task = task or _task_of_output(logits.shape[-1], logits.ndim)
    return score_logits(task, masks, logits, threshold=threshold, empty=empty, hd95=hd95)


def _predict(model, images, batch_size=8):
    """Logits of uint8 images, called eagerly in batches: no predict function to trace (seconds
    for a QAT graph), which costs more than it saves on a test split."""
    import keras

    x = to_float(images)
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)])


def _mean_std(result, key):
    return {"mean": result[key]["mean"], "std": result[key]["std"]} if key in result else None


def _metrics_summary(result, task):
    """The report's view of a scored model: mean/std of each metric (mean over foreground
    classes per image), `per_class` mean/std, and per-image Dice (overall and per class);
    classification: the scores as they are (accuracy, balanced accuracy, AUC, per class, matrix)."""
    if _is_classification(task):
        return dict(result)
    summary = {k: _mean_std(result, k) for k in METRICS if k in result}
    per_class, per_image = {}, {"dice": result["per_image"]["dice"]}
    for name, key in _class_keys(task).items():
        if key is None:  # binary: the foreground's numbers are the overall ones
            per_class[name] = {k: _mean_std(result, k) for k in METRICS if k in result}
        else:
            per_class[name] = {k: _mean_std(result, f"{k}_{key}") for k in METRICS if f"{k}_{key}" in result}
            per_image[f"dice_{name}"] = result["per_image"][f"dice_{key}"]
    return {**summary, "per_class": per_class, "images": result["images"], "counted": result["counted"], "per_image": per_image}


# ----------------------------------------------------------------------------------------------
# The source: a run folder, or a .keras file with its data
# ----------------------------------------------------------------------------------------------
Source = collections.namedtuple("Source", "model run arrays meta")
Source.__doc__ = """What `export_run` needs: the float model, its `runs.Run` (settings, task), the
split arrays `{"train"|"val"|"test": (uint8 images, uint8 label masks (N, H, W, 1))}` and
`meta` (`{"run", "model_path", "data"}`)."""


def load_source(source, data=None, settings=None):
    """A `Source` for a run folder of `training/fit.py`, or a `.keras` file with `data`.

    A run folder is read with `runs.Run` (settings, task, `splits.json`); `data` overrides its
    dataset folder (the same data on another machine). A `.keras` file gets `runs.file_run`: its
    task read off the output channels (class names from `classes.json` beside the data), split
    80/10/10 with seed 42 as training does by default.

    Raises:
        ExportError: one line naming the missing or inconsistent file, folder or flag.
    """
    source = os.fspath(source)
    is_file = not os.path.isdir(source)
    if is_file and source.endswith(".keras") and os.path.isfile(source) and data is None:
        raise ExportError(f"{source} is a model file: pass --data DATASET_FOLDER (with images/ and masks/) to calibrate and evaluate it.")
    if data is not None and not os.path.isdir(data):
        raise ExportError(f"--data {os.fspath(data)}: no such dataset folder (expected images/ and masks/ inside).")
    try:
        model, run = open_source(source, data=None if data is None else os.fspath(data))
        model_path = run.file("best.keras") if run is not None else source
        if run is None:
            run = file_run(model, os.fspath(data), **(settings or {}))
    except (FileNotFoundError, RunError) as err:
        raise ExportError(_first_line(err)) from None
    except ValueError as err:  # class names / task settings that do not fit the model or data
        raise ExportError(f"{source}: {_first_line(err)}") from None
    config, task = run.config, run.task
    height, width, channels = (tuple(model.inputs[0].shape[1:]) + (None,) * 3)[:3]
    size = config.image_size or height
    if height is not None and size != height:
        raise ExportError(f"{model_path} takes {height}x{width} images but {source}'s config.json says image_size={size}.")
    if size is None:
        raise ExportError(f"{model_path} has a free input size and no image_size is known; convert a run folder.")
    config.image_size = int(size)
    if channels is not None:
        config.channels = int(channels)  # the model says what it takes; loading converts the images
    out_channels = int(model.outputs[0].shape[-1])
    if out_channels != task.output_channels:
        raise ExportError(
            f"{model_path} outputs {out_channels} channel(s) but the run's task is {task.name} with classes "
            f"{', '.join(task.class_names)} ({task.output_channels} output channel(s)): check config.json's num_classes/class_names."
        )
    if not config.data or not os.path.isdir(config.data):
        raise ExportError(f"dataset folder {config.data!r} of {source} not found: pass --data DATASET_FOLDER.")
    try:
        arrays = run.arrays()
    except RunError as err:
        raise ExportError(_first_line(err)) from None
    if len(arrays["test"][0]) == 0 or len(arrays["train"][0]) == 0:
        raise ExportError(f"{source}: the train and test splits must not be empty (splits.json or --data).")
    meta = {"run": None if run.path is None else os.path.abspath(run.path), "model_path": os.path.abspath(model_path),
            "data": os.path.abspath(config.data)}
    return Source(model, run, arrays, meta)


# ----------------------------------------------------------------------------------------------
# The I/O contract of a file
# ----------------------------------------------------------------------------------------------
def _setting(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _output_contract(out, task):
    """How to read the output tensor: meaning and decoding from `task.contract()`, the
    dequantization and the mask rule in the output's own units."""
    wording = task.contract()
    k = task.output_channels
    quantized = out["dtype"] in ("int8", "uint8")
    s, z = out.get("scale"), out.get("zero_point")
    if _is_classification(task):
        section = {"meaning": wording["output_meaning"], "decoding": wording["decoding"], "activation": wording["activation"],
                   "classes": wording["classes"], "layout": f"(1, {k}), batch 1; the {k} logits in the order of `classes`"}
        if quantized:
            section["to_float"] = f"logit = (q - ({z})) * {s:.9g}, one scale and zero point for all {k} logits"
            section["class"] = ("class = arg-max of the logits; on this quantized output the arg-max of q itself is the same, "
                                "because (q - zero point) * scale with one positive scale is increasing (ties go to the lowest class index)")
        else:
            section["to_float"] = "the float32 output is the logits"
            section["class"] = "class = arg-max of the logits"
        section["probability"] = "softmax over the logits"
        return section
    section = {
        "meaning": f"{wording['output_meaning']}, at the input resolution",
        "decoding": wording["decoding"],
        "activation": wording["activation"],
    }
    if k == 1:
        if quantized:
            section["to_float"] = f"logit = (q - ({z})) * {s:.9g}"
            section["mask"] = f"foreground where logit > 0, i.e. where q > {z} (the output zero point); equivalent to sigmoid(logit) > 0.5"
        else:
            section["to_float"] = "the float32 output is the logit"
            section["mask"] = "foreground where logit > 0, equivalent to sigmoid(logit) > 0.5"
        section["probability"] = "sigmoid(logit); for another probability threshold t use logit > ln(t / (1 - t))"
        return section
    section["classes"] = wording["classes"]
    section["layout"] = f"NHWC, batch 1; the last axis holds the {k} classes in the order of `classes`"
    if quantized:
        section["to_float"] = f"logit = (q - ({z})) * {s:.9g}, one scale and zero point for all {k} channels"
        section["mask"] = (
            "class = arg-max over the last axis; on this quantized output the arg-max of q itself is the same, "
            "because (q - zero point) * scale with one positive scale is increasing (ties go to the lowest class index)"
        )
    else:
        section["to_float"] = "the float32 output is the logits"
        section["mask"] = "class = arg-max over the last axis of the logits"
    section["probability"] = "softmax over the last axis of the logits"
    return section


def io_contract(path, model_name, kind, config, meta, task=None):
    """The I/O contract of a `.tflite` file: what to feed it and how to read its output.

    Returns a JSON-able dict: the task and its classes; input size, channels, dtype, scale /
    zero point and the mapping from camera pixels (0..255) to the input tensor; output shape
    `(1, H, W, K)` with its meaning and decoding (`task.contract()`: threshold 0 on the logit
    for binary, arg-max over the last axis for K classes), in the output's own units; model
    name and training data.
    """
    details = io_details(path)
    inp, out = details["input"], details["output"]
    task = task or _task_of_output(out["shape"][-1], len(out["shape"]))
    _, height, width, channels = inp["shape"]
    grey_model = _setting(config, "channels") == 1 and channels == 3
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
    recipe = Intensity.from_dict(_setting(config, "intensity"))
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
        "output": {**out, **_output_contract(out, task)},
        "metadata": _metadata_summary(inp, task, _setting(config, "intensity")),
        "trained_on": {
            "data": meta.get("data"),
            "run": meta.get("run"),
            **{k: _setting(config, k) for k in ("image_size", "channels", "masks_suffix", "mask_threshold")},
        },
    }


def _metadata_summary(inp, task, intensity=None):
    """What the TFLite metadata inside the file says (`keras_litenext.export.metadata`), for the contract."""
    from keras_litenext.export.metadata import LABELS_FILE, input_normalization

    mean, std = input_normalization(inp["dtype"], intensity)
    section = {"labels_file": LABELS_FILE, "normalization": {"mean": mean, "std": std}, "color_space": "RGB",
               "reader": "MediaPipe Tasks: " + ("ImageClassifier" if _is_classification(task) else "ImageSegmenter")}
    if not _is_classification(task):
        section["activation"] = "SIGMOID" if task.output_channels == 1 else "SOFTMAX"
    return section


def _description(name, kind, task, config, meta, file_test, float_test):
    """The metadata's description: model, file kind, task and classes, training data, metrics."""
    classes = ", ".join(task.class_names)
    data = os.path.basename(str(meta.get("data") or "").rstrip("/\\")) or "unknown data"
    size = _setting(config, "image_size")
    if _is_classification(task):
        metrics = (f"test accuracy {_fmt(file_test.get('accuracy'))}, macro AUC {_fmt(file_test.get('auc'))} "
                   f"(float Keras model: {_fmt(float_test.get('accuracy'))}, {_fmt(float_test.get('auc'))})")
        what = f"image classification ({classes}); output: {task.num_classes} logits, arg-max = class"
    else:
        metrics = (f"test Dice {_fmt(_mean(file_test, 'dice'))}, IoU {_fmt(_mean(file_test, 'iou'))} "
                   f"(float Keras model: Dice {_fmt(_mean(float_test, 'dice'))})")
        what = (f"{task.name} segmentation ({classes}); output: "
                + ("one logit per pixel, sigmoid" if task.output_channels == 1 else f"{task.output_channels} logits per pixel, softmax"))
    recipe = Intensity.from_dict(_setting(config, "intensity"))
    mapping = "" if recipe.kind == "uint8" else f" Input: the intensity recipe {recipe.formula()}."
    return (f"{name} ({FILE_KINDS.get(kind, kind)}): {what}. Trained on {data} at {size}x{size} px.{mapping} "
            f"This file on the test split (LiteRT): {metrics}. Made with keras-litenext.")


def _file_input(images, path):
    """Images as the file takes them: grey repeated to RGB for a grey model's RGB file."""
    channels = io_details(path)["input"]["shape"][-1]
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 and channels == 3 else images


# ----------------------------------------------------------------------------------------------
# Report and quality gate
# ----------------------------------------------------------------------------------------------
def _file_report(path, kind, images, masks, task, threads):
    info = inspect_tflite(path)
    result = evaluate_tflite(path, to_float(images), masks, task=task, num_threads=threads, xnnpack=True)
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
        "test": _metrics_summary(result, task),
    }


def _number(value):
    """A finite float, or None (NaN in memory, null in report.json: a class absent from the split)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _class_dice(test, name):
    entry = (test.get("per_class") or {}).get(name) or {}
    return _number((entry.get("dice") or {}).get("mean"))


def dice_drops(float_test, file_test):
    """`(mean drop, {class: drop})` in Dice points (x 100; positive = the file is worse); None
    where a value is undefined (no test image holds the class)."""
    f, q = _number(float_test["dice"]["mean"]), _number(file_test["dice"]["mean"])
    mean = None if f is None or q is None else 100.0 * (f - q)
    classes = {}
    for name in float_test.get("per_class") or {}:
        fc, qc = _class_dice(float_test, name), _class_dice(file_test, name)
        classes[name] = None if fc is None or qc is None else 100.0 * (fc - qc)
    return mean, classes


def quality_gate(report, max_dice_drop=0.5, max_class_drop=1.0):
    """`(passed, message)`: is the int8 file's test Dice (mean over the foreground classes)
    within `max_dice_drop` points (Dice x 100) of the float Keras model's, and every foreground
    class's within `max_class_drop`? A mean can hide one class collapsing, hence the second
    clause. For a binary task the one class's drop is the mean drop."""
    float_test = report["keras_float"]["test"]
    int8 = next(f for f in report["files"] if f["kind"] == "int8")["test"]
    drop, class_drops = dice_drops(float_test, int8)
    if drop is None:
        return False, "int8 or float test Dice is undefined (no test image with a foreground class was counted)"
    mean_ok = drop <= max_dice_drop
    message = (
        f"int8 test Dice {100 * int8['dice']['mean']:.2f} vs float {100 * float_test['dice']['mean']:.2f}: "
        f"{'drop' if drop >= 0 else 'gain'} of {abs(drop):.2f} points "
        f"({'within' if mean_ok else 'more than'} the allowed {max_dice_drop:g})"
    )
    counted = {n: d for n, d in class_drops.items() if d is not None}
    failed = {n: d for n, d in counted.items() if d > max_class_drop}
    if failed and (len(class_drops) > 1 or mean_ok):  # binary: the one class is the mean, said once
        message += "; " + "; ".join(
            f"class {n!r}: int8 test Dice {100 * _class_dice(int8, n):.2f} vs float {100 * _class_dice(float_test, n):.2f}, "
            f"a drop of {d:.2f} points (more than the allowed {max_class_drop:g} per class)"
            for n, d in sorted(failed.items(), key=lambda item: -item[1])
        )
    elif len(class_drops) > 1 and counted:
        worst = max(counted, key=counted.get)
        d = counted[worst]
        message += (f"; every class within the allowed {max_class_drop:g} per class "
                    f"(worst {worst!r}: {'drop' if d >= 0 else 'gain'} of {abs(d):.2f} points)")
    absent = [n for n, d in class_drops.items() if d is None]
    if absent and len(class_drops) > 1:
        message += f"; not in the test split, so not gated: {', '.join(repr(n) for n in absent)}"
    return bool(mean_ok and not failed), message


def classification_gate(report, max_accuracy_drop=1.0, max_auc_drop=0.01):
    """`(passed, message)` of a classification export: is the int8 file's test accuracy within
    `max_accuracy_drop` points (accuracy x 100) of the float Keras model's, and its macro AUC
    within `max_auc_drop` (AUC units, 0..1)? Both: accuracy alone can hold while the ranking
    (AUC, i.e. any other operating threshold) degrades, and AUC alone hides a shifted arg-max."""
    float_test = report["keras_float"]["test"]
    int8 = next(f for f in report["files"] if f["kind"] == "int8")["test"]
    acc_drop, auc_drop = classification_drops(float_test, int8)
    if acc_drop is None:
        return False, "int8 or float test accuracy is undefined (an empty test split?)"
    acc_ok = acc_drop <= max_accuracy_drop
    message = (f"int8 test accuracy {100 * int8['accuracy']:.2f} vs float {100 * float_test['accuracy']:.2f}: "
               f"{'drop' if acc_drop >= 0 else 'gain'} of {abs(acc_drop):.2f} points "
               f"({'within' if acc_ok else 'more than'} the allowed {max_accuracy_drop:g})")
    if auc_drop is None:
        return acc_ok, message + "; AUC undefined (a class absent from the test split), not gated"
    auc_ok = auc_drop <= max_auc_drop
    message += (f"; int8 test AUC {int8['auc']:.4f} vs float {float_test['auc']:.4f}: "
                f"{'drop' if auc_drop >= 0 else 'gain'} of {abs(auc_drop):.4f} "
                f"({'within' if auc_ok else 'more than'} the allowed {max_auc_drop:g})")
    return bool(acc_ok and auc_ok), message


def classification_drops(float_test, file_test):
    """`(accuracy drop in points, AUC drop in AUC units)`; positive = the file is worse; None
    where a value is undefined."""
    fa, qa = _number(float_test.get("accuracy")), _number(file_test.get("accuracy"))
    fu, qu = _number(float_test.get("auc")), _number(file_test.get("auc"))
    return (None if fa is None or qa is None else 100.0 * (fa - qa)), (None if fu is None or qu is None else fu - qu)


def _headline(task, test):
    if _is_classification(task):
        return f"test accuracy {test['accuracy']:.4f}, AUC {_fmt(test['auc'])}"
    return f"test Dice {test['dice']['mean']:.4f}"


def export_run(source, output=None, name=None, io="uint8_float", qat_epochs=3, qat_lr=1e-5, data=None, num_calibration=200,
               max_dice_drop=0.5, max_class_drop=1.0, threads=2, verbose=1, log=print, kinds=None,
               max_accuracy_drop=1.0, max_auc_drop=0.01, metadata=True, settings=None, int8_mode="cpu"):
    """Convert a trained model to every deployable TFLite file, evaluate them and write a report.

    Writes to `output` (default `<run>/tflite`):

    - `<name>_int8.tflite`: int8 from the QAT model (`qat_epochs` of fine-tuning with the run's
      task loss, metrics and data pipeline, from the float weights, after calibration);
    - `<name>_int8_ptq.tflite`: int8, post-training quantized;
    - `<name>_fp16.tflite`, `<name>_fp32.tflite`;
    - `<file>.json` beside each: its I/O contract (`io_contract`: classes, pixel formula,
      output decoding);
    - inside every `.tflite`: TFLite metadata for MediaPipe Tasks (`keras_litenext.export.metadata`:
      normalisation, RGB input, the class names as `labels.txt`, the segmenter activation, a
      description with the model, training data and this file's test metrics), and the class
      names beside them as `<name>_labels.txt`. A grey model's files take RGB and average it
      inside the graph (`tflite.phone_model`);
    - `<name>_qat.keras`: the QAT model (ranges included), which `convert` turns into the int8
      file again;
    - `report.json` and `report.md`: per file size, ops with dtypes, float-op count, XNNPACK
      partitions, and test-split Dice/IoU/HD95 (mean over foreground classes and per class)
      measured by running the file with LiteRT (XNNPACK, `threads` threads), next to the float
      Keras model's; the quality gate.

    Args:
        source: run folder, or `.keras` file with `data`.
        output: output folder.
        name: file name prefix; defaults to the model's name.
        io: int8 files' input/output type: "uint8_float" (default: uint8 camera pixels in,
            float32 out, what MediaPipe reads), "int8", "uint8" or "float".
        qat_epochs: QAT fine-tuning epochs (0: calibration only).
        qat_lr: QAT peak learning rate.
        data: dataset folder (required with a `.keras` file; overrides a run's).
        num_calibration: training images for int8 calibration.
        max_dice_drop: the quality gate on the mean foreground Dice, in Dice points.
        max_class_drop: the quality gate on each foreground class's Dice, in Dice points.
        max_accuracy_drop, max_auc_drop: the gate of a classification run (`classification_gate`):
            accuracy points and macro AUC (0..1) the int8 file may lose; the Dice limits are then unused.
        threads: LiteRT threads for the evaluation.
        verbose: Keras verbosity for the fine-tuning.
        log: callable for progress lines.
        kinds: the files to write, from `FILE_KINDS` (default all); "int8" is required, the
            gate judges it. Leaving out the comparison files saves their conversion.
        metadata: write TFLite metadata into the files (needs MediaPipe's metadata writers;
            `ExportError` naming the install line when they are missing). False leaves it out.
        settings: run settings for a bare `.keras` file (`task`, `class_names`, ...), as
            `runs.file_run` takes them.
        int8_mode: `"cpu"` (default: the int8 ops XNNPACK lacks as float islands inside
            XNNPACK, the fastest file on a CPU) or `"strict"` (every op int8, for NPUs and DSPs);
            see `keras_litenext.litert.convert`.

    Returns:
        the report dict (also in report.json), with `"gate": {"passed", "message", ...}`.
    """
    kinds = list(FILE_KINDS) if kinds is None else [str(k).strip() for k in kinds]
    unknown = [k for k in kinds if k not in FILE_KINDS]
    if unknown or "int8" not in kinds:
        raise ExportError(f"--kinds must include int8 and come from {', '.join(FILE_KINDS)}; got {', '.join(kinds) or 'none'}.")
    if io not in IO_TYPES:
        raise ExportError(f"io must be one of {IO_TYPES}, got {io!r}.")
    if qat_epochs < 0:
        raise ExportError(f"qat_epochs must be >= 0, got {qat_epochs}.")
    if metadata:
        from keras_litenext.export.metadata import MEDIAPIPE_HINT, mediapipe_available

        if not mediapipe_available():
            raise ExportError(f"TFLite metadata for MediaPipe needs MediaPipe's metadata writers: {MEDIAPIPE_HINT}; "
                              "or export without metadata (--no-metadata).")
    model, run, arrays, meta = load_source(source, data=data, settings=settings)
    config, task = run.config, run.task
    name = name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"name {name!r} must be letters, digits, '_', '-' or '.'.")
    output = os.fspath(output) if output is not None else os.path.join(meta["run"] or os.path.dirname(meta["model_path"]), "tflite")
    os.makedirs(output, exist_ok=True)
    train_images = arrays["train"][0]
    test_images, test_masks = arrays["test"]
    sizes = {k: int(len(v[0])) for k, v in arrays.items()}
    classes = f", classes {', '.join(task.class_names)}" if task.output_channels > 1 else ""
    log(f"Model {name} ({model.count_params():,} parameters), {task.name} task{classes}, data {meta['data']} at "
        f"{config.image_size}px, train {sizes['train']} / val {sizes['val']} / test {sizes['test']} images")

    started = time.time()
    float_result = score_logits(task, test_masks, _predict(model, test_images))
    log(f"float Keras test {task.summary_line(float_result)}")

    files = []
    float_test_summary = _metrics_summary(float_result, task)
    if metadata:
        labels_path = os.path.join(output, f"{name}_labels.txt")
        with atomic_path(labels_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(task.class_names) + "\n")

    def emit(kind, build):
        path = os.path.join(output, f"{name}_{kind}.tflite")
        t0 = time.time()
        data_bytes = build()
        write_bytes(path, data_bytes)
        contract = io_contract(path, name, kind, config, meta, task)
        if not metadata:
            contract.pop("metadata")
        entry = _file_report(path, kind, test_images, test_masks, task, threads)
        if kind.startswith("int8"):  # what the file is: islands, or strict (asked for, or XNNPACK's fallback)
            entry["int8_mode"] = "cpu" if entry["float_op_count"] else "strict"
        if metadata:  # after scoring, so the description names this file's own test metrics
            from keras_litenext.export.metadata import add_metadata

            data_bytes, _ = add_metadata(data_bytes, task.class_names, getattr(task, "kind", "segmentation"), task.output_channels,
                                         name=f"{name}_{kind}", input_dtype=entry["input"]["dtype"],
                                         description=_description(name, kind, task, config, meta, entry["test"], float_test_summary),
                                         intensity=_setting(config, "intensity"))
            write_bytes(path, data_bytes)
            entry["size_bytes"] = len(data_bytes)
        write_json(os.path.join(output, f"{name}_{kind}.json"), contract)
        entry["convert_seconds"] = round(time.time() - t0, 1)
        files.append(entry)
        log(f"{os.path.basename(path)}: {len(data_bytes) / 1024:.0f} KiB, {entry['op_count']} ops, {entry['float_op_count']} float ops, "
            f"{entry['xnnpack']['partitions']} XNNPACK partitions, {_headline(task, entry['test'])}")

    if "fp32" in kinds:
        emit("fp32", lambda: convert_phone(model, "fp32"))
    if "fp16" in kinds:
        emit("fp16", lambda: convert_phone(model, "fp16"))
    if "int8_ptq" in kinds:
        emit("int8_ptq", lambda: convert_phone(model, "int8", representative_data=train_images, io=io, num_calibration=num_calibration,
                                               int8_mode=int8_mode))

    log(f"QAT: calibrating, then fine-tuning {qat_epochs} epoch(s) at lr {qat_lr:g}, keeping the best {task.monitor}")
    from keras_litenext.export.finetune import finetune_run

    qat = finetune_run(model, config, arrays, epochs=qat_epochs, lr=qat_lr, verbose=verbose, calibration_steps=max(1, num_calibration // 8))
    qat_result = score_logits(task, test_masks, _predict(qat, test_images))
    with atomic_path(os.path.join(output, f"{name}_qat.keras")) as tmp:
        qat.save(tmp)
    emit("int8", lambda: convert_phone(qat, "int8", representative_data=train_images, io=io, num_calibration=num_calibration,
                                       int8_mode=int8_mode))

    float_test = float_test_summary
    report = {
        "model": name,
        "task": task.name,
        "class_names": list(task.class_names),
        "source": meta,
        "config": {k: _setting(config, k) for k in ("model", "data", "image_size", "channels", "masks_suffix", "mask_threshold", "loss", "batch_size", "intensity")},
        "splits": sizes,
        "io": io,
        "int8_mode": int8_mode,
        "metadata": bool(metadata),
        "evaluation": (f"test split ({sizes['test']} images), accuracy, balanced accuracy and macro one-vs-rest ROC AUC"
                       if _is_classification(task) else
                       f"test split ({sizes['test']} images), per-image Dice/IoU/HD95"
                       + (" (mean over the foreground classes present, and per class)" if task.output_channels > 1 else ""))
        + f"; .tflite files run with ai-edge-litert, XNNPACK, {threads} threads",
        "keras_float": {"params": int(model.count_params()), "test": float_test},
        "qat": {
            "epochs": int(qat_epochs),
            "lr": qat_lr,
            "monitor": task.monitor,
            "start_score": getattr(qat, "qat_start_score", None),
            "best_epoch": getattr(qat, "qat_best_epoch", None),
            "history": getattr(qat, "qat_history", None),
            "rsqrt_quantile_val_dice": {str(k): v for k, v in (getattr(qat, "rsqrt_quantile_scores", None) or {}).items()},
            "keras_test": _metrics_summary(qat_result, task),
        },
        "files": sorted(files, key=lambda f: list(FILE_KINDS).index(f["kind"])),
        "seconds": round(time.time() - started, 1),
    }
    if _is_classification(task):
        for entry in report["files"]:
            acc_drop, auc_drop = classification_drops(float_test, entry["test"])
            entry["accuracy_drop_points"] = None if acc_drop is None else round(acc_drop, 3)
            entry["auc_drop"] = None if auc_drop is None else round(auc_drop, 5)
        passed, message = classification_gate(report, max_accuracy_drop, max_auc_drop)
        int8 = next(f for f in report["files"] if f["kind"] == "int8")
        report["gate"] = {
            "max_accuracy_drop_points": max_accuracy_drop,
            "max_auc_drop": max_auc_drop,
            "accuracy_drop_points": int8["accuracy_drop_points"],
            "auc_drop": int8["auc_drop"],
            "passed": passed,
            "message": message,
        }
        return _write_report(report, output)
    for entry in report["files"]:
        drop, class_drops = dice_drops(float_test, entry["test"])
        entry["dice_drop_points"] = None if drop is None else round(drop, 3)
        entry["class_dice_drop_points"] = {n: None if d is None else round(d, 3) for n, d in class_drops.items()}
    passed, message = quality_gate(report, max_dice_drop, max_class_drop)
    int8 = next(f for f in report["files"] if f["kind"] == "int8")
    report["gate"] = {
        "max_dice_drop_points": max_dice_drop,
        "max_class_drop_points": max_class_drop,
        "dice_drop_points": int8["dice_drop_points"],
        "class_dice_drop_points": int8["class_dice_drop_points"],
        "passed": passed,
        "message": message,
    }
    return _write_report(report, output)


def _write_report(report, output):
    report["output"] = os.path.abspath(output)
    write_json(os.path.join(output, "report.json"), report)
    with atomic_path(os.path.join(output, "report.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_markdown(report))
    return report


def _signature(op):
    return f"{','.join(op['inputs'])} -> {','.join(op['outputs'])}"


def _fmt(value, spec=".4f"):
    return "-" if value is None or not math.isfinite(float(value)) else format(float(value), spec)


def _mean(test, key):
    return (test.get(key) or {}).get("mean")


def _classification_markdown(report):
    f = report["keras_float"]["test"]
    q = report["qat"]["keras_test"]
    names = list(report["class_names"])
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); task classification "
        f"({', '.join(names)}); splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test accuracy | balanced accuracy | macro AUC | "
        "accuracy vs float (points) | AUC vs float |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label, test, size="-", ops="-", float_ops="-", partitions="-"):
        acc, auc = classification_drops(f, test) if test is not f else (None, None)
        return (f"| {label} | {size} | {ops} | {float_ops} | {partitions} | {_fmt(test.get('accuracy'))} | "
                f"{_fmt(test.get('balanced_accuracy'))} | {_fmt(test.get('auc'))} | "
                f"{'-' if acc is None else _fmt(0.0 - acc, '+.2f')} | {'-' if auc is None else _fmt(0.0 - auc, '+.4f')} |")

    lines.append(row("Keras float32", f))
    lines.append(row("Keras QAT (simulated int8)", q))
    for e in report["files"]:
        lines.append(row(f"`{e['file']}` ({e['description']})", e["test"], f"{e['size_bytes'] / 1024:.0f} KiB", e["op_count"],
                         e["float_op_count"], e["xnnpack"]["partitions"]))
    lines += ["", "Per-class test recall / AUC:", "", "| model | " + " | ".join(f"{n} recall | {n} AUC" for n in names) + " |",
              "|---|" + "---|---|" * len(names)]
    for label, test in [("Keras float32", f), ("Keras QAT (simulated int8)", q)] + [(f"`{e['file']}`", e["test"]) for e in report["files"]]:
        cells = [f"{_fmt((test.get('recall_per_class') or {}).get(n))} | {_fmt((test.get('auc_per_class') or {}).get(n))}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    int8 = next(e for e in report["files"] if e["kind"] == "int8")
    lines += ["", f"Confusion matrix of `{int8['file']}` on the test split (rows true, columns predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n, counts in zip(names, int8["test"]["confusion_matrix"]):
        lines.append(f"| {n} | " + " | ".join(str(c) for c in counts) + " |")
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_accuracy_drop_points']:g} points of accuracy, {gate['max_auc_drop']:g} of macro AUC): "
        f"**{'PASSED' if gate['passed'] else 'FAILED'}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        f"of the best {report['qat'].get('monitor', 'val_auc')} (0 = the calibrated model, before fine-tuning).",
        "",
    ]
    return "\n".join(lines + _files_markdown(report))


def report_markdown(report):
    """`report.md` of `export_run`: summary table, per-class Dice (K > 1), quality gate, then
    each file's ops with dtypes (classification: accuracy / AUC, per-class recall and AUC, the
    int8 file's confusion matrix and its gate)."""
    if report.get("task") == "classification":
        return _classification_markdown(report)
    f = report["keras_float"]["test"]
    q = report["qat"]["keras_test"]
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); task {report.get('task', 'binary')}"
        + (f" ({', '.join(report['class_names'])})" if len(report.get("class_names") or ()) > 2 else "")
        + f"; splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test Dice | test IoU | test HD95 (px) | Dice vs float (points) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Keras float32 | - | - | - | - | {_fmt(_mean(f, 'dice'))} | {_fmt(_mean(f, 'iou'))} | {_fmt(_mean(f, 'hd95'), '.2f')} | - |",
    ]
    q_drop, _ = dice_drops(f, q)
    lines.append(f"| Keras QAT (simulated int8) | - | - | - | - | {_fmt(_mean(q, 'dice'))} | {_fmt(_mean(q, 'iou'))} | "
                 f"{_fmt(_mean(q, 'hd95'), '.2f')} | {_fmt(None if q_drop is None else -q_drop, '+.2f')} |")
    for e in report["files"]:
        t, drop = e["test"], e.get("dice_drop_points")
        lines.append(
            f"| `{e['file']}` ({e['description']}) | {e['size_bytes'] / 1024:.0f} KiB | {e['op_count']} | {e['float_op_count']} | "
            f"{e['xnnpack']['partitions']} | {_fmt(_mean(t, 'dice'))} | {_fmt(_mean(t, 'iou'))} | {_fmt(_mean(t, 'hd95'), '.2f')} | "
            f"{_fmt(None if drop is None else -drop, '+.2f')} |"
        )
    names = list(f.get("per_class") or {})
    if len(names) > 1:
        lines += ["", "Per-class test Dice (points vs float in brackets; HD95 in pixels):", "",
                  "| model | " + " | ".join(f"{n} Dice | {n} HD95" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]

        def row(label, test):
            cells = []
            for n in names:
                c, fc = test["per_class"][n], f["per_class"][n]
                dice, ref = _mean(c, "dice"), _mean(fc, "dice")
                diff = "" if test is f or dice is None or ref is None else f" ({100 * (dice - ref):+.2f})"
                cells.append(f"{_fmt(dice)}{diff} | {_fmt(_mean(c, 'hd95'), '.2f')}")
            return f"| {label} | " + " | ".join(cells) + " |"

        lines.append(row("Keras float32", f))
        lines.append(row("Keras QAT (simulated int8)", q))
        lines += [row(f"`{e['file']}`", e["test"]) for e in report["files"]]
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_dice_drop_points']:g} points in mean Dice, "
        f"{gate.get('max_class_drop_points', gate['max_dice_drop_points']):g} per class): "
        f"**{'PASSED' if gate['passed'] else 'FAILED'}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        f"of the best {report['qat'].get('monitor', 'val_dice')} (0 = the calibrated model, before fine-tuning).",
    ]
    scores = report["qat"].get("rsqrt_quantile_val_dice") or {}
    if scores:
        finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
        chosen = max(finite, key=finite.get) if finite else None
        lines.append("Layer-norm 1/sqrt(variance) range end, simulated val Dice per candidate (None = max): "
                     + ", ".join(f"{k}: {_fmt(v)}" for k, v in scores.items()) + f"; kept {chosen}.")
    lines.append("")
    return "\n".join(lines + _files_markdown(report))


def _files_markdown(report):
    """Each file's section: I/O, XNNPACK delegation, float and run-time shape ops, op table."""
    lines = []
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
    return lines


# ----------------------------------------------------------------------------------------------
# One call
# ----------------------------------------------------------------------------------------------
Exported = collections.namedtuple("Exported", "files paths report")
Exported.__doc__ = """What `export` wrote: `files` (`{kind: .tflite path}`), `paths` (every file
written: the `.tflite` files, their contracts, labels, the QAT model, report.json/md) and the
`report` dict (also in report.json, with the quality gate)."""


def export(model_or_run, output, formats=("int8", "fp16"), data=None, task=None, class_names=None, **options):
    """Phone-ready TFLite files of a model or a run, in one call.

        import keras_litenext
        files, paths, report = keras_litenext.export(model, "out/", formats=("int8", "fp16"), data="data/nuclei")

    Every file carries the TFLite metadata MediaPipe Tasks read (`ImageSegmenter` /
    `ImageClassifier` load it as it is), its I/O contract beside it, and the report scores it
    on the test split; the int8 file takes uint8 camera pixels and gives float32 logits.

    Args:
        model_or_run: a `keras.Model`, a `.keras` file or a run folder of `training/fit.py`.
        output: the output folder.
        formats: file kinds from `FILE_KINDS` (`"int8"`, `"int8_ptq"`, `"fp16"`, `"fp32"`);
            `"int8"` is required (the quality gate judges it).
        data: dataset folder (needed for a model or a `.keras` file: calibration, QAT and the
            test split; a run folder brings its own).
        task: for a model or a `.keras` file: `"binary"`, `"multiclass"`, `"classification"`,
            or a `keras_litenext.tasks` task (default: read off the output channels, with
            `classes.json` beside the data).
        class_names: class names, class 0 first (default: from the task or the data).
        **options: `export_run`'s other arguments (`io`, `qat_epochs`, `num_calibration`,
            `max_dice_drop`, `name`, `metadata`, `verbose`, `log`, ...).

    Returns:
        `Exported(files, paths, report)`.
    """
    settings = {}
    if task is not None:
        settings["task"] = task if isinstance(task, str) else task.name
        if not isinstance(task, str):
            class_names = class_names or list(task.class_names)
    if class_names is not None:
        settings["class_names"] = [str(n) for n in class_names]
    kinds = [formats] if isinstance(formats, str) else list(formats)
    options.setdefault("log", lambda *a, **k: None)
    options.setdefault("verbose", 0)
    with tempfile.TemporaryDirectory(prefix="litenext-export-") as folder:
        source = model_or_run
        if hasattr(model_or_run, "save") and hasattr(model_or_run, "inputs"):  # a Keras model
            source = os.path.join(folder, f"{model_or_run.name}.keras")
            model_or_run.save(source)
            options.setdefault("name", model_or_run.name)
        if os.path.isdir(os.fspath(source)):
            settings = None  # a run folder brings its task and classes
        report = export_run(os.fspath(source), output=os.fspath(output), data=data, kinds=kinds, settings=settings or None, **options)
    files = {e["kind"]: os.path.join(report["output"], e["file"]) for e in report["files"]}
    written = ["report.json", "report.md", f"{report['model']}_qat.keras", f"{report['model']}_labels.txt"]
    written += [f"{report['model']}_{k}{ext}" for k in files for ext in (".tflite", ".json")]
    paths = sorted(p for p in (os.path.join(report["output"], n) for n in set(written)) if os.path.isfile(p))
    return Exported(files, paths, report)


class _CallableModule(types.ModuleType):
    """`keras_litenext.export(...)` calls `export`; the module's names stay as they are."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
