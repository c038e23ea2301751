"""The `multiclass` task: K logits per pixel (class 0 the background), softmax, arg-max."""

import numpy as np

from keras_litenext.tasks.base import MaskError, _values_text, register_task, softmax
from keras_litenext.tasks.segmentation import SegmentationTask


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

    # -- evaluation and prediction
    def label_map(self, probabilities, threshold=None):
        """uint8 arg-max of probabilities `(..., K)` (`threshold` is the binary task's)."""
        return self.labels_from_probabilities(probabilities)

    def mask_pixels(self, labels):
        """The pixels of a `<stem>_mask.png`: the class indices 0..K-1, as the training masks."""
        return labels

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": f"{self.num_classes} logits per pixel, one per class, class 0 the background",
            "decoding": "class = arg-max over the last axis (softmax gives the class probabilities)",
            "activation": "none (logits); apply softmax over the last axis",
        }

    # -- export
    metadata_activation = "SOFTMAX"

    @property
    def output_wording(self):
        return f"{self.output_channels} logits per pixel, softmax"

    def output_contract(self, out):
        """The contract's output section (`export.contract.multiclass_output`)."""
        from keras_litenext.export.contract import multiclass_output

        return multiclass_output(self, out)
