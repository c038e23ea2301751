"""Per-image segmentation metrics: Dice, IoU, precision, recall and HD95, binary and multi-class.

Every metric is computed on hard masks, per image, and then averaged over images, as in the
LiteNeXt evaluation (Tran et al., 2024, arXiv:2405.15779; the authors' `eval.py`):

- binary model (one output channel): prediction `P`: `sigmoid(logit) > threshold` (for
  `threshold=0.5`, `logit > 0`); ground truth `G`: `mask > 0.5`;
- multi-class model (`K > 1` channels): the prediction is the arg-max over the channels and the
  ground truth a class-index map (`0..K-1`, 0 the background); each foreground class `c` is
  scored as the binary pair `P = (pred == c)`, `G = (mask == c)`;
- `Dice = 2|P∩G| / (|P| + |G|)`, `IoU = |P∩G| / |P∪G|`, `precision = |P∩G| / |P|`,
  `recall = |P∩G| / |G|`; an empty prediction has precision 0 when `G` is not empty (the
  reference's torchmetrics default, `zero_division=0`);
- HD95 (`hausdorff95`, NumPy side only): the 95th percentile symmetric Hausdorff distance
  between the surfaces of `P` and `G`, in pixels (or in `spacing` units), MONAI's
  `compute_hausdorff_distance(percentile=95)`; a non-empty `G` predicted empty scores the image
  diagonal `sqrt(H² + W²)`, a finite worst case.

Multi-class: an image's value of a metric is the MEAN OVER THE FOREGROUND CLASSES 1..K-1 present
in its ground truth (the background is excluded, as MONAI's `include_background=False`); the
per-class values (`dice_{class_name}`, ...) are averaged over the images where the class is
present. With `K = 2` every number equals the binary one of the foreground.

Empty ground truths (an image, or a class in an image), where these ratios are undefined or
meaningless, follow the `empty` policy:

- `"skip"` (default, the reference's): they are not counted, for any metric (NaN per image,
  HD95 included); a multi-class image without any foreground class is not counted;
- `"score"`: they are counted, every overlap metric scoring 1 when the prediction is empty too
  and 0 otherwise, and HD95 0 or the image diagonal.

Two interfaces give the same numbers: streaming `keras.metrics.Metric`s for `compile`/`fit`/
`evaluate` (written with `keras.ops` only, so they run on every backend and under `jit`; no
HD95), and NumPy functions for offline evaluation (`per_image_scores`, `summarize`,
`evaluate_model`).

Modules: `base` (names, policies, metric-safe class names), `segmentation` (the streaming
metrics, `get_metrics`), `scores` (per-image NumPy scores, `summarize`, `evaluate_model`),
`surface` (HD95, ASSD), `volumes` (per-volume totals), `classification` (image classification:
`MacroAUC`, `classification_scores`).
"""


from keras_litenext.metrics.base import (
    EMPTY_POLICIES,
    OVERLAP_METRICS,
    class_names_for,
    default_class_names,
)
from keras_litenext.metrics.classification import (
    MacroAUC,
    classification_metrics,
    classification_scores,
    confusion_matrix,
    roc_auc,
)
from keras_litenext.metrics.scores import evaluate_model, per_image_scores, summarize
from keras_litenext.metrics.segmentation import (
    DiceScore,
    IoUScore,
    MultiClassScore,
    PrecisionScore,
    RecallScore,
    get_metrics,
)
from keras_litenext.metrics.surface import (
    average_surface_distance,
    hausdorff95,
    surface_distances,
)
from keras_litenext.metrics.volumes import volumes

__all__ = [
    "EMPTY_POLICIES",
    "OVERLAP_METRICS",
    "DiceScore",
    "IoUScore",
    "MacroAUC",
    "MultiClassScore",
    "PrecisionScore",
    "RecallScore",
    "average_surface_distance",
    "class_names_for",
    "classification_metrics",
    "classification_scores",
    "confusion_matrix",
    "default_class_names",
    "evaluate_model",
    "get_metrics",
    "hausdorff95",
    "per_image_scores",
    "roc_auc",
    "summarize",
    "surface_distances",
    "volumes",
]
