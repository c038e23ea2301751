"""Inference on images of any size, and loading of trained runs.

A model trained at one size can segment an image of another size in three ways (`predict_image`):

- `"resize"`: resize to the training size, predict, resize the probabilities back (bilinear). Fast;
  the model sees the scale it was trained at, fine detail of large images is lost.
- `"pad"`: pad (reflect) to the next multiple of the model's stride (its registry spec) and predict the whole image at its own
  resolution with a size-agnostic copy of the model, then crop. Objects keep their pixel size.
- `"tile"`: predict overlapping windows of the training size and average the probabilities
  (half-window stride). Objects keep their pixel size and the model only sees the context size
  it was trained on; cost grows with the image area.
"""

import cv2
import keras
import numpy as np

from keras_litenext.metrics import summarize
from keras_litenext.runs import open_source

MODES = ("resize", "pad", "tile")


def load_run(path):
    """`(model, config_dict)` from a run folder (its `best.keras` and `config.json`) or a
    `.keras` file (config `{}`).

    Raises:
        FileNotFoundError, ValueError: naming the path, for a missing or unreadable model.
    """
    model, run = open_source(path)
    return model, ({} if run is None else run.config.to_dict())


def task_of(model, config=None):
    """The task of a run's settings, or (a bare `.keras` file) read off the model's outputs:
    one channel binary, K channels multiclass with generic class names, a `(batch, K)` output
    classification with generic class names."""
    from keras_litenext.tasks import get_task, task_from_config

    if config:
        return task_from_config(config)
    channels = int(model.output_shape[-1])
    if len(model.output_shape) == 2:  # (batch, K): an image classifier
        return get_task("classification", num_classes=channels)
    return get_task(num_classes=2 if channels == 1 else channels)


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
    return np.asarray(model.predict_on_batch(np.asarray(batch, np.float32)), np.float32)


def _probabilities(logits):
    """Sigmoid of one channel, softmax over several (the tasks' activations)."""
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_image(model, image, mode="resize", dynamic_model=None, multiple=None):
    """Class probabilities `(H, W, channels)` for one float image `(H, W, C)` in `[0, 1]` of any
    size: the foreground probability (one channel, sigmoid) or the softmax over K classes.

    Probabilities, not logits, are what is resized and averaged: an average of softmax outputs
    is a distribution again, an average of logits is not the logit of anything.

    Args:
        model: a trained model with a fixed input size (its training size).
        image: float32 array in `[0, 1]`, with the model's channel count.
        mode: `"resize"`, `"pad"` or `"tile"` (see the module docstring).
        dynamic_model: for `"pad"`, a `size_agnostic(model)` built once and reused.
        multiple: for `"pad"`, the size multiple (default: the model's registry spec).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    h, w = image.shape[:2]
    th, tw = model.input_shape[1:3]
    if mode == "resize" or (h, w) == (th, tw):
        x = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if h * w > th * tw else cv2.INTER_LINEAR)
        probs = _probabilities(_predict(model, x.reshape(1, th, tw, -1))[0])
        out = cv2.resize(probs, (w, h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(h, w, -1)
    if mode == "pad":
        m = int(multiple or size_multiple(model))
        ph, pw = -(-h // m) * m, -(-w // m) * m
        x = np.pad(image.reshape(h, w, -1), ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
        return _probabilities(_predict(dynamic_model or size_agnostic(model), x[None])[0, :h, :w])
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
        probs = _probabilities(_predict(model, np.stack([x[y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])))
        if acc is None:
            acc = np.zeros((ph, pw, probs.shape[-1]), np.float32)
        for (y0, x0), tile in zip(chunk, probs):
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


def evaluate_native(model, images, masks, mode="resize", task=None):
    """Per-image metrics at each image's own resolution, predicting with `predict_image`.

    Args:
        model: a trained model (fixed input size).
        images, masks: lists of uint8 arrays `(H_i, W_i, C)` and `(H_i, W_i, 1)` label maps
            (from `data.load_pairs(pairs, image_size=None, task=...)`).
        mode: `"resize"`, `"pad"` or `"tile"`.
        task: the run's task (default: read off the model's outputs).

    Returns:
        the dict of `metrics.summarize`, plus `"per_image"` lists.
    """
    task = task or task_of(model)
    dynamic = size_agnostic(model) if mode == "pad" else None
    scores = {}
    for image, mask in zip(images, masks):
        probs = predict_image(model, image.astype(np.float32) / 255.0, mode=mode, dynamic_model=dynamic)
        for name, value in task.scores(mask[None], probs[None], from_logits=False).items():
            scores.setdefault(name, []).append(float(np.asarray(value)[0]))
    return {**summarize(scores), "per_image": scores}
