"""Inference on images of any size, and loading of trained runs.

A model trained at one size can segment an image of another size in four ways (`predict_image`):

- `"resize"`: resize to the training size, predict, resize the probabilities back (bilinear). Fast;
  the model sees the scale it was trained at, fine detail of large images is lost.
- `"pad"`: pad (reflect) to the next multiple of the model's stride (its registry spec) and predict the whole image at its own
  resolution with a size-agnostic copy of the model, then crop. Objects keep their pixel size.
- `"tile"`: predict overlapping windows of the training size and average the probabilities
  (half-window stride). Objects keep their pixel size and the model only sees the context size
  it was trained on; cost grows with the image area.
- `"gaussian"`: sliding windows of the training size, `overlap` apart (default 0.5), each
  window's probabilities weighted by a Gaussian of sigma = 1/8 of the window per axis (the
  importance map of nnU-Net and MONAI's `SlidingWindowInferer(mode="gaussian")`): a window's
  border, where the network saw little context, counts less than its centre.

`tta=True` adds flip test-time augmentation to any mode: the image is also predicted flipped
left-right, up-down and both, the probabilities flipped back and averaged (4 passes).

Probabilities come from the task (`task.probabilities`): a sigmoid of one channel, a softmax
over K; `predict_image` reads the task off the model's output when none is given.
"""

import cv2
import keras
import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.tasks import task_for_output

MODES = ("resize", "pad", "tile", "gaussian")
SIGMA_SCALE = 0.125  # the Gaussian window's sigma, as a fraction of the window size
TTA_FLIPS = ((), (1,), (0,), (0, 1))  # image axes flipped: none, left-right, up-down, both


def size_multiple(model):
    """The multiple a model's input height and width must be, from its registry spec."""
    from keras_litenext.models import registry

    return registry.spec_of(model).size_multiple


def size_agnostic(model):
    """A copy of `model` that accepts any height and width (multiples of its stride), same weights."""
    if all(d is None for d in model.input_shape[1:3]):
        return model
    inputs = keras.Input((None, None, model.input_shape[-1]))
    clone = keras.models.clone_model(model, input_tensors=inputs)
    clone.set_weights(model.get_weights())
    return clone


def _predict(model, batch):
    batch = np.asarray(batch, np.float32)
    if any(d is None for d in model.input_shape[1:3]):
        # a size-agnostic model runs eagerly: a traced call retraced for a second size has
        # symbolic heights and widths, which Keras' bilinear UpSampling2D cannot take
        return np.asarray(model(batch, training=False), np.float32)
    return np.asarray(model.predict_on_batch(batch), np.float32)


def gaussian_importance(height, width, sigma_scale=SIGMA_SCALE):
    """`(height, width)` float32 window weights: a Gaussian centred on the window with sigma =
    `sigma_scale` times the window size per axis, 1 at the centre (nnU-Net, MONAI)."""

    def axis(n):
        return np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2.0) / (sigma_scale * n)) ** 2)

    weights = np.outer(axis(height), axis(width))
    return (weights / weights.max()).astype(np.float32)


def window_starts(size, window, overlap=0.5):
    """Start offsets of sliding windows along one axis, evenly spaced from 0 to `size - window`
    with a step of at most `window * (1 - overlap)` (nnU-Net's rule); `[0]` when the window covers it."""
    if size <= window:
        return [0]
    target = max(1.0, window * (1.0 - overlap))
    steps = int(np.ceil((size - window) / target)) + 1
    return [round(i * (size - window) / (steps - 1)) for i in range(steps)]


def predict_image(model, image, mode="resize", dynamic_model=None, multiple=None, overlap=0.5, tta=False, task=None):
    """Class probabilities `(H, W, channels)` for one float image `(H, W, C)` in `[0, 1]` of any
    size: the foreground probability (one channel, sigmoid) or the softmax over K classes.

    Probabilities, not logits, are what is resized and averaged: an average of softmax outputs
    is a distribution again, an average of logits is not the logit of anything.

    Args:
        model: a trained model with a fixed input size (its training size).
        image: float32 array in `[0, 1]`, with the model's channel count.
        mode: `"resize"`, `"pad"`, `"tile"` or `"gaussian"` (see the module docstring).
        dynamic_model: for `"pad"`, a `size_agnostic(model)` built once and reused.
        multiple: for `"pad"`, the size multiple (default: the model's registry spec).
        overlap: for `"gaussian"`, the fraction of a window its neighbour overlaps, in [0, 1).
        tta: average over the four flips (module docstring).
        task: the run's task, whose `probabilities` turn logits into probabilities (default:
            read off the model's output, `tasks.task_for_output`).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    image = np.asarray(image, np.float32)
    probabilities = (task or task_for_output(model.output_shape)).probabilities
    if tta:
        total = None
        for axes in TTA_FLIPS:
            x = np.flip(image, axes) if axes else image
            probs = _predict_image(model, np.ascontiguousarray(x), mode, dynamic_model, multiple, overlap, probabilities)
            probs = np.flip(probs, axes) if axes else probs
            total = probs if total is None else total + probs
        return total / np.float32(len(TTA_FLIPS))
    return _predict_image(model, image, mode, dynamic_model, multiple, overlap, probabilities)


def _predict_image(model, image, mode, dynamic_model, multiple, overlap, probabilities):
    h, w = image.shape[:2]
    th, tw = model.input_shape[1:3]
    if mode == "resize" or (h, w) == (th, tw):
        x = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if h * w > th * tw else cv2.INTER_LINEAR)
        probs = probabilities(_predict(model, x.reshape(1, th, tw, -1))[0])
        out = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(h, w, -1)
    if mode == "pad":
        m = int(multiple or size_multiple(model))
        ph, pw = -(-h // m) * m, -(-w // m) * m
        x = np.pad(image.reshape(h, w, -1), ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
        return probabilities(_predict(dynamic_model or size_agnostic(model), x[None])[0, :h, :w])
    if mode == "gaussian":
        return _gaussian_windows(model, image.reshape(h, w, -1), th, tw, overlap, probabilities)
    # tile: windows of the training size, stride half a window, probabilities averaged
    x = image.reshape(h, w, -1)
    ph, pw = max(h, th), max(w, tw)
    x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    ys = _starts(ph, th)
    xs = _starts(pw, tw)
    acc, count = None, np.zeros((ph, pw, 1), np.float32)
    windows = [(y0, x0) for y0 in ys for x0 in xs]
    for i in range(0, len(windows), 8):
        chunk = windows[i : i + 8]
        probs = probabilities(_predict(model, np.stack([x[y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])))
        if acc is None:
            acc = np.zeros((ph, pw, probs.shape[-1]), np.float32)
        for (y0, x0), tile in zip(chunk, probs):
            acc[y0 : y0 + th, x0 : x0 + tw] += tile
            count[y0 : y0 + th, x0 : x0 + tw] += 1
    return (acc / count)[:h, :w]


def _gaussian_windows(model, x, th, tw, overlap, probabilities, batch=8):
    """Gaussian-weighted sliding windows (module docstring); images smaller than a window are
    reflect-padded to it."""
    h, w = x.shape[:2]
    ph, pw = max(h, th), max(w, tw)
    x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    weights = gaussian_importance(th, tw)[..., None]
    windows = [(y0, x0) for y0 in window_starts(ph, th, overlap) for x0 in window_starts(pw, tw, overlap)]
    acc, norm = None, np.zeros((ph, pw, 1), np.float32)
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        probs = probabilities(_predict(model, np.stack([x[y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])))
        if acc is None:
            acc = np.zeros((ph, pw, probs.shape[-1]), np.float32)
        for (y0, x0), tile in zip(chunk, probs):
            acc[y0 : y0 + th, x0 : x0 + tw] += weights * tile
            norm[y0 : y0 + th, x0 : x0 + tw] += weights
    return (acc / norm)[:h, :w]


def _starts(size, window):
    if size <= window:
        return [0]
    step = max(1, window // 2)
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def predict_slices(model, slices, labels_fn, intensity=None, **predict_kwargs):
    """Label maps `(S, H, W)` of the slices of a DICOM/NIfTI file (`data.medical.read_slices`),
    each mapped by the run's intensity recipe as in training and predicted with `predict_image`.

    Args:
        model: the trained model.
        slices: a `data.medical.Slices`.
        labels_fn: probabilities `(H, W, K)` -> label map `(H, W)` (the task's rule, the threshold).
        intensity: the run's `intensity.Intensity` (default: 8-bit).
        **predict_kwargs: `mode`, `dynamic_model`, `overlap`, `tta`, `task` of `predict_image`.
    """
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.data.medical import _rgb_channels

    recipe = intensity or Intensity()
    channels = int(model.input_shape[-1])
    out = []
    for raw in slices.array:
        if slices.rgb:
            raw = _rgb_channels(raw, channels)
        x = to_float(recipe.to_array(raw, slices.window, slices.invert))
        x = x[..., None] if x.ndim == 2 else x
        if x.shape[-1] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=-1)
        out.append(labels_fn(predict_image(model, x, **predict_kwargs)))
    return np.stack(out)
