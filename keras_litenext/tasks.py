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
  (`keras_litenext.data_classification`), sorted by name. Its `kind` is `"classification"`
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

import json
import os
import re

import numpy as np

CLASSES_FILE = "classes.json"
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


class SegmentationTask(Task):
    """Common part of the per-pixel tasks. Subclasses set `name`, `activation`, `output_channels`."""

    kind = "segmentation"
    monitor = "val_dice"  # mean Dice over the foreground classes, per image
    default_loss = "mwl"
    _classes_hint = " (background included)"

    @property
    def foreground_names(self):
        return self.class_names[1:]

    # -- training -----------------------------------------------------------------------------
    def loss(self, name=None, mwl_weights=None, mwl_kernel=7, class_weights=None):
        """The named loss (default `default_loss`) for this task's output, wired from run settings."""
        from keras_litenext.losses import get_loss

        name = (name or self.default_loss).strip().lower().replace("-", "_")
        kwargs = {}
        if name == "mwl":
            if mwl_weights is not None:
                w_m, w_o, w_b = (float(w) for w in mwl_weights)
                kwargs.update(w_margin=w_m, w_object=w_o, w_background=w_b)
            kwargs["kernel_size"] = int(mwl_kernel)
        if class_weights is not None:
            if self.output_channels == 1:
                raise ValueError("class_weights apply to the multiclass task only.")
            kwargs["class_weights"] = [float(w) for w in class_weights]
        return get_loss(name, num_classes=self.output_channels, **kwargs)

    def metrics(self):
        """Streaming Keras metrics for `compile`: `dice` (monitored), `iou`, `precision`, `recall`."""
        from keras_litenext.metrics import get_metrics

        if self.output_channels == 1:
            return get_metrics()
        return get_metrics(num_classes=self.output_channels, class_names=self.class_names)

    # -- decoding predictions -----------------------------------------------------------------
    def scores(self, masks, logits, **kwargs):
        """Per-image metrics (`metrics.per_image_scores`) of label maps `masks` and logits."""
        from keras_litenext.metrics import per_image_scores

        if self.output_channels > 1:
            kwargs.setdefault("class_names", self.class_names)
        return per_image_scores(masks, logits, **kwargs)

    def summary_line(self, summary):
        """One human line of a metrics summary (`metrics.summarize` output)."""
        dice, iou = summary["dice"], summary["iou"]
        line = f"Dice {dice['mean']:.4f} ± {dice['std']:.4f}, IoU {iou['mean']:.4f}"
        if self.output_channels > 1:
            parts = [f"{n} {summary[f'dice_{_slug(n)}']['mean']:.4f}" for n in self.foreground_names if f"dice_{_slug(n)}" in summary]
            line += " (per class Dice: " + ", ".join(parts) + ")"
        return line


@register_task
class BinaryTask(SegmentationTask):
    """One logit per pixel; `sigmoid(logit) > 0.5` (i.e. `logit > 0`) is the foreground."""

    name = "binary"
    activation = "sigmoid"
    output_channels = 1

    def __init__(self, class_names=("background", "foreground"), mask_threshold=0, binary_check=True):
        super().__init__(class_names)
        if self.num_classes != 2:
            raise ValueError(f"The binary task has 2 classes (background, foreground), got {self.class_names!r}.")
        self.mask_threshold = int(mask_threshold)
        self.binary_check = bool(binary_check)

    def decode_mask(self, raw):
        """`(H, W)` uint8 {0, 1} from a stored mask: colour masks take the max over channels, then
        `value > mask_threshold`. With threshold 0 a mask with more than two values is refused
        (JPEG artefacts or an interpolated mask would silently become foreground)."""
        if raw.ndim == 3:
            raw = raw[:, :, :3].max(axis=2) if raw.shape[2] >= 3 else raw[:, :, 0]
        if self.binary_check and not self.mask_threshold:
            if raw.dtype == np.uint8:
                n_values = int(np.count_nonzero(np.bincount(raw.ravel(), minlength=256)))
            else:
                n_values = len(np.unique(raw))
            if n_values > 2:
                raise MaskError(
                    f"has {n_values} distinct values, not a binary mask (JPEG artefacts or a resized "
                    "mask?); pass mask_threshold=127 (--mask-threshold 127) to binarise it, or "
                    "--num-classes K for a class-index mask"
                )
        return (raw > self.mask_threshold).astype(np.uint8)

    def probabilities(self, logits):
        """Foreground probability `(..., 1)` of logits `(..., 1)`."""
        logits = np.asarray(logits, np.float32)
        return 1.0 / (1.0 + np.exp(-logits))

    def labels(self, logits):
        """`(...)` uint8 {0, 1} label map of logits `(..., 1)`."""
        return (np.asarray(logits)[..., 0] > 0).astype(np.uint8)

    def labels_from_probabilities(self, probabilities):
        return (np.asarray(probabilities)[..., 0] > 0.5).astype(np.uint8)

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": "one logit per pixel (1 channel); sigmoid(logit) is the foreground probability",
            "decoding": "foreground where logit > 0 (probability > 0.5)",
            "activation": "none (logits); apply sigmoid",
        }


@register_task
class MulticlassTask(SegmentationTask):
    """K logits per pixel (class 0 the background); softmax, the arg-max is the class.

    Masks are class-index maps (one channel, 8 or 16 bit, values `0..K-1`); a colour mask needs
    a `palette` (`{(r, g, b): class_index}`). A value `>= K` or a colour not in the palette is
    an error naming the values found, never a silent remap.
    """

    name = "multiclass"
    activation = "softmax"
    # Softmax CE + multi-class soft Dice: best validation Dice on bbbc039_3class (0.7984 vs
    # 0.7890 for the per-class Marginal Weight Loss, 256², 20 epochs; README, Results).
    default_loss = "ce_dice"

    def __init__(self, class_names, palette=None):
        super().__init__(class_names)
        self.palette = None
        if palette:
            self.palette = {tuple(int(c) for c in colour): int(index) for colour, index in dict(palette).items()}
            bad = sorted({i for i in self.palette.values() if not 0 <= i < self.num_classes})
            if bad:
                raise ValueError(f"palette maps colours to class(es) {bad}, outside 0..{self.num_classes - 1}.")

    @property
    def output_channels(self):
        return self.num_classes

    def to_dict(self):
        config = super().to_dict()
        if self.palette:
            config["palette"] = {"{},{},{}".format(*c): i for c, i in self.palette.items()}
        return config

    def decode_mask(self, raw):
        """`(H, W)` uint8 class indices from a stored mask (index map, or colour + palette)."""
        if self.palette:
            if raw.ndim != 3 or raw.shape[2] < 3:
                return self._check_indices(raw if raw.ndim == 2 else raw[:, :, 0])
            rgb = raw[:, :, 2::-1][:, :, :3].astype(np.int64)  # OpenCV reads BGR(A)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            table = {(r << 16) | (g << 8) | b: i for (r, g, b), i in self.palette.items()}
            found = np.unique(code)
            unknown = [c for c in found.tolist() if c not in table]
            if unknown:
                colours = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in unknown[:8])
                raise MaskError(f"has colour(s) not in the palette: {colours}" + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
            out = np.zeros(code.shape, np.uint8)
            for c in found.tolist():
                out[code == c] = table[c]
            return out
        if raw.ndim == 3:
            channels = raw[:, :, :3] if raw.shape[2] >= 3 else raw[:, :, :1]
            if channels.shape[2] > 1 and not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
                raise MaskError("is a colour image, not a class-index map; pass a palette (--palette colours.json) that maps each colour to a class")
            raw = channels[..., 0]
        return self._check_indices(raw)

    def _check_indices(self, raw):
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
                raise MaskError("has non-integer values; a class-index mask stores whole class numbers")
        values = np.unique(raw)
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.size:
            raise MaskError(
                f"has value(s) {_values_text(bad)} outside the {self.num_classes} classes 0..{self.num_classes - 1} "
                f"(values found: {_values_text(values)}); set --num-classes or classes.json"
            )
        return raw.astype(np.uint8)

    def probabilities(self, logits):
        """Softmax over the last axis."""
        z = np.asarray(logits, np.float32)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def labels(self, logits):
        """`(...)` uint8 arg-max of logits `(..., K)`."""
        return np.argmax(np.asarray(logits), axis=-1).astype(np.uint8)

    labels_from_probabilities = labels

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": f"{self.num_classes} logits per pixel, one per class, class 0 the background",
            "decoding": "class = arg-max over the last axis (softmax gives the class probabilities)",
            "activation": "none (logits); apply softmax over the last axis",
        }


@register_task
class ClassificationTask(Task):
    """Image classification: K logits per image `(batch, K)`, softmax, the arg-max is the class.

    K = 2 is served the same way (two logits, softmax), not by one sigmoid logit: the output,
    the loss and the export contract are then the same for every K.

    - Loss: softmax cross-entropy of the logits against the class index
      (`losses.ClassificationCrossEntropy`, name `"ce"`), with optional class weights and label
      smoothing.
    - Metrics while training: `accuracy` and `auc`, the streaming macro one-vs-rest ROC AUC
      (`metrics.MacroAUC`).
    - Monitored: `val_auc` (max). AUC rather than accuracy because it is threshold-free and does
      not reward predicting the majority class (on PneumoniaMNIST, 74 % of the test images are
      pneumonia: a constant answer has 0.74 accuracy but AUC 0.5), and it moves smoothly where
      accuracy moves in steps of 1 / (validation images), so `best.keras` is less the luck of
      one epoch.
    - Test split (`scores`): accuracy, balanced accuracy, macro AUC (exact, rank-based), per-class
      AUC / recall / precision, the confusion matrix.
    """

    name = "classification"
    kind = "classification"
    activation = "softmax"
    monitor = "val_auc"
    default_loss = "ce"
    LOSSES = ("ce",)

    @property
    def output_channels(self):
        """Logits per image (one per class)."""
        return self.num_classes

    @property
    def foreground_names(self):
        """Every class (there is no background)."""
        return self.class_names

    # -- training -----------------------------------------------------------------------------
    def loss(self, name=None, class_weights=None, label_smoothing=0.0, **_segmentation_settings):
        """Softmax cross-entropy (`"ce"`, the only one; `"cross_entropy"` is accepted too)."""
        from keras_litenext.losses import ClassificationCrossEntropy

        key = (name or self.default_loss).strip().lower().replace("-", "_")
        if key not in ("ce", "cross_entropy"):
            raise ValueError(f"Loss {name!r} is a segmentation loss; the classification task trains with: {', '.join(self.LOSSES)}.")
        weights = None if class_weights is None else [float(w) for w in class_weights]
        return ClassificationCrossEntropy(self.num_classes, class_weights=weights, label_smoothing=float(label_smoothing or 0.0))

    def metrics(self):
        """`accuracy` and `auc` (monitored as `val_auc`)."""
        from keras_litenext.metrics import classification_metrics

        return classification_metrics(self.num_classes)

    # -- decoding predictions -----------------------------------------------------------------
    def probabilities(self, logits):
        """Softmax over the last axis."""
        z = np.asarray(logits, np.float32)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def labels(self, logits):
        """`(N,)` int arg-max of logits `(N, K)`."""
        return np.argmax(np.asarray(logits), axis=-1).astype(np.int64)

    labels_from_probabilities = labels

    def scores(self, labels, logits, from_logits=True, **_ignored):
        """Test-split scores (`metrics.classification_scores`) of true class indices `(N,)` and
        logits `(N, K)` (probabilities with `from_logits=False`)."""
        from keras_litenext.metrics import classification_scores

        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(f"Expected classifier logits of shape (N, {self.num_classes}), got {logits.shape}.")
        probabilities = self.probabilities(logits) if from_logits else logits
        return classification_scores(np.asarray(labels).reshape(-1), probabilities, self.class_names)

    def summary_line(self, scores):
        """One human line of `scores`."""
        recall = ", ".join(f"{n} {_fmt(v)}" for n, v in scores["recall_per_class"].items())
        return (f"accuracy {_fmt(scores['accuracy'])}, balanced accuracy {_fmt(scores['balanced_accuracy'])}, "
                f"AUC {_fmt(scores['auc'])} (recall: {recall})")

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": f"{self.num_classes} logits per image, one per class, shape (1, {self.num_classes})",
            "decoding": "class = arg-max over the last axis (softmax gives the class probabilities)",
            "activation": "none (logits); apply softmax over the last axis",
        }


def _fmt(value):
    return "-" if value is None or value != value else f"{value:.4f}"


def read_classes_json(data_dir):
    """Class names from `<data_dir>/classes.json` (`{"0": "background", "1": ...}`), or None.

    Raises:
        ValueError: a malformed file, or indices that are not exactly 0..K-1.
    """
    if not data_dir:
        return None
    path = os.path.join(data_dir, CLASSES_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if isinstance(raw, list):
            raw = {str(i): n for i, n in enumerate(raw)}
        names = {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a class list like {{\"0\": \"background\", \"1\": \"lesion\"}} ({err})") from None
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise ValueError(f"{path}: class indices must be 0..K-1 with K >= 2, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def read_palette(path):
    """A palette JSON (`{"255,0,0": 1, "#00ff00": 2, ...}`) as `{(r, g, b): class}`."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        palette = {}
        for colour, index in raw.items():
            text = str(colour).strip()
            if text.startswith("#") and len(text) == 7:
                rgb = tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
            else:
                rgb = tuple(int(v) for v in text.replace(" ", "").split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"colour {colour!r} is not r,g,b or #rrggbb")
            palette[rgb] = int(index)
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a palette like {{\"255,0,0\": 1, \"#00ff00\": 2}} ({err})") from None
    return palette


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
