"""Segment a folder of images (any size) with a trained model: masks and overlays.

    python training/predict.py runs/my-run path/to/images --output predictions/
    python training/predict.py model.keras photo.png --mode tile

For each image writes <stem>_mask.png (0/255, the input's size) and <stem>_overlay.png
(prediction outlined in red). --mode chooses how an image of another size than the training
size is handled: resize (default), pad (whole image at its own resolution) or tile
(overlapping windows at the training size); see README, "Inference on images of any size".
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import sys

import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.inference import MODES, load_run, predict_image, size_agnostic
from keras_litenext.visualize import overlay, save_png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder of training/fit.py, or a .keras file")
    p.add_argument("images", help="an image file, or a folder of images")
    p.add_argument("--output", default="predictions", help="folder for the results (default: %(default)s)")
    p.add_argument("--mode", default="resize", choices=MODES, help="how to handle other sizes (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability above which a pixel is foreground (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        model, _ = load_run(args.model)
        if os.path.isdir(args.images):
            paths = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.lower().endswith(data_lib.IMAGE_EXTENSIONS))
            if not paths:
                raise data_lib.DatasetError(f"{args.images} holds no {'/'.join(data_lib.IMAGE_EXTENSIONS)} images.")
        else:
            paths = [args.images]
        channels = model.input_shape[-1]
        dynamic = size_agnostic(model) if args.mode == "pad" else None
        logit_threshold = float(np.log(args.threshold / (1 - args.threshold)))
        os.makedirs(args.output, exist_ok=True)
        for path in paths:
            image = data_lib.read_image(path, channels=channels)
            logits = predict_image(model, image.astype(np.float32) / 255.0, mode=args.mode, dynamic_model=dynamic)
            mask = logits[..., 0] > logit_threshold if logits.shape[-1] == 1 else np.argmax(logits, -1) > 0
            stem = os.path.splitext(os.path.basename(path))[0]
            save_png(os.path.join(args.output, f"{stem}_mask.png"), mask.astype(np.uint8) * 255)
            save_png(os.path.join(args.output, f"{stem}_overlay.png"), overlay(image, mask))
            print(f"{path}: {image.shape[1]}x{image.shape[0]}, foreground {mask.mean():.1%}")
    except (data_lib.DatasetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(paths)} image(s) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
