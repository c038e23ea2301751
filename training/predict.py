"""Segment a folder of images (any size) with a trained model: masks and overlays.

    python training/predict.py runs/my-run path/to/images --output predictions/
    python training/predict.py model.keras photo.png --mode tile

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


if __name__ == "__main__":
    sys.exit(main())
