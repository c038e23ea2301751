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

A segmentation also writes OUT/predictions.csv (--format parquet: .parquet), one row per image
written: its size, per class its pixels, its area in mm² (a 2-D image of known spacing) or volume
in ml (a volume), and the model file's sha256; the rows of other images that earlier runs wrote
into OUT are kept.

Archive scale: with --runner the same work runs as an Apache Beam pipeline (pip install
"keras-litenext[beam]"; docs/beam.md). INPUT is then a file pattern on any Beam file system, MODEL
may also be a .tflite file (run by LiteRT), and the options the command does not know are the
runner's own (give them as --name=value):

    keras-litenext predict runs/my-run 'scans/*.png' --output out/ --runner DirectRunner \
        --direct_num_workers=2 --direct_running_mode=multi_processing
    keras-litenext predict gs://b/run 'gs://b/archive/**/*.dcm' --output gs://b/labels/ --runner DataflowRunner \
        --project=my-project --region=europe-west1 --temp_location=gs://b/tmp
"""

import argparse
import importlib.util
import os
import sys

from keras_litenext.cli import args as cli
from keras_litenext.data import DatasetError
from keras_litenext.inference import MODES, predict_folder
from keras_litenext.inference.batch import FAILURES_CSV, Progress
from keras_litenext.inference.rows import ROWS_FORMATS, model_sha256
from keras_litenext.presets import PresetError, list_presets, open_preset, preset_path
from keras_litenext.runs import RunError
from keras_litenext.runs.checks import one_line


def preset(value):
    """argparse type: a bundled preset's name or a preset folder (its folder)."""
    try:
        return preset_path(value)
    except PresetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser(pipeline=False):
    """The flags; `pipeline` (--runner given): MODEL and INPUT are locations on any Beam file system."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = cli.location if pipeline else cli.existing_path
    p.add_argument("model", type=where, nargs="?",
                   help="run folder of training/fit.py, or a .keras file (with --runner: or a .tflite file) (not with --preset)")
    p.add_argument("images", type=where, nargs="?", help="an image file, or a folder of images (with --runner: a file pattern)")
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
    p.add_argument("--format", default="csv", choices=ROWS_FORMATS, help="the rows file: predictions.csv or .parquet (default: %(default)s)")
    p.add_argument("--runner", choices=RUNNERS,
                   help="run as an Apache Beam pipeline on this runner; other unknown options are the runner's (docs/beam.md)")
    p.add_argument("--batch-size", type=cli.positive_int, default=8,
                   help="with --runner: the most images in one RunInference batch (default: %(default)s)")
    return p


RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")  # the runners docs/beam.md shows


def _runner_given(argv):
    return any(a == "--runner" or a.startswith("--runner=") for a in argv)


def main(argv=None):
    """`keras-litenext predict ...`: returns the exit status: 0, or 1 after a one-line error or when
    any file failed (the others are all written; the failed ones are listed and in failures.csv)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pipeline = _runner_given(argv)
    p = build_parser(pipeline)
    args, extra = p.parse_known_args(argv) if pipeline else (p.parse_args(argv), [])
    if args.preset is not None and args.images is None:
        args.model, args.images = None, args.model
    if args.preset is not None and args.model is not None:
        p.error("give either MODEL or --preset, not both")
    if args.images is None:
        p.error("the following arguments are required: " + ("images" if args.model or args.preset else "model, images"))
    if args.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        print('error: --format parquet needs pyarrow: pip install "keras-litenext[beam]"', file=sys.stderr)
        return 1
    if pipeline:
        unknown = [a for a in extra if not a.startswith("--")]
        if unknown:
            p.error(f"unrecognized arguments: {' '.join(unknown)} (give the runner's options as --name=value)")
        return run_pipeline(args, extra)
    try:
        source = args.model if args.preset is None else open_preset(args.preset)
        progress = Progress(1, quiet=args.quiet)  # predict_folder sets the count
        result = predict_folder(source, args.images, args.output, mode=args.mode, overlap=args.overlap, tta=args.tta,
                                threshold=args.threshold, overwrite=args.overwrite, nonfinite=args.nonfinite,
                                progress=progress, rows_format=args.format, model_digest=model_sha256(args.model or args.preset))
    except (DatasetError, OSError, RunError, PresetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return report(result)


def run_pipeline(args, beam_args):
    """`predict ... --runner R [runner options]`: the Beam pipeline (`inference.beam`); the exit status."""
    if importlib.util.find_spec("apache_beam") is None:
        print("error: --runner needs Apache Beam: pip install \"keras-litenext[beam]\"", file=sys.stderr)
        return 1
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # Beam's INFO and WARNING lines (workers log their own)
    from apache_beam.options.pipeline_options import PipelineOptions

    from keras_litenext.inference import beam as beam_lib
    from keras_litenext.inference.beam_handlers import ModelSource, PredictOptions
    from keras_litenext.presets import BUNDLED

    if args.preset is not None:  # a bundled preset by its name: the workers have the package, not this folder
        bundled = os.path.dirname(os.path.abspath(args.preset)) == os.path.abspath(BUNDLED)
        source = ModelSource(os.path.basename(args.preset) if bundled else args.preset, preset=True)
    else:
        source = ModelSource(args.model)
    options = PredictOptions(args.mode, args.overlap, args.tta, args.threshold, args.nonfinite, args.batch_size)
    try:
        result = beam_lib.run(source, args.images, args.output, options, fmt=args.format, overwrite=args.overwrite,
                              pipeline_options=PipelineOptions([f"--runner={args.runner}", *beam_args]))
    except Exception as err:  # noqa: BLE001  (the model, the pattern, the runner: one line, never a traceback)
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return report(result, written=result.files_written or 0)


def report(result, written=None):
    """Print the failures (one line each), the summary line and the next command; the exit status.
    `written`: the count of files written, when `result.written` does not list them (a pipeline)."""
    for failure in result.failures:
        print(f"failed: {failure.line()}", file=sys.stderr)
    failed = f", {len(result.failures)} failed (listed in {os.path.join(result.output, FAILURES_CSV)})" if result.failures else ""
    count = len(result.written) if written is None else written + len(result.written)
    print(f"{result.done} file(s) predicted, {count} file(s) written to {result.output}{failed}")
    if written is not None:
        if result.written:
            print(f"next: the rows are in {result.written[0]}; the masks and label files beside it")
        return 1 if result.failures else 0
    masks = [p for p in result.written if p.endswith("_mask.png")]
    if masks:
        print(f"next: open {result.output}/*_overlay.png to view them; load a mask with cv2.imread({masks[0]!r}, 0)")
    elif result.written and result.written[0].endswith(".csv"):
        print(f"next: the class probabilities are in {result.written[0]}")
    elif result.written:
        print(f"next: open {result.written[0]} on top of its source in ITK-SNAP or 3D Slicer")
    return 1 if result.failures else 0
