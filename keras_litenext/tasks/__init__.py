"""Tasks: what a model's output means, in one place.

A *task* owns everything that depends on the meaning of the output rather than on the network:
how a mask file becomes a training target, the losses and their wiring, the metrics and the
monitored one, how logits become probabilities and labels, and the wording of the export
contract. Models, data pipelines and exporters ask the task; none of them decides on its own
that an output is "one logit per pixel".

- `binary` (the default; LiteNeXt's paper setting): one logit per pixel, sigmoid, a mask is
  foreground where its stored value exceeds a threshold.
- `multiclass`: K logits per pixel (background included, class 0), softmax, arg-max decoding;
  masks are class-index maps `0..K-1` (8- or 16-bit PNG/TIFF), or colour masks mapped through a
  palette.
- `classification`: one label per image. K logits per image (K = 2 included: one logit per
  class), softmax, arg-max decoding; the classes are the sub-folders of an image-folder dataset
  (`keras_litenext.data.folders`), sorted by name. Its `kind` is `"classification"`
  (the per-pixel tasks' is `"segmentation"`): data loading, splitting, the `tf.data` pipeline
  and the run's outputs dispatch on it.

`get_task(...)` builds one from a run's settings; `TASKS` maps names to classes, so a new task
registers itself with `register_task`.

Example:
>>> task = get_task("multiclass", class_names=["background", "nucleus", "boundary"])
>>> task.output_channels, task.activation
(3, 'softmax')
>>> get_task("classification", class_names=["normal", "pneumonia"]).monitor
'val_auc'
"""

from keras_litenext.tasks.base import (
    TASKS,
    MaskError,
    Task,
    register_task,
    slug,
    softmax,
)
from keras_litenext.tasks.binary import BinaryTask
from keras_litenext.tasks.classes import CLASSES_FILE, read_classes_json, read_palette
from keras_litenext.tasks.classification import ClassificationTask
from keras_litenext.tasks.multiclass import MulticlassTask
from keras_litenext.tasks.segmentation import SegmentationTask

__all__ = ["TASKS", "BinaryTask", "ClassificationTask", "CLASSES_FILE", "MaskError", "MulticlassTask", "SegmentationTask", "Task",
           "get_task", "read_classes_json", "read_palette", "register_task", "slug", "softmax", "task_for_output", "task_from_config",
           "task_of_model"]


def get_task(name=None, num_classes=None, class_names=None, palette=None, mask_threshold=0, binary_check=True):
    """The task of a run, from its settings.

    Args:
        name: `"binary"`, `"multiclass"`, `"classification"` or None (binary for 2 classes,
            multiclass for more).
        num_classes: classes including the background (classification: the image classes);
            None: from `class_names`, else 2.
        class_names: K names, class 0 first; None: `background, class1, ...`
            (`background, foreground` for binary).
        palette: `{(r, g, b): class}` for colour masks (multiclass).
        mask_threshold, binary_check: mask decoding of the binary task.

    Raises:
        ValueError: inconsistent arguments, named.
    """
    if class_names is not None and num_classes is not None and len(class_names) != int(num_classes):
        raise ValueError(f"{len(class_names)} class names ({', '.join(class_names)}) but num_classes={num_classes}.")
    k = int(num_classes) if num_classes is not None else (len(class_names) if class_names is not None else 2)
    if name == "classification":
        if palette:
            raise ValueError("A palette maps mask colours to classes: it has no meaning for image classification.")
        if k < 2:
            raise ValueError(f"Image classification needs at least 2 classes, got {k}.")
        return ClassificationTask(class_names if class_names is not None else [f"class{i}" for i in range(k)])
    if k < 2:
        raise ValueError(f"num_classes counts the background too: it must be >= 2, got {k}.")
    if name is None:
        name = "binary" if k == 2 and not palette else "multiclass"
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; available: {', '.join(sorted(TASKS))}.")
    if class_names is None:
        class_names = ["background", "foreground"] if (name == "binary") else ["background"] + [f"class{i}" for i in range(1, k)]
    if name == "binary":
        if palette:
            raise ValueError("A palette maps colours to classes: use it with the multiclass task.")
        return BinaryTask(class_names, mask_threshold=mask_threshold, binary_check=binary_check)
    if name == "multiclass":
        return MulticlassTask(class_names, palette=palette)
    return TASKS[name](class_names)


def task_from_config(config):
    """The task of a run's settings (a `TrainConfig` or its dict); old runs are binary."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    palette = get("palette")
    if isinstance(palette, dict):
        palette = {tuple(int(v) for v in str(k).split(",")): int(i) for k, i in palette.items()}
    return get_task(
        get("task"), num_classes=get("num_classes"), class_names=get("class_names"), palette=palette,
        mask_threshold=get("mask_threshold", 0) or 0,
    )


def task_for_output(output_shape, class_names=None):
    """The task a bare model implies from its output shape (a `.keras` file without run settings):
    `(batch, K)` is image classification, `(batch, H, W, 1)` binary segmentation, `(batch, H, W, K)`
    multi-class segmentation; class names generic unless given. The one place that reads a task
    off a channel count."""
    shape = tuple(output_shape)
    channels = int(shape[-1])
    if len(shape) == 2:
        return get_task("classification", num_classes=channels, class_names=class_names)
    return get_task(num_classes=2 if channels == 1 else channels, class_names=class_names)


# -- training and run folder
def task_of_model(spec, name=None, model_name=None):
    """The task a run of a model trains: `name`, which the model must serve, else the model's only
    task (a classifier's `classification`), else None (binary or multiclass by the class count).

    Args:
        spec: the model's `ModelSpec` (None: an unknown model, nothing is checked).
        model_name: the model as the settings name it, for the error.

    Raises:
        ValueError: a task the model does not serve, naming both.
    """
    if spec is None:
        return name
    if name is None:
        return spec.tasks[0] if len(spec.tasks) == 1 else None
    if name not in spec.tasks:
        raise ValueError(f"Model {model_name or spec.name!r} serves the task(s) {', '.join(spec.tasks)}, not {name!r}.")
    return name
