"""DICOM and NIfTI as segmentation data: reading slices, and writing label volumes back.

Optional extras: ``pip install "keras-litenext[dicom]"`` (pydicom) and ``"keras-litenext[nifti]"``
(nibabel); the `test` extra pulls both. A dataset folder keeps the layout of `keras_litenext.data`:
``images/`` and ``masks/`` paired by stem, so ``images/ct01.nii.gz`` goes with
``masks/ct01.nii.gz`` (or ``masks/ct01_seg.nii.gz`` with ``masks_suffix="_seg"``), and
``images/xr7.dcm`` with ``masks/xr7.png`` (or a DICOM / NIfTI holding the labels). A DICOM is
known by its content too (the 128-byte preamble and ``DICM``), so PACS exports named ``IM0001``
or by a UID (``1.2.840.113619.2.5``) are read; their whole name is the stem.

- **DICOM** (`pydicom`): the modality LUT is applied (RescaleSlope / RescaleIntercept, so CT
  values are Hounsfield units), MONOCHROME1 images are inverted after the intensity recipe, the
  file's WindowCenter / WindowWidth is kept for a ``window`` recipe without its own window, and a
  multi-frame file gives one slice per frame (stems ``<stem>#000``, ``<stem>#001``, ...). Colour
  files (RGB, YBR) are read as RGB.
- **NIfTI** (`nibabel`): 2-D training on the slices along `slice_axis` (default 2, the third
  voxel axis), in voxel order, no reorientation; stems ``<stem>#000`` ... A label volume is a
  class-index or binary map, decoded by the run's task like a mask file. Slices whose label is
  empty can be thinned (`empty_slices`, the kept fraction, evenly spaced through the volume).

Pixel spacing (DICOM PixelSpacing, NIfTI zooms) travels with every slice, scaled when a slice is
resized, so HD95 and areas are in millimetres (mm²) and volumes in millilitres. Slices of one
file keep one stem before ``#``, and `data.split_stems` keeps them in one split.

Problems are one line naming the file (a DICOM without pixel data, an unsupported transfer
syntax, an image/label shape mismatch, ...), collected by `data.load_pairs` like any bad file.
"""

import contextlib
import gzip
import logging
import os
import threading

import numpy as np

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "file_stem",
    "has_dicom_preamble",
    "MEDICAL_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "MedicalError",
    "Slices",
    "is_medical",
    "label_path",
    "read_slices",
    "split_name",
    "write_labels",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # read with OpenCV (`data.read_image`)
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
MEDICAL_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS
SLICE_SEPARATOR = "#"


class MedicalError(ValueError):
    """A DICOM/NIfTI file that cannot be used (the message is the reason, without the path)."""


def split_name(name):
    """`(stem, extension)` of a file name, ``.nii.gz`` counted as one extension."""
    if name.lower().endswith(".nii.gz"):
        return name[:-7], name[-7:]
    return os.path.splitext(name)


def has_dicom_preamble(path):
    """Whether the file starts as a DICOM Part 10 file does (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_by_content(path):
    """A DICOM whose name does not say so (no extension, or a UID's last number as one)."""
    ext = split_name(os.path.basename(os.fspath(path)))[1].lower()
    return ext not in IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS and has_dicom_preamble(path)


def file_stem(path):
    """`(stem, extension)` of a dataset file: `split_name`, or `(name, "")` for a DICOM known by
    its content (``1.2.840.5`` and ``1.2.840.6`` stay two stems)."""
    name = os.path.basename(os.fspath(path))
    return (name, "") if _dicom_by_content(path) else split_name(name)


def is_medical(path):
    return split_name(os.path.basename(os.fspath(path)))[1].lower() in MEDICAL_EXTENSIONS or _dicom_by_content(path)


def _is_dicom(path):
    return split_name(os.path.basename(os.fspath(path)))[1].lower() in DICOM_EXTENSIONS or _dicom_by_content(path)


def _require(module, extra):
    try:
        return __import__(module)
    except ImportError:
        raise MedicalError(f"needs {module}: pip install \"keras-litenext[{extra}]\" (or pip install {module})") from None


def slice_stem(stem, index, count):
    """``stem`` for a one-slice file, else ``stem#012`` (zero-padded to the count's width, at least 3)."""
    return stem if count == 1 else f"{stem}{SLICE_SEPARATOR}{index:0{max(3, len(str(count - 1)))}d}"


class Slices:
    """The 2-D slices of a file as stored, `(S, H, W)` or `(S, H, W, 3)` RGB, with what the file
    says about them: `spacing` `(row, column)` in mm or None, `thickness` (mm between slices) or
    None, `window` `(low, high)` (DICOM's own) or None, `invert` (MONOCHROME1)."""

    def __init__(self, array, spacing=None, thickness=None, window=None, invert=False, rgb=False):
        self.array, self.spacing, self.thickness = array, spacing, thickness
        self.window, self.invert, self.rgb = window, invert, rgb

    def __len__(self):
        return len(self.array)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def _first(value):
    """The first number of a DICOM value (single or multi-valued), or None."""
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_spacing(ds):
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    thickness = _first(ds.get("SpacingBetweenSlices")) or _first(ds.get("SliceThickness"))
    shared = ds.get("SharedFunctionalGroupsSequence")
    if spacing is None and shared:  # enhanced multi-frame
        measures = shared[0].get("PixelMeasuresSequence")
        if measures:
            spacing = measures[0].get("PixelSpacing")
            thickness = thickness or _first(measures[0].get("SpacingBetweenSlices")) or _first(measures[0].get("SliceThickness"))
    try:
        spacing = None if spacing is None else (float(spacing[0]), float(spacing[1]))
    except (TypeError, ValueError, IndexError):
        spacing = None
    if spacing is not None and min(spacing) <= 0:
        spacing = None
    return spacing, thickness if thickness and thickness > 0 else None


_QUIET = {"depth": 0, "level": None, "lock": threading.Lock()}


@contextlib.contextmanager
def _quiet_pydicom():
    """pydicom logs a decoder's traceback before raising; the `MedicalError` line says it. Thread
    safe: the level is restored when the last decoding thread leaves."""
    log = logging.getLogger("pydicom")
    with _QUIET["lock"]:
        if _QUIET["depth"] == 0:
            _QUIET["level"] = log.level
            log.setLevel(logging.CRITICAL + 1)
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET["lock"]:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                log.setLevel(_QUIET["level"])


def _dicom_pixels(ds):
    """The pixel array of a dataset, or a `MedicalError` naming the transfer syntax."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedicalError("has no pixel data (a DICOM without an image: a report, a structured report or a presentation state?)")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with _quiet_pydicom():
            return ds.pixel_array
    except Exception as err:  # noqa: BLE001  (pydicom raises NotImplementedError, RuntimeError, ValueError, ...)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if ts is not None and getattr(ts, "is_compressed", False):
            raise MedicalError(
                f"uses transfer syntax {getattr(ts, 'name', ts)} ({ts}) and its pixel data cannot be decoded "
                f"({type(err).__name__}: {first}); a decoder may be missing (pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg) or the data is damaged; or decompress it: gdcmconv --raw"
            ) from None
        raise MedicalError(f"pixel data cannot be decoded ({type(err).__name__}: {first})") from None


def read_dicom(path):
    """`Slices` of a DICOM file: one per frame, after the modality LUT (rescale)."""
    pydicom = _require("pydicom", "dicom")
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(os.fspath(path))
    except InvalidDicomError:
        raise MedicalError("is not a DICOM file (no DICM preamble)") from None
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"cannot be read as DICOM ({type(err).__name__}: {str(err).strip()[:200]})") from None
    array = np.asarray(_dicom_pixels(ds))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames == 1:
        array = array[None]
    if array.ndim != (4 if samples > 1 else 3) or array.shape[0] != frames:
        raise MedicalError(f"has pixel data of shape {array.shape}, not {frames} frame(s) of {samples} sample(s) per pixel")
    if array.size == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise MedicalError(f"has zero-size pixel data {array.shape}")
    if samples == 1:
        from pydicom.pixels import apply_modality_lut

        try:
            rescaled = np.asarray(apply_modality_lut(array, ds))
        except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
            raise MedicalError(f"has a modality LUT / rescale that cannot be applied ({type(err).__name__}: {err})") from None
        array = array if np.array_equal(rescaled, array) else rescaled  # an identity rescale keeps the stored type
    elif samples != 3:
        raise MedicalError(f"has {samples} samples per pixel (expected 1, grey, or 3, colour)")
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    window = (centre - width / 2.0, centre + width / 2.0) if centre is not None and width and width > 0 else None
    spacing, thickness = _dicom_spacing(ds)
    return Slices(array, spacing, thickness, window, invert=photometric == "MONOCHROME1", rgb=samples == 3)


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------
def _load_nifti(path):
    nib = _require("nibabel", "nifti")
    try:
        return nib.load(os.fspath(path))
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"cannot be read as NIfTI ({type(err).__name__}: {str(err).strip()[:200]})") from None


def _volume(img, path_ok_dims=(2, 3)):
    shape = tuple(int(d) for d in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in path_ok_dims:
        raise MedicalError(f"has shape {tuple(img.shape)}; 2-D images and 3-D volumes are supported (a 4-D series?)")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"voxel data cannot be read ({type(err).__name__}: {str(err).strip()[:200]})") from None
    return data[:, :, None] if data.ndim == 2 else data


def read_nifti(path, slice_axis=2):
    """`Slices` of a NIfTI file along `slice_axis` (a 2-D file is one slice), voxel order."""
    img = _load_nifti(path)
    data = _volume(img)
    if data.size == 0:
        raise MedicalError(f"has zero size {tuple(img.shape)}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (0.0,) * 3
    axis = int(slice_axis)
    plane = [a for a in range(3) if a != axis]
    spacing = (zooms[plane[0]], zooms[plane[1]])
    thickness = zooms[axis] if zooms[axis] > 0 else None
    return Slices(np.moveaxis(data, axis, 0), spacing if min(spacing) > 0 else None, thickness)


def read_slices(path, slice_axis=2):
    """`Slices` of a DICOM or NIfTI file. Raises `MedicalError` (the reason, no path)."""
    if _is_dicom(path):
        return read_dicom(path)
    return read_nifti(path, slice_axis)


# --------------------------------------------------------------------------------------------
# Pairs of a dataset
# --------------------------------------------------------------------------------------------
def _rgb_channels(array, channels):
    """RGB `(H, W, 3)` -> RGB, or grey for `channels=1` (ITU-R 601 weights, as OpenCV)."""
    import cv2

    if channels == 3:
        return array
    return cv2.cvtColor(array.astype(np.float32), cv2.COLOR_RGB2GRAY)


def _integral(array):
    """A label slice as integers (float NIfTI labels are common); non-integral values stay."""
    if array.dtype.kind == "f" and np.isfinite(array).all() and np.array_equal(array, np.round(array)) and array.min() >= 0:
        return array.astype(np.uint16 if array.max() > 255 else np.uint8)
    return array


def _mask_slices(pair, slice_axis, read_flat):
    """Raw label slices `(S, H, W[, C])` of the mask file (a PNG mask is one slice)."""
    if is_medical(pair.mask):
        labels = read_slices(pair.mask, slice_axis)
        if labels.rgb:
            raise MedicalError("is a colour DICOM; a label file holds class indices (grey)")
        return labels.array
    return read_flat(pair.mask)[None]


def load_pair(pair, h, w, channels, decode_mask, intensity, slice_axis=2, empty_slices=1.0, read_flat=None,
              image_channels=None, resize=None):
    """The samples of one image/mask pair of which at least one file is DICOM or NIfTI.

    Returns:
        `(samples, problems)`: samples `[(stem, image, mask (H, W, 1), (dy, dx, dz) or None)]`,
        problems `[(path, reason)]` (then no samples).
    """
    import cv2

    from keras_litenext.tasks import MaskError

    problems = []
    images = masks = None
    try:
        images = read_slices(pair.image, slice_axis) if is_medical(pair.image) else Slices(read_flat(pair.image)[None])
    except Exception as err:  # noqa: BLE001  (MedicalError, or the flat reader's one-line reason)
        problems.append((pair.image, str(err) or type(err).__name__))
    try:
        masks = _mask_slices(pair, slice_axis, read_flat)
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        problems.append((pair.mask, str(err) or type(err).__name__))
    if problems:
        return [], problems
    image_hw, mask_hw = images.array.shape[1:3], masks.shape[1:3]
    if len(images) != len(masks) or image_hw != mask_hw:
        what = "slices" if max(len(images), len(masks)) > 1 else "image"
        reason = (f"has {len(images)} slice(s) of {image_hw[1]}x{image_hw[0]} (WxH) but its label file "
                  f"{os.path.basename(pair.mask)} has {len(masks)} of {mask_hw[1]}x{mask_hw[0]} "
                  f"(the {what} and labels must match{'; check slice_axis' if len(masks) > 1 else ''})")
        return [], [(pair.image, reason)]
    labels = []
    for i, raw in enumerate(masks):
        try:
            labels.append(decode_mask(_integral(raw)))
        except MaskError as err:
            where = f" (slice {i} along axis {slice_axis})" if len(masks) > 1 else ""
            return [], [(pair.mask, f"{err}{where}")]
    keep = list(range(len(labels)))
    if len(labels) > 1 and empty_slices < 1.0:
        empty = [i for i, lab in enumerate(labels) if not lab.any()]
        n_keep = round(len(empty) * float(empty_slices))
        spread = np.unique(np.round(np.linspace(0, len(empty) - 1, n_keep)).astype(int)) if n_keep else []
        kept_empty = {empty[j] for j in spread}
        keep = [i for i in keep if labels[i].any() or i in kept_empty]
    samples = []
    for i in keep:
        raw = images.array[i]
        if images.rgb:
            raw = _rgb_channels(raw, channels)
        try:
            if is_medical(pair.image):
                image = intensity.to_array(raw, images.window, images.invert)
                image = image[:, :, None] if image.ndim == 2 else image
                if image.shape[2] == 1 and channels == 3:
                    image = np.repeat(image, 3, axis=2)
            else:  # a PNG image with a volume's label file: the flat path's conversion
                image = image_channels(raw, channels)
        except Exception as err:  # noqa: BLE001  (the recipe's or the flat conversion's one-line reason)
            return [], [(pair.image, str(err) or type(err).__name__)]
        mask = labels[i]
        spacing = images.spacing
        if h is not None:
            ih, iw = image.shape[:2]
            image = resize(image, h, w)
            if mask.shape[:2] != (h, w):
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
            if spacing is not None:
                spacing = (spacing[0] * ih / h, spacing[1] * iw / w)
        samples.append((slice_stem(pair.stem, i, len(labels)), image, mask.reshape(mask.shape[0], mask.shape[1], 1),
                        None if spacing is None else (spacing[0], spacing[1], images.thickness)))
    return samples, []


# --------------------------------------------------------------------------------------------
# Prediction: labels back into the input's format and geometry
# --------------------------------------------------------------------------------------------
def label_path(path, output):
    """``OUT/<stem>_labels.nii.gz`` for a NIfTI input (``.nii`` stays ``.nii``), ``OUT/<stem>_labels.dcm`` for a DICOM."""
    stem, ext = file_stem(path)
    return os.path.join(output, f"{stem}_labels{'.dcm' if _is_dicom(path) else ext.lower()}")


def write_labels(source, labels, path, slice_axis=2, series_uid=None):
    """Write predicted label slices `(S, H, W)` (class indices) in the geometry of `source`.

    NIfTI: a uint8 volume with the source's affine, voxel sizes and orientation (sform/qform),
    the slices put back along `slice_axis`. DICOM: a copy of the source with its pixel data
    replaced by the labels (8 or 16 bit, MONOCHROME2, no rescale or window), every geometry tag
    kept (position, orientation, spacing, frame of reference) and new SOP instance and series
    UIDs (`series_uid`: the new series UID, or a dict from source to new series UIDs that the
    files of one series share, filled as they come). Both open on top of the input in ITK-SNAP
    or 3D Slicer. Written atomically.
    """
    from keras_litenext.utils import atomic_path

    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"labels must be class indices 0..65535, got {labels.min()}..{labels.max()}")
    if _is_dicom(source):
        return _write_dicom_labels(source, labels, path, series_uid)
    nib = _require("nibabel", "nifti")
    img = _load_nifti(source)
    shape = tuple(int(d) for d in img.shape)
    volume = np.moveaxis(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16), 0, int(slice_axis)) if len(shape) >= 3 else labels[0]
    volume = volume.reshape(shape)
    header = img.header.copy()
    header.set_data_dtype(volume.dtype)
    out = nib.Nifti1Image(volume, img.affine, header=header) if isinstance(img, nib.Nifti1Image) else nib.Nifti2Image(volume, img.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["descrip"] = b"keras-litenext labels"
    data = out.to_bytes()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(gzip.compress(data, compresslevel=6) if path.lower().endswith(".gz") else data)
    return path


def _write_dicom_labels(source, labels, path, series_uid=None):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from keras_litenext.utils import atomic_path

    ds = pydicom.dcmread(os.fspath(source))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if labels.shape[0] != frames or labels.shape[1:] != (int(ds.Rows), int(ds.Columns)):
        raise ValueError(f"{source}: labels {labels.shape} do not fit its {frames} frame(s) of {ds.Columns}x{ds.Rows}")
    bits = 8 if labels.max(initial=0) < 256 else 16
    pixels = labels.astype(np.uint8 if bits == 8 else np.uint16)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTSequence",
                    "ModalityLUTSequence", "LargestImagePixelValue", "SmallestImagePixelValue", "PaletteColorLookupTableUID",
                    "PlanarConfiguration", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = (pixels if frames > 1 else pixels[0]).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if isinstance(series_uid, dict):
        series_uid = series_uid.setdefault(str(ds.get("SeriesInstanceUID", "")), generate_uid())
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesDescription = "keras-litenext labels"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
