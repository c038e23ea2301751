"""The training loop: `train(config)` from a dataset folder to a finished run folder, the
`tf.data` pipelines it fits on (`build_datasets`) and the loss of its settings (`task_loss`)."""

import contextlib
import os
import time

import keras

from keras_litenext.models import create_model, get_spec
from keras_litenext.runs import BACKUP, BEST, CONFIG, HISTORY
from keras_litenext.train.callbacks import (
    BestModelCheckpoint,
    NonFiniteLossError,
    RunBackup,
    RunFolderGuard,
    StopOnNonFiniteLoss,
    build_optimizer,
)
from keras_litenext.train.finish import finish_run
from keras_litenext.train.resume import (
    discard_failed_start,
    kept_state,
    prepare_run_folder,
    restore_state,
    resumed_lr,
)
from keras_litenext.utils import OutputError

__all__ = ["build_datasets", "task_loss", "train"]


def train(config, strategy=None, given=None, group=None):
    """Train a model as `config` says and return the test metrics (also in `metrics.json`).

    Args:
        config: a `TrainConfig`.
        strategy: optional `tf.distribute.Strategy`; by default `MirroredStrategy` when more
            than one GPU is visible (TensorFlow backend), else none.
        given: for `config.resume`, the names of the settings the caller set (default: those
            that differ from `TrainConfig()`); `RESUMABLE` ones are applied, others must match.
        group: a `distributed.Group` (JAX, several processes): process 0 trains as above and
            writes the run folder; the others take its settings and split, write nothing and
            return None.

    Raises:
        data.DatasetError: a problem with the dataset, found before training starts.
        ValueError: a setting out of range, or a resume with settings that differ.
        runs.RunError: the run folder is in use by another process, or cannot be resumed.
        utils.OutputError: the run folder cannot be written (found before training when it
            can be; else at the failing write, with the last good state kept).
        NonFiniteLossError: the loss became NaN/inf; the run folder keeps the last good state.
        distributed.GroupError: a process of the group stopped (or could not take part).

    A new run that fails before its first epoch is saved leaves nothing behind.
    """
    if group is not None and not group.is_chief:
        try:
            return _train(group.follow(config), strategy, group)
        except BaseException as err:
            lost = group.failed(err)
            if lost is not None:
                raise lost from None
            raise
    with contextlib.ExitStack() as stack:
        try:
            run = prepare_run_folder(config, given, stack)
        except BaseException as err:
            if group is not None:
                group.failed(err)
            raise
        try:
            return _train(run, strategy, group)
        except BaseException as err:
            lost = group.failed(err) if group is not None else None
            discarded = discard_failed_start(run)
            if discarded and isinstance(err, NonFiniteLossError):
                raise NonFiniteLossError(
                    f"Training stopped: {err}, before the first epoch was finished, so nothing was kept "
                    f"({run.path} is removed); lower --lr or check the data, then run the same command again.") from None
            if lost is not None:
                raise type(lost)(f"{lost}; " + (f"no epoch was finished ({run.path} is removed): start every process again"
                                                if discarded else f"{run.path} keeps {kept_state(run.path) or 'its settings'}: "
                                                "start every process again with --resume")) from None
            raise


def _train(run, strategy=None, group=None):
    config, task = run.config, run.task
    writes = group is None or group.is_chief  # a group's other processes write nothing
    keras.utils.set_random_seed(config.seed)
    gpus, auto_strategy = _devices()
    strategy = strategy or auto_strategy
    if _switch(config.mixed_precision, gpus > 0):
        keras.mixed_precision.set_global_policy("mixed_float16")
    # auto: XLA on a GPU; under JAX always (JAX without jit runs op by op, ~10x slower)
    jit = _switch(config.jit_compile, gpus > 0 or keras.backend.backend() == "jax")

    images, targets, stems, report = run.load_data()
    arrays = run.split_arrays(images, targets, stems)
    sizes = {k: len(v[0]) for k, v in arrays.items()}
    task.warn_about_targets(arrays, config.data)
    if writes:
        print(f"Data: {config.data}: {len(stems)} {task.item_word} at {config.image_size}x{config.image_size}{task.data_line(report)} "
              f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}"
              + (f"; skipped {len(report['skipped'])}" if report.get("skipped") else "") + ")")
    train_ds, val_ds = build_datasets(config, arrays)
    steps = max(1, sizes["train"] // config.batch_size)
    if group is not None:
        if group.is_chief:
            group.share_run(run, sizes["train"], config.batch_size)
        train_ds, val_ds = _group_datasets(group, arrays, train_ds, val_ds, config.batch_size, steps)

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model, fit_model, spec, callbacks = _compiled_models(config, task, steps, jit)
    if not writes:
        return _follow_fit(group, run, fit_model, train_ds, val_ds, callbacks)

    out = config.output
    best_path = run.file(BEST)
    backup = RunBackup(run.file(BACKUP))
    checkpoint = BestModelCheckpoint(model, best_path, monitor=task.monitor, mode=task.monitor_mode, transform=spec.deploy_form)
    if group is None:
        done = restore_state(run, fit_model, checkpoint, backup) if config.resume else 0
    else:  # the state is loaded on every process; the run folder's part is the chief's alone
        done = _group_restore(group, run, fit_model, backup if config.resume else None)
        if config.resume:
            with group.alone():
                restore_state(run, fit_model, checkpoint, backup, done=done)
    # Order matters. The NaN guard runs first, so nothing after it sees a broken step; the folder
    # guard next, so nothing is written into a vanished folder. The history row is written
    # before the backup (a kill in between replays that epoch and its row); the best model after
    # it (a kill while saving it is repaired from the backup, which holds that epoch).
    writers = [
        keras.callbacks.CSVLogger(run.file(HISTORY), append=config.resume),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        backup,
        checkpoint,
    ]
    callbacks = [
        StopOnNonFiniteLoss(),
        RunFolderGuard(out, CONFIG),
        *callbacks,
        *(writers if group is None else [group.chief_callbacks(writers)]),
    ]
    start = time.time()
    try:
        if done < config.epochs:
            fit_model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done, callbacks=callbacks,
                          verbose=config.verbose, shuffle=False)
        train_seconds = time.time() - start
        if group is not None:
            final = _leave_group(group, best_path, lambda: spec.deploy_form(model))
        else:
            final = keras.saving.load_model(best_path) if os.path.exists(best_path) else spec.deploy_form(model)
        summary = finish_run(config, final, arrays, train_seconds, spacing=_test_spacing(run, report))
    except NonFiniteLossError as err:
        kept = kept_state(out)
        if not kept and not config.resume:
            raise  # a failed start: `train` removes the folder and says so
        raise NonFiniteLossError(
            f"Training stopped: {err}. " + (f"The last good state is kept in {out} ({kept})" if kept else
                                            f"No epoch of {out} was finished yet")
            + "; lower --lr or check the data, then continue with --resume --lr <lower rate>."
        ) from None
    except Exception as err:
        if not _is_write_error(err) or (group is not None and group.is_lost(err)):
            raise
        kept = kept_state(out) if os.path.isdir(out) else ""
        raise OutputError(
            (str(err) if isinstance(err, OutputError) else f"cannot write to the run folder {out}: {_one_line(err)}")
            + (f"; the last good state is kept ({kept}): fix the folder, then continue with --resume" if kept else "")
        ) from None
    backup.delete()  # last: until metrics.json and the pictures are written, a resume finishes them
    return summary


def _group_datasets(group, arrays, train_ds, val_ds, batch_size, steps):
    """A group's pipelines: the same data on every process (checked), this process's slice of each
    global batch, the whole validation batch."""
    group.check_data(arrays)
    if group.is_chief:
        print(f"Training in {group.count} processes on {group.devices} devices: global batch {batch_size}, "
              f"{batch_size // group.count} per process")
    return group.shard_train(train_ds, batch_size, steps), group.replicate(val_ds)


def _group_restore(group, run, fit_model, backup):
    """A group's training state: the chief's `backup` loaded on every process, and a resumed
    plateau run's new --lr. Returns the epochs done."""
    done = group.restore(fit_model, backup)
    if done:
        resumed_lr(run, fit_model)
    return done


def _follow_fit(group, run, fit_model, train_ds, val_ds, callbacks):
    """A group's other process: the chief's state, the same `fit` without the run folder's
    callbacks and progress bar, then the group's end. Returns None (the chief has the scores)."""
    config = run.config
    print(f"{group.name.capitalize()}: training with process 0 at {group.launch.coordinator} (it writes the run folder)")
    done = _group_restore(group, run, fit_model, None)
    if done < config.epochs:
        fit_model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done,
                      callbacks=[StopOnNonFiniteLoss(), *callbacks], verbose=0, shuffle=False)
    group.leave()
    print(f"{group.name.capitalize()}: done; process 0 scores the test split and writes {config.output}")


def _leave_group(group, best_path, deploy_model):
    """End the group after `fit` and return the chief's final model as its own (not spread over
    the group's devices): `best.keras`, else the last weights (`deploy_model()`), read back after the end."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = best_path
        if not os.path.exists(best_path):
            path = os.path.join(tmp, "last.keras")
            with group.alone():
                deploy_model().save(path)
        group.leave()
        return keras.saving.load_model(path)


def _compiled_models(config, task, steps, jit):
    """`(model, fit_model, spec, callbacks)`: the inference model, the model `fit` trains (with
    SeRP, its training wrapper) compiled with the task's loss and metrics, the model's spec and
    the callbacks they add (the family's, SeRP's teacher update, the plateau schedule)."""
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
        loss=task.run_loss(config),
        metrics=task.metrics(),
        jit_compile=jit,
    )
    build_optimizer(fit_model)  # one trace of the training step, not two
    return model, fit_model, spec, callbacks


def _one_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def build_datasets(config, arrays):
    """`(train, val)` tf.data pipelines for `fit`, in the task's form (`task.dataset`); SeRP runs
    get `((view1, view2), target)`."""
    task = config.task_spec
    train_images, train_targets = arrays["train"]
    # config.augment: True (the task's augmentation), False (none) or `augmenter` arguments over it
    options = config.augment if isinstance(config.augment, dict) else ({} if config.augment else None)
    augment = None if options is None else task.augmenter(seed=config.seed, **options)
    if config.serp:
        augment = _serp_views(augment)
    train = task.dataset(train_images, train_targets, config.batch_size, augment=augment, shuffle=True, seed=config.seed,
                         drop_remainder=len(train_images) >= config.batch_size)
    val = task.dataset(*arrays["val"], config.batch_size)
    if config.serp:
        val = val.map(lambda x, y: ((x, x), y))
    return train, val


def task_loss(config):
    """The loss of a run's settings, through its task (`Task.run_loss`: one place wires the MWL arguments)."""
    return config.task_spec.run_loss(config)


def _test_spacing(run, report):
    """The `(row, column)` pixel size of each test image (DICOM, NIfTI), or None unless all are known."""
    known, stems = (report or {}).get("spacing") or {}, (run.splits() or {}).get("test") or []
    return [known[s][:2] for s in stems] if stems and all(s in known for s in stems) else None


def _is_write_error(err):
    if isinstance(err, OSError):
        return True
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return isinstance(err, (tf.errors.PermissionDeniedError, tf.errors.NotFoundError, tf.errors.FailedPreconditionError))


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
