"""The per-pixel tasks: `binary` (one logit, sigmoid) and `multiclass` (K logits, softmax)."""

import numpy as np

from keras_litenext.tasks.base import softmax, MaskError, Task, _slug, _values_text, register_task


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
        return softmax(logits)

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
