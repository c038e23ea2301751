"""Score a trained run on a split of its data: the `keras-litenext evaluate` command (see `keras_litenext/cli/evaluate.py`)."""
import sys

__keras_litenext_command__ = True  # the command: the package starts quietly (keras_litenext.cli.quiet_start)
from keras_litenext.cli.evaluate import build_parser as parser, main  # noqa: E402, F401  (parser: the flags tests walk)

if __name__ == "__main__":
    sys.exit(main())
