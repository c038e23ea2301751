"""`python -m keras_litenext VERB ...`: the `keras-litenext` command."""

import sys

from keras_litenext.cli import main

if __name__ == "__main__":
    sys.exit(main())
