"""Notes for the user: one line naming the file (or folder) and what to do, printed as
``note: <text>`` instead of Python's ``path:line: UserWarning: <text>`` with its source line;
and the native libraries' start-up lines kept out of a command's output (`filtered_stderr`).

`note(text)` raises a `Note` warning (a `UserWarning`, so ``pytest.warns(UserWarning)`` and the
warnings filters treat it like any other); importing this module teaches `warnings.formatwarning`
that one format, and leaves every other warning as Python shows it.
"""

import os
import sys
import warnings

__all__ = ["NOISE", "Note", "filtered_stderr", "native_quiet", "note", "quiet_native"]

# TensorFlow's C++ start-up lines (printed by absl before its logging is set up, so
# TF_CPP_MIN_LOG_LEVEL alone does not hold them back) and LiteRT's one line on its CPU delegate
NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "cpu_feature_guard.cc",
         "rebuild TensorFlow with the appropriate compiler flags", "failed call to cuInit", "cuda_executor.cc",
         "Unable to register cuDNN factory", "Unable to register cuFFT factory", "Unable to register cuBLAS factory",
         "computation placer already registered", "oneDNN custom operations are on",
         "Created TensorFlow Lite XNNPACK delegate for CPU")
_QUIET = {"native": False}


def quiet_native(on):
    """Whether `native_quiet()` catches native start-up lines (set by the command, not the library)."""
    _QUIET["native"] = bool(on)


def native_quiet():
    """A context that keeps native start-up lines out of stderr when the command asked for it,
    else does nothing (a library user's process is left as it is)."""
    import contextlib

    return filtered_stderr() if _QUIET["native"] else contextlib.nullcontext()


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


class filtered_stderr:
    """Catches file descriptor 2 (C++ writes) in a temporary file; on exit writes the lines that are
    not start-up noise back to the real stderr."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        try:
            self.saved, self.file = os.dup(2), tempfile.TemporaryFile()
            os.dup2(self.file.fileno(), 2)
        except OSError:  # no file descriptor 2 to catch (a closed stderr): nothing to filter
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            return False
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        lines = self.file.read().decode("utf-8", "replace").splitlines(keepends=True)
        self.file.close()
        kept = "".join(line for line in lines if not any(n in line for n in NOISE))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()
        return False
