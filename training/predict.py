"""Segment a folder of images (any size) with a trained model: masks and overlays; or
classify them (a classification run): a CSV of class probabilities.

    python training/predict.py runs/my-run path/to/images --output predictions/
    python training/predict.py model.keras photo.png --mode tile
    python training/predict.py runs/my-classifier path/to/images --output out/   # out/predictions.csv
    python training/predict.py --preset litenext-nuclei path/to/images          # a bundled trained model

--preset takes a preset's name (`keras_litenext.list_presets()`) or folder (`save_preset`) in
place of the run folder.

Classification: every image under the folder (sub-folders included) is resized to the
training size as in training, and OUT/predictions.csv gets one row per file: `file` (path
relative to the folder), `predicted` (the arg-max class) and one column per class name holding
its softmax probability.

For each image writes <stem>_mask.png (the input's size: 0/255 for a binary model, the class
index 0..K-1 for a multi-class one) and <stem>_overlay.png (the prediction tinted and outlined,
with a legend of the class colours for more than two classes); files sharing a stem (a.png,
a.jpg) are told apart by their extension (a_png_mask.png, a_jpg_mask.png), and existing
outputs are never replaced unless --overwrite is given. --mode chooses how an image of another size than the training
size is handled: resize (default), pad (whole image at its own resolution), tile
(overlapping windows at the training size) or gaussian (sliding windows, --overlap apart,
weighted by a Gaussian of sigma 1/8 window); --tta adds the flipped predictions (4 passes); see
README, "Inference on images of any size".

DICOM (.dcm) and NIfTI (.nii, .nii.gz) files are mapped with the run's intensity recipe and
predicted slice by slice; each gives OUT/<stem>_labels.dcm or OUT/<stem>_labels.nii[.gz], the
class indices in the input's geometry (affine / position, orientation and spacing copied), to
open on top of the input in ITK-SNAP or 3D Slicer:

    python training/predict.py runs/ct-run scans/ --output labels/ --mode gaussian --tta
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import sys

import numpy as np

from keras_litenext.cli import args as cli
from keras_litenext import data as data_lib
from keras_litenext.inference import (
    MODES,
    predict_image,
    predict_slices,
    size_agnostic,
    task_of,
)
from keras_litenext.data.intensity import Intensity, to_float
from keras_litenext.data.medical import (
    MEDICAL_EXTENSIONS,
    MedicalError,
    is_medical,
    label_path,
    read_slices,
    write_labels,
)
from keras_litenext.presets import PresetError, list_presets, open_preset, preset_path
from keras_litenext.runs import RunError, open_source
from keras_litenext.utils import ensure_writable
from keras_litenext.visualize import add_legend, overlay_labels, save_png


def preset(value):
    """argparse type: a bundled preset's name or a preset folder (its folder)."""
    try:
        return preset_path(value)
    except PresetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=cli.existing_path, nargs="?",
                   help="run folder of training/fit.py, or a .keras file (not with --preset)")
    p.add_argument("images", type=cli.existing_path, nargs="?", help="an image file, or a folder of images")
    p.add_argument("--preset", type=preset, help="a preset's name or folder in place of MODEL (bundled: %s)" % (", ".join(list_presets()) or "none"))
    p.add_argument("--output", type=cli.output_path, default="predictions", help="folder for the results (default: %(default)s)")
    p.add_argument("--mode", default="resize", choices=MODES, help="how to handle other sizes (default: %(default)s)")
    p.add_argument("--overlap", type=cli.float_range(0.0, 1.0, high_open=True), default=0.5,
                   help="--mode gaussian: overlap of neighbouring windows, in [0, 1) (default: %(default)s)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation: average over 4 flips (4x the time)")
    p.add_argument("--threshold", type=cli.open_fraction, default=0.5,
                   help="binary: probability above which a pixel is foreground, in (0, 1) (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist in --output")
    return p


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


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.preset is not None and args.images is None:
        args.model, args.images = None, args.model
    if args.preset is not None and args.model is not None:
        p.error("give either MODEL or --preset, not both")
    if args.images is None:
        p.error("the following arguments are required: " + ("images" if args.model or args.preset else "model, images"))
    try:
        model, run = open_source(args.model) if args.preset is None else open_preset(args.preset)
        task = task_of(model, None if run is None else run.config)
        if task.kind == "classification":
            target = os.path.join(args.output, "predictions.csv")
            if os.path.exists(target) and not args.overwrite:
                raise FileExistsError(f"{target} exists: pass --overwrite to replace it, or another --output.")
            ensure_writable(args.output)
            count = classify(model, task, args.images, args.output)
            print(f"{count} image(s) -> {target}")
            return 0
        if os.path.isdir(args.images):
            paths = sorted(os.path.join(args.images, f) for f in os.listdir(args.images)
                           if f.lower().endswith(data_lib.IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS)
                           or is_medical(os.path.join(args.images, f)))
            if not paths:
                raise data_lib.DatasetError(f"{args.images} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
        else:
            paths = [args.images]
        stems = output_stems(paths)
        targets = [t for p in paths for t in ([label_path(p, args.output)] if is_medical(p) else
                                              [os.path.join(args.output, f"{stems[p]}_{kind}.png") for kind in ("mask", "overlay")])]
        existing = [t for t in targets if os.path.exists(t)]
        if existing and not args.overwrite:
            raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: pass --overwrite to "
                                  "replace them, or another --output.")
        ensure_writable(args.output)
        channels = model.input_shape[-1]
        dynamic = size_agnostic(model) if args.mode == "pad" else None
        recipe = Intensity() if run is None else run.config.recipe
        how = {"mode": args.mode, "dynamic_model": dynamic, "overlap": args.overlap, "tta": args.tta}
        for path in paths:
            if is_medical(path):  # DICOM / NIfTI: a label file in the input's format and geometry
                print(predict_medical(model, task, path, args, recipe, how, 2 if run is None else run.config.slice_axis))
                continue
            image = data_lib.read_image(path, channels=channels, intensity=recipe)
            probs = predict_image(model, to_float(image), **how)
            if task.output_channels == 1:
                labels = (probs[..., 0] > args.threshold).astype(np.uint8)
                mask_png = labels * 255  # 0/255: visible in any viewer
            else:
                labels = task.labels_from_probabilities(probs)
                mask_png = labels  # class indices 0..K-1, as the training masks
            stem = stems[path]
            save_png(os.path.join(args.output, f"{stem}_mask.png"), mask_png)
            picture = overlay_labels(image, labels, task.num_classes)
            if task.num_classes > 2:
                picture = add_legend(picture, task.class_names)
            save_png(os.path.join(args.output, f"{stem}_overlay.png"), picture)
            fractions = ", ".join(f"{n} {np.mean(labels == c):.1%}" for c, n in enumerate(task.class_names) if c)
            print(f"{path}: {image.shape[1]}x{image.shape[0]}, {fractions}")
    except (data_lib.DatasetError, OSError, RunError, PresetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(paths)} image(s) -> {args.output}")
    return 0


_SERIES = {}  # source series UID -> the label files' series UID: one label series per input series


def predict_medical(model, task, path, args, recipe, how, slice_axis=2):
    """Predict every slice of a DICOM/NIfTI file and write `<stem>_labels.<ext>` in its geometry;
    returns the line to print (class volumes in ml when the file states its spacing)."""
    try:
        slices = read_slices(path, slice_axis)
    except MedicalError as err:
        raise data_lib.DatasetError(f"{path}: {err}") from None
    if task.output_channels == 1:
        def labels_fn(probs):
            return (probs[..., 0] > args.threshold).astype(np.uint8)
    else:
        labels_fn = task.labels_from_probabilities
    labels = predict_slices(model, slices, labels_fn, recipe, **how)
    target = write_labels(path, labels, label_path(path, args.output), slice_axis, series_uid=_SERIES)
    voxel = None if slices.spacing is None else slices.spacing[0] * slices.spacing[1] * (slices.thickness or 0.0)
    amounts = ", ".join(
        (f"{n} {np.count_nonzero(labels == c) * voxel / 1000.0:.2f} ml" if voxel else f"{n} {np.mean(labels == c):.1%}")
        for c, n in enumerate(task.class_names) if c)
    return f"{path}: {len(slices)} slice(s) of {labels.shape[2]}x{labels.shape[1]}, {amounts} -> {target}"


def classify(model, task, images, output, batch_size=32):
    """Write `output/predictions.csv` for an image or every image under a folder; returns the count."""
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
            arrays.append(data_lib._resize_image(image, h, w))
        except data_lib.DatasetError as err:
            problems.append(str(err))
    if problems:
        raise data_lib.DatasetError(f"{len(problems)} of {len(files)} images cannot be read:\n" + "\n".join(problems))
    x = np.stack(arrays).astype(np.float32) / 255.0
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    os.makedirs(output, exist_ok=True)
    write_predictions_csv(os.path.join(output, "predictions.csv"), files, task.probabilities(logits), task.class_names)
    return len(files)


if __name__ == "__main__":
    sys.exit(main())
