"""Checked value types: the domain of each setting, one object per domain.

Each type turns a value (a flag's text, or a value read from a settings file) into a checked
value or raises `argparse.ArgumentTypeError` naming what it must be. `TrainConfig.validate` checks
settings with them (`check`); the command lines (`keras_litenext.cli.args`) give them to argparse
as flag types, so a value is refused alike wherever it comes from. Every type carries its
domain (`kind`, `low`, `high`, ...) so a test can generate values outside it.
"""

import argparse
import math
import os

__all__ = [
    "check", "file_name", "float_range", "floats", "host_port", "int_range", "ints", "nonnegative_float", "nonnegative_int", "one_line",
    "open_fraction", "positive_float", "positive_int", "suffix",
]


class _Type:
    """A callable argparse `type` with a readable name (argparse shows `__name__`)."""

    kind = "text"

    def __call__(self, value):
        try:
            return self.convert(value)
        except argparse.ArgumentTypeError:
            raise
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {self.describe}, got {value!r}") from None

    def fail(self, value):
        raise argparse.ArgumentTypeError(f"must be {self.describe}, got {value!r}")

    @property
    def __name__(self):
        return self.describe

    def __repr__(self):
        return f"<{self.describe}>"


class int_range(_Type):
    """A whole number in `[low, high]` (either bound may be None)."""

    kind = "int"

    def __init__(self, low=None, high=None):
        self.low, self.high = low, high
        if low is not None and high is not None:
            self.describe = f"a whole number from {low} to {high}"
        elif low is not None:
            self.describe = f"a whole number >= {low}"
        else:
            self.describe = "a whole number" + (f" <= {high}" if high is not None else "")

    def convert(self, value):
        if isinstance(value, bool):
            self.fail(value)
        if isinstance(value, str):
            number = int(value.strip())
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            self.fail(value)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            self.fail(value)
        return number


class float_range(_Type):
    """A finite number between `low` and `high` (`low_open` / `high_open`: the bound excluded)."""

    kind = "float"

    def __init__(self, low=-math.inf, high=math.inf, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        lo = "" if low == -math.inf else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high == math.inf else f"{'<' if high_open else '<='} {high:g}"
        if lo and hi:
            self.describe = f"a number {'in (' if low_open else 'in ['}{low:g}, {high:g}{')' if high_open else ']'}"
        else:
            self.describe = "a finite number" + (f" {lo or hi}" if lo or hi else "")

    def convert(self, value):
        if isinstance(value, bool):
            self.fail(value)
        number = float(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(number):
            self.fail(value)
        if number < self.low or (self.low_open and number == self.low):
            self.fail(value)
        if number > self.high or (self.high_open and number == self.high):
            self.fail(value)
        return number


class floats(_Type):
    """Comma-separated numbers (a JSON list in a settings file): `count` of them, each >= `low`,
    summing to `total` (within 1e-6) when given."""

    kind = "floats"

    def __init__(self, count=None, low=0.0, total=None):
        self.count, self.low, self.total = count, low, total
        self.item = float_range(low=low)
        self.describe = (f"{count} comma-separated numbers" if count else "comma-separated numbers") + f" >= {low:g}"
        if total is not None:
            self.describe += f" summing to {total:g}"

    def convert(self, value):
        items = value.split(",") if isinstance(value, str) else list(value)
        numbers = tuple(self.item.convert(v) for v in items)
        if not numbers or (self.count and len(numbers) != self.count):
            self.fail(value)
        if self.total is not None and abs(sum(numbers) - self.total) > 1e-6:
            self.fail(value)
        return numbers


class ints(_Type):
    """Comma-separated whole numbers, at least one, each >= `low` (e.g. thread counts, sizes)."""

    kind = "ints"

    def __init__(self, low=None):
        self.item = int_range(low)
        self.describe = "comma-separated whole numbers" + (f" >= {low}" if low is not None else "")

    def convert(self, value):
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        numbers = [self.item.convert(v) for v in items]
        if not numbers:
            self.fail(value)
        return numbers


class suffix(_Type):
    """Text that becomes part of a file name: no path separator, no NUL."""

    kind = "suffix"

    def __init__(self, allow_empty=True):
        self.allow_empty = allow_empty
        self.describe = "text without '/'" + ("" if allow_empty else ", not empty")

    def convert(self, value):
        if not isinstance(value, str) or "\0" in value or "/" in value or os.sep in value or (not value and not self.allow_empty):
            self.fail(value)
        if value in (".", ".."):
            self.fail(value)
        return value


class _HostPort(_Type):
    """`HOST:PORT` (a host name or address, a port 1-65535); IPv6 in brackets, `[::1]:12355`."""

    kind = "host_port"
    describe = "HOST:PORT with a port from 1 to 65535, e.g. 10.0.0.1:12355"

    def convert(self, value):
        host, _, port = str(value).strip().rpartition(":")
        if not host or any(c.isspace() for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
            self.fail(value)
        return f"{host}:{int(port)}"


host_port = _HostPort()
positive_int = int_range(1)
nonnegative_int = int_range(0)
positive_float = float_range(0.0, low_open=True)
nonnegative_float = float_range(0.0)
open_fraction = float_range(0.0, 1.0, low_open=True, high_open=True)  # a probability threshold
file_name = suffix(allow_empty=False)


def check(flag, kind, value):
    """`kind(value)`, or a `ValueError` naming `flag` (for settings read from a file)."""
    try:
        return kind(value)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{flag}: {err}") from None


def one_line(err):
    """The first line of an exception's message, or its class name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
