"""Quantization-aware fine-tuning of a trained model: the application above the QAT core.

`keras_litenext.quantization` rewrites and calibrates graphs and knows nothing of losses, data
or run folders; this module fine-tunes a QAT model with a training loss and data pipeline
(`qat_finetune`) and does it for a training run (`finetune_run`).
"""

import math

import keras
import numpy as np

from keras_litenext.quantization import calibrate, choose_rsqrt_quantile, is_qat_model, quantize_model, tie_ranges

__all__ = ["finetune_run", "qat_finetune"]


class _KeepBest(keras.callbacks.Callback):
    """Keep the weights (and ranges) of the best `monitor` epoch, the calibrated start included."""

    def __init__(self, monitor="val_dice", start_value=None):
        super().__init__()
        self.monitor, self.best, self.weights = monitor, start_value, None

    def set_model(self, model):
        super().set_model(model)
        if self.best is not None and self.weights is None:
            self.weights = [np.array(w) for w in model.get_weights()]
        self.best_epoch = 0 if self.best is not None else None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or float(value) > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = [np.array(w) for w in self.model.get_weights()]

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def qat_finetune(
    model, train_ds, val_ds=None, epochs=3, lr=1e-5, loss="bce_dice", weight_decay=1e-2,
    calibration_data=None, calibration_steps=32, keep_best=True, verbose="auto", callbacks=(), jit_compile=False,
):
    """Quantization-aware fine-tuning, starting from float weights and calibrated ranges.

    Args:
        model: a trained float model (quantized here with `quantize_model`) or a QAT model.
        train_ds: training batches `(image, mask)`, e.g. from `keras_litenext.training.build_datasets`
            (same augmentation as training).
        val_ds: optional validation batches; with `keep_best`, the weights of the best
            validation Dice are kept (the calibrated start counts, so fine-tuning never makes
            the validation Dice worse than plain calibration).
        epochs: int, fine-tuning epochs. 0 only calibrates.
        lr: peak learning rate (cosine decay to 1 % of it). Defaults to 1e-5, where a
            training run's cosine schedule ends (1e-3 x 1 %); larger rates moved a converged
            LiteNeXt away from its optimum faster than they removed quantization error.
        loss: a `keras.losses.Loss` or a name for `keras_litenext.losses.get_loss`.
        weight_decay: AdamW weight decay.
        calibration_data: images or batches to calibrate the ranges on; defaults to `train_ds`.
        calibration_steps: batches used for calibration. Defaults to 32.
        keep_best: restore the weights of the best validation Dice at the end.
        verbose: passed to `fit`.
        callbacks: extra Keras callbacks.
        jit_compile: compile the training step with XLA (worth it on a GPU; on a CPU tracing
            takes minutes). Defaults to False.

    Returns:
        The fine-tuned QAT model (compiled), ready for `keras_litenext.export.convert(qat, "int8", ...)`.
        Its `qat_history` attribute holds the `fit` history (None when epochs is 0) and
        `qat_best_epoch` the epoch kept (0: the calibrated start).
    """
    from keras_litenext.losses import get_loss
    from keras_litenext.metrics import get_metrics

    qat = model if is_qat_model(model) else quantize_model(model)
    calibrate(qat, calibration_data if calibration_data is not None else train_ds, steps=calibration_steps)
    loss = get_loss(loss) if isinstance(loss, str) else loss
    steps = _cardinality(train_ds)
    schedule = lr
    if steps and epochs:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * epochs, alpha=1e-2)
    qat.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay), loss=loss, metrics=get_metrics(), jit_compile=jit_compile
    )
    qat.qat_history, qat.qat_best_epoch = None, 0
    if not epochs:
        return qat
    callbacks = [keras.callbacks.TerminateOnNaN(), *callbacks]
    keeper = None
    if keep_best and val_ds is not None:
        start = qat.evaluate(val_ds, verbose=0, return_dict=True).get("dice")
        keeper = _KeepBest("val_dice", start_value=None if start is None else float(start))
        callbacks.append(keeper)
    history = qat.fit(
        train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks, verbose=verbose, shuffle=False
    )
    qat.qat_history = history.history
    qat.qat_best_epoch = keeper.best_epoch if keeper is not None else int(epochs)
    tie_ranges(qat)  # the moving averages of fine-tuning move tied ranges apart
    return qat


def _cardinality(ds):
    try:
        n = int(ds.cardinality()) if hasattr(ds, "cardinality") else len(ds)
    except TypeError:
        return None
    return n if n > 0 else None


def finetune_run(model, config, arrays, epochs=3, lr=1e-5, verbose="auto", calibration_steps=32):
    """`qat_finetune` with a training run's loss, batch size and data pipeline.

    Args:
        model: the run's float model (`best.keras`).
        config: the run's `keras_litenext.training.TrainConfig` (or its dict, from config.json).
        arrays: `{"train": (images, masks), "val": (images, masks), ...}` uint8 arrays, as
            `training.train` splits them (`data.select` with the run's `splits.json`). The
            layer norms' `rsqrt_quantile` is chosen on the val split (`choose_rsqrt_quantile`);
            the returned model's `rsqrt_quantile_scores` holds the val Dice of each candidate.
        epochs, lr, verbose, calibration_steps: as in `qat_finetune`.
    """
    from keras_litenext.losses import get_loss
    from keras_litenext.training import TrainConfig, build_datasets

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if config.serp:  # the QAT model is the plain inference model; fine-tune it without SeRP views
        config = TrainConfig.from_dict({**config.to_dict(), "serp": False})
    loss_kwargs = {}
    if config.loss == "mwl":
        w_m, w_o, w_b = config.mwl_weights
        loss_kwargs = dict(w_margin=w_m, w_object=w_o, w_background=w_b, kernel_size=config.mwl_kernel)
    train_ds, val_ds = build_datasets(config, arrays)
    calibration = arrays["train"][0]
    qat = quantize_model(model)
    scores = None
    if len(arrays.get("val", ((), ()))[0]):
        scores = choose_rsqrt_quantile(qat, calibration, *arrays["val"], steps=min(8, calibration_steps), calibrate_best=False)
    qat = qat_finetune(
        qat, train_ds, val_ds, epochs=epochs, lr=lr, loss=get_loss(config.loss, **loss_kwargs),
        weight_decay=config.weight_decay, calibration_data=calibration, calibration_steps=calibration_steps,
        verbose=verbose, jit_compile=_jit(config.jit_compile),
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
