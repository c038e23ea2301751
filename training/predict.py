"""Segment a folder of images (any size) with a trained model: masks and overlays; or
classify them (a classification run): a CSV of class probabilities.

    python training/predict.py runs/my-run path/to/images --output predictions/
    python training/predict.py model.keras photo.png --mode tile
    python training/predict.py runs/my-classifier path/to/images --output out/   # out/predictions.csv

Classification: every image under the folder (sub-folders included) is resized to the
training size as in training, and OUT/predictions.csv gets one row per file: `file` (path
relative to the folder), `predicted` (the arg-max class) and one column per class name holding
its softmax probability.

For each image writes <stem>_mask.png (the input's size: 0/255 for a binary model, the class
index 0..K-1 for a multi-class one) and <stem>_overlay.png (the prediction tinted and outlined,
with a legend of the class colours for more than two classes). --mode chooses how an image of another size than the training
size is handled: resize (default), pad (whole image at its own resolution) or tile
(overlapping windows at the training size); see README, "Inference on images of any size".
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import sys

import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.inference import MODES, predict_image, size_agnostic, task_of
from keras_litenext.runs import RunError, open_source
from keras_litenext.visualize import add_legend, overlay_labels, save_png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder of training/fit.py, or a .keras file")
    p.add_argument("images", help="an image file, or a folder of images")
    p.add_argument("--output", default="predictions", help="folder for the results (default: %(default)s)")
    p.add_argument("--mode", default="resize", choices=MODES, help="how to handle other sizes (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="binary: probability above which a pixel is foreground (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if not 0.0 < args.threshold < 1.0:
            raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}.")
        model, run = open_source(args.model)
        task = task_of(model, None if run is None else run.config)
        if task.kind == "classification":
            count = classify(model, task, args.images, args.output)
            print(f"{count} image(s) -> {os.path.join(args.output, 'predictions.csv')}")
            return 0
        if os.path.isdir(args.images):
            paths = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.lower().endswith(data_lib.IMAGE_EXTENSIONS))
            if not paths:
                raise data_lib.DatasetError(f"{args.images} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
        else:
            paths = [args.images]
        channels = model.input_shape[-1]
        dynamic = size_agnostic(model) if args.mode == "pad" else None
        os.makedirs(args.output, exist_ok=True)
        for path in paths:
            image = data_lib.read_image(path, channels=channels)
            probs = predict_image(model, image.astype(np.float32) / 255.0, mode=args.mode, dynamic_model=dynamic)
            if task.output_channels == 1:
                labels = (probs[..., 0] > args.threshold).astype(np.uint8)
                mask_png = labels * 255  # 0/255: visible in any viewer
            else:
                labels = task.labels_from_probabilities(probs)
                mask_png = labels  # class indices 0..K-1, as the training masks
            stem = os.path.splitext(os.path.basename(path))[0]
            save_png(os.path.join(args.output, f"{stem}_mask.png"), mask_png)
            picture = overlay_labels(image, labels, task.num_classes)
            if task.num_classes > 2:
                picture = add_legend(picture, task.class_names)
            save_png(os.path.join(args.output, f"{stem}_overlay.png"), picture)
            fractions = ", ".join(f"{n} {np.mean(labels == c):.1%}" for c, n in enumerate(task.class_names) if c)
            print(f"{path}: {image.shape[1]}x{image.shape[0]}, {fractions}")
    except (data_lib.DatasetError, FileNotFoundError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(paths)} image(s) -> {args.output}")
    return 0


def classify(model, task, images, output, batch_size=32):
    """Write `output/predictions.csv` for an image or every image under a folder; returns the count."""
    from keras_litenext.data_classification import write_predictions_csv

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
