"""Predict masks for a folder of images: the `keras-litenext predict` command (see `keras_litenext/cli/predict.py`)."""
import sys

__keras_litenext_command__ = True  # the command: the package starts quietly (keras_litenext.cli.quiet_start)
from keras_litenext.cli.predict import build_parser as parser, main  # noqa: E402, F401  (parser: the flags tests walk)

if __name__ == "__main__":
    sys.exit(main())
