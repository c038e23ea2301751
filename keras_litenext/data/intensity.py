"""The intensity recipe: how stored pixel values become the network's input in [0, 1].

One small object, chosen per dataset, saved in the run's `config.json` (`TrainConfig.intensity`),
applied by training, evaluation, prediction and int8 calibration alike, and written into the
export contract so that an app maps its pixels the same way. Four kinds:

- `"uint8"` (the default, every run before recipes existed): ``x = p / 255``; a 16-bit file is
  first reduced to 8 bits (``round(p / 257)``), so it reaches the model with 256 levels.
- `"window"`: a fixed window ``x = clip((v - low) / (high - low), 0, 1)`` on the stored value
  ``v`` (after a DICOM's rescale slope and intercept: Hounsfield units for CT, e.g. ``-1000..400``);
  with no ``low``/``high`` every DICOM file's own WindowCenter/WindowWidth gives
  ``low = centre - width / 2``, ``high = centre + width / 2``.
- `"percentile"`: a per-image stretch between the ``low`` and ``high`` percentiles of the image
  (default 0.5 and 99.5), clipped to [0, 1].
- `"zscore"`: per image ``z = (v - mean) / std``, clipped to ``±clip`` standard deviations
  (default 3) and mapped affinely onto [0, 1]: ``x = (z + clip) / (2 clip)``. The network's
  input range stays [0, 1], which augmentation and the int8 input quantization assume.

Every kind but `"uint8"` keeps the data's dynamic range: the mapped image is stored as uint16
(65,536 levels) until `to_float` hands it to the model, so a 16-bit image reaches the model with
more than 256 levels. A DICOM with PhotometricInterpretation MONOCHROME1 is inverted after the
mapping (``x -> 1 - x``), so bright always means dense.

Example:
>>> recipe = Intensity.parse("window:-1000,400")
>>> recipe.to_dict()
{'kind': 'window', 'low': -1000.0, 'high': 400.0, 'norm_mean': -1000.0, 'norm_std': 1400.0}
"""

import dataclasses
import math
import os

import numpy as np

__all__ = ["KINDS", "Intensity", "IntensityError", "default_for", "to_float"]

KINDS = ("uint8", "window", "percentile", "zscore")
_DEFAULTS = {"percentile": (0.5, 99.5), "zscore": 3.0}


class IntensityError(ValueError):
    """An image the recipe cannot map, or a malformed recipe (one line)."""


def to_float(images):
    """float32 network input of stored images: uint8 ``/ 255``, uint16 (a recipe's) ``/ 65535``,
    float as it is."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if images.dtype == np.uint16:
        return images.astype(np.float32) / np.float32(65535.0)
    return images.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Intensity:
    """An intensity recipe (module docstring). Build with `parse`, `from_dict` or directly.

    Attributes:
        kind: one of `KINDS`.
        low, high: `"window"`: the window in stored units (None: each DICOM's own window);
            `"percentile"`: the percentiles (0..100).
        clip: `"zscore"`: standard deviations mapped onto [0, 1].
    """

    kind: str = "uint8"
    low: float | None = None
    high: float | None = None
    clip: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise IntensityError(f"intensity kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        low, high, clip = self.low, self.high, self.clip
        if self.kind == "percentile" and low is None and high is None:
            low, high = _DEFAULTS["percentile"]
        if self.kind == "zscore" and clip is None:
            clip = _DEFAULTS["zscore"]
        try:
            low, high, clip = (None if v is None else float(v) for v in (low, high, clip))
        except (TypeError, ValueError):
            raise IntensityError(f"intensity {self.kind}: low/high/clip must be numbers, got {self.low!r}, {self.high!r}, {self.clip!r}") from None
        if self.kind in ("uint8", "zscore") and (low is not None or high is not None):
            raise IntensityError(f"intensity {self.kind} takes no low/high")
        if self.kind != "zscore" and clip is not None:
            raise IntensityError(f"intensity {self.kind} takes no clip (z-score only)")
        if self.kind in ("window", "percentile"):
            if (low is None) != (high is None):
                raise IntensityError(f"intensity {self.kind} needs both low and high, got {low}, {high}")
            if low is not None and not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise IntensityError(f"intensity {self.kind} needs finite low < high, got {low:g}, {high:g}")
            if self.kind == "percentile" and not 0.0 <= low < high <= 100.0:
                raise IntensityError(f"intensity percentile needs 0 <= low < high <= 100, got {low:g}, {high:g}")
        if self.kind == "zscore" and not (math.isfinite(clip) and clip > 0):
            raise IntensityError(f"intensity zscore needs a positive clip, got {clip:g}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "clip", clip)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self):
        """`{"kind": ..., ...}` with the parameters the kind uses (JSON-able); a fixed linear map
        (8-bit, a window with its bounds) adds ``norm_mean`` / ``norm_std``: ``x = (v - norm_mean)
        / norm_std`` before the clip to [0, 1] (what TFLite NormalizationOptions can state)."""
        out = {"kind": self.kind}
        if self.kind in ("window", "percentile"):
            out.update(low=self.low, high=self.high)
        if self.kind == "zscore":
            out["clip"] = self.clip
        linear = self.linear()
        if linear is not None:
            out.update(norm_mean=linear[0], norm_std=linear[1])
        return out

    def linear(self):
        """`(mean, std)` when the recipe is the fixed map ``x = clip((v - mean) / std, 0, 1)``, else None."""
        if self.kind == "uint8":
            return 0.0, 255.0
        if self.kind == "window" and self.low is not None:
            return self.low, self.high - self.low
        return None

    @classmethod
    def from_dict(cls, values):
        """The recipe of a `to_dict` result; None or `{}` is the default (`"uint8"`)."""
        if values is None or isinstance(values, Intensity):
            return values or cls()
        if isinstance(values, str):
            return cls.parse(values)
        if not isinstance(values, dict):
            raise IntensityError(f"an intensity recipe is a dict like {{'kind': 'window', 'low': -1000, 'high': 400}}, got {values!r}")
        values = dict(values)
        derived = {k: values.pop(k) for k in ("norm_mean", "norm_std") if k in values}  # to_dict's, recomputed
        unknown = sorted(set(values) - {"kind", "low", "high", "clip"})
        if unknown:
            raise IntensityError(f"unknown intensity setting(s) {', '.join(unknown)} (expected kind, low, high, clip)")
        recipe = cls(**values) if values else cls()
        if derived and recipe.linear() is not None and any(
                not math.isclose(float(derived.get(k, v)), v, rel_tol=1e-9, abs_tol=1e-9) for k, v in zip(("norm_mean", "norm_std"), recipe.linear())):
            raise IntensityError(f"intensity norm_mean/norm_std {derived} disagree with {recipe} (they are derived from it)")
        return recipe

    @classmethod
    def parse(cls, text):
        """A recipe from its command-line form: ``uint8``, ``window`` (each DICOM's own),
        ``window:LOW,HIGH``, ``percentile`` / ``percentile:LOW,HIGH``, ``zscore`` / ``zscore:CLIP``."""
        kind, _, args = str(text).strip().partition(":")
        kind = kind.strip().lower().replace("-", "")
        if kind not in KINDS:
            raise IntensityError(f"--intensity {text!r}: the kind must be one of {', '.join(KINDS)} "
                                 "(e.g. window:-1000,400, percentile:0.5,99.5, zscore:3)")
        try:
            values = [float(v) for v in args.split(",")] if args.strip() else []
        except ValueError:
            raise IntensityError(f"--intensity {text!r}: the parameters must be numbers separated by commas") from None
        wanted = {"uint8": (0,), "window": (0, 2), "percentile": (0, 2), "zscore": (0, 1)}[kind]
        if len(values) not in wanted:
            raise IntensityError(f"--intensity {text!r}: {kind} takes {' or '.join(str(n) for n in wanted)} number(s), got {len(values)}")
        if kind == "zscore":
            return cls(kind, clip=values[0] if values else None)
        return cls(kind, *values)

    def __str__(self):
        if self.kind in ("window", "percentile") and self.low is not None:
            return f"{self.kind}:{self.low:g},{self.high:g}"
        if self.kind == "zscore":
            return f"zscore:{self.clip:g}"
        return self.kind

    # -- mapping -------------------------------------------------------------------------------
    @property
    def dtype(self):
        """How mapped images are stored: uint8 for `"uint8"`, else uint16."""
        return np.uint8 if self.kind == "uint8" else np.uint16

    def map(self, values, window=None, invert=False):
        """float32 ``x`` in [0, 1] of stored values ``(H, W[, C])`` (any numeric type).

        Args:
            values: the image as stored (after a DICOM's rescale).
            window: `(low, high)` of the file (a DICOM's own window) for a `"window"` recipe
                without its own.
            invert: a MONOCHROME1 image: ``x -> 1 - x`` after the mapping.

        Raises:
            IntensityError: a type or file the recipe cannot map, naming what to choose instead.
        """
        v = np.asarray(values)
        if v.dtype.kind not in "uif" and v.dtype != np.bool_:
            raise IntensityError(f"has pixel type {v.dtype}, not a number")
        if self.kind == "uint8":
            x = self._uint8(v).astype(np.float32) / np.float32(255.0)
        else:
            v = v.astype(np.float64)
            if not np.isfinite(v).all():
                raise IntensityError("holds NaN or infinite pixel values")
            if self.kind == "window":
                low, high = (self.low, self.high) if self.low is not None else (window or (None, None))
                if low is None:
                    raise IntensityError("has no window (WindowCenter/WindowWidth) of its own: pass --intensity window:LOW,HIGH")
                x = (v - low) / max(float(high) - float(low), 1e-12)
            elif self.kind == "percentile":
                lo, hi = np.percentile(v, [self.low, self.high])
                x = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
            else:  # zscore
                std = float(v.std())
                z = (v - float(v.mean())) / std if std > 0 else np.zeros_like(v)
                x = (np.clip(z, -self.clip, self.clip) + self.clip) / (2.0 * self.clip)
            x = np.clip(x, 0.0, 1.0).astype(np.float32)
        return (1.0 - x) if invert else x

    def to_array(self, values, window=None, invert=False):
        """The mapped image as stored in memory (`dtype`): uint8 ``p`` for `"uint8"` (exactly
        today's 8-bit pipeline), uint16 ``round(65535 x)`` for the others."""
        if self.kind == "uint8":
            out = self._uint8(np.asarray(values))
            return (255 - out) if invert else out
        return np.round(self.map(values, window, invert) * 65535.0).astype(np.uint16)

    @staticmethod
    def _uint8(v):
        if v.dtype == np.uint8:
            return v
        if v.dtype == np.bool_:
            return v.astype(np.uint8) * 255
        if v.dtype == np.uint16:
            return ((v.astype(np.uint32) + 128) // 257).astype(np.uint8)
        if v.dtype.kind == "f" and np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1:
            return np.round(v * 255).astype(np.uint8)
        if v.dtype.kind in "ui" and v.size and v.min() >= 0 and v.max() <= 255:
            return v.astype(np.uint8)
        low, high = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        raise IntensityError(
            f"has {v.dtype} values {low:g}..{high:g}, which the 8-bit recipe cannot map: choose "
            "--intensity window:LOW,HIGH, percentile or zscore"
        )

    # -- the contract --------------------------------------------------------------------------
    def formula(self):
        """How an app computes the input ``x`` in [0, 1] from a stored value ``v`` (one line)."""
        if self.kind == "uint8":
            return "x = p / 255 for an 8-bit pixel value p (a 16-bit value v first becomes p = round(v / 257))"
        if self.kind == "window":
            if self.low is None:
                return ("x = clip((v - low) / (high - low), 0, 1) with low = centre - width / 2, high = centre + width / 2 "
                        "from each DICOM file's WindowCenter/WindowWidth; v the stored value after RescaleSlope/RescaleIntercept")
            return (f"x = clip((v - ({self.low:g})) / {self.high - self.low:g}, 0, 1); v the stored value "
                    "(after a DICOM's RescaleSlope/RescaleIntercept: Hounsfield units for CT)")
        if self.kind == "percentile":
            return (f"per image: lo, hi = the {self.low:g} and {self.high:g} percentiles of its values v; "
                    "x = clip((v - lo) / (hi - lo), 0, 1) (x = 0 where hi = lo)")
        return (f"per image: z = (v - mean) / std over its values v (z = 0 where std = 0); "
                f"x = (clip(z, -{self.clip:g}, {self.clip:g}) + {self.clip:g}) / {2 * self.clip:g}")

    def contract(self):
        """The recipe as the export contract states it: `to_dict()` plus the formula, whether it
        is per image, and the MONOCHROME1 rule."""
        return {
            **self.to_dict(),
            "formula": self.formula(),
            "per_image": self.kind in ("percentile", "zscore"),
            "monochrome1": "a DICOM with PhotometricInterpretation MONOCHROME1 is inverted after the mapping: x -> 1 - x",
        }


def default_for(data_dir):
    """The recipe a new run gets when none is chosen: a percentile stretch (0.5..99.5) when the
    dataset's ``images/`` holds DICOM or NIfTI files (their values have no fixed 0..255 scale),
    else the 8-bit one."""
    from keras_litenext.data.medical import is_medical

    folder = os.path.join(os.fspath(data_dir), "images")
    try:
        names = os.listdir(folder)
    except OSError:
        return Intensity()
    return Intensity("percentile") if any(is_medical(n) for n in names) else Intensity()
