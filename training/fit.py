"""Train a model: the `keras-litenext fit` command (see `keras_litenext/cli/fit.py`)."""
import sys

__keras_litenext_command__ = True  # the command: the package starts quietly (keras_litenext.cli.quiet_start)
from keras_litenext.cli.fit import main
if __name__ == "__main__":
    sys.exit(main())
