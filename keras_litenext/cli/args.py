"""Argument types of the command-line tools, checked when the command line is parsed.

Each type turns a flag's text into a value or raises `argparse.ArgumentTypeError`, so argparse
prints one line naming the flag (``argument --epochs: must be a whole number >= 1, got '0'``)
and exits with status 2 before any work starts. The value types live in the library
(`keras_litenext.runs.checks`), where `TrainConfig.validate` checks settings read from a JSON file
with the same objects (`check`), so a value is refused alike wherever it comes from; this module
adds what only a command line needs (paths that must exist, name lists, one-line errors).

    p.add_argument("--epochs", type=cli.positive_int)
    p.add_argument("--threshold", type=cli.open_fraction)
    p.add_argument("--split", type=cli.floats(count=3, low=0.0, total=1.0))

Every type carries its domain (`kind`, `low`, `high`, ...) so a test can generate values
outside it.
"""

import argparse
import os

from keras_litenext.runs.checks import (  # noqa: F401  (the value types, shared with TrainConfig.validate)
    _Type,
    check,
    file_name,
    float_range,
    floats,
    host_port,
    int_range,
    nonnegative_float,
    nonnegative_int,
    one_line,
    open_fraction,
    positive_float,
    positive_int,
    suffix,
)

__all__ = [
    "ArgumentParser", "check", "existing_dir", "existing_file", "existing_path", "file_name", "float_range", "floats", "host_port", "int_range",
    "location", "names", "nonnegative_float", "nonnegative_int", "one_line", "open_fraction", "output_path", "positive_float",
    "positive_int", "suffix",
]


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line, `prog: error: argument --epochs:
    must be ... (see --help)`, without the usage block; exit status 2 as argparse's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class names(_Type):
    """Comma-separated names, each one of `choices`, including every one of `required`."""

    kind = "names"

    def __init__(self, choices, required=()):
        self.choices, self.required = tuple(choices), tuple(required)
        self.describe = "comma-separated names from " + ", ".join(self.choices)
        if self.required:
            self.describe += " including " + ", ".join(self.required)

    def convert(self, value):
        items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
        if not items or any(v not in self.choices for v in items) or any(r not in items for r in self.required):
            self.fail(value)
        return items


class _Path(_Type):
    kind = "path"

    def __init__(self, what, test):
        self.describe, self.test = what, test

    def convert(self, value):
        value = os.fspath(value)
        if not value or not self.test(value):
            self.fail(value)
        return value


class _Location(_Type):
    """A path, file pattern or URL of any Apache Beam file system (`gs://bucket/scans/**/*.dcm`):
    not empty, one line; it need not exist here (the pipeline's workers read it)."""

    kind = "location"
    describe = "a path, file pattern or URL (gs://...)"

    def convert(self, value):
        value = os.fspath(value)
        if not value.strip() or any(c in value for c in "\0\n\r"):
            self.fail(value)
        return value


location = _Location()
existing_path = _Path("an existing file or folder", os.path.exists)
existing_file = _Path("an existing file", os.path.isfile)
existing_dir = _Path("an existing folder", os.path.isdir)
output_path = _Path("a folder path (not an existing file)", lambda p: not os.path.isfile(p))
