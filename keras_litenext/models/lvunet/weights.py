"""Keras' ImageNet weights of MobileNetV3-Large (no top) for LV-UNet's trunk, fetched as
`keras.applications.MobileNetV3Large(include_top=False, weights="imagenet")` fetches them: the
same origin, file name, cache (`$KERAS_HOME/models/`, default `~/.keras/models/`) and hash."""

import hashlib
import os
import tempfile

import keras

try:  # Keras' own constants (keras/src/applications/mobilenet_v3.py), private but stable since Keras 2
    from keras.src.applications.mobilenet_v3 import BASE_WEIGHT_PATH, WEIGHTS_HASHES
except ImportError:  # pragma: no cover - values copied from keras/src/applications/mobilenet_v3.py (Keras 3.15)
    BASE_WEIGHT_PATH = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
    WEIGHTS_HASHES = {"large_224_1.0_float": ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389")}

MODEL_NAME = "large_224_1.0_float"  # MobileNetV3Large(alpha=1.0, minimalistic=False)
FILE_NAME = f"weights_mobilenet_v3_{MODEL_NAME}_no_top_v2.h5"  # Keras' name for include_top=False
FILE_HASH = WEIGHTS_HASHES[MODEL_NAME][1]  # md5 (32 hex digits) or sha256 (64): get_file tells them apart


def imagenet_weights_url():
    """The origin of Keras' MobileNetV3-Large no-top ImageNet weights file."""
    return BASE_WEIGHT_PATH + FILE_NAME


def _keras_home():
    """`$KERAS_HOME` as set now (Keras reads it once, at import), else `~/.keras`; created if missing,
    since `get_file` falls back to `/tmp/.keras` for a folder it cannot write to."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    try:
        os.makedirs(home, exist_ok=True)
    except OSError:
        pass
    return home


def _matches(path, file_hash):
    hasher = hashlib.sha256() if len(file_hash) == 64 else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest() == file_hash


def fetch_imagenet_weights(cache_dir=None):
    """The local path of Keras' MobileNetV3-Large (alpha 1.0) no-top ImageNet weights file,
    downloaded once with `keras.utils.get_file` (Keras' URL, file name and hash) into
    `cache_dir/models/` (default `$KERAS_HOME` or `~/.keras`) and taken from there afterwards;
    a cached file whose hash does not match is downloaded again.

    Raises:
        OSError: the download failed (no network, no such URL); one line naming the URL and how
            to pass a local file instead.
        ValueError: the downloaded file's hash does not match Keras' (the file is deleted); one
            line, as above.
    """
    url, file_hash = imagenet_weights_url(), FILE_HASH
    cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir is not None else _keras_home()
    instead = f"On a machine without internet, fetch that file elsewhere and pass its path: backbone_weights='/path/to/{FILE_NAME}'."
    try:
        return keras.utils.get_file(FILE_NAME, url, cache_subdir="models", file_hash=file_hash, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - get_file raises a bare Exception for a failed fetch
        reason = " ".join(str(err).split()).replace(f"URL fetch failure on {url}: ", "").removeprefix("None -- ")
    tmp = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    base = cache_dir if os.access(cache_dir, os.W_OK) else os.path.join(tmp, ".keras")  # where get_file wrote
    target = os.path.join(base, "models", FILE_NAME)
    if os.path.isfile(target) and not _matches(target, file_hash):  # get_file leaves a bad download in place
        os.remove(target)
        raise ValueError(f"LVUNet: the file downloaded from {url} does not match Keras' hash {file_hash} "
                         f"(deleted; corrupted or changed download). {instead}") from None
    raise OSError(f"LVUNet: could not download the ImageNet weights from {url} ({reason}). {instead}") from None
