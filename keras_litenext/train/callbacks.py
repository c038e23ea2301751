"""The callbacks of a training run: the NaN guard, the best-model checkpoint, the per-epoch
training state (`RunBackup`, what `--resume` continues from) and the run-folder guard."""

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile

import keras

from keras_litenext.runs import RunError
from keras_litenext.utils import OutputError, atomic_path

__all__ = ["BEST_ENTRY", "BestModelCheckpoint", "NonFiniteLossError", "RunBackup", "RunFolderGuard", "StopOnNonFiniteLoss"]

BEST_ENTRY = "litenext_best.json"  # inside best.keras: the epoch and score it was saved at


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
        build_optimizer(model)  # its slots are part of the state loaded
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


class RunFolderGuard(keras.callbacks.Callback):
    """Stop at the end of an epoch, before anything is written, when the run folder is gone
    (deleted or unmounted) instead of scattering files into a recreated one."""

    def __init__(self, folder, marker):
        super().__init__()
        self.folder, self.marker = folder, marker

    def on_epoch_end(self, epoch, logs=None):
        if not os.path.isfile(os.path.join(self.folder, self.marker)):
            raise OutputError(f"the run folder {self.folder} vanished during training (its {self.marker} is gone): "
                              f"stopped after epoch {epoch + 1}")


def build_optimizer(model):
    """Create a compiled model's optimizer slots now, eagerly. Without a distribution strategy
    Keras's TensorFlow `fit` leaves that to the first trace of the training step, and a
    `tf.function` that creates variables on its first trace traces again: the training step was
    traced twice, 35-40 % of a short fit on a CPU (the QAT step's too). The same variables,
    zeros as Keras initialises them: training is unchanged."""
    if model.optimizer is None or model.optimizer.built:
        return
    strategy = getattr(model, "distribute_strategy", None)  # the TensorFlow trainer's
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model.optimizer.build(model.trainable_variables)
