"""Model accounting (multiply-accumulates), atomic file writes and output-folder checks."""

import contextlib
import json
import math
import os
import re
import tempfile

import keras
from keras import layers


def _with_input_shape(model, input_shape):
    """The model itself, or a weight-less clone with a fixed `(height, width, channels)` input."""
    if input_shape is None:
        return model
    inputs = keras.Input(tuple(input_shape), batch_size=1)
    return keras.models.clone_model(model, input_tensors=inputs)


_MAC_LAYERS = (layers.Conv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose, layers.Dense)


def _positions(shape):
    positions = 1
    for d in shape[1:-1]:
        positions *= d
    return positions


def _macs(layer, in_shape, out_shape):
    """Multiply-accumulates of one call of a conv/dense layer (no bias)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _positions(out_shape) * out_shape[-1] * kh * kw
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        return _positions(out_shape) * out_shape[-1] * kh * kw * in_shape[-1] // layer.groups
    if isinstance(layer, layers.Conv2DTranspose):  # every input pixel scatters a kh x kw x C_out patch
        kh, kw = layer.kernel_size
        return _positions(in_shape) * in_shape[-1] * kh * kw * out_shape[-1]
    return _positions(out_shape) * in_shape[-1] * out_shape[-1]


def count_macs(model, input_shape=None, by_layer=False):
    """Multiply-accumulates of one forward pass at batch size 1.

    Counts convolutions (dense, depthwise and transposed) and dense layers, without biases, norms,
    activations, pooling or resizing: the convention behind the "0.42 GFLOPs" of LiteNeXt (its
    412.27 M conv/linear MACs at 256x256, measured on the reference code with forward hooks).
    A layer that holds convolutions of its own (LV-UNet's fusible layers) says what they cost
    with a method `count_macs(input_shape, output_shape)`.

    Args:
        model: a functional `keras.Model`.
        input_shape: optional `(height, width, channels)`; needed when the model was built with
            `None` height or width.
        by_layer: bool, also return a dict of MACs per layer name.

    Returns:
        int total MACs, or `(total, per_layer)` when `by_layer=True`.

    Example:
    >>> count_macs(LiteNeXt(), (256, 256, 3)) / 1e6    # doctest: +ELLIPSIS
    412.2...
    """
    model = _with_input_shape(model, input_shape)
    per_layer = {}
    for layer in model.layers:
        own = getattr(layer, "count_macs", None)
        if not isinstance(layer, _MAC_LAYERS) and not callable(own):
            continue
        for node in layer._inbound_nodes:
            in_shape = node.input_tensors[0].shape
            out_shape = node.output_tensors[0].shape
            if any(d is None for d in out_shape[1:]):
                raise ValueError(
                    f"count_macs: {layer.name!r} has an unknown output size {out_shape}; pass input_shape=(height, width, channels)."
                )
            macs = own(in_shape, out_shape) if callable(own) else _macs(layer, in_shape, out_shape)
            per_layer[layer.name] = per_layer.get(layer.name, 0) + int(macs)
    total = sum(per_layer.values())
    return (total, per_layer) if by_layer else total


class OutputError(OSError):
    """An output cannot be written (permissions, a full disk, a vanished folder); the message is
    one line naming the folder or file."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds.

    A crash or an exception leaves no file under the final name (and no temporary behind), so
    an artifact is either complete or absent. A failing write (full disk, no permission) is an
    `OutputError` naming `path`. The temporary keeps `path`'s extension, for
    writers that dispatch on it (`model.save` wants `.keras`).

    Example:
    >>> with atomic_path("run/best.keras") as tmp:
    ...     model.save(tmp)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as err:  # a full disk, a read-only or vanished folder: one line naming the file
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.exists(tmp):
                os.remove(tmp)


_TEMPORARY = re.compile(r"^\..+\.tmp(\..*)?$")  # the names atomic_path (and the run backup) write under


def remove_temporaries(folder):
    """Delete the temporaries an interrupted `atomic_path` write left in `folder` (a killed
    process cannot clean up); returns their names. Only call it while no other process writes there."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if _TEMPORARY.match(name) and os.path.isfile(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed.append(name)
    return removed


def ensure_writable(folder, what="output folder"):
    """Create `folder` if needed and check that files can be made in it, or raise `OutputError`
    naming it: before any work, so an unwritable output fails in one line at the start."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"the {what} {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the {what} {folder}: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to the {what} {folder}: permission denied (read-only?)")
    return folder


def _strict(obj):
    """NaN/inf become `None`, numpy scalars and arrays become Python values: strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _strict(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(path, text):
    """Write `text` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj):
    """Write `obj` as indented, strict JSON (NaN -> null), atomically."""
    write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False, default=str) + "\n")
