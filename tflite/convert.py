"""Export a run to phone files: the `keras-litenext export` command (see `keras_litenext/cli/export.py`)."""
import sys

__keras_litenext_command__ = True  # the command: the package starts quietly (keras_litenext.cli.quiet_start)
from keras_litenext.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
