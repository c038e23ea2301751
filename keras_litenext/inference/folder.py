"""Predicting a folder of images with a trained model (`predict_folder`): the `keras-litenext
predict` command as a library function.

A segmentation run writes, for each image, `<stem>_mask.png` (the input's size: 0/255 for a binary
model, the class index 0..K-1 for a multi-class one) and `<stem>_overlay.png` (the prediction
tinted and outlined, with a legend of the class colours for more than two classes); files sharing
a stem (a.png, a.jpg) are told apart by their extension (a_png_mask.png, a_jpg_mask.png). A DICOM
or NIfTI file gives `<stem>_labels.dcm` / `<stem>_labels.nii[.gz]` in the input's geometry. Both
tasks write one rows file (`task.prediction_csv`, `inference.rows`) with a row per image written:
a segmentation's areas per class, a classifier's class probabilities. Existing outputs are never
replaced unless `overwrite=True`; a segmentation's rows file keeps the rows of other images that
earlier runs wrote into the same folder.

One image goes through three stages, each a function the Beam pipeline (`inference.beam`) calls
too: `read_input`, `predict_input`, then `write_image` / `write_medical`.
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
from keras_litenext.inference.rows import (
    file_name,
    merge_rows,
    model_sha256,
    prediction_row,
    previous_rows,
    spacing_of,
    write_rows,
)
from keras_litenext.inference.source import task_of
from keras_litenext.runs import open_source
from keras_litenext.utils import ensure_writable
from keras_litenext.visualize import add_legend, overlay_labels, save_png

_SERIES = {}  # source series UID -> the label files' series UID: one label series per input series


def stem_key(path):
    """What files are told apart by: the stem without case, as a case-insensitive file system would."""
    return os.path.splitext(os.path.basename(path))[0].lower()


def output_stem(path, shared):
    """The stem of `path`'s outputs: its file stem, or stem_ext when `shared` (another input has
    the same `stem_key`)."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return f"{stem}_{ext.lstrip('.')}" if shared else stem


def output_stems(paths):
    """`{path: stem of its outputs}`: the file stem, or stem_ext for files that share a stem
    (compared without case, as a case-insensitive file system would)."""
    counts = {}
    for path in paths:
        counts[stem_key(path)] = counts.get(stem_key(path), 0) + 1
    return {path: output_stem(path, counts[stem_key(path)] > 1) for path in paths}


def image_outputs(output, stem):
    """The files a 2-D image's prediction is written to: `<stem>_mask.png`, `<stem>_overlay.png`."""
    return [os.path.join(output, f"{stem}_{kind}.png") for kind in ("mask", "overlay")]


def predict_folder(source, inputs, output, mode="resize", overlap=0.5, tta=False, threshold=0.5, overwrite=False,
                   nonfinite=None, progress=None, log=None, rows_format="csv", model_digest=None):
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
        rows_format: the rows file, `"csv"` (`predictions.csv`) or `"parquet"` (`inference.rows`).
        model_digest: the model file's sha256 for the rows (default: `rows.model_sha256(source)`).

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
    rows_path = os.path.join(output, file_name(task, rows_format))
    if not task.writes_label_files:
        if os.path.exists(rows_path) and not overwrite:
            raise FileExistsError(f"{rows_path} exists: pass --overwrite to replace it, or another --output.")
        ensure_writable(output)
        count, failures = classify(model, task, inputs, output, rows_format=rows_format)
        write_failures(failures_csv, failures)
        return BatchResult([rows_path] if count else [], count, failures, output)
    digest = model_digest if model_digest is not None else model_sha256(source)
    previous_rows(rows_path, task, overwrite)  # another model's rows there: refused before any work
    if os.path.isdir(inputs):
        paths = sorted(os.path.join(inputs, f) for f in os.listdir(inputs)
                       if f.lower().endswith(data_lib.IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)
                       or is_medical(os.path.join(inputs, f)))
        if not paths:
            raise data_lib.DatasetError(f"{inputs} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
    else:
        paths = [inputs]
    stems = output_stems(paths)
    outputs = {p: [label_path(p, output)] if is_medical(p) else image_outputs(output, stems[p]) for p in paths}
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
    written, failures, rows = [], [], []
    if progress is not None and hasattr(progress, "total"):
        progress.total = len(paths)
    for i, path in enumerate(paths):
        stage = ["read"]
        try:
            data = read_input(path, channels, recipe, slice_axis, nonfinite)
            stage[0] = "predict"
            labels = predict_input(model, task, data, recipe, how, threshold)
            stage[0] = "write"
            if is_medical(path):  # DICOM / NIfTI: a label file in the input's format and geometry
                target = write_medical(path, labels, outputs[path][0], slice_axis)
                line = medical_line(task, path, data, labels, target)
            else:
                write_image(task, data, labels, *outputs[path])
                line = f"{path}: {data.shape[1]}x{data.shape[0]}, {task.fractions_line(labels)}"
            written += outputs[path]
            rows.append(prediction_row(task, path, labels, spacing_of(data), digest))
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
    if rows:  # the rows of earlier runs into `output` are kept
        written.append(merge_rows(rows_path, task, rows, rows_format, overwrite))
    return BatchResult(written, len(paths) - len(failures), failures, output)


def read_input(path, channels, recipe, slice_axis=2, nonfinite="minimum"):
    """Stage `read`: the image `(H, W, channels)` of an image file (`data.read_image` with the run's
    recipe), the `data.medical.Slices` of a DICOM/NIfTI file. Raises `DatasetError` naming `path`."""
    if not is_medical(path):
        return data_lib.read_image(path, channels=channels, intensity=recipe)
    try:
        return read_slices(path, slice_axis, nonfinite)
    except MedicalError as err:
        raise data_lib.DatasetError(f"{path}: {err}") from None


def predict_input(model, task, data, recipe, how, threshold=0.5):
    """Stage `predict`: the label map `(H, W)` of an image, `(S, H, W)` of slices (`read_input`);
    `how`: `predict_image`'s mode, dynamic_model, overlap, tta and task."""
    if isinstance(data, np.ndarray):
        return task.label_map(predict_image(model, to_float(data), **how), threshold)
    return predict_slices(model, data, functools.partial(task.label_map, threshold=threshold), recipe, **how)


def write_image(task, image, labels, mask_path, overlay_path):
    """Stage `write` of an image: its mask and its overlay (a legend for more than two classes)."""
    picture = overlay_labels(image, labels, task.num_classes)
    if task.num_classes > 2:
        picture = add_legend(picture, task.class_names)
    save_png(mask_path, task.mask_pixels(labels))
    save_png(overlay_path, picture)
    return [mask_path, overlay_path]


def write_medical(source, labels, target, slice_axis=2, series_uid=None):
    """Stage `write` of a DICOM/NIfTI file: its label file `target` in the geometry of `source`
    (`data.medical.write_labels`; `series_uid` default: one label series per source series)."""
    return write_labels(source, labels, target, slice_axis, series_uid=_SERIES if series_uid is None else series_uid)


def medical_line(task, path, slices, labels, target):
    """The log line of a DICOM/NIfTI file: its slices, and the class volumes in ml when it states its spacing."""
    voxel = None if slices.spacing is None else slices.spacing[0] * slices.spacing[1] * (slices.thickness or 0.0)
    return f"{path}: {len(slices)} slice(s) of {labels.shape[2]}x{labels.shape[1]}, {task.fractions_line(labels, voxel)} -> {target}"


def predict_medical(model, task, path, output, recipe, how, slice_axis=2, threshold=0.5, nonfinite="minimum", stage=None):
    """Predict every slice of a DICOM/NIfTI file and write `<stem>_labels.<ext>` in its geometry
    into `output`; returns the line to print (class volumes in ml when the file states its
    spacing) and the file written. `stage`, a one-item list, follows the work (read, predict, write)."""
    stage = stage if stage is not None else ["read"]
    slices = read_input(path, None, recipe, slice_axis, nonfinite)
    stage[0] = "predict"
    labels = predict_input(model, task, slices, recipe, how, threshold)
    stage[0] = "write"
    target = write_medical(path, labels, label_path(path, output), slice_axis)
    return medical_line(task, path, slices, labels, target), target


def classify(model, task, images, output, batch_size=32, rows_format="csv"):
    """Write `output/<task.prediction_csv>` (`rows_format`: or its `.parquet`) for an image or every
    image under a folder; returns the count written and the `batch.Failure`s of the files that
    could not be read."""
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
            arrays.append(classifier_input(path, h, w, channels))
            read.append(name)
        except Exception as err:  # noqa: BLE001  (one line per failed file, never a traceback)
            failures.append(Failure(path, "read", reason_of(err, path)))
    if not read:
        return 0, failures
    probabilities = class_probabilities(model, task, arrays, batch_size)
    os.makedirs(output, exist_ok=True)
    write_rows(os.path.join(output, file_name(task, rows_format)), task,
               [prediction_row(task, name, p) for name, p in zip(read, probabilities)], rows_format)
    return len(read), failures


def classifier_input(path, h, w, channels):
    """Stage `read` of a classifier: the image resized to the training size, as in training (8-bit)."""
    return resize_image(data_lib.read_image(path, channels=channels), h, w)


def class_probabilities(model, task, arrays, batch_size=32):
    """Stage `predict` of a classifier: the class probabilities `(N, K)` (float64) of images
    (`classifier_input`), predicted in batches of `batch_size`."""
    x = np.stack(arrays).astype(np.float32) / 255.0
    return np.asarray(task.probabilities(np.asarray(model.predict(x, batch_size=batch_size, verbose=0))), np.float64)
