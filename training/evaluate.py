"""Metrics of a trained model on a dataset split: per-image Dice, IoU, precision and recall.

    python training/evaluate.py runs/litenext-dsb2018_96-20261122-101500            # its test split
    python training/evaluate.py runs/my-run --split val
    python training/evaluate.py model.keras --data path/to/dataset --split all

A run folder brings its dataset, image size and splits.json; a bare .keras file needs --data
(and evaluates every pair unless --splits is given). By default images and masks are resized to
the model's input size, as in training; with --mode, metrics are computed at each image's own
resolution, predicting with that mode (resize, pad or tile; see training/predict.py). Images
whose ground truth is empty are left out of the means, as in the
LiteNeXt authors' evaluation; the counts are printed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import argparse
import json
import sys

from keras_litenext import data as data_lib
from keras_litenext.inference import MODES, evaluate_native, load_run
from keras_litenext.metrics import evaluate_model
from keras_litenext.utils import write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder of training/fit.py, or a .keras file")
    p.add_argument("--data", help="dataset folder (default: the run's)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"), help="default: test for a run, all for a .keras file")
    p.add_argument("--splits", help="splits JSON (default: the run's splits.json)")
    p.add_argument("--masks-suffix", help="default: the run's, else none")
    p.add_argument("--mask-threshold", type=int, help="default: the run's, else 0")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable pairs with a warning")
    p.add_argument("--mode", choices=MODES, help="evaluate at native resolution, predicting with this mode")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    try:
        model, config = load_run(args.model)
        data_dir = args.data or config.get("data")
        if not data_dir:
            raise ValueError("pass --data: a .keras file does not say which dataset it was trained on.")
        split = args.split or ("test" if config else "all")
        splits_file = args.splits or (os.path.join(args.model, "splits.json") if os.path.isdir(args.model) else None)
        h, w, channels = model.input_shape[1:]
        pairs = data_lib.find_pairs(data_dir, masks_suffix=args.masks_suffix or config.get("masks_suffix", ""), skip_bad=args.skip_bad)
        threshold = args.mask_threshold if args.mask_threshold is not None else config.get("mask_threshold", 0)
        if split != "all":
            if not splits_file:
                raise ValueError(f"--split {split} needs --splits (a .keras file has no splits.json).")
            wanted = set(data_lib.load_splits(splits_file)[split])
            pairs = [pair for pair in pairs if pair.stem in wanted]
        size = None if args.mode else (h, w)
        images, masks, stems, _ = data_lib.load_pairs(pairs, size, channels=channels, mask_threshold=threshold, skip_bad=args.skip_bad)
        if args.mode:
            results = evaluate_native(model, images, masks, mode=args.mode)
        else:
            results = evaluate_model(model, (images.astype("float32") / 255.0, masks.astype("float32")))
    except (data_lib.DatasetError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {"model": args.model, "data": os.path.abspath(data_dir), "split": split, "mode": args.mode or "model size", **results}
    for name in ("dice", "iou", "precision", "recall"):
        print(f"{name:>9}: {results[name]['mean']:.4f} ± {results[name]['std']:.4f}")
    print(f"{results['counted']} of {results['images']} images counted (empty ground truth left out)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
