"""Notes for the user: one line naming the file (or folder) and what to do, printed as
``note: <text>`` instead of Python's ``path:line: UserWarning: <text>`` with its source line.

`note(text)` raises a `Note` warning (a `UserWarning`, so ``pytest.warns(UserWarning)`` and the
warnings filters treat it like any other); importing this module teaches `warnings.formatwarning`
that one format, and leaves every other warning as Python shows it.
"""

import warnings

__all__ = ["Note", "note"]


class Note(UserWarning):
    """A one-line note for the user: the file and what to do (or why nothing is to be done)."""


def note(text, stacklevel=2):
    """Warn with `Note`; the text is made one line."""
    warnings.warn(" ".join(str(text).split("\n")), Note, stacklevel=stacklevel + 1)


def _format(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, Note):
        return f"note: {message}\n"
    return _FORMAT["previous"](message, category, filename, lineno, line)


_FORMAT = {"previous": warnings.formatwarning}
if getattr(warnings.formatwarning, "__module__", None) != __name__:  # once, also on a reload
    warnings.formatwarning = _format
