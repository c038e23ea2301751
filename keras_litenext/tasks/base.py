"""The task base: class names and their checks, serialisation, and the task registry."""

import re

import numpy as np

from keras_litenext.data.errors import MaskError  # noqa: F401  (a task's decode_mask raises it)

TASKS = {}


def register_task(cls):
    """Class decorator: make a task available to `get_task` under `cls.name`."""
    TASKS[cls.name] = cls
    return cls


def slug(name):
    """A class name as metric keys spell it (`dice_<slug>`): lowercase, runs of other characters
    than `[a-z0-9_]` become `_`; `"class"` when nothing is left."""
    return re.sub(r"[^a-z0-9_]+", "_", str(name).strip().lower()).strip("_") or "class"


_slug = slug  # the task modules' name for it


def _values_text(values, limit=12):
    values = [int(v) if float(v).is_integer() else float(v) for v in values]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


class Task:
    """What every task has: at least two distinct class names, their count, serialisation.
    Subclasses set `name`, `kind`, `activation`, `monitor`, `default_loss`."""

    name = None
    kind = None
    activation = None
    monitor_mode = "max"
    _classes_hint = ""  # added to the too-few-classes message

    def __init__(self, class_names):
        self.class_names = tuple(str(n) for n in class_names)
        if len(self.class_names) < 2:
            raise ValueError(f"A {self.kind} task needs at least 2 classes{self._classes_hint}, got {self.class_names!r}.")
        if len({_slug(n) for n in self.class_names}) != len(self.class_names):
            raise ValueError(f"Class names must differ (ignoring case and punctuation): {self.class_names!r}.")

    @property
    def num_classes(self):
        """Number of classes (for segmentation, the background included)."""
        return len(self.class_names)

    def to_dict(self):
        return {"task": self.name, "class_names": list(self.class_names)}

    def __repr__(self):
        return f"{type(self).__name__}(class_names={list(self.class_names)!r})"

    # -- training and run folder
    # What differs between tasks when a run is trained and its folder written (`keras_litenext.train`,
    # `keras_litenext.runs`): subclasses set these and define `resolve_settings`, `file_settings`,
    # `default_image_size`, `split`, `augmenter`, `dataset`, `warn_about_targets`, `data_line`,
    # `test_results`, `test_count` and `write_test_artifacts`.
    item_word = "images"  # what one example of the dataset is called in messages
    uses_masks = False  # the dataset is images/ and masks/ paired by name (else one sub-folder per class)
    uses_intensity = False  # the run stores an intensity recipe (`TrainConfig.intensity`) for its images
    loss_settings = ()  # the `TrainConfig` settings that `loss` takes, by name

    def run_loss(self, config):
        """The loss of a run's settings: `config.loss` wired with the settings `loss_settings` names."""
        return self.loss(config.loss, **{name: getattr(config, name) for name in self.loss_settings})

    # -- export
    # What differs between tasks when a run becomes phone files (`keras_litenext.export`):
    # subclasses set these and define `monitor_score`, `test_scores`, `report_summary`,
    # `file_headline`, `evaluation_text`, `output_contract`, `file_description`, `export_gate`,
    # `at_chance` (when the float model scores at chance, so the gate verifies nothing) and `report_markdown` (the heavier ones call `keras_litenext.export`'s modules).
    mediapipe_task = None  # the MediaPipe Tasks reader of the phone files
    metadata_kind = None  # the kind of output the TFLite metadata describes (`export.metadata`)
    metadata_activation = None  # the segmenter activation the metadata states (MediaPipe's name)


def _fmt(value):
    return "-" if value is None or value != value else f"{value:.4f}"


def softmax(logits):
    """Softmax over the last axis, in float32 (the one numpy softmax of the package)."""
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
