"""Reading image files: decoding (OpenCV, as stored), conversion to the model's channels and
intensity recipe, resizing, and the parallel reader the scans share.

PNG, JPEG, BMP and TIFF files, 8 or 16 bit, grey, RGB or RGBA (DICOM and NIfTI go through
`keras_litenext.data.medical`, which takes its flat reader from here).

Every per-file problem is a `BadFile` reason (one line), never an OpenCV or NumPy traceback;
`read_image` turns it into a `DatasetError` naming the file.
"""

import concurrent.futures
import contextlib
import os

import cv2
import numpy as np

from keras_litenext.data.errors import BadFile, DatasetError, MaskError, examples
from keras_litenext.data.intensity import IntensityError
from keras_litenext.notes import note


def size_hw(image_size):
    """``(height, width)`` of an ``image_size`` argument (an int or a pair), checked."""
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise DatasetError(f"image_size must be an int or (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise DatasetError(f"image_size must be positive, got {image_size!r}")
    return h, w


def check_channels(channels):
    """Raises `DatasetError` unless ``channels`` is 1 (grey) or 3 (RGB)."""
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r}")


def decode_file(path):
    """Decodes a file as stored (`IMREAD_UNCHANGED`). Raises `BadFile` with a short reason."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise BadFile(f"cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    if data.size == 0:
        raise BadFile("is empty (0 bytes)")
    # OpenCV 4's libjpeg returns a grey-padded image for a truncated JPEG: insist on an end marker
    # (0xFFD9 occurs nowhere else in a JPEG but as the end of the image or of a thumbnail).
    if data[:3].tobytes() == b"\xff\xd8\xff" and data.tobytes().rfind(b"\xff\xd9") < 0:
        raise BadFile("is a truncated JPEG (no end-of-image marker)")
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "cv2.error"
        raise BadFile(f"cannot be decoded ({first})") from None
    if array is None:
        raise BadFile("cannot be decoded (corrupt, truncated or not a PNG/JPEG/BMP/TIFF image)")
    if array.size == 0 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadFile(f"has zero size {array.shape}")
    if array.ndim not in (2, 3):
        raise BadFile(f"has an unsupported layout {array.shape} (multi-page or volume?)")
    return array


@contextlib.contextmanager
def quiet_opencv():
    """Silences OpenCV's own log lines about bad files: the `DatasetError` says it better."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = logging.getLogLevel() if hasattr(logging, "getLogLevel") else None
    if level is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        if level is not None:
            logging.setLogLevel(level)


def to_uint8(array):
    """uint8 as is, uint16 divided by 257 (65535 -> 255, intensities keep their meaning),
    float in [0, 1] times 255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype.kind == "f" and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1:
        return np.round(array * 255).astype(np.uint8)
    raise BadFile(f"has unsupported pixel type {array.dtype} (expected 8/16-bit, or float in [0, 1])")


def image_channels(array, channels):
    """BGR(A) or grey -> RGB (channels=3) or grey (channels=1), alpha dropped; (H, W, channels)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        array = array[:, :, 0]
    if array.ndim == 2:
        if channels == 3:
            return np.repeat(array[:, :, None], 3, axis=2)
        return array[:, :, None]
    if array.shape[2] not in (3, 4):
        raise BadFile(f"has {array.shape[2]} channels (expected grey, RGB or RGBA)")
    alpha = array.shape[2] == 4
    if channels == 1:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2GRAY if alpha else cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if alpha else cv2.COLOR_BGR2RGB)


def convert_image(raw, channels, intensity=None):
    """A decoded image as the model's stored input: the 8-bit recipe exactly as before recipes
    (`to_uint8`, then channels), any other recipe on the channel-converted raw values (uint16)."""
    if intensity is None or intensity.kind == "uint8":
        return image_channels(to_uint8(raw), channels)
    try:
        return intensity.to_array(image_channels(raw, channels))
    except IntensityError as e:
        raise BadFile(str(e)) from None


def resize_image(image, h, w):
    """``(h, w, C)``: `INTER_AREA` when shrinking, `INTER_LINEAR` when enlarging (as is when equal)."""
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if (h <= ih and w <= iw) else cv2.INTER_LINEAR
    out = cv2.resize(image, (w, h), interpolation=interpolation)
    return out.reshape(h, w, image.shape[2])


def read_image(path, channels=3, intensity=None):
    """Reads one image as `load_pairs` does, at its own size (for prediction).

    Args:
        path: PNG, JPEG, BMP or TIFF file (8 or 16 bit, grey, RGB or RGBA).
        channels: 3 (RGB) or 1 (grey).
        intensity: the run's `intensity.Intensity` (default: 8-bit).

    Returns:
        uint8 array ``(H, W, channels)`` (uint16 for a recipe other than 8-bit).

    Raises:
        DatasetError: one line naming the file and what is wrong with it.
    """
    check_channels(channels)
    path = os.fspath(path)
    try:
        with quiet_opencv():
            raw = decode_file(path)
            top = low_bit_depth(raw) if intensity is None or intensity.kind == "uint8" else None
            if top is not None:
                low_bit_depth_warning([(path, top)], 1, os.path.dirname(path) or ".")
            return convert_image(raw, channels, intensity)
    except BadFile as e:
        raise DatasetError(f"{path}: {e}") from None
    except Exception as e:  # never let an OpenCV/NumPy traceback escape
        raise DatasetError(f"{path}: cannot be loaded ({type(e).__name__}: {e})".splitlines()[0]) from None


def low_bit_depth(array):
    """The largest value of a 16-bit image that uses 12 bits or fewer (else None)."""
    if array.dtype == np.uint16:
        top = int(array.max())
        if 0 < top < 4096:
            return top
    return None


def low_bit_depth_warning(notes, total, where):
    """One line about 16-bit files holding 12-bit (or fewer) values, squashed by the /257 mapping."""
    top = max(v for _, v in notes)
    note(
        f"{len(notes)} of {total} images in {where} are 16-bit files with values only up to {top} (12-bit data?): "
        f"16-bit images are divided by 257, which leaves them about {round(top / 257) + 1} grey levels; rescale them "
        f"to the full 16-bit range (or to 8 bit) first, or keep their levels with an intensity recipe (--intensity percentile): {examples(os.path.basename(p) for p, _ in notes)}",
        stacklevel=3,
    )


def read_parallel(work, items):
    """``work(item)`` for every item on a few threads (OpenCV and NumPy release the GIL), results
    in input order, OpenCV's own log lines silenced."""
    with quiet_opencv():
        workers = max(1, min(8, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            yield from pool.map(work, items)


def binary_mask(raw, mask_threshold=0, binary_check=True):
    """`(H, W)` uint8 {0, 1} from a stored mask (the `binary` task's decoding): colour masks take
    the max over channels, then `value > mask_threshold`. With threshold 0 a mask with more than
    two values is refused (JPEG artefacts or an interpolated mask would silently become
    foreground)."""
    if raw.ndim == 3:
        raw = raw[:, :, :3].max(axis=2) if raw.shape[2] >= 3 else raw[:, :, 0]
    if binary_check and not mask_threshold:
        if raw.dtype == np.uint8:
            n_values = int(np.count_nonzero(np.bincount(raw.ravel(), minlength=256)))
        else:
            n_values = len(np.unique(raw))
        if n_values > 2:
            raise MaskError(
                f"has {n_values} distinct values, not a binary mask (JPEG artefacts or a resized "
                "mask?); pass mask_threshold=127 (--mask-threshold 127) to binarise it, or "
                "--num-classes K for a class-index mask"
            )
    return (raw > mask_threshold).astype(np.uint8)
