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

A file that cannot be read, predicted or written does not stop the others: everything else is
written, the failed files are listed at the end with their one-line reason and in
OUT/failures.csv (item,stage,reason), and the exit status is 1. A progress bar (count, rate, time
left) is shown on a terminal unless --quiet. --nonfinite (DICOM/NIfTI): NaN/inf in an image
volume become its lowest finite value with a note (minimum, the run's default) or fail the file
(error).
"""

import argparse
import os
import sys

from keras_litenext.cli import args as cli
from keras_litenext.data import DatasetError
from keras_litenext.inference import MODES, predict_folder
from keras_litenext.inference.batch import FAILURES_CSV, Progress
from keras_litenext.presets import PresetError, list_presets, open_preset, preset_path
from keras_litenext.runs import RunError


def preset(value):
    """argparse type: a bundled preset's name or a preset folder (its folder)."""
    try:
        return preset_path(value)
    except PresetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser():
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
    p.add_argument("--nonfinite", choices=("minimum", "error"),
                   help="DICOM/NIfTI: NaN/inf become the volume's lowest finite value with a note (minimum), or the file fails "
                   "(error) (default: the run's setting, else minimum)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal)")
    return p


def main(argv=None):
    """`keras-litenext predict ...`: returns the exit status: 0, or 1 after a one-line error or when
    any file failed (the others are all written; the failed ones are listed and in failures.csv)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.preset is not None and args.images is None:
        args.model, args.images = None, args.model
    if args.preset is not None and args.model is not None:
        p.error("give either MODEL or --preset, not both")
    if args.images is None:
        p.error("the following arguments are required: " + ("images" if args.model or args.preset else "model, images"))
    try:
        source = args.model if args.preset is None else open_preset(args.preset)
        progress = Progress(1, quiet=args.quiet)  # predict_folder sets the count
        result = predict_folder(source, args.images, args.output, mode=args.mode, overlap=args.overlap, tta=args.tta,
                                threshold=args.threshold, overwrite=args.overwrite, nonfinite=args.nonfinite,
                                progress=progress)
    except (DatasetError, OSError, RunError, PresetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return report(result)


def report(result):
    """Print the failures (one line each), the summary line and the next command; the exit status."""
    for failure in result.failures:
        print(f"failed: {failure.line()}", file=sys.stderr)
    failed = f", {len(result.failures)} failed (listed in {os.path.join(result.output, FAILURES_CSV)})" if result.failures else ""
    print(f"{result.done} file(s) predicted, {len(result.written)} file(s) written to {result.output}{failed}")
    masks = [p for p in result.written if p.endswith("_mask.png")]
    if masks:
        print(f"next: open {result.output}/*_overlay.png to view them; load a mask with cv2.imread({masks[0]!r}, 0)")
    elif result.written and result.written[0].endswith(".csv"):
        print(f"next: the class probabilities are in {result.written[0]}")
    elif result.written:
        print(f"next: open {result.written[0]} on top of its source in ITK-SNAP or 3D Slicer")
    return 1 if result.failures else 0
