"""Scoring Keras models and `.tflite` files on a test split, through the task.

Files and Keras models are scored by the same code: logits go through `task.test_scores`
(per-image Dice/IoU/precision/recall/HD95 summarised as `metrics.evaluate_model` does, per class
too; a classifier's accuracy, balanced accuracy and AUC), and `task.report_summary` gives the
report's view of them.
"""

import math
import os

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.litert import (
    FILE_KINDS,
    inspect_tflite,
    io_details,
    run_tflite,
    xnnpack_partitions,
)

SUMMARY_METRICS = ("dice", "iou", "precision", "recall", "hd95")


def number(value):
    """A finite float, or None (NaN in memory, null in report.json: a class absent from the split)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def fmt(value, spec=".4f"):
    return "-" if value is None or not math.isfinite(float(value)) else format(float(value), spec)


def mean_of(test, key):
    return (test.get(key) or {}).get("mean")


def score_logits(task, masks, logits, threshold=0.5, empty="skip", hd95=True):
    """Per-image scores of logits through the task, summarised as `metrics.evaluate_model` does
    (`{"dice": {"mean", "std"}, ..., "per_image": {...}}`), so files and Keras models are scored
    by the same code; a classification task's scores (accuracy, balanced accuracy, AUC, ...) of
    the class indices `masks`."""
    return task.test_scores(masks, logits, threshold=threshold, empty=empty, hd95=hd95)


def evaluate_tflite(model, images, masks, task, threshold=0.5, empty="skip", hd95=True, num_threads=2, xnnpack=True,
                    progress=None):
    """Per-image Dice/IoU/precision/recall/HD95 of a `.tflite` file, as `metrics.evaluate_model`
    gives them for a Keras model, per class too for a multi-class task.

    Args:
        model: path or bytes of the file.
        images: `(N, H, W, C)` float images in [0, 1] (uint8 is divided by 255); grey images
            are repeated to RGB for the RGB file of a grey model.
        masks: `(N, H, W, 1)` label maps (binary {0, 1}, or class indices).
        task: the `keras_litenext.tasks` task that says what the output means
            (`keras_litenext.tasks.task_for_output(shape)` reads one off a bare model).
        progress: optional callable `progress(done, total)`, called per chunk of images run.
    """
    x = file_input(np.asarray(images), model)
    if progress is None:
        logits = run_tflite(model, x, num_threads=num_threads, xnnpack=xnnpack)
    else:
        from keras_litenext.litert.runtime import TFLiteRunner

        runner, chunk, parts = TFLiteRunner(model, num_threads=num_threads, xnnpack=xnnpack), 8, []
        for i in range(0, len(x), chunk):
            parts.append(runner(x[i : i + chunk]))
            progress(min(i + chunk, len(x)), len(x))
        logits = np.concatenate(parts) if parts else runner(x)
    return score_logits(task, masks, logits, threshold=threshold, empty=empty, hd95=hd95)


def predict(model, images, batch_size=8, progress=None):
    """Logits of uint8 images, called eagerly in batches: no predict function to trace (seconds
    for a QAT graph), which costs more than it saves on a test split. `progress(done, total)`
    (optional) is called after each batch."""
    import keras

    x, parts = to_float(images), []
    for i in range(0, len(x), batch_size):
        parts.append(keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False)))
        if progress is not None:
            progress(min(i + batch_size, len(x)), len(x))
    return np.concatenate(parts)


def file_input(images, path):
    """Images as the file takes them: grey repeated to RGB for a grey model's RGB file."""
    channels = io_details(path)["input"]["shape"][-1]
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 and channels == 3 else images


def file_report(path, kind, images, masks, task, threads, progress=None):
    """A file's entry of the report: size, ops, float ops, XNNPACK partitions, I/O, test scores."""
    info = inspect_tflite(path)
    result = evaluate_tflite(path, to_float(images), masks, task=task, num_threads=threads, xnnpack=True, progress=progress)
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
        "test": task.report_summary(result),
    }


# ----------------------------------------------------------------------------------------------
# A segmentation task's view (`SegmentationTask.test_scores` / `report_summary`)
# ----------------------------------------------------------------------------------------------
def summarised(scores):
    """Per-image scores (`task.scores`) summarised as `metrics.evaluate_model` does, with the
    per-image values under `"per_image"`."""
    from keras_litenext.metrics import summarize

    result = summarize(scores)
    result["per_image"] = {k: np.asarray(v, np.float64).tolist() for k, v in scores.items()}
    return result


def _mean_std(result, key):
    return {"mean": result[key]["mean"], "std": result[key]["std"]} if key in result else None


def segmentation_summary(result, class_keys):
    """The report's view of a scored model: mean/std of each metric (mean over foreground
    classes per image), `per_class` mean/std, and per-image Dice (overall and per class).
    `class_keys`: `{class name: score-key suffix}` of the foreground classes (`task.score_keys()`;
    None: the class is the whole score)."""
    summary = {k: _mean_std(result, k) for k in SUMMARY_METRICS if k in result}
    per_class, per_image = {}, {"dice": result["per_image"]["dice"]}
    for name, key in class_keys.items():
        if key is None:  # binary: the foreground's numbers are the overall ones
            per_class[name] = {k: _mean_std(result, k) for k in SUMMARY_METRICS if k in result}
        else:
            per_class[name] = {k: _mean_std(result, f"{k}_{key}") for k in SUMMARY_METRICS if f"{k}_{key}" in result}
            per_image[f"dice_{name}"] = result["per_image"][f"dice_{key}"]
    return {**summary, "per_class": per_class, "images": result["images"], "counted": result["counted"], "per_image": per_image}
