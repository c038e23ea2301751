"""Inference: predicting images of any size (`predictor`: `predict_image` in the modes resize,
pad, tile and gaussian, with flip TTA; `predict_slices` for DICOM/NIfTI files), predicting a
folder and writing the results (`folder`: `predict_folder`), scoring a model or a run
(`evaluation`: `evaluate_native`, `evaluate_run`), what a batch reports (`batch`: `BatchResult`,
`Failure`, `failures.csv`, `Progress`), and what to predict with (`source`: `load_run`, `task_of`)."""

from keras_litenext.inference.batch import FAILURES_CSV, BatchResult, Failure, Progress
from keras_litenext.inference.evaluation import evaluate_native, evaluate_run
from keras_litenext.inference.folder import (
    classify,
    output_stems,
    predict_folder,
    predict_medical,
)
from keras_litenext.inference.predictor import (
    MODES,
    SIGMA_SCALE,
    TTA_FLIPS,
    gaussian_importance,
    predict_image,
    predict_slices,
    size_agnostic,
    size_multiple,
    window_starts,
)
from keras_litenext.inference.source import load_run, task_of

__all__ = [
    "FAILURES_CSV",
    "MODES",
    "SIGMA_SCALE",
    "TTA_FLIPS",
    "BatchResult",
    "Failure",
    "Progress",
    "classify",
    "evaluate_native",
    "evaluate_run",
    "gaussian_importance",
    "load_run",
    "output_stems",
    "predict_folder",
    "predict_image",
    "predict_medical",
    "predict_slices",
    "size_agnostic",
    "size_multiple",
    "task_of",
    "window_starts",
]
