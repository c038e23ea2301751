"""How dataset problems are reported: `DatasetError`, the per-file reason, name lists, and the
one rule for unusable files (raise with every line, or skip them with one warning)."""

from keras_litenext.notes import note

SHOW = 5  # how many names an error message lists before "and N more"


class DatasetError(ValueError):
    """A dataset problem, with a human message naming the file(s) and what is wrong."""


class MaskError(ValueError):
    """A mask file whose values do not fit the task (the message says which values)."""


class BadFile(Exception):
    """Internal: a per-file problem (reason text) that becomes one report line."""


def examples(names, show=SHOW):
    """'a, b, c' or 'a, b, c and 7 more'."""
    names = list(names)
    text = ", ".join(names[:show])
    if len(names) > show:
        text += f" and {len(names) - show} more"
    return text


def load_failure(err):
    """The one-line reason for an unexpected exception while loading a file (never a traceback)."""
    return f"cannot be loaded ({type(err).__name__}: {err})".splitlines()[0]


def unusable(summary, problems, kept, skip_bad, none_left=True):
    """Reports the unusable files of a scan: a `DatasetError` listing them one per line after
    ``summary`` unless ``skip_bad``; with ``skip_bad`` one warning naming the first few (and a
    `DatasetError` when ``none_left`` and nothing is kept)."""
    if not skip_bad:
        raise DatasetError(f"{summary} (pass --skip-bad / skip_bad=True to skip them):\n" + "\n".join(problems))
    if none_left and not kept:
        raise DatasetError(f"{summary}, none left to use:\n" + "\n".join(problems))
    note(
        f"{summary}; skipping them and keeping {kept}: " + "; ".join(problems[:SHOW])
        + (f"; and {len(problems) - SHOW} more" if len(problems) > SHOW else ""),
        stacklevel=3,
    )
