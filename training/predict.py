"""Predict masks for a folder of images: the `keras-litenext predict` command (see `keras_litenext/cli/predict.py`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output
from keras_litenext.cli.predict import build_parser as parser, main  # noqa: E402, F401  (parser: the flags tests walk)

if __name__ == "__main__":
    sys.exit(main())
