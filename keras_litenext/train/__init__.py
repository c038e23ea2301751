"""Training: one `train(config)` call from a dataset folder to a finished run folder.

A run folder holds everything a run produces, each file written atomically:

- `config.json`: the settings (a resumed run reuses them; only `RESUMABLE` ones may change);
- `splits.json`: the train/val/test stems (evaluation and resumption reuse them);
- `best.keras`: the inference model with the best validation Dice (plain model, no SeRP heads);
- `backup/`: the training state after the last finished epoch (`RunBackup`), so a killed run
  resumes (`resume=True`) losing at most the epoch in progress; removed once the run is finished;
- `.lock`: held while a process trains into the folder, so a second one is refused;
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
import csv
import datetime
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
import zipfile

import keras
import numpy as np

from keras_litenext import data as data_lib
from keras_litenext.data.intensity import to_float
from keras_litenext.losses import MWL_WEIGHTS
from keras_litenext.metrics import summarize
from keras_litenext.models import create_model, get_spec
from keras_litenext.runs import BEST, CONFIG, HISTORY, LOCK, METRICS, MODEL_CARD, Run, RunError, TrainConfig
from keras_litenext.utils import OutputError, atomic_path, ensure_writable, remove_temporaries, write_text
from keras_litenext.visualize import overlay_labels, plot_history, save_grid

__all__ = ["BestModelCheckpoint", "NonFiniteLossError", "RunBackup", "StopOnNonFiniteLoss", "TrainConfig", "build_datasets",
           "finish_run", "train"]

SAMPLE_IMAGE_SIZE = 96
SAMPLE_EPOCHS = 40  # the bundled sample trains in a few minutes on 2 CPU cores
DEFAULT_EPOCHS = 60
BACKUP = "backup"
BEST_ENTRY = "litenext_best.json"  # inside best.keras: the epoch and score it was saved at
# Settings a resumed run may change (they do not alter what was trained so far); a resume that
# gives any other setting different from the run's config.json is refused, naming it.
RESUMABLE = ("epochs", "lr", "weight_decay", "mixed_precision", "jit_compile")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Abort `fit` at the first NaN/inf loss, *before* any epoch-end checkpoint can store
    broken weights: the last good `BackupAndRestore` state and `best.keras` survive."""

    epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            where = "" if self.epoch is None else f" of epoch {self.epoch + 1}"
            raise NonFiniteLossError(f"loss became {float(loss)} at batch {batch + 1}{where}")


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save `model` (the inference model, which may differ from the one being fitted) to
    `path` whenever `monitor` improves; atomic, so a crash never leaves a half-written file.
    `transform` (e.g. a family's re-parameterisation, `ModelSpec.deploy_form`) is applied to
    the model before it is saved. The file records its epoch and score (`saved_epoch`)."""

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
            self.save(epoch, value)

    def save(self, epoch, value):
        model = self.transform(self.model_to_save) if self.transform else self.model_to_save
        with atomic_path(self.path) as tmp:
            model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(BEST_ENTRY, json.dumps({"epoch": int(epoch), self.monitor: float(value)}))

    @staticmethod
    def saved_epoch(path):
        """The epoch a `best.keras` was saved at (None: absent, or written without the record)."""
        try:
            with zipfile.ZipFile(path) as z:
                return int(json.loads(z.read(BEST_ENTRY))["epoch"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None


class RunBackup(keras.callbacks.Callback):
    """The training state (weights and optimizer) after each finished epoch, as
    `folder/epoch-NNNN.weights.h5` (N = epochs done): written under a temporary name, then
    renamed, then the older file removed. The newest file is always complete whenever the
    process is killed, and its name alone says which epoch it holds (keras'
    `BackupAndRestore` rewrites a weights file and a metadata file in place, so a kill between or
    during them leaves a pair that does not match or cannot be read)."""

    _NAME = re.compile(r"^epoch-(\d+)\.weights\.h5$")

    def __init__(self, folder):
        super().__init__()
        self.folder = os.fspath(folder)

    def latest(self):
        """`(epochs_done, path)` of the newest state, `(0, None)` when there is none (a
        `BackupAndRestore` pair, as earlier versions wrote, counts too)."""
        found = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self.folder):
                m = self._NAME.match(name)
                if m:
                    found.append((int(m.group(1)), os.path.join(self.folder, name)))
        legacy = os.path.join(self.folder, "latest.weights.h5")
        if not found and os.path.isfile(legacy):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(os.path.join(self.folder, "training_metadata.json"), encoding="utf-8") as f:
                    found.append((int(json.load(f)["epoch"]), legacy))
        return max(found) if found else (0, None)

    def restore(self, model):
        """Load the newest state into `model` (compiled); returns the epochs it had finished."""
        done, path = self.latest()
        if path is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception as err:  # noqa: BLE001  (one line naming the file)
            raise RunError(f"{path}: the saved training state cannot be read ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); delete {self.folder} to restart the run") from None
        return done

    def on_epoch_end(self, epoch, logs=None):
        model = self.model  # on JAX, syncs the training state into the variables
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"epoch-{epoch + 1:04d}.weights.h5")
        fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp.weights.h5", dir=self.folder)
        os.close(fd)
        try:
            model.save_weights(tmp, overwrite=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        for name in os.listdir(self.folder):
            m = self._NAME.match(name)
            if m and int(m.group(1)) < epoch + 1:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.folder, name))

    def delete(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class _RunFolderGuard(keras.callbacks.Callback):
    """Stop at the end of an epoch, before anything is written, when the run folder is gone
    (deleted or unmounted) instead of scattering files into a recreated one."""

    def __init__(self, folder, marker):
        super().__init__()
        self.folder, self.marker = folder, marker

    def on_epoch_end(self, epoch, logs=None):
        if not os.path.isfile(os.path.join(self.folder, self.marker)):
            raise OutputError(f"the run folder {self.folder} vanished during training (its {self.marker} is gone): "
                              f"stopped after epoch {epoch + 1}")


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
        from keras_litenext.data.folders import default_image_size, probe_size

        config.image_size = default_image_size(max(probe_size(config.data)), get_spec(config.model).size_multiple)
    config.image_size = config.image_size or 256
    config.epochs = config.epochs or DEFAULT_EPOCHS
    if config.intensity is None and task.kind != "classification":  # stored, so config.json says how pixels map
        from keras_litenext.data.intensity import default_for

        config.intensity = default_for(config.data).to_dict()
    if config.output is None:
        tag = os.path.basename(os.path.normpath(config.data))
        config.output = os.path.join("runs", f"{config.model}-{tag}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    return task


def _flag(name):
    return "--" + name.replace("_", "-")


def _same_setting(name, given, stored):
    """Whether a setting given to a resumed run means what the run folder stored."""
    from keras_litenext.models.registry import resolve_model_name

    if name == "data":
        return given is None or os.path.abspath(given) == os.path.abspath(stored or "")
    if name == "splits" and given and stored:
        return os.path.abspath(given) == os.path.abspath(stored)
    if name == "model":
        try:
            resolved, _ = resolve_model_name(given)
        except ValueError:
            return False
        return resolved == stored
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)):
        return len(given) == len(stored) and all(
            math.isclose(float(a), float(b)) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else a == b
            for a, b in zip(given, stored))
    if isinstance(given, float) and isinstance(stored, (int, float)):
        return math.isclose(given, float(stored))
    return given == stored


def _resume_changes(stored, config, given):
    """Apply the `RESUMABLE` settings of `config` to a run's stored settings; refuse (one
    `ValueError` naming them) any other setting that differs. Returns `{name: (old, new)}`."""
    defaults = TrainConfig()
    if given is None:  # the library call: what differs from the defaults was given
        given = {f for f in stored.to_dict() if getattr(config, f) != getattr(defaults, f)}
    changed, refused = {}, []
    for name in sorted(set(given) - {"resume", "output", "verbose"}):
        new, old = getattr(config, name), getattr(stored, name)
        if name == "model_kwargs" and new and all(old.get(k) == v for k, v in new.items()):
            continue
        if _same_setting(name, new, old):
            continue
        if name in RESUMABLE and new is not None:
            changed[name] = (old, new)
            setattr(stored, name, new)
        else:
            refused.append(f"{_flag(name)} {new} (the run has {old})")
    if refused:
        raise ValueError(
            f"--resume continues {stored.output} with the settings in its config.json, and these differ: {'; '.join(refused)}. "
            f"Only {', '.join(_flag(n) for n in RESUMABLE)} may change on resume: drop the others, or start a new run "
            "with another --output.")
    return changed


def _prepare_run_folder(config, given=None, stack=None):
    """A new run folder for `config`, or a resumed run's (its stored settings, with the
    `RESUMABLE` ones changed); locked for this process (`stack` holds the lock)."""
    stack = stack if stack is not None else contextlib.ExitStack()
    config.validate()
    if config.resume:
        if not config.output:
            raise ValueError("resume needs the run folder: pass --output <run folder>.")
        run = Run.open(config.output)
        ensure_writable(run.path, "run folder")
        stack.enter_context(run.lock())
        if run.exists(METRICS) and RunBackup(run.file(BACKUP)).latest()[1] is None:
            raise RunError(f"{run.path} is a finished run (metrics.json is written and no training state is left): "
                           "nothing to resume; train a new run with another --output.")
        stored_verbose = run.config.verbose
        changes = _resume_changes(run.config, config, given)
        run.config.validate()
        if changes:  # config.json says what the run goes on with
            run.write_json(CONFIG, {**run.config.to_dict(), "resume": False, "verbose": stored_verbose})
        run.config.resume, run.config.verbose = True, config.verbose
        for name, (old, new) in changes.items():
            print(f"Resuming with {_flag(name)} {new} (was {old})")
        for folder in (run.path, run.file(BACKUP)):
            remove_temporaries(folder)  # left by a write the kill interrupted
        run.changes = changes
        return run
    task = _resolve(config)
    multiple = get_spec(config.model).size_multiple
    if config.image_size % multiple:
        raise ValueError(f"--image-size {config.image_size}: {config.model} needs a multiple of {multiple} "
                         f"(e.g. {max(multiple, config.image_size // multiple * multiple)} or {-(-config.image_size // multiple) * multiple})")
    config.loss = config.loss or task.default_loss
    if config.loss == "mwl" and config.mwl_weights is None:
        config.mwl_weights = MWL_WEIGHTS
    out = config.output
    created = not os.path.exists(out)
    ensure_writable(out, "run folder")
    stack.enter_context(Run(out, config).lock())  # before the emptiness check: a running fit is named as such
    run = Run.create(config)
    run.created_folder, run.changes = created, {}
    return run


def _discard_failed_start(run):
    """Remove what a new run wrote when it failed before its first epoch was saved, so the same
    command can simply be run again."""
    if getattr(run, "created_folder", None) is None or RunBackup(run.file(BACKUP)).latest()[1] is not None:
        return False
    if run.created_folder:
        shutil.rmtree(run.path, ignore_errors=True)
    else:  # an empty folder the user made: empty it again
        for name in set(os.listdir(run.path)) - {LOCK}:
            path = os.path.join(run.path, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    return True


def _history_until(path, epochs_done):
    """Keep the rows of `history.csv` of the epochs the backup holds (a killed epoch's row is
    replayed); returns them."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = []
        for row in reader:
            try:
                complete = None not in row.values() and int(row["epoch"]) < epochs_done
            except (KeyError, TypeError, ValueError):
                complete = False
            if complete:
                rows.append(row)
    if not rows:
        os.remove(path)
        return []
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return rows


def _best_row(rows, monitor, mode):
    """`(epoch, value)` of the first best finite `monitor` value, or None."""
    best = None
    for row in rows:
        try:
            value = float(row[monitor])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value) and (best is None or (value > best[1] if mode == "max" else value < best[1])):
            best = (int(row["epoch"]), value)
    return best


def _warn_empty_masks(arrays, data):
    """One warning when masks hold no foreground: all of them (nothing to learn), or all of the
    val or test split (its Dice is undefined)."""
    empty = {name: not np.any(masks) for name, (_, masks) in arrays.items()}
    if all(empty.values()):
        warnings.warn(f"every mask in {data} is empty (no foreground pixel): there is nothing to learn and the Dice is "
                      "undefined (nan); check --masks-suffix and --mask-threshold", stacklevel=3)
    elif empty["val"] or empty["test"]:
        which = " and ".join(n for n in ("val", "test") if empty[n])
        warnings.warn(f"every mask of the {which} split of {data} is empty: its Dice is undefined (nan)"
                      + (" and best.keras cannot be chosen by it" if empty["val"] else "")
                      + "; use more data or another --seed / --split", stacklevel=3)


def _kept_state(out):
    """What a run folder holds for `--resume`, in words."""
    done = RunBackup(os.path.join(out, BACKUP)).latest()[0]
    kept = [f"backup/ (after epoch {done})"] if done else []
    if os.path.exists(os.path.join(out, BEST)):
        kept.append(BEST)
    return " and ".join(kept)


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


def build_datasets(config, arrays):
    """`(train, val)` tf.data pipelines for `fit`; SeRP runs get `((view1, view2), mask)`;
    classification runs `(image, label)` with flips and small rotations of the image only."""
    task = config.task_spec
    if task.kind == "classification":
        from keras_litenext.data import folders as cls_data

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


def train(config, strategy=None, given=None):
    """Train a model as `config` says and return the test metrics (also in `metrics.json`).

    Args:
        config: a `TrainConfig`.
        strategy: optional `tf.distribute.Strategy`; by default `MirroredStrategy` when more
            than one GPU is visible (TensorFlow backend), else none.
        given: for `config.resume`, the names of the settings the caller set (default: those
            that differ from `TrainConfig()`); `RESUMABLE` ones are applied, others must match.

    Raises:
        data.DatasetError: a problem with the dataset, found before training starts.
        ValueError: a setting out of range, or a resume with settings that differ.
        runs.RunError: the run folder is in use by another process, or cannot be resumed.
        utils.OutputError: the run folder cannot be written (found before training when it
            can be; else at the failing write, with the last good state kept).
        NonFiniteLossError: the loss became NaN/inf; the run folder keeps the last good state.

    A new run that fails before its first epoch is saved leaves nothing behind.
    """
    with contextlib.ExitStack() as stack:
        run = _prepare_run_folder(config, given, stack)
        try:
            return _train(run, strategy)
        except BaseException as err:
            if _discard_failed_start(run) and isinstance(err, NonFiniteLossError):
                raise NonFiniteLossError(
                    f"Training stopped: {err}, before the first epoch was finished, so nothing was kept "
                    f"({run.path} is removed); lower --lr or check the data, then run the same command again.") from None
            raise


def _train(run, strategy=None):
    config, task = run.config, run.task
    keras.utils.set_random_seed(config.seed)
    gpus, auto_strategy = _devices()
    strategy = strategy or auto_strategy
    if _switch(config.mixed_precision, gpus > 0):
        keras.mixed_precision.set_global_policy("mixed_float16")
    # auto: XLA on a GPU; under JAX always (JAX without jit runs op by op, ~10x slower)
    jit = _switch(config.jit_compile, gpus > 0 or keras.backend.backend() == "jax")

    images, masks, stems, report = run.load_data()
    arrays = run.split_arrays(images, masks, stems)
    sizes = {k: len(v[0]) for k, v in arrays.items()}
    if task.kind != "classification":
        _warn_empty_masks(arrays, config.data)
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
    backup = RunBackup(run.file(BACKUP))
    checkpoint = BestModelCheckpoint(model, best_path, monitor=task.monitor, mode=task.monitor_mode, transform=spec.deploy_form)
    done = backup.restore(fit_model) if config.resume else 0
    if config.resume:
        if config.schedule == "plateau" and "lr" in getattr(run, "changes", {}):
            fit_model.optimizer.learning_rate = config.lr  # else the restored optimizer keeps the old one
        rows = _history_until(run.file(HISTORY), done)
        best = _best_row(rows, task.monitor, task.monitor_mode)
        if best is not None:
            checkpoint.best = best[1]
            if not os.path.exists(best_path) or BestModelCheckpoint.saved_epoch(best_path) not in (None, best[0]):
                if best[0] == done - 1:  # killed while saving the best model: the backup holds that very epoch
                    checkpoint.save(*best)
                else:
                    warnings.warn(f"{best_path} does not hold the best epoch of history.csv ({best[0] + 1}); "
                                  "it is replaced when an epoch scores better", stacklevel=2)
        if done:
            print(f"Resuming {out} after epoch {done} of {config.epochs}")
    # Order matters. The NaN guard runs first, so nothing after it sees a broken step; the folder
    # guard next, so nothing is written into a vanished folder. The history row is written
    # before the backup (a kill in between replays that epoch and its row); the best model after
    # it (a kill while saving it is repaired from the backup, which holds that epoch).
    callbacks = [
        StopOnNonFiniteLoss(),
        _RunFolderGuard(out, "config.json"),
        *callbacks,
        keras.callbacks.CSVLogger(run.file(HISTORY), append=config.resume),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
        backup,
        checkpoint,
    ]
    start = time.time()
    try:
        if done < config.epochs:
            fit_model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done, callbacks=callbacks,
                          verbose=config.verbose, shuffle=False)
        train_seconds = time.time() - start
        final = keras.saving.load_model(best_path) if os.path.exists(best_path) else spec.deploy_form(model)
        summary = finish_run(config, final, arrays, train_seconds, spacing=_test_spacing(run, report))
    except NonFiniteLossError as err:
        kept = _kept_state(out)
        if not kept and not config.resume:
            raise  # a failed start: `train` removes the folder and says so
        raise NonFiniteLossError(
            f"Training stopped: {err}. " + (f"The last good state is kept in {out} ({kept})" if kept else
                                            f"No epoch of {out} was finished yet")
            + "; lower --lr or check the data, then continue with --resume --lr <lower rate>."
        ) from None
    except Exception as err:
        if not _is_write_error(err):
            raise
        kept = _kept_state(out) if os.path.isdir(out) else ""
        raise OutputError(
            (str(err) if isinstance(err, OutputError) else f"cannot write to the run folder {out}: {_one_line(err)}")
            + (f"; the last good state is kept ({kept}): fix the folder, then continue with --resume" if kept else "")
        ) from None
    backup.delete()  # last: until metrics.json and the pictures are written, a resume finishes them
    return summary


def _one_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def task_loss(config):
    """The loss of a run's settings, through its task (one place wires the MWL arguments)."""
    task = config.task_spec
    if task.kind == "classification":
        return task.loss(config.loss, class_weights=config.class_weights, label_smoothing=config.label_smoothing)
    return task.loss(config.loss, mwl_weights=config.mwl_weights, mwl_kernel=config.mwl_kernel,
                     class_weights=config.class_weights)


def _test_spacing(run, report):
    """The `(row, column)` pixel size of each test image (DICOM, NIfTI), or None unless all are known."""
    known, stems = (report or {}).get("spacing") or {}, (run.splits() or {}).get("test") or []
    return [known[s][:2] for s in stems] if stems and all(s in known for s in stems) else None


def finish_run(config, model, arrays, train_seconds=None, spacing=None):
    """Evaluate `model` on the test split; write `metrics.json`, `curves.png`, `test_overlays.png`
    (classification: `metrics.json`, `curves.png`, `confusion_matrix.png`, `test_predictions.csv`).
    With `spacing` (one pixel size per test image) HD95 is in those units (mm) and the per-image
    areas and ASSD are added."""
    run = Run(config.output, config)
    task = run.task
    classification = task.kind == "classification"
    test_images, test_targets = arrays["test"]
    logits = np.asarray(model.predict(to_float(test_images), batch_size=config.batch_size, verbose=0))
    physical = {} if classification or spacing is None else {"spacing": spacing, "areas": True, "surface": True}
    scores = task.scores(test_targets, logits, **physical)
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
        **({"units": "mm (HD95, ASSD), mm² (areas)"} if physical else {}),
        **results,
    }
    run.write_json(METRICS, summary)
    write_text(run.file(MODEL_CARD), model_card(config, model, summary, task.summary_line(results)))
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


def model_card(config, model, summary, result_line):
    """`model_card.md` of a run: what the model is (its spec, the paper, what a user must know),
    what it was trained on and how, and its test scores."""
    from keras_litenext.models import registry

    try:
        spec = registry.spec_of(model)
    except ValueError:
        spec = None
    splits = Run(config.output, config).split_sizes() or {}
    lines = [f"# Model card: {config.model}", ""]
    if spec is not None:
        lines += [spec.description, "", f"Paper: {spec.reference}.", ""]
        if spec.notes:
            lines += [spec.notes, ""]
    if config.serp:
        lines += ["Trained with SeRP, a reconstruction of the LiteNeXt paper's self-embedding training "
                  "(`keras_litenext.serp`): the paper gives no code for it.", ""]
    lines += [
        f"- Parameters: {summary['params']:,}",
        f"- Task: {summary['task']}, classes {', '.join(summary['class_names'])}",
        f"- Data: `{os.path.basename(os.path.normpath(config.data))}` at {config.image_size}x{config.image_size}, "
        f"{config.channels} channel(s); split {', '.join(f'{k} {n}' for k, n in splits.items()) or '-'} (seed {config.seed})",
        f"- Training: {config.epochs} epochs, batch {config.batch_size}, loss {config.loss}, lr {config.lr}, "
        f"{'augmented' if config.augment else 'no augmentation'}",
        f"- Test split: {result_line}",
        "",
        "Files: `best.keras` (the model), `config.json` (every setting), `metrics.json` (the scores, per image).",
        "",
    ]
    return "\n".join(lines)


def _classification_artifacts(run, test_labels, logits, scores):
    """`confusion_matrix.png` and `test_predictions.csv` of a classification run."""
    from keras_litenext.data.folders import write_predictions_csv
    from keras_litenext.visualize import plot_confusion_matrix

    task = run.task
    plot_confusion_matrix(scores["confusion_matrix"], task.class_names, run.file("confusion_matrix.png"),
                          title=f"test split ({scores['images']} images), accuracy {scores['accuracy']:.3f}")
    stems = (run.splits() or {}).get("test")
    if stems is None or len(stems) != len(test_labels):
        stems = [str(i) for i in range(len(test_labels))]
    write_predictions_csv(run.file("test_predictions.csv"), stems, task.probabilities(logits), task.class_names, true_labels=test_labels)
