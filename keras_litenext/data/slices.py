"""What the DICOM and NIfTI readers share: `Slices`, `MedicalError` and the optional imports."""

__all__ = ["MedicalError", "Slices", "first_line", "require"]


class MedicalError(ValueError):
    """A DICOM/NIfTI file that cannot be used (the message is the reason, without the path)."""


def require(module, extra):
    try:
        return __import__(module)
    except ImportError:
        raise MedicalError(f"needs {module}: pip install \"keras-litenext[{extra}]\" (or pip install {module})") from None


def first_line(err, limit=200):
    """``Type: first line`` of an exception, at most `limit` characters (whole words)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Slices:
    """The 2-D slices of a file as stored, `(S, H, W)` or `(S, H, W, 3)` RGB, with what the file
    says about them: `spacing` `(row, column)` in mm or None, `thickness` (mm between slices) or
    None, `window` `(low, high)` (DICOM's own) or None, `invert` (MONOCHROME1)."""

    def __init__(self, array, spacing=None, thickness=None, window=None, invert=False, rgb=False):
        self.array, self.spacing, self.thickness = array, spacing, thickness
        self.window, self.invert, self.rgb = window, invert, rgb

    def __len__(self):
        return len(self.array)
