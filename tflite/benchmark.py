"""Time TFLite files with LiteRT: the `keras-litenext benchmark` command (see `keras_litenext/cli/benchmark.py`)."""
import sys

__keras_litenext_command__ = True  # the command: the package starts quietly (keras_litenext.cli.quiet_start)
from keras_litenext.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
