"""A run folder made ready for training: a new run's defaults and folder, or a resumed run's
stored settings (with the `RESUMABLE` ones changed); what a killed run left (its training state,
its `history.csv` rows, its best epoch) and what a failed start leaves behind."""

import contextlib
import csv
import datetime
import math
import os
import shutil

from keras_litenext.data import sample_data_dir
from keras_litenext.losses import MWL_WEIGHTS
from keras_litenext.models import get_spec
from keras_litenext.notes import note
from keras_litenext.runs import (
    BACKUP,
    BEST,
    CONFIG,
    HISTORY,
    LOCK,
    METRICS_FILE,
    Run,
    RunError,
    TrainConfig,
)
from keras_litenext.train.callbacks import BestModelCheckpoint, RunBackup
from keras_litenext.utils import atomic_path, ensure_writable, remove_temporaries

__all__ = ["RESUMABLE", "best_row", "discard_failed_start", "history_until", "kept_state", "prepare_run_folder", "restore_state",
           "resumed_lr"]

SAMPLE_IMAGE_SIZE = 96
SAMPLE_EPOCHS = 40  # the bundled sample trains in a few minutes on 2 CPU cores
DEFAULT_EPOCHS = 60
# Settings a resumed run may change (they do not alter what was trained so far); a resume that
# gives any other setting different from the run's config.json is refused, naming it.
RESUMABLE = ("epochs", "lr", "weight_decay", "mixed_precision", "jit_compile")


def _new_run_defaults(config):
    """Defaults of a new run; returns its task (class names resolved)."""
    from keras_litenext.models.registry import resolve_model_name

    config.model, size_kwargs = resolve_model_name(config.model)  # "mednext-cls-s" -> "mednext_cls", size "s"
    config.model_kwargs = {**size_kwargs, **(config.model_kwargs or {})}
    if config.data is None:
        config.data = sample_data_dir()
        config.image_size = config.image_size or SAMPLE_IMAGE_SIZE
        config.epochs = config.epochs or SAMPLE_EPOCHS
    config.data = os.path.abspath(config.data)  # the run folder must work from any directory
    task = config.resolve_classes()
    if not config.image_size:
        config.image_size = task.default_image_size(config.data, get_spec(config.model).size_multiple)
    config.epochs = config.epochs or DEFAULT_EPOCHS
    if config.intensity is None and task.uses_intensity:  # stored, so config.json says how pixels map
        from keras_litenext.data.intensity import default_for

        config.intensity = default_for(config.data)
    if config.output is None:
        tag = os.path.basename(os.path.normpath(config.data))
        config.output = os.path.join("runs", f"{config.model}-{tag}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    return task


def _flag(name):
    return "--" + name.replace("_", "-")


def _shown(value):
    """A setting as a message shows it (an intensity recipe as its dict, as config.json has it)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


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
            refused.append(f"{_flag(name)} {_shown(new)} (the run has {_shown(old)})")
    if refused:
        raise ValueError(
            f"--resume continues {stored.output} with the settings in its config.json, and these differ: {'; '.join(refused)}. "
            f"Only {', '.join(_flag(n) for n in RESUMABLE)} may change on resume: drop the others, or start a new run "
            "with another --output.")
    return changed


def prepare_run_folder(config, given=None, stack=None):
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
        if run.exists(METRICS_FILE) and RunBackup(run.file(BACKUP)).latest()[1] is None:
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
    task = _new_run_defaults(config)
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


def discard_failed_start(run):
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


def history_until(path, epochs_done):
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


def best_row(rows, monitor, mode):
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


def restore_state(run, fit_model, checkpoint, backup, done=None):
    """Continue a resumed run where its backup ends: the training state loaded into `fit_model`,
    `history.csv` cut to the epochs it holds, `checkpoint` given the best score so far (and
    `best.keras` repaired when a kill interrupted its save). Returns the epochs done. With
    `done`, the state is loaded already (a group's, `distributed.Group.restore`)."""
    config, task = run.config, run.task
    if done is None:
        done = backup.restore(fit_model)
        resumed_lr(run, fit_model)
    rows = history_until(run.file(HISTORY), done)
    best = best_row(rows, task.monitor, task.monitor_mode)
    best_path = run.file(BEST)
    if best is not None:
        checkpoint.best = best[1]
        if not os.path.exists(best_path) or BestModelCheckpoint.saved_epoch(best_path) not in (None, best[0]):
            if best[0] == done - 1:  # killed while saving the best model: the backup holds that very epoch
                checkpoint.save(*best)
            else:
                note(f"{best_path} does not hold the best epoch of history.csv ({best[0] + 1}); "
                              "it is replaced when an epoch scores better", stacklevel=3)
    if done:
        print(f"Resuming {config.output} after epoch {done} of {config.epochs}")
    return done


def resumed_lr(run, fit_model):
    """A plateau run resumed with another --lr takes it (the restored optimizer keeps the old one)."""
    if run.config.schedule == "plateau" and "lr" in getattr(run, "changes", {}):
        fit_model.optimizer.learning_rate = run.config.lr


def kept_state(out):
    """What a run folder holds for `--resume`, in words."""
    done = RunBackup(os.path.join(out, BACKUP)).latest()[0]
    kept = [f"backup/ (after epoch {done})"] if done else []
    if os.path.exists(os.path.join(out, BEST)):
        kept.append(BEST)
    return " and ".join(kept)
