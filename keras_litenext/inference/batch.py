"""What a batch over many files reports: the items that failed (`Failure`, `failures.csv`), a
progress bar with a rate and the time left (`Progress`), and the outcome (`BatchResult`).

The rule: a batch (predict, evaluate) goes on past an item that cannot be read, predicted or
written; everything else is done and written, and the failed items are listed at the end, one
line each, and in `failures.csv` (columns `item,stage,reason`; stage `read`, `predict` or `write`).
"""

import csv
import dataclasses
import io
import os
import sys
import time

from keras_litenext.utils import atomic_path

FAILURES_CSV = "failures.csv"
STAGES = ("read", "predict", "write")


@dataclasses.dataclass
class Failure:
    """An item that failed: the file (or pair), the stage (`STAGES`) and a one-line reason."""

    item: str
    stage: str
    reason: str

    def line(self):
        return f"{self.item} ({self.stage}): {self.reason}"

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BatchResult:
    """What a batch did: the files written, the items done, the failures and where the files are."""

    written: list
    done: int
    failures: list
    output: str

    @property
    def ok(self):
        return not self.failures


def reason_of(err, item=None):
    """The one-line reason of an exception (never a traceback), without a leading `item: `."""
    text = str(err).strip()
    if item and text.startswith(f"{item}: "):
        text = text[len(item) + 2:]
    text = (text.splitlines() or [""])[0]
    known = isinstance(err, (ValueError, OSError)) and text
    return text if known else f"{type(err).__name__}: {text}".rstrip(": ")


def write_failures(path, failures):
    """Write `failures` to the CSV file `path` (atomically); with none, remove an old one."""
    if not failures:
        if os.path.exists(path):
            os.remove(path)
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("item", "stage", "reason"))
    writer.writerows((f.item, f.stage, f.reason) for f in failures)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    return path


class Progress:
    """A one-line progress bar on stderr: done/total, the rate and the time left; silent when
    stderr is not a terminal or with `quiet` (then only the summary line is printed)."""

    def __init__(self, total, unit="file", quiet=False, stream=None, width=24):
        self.total, self.unit, self.width = max(int(total), 1), unit, width
        self.stream = stream or sys.stderr
        self.shown = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = 0

    def update(self, done=None, failed=0):
        self.done = self.done + 1 if done is None else done
        if not self.shown:
            return
        seconds = time.perf_counter() - self.start
        rate = self.done / seconds if seconds > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(self.width * self.done / self.total)
        bar = "=" * filled + (">" if filled < self.width else "") + "." * max(self.width - filled - 1, 0)
        extra = f", {failed} failed" if failed else ""
        self.stream.write(f"\r{self.done}/{self.total} [{bar}] {rate:.1f} {self.unit}/s, {_clock(left)} left{extra}  ")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _clock(seconds):
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
