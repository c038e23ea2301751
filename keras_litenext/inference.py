"""Inference on images of any size, and loading of trained runs.

A model trained at one size can segment an image of another size in three ways (`predict_image`):

- `"resize"`: resize to the training size, predict, resize the logits back (bilinear). Fast;
  the model sees the scale it was trained at, fine detail of large images is lost.
- `"pad"`: pad (reflect) to the next multiple of 16 and predict the whole image at its own
  resolution with a size-agnostic copy of the model, then crop. Objects keep their pixel size.
- `"tile"`: predict overlapping windows of the training size and average the logits
  (half-window stride). Objects keep their pixel size and the model only sees the context size
  it was trained on; cost grows with the image area.
"""

import json
import os

import cv2
import keras
import numpy as np

from keras_litenext.metrics import METRICS, per_image_scores, summarize
from keras_litenext.models.litenext import STRIDE

MODES = ("resize", "pad", "tile")


def load_run(path):
    """`(model, config_dict)` from a run folder (its `best.keras` and `config.json`) or a
    `.keras` file (config `{}`).

    Raises:
        FileNotFoundError, ValueError: naming the path, for a missing or unreadable model.
    """
    if os.path.isdir(path):
        model_path = os.path.join(path, "best.keras")
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"{path} has no best.keras: is it a finished run folder of training/fit.py?")
        config_path = os.path.join(path, "config.json")
        config = json.load(open(config_path)) if os.path.exists(config_path) else {}
        return _load(model_path), config
    if not str(path).endswith(".keras"):
        raise ValueError(f"{path}: expected a run folder or a .keras file.")
    return _load(path), {}


def _load(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # a corrupt or foreign file: one line, not a deep traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot load the model ({type(err).__name__}: {first[:300]})") from None


def size_agnostic(model):
    """A copy of `model` that accepts any height and width (multiples of 16), same weights."""
    if all(d is None for d in model.input_shape[1:3]):
        return model
    inputs = keras.Input((None, None, model.input_shape[-1]))
    clone = keras.models.clone_model(model, input_tensors=inputs)
    clone.set_weights(model.get_weights())
    return clone


def _predict(model, batch):
    return np.asarray(model.predict_on_batch(np.asarray(batch, np.float32)), np.float32)


def predict_image(model, image, mode="resize", dynamic_model=None):
    """Logits `(H, W, classes)` for one float image `(H, W, C)` in `[0, 1]` of any size.

    Args:
        model: a trained model with a fixed input size (its training size).
        image: float32 array in `[0, 1]`, with the model's channel count.
        mode: `"resize"`, `"pad"` or `"tile"` (see the module docstring).
        dynamic_model: for `"pad"`, a `size_agnostic(model)` built once and reused.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    h, w = image.shape[:2]
    th, tw = model.input_shape[1:3]
    if mode == "resize" or (h, w) == (th, tw):
        x = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if h * w > th * tw else cv2.INTER_LINEAR)
        logits = _predict(model, x.reshape(1, th, tw, -1))[0]
        out = cv2.resize(logits, (w, h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(h, w, -1)
    if mode == "pad":
        ph, pw = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
        x = np.pad(image.reshape(h, w, -1), ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
        return _predict(dynamic_model or size_agnostic(model), x[None])[0, :h, :w]
    # tile: windows of the training size, stride half a window, logits averaged
    x = image.reshape(h, w, -1)
    ph, pw = max(h, th), max(w, tw)
    x = np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    ys = _starts(ph, th)
    xs = _starts(pw, tw)
    acc, count = None, np.zeros((ph, pw, 1), np.float32)
    windows = [(y0, x0) for y0 in ys for x0 in xs]
    for i in range(0, len(windows), 8):
        chunk = windows[i : i + 8]
        logits = _predict(model, np.stack([x[y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk]))
        if acc is None:
            acc = np.zeros((ph, pw, logits.shape[-1]), np.float32)
        for (y0, x0), tile in zip(chunk, logits):
            acc[y0 : y0 + th, x0 : x0 + tw] += tile
            count[y0 : y0 + th, x0 : x0 + tw] += 1
    return (acc / count)[:h, :w]


def _starts(size, window):
    if size <= window:
        return [0]
    step = max(1, window // 2)
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def evaluate_native(model, images, masks, mode="resize"):
    """Per-image metrics at each image's own resolution, predicting with `predict_image`.

    Args:
        model: a trained model (fixed input size).
        images, masks: lists of uint8 arrays `(H_i, W_i, C)` and `(H_i, W_i, 1)` (from
            `data.load_pairs(pairs, image_size=None)`).
        mode: `"resize"`, `"pad"` or `"tile"`.

    Returns:
        the dict of `metrics.summarize`, plus `"per_image"` lists.
    """
    dynamic = size_agnostic(model) if mode == "pad" else None
    scores = {name: [] for name in METRICS}
    for image, mask in zip(images, masks):
        logits = predict_image(model, image.astype(np.float32) / 255.0, mode=mode, dynamic_model=dynamic)
        for name, value in per_image_scores(mask[None], logits[None, ..., :1]).items():
            scores[name].append(float(value[0]))
    return {**summarize(scores), "per_image": scores}
