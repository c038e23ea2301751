"""Convert a trained run to deployable TFLite files, evaluate them and write a report.

    python tflite/convert.py runs/litenext-dsb2018_96-20261122-101500
    python tflite/convert.py runs/my-run --output deploy/ --io uint8 --qat-epochs 5
    python tflite/convert.py model.keras --data path/to/dataset

Writes, into --output (default RUN/tflite):

    <name>_int8.tflite      int8, from quantization-aware fine-tuning (the file to ship)
    <name>_int8_ptq.tflite  int8, post-training quantized
    <name>_fp16.tflite      float16 weights
    <name>_fp32.tflite      float32
    <name>_qat.keras        the quantization-aware model (weights and int8 ranges)
    <file>.json             each file's I/O contract (classes, input scale/zero point, pixel
                            mapping, output shape, meaning and decoding, model and training data)
    <name>_labels.txt       the class names, class 0 first (also inside every .tflite)

Every .tflite carries TFLite metadata for MediaPipe Tasks (ImageSegmenter / ImageClassifier
load it as it is): RGB input with its normalisation, the labels, the segmenter activation
(sigmoid / softmax) and a description (model, training data, test metrics); --no-metadata
leaves it out.
The int8 files take uint8 camera pixels and end in a DEQUANTIZE (float32 logits) unless --io
says otherwise; a grey model's files take RGB and average it inside the graph.
    report.json, report.md  size, ops with dtypes, float-op count, XNNPACK partitions and
                            test-split Dice/IoU/HD95 of every file (per class too), next to the
                            float Keras model's

A run folder brings its dataset, image size, task (binary or multi-class, class names), loss
and splits (calibration and QAT use the train split, the rsqrt range and the kept QAT epoch the
val split, evaluation the test split). A .keras file needs --data and is split 80/10/10 (seed
42); its task is read off its output channels (class names from classes.json beside the data).

A classification run (an image classifier trained on class folders) is scored by test accuracy,
balanced accuracy and macro AUC instead, and its contract says: output (1, K) logits, softmax,
arg-max.

Exit status: 0 when the int8 file's test Dice (mean over the foreground classes) is within
--max-dice-drop points of the float model's and every class's within --max-class-drop
(classification: its test accuracy within --max-accuracy-drop points and its macro AUC within
--max-auc-drop); 3 when not, or when the float model itself scores at chance (the gate then
verifies nothing: "not verified", train longer); the files and the report are written all the
same; --force returns 0; 1 for bad input (one line on stderr).

A data file that cannot be read does not stop the export: it is left out of calibration,
fine-tuning and scoring (the gate judges the files on the test images that were read), listed
at the end, one line each, in report.json / report.md and in failures.csv, and the exit status
is 1 (after a failed gate, 3) unless --skip-bad.
"""

import argparse
import os
import sys

from keras_litenext.cli import args as cli
from keras_litenext.litert import FILE_KINDS, IO_TYPES, PHONE_IO

GATE_FAILED = 3
KINDS = tuple(FILE_KINDS)
IO_CHOICES = (PHONE_IO, *(t for t in IO_TYPES if t != PHONE_IO))  # the phone's I/O first


def main(argv=None) -> int:
    """Run the command on `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    return run(args)


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=cli.existing_path, help="run folder of training/fit.py, or a .keras file (then --data)")
    p.add_argument("--output", type=cli.output_path, help="output folder (default: SOURCE/tflite, or beside the .keras file)")
    p.add_argument("--data", type=cli.existing_dir, help="dataset folder (images/ + masks/); default: the run's")
    p.add_argument("--name", type=cli.file_name, help="file name prefix (default: the model's name)")
    p.add_argument("--io", default=PHONE_IO, choices=IO_CHOICES,
                   help="int8 files' input/output type (default uint8_float: uint8 camera pixels in, float32 logits out, "
                   "what MediaPipe Tasks read; int8, uint8 or float for both ends)")
    p.add_argument("--strict-int8", action="store_true",
                   help="int8 files with every op in int8, for accelerators that need a pure int8 graph (NPUs, DSPs); "
                   "by default the ops XNNPACK has in float only (RSQRT, GELU, SOFTMAX, ...) run as float islands inside it, the fastest file on a CPU")
    p.add_argument("--no-metadata", action="store_true",
                   help="leave the TFLite metadata (MediaPipe's labels, normalisation, activation) out of the files")
    p.add_argument("--qat-epochs", type=cli.nonnegative_int, default=3, help="quantization-aware fine-tuning epochs (default 3; 0 = calibration only)")
    p.add_argument("--qat-lr", type=cli.positive_float, default=1e-5, help="QAT peak learning rate (default 1e-5)")
    p.add_argument("--qat-retries", type=cli.nonnegative_int, default=2,
                   help="further QAT attempts when the int8 file misses the gate (more epochs, a learning rate 3x above and "
                        "below); the attempt with the best val score is kept, all are reported (default 2; 0 = one attempt)")
    p.add_argument("--calibration-images", type=cli.positive_int, default=200, help="training images used to calibrate int8 ranges (default 200)")
    p.add_argument("--max-dice-drop", type=cli.nonnegative_float, default=0.5,
                   help="quality gate: largest allowed drop of the int8 file's mean foreground Dice, in points (default 0.5)")
    p.add_argument("--max-class-drop", type=cli.nonnegative_float, default=1.0,
                   help="quality gate: largest allowed int8 Dice drop of any one foreground class, in points (default 1.0)")
    p.add_argument("--max-accuracy-drop", type=cli.nonnegative_float, default=1.0,
                   help="classification gate: largest allowed drop of the int8 file's test accuracy, in points (default 1.0)")
    p.add_argument("--max-auc-drop", type=cli.nonnegative_float, default=0.01,
                   help="classification gate: largest allowed drop of the int8 file's macro AUC, in AUC units (default 0.01)")
    p.add_argument("--kinds", type=cli.names(KINDS, required=("int8",)), default=list(KINDS),
                   help="comma-separated files to write (default all: int8,int8_ptq,fp16,fp32; int8 is required)")
    p.add_argument("--force", action="store_true", help="exit 0 even when the quality gate fails")
    p.add_argument("--skip-bad", action="store_true",
                   help="exit 0 although some data files could not be read (they are listed at the end and in failures.csv all "
                   "the same), and skip unpaired files with a warning (without it, unpaired files stop the export)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="LiteRT threads for the evaluation (default 2)")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="Keras verbosity of the fine-tuning (default 2; 0 also hides the progress bars); given at all, "
                   "TensorFlow's own start-up and C++ log lines show too")
    return p


def run(args):
    from keras_litenext import data as data_lib
    from keras_litenext.export import ConversionError, ExportError, export_run

    try:
        report = export_run(
            args.source, output=args.output, name=args.name, io=args.io, qat_epochs=args.qat_epochs, qat_lr=args.qat_lr, qat_retries=args.qat_retries,
            data=args.data, num_calibration=args.calibration_images, max_dice_drop=args.max_dice_drop,
            max_class_drop=args.max_class_drop, threads=args.threads, verbose=args.verbose,
            max_accuracy_drop=args.max_accuracy_drop, max_auc_drop=args.max_auc_drop,
            kinds=list(args.kinds), metadata=not args.no_metadata, int8_mode="strict" if args.strict_int8 else "cpu",
            skip_bad=args.skip_bad,
        )
    except (ExportError, ConversionError, data_lib.DatasetError, OSError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    print(f"Report: {os.path.join(report['output'], 'report.md')}")
    gate, failures = report["gate"], report.get("failures") or []
    if gate["passed"]:
        print(f"Quality gate passed: {gate['message']}.")
        _next_steps(report)
        status = 0
    else:
        word = "NOT VERIFIED" if gate.get("status") == "not verified" else "FAILED"
        print(f"Quality gate {word}: {gate['message']}." + (" (--force)" if args.force else ""), file=sys.stderr)
        if args.force:
            _next_steps(report)
        status = 0 if args.force else GATE_FAILED
    if failures:
        from keras_litenext.inference.batch import FAILURES_CSV, Failure

        for f in failures:
            print(f"failed: {Failure(f['item'], f['stage'], f['reason']).line()}", file=sys.stderr)
        print(f"{len(failures)} file(s) could not be read and were left out (listed in {os.path.join(report['output'], FAILURES_CSV)})"
              + ("; --skip-bad: not an error" if args.skip_bad else ""))
    return status or (1 if failures and not args.skip_bad else 0)


def _next_steps(report):
    """Where the files are and how to go on: the phone file, its loading, a prediction."""
    import shlex

    int8 = next((f["file"] for f in report.get("files", ()) if f.get("kind") == "int8"), None)
    if not int8:
        return
    path = os.path.join(report["output"], int8)
    print(f"The phone file is {path} (its contract beside it: {os.path.splitext(int8)[0]}.json). On a phone, load it with "
          f"MediaPipe Tasks' ImageSegmenter / ImageClassifier or the LiteRT Interpreter (docs/android.md). Next here: "
          f"keras-litenext benchmark {shlex.quote(report['output'])} (the files' speed), keras-litenext web {shlex.quote(path)} --serve "
          f"(in a browser), or in Python keras_litenext.litert.run_tflite(path, images).")

