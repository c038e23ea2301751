"""The `keras-litenext` command: one verb per stage, each a thin layer over the library.

    keras-litenext fit [--data FOLDER] ...        train a model (`keras_litenext.cli.fit`)
    keras-litenext evaluate RUN ...               score a run on its test split (`cli.evaluate`)
    keras-litenext predict RUN INPUT ...          masks or class scores for images (`cli.predict`)
    keras-litenext export RUN ...                 int8 / fp16 / fp32 phone files (`cli.export`)
    keras-litenext benchmark FILE.tflite ...      latency of TFLite files (`cli.benchmark`)

`python -m keras_litenext VERB ...` is the same command; `training/fit.py`, `training/evaluate.py`,
`training/predict.py`, `tflite/convert.py` and `tflite/benchmark.py` in a clone call the same
`main` functions. Each verb's module imports TensorFlow only when it runs, so `--help` of the
command itself is quick.
"""

import importlib
import sys

VERBS = {
    "fit": "train a model on a folder of images (and masks)",
    "evaluate": "score a trained run on its test split or another folder",
    "predict": "predict masks or class scores for images, folders, DICOM/NIfTI files",
    "export": "write int8 / fp16 / fp32 TFLite files with their report and quality gate",
    "benchmark": "time TFLite files with LiteRT",
}


def _usage():
    from keras_litenext.version import __version__

    lines = [f"usage: keras-litenext VERB [options]   (keras-litenext {__version__})", "", "verbs:"]
    lines += [f"  {verb:<10} {text}" for verb, text in VERBS.items()]
    lines += ["", "`keras-litenext VERB --help` lists a verb's options."]
    return "\n".join(lines)


def main(argv=None):
    """Run `keras-litenext VERB ...`; returns the verb's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from keras_litenext.version import __version__

        print(f"keras-litenext {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"keras-litenext: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"keras_litenext.cli.{verb}")
    sys.argv[0] = f"keras-litenext {verb}"  # argparse's prog: usage lines name the command as typed
    return module.main(rest)
