"""Quantization-aware fine-tuning of a trained model: the application above the QAT core.

`keras_litenext.quantization` rewrites and calibrates graphs and knows nothing of losses, data
or run folders; this module fine-tunes a QAT model with a task's loss, metrics and data
pipeline (`qat_finetune`) and does it for a training run (`finetune_run`).
"""

import dataclasses
import math

import keras
import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.quantization import (
    calibrate,
    choose_rsqrt_quantile,
    is_qat_model,
    quant_layers,
    quantize_model,
    tie_ranges,
)
from keras_litenext.train.callbacks import build_optimizer

__all__ = ["finetune_run", "qat_finetune", "val_score_fn"]


class _TieRanges(keras.callbacks.Callback):
    """Tie the concatenation ranges before every validation, so each epoch is scored (and kept)
    as the int8 file will compute it: fine-tuning's moving averages move tied ranges apart."""

    def on_test_begin(self, logs=None):
        tie_ranges(self.model)


class _KeepBest(keras.callbacks.Callback):
    """Keep the weights (and ranges) of the best `monitor` epoch, the calibrated start included."""

    def __init__(self, monitor="val_dice", mode="max", start_value=None, start_weights=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.best, self.weights = start_value, start_weights
        self.best_epoch = 0 if start_value is not None else None

    def _better(self, value):
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self._better(float(value)):
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = [np.array(w) for w in self.model.get_weights()]

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def _output_task(model):
    from keras_litenext.tasks import task_for_output

    return task_for_output(model.outputs[0].shape)


def qat_finetune(
    model, train_ds, val_ds=None, epochs=3, lr=1e-5, loss=None, metrics=None, monitor="val_dice", mode="max",
    weight_decay=1e-2, calibration_data=None, calibration_steps=32, keep_best=True, verbose="auto", callbacks=(),
    jit_compile=False, progress=None,
):
    """Quantization-aware fine-tuning, starting from float weights and calibrated ranges.

    Args:
        model: a trained float model (quantized here with `quantize_model`) or a QAT model.
        train_ds: training batches `(image, mask)`, e.g. from `keras_litenext.train.build_datasets`
            (same augmentation as training).
        val_ds: optional validation batches; with `keep_best`, the weights of the best
            `monitor` epoch are kept (the calibrated start counts, so fine-tuning never makes
            the validation score worse than plain calibration).
        epochs: int, fine-tuning epochs. 0 only calibrates.
        lr: peak learning rate (cosine decay to 1 % of it). Defaults to 1e-5, where a
            training run's cosine schedule ends (1e-3 x 1 %); larger rates moved a converged
            LiteNeXt away from its optimum faster than they removed quantization error.
        loss: a `keras.losses.Loss`, or a name for `keras_litenext.losses.get_loss` (for the
            model's output channels); None: the default loss of the task of the output
            (`tasks.task_for_output`). A run passes its own (`train.task_loss`).
        metrics: Keras metrics for `compile`; None: the metrics of the task of the output
            (`task.metrics()`). They must include `monitor` without `val_`.
        monitor: the validation value that picks the kept epoch (a task's `monitor`).
        mode: `"max"` or `"min"` for `monitor` (a task's `monitor_mode`).
        weight_decay: AdamW weight decay.
        calibration_data: images or batches to calibrate the ranges on; defaults to `train_ds`.
        calibration_steps: batches used for calibration. Defaults to 32.
        keep_best: restore the weights of the best validation epoch at the end.
        verbose: passed to `fit`.
        callbacks: extra Keras callbacks.
        jit_compile: compile the training step with XLA (worth it on a GPU; on a CPU tracing
            takes minutes). Defaults to False.

    Returns:
        The fine-tuned QAT model (compiled), ready for `keras_litenext.litert.convert(qat, "int8", ...)`.
        Its `qat_history` attribute holds the `fit` history (None when epochs is 0),
        `qat_start_score` the `monitor` value of the calibrated start (None without `val_ds`)
        and `qat_best_epoch` the epoch kept (0: the calibrated start).
    """
    qat = model if is_qat_model(model) else quantize_model(model)
    calibrate(qat, calibration_data if calibration_data is not None else train_ds, steps=calibration_steps, progress=progress)
    if loss is None or isinstance(loss, str):
        task = _output_task(qat)
        loss = task.loss(loss)
    if metrics is None:
        metrics = _output_task(qat).metrics()
    steps = _cardinality(train_ds)
    schedule = lr
    if steps and epochs:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * epochs, alpha=1e-2)
    qat.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay), loss=loss, metrics=metrics, jit_compile=jit_compile
    )
    qat.qat_history, qat.qat_best_epoch, qat.qat_start_score = None, 0, None
    if not epochs:
        return qat
    build_optimizer(qat)
    callbacks = [keras.callbacks.TerminateOnNaN(), _TieRanges(), *callbacks]
    keeper = None
    if val_ds is not None:
        key = monitor.removeprefix("val_")
        start = qat.evaluate(val_ds, verbose=0, return_dict=True)
        if key not in start:
            raise ValueError(f"qat_finetune: monitor {monitor!r} is not among the compiled metrics ({', '.join(sorted(start))}).")
        qat.qat_start_score = float(start[key])
        if keep_best:
            start_value = qat.qat_start_score if math.isfinite(qat.qat_start_score) else None
            keeper = _KeepBest(monitor, mode=mode, start_value=start_value,
                               start_weights=[np.array(w) for w in qat.get_weights()] if start_value is not None else None)
            callbacks.append(keeper)
    history = qat.fit(
        train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks, verbose=verbose, shuffle=False
    )
    qat.qat_history = history.history
    qat.qat_best_epoch = keeper.best_epoch if keeper is not None else int(epochs)
    tie_ranges(qat)  # the last epoch's moving averages, when no validation tied them
    return qat


def _cardinality(ds):
    try:
        n = int(ds.cardinality()) if hasattr(ds, "cardinality") else len(ds)
    except TypeError:
        return None
    return n if n > 0 else None


def val_score_fn(task, images, masks, batch_size=8):
    """`score(model) -> float`: the task's monitored score of uint8 `images` and their labels
    `masks` (`task.monitor_score`: the mean per-image foreground Dice, NaN when no image holds a
    foreground class; a classifier's macro AUC), the score `quantization.choose_rsqrt_quantile`
    ranks candidates by.

    On TensorFlow the forward pass is traced once per model and reused for every candidate: the
    candidates differ only in the range variables' values, which the traced function reads (eager
    calls of the fake-quant layers cost 4x more here: 53 s against 13 s for the 4 candidates of a
    tiny run on 2 cores). Other backends run it eagerly."""
    x = to_float(images)
    traced = {}

    def forward(model):
        if keras.backend.backend() != "tensorflow":
            return lambda batch: model(batch, training=False)
        if id(model) not in traced:
            import tensorflow as tf

            traced.clear()
            traced[id(model)] = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        return traced[id(model)]

    def score(model):
        run = forward(model)
        logits = np.concatenate([keras.ops.convert_to_numpy(run(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
        return task.monitor_score(masks, logits)

    return score


def finetune_run(model, config, arrays, epochs=3, lr=1e-5, verbose="auto", calibration_steps=32, progress=None):
    """`qat_finetune` with a training run's task (loss, metrics, monitor), batch size and data
    pipeline.

    Args:
        model: the run's float model (`best.keras`).
        config: the run's `keras_litenext.runs.TrainConfig` (or its dict, from config.json).
        arrays: `{"train": (images, masks), "val": (images, masks), ...}` uint8 arrays, as
            `runs.Run.arrays` gives them. The layer norms' `rsqrt_quantile` is chosen on the
            val split by the task's mean foreground Dice (`choose_rsqrt_quantile`); the
            returned model's `rsqrt_quantile_scores` holds the score of each candidate.
        epochs, lr, verbose, calibration_steps, progress: as in `qat_finetune`.
    """
    from keras_litenext.runs import TrainConfig
    from keras_litenext.train import build_datasets, task_loss

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if config.serp:  # the QAT model is the plain inference model; fine-tune it without SeRP views
        config = dataclasses.replace(config, serp=False)
    task = config.task_spec
    train_ds, val_ds = build_datasets(config, arrays)
    calibration = arrays["train"][0]
    val_images, val_masks = arrays.get("val", (np.zeros((0,), np.uint8), None))
    has_val = len(val_images) > 0
    qat = quantize_model(model)
    scores = None
    if has_val and any(hasattr(layer, "rsqrt_quantile") for layer in quant_layers(qat)):  # only models with layer norms
        scores = choose_rsqrt_quantile(qat, calibration, val_score_fn(task, val_images, val_masks, config.batch_size),
                                       steps=min(8, calibration_steps), calibrate_best=False)
    qat = qat_finetune(
        qat, train_ds, val_ds if has_val else None, epochs=epochs, lr=lr, loss=task_loss(config), metrics=task.metrics(),
        monitor=task.monitor, mode=task.monitor_mode, weight_decay=config.weight_decay, calibration_data=calibration,
        calibration_steps=calibration_steps, verbose=verbose, jit_compile=_jit(config.jit_compile), progress=progress,
    )
    qat.rsqrt_quantile_scores = scores
    return qat


def _jit(value):
    """A run's `jit_compile` setting: on/off, or "auto" = on when a GPU is visible."""
    if value != "auto":
        return value in (True, "on", "true", "1", 1)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    return False
