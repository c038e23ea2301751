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


def predict_folder(source, inputs, output, mode="resize", overlap=0.5, tta=False, threshold=0.5, overwrite=False, log=print):
    """Predict an image, a DICOM/NIfTI file, or every such file in a folder, and write the results.

    Args:
        source: a run folder or `.keras` file, or the `(model, run)` pair of `runs.open_source` /
            `presets.open_preset` (`run` None for a bare model).
        inputs: an image file, or a folder of images (a classifier: sub-folders included).
        output: the folder for the results.
        mode, overlap, tta: as in `predict_image` (segmentation).
        threshold: binary segmentation: probability above which a pixel is foreground.
        overwrite: replace outputs that exist already (else `FileExistsError`, before any work).
        log: called with one line per file and a last line naming the count and destination.

    Returns:
        the paths written, in order.

    Raises:
        data.DatasetError, FileExistsError, OSError, runs.RunError, ValueError: naming the problem.
    """
    model, run = open_source(source) if isinstance(source, (str, os.PathLike)) else source
    task = task_of(model, None if run is None else run.config)
    if task.prediction_csv:
        target = os.path.join(output, task.prediction_csv)
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{target} exists: pass --overwrite to replace it, or another --output.")
        ensure_writable(output)
        count = classify(model, task, inputs, output)
        log(f"{count} image(s) -> {target}")
        return [target]
    if os.path.isdir(inputs):
        paths = sorted(os.path.join(inputs, f) for f in os.listdir(inputs)
                       if f.lower().endswith(data_lib.IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)
                       or is_medical(os.path.join(inputs, f)))
        if not paths:
            raise data_lib.DatasetError(f"{inputs} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
    else:
        paths = [inputs]
    stems = output_stems(paths)
    targets = [t for p in paths for t in ([label_path(p, output)] if is_medical(p) else
                                          [os.path.join(output, f"{stems[p]}_{kind}.png") for kind in ("mask", "overlay")])]
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: pass --overwrite to "
                              "replace them, or another --output.")
    ensure_writable(output)
    channels = model.input_shape[-1]
    dynamic = size_agnostic(model) if mode == "pad" else None
    recipe = Intensity() if run is None else run.config.recipe
    how = {"mode": mode, "dynamic_model": dynamic, "overlap": overlap, "tta": tta, "task": task}
    written = []
    for path in paths:
        if is_medical(path):  # DICOM / NIfTI: a label file in the input's format and geometry
            line, target = predict_medical(model, task, path, output, recipe, how, 2 if run is None else run.config.slice_axis,
                                           threshold)
            written.append(target)
            log(line)
            continue
        image = data_lib.read_image(path, channels=channels, intensity=recipe)
        probs = predict_image(model, to_float(image), **how)
        labels = task.label_map(probs, threshold)
        stem = stems[path]
        save_png(os.path.join(output, f"{stem}_mask.png"), task.mask_pixels(labels))
        picture = overlay_labels(image, labels, task.num_classes)
        if task.num_classes > 2:
            picture = add_legend(picture, task.class_names)
        save_png(os.path.join(output, f"{stem}_overlay.png"), picture)
        written += [os.path.join(output, f"{stem}_{kind}.png") for kind in ("mask", "overlay")]
        log(f"{path}: {image.shape[1]}x{image.shape[0]}, {task.fractions_line(labels)}")
    log(f"{len(paths)} image(s) -> {output}")
    return written


def predict_medical(model, task, path, output, recipe, how, slice_axis=2, threshold=0.5):
    """Predict every slice of a DICOM/NIfTI file and write `<stem>_labels.<ext>` in its geometry
    into `output`; returns the line to print (class volumes in ml when the file states its
    spacing) and the file written."""
    try:
        slices = read_slices(path, slice_axis)
    except MedicalError as err:
        raise data_lib.DatasetError(f"{path}: {err}") from None
    labels = predict_slices(model, slices, functools.partial(task.label_map, threshold=threshold), recipe, **how)
    target = write_labels(path, labels, label_path(path, output), slice_axis, series_uid=_SERIES)
    voxel = None if slices.spacing is None else slices.spacing[0] * slices.spacing[1] * (slices.thickness or 0.0)
    line = f"{path}: {len(slices)} slice(s) of {labels.shape[2]}x{labels.shape[1]}, {task.fractions_line(labels, voxel)} -> {target}"
    return line, target


def classify(model, task, images, output, batch_size=32):
    """Write `output/<task.prediction_csv>` for an image or every image under a folder; returns the count."""
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
    arrays, problems = [], []
    for name in files:
        try:
            image = data_lib.read_image(os.path.join(root, name), channels=channels)
            arrays.append(resize_image(image, h, w))
        except data_lib.DatasetError as err:
            problems.append(str(err))
    if problems:
        raise data_lib.DatasetError(f"{len(problems)} of {len(files)} images cannot be read:\n" + "\n".join(problems))
    x = np.stack(arrays).astype(np.float32) / 255.0
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    os.makedirs(output, exist_ok=True)
    write_predictions_csv(os.path.join(output, task.prediction_csv), files, task.probabilities(logits), task.class_names)
    return len(files)
