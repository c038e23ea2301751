"""Train a model: the `keras-litenext fit` command (see `keras_litenext/cli/fit.py`)."""
import sys
from keras_litenext.cli.fit import main
if __name__ == "__main__":
    sys.exit(main())
