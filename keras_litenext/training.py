"""Training: one `train(config)` call from a dataset folder to a finished run folder.

A run folder holds everything a run produces, each file written atomically:

- `config.json`: the settings (a resumed run reuses them);
- `splits.json`: the train/val/test stems (evaluation and resumption reuse them);
- `best.keras`: the inference model with the best validation Dice (plain model, no SeRP heads);
- `backup/`: `keras.callbacks.BackupAndRestore` state, so a killed run resumes (`resume=True`)
  losing at most the epoch in progress;
- `history.csv`, `logs/` (TensorBoard), `curves.png`;
- `metrics.json`: test-split Dice/IoU/precision/recall (per-image mean and std) of `best.keras`;
- `test_overlays.png`: test images with predicted (red) and true (green) outlines.

`training/fit.py` is the command-line face of `TrainConfig` and `train`.
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import time

import keras
import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.losses import get_loss
from keras_litenext.metrics import get_metrics, per_image_scores, summarize
from keras_litenext.models import create_model
from keras_litenext.utils import atomic_path, write_json
from keras_litenext.visualize import overlay, plot_history, save_grid

SAMPLE_IMAGE_SIZE = 96
SAMPLE_EPOCHS = 40  # the bundled sample trains in a few minutes on 2 CPU cores
DEFAULT_EPOCHS = 60


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; `training/fit.py` exposes each as a flag."""

    model: str = "litenext"
    data: str | None = None  # None: the sample bundled with the package
    image_size: int | None = None  # None: 96 for the bundled sample, else 256
    channels: int = 3
    masks_suffix: str = ""
    mask_threshold: int = 0
    splits: str | None = None  # a JSON file with "train"/"val"/"test" stems
    split: tuple = (0.8, 0.1, 0.1)
    batch_size: int = 8
    epochs: int | None = None  # None: 40 for the bundled sample, else 60
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # "cosine" or "plateau"
    loss: str = "mwl"
    mwl_weights: tuple = (5.0, 3.0, 2.0)  # margin, object, background; chosen by val Dice (README)
    mwl_kernel: int = 7
    augment: bool = True
    serp: bool = False
    serp_weight: float = 0.1
    serp_decay: float = 0.99
    seed: int = 42
    output: str | None = None  # None: runs/<model>-<data>-<time>
    resume: bool = False
    skip_bad: bool = False
    mixed_precision: str = "auto"  # auto: on when a GPU is visible
    jit_compile: str = "auto"  # auto: on when a GPU is visible
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    verbose: str | int = "auto"

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}.")
        values = dict(values)
        for key in ("split", "mwl_weights"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Abort `fit` at the first NaN/inf loss, *before* any epoch-end checkpoint can store
    broken weights: the last good `BackupAndRestore` state and `best.keras` survive."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"loss became {float(loss)} at batch {batch + 1}")


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save `model` (the inference model, which may differ from the one being fitted) to
    `path` whenever `monitor` improves; atomic, so a crash never leaves a half-written file."""

    def __init__(self, model_to_save, path, monitor="val_dice", mode="max", best=None):
        super().__init__()
        self.model_to_save, self.path, self.monitor, self.mode = model_to_save, path, monitor, mode
        self.best = best if best is not None else (-math.inf if mode == "max" else math.inf)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if (value > self.best) if self.mode == "max" else (value < self.best):
            self.best = value
            _ = self.model  # on JAX, sync the training state into the variables first
            with atomic_path(self.path) as tmp:
                self.model_to_save.save(tmp)


def _resolve(config):
    if config.data is None:
        config.data = data_lib.sample_data_dir()
        config.image_size = config.image_size or SAMPLE_IMAGE_SIZE
        config.epochs = config.epochs or SAMPLE_EPOCHS
    config.image_size = config.image_size or 256
    config.epochs = config.epochs or DEFAULT_EPOCHS
    if config.output is None:
        tag = os.path.basename(os.path.normpath(config.data))
        config.output = os.path.join("runs", f"{config.model}-{tag}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    return config


def _prepare_run_folder(config):
    """Create the run folder, or reload a resumed run's settings from it."""
    if config.resume:
        if not config.output:
            raise ValueError("resume needs the run folder: pass --output <run folder>.")
        config_path = os.path.join(config.output, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"Cannot resume: {config_path} does not exist (is --output the run folder?).")
        with open(config_path) as f:
            saved = TrainConfig.from_dict(json.load(f))
        saved.resume, saved.output, saved.verbose = True, config.output, config.verbose
        if config.epochs:  # the one setting a resumed run may change
            saved.epochs = config.epochs
        return saved
    config = _resolve(config)
    config_path = os.path.join(config.output, "config.json")
    if os.path.exists(config.output) and os.listdir(config.output):
        raise FileExistsError(f"Run folder {config.output} is not empty: pass --resume to continue it, or another --output.")
    os.makedirs(config.output, exist_ok=True)
    write_json(config_path, config.to_dict())
    return config


def _split_arrays(config, images, masks, stems):
    splits_path = os.path.join(config.output, "splits.json")
    if os.path.exists(splits_path):
        splits = data_lib.load_splits(splits_path)
    elif config.splits:
        splits = data_lib.load_splits(config.splits)
    else:
        splits = data_lib.split_stems(stems, fractions=config.split, seed=config.seed)
    if not os.path.exists(splits_path):
        data_lib.save_splits(splits_path, splits, seed=config.seed, data=os.path.abspath(config.data))
    return {name: data_lib.select(stems, images, masks, splits[name]) for name in ("train", "val", "test")}


def _devices():
    """The accelerator count, and a distribution strategy when there are several (TF backend)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return len(gpus), (tf.distribute.MirroredStrategy() if len(gpus) > 1 else None)
    if keras.backend.backend() == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices()), None
    return 0, None


def _switch(value, default):
    return default if value == "auto" else value in (True, "on", "true", "1", 1)


def _serp_views(augment):
    """Two augmented views of each batch, `((view1, view2), mask_of_view1)`, for SeRP."""

    def views(image, mask, seed=None):
        if augment is None:
            return (image, image), mask
        view1, mask1 = augment(image, mask, seed=seed)
        view2, _ = augment(image, mask, seed=None if seed is None else seed + 1)
        return (view1, view2), mask1

    return views


def build_datasets(config, arrays):
    """`(train, val)` tf.data pipelines for `fit`; SeRP runs get `((view1, view2), mask)`."""
    train_images, train_masks = arrays["train"]
    augment = data_lib.augmenter(seed=config.seed) if config.augment else None
    if config.serp:
        augment = _serp_views(augment)
    train = data_lib.make_dataset(
        train_images, train_masks, config.batch_size, augment=augment, shuffle=True, seed=config.seed,
        drop_remainder=len(train_images) >= config.batch_size,
    )
    val = data_lib.make_dataset(*arrays["val"], config.batch_size)
    if config.serp:
        val = val.map(lambda x, y: ((x, x), y))
    return train, val


def train(config, strategy=None):
    """Train a model as `config` says and return the test metrics (also in `metrics.json`).

    Args:
        config: a `TrainConfig`.
        strategy: optional `tf.distribute.Strategy`; by default `MirroredStrategy` when more
            than one GPU is visible (TensorFlow backend), else none.

    Raises:
        data.DatasetError: a problem with the dataset, found before training starts.
        NonFiniteLossError: the loss became NaN/inf; the run folder keeps the last good state.
    """
    config = _prepare_run_folder(config)
    keras.utils.set_random_seed(config.seed)
    gpus, auto_strategy = _devices()
    strategy = strategy or auto_strategy
    if _switch(config.mixed_precision, gpus > 0):
        keras.mixed_precision.set_global_policy("mixed_float16")
    jit = _switch(config.jit_compile, gpus > 0)

    pairs = data_lib.find_pairs(config.data, masks_suffix=config.masks_suffix, skip_bad=config.skip_bad)
    images, masks, stems, report = data_lib.load_pairs(
        pairs, config.image_size, channels=config.channels, mask_threshold=config.mask_threshold, skip_bad=config.skip_bad
    )
    arrays = _split_arrays(config, images, masks, stems)
    sizes = {k: len(v[0]) for k, v in arrays.items()}
    print(f"Data: {config.data}: {len(stems)} pairs at {config.image_size}x{config.image_size} "
          f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}"
          + (f"; skipped {len(report['skipped'])}" if report.get("skipped") else "") + ")")
    train_ds, val_ds = build_datasets(config, arrays)
    steps = max(1, sizes["train"] // config.batch_size)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = create_model(config.model, input_shape=(config.image_size, config.image_size, config.channels), **config.model_kwargs)
        callbacks = []
        if config.serp:
            from keras_litenext.serp import build_serp_model

            fit_model, ema = build_serp_model(model, weight=config.serp_weight, decay=config.serp_decay)
            callbacks.append(ema)
        else:
            fit_model = model
        if config.schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=steps * config.epochs, alpha=1e-2)
        elif config.schedule == "plateau":
            lr = config.lr
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_dice", mode="max", factor=0.5, patience=10, min_lr=config.lr / 100))
        else:
            raise ValueError(f"Unknown schedule {config.schedule!r}: use 'cosine' or 'plateau'.")
        loss_kwargs = {}
        if config.loss == "mwl":
            w_m, w_o, w_b = config.mwl_weights
            loss_kwargs = dict(w_margin=w_m, w_object=w_o, w_background=w_b, kernel_size=config.mwl_kernel)
        fit_model.compile(
            optimizer=keras.optimizers.AdamW(lr, weight_decay=config.weight_decay),
            loss=get_loss(config.loss, **loss_kwargs),
            metrics=get_metrics(),
            jit_compile=jit,
        )

    out = config.output
    best_path = os.path.join(out, "best.keras")
    best = _best_so_far(os.path.join(out, "history.csv")) if config.resume else None
    # Order matters. The NaN guard runs first, so nothing after it sees a broken step. The
    # history row and the best model are written before the backup: a kill in between makes
    # the resumed run repeat that epoch (a duplicate history row), never lose its row.
    callbacks = [
        StopOnNonFiniteLoss(),
        *callbacks,
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=config.resume),
        BestModelCheckpoint(model, best_path, best=best),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup"), double_checkpoint=True),
    ]
    start = time.time()
    try:
        fit_model.fit(
            train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=config.verbose, shuffle=False
        )
    except NonFiniteLossError as err:
        raise NonFiniteLossError(
            f"Training stopped: {err}. The last good state is kept in {out} (backup/ and best.keras); "
            f"lower --lr or check the data, then continue with --resume."
        ) from None
    train_seconds = time.time() - start

    return finish_run(config, model if not os.path.exists(best_path) else keras.saving.load_model(best_path), arrays, train_seconds)


def _best_so_far(history_csv):
    import csv

    if not os.path.exists(history_csv):
        return None
    with open(history_csv, newline="") as f:
        values = [float(r["val_dice"]) for r in csv.DictReader(f) if r.get("val_dice") not in (None, "", "nan")]
    return max(values) if values else None


def finish_run(config, model, arrays, train_seconds=None):
    """Evaluate `model` on the test split; write `metrics.json`, `curves.png`, `test_overlays.png`."""
    out = config.output
    test_images, test_masks = arrays["test"]
    logits = np.asarray(model.predict(test_images.astype("float32") / 255.0, batch_size=config.batch_size, verbose=0))
    scores = per_image_scores(test_masks, logits)
    results = {**summarize(scores), "per_image": scores}
    summary = {
        "model": config.model,
        "params": int(model.count_params()),
        "data": os.path.abspath(config.data),
        "image_size": config.image_size,
        "split": "test",
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        **results,
    }
    write_json(os.path.join(out, "metrics.json"), summary)
    history = os.path.join(out, "history.csv")
    if os.path.exists(history):
        plot_history(history, os.path.join(out, "curves.png"))
    n = min(16, len(test_images))
    if n:
        tiles = [overlay(test_images[i], logits[i] > 0, test_masks[i]) for i in range(n)]
        save_grid(os.path.join(out, "test_overlays.png"), tiles)
    dice = results["dice"]
    print(f"Test Dice {dice['mean']:.4f} ± {dice['std']:.4f}, IoU {results['iou']['mean']:.4f} "
          f"({results['counted']} of {results['images']} test images) -> {out}")
    return summary
