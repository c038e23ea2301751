"""DICOM and NIfTI as segmentation data: reading slices, and writing label volumes back.

Optional extras: ``pip install "keras-litenext[dicom]"`` (pydicom) and ``"keras-litenext[nifti]"``
(nibabel); the `test` extra pulls both. A dataset folder keeps the layout of `keras_litenext.data`:
``images/`` and ``masks/`` paired by stem, so ``images/ct01.nii.gz`` goes with
``masks/ct01.nii.gz`` (or ``masks/ct01_seg.nii.gz`` with ``masks_suffix="_seg"``), and
``images/xr7.dcm`` with ``masks/xr7.png`` (or a DICOM / NIfTI holding the labels). A DICOM is
known by its content too (the 128-byte preamble and ``DICM``, or a bare dataset without them, as
old archives hold), so PACS exports named ``IM0001`` or by a UID (``1.2.840.113619.2.5``) are
read; their whole name is the stem.

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

NaN and infinite values (a resampled volume outside its field of view): ``nonfinite="minimum"``
(the default) reads them as the lowest finite value of the file, the background every intensity
recipe maps to its low end, with one note per file giving the count; ``nonfinite="error"``
refuses such files. A label file with them is always refused: labels are class indices.

Problems are one line naming the file (a DICOM without pixel data, a transfer syntax whose
decoder is not installed, a truncated file, an image/label shape mismatch, ...), collected by
`data.load_pairs` like any bad file; warnings are one-line notes (`keras_litenext.notes`).

Label files written by `write_labels`: a NIfTI volume with the source's affine; for a DICOM a
plain label image, a copy of the source's header with the labels as pixels, in explicit VR little
endian whatever the source's encoding (`data.dicom`). A DICOM Segmentation (SEG, via `highdicom`)
was considered and left as a future option: it is a new dependency, and viewers open the plain
copy on top of its source.
"""

import os

import numpy as np

from keras_litenext.data.dicom import (
    dicom_by_content,
    has_dicom_preamble,
    read_dicom,
    write_dicom_labels,
)
from keras_litenext.data.nifti import read_nifti, write_nifti_labels
from keras_litenext.data.slices import MedicalError, Slices
from keras_litenext.notes import note

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "file_stem",
    "has_dicom_preamble",
    "MEDICAL_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "NONFINITE",
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
NONFINITE = ("minimum", "error")  # what `read_slices` does with NaN / infinite values; the first is the default


def split_name(name):
    """`(stem, extension)` of a file name, ``.nii.gz`` counted as one extension."""
    if name.lower().endswith(".nii.gz"):
        return name[:-7], name[-7:]
    return os.path.splitext(name)


def _dicom_by_content(path):
    """A DICOM whose name does not say so (no extension, or a UID's last number as one)."""
    ext = split_name(os.path.basename(os.fspath(path)))[1].lower()
    return ext not in IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS and dicom_by_content(path)


def file_stem(path):
    """`(stem, extension)` of a dataset file: `split_name`, or `(name, "")` for a DICOM known by
    its content (``1.2.840.5`` and ``1.2.840.6`` stay two stems)."""
    name = os.path.basename(os.fspath(path))
    return (name, "") if _dicom_by_content(path) else split_name(name)


def is_medical(path):
    return split_name(os.path.basename(os.fspath(path)))[1].lower() in MEDICAL_EXTENSIONS or _dicom_by_content(path)


def _is_dicom(path):
    return split_name(os.path.basename(os.fspath(path)))[1].lower() in DICOM_EXTENSIONS or _dicom_by_content(path)


def slice_stem(stem, index, count):
    """``stem`` for a one-slice file, else ``stem#012`` (zero-padded to the count's width, at least 3)."""
    return stem if count == 1 else f"{stem}{SLICE_SEPARATOR}{index:0{max(3, len(str(count - 1)))}d}"


def _finite(slices, path, nonfinite, labels=False):
    """`slices` without NaN / infinite values: the lowest finite value in their place and one note
    (``nonfinite="minimum"``), or a `MedicalError` (``"error"``, and always for `labels`)."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    array = slices.array
    if array.dtype.kind not in "fc":
        return slices
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if not count:
        return slices
    what = f"{count} NaN or infinite value(s) of {array.size}"
    if labels:
        raise MedicalError(f"holds {what}; a label file holds class indices")
    if nonfinite == "error":
        raise MedicalError(f"holds {what} (nonfinite='minimum' reads them as its lowest finite value)")
    if count == array.size:
        raise MedicalError(f"holds only NaN or infinite values ({array.size})")
    low = array[~bad].min()
    slices.array = np.where(bad, low, array)
    note(f"{path}: {what} set to {float(low):g}, its lowest finite value (outside a resampled field of view?); "
         "nonfinite='error' refuses such files", stacklevel=3)
    return slices


def read_slices(path, slice_axis=2, nonfinite="minimum"):
    """`Slices` of a DICOM or NIfTI file. Raises `MedicalError` (the reason, no path).

    Args:
        slice_axis: NIfTI: the voxel axis the 2-D slices are taken along.
        nonfinite: NaN / infinite values: ``"minimum"`` (default) reads them as the file's lowest
            finite value with one note naming the file; ``"error"`` refuses the file.
    """
    slices = read_dicom(path) if _is_dicom(path) else read_nifti(path, slice_axis)
    return _finite(slices, path, nonfinite)


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
        labels = read_dicom(pair.mask) if _is_dicom(pair.mask) else read_nifti(pair.mask, slice_axis)
        labels = _finite(labels, pair.mask, "error", labels=True)
        if labels.rgb:
            raise MedicalError("is a colour DICOM; a label file holds class indices (grey)")
        return labels.array
    return read_flat(pair.mask)[None]


def load_pair(pair, h, w, channels, decode_mask, intensity, slice_axis=2, empty_slices=1.0, read_flat=None,
              image_channels=None, resize=None, nonfinite="minimum"):
    """The samples of one image/mask pair of which at least one file is DICOM or NIfTI
    (`nonfinite`: `read_slices`'s, for the image).

    Returns:
        `(samples, problems)`: samples `[(stem, image, mask (H, W, 1), (dy, dx, dz) or None)]`,
        problems `[(path, reason)]` (then no samples).
    """
    import cv2

    from keras_litenext.data.errors import MaskError

    problems = []
    images = masks = None
    try:
        images = read_slices(pair.image, slice_axis, nonfinite) if is_medical(pair.image) else Slices(read_flat(pair.image)[None])
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
    the slices put back along `slice_axis`. DICOM: a copy of the source's header with its pixel
    data replaced by the labels (8 or 16 bit, MONOCHROME2, no rescale or window, one frame per
    frame), in explicit VR little endian whatever the source's transfer syntax, every geometry tag
    kept (position, orientation, spacing, frame of reference) and new SOP instance and series
    UIDs (`series_uid`: the new series UID, or a dict from source to new series UIDs that the
    files of one series share, filled as they come). Both open on top of the input in ITK-SNAP
    or 3D Slicer. Written atomically. Raises `ValueError` naming the source.
    """
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"labels must be class indices 0..65535, got {labels.min()}..{labels.max()}")
    if _is_dicom(source):
        return write_dicom_labels(source, labels, path, series_uid)
    try:
        return write_nifti_labels(source, labels, path, slice_axis)
    except MedicalError as err:
        raise ValueError(f"{source}: {err}") from None
