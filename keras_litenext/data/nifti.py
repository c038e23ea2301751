"""NIfTI files (`nibabel`): the slices of a volume, and a label volume written in its geometry."""

import gzip
import os

import numpy as np

from keras_litenext.data.slices import MedicalError, Slices, first_line, require

__all__ = ["read_nifti", "write_nifti_labels"]


def load_nifti(path):
    nib = require("nibabel", "nifti")
    try:
        return nib.load(os.fspath(path))
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"cannot be read as NIfTI ({first_line(err)})") from None


def _volume(img, path_ok_dims=(2, 3)):
    shape = tuple(int(d) for d in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in path_ok_dims:
        raise MedicalError(f"has shape {tuple(img.shape)}; 2-D images and 3-D volumes are supported (a 4-D series?)")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"voxel data cannot be read ({first_line(err)})") from None
    return data[:, :, None] if data.ndim == 2 else data


def read_nifti(path, slice_axis=2):
    """`Slices` of a NIfTI file along `slice_axis` (a 2-D file is one slice), voxel order."""
    img = load_nifti(path)
    data = _volume(img)
    if data.size == 0:
        raise MedicalError(f"has zero size {tuple(img.shape)}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (0.0,) * 3
    axis = int(slice_axis)
    plane = [a for a in range(3) if a != axis]
    spacing = (zooms[plane[0]], zooms[plane[1]])
    thickness = zooms[axis] if zooms[axis] > 0 else None
    return Slices(np.moveaxis(data, axis, 0), spacing if min(spacing) > 0 else None, thickness)


def write_nifti_labels(source, labels, path, slice_axis=2):
    """A uint8 (uint16 past 255) volume with the source's affine, voxel sizes and orientation."""
    from keras_litenext.utils import atomic_path

    nib = require("nibabel", "nifti")
    img = load_nifti(source)
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
