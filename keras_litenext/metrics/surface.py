"""Surface distances of binary 2-D masks (NumPy, SciPy): HD95 (`hausdorff95`) and the average
symmetric surface distance (`average_surface_distance`), in pixels or `spacing` units."""

import math

import cv2
import numpy as np


def _surface(mask):
    """Pixels of a boolean mask with one of their 8 neighbours outside it (outside the image too)."""
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask & (eroded == 0)


def _distance_to(surface, spacing):
    """Exact Euclidean distance of every pixel to the nearest `surface` pixel, in pixels or
    `spacing` units (SciPy's `distance_transform_edt`, anisotropic pixels included)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~surface, sampling=spacing)


def _check_spacing(spacing):
    if spacing is None:
        return None
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive numbers (row, column), got {spacing}.")
    return spacing


def spacing_rows(spacing, n):
    """One `(row, column)` spacing (or None) per image from None, one pair, or `n` pairs."""
    if spacing is None:
        return [None] * n
    array = np.asarray(spacing, np.float64)
    if array.ndim == 2:
        if array.shape != (n, 2):
            raise ValueError(f"per-image spacing must have shape ({n}, 2), got {array.shape}.")
        return [_check_spacing(row) for row in array]
    return [_check_spacing(spacing)] * n


def surface_distances(truth, prediction, spacing=None):
    """`(predicted surface -> true surface, true surface -> predicted surface)` distances of two
    non-empty binary masks (surfaces as in `hausdorff95`), in pixels or `spacing` units."""
    surface_true, surface_pred = _surface(truth), _surface(prediction)
    return _distance_to(surface_true, spacing)[surface_pred], _distance_to(surface_pred, spacing)[surface_true]


def average_surface_distance(truth, prediction, spacing=None, empty="skip"):
    """Average symmetric surface distance (ASSD): the mean over both surfaces' pixels of the
    distance to the other surface (MONAI's `compute_average_surface_distance(symmetric=True)`).
    Empty masks as in `hausdorff95`."""
    truth, prediction, spacing, worst = _surface_args(truth, prediction, spacing)
    if not truth.any():
        return math.nan if empty == "skip" else (0.0 if not prediction.any() else worst)
    if not prediction.any():
        return worst
    to_true, to_pred = surface_distances(truth, prediction, spacing)
    return float(np.concatenate([to_true, to_pred]).mean())


def _surface_args(truth, prediction, spacing):
    truth = np.asarray(truth).astype(bool)
    prediction = np.asarray(prediction).astype(bool)
    if truth.ndim != 2 or truth.shape != prediction.shape:
        raise ValueError(
            f"surface metrics need two masks (height, width) of one shape, got {truth.shape}, {prediction.shape}."
        )
    spacing = _check_spacing(spacing)
    sy, sx = spacing or (1.0, 1.0)
    return truth, prediction, spacing, math.hypot(truth.shape[0] * sy, truth.shape[1] * sx)


def hausdorff95(truth, prediction, spacing=None, empty="skip"):
    """95th-percentile symmetric Hausdorff distance between two binary 2-D masks.

    `max(P95 of the distances from each predicted surface pixel to the true surface, P95 of the
    distances from each true surface pixel to the predicted surface)`, MONAI's
    `compute_hausdorff_distance(percentile=95)`. Surface pixels are mask pixels with one of their
    8 neighbours outside the mask (pixels on the image edge included); distances are exact
    Euclidean (SciPy's `distance_transform_edt`). Empty masks: see the package docstring (`keras_litenext.metrics`).

    Args:
        truth, prediction: boolean (or 0/1) arrays `(height, width)`.
        spacing: optional `(row, column)` pixel size (e.g. millimetres); distances are in pixels
            when None, and may differ per axis.
        empty: `"skip"` (an empty truth gives NaN) or `"score"` (0 if the prediction is empty too,
            else the image diagonal).

    Returns:
        float.
    """
    try:
        truth, prediction, spacing, diagonal = _surface_args(truth, prediction, spacing)
    except ValueError as err:
        raise ValueError(str(err).replace("surface metrics need", "hausdorff95 needs")) from None
    if not truth.any():
        if empty == "skip":
            return math.nan
        return 0.0 if not prediction.any() else diagonal
    if not prediction.any():
        return diagonal
    to_true, to_pred = surface_distances(truth, prediction, spacing)
    return float(max(np.percentile(to_true, 95), np.percentile(to_pred, 95)))

