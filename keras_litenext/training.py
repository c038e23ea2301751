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

A classification run (`tasks.ClassificationTask`, an image-folder dataset) has the same loop,
resume, NaN guard, TensorBoard and curves; its best model is the best `val_auc`, and it writes
instead `metrics.json` (accuracy, balanced accuracy, macro AUC, per-class recall and AUC, the
confusion matrix, class names), `confusion_matrix.png` and `test_predictions.csv` (class
probabilities of every test image).

`training/fit.py` is the command-line face of `TrainConfig` and `train`.
"""

import contextlib
import datetime
import math
import os
import time

import keras
import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.losses import MWL_WEIGHTS
from keras_litenext.metrics import summarize
from keras_litenext.models import create_model, get_spec
from keras_litenext.runs import BEST, HISTORY, METRICS, Run, TrainConfig
from keras_litenext.utils import atomic_path
from keras_litenext.visualize import overlay_labels, plot_history, save_grid

__all__ = ["BestModelCheckpoint", "NonFiniteLossError", "StopOnNonFiniteLoss", "TrainConfig", "build_datasets", "finish_run", "train"]

SAMPLE_IMAGE_SIZE = 96
SAMPLE_EPOCHS = 40  # the bundled sample trains in a few minutes on 2 CPU cores
DEFAULT_EPOCHS = 60


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
    `path` whenever `monitor` improves; atomic, so a crash never leaves a half-written file.
    `transform` (e.g. a family's re-parameterisation, `ModelSpec.deploy_form`) is applied to
    the model before it is saved."""

    def __init__(self, model_to_save, path, monitor="val_dice", mode="max", best=None, transform=None):
        super().__init__()
        self.model_to_save, self.path, self.monitor, self.mode = model_to_save, path, monitor, mode
        self.transform = transform
        self.best = best if best is not None else (-math.inf if mode == "max" else math.inf)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if (value > self.best) if self.mode == "max" else (value < self.best):
            self.best = value
            _ = self.model  # on JAX, sync the training state into the variables first
            model = self.transform(self.model_to_save) if self.transform else self.model_to_save
            with atomic_path(self.path) as tmp:
                model.save(tmp)


def _resolve(config):
    """Defaults of a new run; returns its task (class names resolved)."""
    from keras_litenext.models.registry import resolve_model_name

    config.model, size_kwargs = resolve_model_name(config.model)  # "mednext-cls-s" -> "mednext_cls", size "s"
    config.model_kwargs = {**size_kwargs, **(config.model_kwargs or {})}
    if config.data is None:
        config.data = data_lib.sample_data_dir()
        config.image_size = config.image_size or SAMPLE_IMAGE_SIZE
        config.epochs = config.epochs or SAMPLE_EPOCHS
    config.data = os.path.abspath(config.data)  # the run folder must work from any directory
    task = config.resolve_classes()
    if not config.image_size and task.kind == "classification":
        from keras_litenext.data_classification import default_image_size, probe_size

        config.image_size = default_image_size(max(probe_size(config.data)), get_spec(config.model).size_multiple)
    config.image_size = config.image_size or 256
    config.epochs = config.epochs or DEFAULT_EPOCHS
    if config.output is None:
        tag = os.path.basename(os.path.normpath(config.data))
        config.output = os.path.join("runs", f"{config.model}-{tag}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    return task


def _prepare_run_folder(config):
    """A new run folder for `config`, or a resumed run's (its stored settings)."""
    if config.resume:
        if not config.output:
            raise ValueError("resume needs the run folder: pass --output <run folder>.")
        run = Run.open(config.output)
        run.config.resume, run.config.verbose = True, config.verbose
        if config.epochs:  # the one setting a resumed run may change
            run.config.epochs = config.epochs
        return run
    task = _resolve(config)
    config.loss = config.loss or task.default_loss
    if config.loss == "mwl" and config.mwl_weights is None:
        config.mwl_weights = MWL_WEIGHTS
    return Run.create(config)


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
    """`(train, val)` tf.data pipelines for `fit`; SeRP runs get `((view1, view2), mask)`;
    classification runs `(image, label)` with flips and small rotations of the image only."""
    task = config.task_spec
    if task.kind == "classification":
        from keras_litenext import data_classification as cls_data

        train_images, train_labels = arrays["train"]
        augment = cls_data.classification_augmenter(seed=config.seed) if config.augment else None
        train = cls_data.make_classification_dataset(
            train_images, train_labels, config.batch_size, augment=augment, shuffle=True, seed=config.seed,
            drop_remainder=len(train_images) >= config.batch_size,
        )
        return train, cls_data.make_classification_dataset(*arrays["val"], config.batch_size)
    binary = task.output_channels == 1
    train_images, train_masks = arrays["train"]
    augment = data_lib.augmenter(seed=config.seed) if config.augment else None
    if config.serp:
        augment = _serp_views(augment)
    train = data_lib.make_dataset(
        train_images, train_masks, config.batch_size, augment=augment, shuffle=True, seed=config.seed,
        drop_remainder=len(train_images) >= config.batch_size, binary=binary,
    )
    val = data_lib.make_dataset(*arrays["val"], config.batch_size, binary=binary)
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
    run = _prepare_run_folder(config)
    config, task = run.config, run.task
    keras.utils.set_random_seed(config.seed)
    gpus, auto_strategy = _devices()
    strategy = strategy or auto_strategy
    if _switch(config.mixed_precision, gpus > 0):
        keras.mixed_precision.set_global_policy("mixed_float16")
    jit = _switch(config.jit_compile, gpus > 0)

    images, masks, stems, report = run.load_data()
    arrays = run.split_arrays(images, masks, stems)
    sizes = {k: len(v[0]) for k, v in arrays.items()}
    classes = f"; {task.name}: {', '.join(task.class_names)}" if task.output_channels > 1 else ""
    if task.kind == "classification":
        classes = "; classification: " + ", ".join(f"{n} {c}" for n, c in report["per_class"].items())
        classes += f"; {'split folders ' + '/'.join(report['splits']) if report['splits'] else 'stratified split'}"
        classes += f"; {report['ignored']} non-image files ignored" if report.get("ignored") else ""
    what = "images" if task.kind == "classification" else "pairs"
    print(f"Data: {config.data}: {len(stems)} {what} at {config.image_size}x{config.image_size}{classes} "
          f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}"
          + (f"; skipped {len(report['skipped'])}" if report.get("skipped") else "") + ")")
    train_ds, val_ds = build_datasets(config, arrays)
    steps = max(1, sizes["train"] // config.batch_size)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = create_model(
            config.model, input_shape=(config.image_size, config.image_size, config.channels),
            num_classes=task.output_channels, **config.model_kwargs,
        )
        spec = get_spec(config.model)
        callbacks = spec.callbacks(config.epochs)
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
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor=task.monitor, mode=task.monitor_mode, factor=0.5, patience=10, min_lr=config.lr / 100))
        else:
            raise ValueError(f"Unknown schedule {config.schedule!r}: use 'cosine' or 'plateau'.")
        fit_model.compile(
            optimizer=keras.optimizers.AdamW(lr, weight_decay=config.weight_decay),
            loss=task_loss(config),
            metrics=task.metrics(),
            jit_compile=jit,
        )

    out = config.output
    best_path = run.file(BEST)
    best = _best_so_far(run.file(HISTORY), task.monitor) if config.resume else None
    # Order matters. The NaN guard runs first, so nothing after it sees a broken step. The
    # history row and the best model are written before the backup: a kill in between makes
    # the resumed run repeat that epoch (a duplicate history row), never lose its row.
    callbacks = [
        StopOnNonFiniteLoss(),
        *callbacks,
        keras.callbacks.CSVLogger(run.file(HISTORY), append=config.resume),
        BestModelCheckpoint(model, best_path, monitor=task.monitor, mode=task.monitor_mode, best=best,
                            transform=spec.deploy_form),
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

    final = keras.saving.load_model(best_path) if os.path.exists(best_path) else spec.deploy_form(model)
    return finish_run(config, final, arrays, train_seconds)


def task_loss(config):
    """The loss of a run's settings, through its task (one place wires the MWL arguments)."""
    task = config.task_spec
    if task.kind == "classification":
        return task.loss(config.loss, class_weights=config.class_weights, label_smoothing=config.label_smoothing)
    return task.loss(config.loss, mwl_weights=config.mwl_weights, mwl_kernel=config.mwl_kernel,
                     class_weights=config.class_weights)


def _best_so_far(history_csv, monitor="val_dice"):
    import csv

    if not os.path.exists(history_csv):
        return None
    with open(history_csv, newline="") as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor) not in (None, "", "nan")]
    return max(values) if values else None


def finish_run(config, model, arrays, train_seconds=None):
    """Evaluate `model` on the test split; write `metrics.json`, `curves.png`, `test_overlays.png`
    (classification: `metrics.json`, `curves.png`, `confusion_matrix.png`, `test_predictions.csv`)."""
    run = Run(config.output, config)
    task = run.task
    classification = task.kind == "classification"
    test_images, test_targets = arrays["test"]
    logits = np.asarray(model.predict(test_images.astype("float32") / 255.0, batch_size=config.batch_size, verbose=0))
    scores = task.scores(test_targets, logits)
    results = scores if classification else {**summarize(scores), "per_image": {k: np.asarray(v).tolist() for k, v in scores.items()}}
    summary = {
        "model": config.model,
        "params": int(model.count_params()),
        "data": os.path.abspath(config.data),
        "image_size": config.image_size,
        "task": task.name,
        "class_names": list(task.class_names),
        "split": "test",
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        **results,
    }
    run.write_json(METRICS, summary)
    if run.exists(HISTORY):
        plot_history(run.file(HISTORY), run.file("curves.png"))
    if classification:
        _classification_artifacts(run, test_targets, logits, scores)
        counted = f"{scores['images']} test images"
    else:
        n = min(16, len(test_images))
        if n:
            labels = task.labels(logits)
            tiles = [overlay_labels(test_images[i], labels[i], task.num_classes, test_targets[i][..., 0]) for i in range(n)]
            save_grid(run.file("test_overlays.png"), tiles, legend=task.class_names if task.num_classes > 2 else None)
        counted = f"{results['counted']} of {results['images']} test images"
    print(f"Test {task.summary_line(results)} ({counted}) -> {config.output}")
    return summary


def _classification_artifacts(run, test_labels, logits, scores):
    """`confusion_matrix.png` and `test_predictions.csv` of a classification run."""
    from keras_litenext.data_classification import write_predictions_csv
    from keras_litenext.visualize import plot_confusion_matrix

    task = run.task
    plot_confusion_matrix(scores["confusion_matrix"], task.class_names, run.file("confusion_matrix.png"),
                          title=f"test split ({scores['images']} images), accuracy {scores['accuracy']:.3f}")
    stems = (run.splits() or {}).get("test")
    if stems is None or len(stems) != len(test_labels):
        stems = [str(i) for i in range(len(test_labels))]
    write_predictions_csv(run.file("test_predictions.csv"), stems, task.probabilities(logits), task.class_names, true_labels=test_labels)
