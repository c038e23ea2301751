"""Export a run to phone files: the `keras-litenext export` command (see `keras_litenext/cli/export.py`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

from keras_litenext.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
