"""Predicting a folder of images with a trained model (`predict_folder`): the `keras-litenext
predict` command as a library function.

A segmentation run writes, for each image, `<stem>_mask.png` (the input's size: 0/255 for a binary
model, the class index 0..K-1 for a multi-class one) and `<stem>_overlay.png` (the prediction
tinted and outlined, with a legend of the class colours for more than two classes); files sharing
a stem (a.png, a.jpg) are told apart by their extension (a_png_mask.png, a_jpg_mask.png). A DICOM
or NIfTI file gives `<stem>_labels.dcm` / `<stem>_labels.nii[.gz]` in the input's geometry. A
classification run writes one CSV (`task.prediction_csv`) with a row per image. Existing outputs
are never replaced unless `overwrite=True`.
"""

import functools
import os

import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.data.decode import resize_image
from keras_litenext.data.intensity import Intensity, to_float
from keras_litenext.data.medical import (
    MEDICAL_EXTENSIONS,
    MedicalError,
    is_medical,
    label_path,
    read_slices,
    write_labels,
)
from keras_litenext.inference.batch import (
    FAILURES_CSV,
    BatchResult,
    Failure,
    reason_of,
    write_failures,
)
from keras_litenext.inference.predictor import (
    predict_image,
    predict_slices,
    size_agnostic,
)
from keras_litenext.inference.source import task_of
from keras_litenext.runs import open_source
from keras_litenext.utils import ensure_writable
from keras_litenext.visualize import add_legend, overlay_labels, save_png

_SERIES = {}  # source series UID -> the label files' series UID: one label series per input series


def output_stems(paths):
    """`{path: stem of its outputs}`: the file stem, or stem_ext for files that share a stem
    (compared without case, as a case-insensitive file system would)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    out = {}
    for path, stem in zip(paths, stems):
        ext = os.path.splitext(path)[1].lstrip(".")
        out[path] = f"{stem}_{ext}" if counts[stem.lower()] > 1 else stem
    return out


def predict_folder(source, inputs, output, mode="resize", overlap=0.5, tta=False, threshold=0.5, overwrite=False,
                   nonfinite=None, progress=None, log=None):
    """Predict an image, a DICOM/NIfTI file, or every such file in a folder, and write the results.

    A file that cannot be read, predicted or written does not stop the others: it is listed in
    the result's `failures` (and in `output/failures.csv`, `item,stage,reason`), everything else
    is written under its final name.

    Args:
        source: a run folder or `.keras` file, or the `(model, run)` pair of `runs.open_source` /
            `presets.open_preset` (`run` None for a bare model).
        inputs: an image file, or a folder of images (a classifier: sub-folders included).
        output: the folder for the results.
        mode, overlap, tta: as in `predict_image` (segmentation).
        threshold: binary segmentation: probability above which a pixel is foreground.
        overwrite: replace outputs that exist already (else `FileExistsError`, before any work).
        nonfinite: DICOM/NIfTI: NaN / infinite values, `"minimum"` or `"error"` (`data.read_slices`);
            default: the run's setting, else `"minimum"`.
        progress: a `batch.Progress`-like object (`update(done, failed)`) told after each file.
        log: called with one line per file done (size and class fractions), if given.

    Returns:
        a `batch.BatchResult`: the paths written in order, the count of files done, the
        `batch.Failure`s and the output folder.

    Raises:
        ValueError: a problem of the whole job, before any file is written: no input, an
            unreadable model (`data.DatasetError`, `runs.RunError` and `ValueError` itself).
        FileExistsError: an output exists and `overwrite` is False.
        OSError: the output folder cannot be written.
    """
    model, run = open_source(source) if isinstance(source, (str, os.PathLike)) else source
    task = task_of(model, None if run is None else run.config)
    if nonfinite is None:
        nonfinite = "minimum" if run is None else run.config.nonfinite
    failures_csv = os.path.join(output, FAILURES_CSV)
    if task.prediction_csv:
        target = os.path.join(output, task.prediction_csv)
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{target} exists: pass --overwrite to replace it, or another --output.")
        ensure_writable(output)
        count, failures = classify(model, task, inputs, output)
        write_failures(failures_csv, failures)
        return BatchResult([target] if count else [], count, failures, output)
    if os.path.isdir(inputs):
        paths = sorted(os.path.join(inputs, f) for f in os.listdir(inputs)
                       if f.lower().endswith(data_lib.IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)
                       or is_medical(os.path.join(inputs, f)))
        if not paths:
            raise data_lib.DatasetError(f"{inputs} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
    else:
        paths = [inputs]
    stems = output_stems(paths)
    outputs = {p: [label_path(p, output)] if is_medical(p) else [os.path.join(output, f"{stems[p]}_{kind}.png")
                                                                  for kind in ("mask", "overlay")] for p in paths}
    existing = [t for p in paths for t in outputs[p] if os.path.exists(t)]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: pass --overwrite to "
                              "replace them, or another --output.")
    ensure_writable(output)
    channels = model.input_shape[-1]
    dynamic = size_agnostic(model) if mode == "pad" else None
    recipe = Intensity() if run is None else run.config.recipe
    how = {"mode": mode, "dynamic_model": dynamic, "overlap": overlap, "tta": tta, "task": task}
    slice_axis = 2 if run is None else run.config.slice_axis
    written, failures = [], []
    if progress is not None and hasattr(progress, "total"):
        progress.total = len(paths)
    for i, path in enumerate(paths):
        stage = ["read"]
        try:
            if is_medical(path):  # DICOM / NIfTI: a label file in the input's format and geometry
                line, target = predict_medical(model, task, path, output, recipe, how, slice_axis, threshold, nonfinite, stage)
                written.append(target)
            else:
                line = _predict_image(model, task, path, stems[path], output, channels, recipe, how, threshold, stage)
                written += outputs[path]
            if log is not None:
                log(line)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001  (one line per failed file, never a traceback)
            failures.append(Failure(path, stage[0], reason_of(err, path)))
            if stage[0] == "write":  # a file is all there or not at all
                for target in outputs[path]:
                    if os.path.exists(target):
                        os.remove(target)
        if progress is not None:
            progress.update(i + 1, len(failures))
    write_failures(failures_csv, failures)
    return BatchResult(written, len(paths) - len(failures), failures, output)


def _predict_image(model, task, path, stem, output, channels, recipe, how, threshold, stage):
    """Predict one 2-D image and write its mask and overlay; `stage[0]` follows the work
    (read, predict, write); returns the line for the log."""
    image = data_lib.read_image(path, channels=channels, intensity=recipe)
    stage[0] = "predict"
    probs = predict_image(model, to_float(image), **how)
    labels = task.label_map(probs, threshold)
    picture = overlay_labels(image, labels, task.num_classes)
    if task.num_classes > 2:
        picture = add_legend(picture, task.class_names)
    stage[0] = "write"
    save_png(os.path.join(output, f"{stem}_mask.png"), task.mask_pixels(labels))
    save_png(os.path.join(output, f"{stem}_overlay.png"), picture)
    return f"{path}: {image.shape[1]}x{image.shape[0]}, {task.fractions_line(labels)}"


def predict_medical(model, task, path, output, recipe, how, slice_axis=2, threshold=0.5, nonfinite="minimum", stage=None):
    """Predict every slice of a DICOM/NIfTI file and write `<stem>_labels.<ext>` in its geometry
    into `output`; returns the line to print (class volumes in ml when the file states its
    spacing) and the file written. `stage`, a one-item list, follows the work (read, predict, write)."""
    stage = stage if stage is not None else ["read"]
    try:
        slices = read_slices(path, slice_axis, nonfinite)
    except MedicalError as err:
        raise data_lib.DatasetError(f"{path}: {err}") from None
    stage[0] = "predict"
    labels = predict_slices(model, slices, functools.partial(task.label_map, threshold=threshold), recipe, **how)
    stage[0] = "write"
    target = write_labels(path, labels, label_path(path, output), slice_axis, series_uid=_SERIES)
    voxel = None if slices.spacing is None else slices.spacing[0] * slices.spacing[1] * (slices.thickness or 0.0)
    line = f"{path}: {len(slices)} slice(s) of {labels.shape[2]}x{labels.shape[1]}, {task.fractions_line(labels, voxel)} -> {target}"
    return line, target


def classify(model, task, images, output, batch_size=32):
    """Write `output/<task.prediction_csv>` for an image or every image under a folder; returns
    the count written and the `batch.Failure`s of the files that could not be read."""
    from keras_litenext.data.folders import write_predictions_csv

    if os.path.isdir(images):
        files = []
        for dirpath, dirnames, filenames in os.walk(images):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [os.path.relpath(os.path.join(dirpath, f), images).replace(os.sep, "/") for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(data_lib.IMAGE_EXTENSIONS)]
        if not files:
            raise data_lib.DatasetError(f"{images} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
        root = images
    else:
        root, files = os.path.dirname(images), [os.path.basename(images)]
    h, w, channels = model.input_shape[1:4]
    arrays, read, failures = [], [], []
    for name in files:
        path = os.path.join(root, name)
        try:
            image = data_lib.read_image(path, channels=channels)
            arrays.append(resize_image(image, h, w))
            read.append(name)
        except Exception as err:  # noqa: BLE001  (one line per failed file, never a traceback)
            failures.append(Failure(path, "read", reason_of(err, path)))
    if not read:
        return 0, failures
    x = np.stack(arrays).astype(np.float32) / 255.0
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    os.makedirs(output, exist_ok=True)
    write_predictions_csv(os.path.join(output, task.prediction_csv), read, task.probabilities(logits), task.class_names)
    return len(read), failures
