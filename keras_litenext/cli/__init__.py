"""The `keras-litenext` command: one verb per stage, each a thin layer over the library.

    keras-litenext fit [--data FOLDER] ...        train a model (`keras_litenext.cli.fit`)
    keras-litenext evaluate RUN ...               score a run on its test split (`cli.evaluate`)
    keras-litenext predict RUN INPUT ...          masks or class scores for images (`cli.predict`)
    keras-litenext export RUN ...                 int8 / fp16 / fp32 phone files (`cli.export`)
    keras-litenext benchmark FILE.tflite ...      latency of TFLite files (`cli.benchmark`)
    keras-litenext web RUN_OR_FILE ...            the file in a browser page (`cli.web`)

`python -m keras_litenext VERB ...` is the same command; `training/fit.py`, `training/evaluate.py`,
`training/predict.py`, `tflite/convert.py` and `tflite/benchmark.py` in a clone call the same
`main` functions. Each verb's module imports TensorFlow only when it runs, so `--help` of the
command itself is quick.

The command starts quietly: `quiet_start` (called by the package's `__init__` before its first
TensorFlow import, when the process is the command) keeps TensorFlow's C++ start-up lines (absl's
pre-init warning, `cudart_stub`, `cpu_feature_guard`, `cuInit`) out of the output unless
`--verbose` is on the command line. Library users' processes are left as they are.
"""

import importlib
import os
import sys

from keras_litenext.notes import filtered_stderr, quiet_native

COMMAND_MARK = "__keras_litenext_command__"  # set in a script's globals (training/*.py, tflite/*.py): it is the command


def is_command():
    """Whether this process is the `keras-litenext` command (entry point, `python -m keras_litenext`, or a
    `training/` / `tflite/` script), as opposed to a program importing the library."""
    if os.path.basename(sys.argv[0] if sys.argv else "").startswith("keras-litenext"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    if any(a == "-m" and b.split(".")[0] == "keras_litenext" for a, b in zip(orig, orig[1:])):
        return True
    return bool(getattr(sys.modules.get("__main__"), COMMAND_MARK, False))


def verbose_asked(argv=None):
    """`--verbose` among the arguments (or `--verbose=N`, `--verbose N` with N not 0: export's
    `--verbose 0` asks for less output, not for TensorFlow's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--verbose":
            return i + 1 >= len(argv) or argv[i + 1] != "0"
        if a.startswith("--verbose="):
            return a != "--verbose=0"
    return False


def quiet_start(force=False):
    """Keep TensorFlow's C++ start-up lines out of the command's output: sets TF_CPP_MIN_LOG_LEVEL=3
    (and its kin) and imports TensorFlow with file descriptor 2 caught, writing back every caught
    line but the known start-up ones. Does nothing for a library user (unless `force`), with
    `--verbose`, or once TensorFlow is imported."""
    if not (force or is_command()) or verbose_asked() or "tensorflow" in sys.modules:
        return False
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR"), ("GLOG_minloglevel", "3")):
        os.environ.setdefault(name, value)
    quiet_native(True)  # LiteRT's own start-up line (its XNNPACK delegate) is caught where it is made
    with filtered_stderr():
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        import logging

        logging.getLogger("absl").setLevel(logging.ERROR)  # the converter's Python-side absl warnings
        tf.config.list_physical_devices()  # the driver probe (cuInit) logs here
    return True


VERBS = {
    "fit": "train a model on a folder of images (and masks)",
    "evaluate": "score a trained run on its test split or another folder",
    "predict": "predict masks or class scores for images, folders, DICOM/NIfTI files",
    "export": "write int8 / fp16 / fp32 TFLite files with their report and quality gate",
    "benchmark": "time TFLite files with LiteRT",
    "web": "a static web page that runs a TFLite file in the browser (build, serve, check)",
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
