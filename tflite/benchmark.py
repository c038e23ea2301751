"""Time TFLite files with LiteRT: the `keras-litenext benchmark` command (see `keras_litenext/cli/benchmark.py`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

from keras_litenext.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
