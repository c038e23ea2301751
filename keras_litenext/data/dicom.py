"""DICOM files (`pydicom`): their frames as `Slices`, and predicted labels written back.

Reading: a Part 10 file (128-byte preamble, ``DICM``, file meta) or a bare dataset without them
(old archives, raw modality output), recognised by its content when it parses as a DICOM dataset
with a SOP class or an image; its encoding (implicit / explicit VR, byte order) is the one pydicom
found. A file that cannot be used says why in one line: no pixel data (named by its SOP class,
e.g. ``RT Structure Set``), compressed with a transfer syntax whose decoder is not installed (and
the ``pip install`` that brings one), truncated, or not DICOM at all. pydicom's own warnings about
a file become at most one note naming it (`keras_litenext.notes`), or nothing where nothing is to
be done (excess padding, a VR mismatch pydicom resolved).

Writing labels: a plain label image, a copy of the source's header with the pixel data replaced by
the class indices (8 or 16 bit, MONOCHROME2, one label frame per frame), always in explicit VR
little endian whatever the source's transfer syntax (big endian, implicit VR, deflate, RLE, JPEG,
...). Geometry and identifiers are kept (Rows/Columns, ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness, FrameOfReferenceUID, StudyInstanceUID,
PatientID/PatientName, the per-frame functional groups), with new SOPInstanceUID and
SeriesInstanceUID; what describes the source's stored values (rescale, windows, LUTs, palettes,
overlays, icon) is dropped. Considered and left as a future option: a DICOM Segmentation (SEG)
object through `highdicom`, a new dependency; every viewer opens the plain copy on top of its
source, which is what a prediction is checked with.
"""

import contextlib
import functools
import logging
import os
import re
import threading
import warnings

import numpy as np

from keras_litenext.data.slices import MedicalError, Slices, first_line, require
from keras_litenext.notes import note

__all__ = ["dicom_by_content", "has_dicom_preamble", "read_dicom", "write_dicom_labels"]

# pydicom's warnings and log level are process-wide: one file at a time reads under this lock
# (pydicom parses in Python, under the GIL, so little parallelism is lost).
_LOCK = threading.RLock()
# pydicom warnings with nothing for the user to do: the file was read as it should be
_QUIET = ("excess padding", "but found implicit VR", "but found explicit VR")


def has_dicom_preamble(path):
    """Whether the file starts as a DICOM Part 10 file does (128 bytes, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _warning_note(text):
    """What a pydicom warning tells the user, or None when nothing is to be done."""
    if any(q in text for q in _QUIET):
        return None
    bad = re.match(r"Invalid value for VR (\w+): (.*?)\. Please see", text)
    if bad:
        return f"has a value that breaks the DICOM standard (VR {bad.group(1)}: {bad.group(2)}), used as stored"
    return text.splitlines()[0].strip() if text.strip() else None


@contextlib.contextmanager
def _pydicom_quietly(path=None):
    """pydicom on one file: its log silenced and its warnings caught; then one note naming `path`
    for those the user can act on (nothing for `path=None`). Warnings of other threads caught
    meanwhile are given back as they were."""
    import pydicom

    log, home, caught = logging.getLogger("pydicom"), os.path.dirname(pydicom.__file__), []
    try:
        with _LOCK:
            level = log.level
            log.setLevel(logging.CRITICAL + 1)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    yield
            finally:
                log.setLevel(level)
    finally:  # also when the file fails: give other threads' warnings back
        texts = []
        for w in caught:  # pydicom's point into pydicom or at this module; others are another thread's
            if not os.path.abspath(w.filename).startswith(home) and os.path.abspath(w.filename) != os.path.abspath(__file__):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            text = _warning_note(str(w.message))
            if text and text not in texts:
                texts.append(text)
    if texts and path is not None:
        note(f"{path}: {'; '.join(texts)}; if the image or its geometry looks wrong, correct the file", stacklevel=4)


def _is_dataset(ds):
    """A forced read that found a DICOM dataset: elements from group 0002/0008 on, and a SOP class or an image."""
    tags = list(ds.keys())
    return bool(tags) and tags[0].group in (0x0002, 0x0008) and any(k in ds for k in ("SOPClassUID", "Rows", "PixelData"))


@functools.lru_cache(maxsize=4096)
def _parses(path, _stamp):
    try:
        import pydicom
    except ImportError:
        return False
    try:
        with _pydicom_quietly():
            return _is_dataset(pydicom.dcmread(path, force=True, stop_before_pixels=True))
    except Exception:  # noqa: BLE001  (not a dataset)
        return False


def dicom_by_content(path):
    """Whether a file is DICOM by its content: the preamble and ``DICM``, or a bare dataset (its
    first element in group 0002 or 0008, either byte order, and pydicom finds one)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        stamp = os.stat(path)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    return _parses(path, (stamp.st_mtime_ns, stamp.st_size))


def _with_transfer_syntax(ds):
    """A dataset without file meta (or without its transfer syntax) gets the one pydicom read it with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        if "PixelData" in ds and ds["PixelData"].is_undefined_length:
            raise MedicalError("has compressed pixel data but no file meta to say how it is compressed (no transfer syntax)")
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def read_dataset(path):
    """The pydicom dataset of a DICOM file, with or without preamble and file meta."""
    pydicom = require("pydicom", "dicom")
    from pydicom.errors import InvalidDicomError

    try:
        return _with_transfer_syntax(pydicom.dcmread(os.fspath(path)))
    except InvalidDicomError:
        pass
    except MedicalError:
        raise
    except Exception as err:  # noqa: BLE001  (any reader error becomes the file's one line)
        raise MedicalError(f"cannot be read as DICOM ({first_line(err)})") from None
    try:
        ds = pydicom.dcmread(os.fspath(path), force=True)
        found = _is_dataset(ds)
    except Exception:  # noqa: BLE001  (not a dataset)
        found = False
    if not found:
        raise MedicalError("is not a DICOM file (no DICM preamble, and its content is not a DICOM dataset)")
    return _with_transfer_syntax(ds)


def _sop_name(ds):
    """``RT Structure Set`` for RT Structure Set Storage, or None."""
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID")
    name = UID(str(uid)).name if uid else ""
    return None if not name or name == str(uid) else name.removesuffix(" Storage")


def _decoder_packages(ts):
    """``(available, "pylibjpeg pylibjpeg-libjpeg")``: whether pydicom has a decoder for `ts`
    installed, and what ``pip install`` brings one (the pylibjpeg plugin's packages when named)."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except Exception:  # noqa: BLE001  (pydicom has no decoder at all for this syntax)
        return False, ""
    options = []
    for line in decoder.missing_dependencies:
        plugin, _, needs = line.partition(" - requires ")
        packages = [re.split(r"[<>=!~ ]", p.strip())[0] for p in needs.split(" and ")]
        options.append((plugin.strip(), " ".join(p for p in packages if p and p != "numpy")))
    options.sort(key=lambda o: o[0] != "pylibjpeg")
    return decoder.is_available, options[0][1] if options else ""


def _pixels(ds):
    """The pixel array of a dataset, or a `MedicalError` that says why not."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        tags = list(ds.keys())
        last = ds.get_item(tags[-1]) if tags else None
        if last is None:
            raise MedicalError("is truncated: it ends after its file meta")
        value, length = getattr(last, "value", None), getattr(last, "length", None)
        if isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length:
            raise MedicalError(f"is truncated: it ends inside element {last.tag} after {len(value)} of its {length} bytes")
        kind = _sop_name(ds)
        raise MedicalError(f"has no pixel data ({kind})" if kind else
                           "has no pixel data (a DICOM without an image: a report, a structured report or a presentation state?)")
    ts = ds.file_meta.get("TransferSyntaxUID")
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001  (pydicom raises NotImplementedError, RuntimeError, ValueError, ...)
        text = str(err)
        short = re.search(r"less than expected \((\d+) vs (\d+) bytes\)", text)
        if short:
            raise MedicalError(f"is truncated: its pixel data holds {short.group(1)} of the {short.group(2)} bytes its header describes") from None
        if ts is not None and ts.is_compressed:
            available, packages = _decoder_packages(ts)
            install = f"pip install {packages}" if packages else "decompress it first (gdcmconv --raw)"
            if not available:
                raise MedicalError(f"compressed with {ts.name}, which needs a decoder: {install}") from None
            why = "; ".join(line.strip() for line in text.strip().splitlines()[1:3]) or first_line(err)
            raise MedicalError(f"compressed with {ts.name} and its pixel data cannot be decoded by the installed decoder "
                               f"({why[:200]}): the data may be damaged, or another decoder reads it: {install}") from None
        raise MedicalError(f"pixel data cannot be decoded ({first_line(err)})") from None


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


def read_dicom(path):
    """`Slices` of a DICOM file: one per frame, after the modality LUT (rescale)."""
    require("pydicom", "dicom")
    with _pydicom_quietly(path):
        ds = read_dataset(path)
        array = np.asarray(_pixels(ds))
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
                raise MedicalError(f"has a modality LUT / rescale that cannot be applied ({first_line(err)})") from None
            array = array if np.array_equal(rescaled, array) else rescaled  # an identity rescale keeps the stored type
        elif samples != 3:
            raise MedicalError(f"has {samples} samples per pixel (expected 1, grey, or 3, colour)")
        centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        spacing, thickness = _dicom_spacing(ds)
    window = (centre - width / 2.0, centre + width / 2.0) if centre is not None and width and width > 0 else None
    return Slices(array, spacing, thickness, window, invert=photometric == "MONOCHROME1", rgb=samples == 3)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
# what describes the source's stored values, not the labels
_DROP = {"RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
         "VOILUTFunction", "VOILUTSequence", "ModalityLUTSequence", "LargestImagePixelValue", "SmallestImagePixelValue",
         "PixelPaddingValue", "PixelPaddingRangeLimit", "PlanarConfiguration", "FloatPixelData", "DoubleFloatPixelData",
         "PixelData", "IconImageSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "DoseGridScaling"}
_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # byte order of bulk values from a big-endian file


def _plain(ds, big_endian):
    """A new dataset of the converted elements of `ds` (sequences too), bulk values in little-endian order."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out = Dataset()
    for tag in ds.keys():  # noqa: SIM118  (iterating a Dataset gives elements, not tags)
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001, S112  (an element pydicom cannot convert is left out)
            continue
        keyword = elem.keyword or ""
        if keyword in _DROP or "PaletteColorLookupTable" in keyword or keyword.startswith("Segmented") or 0x6000 <= tag.group <= 0x60FF:
            continue
        value = elem.value
        if elem.VR == "SQ":
            value = Sequence([_plain(item, big_endian) for item in value])
        elif big_endian and elem.VR == "UN":
            continue  # an unknown value: its byte order cannot be known
        elif big_endian and elem.VR in _SWAP and isinstance(value, bytes) and len(value) % _SWAP[elem.VR] == 0:
            value = np.frombuffer(value, np.dtype(f">u{_SWAP[elem.VR]}")).astype(f"<u{_SWAP[elem.VR]}").tobytes()
        out.add(DataElement(tag, elem.VR, value))
    return out


def write_dicom_labels(source, labels, path, series_uid=None):
    """Label slices `(frames, rows, columns)` as a plain label image copy of `source` (module docstring)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    from keras_litenext.utils import atomic_path

    with _pydicom_quietly():  # its notes were given when it was read
        try:
            source_ds = read_dataset(source)
        except MedicalError as err:
            raise ValueError(f"{source}: {err}") from None
        frames = int(source_ds.get("NumberOfFrames", 1) or 1)
        rows, columns = int(source_ds.get("Rows", 0) or 0), int(source_ds.get("Columns", 0) or 0)
        if labels.shape[0] != frames or labels.shape[1:] != (rows, columns):
            raise ValueError(f"{source}: labels {labels.shape} do not fit its {frames} frame(s) of {columns}x{rows}")
        ds = _plain(source_ds, big_endian=not source_ds.original_encoding[1])
    bits = 8 if labels.max(initial=0) < 256 else 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = labels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.SOPClassUID = ds.get("SOPClassUID") or SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    if isinstance(series_uid, dict):
        series_uid = series_uid.setdefault(str(ds.get("SeriesInstanceUID", "")), generate_uid())
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesDescription = "keras-litenext labels"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        with _pydicom_quietly(), atomic_path(path) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    except Exception as err:  # noqa: BLE001  (one line naming the file)
        raise ValueError(f"{source}: its labels cannot be written as DICOM to {path} ({first_line(err)})") from None
    return path
