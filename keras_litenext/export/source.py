"""What an export starts from: a run folder of `training/fit.py`, or a `.keras` file with its data.

`load_source` gives the float model, its `runs.Run` (settings, task), the split arrays of the
files that could be read, where they came from and the files that could not, or stops with an
`ExportError` of one line naming the file, folder or flag.
"""

import collections
import os
import warnings

from keras_litenext.runs import RunError, file_run, open_source


class ExportError(ValueError):
    """A bad input to `export_run` (missing run files, data, sizes), with a one-line message."""


def first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


Source = collections.namedtuple("Source", "model run arrays meta failures", defaults=((),))
Source.__doc__ = """What `export_run` needs: the float model, its `runs.Run` (settings, task), the
split arrays `{"train"|"val"|"test": (uint8 images, uint8 label masks (N, H, W, 1))}` of the
files that could be read, `meta` (`{"run", "model_path", "data"}`) and `failures`: `{"item", "stage": "read", "reason",
"split"}` of each file of the splits that could not be read (`split` None: outside the run's split)."""


def load_source(source, data=None, settings=None, skip_bad=False):
    """A `Source` for a run folder of `training/fit.py`, or a `.keras` file with `data`.

    A run folder is read with `runs.Run` (settings, task, `splits.json`); `data` overrides its
    dataset folder (the same data on another machine). A `.keras` file gets `runs.file_run`: its
    task read off the output channels (class names from `classes.json` beside the data), split
    80/10/10 with seed 42 as training does by default. A file that cannot be read is left out of
    its split and listed in `failures`; pairing problems stop the export unless `skip_bad` (or the
    run's own `skip_bad`).

    Raises:
        ExportError: one line naming the missing or inconsistent file, folder or flag.
    """
    source = os.fspath(source)
    is_file = not os.path.isdir(source)
    if is_file and source.endswith(".keras") and os.path.isfile(source) and data is None:
        raise ExportError(f"{source} is a model file: pass --data DATASET_FOLDER (with images/ and masks/) to calibrate and evaluate it.")
    if data is not None and not os.path.isdir(data):
        raise ExportError(f"--data {os.fspath(data)}: no such dataset folder (expected images/ and masks/ inside).")
    try:
        model, run = open_source(source, data=None if data is None else os.fspath(data))
        model_path = run.file("best.keras") if run is not None else source
        if run is None:
            run = file_run(model, os.fspath(data), **(settings or {}))
    except (FileNotFoundError, RunError) as err:
        raise ExportError(first_line(err)) from None
    except ValueError as err:  # class names / task settings that do not fit the model or data
        raise ExportError(f"{source}: {first_line(err)}") from None
    config, task = run.config, run.task
    height, width, channels = (tuple(model.inputs[0].shape[1:]) + (None,) * 3)[:3]
    size = config.image_size or height
    if height is not None and size != height:
        raise ExportError(f"{model_path} takes {height}x{width} images but {source}'s config.json says image_size={size}.")
    if size is None:
        raise ExportError(f"{model_path} has a free input size and no image_size is known; convert a run folder.")
    config.image_size = int(size)
    if channels is not None:
        config.channels = int(channels)  # the model says what it takes; loading converts the images
    out_channels = int(model.outputs[0].shape[-1])
    if out_channels != task.output_channels:
        raise ExportError(
            f"{model_path} outputs {out_channels} channel(s) but the run's task is {task.name} with classes "
            f"{', '.join(task.class_names)} ({task.output_channels} output channel(s)): check config.json's num_classes/class_names."
        )
    if not config.data or not os.path.isdir(config.data):
        raise ExportError(f"dataset folder {config.data!r} of {source} not found: pass --data DATASET_FOLDER.")
    try:
        with warnings.catch_warnings():  # the unreadable files are listed in the failures, not in a note as well
            warnings.filterwarnings("ignore", message=r".* are unusable; skipping them")
            arrays, unreadable = run.readable_arrays(skip_bad=skip_bad or None)
    except RunError as err:
        raise ExportError(first_line(err)) from None
    failures = _failures(unreadable)
    if len(arrays["test"][0]) == 0 or len(arrays["train"][0]) == 0:
        lost = [f for f in failures if f["split"] in ("train", "test")]
        why = f" ({len(lost)} of their files could not be read, e.g. {lost[0]['item']}: {lost[0]['reason']})" if lost else ""
        raise ExportError(f"{source}: the train and test splits must not be empty (splits.json or --data){why}.")
    meta = {"run": None if run.path is None else os.path.abspath(run.path), "model_path": os.path.abspath(model_path),
            "data": os.path.abspath(config.data)}
    return Source(model, run, arrays, meta, failures)


def _failures(unreadable):
    """The `failures` entries of `Run.readable_arrays`' unreadable items: one per file."""
    from keras_litenext.inference.batch import Failure

    out = []
    for stem in sorted(unreadable):
        split, lines = unreadable[stem]
        for line in lines:
            item, _, reason = line.partition(": ")
            out.append({**Failure(item, "read", reason or "could not be read").to_dict(), "split": split})
    return out
