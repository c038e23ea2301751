"""Per-image NumPy scores of segmentation outputs (`per_image_scores`), their summary
(`summarize`) and a model's evaluation on a test set (`evaluate_model`); the rules are in the
package docstring (`keras_litenext.metrics`)."""

import keras
import numpy as np

from keras_litenext.metrics.base import (
    OVERLAP_METRICS,
    check_args,
    class_names_for,
    logit_threshold,
)
from keras_litenext.metrics.surface import (
    average_surface_distance,
    hausdorff95,
    spacing_rows,
)


def _ratio_np(num, den):
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _nanmean_rows(values):
    """Mean of each row over its non-NaN entries; NaN for a row without any."""
    valid = ~np.isnan(values)
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


def _binary_counts(gt, pred):
    """`(tp, n_pred, n_true)` float64 arrays over the last axis of boolean `(..., pixels)` arrays."""
    return (
        np.sum(gt & pred, axis=-1).astype(np.float64),
        np.sum(pred, axis=-1).astype(np.float64),
        np.sum(gt, axis=-1).astype(np.float64),
    )


def _overlap_scores(tp, n_pred, n_true, empty):
    """Dice/IoU/precision/recall arrays, empty ground truths filled by the `empty` policy."""
    scores = {
        "dice": _ratio_np(2.0 * tp, n_pred + n_true),
        "iou": _ratio_np(tp, n_pred + n_true - tp),
        "precision": _ratio_np(tp, n_pred),
        "recall": _ratio_np(tp, n_true),
    }
    empty_gt = n_true == 0
    fill = np.where(n_pred == 0, 1.0, 0.0) if empty == "score" else np.full(n_true.shape, np.nan)
    for values in scores.values():
        values[empty_gt] = fill[empty_gt]
    return scores


def per_image_scores(
    masks,
    logits,
    threshold=0.5,
    empty="skip",
    from_logits=True,
    class_names=None,
    hd95=True,
    spacing=None,
    areas=False,
    surface=False,
):
    """Dice, IoU, precision, recall and HD95 of every image, as NumPy arrays.

    The number of classes is read off the output: `K = logits.shape[-1]` for 4-D `logits`, else
    1. For `K = 1` the prediction is `sigmoid(logit) > threshold` and `masks > 0.5` the ground
    truth. For `K > 1` the prediction is the arg-max over the channels, `masks` is a class-index
    map, each foreground class `c` is scored as the binary pair `(pred == c, mask == c)`, and the
    image's value is the mean over the foreground classes present (package docstring).

    Args:
        masks: ground truth, `(n, height, width[, 1])`: binary masks for `K = 1`, class-index maps
            (values `0..K-1`) for `K > 1`.
        logits: model outputs for the same images, `(n, height, width[, K])` (probabilities with
            `from_logits=False`).
        threshold: float, probability above which a pixel is foreground (`K = 1` only).
            Defaults to 0.5.
        empty: `"skip"` (default; an image or class with an empty ground truth gets NaN) or
            `"score"` (package docstring).
        from_logits: bool, defaults to True. An arg-max does not depend on it.
        class_names: for `K > 1`, `K` names with the background first (sanitised as in
            `get_metrics`); defaults to `("background", "class1", ...)`.
        hd95: bool, whether to compute the HD95 (`hausdorff95`). Defaults to True.
        spacing: optional `(row, column)` pixel size for the HD95, ASSD and areas (e.g. mm), one
            pair for all images or one per image `(n, 2)`; pixels when None.
        areas: add `"area_true"` / `"area_pred"` (binary; for `K > 1` per class,
            `f"area_true_{class_name}"` ...): the pixel count times the pixel area (mm² with a
            spacing in mm), every image counted (0 for an absent class).
        surface: add `"assd"` (`average_surface_distance`, same empty policy as the HD95).

    Returns:
        dict of float64 arrays of shape `(n,)`: `"dice"`, `"iou"`, `"precision"`, `"recall"`,
        `"hd95"`, and for `K > 1` then `f"{metric}_{class_name}"` for every metric and
        foreground class; then the areas and ASSD when asked for.
    """
    threshold = check_args(threshold, empty, from_logits)
    masks = np.asarray(masks)
    logits = np.asarray(logits, dtype=np.float32)
    k = int(logits.shape[-1]) if logits.ndim == 4 else 1
    n = masks.shape[0] if masks.ndim else 0
    rows = spacing_rows(spacing, n)
    if k > 1:
        return _multiclass_scores(masks, logits, k, empty, class_names, hd95, rows, areas, surface)
    if logits.shape[0] != n or logits.size != masks.size:
        raise ValueError(f"masks {masks.shape} and logits {logits.shape} do not describe the same images.")
    gt = masks.reshape(n, -1).astype(np.float32) > 0.5
    pred = logits.reshape(n, -1) > np.float32(logit_threshold(threshold, from_logits))
    counts = _binary_counts(gt, pred)
    scores = _overlap_scores(*counts, empty)
    if hd95 or surface:
        if masks.ndim < 3:
            raise ValueError(f"hd95 needs masks of shape (n, height, width[, 1]), got {masks.shape}.")
        shape = masks.shape[1:3]
        gt, pred = gt.reshape((n, *shape)), pred.reshape((n, *shape))
    if hd95:
        scores["hd95"] = np.array([hausdorff95(g, p, s, empty) for g, p, s in zip(gt, pred, rows)], np.float64)
    if areas:
        pixel = _pixel_areas(rows)
        scores["area_true"], scores["area_pred"] = counts[2] * pixel, counts[1] * pixel
    if surface:
        scores["assd"] = np.array([average_surface_distance(g, p, s, empty) for g, p, s in zip(gt, pred, rows)], np.float64)
    return scores


def _pixel_areas(rows):
    """`(n,)` area of one pixel per image (1 where the spacing is unknown)."""
    return np.array([1.0 if s is None else s[0] * s[1] for s in rows], np.float64)


def _multiclass_scores(masks, logits, k, empty, class_names, hd95, rows, areas=False, surface=False):
    names = class_names_for(k, class_names)
    n, height, width = logits.shape[:3]
    if masks.ndim == 4 and masks.shape[-1] == k:
        masks = np.argmax(masks, axis=-1)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != (n, height, width):
        raise ValueError(f"masks {masks.shape} and logits {logits.shape} do not describe the same images.")
    labels = np.rint(masks).astype(np.int64) if masks.dtype.kind == "f" else masks.astype(np.int64)
    pred = np.argmax(logits, axis=-1)
    classes = np.arange(1, k)
    gt_c = labels.reshape(n, 1, -1) == classes[None, :, None]  # (n, K-1, pixels)
    pred_c = pred.reshape(n, 1, -1) == classes[None, :, None]
    counts = _binary_counts(gt_c, pred_c)
    per_class = _overlap_scores(*counts, empty)  # each (n, K-1)
    shape = (height, width)

    def per_image_class(fn):
        return np.array(
            [[fn(gt_c[i, j].reshape(shape), pred_c[i, j].reshape(shape), rows[i], empty) for j in range(k - 1)] for i in range(n)],
            np.float64,
        ).reshape(n, k - 1)

    if hd95:
        per_class["hd95"] = per_image_class(hausdorff95)
    if surface:
        per_class["assd"] = per_image_class(average_surface_distance)
    scores = {metric: _nanmean_rows(values) for metric, values in per_class.items() if metric != "assd"}
    for metric, values in per_class.items():
        if metric == "assd":
            continue
        for j, name in enumerate(names[1:]):
            scores[f"{metric}_{name}"] = values[:, j].copy()
    if areas:
        pixel = _pixel_areas(rows)[:, None]
        for j, name in enumerate(names[1:]):
            scores[f"area_true_{name}"] = counts[2][:, j] * pixel[:, 0]
            scores[f"area_pred_{name}"] = counts[1][:, j] * pixel[:, 0]
    if surface:
        scores["assd"] = _nanmean_rows(per_class["assd"])
        for j, name in enumerate(names[1:]):
            scores[f"assd_{name}"] = per_class["assd"][:, j].copy()
    return scores


def summarize(scores):
    """Mean and standard deviation of per-image scores, ignoring skipped (NaN) images.

    Args:
        scores: dict of per-image arrays, as returned by `per_image_scores`.

    Returns:
        dict: `{metric: {"mean": float, "std": float}}` for each metric (NaN when no image was
        counted), plus `"images"` (all images), `"counted"` and `"skipped_empty"` (images with an
        empty ground truth under `empty="skip"`).
    """
    summary = {}
    images = counted = 0
    for index, (name, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=np.float64).ravel()
        valid = values[~np.isnan(values)]
        mean = float(valid.mean()) if valid.size else float("nan")
        std = float(valid.std()) if valid.size else float("nan")
        summary[name] = {"mean": mean, "std": std}
        if index == 0:
            images, counted = int(values.size), int(valid.size)
    summary.update(images=images, counted=counted, skipped_empty=images - counted)
    return summary


def _batches(data):
    """`(is_whole_set, images, masks)` NumPy batches from a pair of arrays or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(a, "shape") for a in data):
        yield True, np.asarray(data[0]), np.asarray(data[1])
        return
    iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
    for element in iterator:
        yield False, np.asarray(element[0]), np.asarray(element[1])


def evaluate_model(
    model,
    dataset_or_arrays,
    threshold=0.5,
    empty="skip",
    batch_size=8,
    from_logits=True,
    class_names=None,
    hd95=True,
    spacing=None,
    areas=False,
    surface=False,
):
    """Runs a model over a test set and returns the per-image scores of `per_image_scores`.

    Args:
        model: a Keras model whose (first) output is a logit map per image, `(H, W, 1)` or
            `(H, W, K)`.
        dataset_or_arrays: `(images, masks)` NumPy arrays, or an iterable of batches
            `(images, masks[, ...])` such as a batched `tf.data.Dataset` (read with
            `as_numpy_iterator()` when it has one); unbatched elements count as batches of one.
        threshold: float, defaults to 0.5 (binary models).
        empty: `"skip"` (default) or `"score"`; see the package docstring.
        batch_size: int, for arrays. Defaults to 8.
        from_logits: bool, whether the model outputs logits (default) or probabilities.
        class_names: for `K > 1` outputs, `K` names, background first.
        hd95: bool, whether to compute the HD95. Defaults to True.
        spacing: optional `(row, column)` pixel size for the HD95 (ASSD, areas), or one per
            image `(n, 2)` with `(images, masks)` arrays.
        areas, surface: as in `per_image_scores`.

    Returns:
        dict: `{"dice": {"mean", "std"}, "iou": ..., "precision": ..., "recall": ..., "hd95": ...,
        [per-class keys,] "images": n, "counted": m, "skipped_empty": n - m, "per_image":
        {key: list}}`, the per-image lists in input order with NaN for skipped images.
    """
    check_args(threshold, empty, from_logits)
    input_rank = len(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    collected = {}
    for is_whole_set, images, masks in _batches(dataset_or_arrays):
        if is_whole_set:
            outputs = model.predict(images, batch_size=batch_size, verbose=0)
        else:
            if input_rank is not None and images.ndim == input_rank - 1:
                images, masks = images[None], masks[None]
            outputs = model.predict_on_batch(images)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        outputs = np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float32)
        scores = per_image_scores(
            masks,
            outputs,
            threshold=threshold,
            empty=empty,
            from_logits=from_logits,
            class_names=class_names,
            hd95=hd95,
            spacing=spacing,
            areas=areas,
            surface=surface,
        )
        for name, values in scores.items():
            collected.setdefault(name, []).append(values)
    if not collected:
        collected = {name: [] for name in OVERLAP_METRICS}
    per_image = {
        name: np.concatenate(parts) if parts else np.zeros((0,), np.float64) for name, parts in collected.items()
    }
    result = summarize(per_image)
    result["per_image"] = {name: values.tolist() for name, values in per_image.items()}
    return result


