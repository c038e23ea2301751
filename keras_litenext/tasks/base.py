"""The task base: class names and their checks, serialisation, and the task registry."""

import re

import numpy as np

TASKS = {}


def register_task(cls):
    """Class decorator: make a task available to `get_task` under `cls.name`."""
    TASKS[cls.name] = cls
    return cls


def _slug(name):
    return re.sub(r"[^a-z0-9_]+", "_", str(name).strip().lower()).strip("_") or "class"


class MaskError(ValueError):
    """A mask file whose values do not fit the task (the message says which values)."""


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


def _fmt(value):
    return "-" if value is None or value != value else f"{value:.4f}"


def softmax(logits):
    """Softmax over the last axis, in float32 (the one numpy softmax of the package)."""
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
