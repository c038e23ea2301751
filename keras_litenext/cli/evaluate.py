"""Metrics of a trained model on a dataset split: per-image Dice, IoU, precision and recall
(classification runs: accuracy, balanced accuracy, macro AUC, per-class recall, confusion matrix).

    python training/evaluate.py runs/litenext-dsb2018_96-20261122-101500            # its test split
    python training/evaluate.py runs/my-run --split val
    python training/evaluate.py model.keras --data path/to/dataset --split all

A run folder brings its dataset, image size and splits.json; a bare .keras file needs --data
(and evaluates every pair unless --splits is given). By default images and masks are resized to
the model's input size, as in training; with --mode, metrics are computed at each image's own
resolution, predicting with that mode (resize, pad, tile or gaussian, optionally with --tta;
see training/predict.py). Images whose ground truth is empty are left out of the means, as in the
LiteNeXt authors' evaluation; the counts are printed. HD95, ASSD and the per-image areas are in
millimetres (mm²) when every image's file states its pixel spacing (DICOM, NIfTI), else in
pixels; the slices of a volume also get its volume per class (ml, "volumes" in --json).

    python training/evaluate.py runs/my-run --mode gaussian --tta    # sliding window + flips
"""

import argparse
import os
import sys

from keras_litenext.cli import args as cli
from keras_litenext.data import DatasetError
from keras_litenext.inference import MODES, evaluate_run
from keras_litenext.inference.batch import (
    FAILURES_CSV,
    Failure,
    Progress,
    write_failures,
)
from keras_litenext.runs import RunError
from keras_litenext.utils import ensure_writable, write_json


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=cli.existing_path, help="run folder of training/fit.py, or a .keras file")
    p.add_argument("--data", type=cli.existing_dir, help="dataset folder (default: the run's)")
    p.add_argument("--split", default=None, choices=("train", "val", "test", "all"), help="default: test for a run, all for a .keras file")
    p.add_argument("--splits", type=cli.existing_file, help="splits JSON (default: the run's splits.json)")
    p.add_argument("--masks-suffix", type=cli.suffix(), help="default: the run's, else none")
    p.add_argument("--mask-threshold", type=cli.int_range(0, 65534), help="default: the run's, else 0")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable or unpaired files with a warning and exit 0 (without it, unreadable pairs are listed "
                   "at the end and the exit status is 1; unpaired files stop the job)")
    p.add_argument("--nonfinite", choices=("minimum", "error"),
                   help="DICOM/NIfTI images: NaN/inf become the volume's lowest finite value (minimum), or the file fails "
                   "(error) (default: the run's setting)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal)")
    p.add_argument("--mode", choices=MODES, help="evaluate at native resolution, predicting with this mode")
    p.add_argument("--overlap", type=cli.float_range(0.0, 1.0, high_open=True), default=0.5,
                   help="--mode gaussian: overlap of neighbouring windows, in [0, 1) (default: %(default)s)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes; needs --mode)")
    p.add_argument("--json", type=cli.output_path,
                   help="also write the results to this JSON file (and the failed pairs to failures.csv beside it)")
    return p


def main(argv=None):
    """`keras-litenext evaluate ...`: returns the exit status: 0; 1 after a one-line error, or when a
    pair could not be read (every readable pair is scored and the others listed) unless --skip-bad."""
    args = build_parser().parse_args(argv)
    try:
        if args.json and os.path.isdir(args.json):
            raise ValueError(f"--json {args.json} is a folder; give a file name.")
        if args.json:
            ensure_writable(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
        results = evaluate_run(args.model, data=args.data, split=args.split, splits=args.splits, masks_suffix=args.masks_suffix,
                               mask_threshold=args.mask_threshold, mode=args.mode, overlap=args.overlap, tta=args.tta,
                               skip_bad=args.skip_bad, nonfinite=args.nonfinite, progress=Progress(1, "image", args.quiet),
                               log=print)
        failures = [Failure(**f) for f in results.get("failures", [])]
        where = ""
        if args.json:
            write_json(args.json, results)
            csv_path = failures and write_failures(os.path.join(os.path.dirname(os.path.abspath(args.json)), FAILURES_CSV), failures)
            where = f" (listed in {csv_path})" if csv_path else ""
    except (DatasetError, OSError, RunError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for failure in failures:
        print(f"failed: {failure.line()}", file=sys.stderr)
    scored = len(next(iter(results.get("per_image", {}).values()), [])) if "per_image" in results else None
    counted = f"{scored} image(s) scored" if scored is not None else "scored"
    print(f"{counted}, {len(failures)} pair(s) failed{where}" + (f"; results in {args.json}" if args.json else ""))
    if not args.json:
        print("next: add --json results.json to keep the scores (per image too)")
    return 1 if failures and not args.skip_bad else 0
