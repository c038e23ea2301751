"""The `binary` task: one logit per pixel, sigmoid, foreground where the logit is positive."""

import numpy as np

from keras_litenext.data.decode import binary_mask
from keras_litenext.tasks.base import register_task
from keras_litenext.tasks.segmentation import SegmentationTask


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
        return binary_mask(raw, self.mask_threshold, self.binary_check)

    def probabilities(self, logits):
        """Foreground probability `(..., 1)` of logits `(..., 1)`."""
        logits = np.asarray(logits, np.float32)
        return 1.0 / (1.0 + np.exp(-logits))

    def labels(self, logits):
        """`(...)` uint8 {0, 1} label map of logits `(..., 1)`."""
        return (np.asarray(logits)[..., 0] > 0).astype(np.uint8)

    def labels_from_probabilities(self, probabilities):
        return (np.asarray(probabilities)[..., 0] > 0.5).astype(np.uint8)

    # -- evaluation and prediction
    def label_map(self, probabilities, threshold=0.5):
        """uint8 {0, 1}: foreground where the probability exceeds `threshold`."""
        return (np.asarray(probabilities)[..., 0] > threshold).astype(np.uint8)

    def mask_pixels(self, labels):
        """The pixels of a `<stem>_mask.png`: 0/255, visible in any viewer."""
        return labels * 255

    def contract(self):
        return {
            "task": self.name,
            "classes": {str(i): n for i, n in enumerate(self.class_names)},
            "output_meaning": "one logit per pixel (1 channel); sigmoid(logit) is the foreground probability",
            "decoding": "foreground where logit > 0 (probability > 0.5)",
            "activation": "none (logits); apply sigmoid",
        }

    # -- export
    metadata_activation = "SIGMOID"
    output_wording = "one logit per pixel, sigmoid"

    def output_contract(self, out):
        """The contract's output section (`export.contract.binary_output`)."""
        from keras_litenext.export.contract import binary_output

        return binary_output(self, out)
