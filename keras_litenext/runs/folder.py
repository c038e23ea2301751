"""The run folder: one reader and writer for what a training run leaves behind.

`train.train` writes a run, the `evaluate`, `predict` and `export` commands read it; all of them go through `Run`, so the layout is defined once:

| file | what |
|---|---|
| `config.json` | every setting (`runs.settings.TrainConfig`), the task and its class names included |
| `splits.json` | the train/val/test stems |
| `best.keras` | the inference model of the best validation score |
| `history.csv`, `logs/`, `curves.png` | per-epoch values, TensorBoard logs, their plot |
| `metrics.json`, `test_overlays.png` | test-split metrics, overlays (segmentation) |
| `model_card.md` | what the model is (and, for a reconstruction, that it is one), its data, settings and test scores |
| `metrics.json`, `confusion_matrix.png`, `test_predictions.csv` | test-split scores, confusion matrix, per-image class probabilities (classification) |
| `backup/` | the training state of the last finished epoch, while training (`train.RunBackup`) |
| `.lock` | held by the one process training into the folder (`Run.lock`) |
| `tflite/` | exported files, their contracts and `report.md` (`tflite/convert.py`) |

Every file is written atomically (`utils.atomic_path`).
"""

import contextlib
import json
import os
import zipfile

from keras_litenext.runs.settings import RunError, TrainConfig
from keras_litenext.utils import write_json

CONFIG = "config.json"
SPLITS = "splits.json"
BEST = "best.keras"
HISTORY = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_CARD = "model_card.md"
LOCK = ".lock"
BACKUP = "backup"


def _lock_file(f):
    """An exclusive, non-blocking lock on an open file (OSError when another process holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def load_model_file(path):
    """A `.keras` file loaded, or a one-line `FileNotFoundError` / `RunError` naming it."""
    import keras

    from keras_litenext import layers, losses, metrics, models, quantization  # noqa: F401  (register what a saved model may name)

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    problem = _keras_file_problem(path)
    if problem:
        raise RunError(f"{path}: {problem}")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # a corrupt or foreign file: one line, not a deep traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        written = _keras_file_version(path)
        if written and written != keras.__version__:
            raise RunError(f"{path}: cannot load the model, written by Keras {written} (this is Keras {keras.__version__}): "
                           f"{type(err).__name__}: {first[:300]}") from None
        raise RunError(f"{path}: cannot load the model ({type(err).__name__}: {first[:300]})") from None


def _keras_file_problem(path):
    """What is wrong with a `.keras` archive on its face (None when it looks whole)."""
    if os.path.isdir(path):
        return "is a folder, not a .keras file"
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes): not a .keras file (an interrupted save?)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"PK"):
            return f"is a truncated or damaged .keras archive ({size} bytes, its zip directory is missing)"
        if head.startswith(b"\x89HDF"):
            return "is an HDF5 file (a .h5 weights or legacy model file), not a .keras archive"
        return f"is not a .keras file (a .keras file is a zip archive; this one is {size} bytes of something else)"
    try:
        with zipfile.ZipFile(path) as z:
            entries = set(z.namelist())
            missing = [n for n in ("config.json", "metadata.json") if n not in entries]
            if missing:
                return f"is a zip archive but not a Keras model (no {', '.join(missing)} inside)"
            bad = z.testzip()
            if bad is not None:
                return f"is a damaged .keras archive ({bad} inside fails its checksum)"
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"is a damaged .keras archive ({err})"
    return None


def _keras_file_version(path):
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("metadata.json")).get("keras_version")
    except Exception:  # noqa: BLE001  (only a hint for the message)
        return None


class Run:
    """A run folder: its settings, task, splits, data and files.

    Example:
    >>> run = Run.open("runs/my-run")
    >>> model, task = run.load_model(), run.task
    >>> arrays = run.arrays()            # {"train": (images, masks), "val": ..., "test": ...}
    """

    def __init__(self, path, config):
        self.path = None if path is None else os.fspath(path)  # None: a run of a bare .keras file
        self.config = config

    # -- create / open --------------------------------------------------------------------
    @classmethod
    def create(cls, config):
        """A new run folder for `config` (its `output`): must be absent or empty."""
        out = config.output
        if os.path.exists(out) and set(os.listdir(out)) - {LOCK}:
            raise FileExistsError(f"Run folder {out} is not empty: pass --resume to continue it, or another --output.")
        os.makedirs(out, exist_ok=True)
        run = cls(out, config)
        run.write_json(CONFIG, config.to_dict())
        return run

    @classmethod
    def open(cls, path):
        """An existing run folder (it must hold `config.json`)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a run folder (no such directory).")
        config_path = os.path.join(path, CONFIG)
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{config_path} does not exist (is {path} a run folder of training/fit.py?).")
        config = TrainConfig.read(config_path)
        config.output = path
        return cls(path, config)

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock file for the block: a second process gets a `RunError` at once
        (never two writers). The lock is the operating system's (`flock`), so a killed process
        leaves no stale lock behind."""
        path = os.path.join(self.path, LOCK)
        while True:
            f = open(path, "a+", encoding="utf-8")
            try:
                _lock_file(f)
            except OSError:
                f.seek(0)
                pid = f.read().strip() or "?"
                f.close()
                raise RunError(f"{self.path} is in use by another training process (pid {pid}, lock file {path}): "
                               "wait for it to finish, or pass another --output.") from None
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except OSError:
                same = False
            if same:
                break
            f.close()  # the holder removed the file as we opened it: lock the new one
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield self
        finally:
            with contextlib.suppress(OSError):
                if os.name == "posix":
                    os.remove(path)  # while still held, so no waiter locks a removed file
            f.close()

    # -- files ------------------------------------------------------------------------------
    def file(self, name):
        if self.path is None:
            raise RunError(f"no run folder to hold {name}")
        return os.path.join(self.path, name)

    def exists(self, name):
        return self.path is not None and os.path.exists(self.file(name))

    def write_json(self, name, obj):
        write_json(self.file(name), obj)

    def read_json(self, name):
        with open(self.file(name), encoding="utf-8") as f:
            return json.load(f)

    @property
    def task(self):
        return self.config.task_spec

    def load_model(self):
        if not self.exists(BEST):
            raise FileNotFoundError(f"{self.path} has no {BEST}: is it a finished run folder of training/fit.py?")
        return load_model_file(self.file(BEST))

    # -- data -------------------------------------------------------------------------------
    def splits(self):
        """`{"train", "val", "test"}` stems: the run's `splits.json`, else the configured file,
        else a new seeded split (`data.split_stems`); `None` before the data was scanned."""
        from keras_litenext import data as data_lib

        if self.exists(SPLITS):
            return data_lib.load_splits(self.file(SPLITS))
        if self.config.splits:
            return data_lib.load_splits(self.config.splits)
        return None

    def split_sizes(self):
        """`{"train": n, "val": n, "test": n}` images per split, or None (`splits`)."""
        splits = self.splits()
        return None if splits is None else {k: len(splits[k]) for k in ("train", "val", "test") if k in splits}

    def split_arrays(self, images, masks, stems, unreadable=()):
        """Split loaded arrays by the run's split (made and saved on first use); the stems in
        `unreadable` (files that could not be read, slices of a volume by its stem) are left out."""
        from keras_litenext import data as data_lib

        splits = self.splits()
        if splits is None:
            splits = self.task.split(stems, masks, fractions=self.config.split, seed=self.config.seed)
        if self.path is not None and not self.exists(SPLITS):
            data_lib.save_splits(self.file(SPLITS), splits, seed=self.config.seed, data=os.path.abspath(self.config.data))
        wanted = {name: [s for s in splits[name] if not unreadable or _item_stem(s) not in unreadable] for name in ("train", "val", "test")}
        return {name: data_lib.select(stems, images, masks, wanted[name]) for name in wanted}

    def load_data(self, image_size="train", data=None, skip_bad=None, skip_unreadable=False):
        """`(images, masks, stems, report)` of the run's dataset, decoded by its task; for a
        classification run `masks` are the `(N,)` class indices and the stems relative paths
        (`data.folders.load_image_folder`).

        Args:
            image_size: `"train"` (the run's size), None (each image at its own size) or a size.
            data: another dataset folder (e.g. the same data on another machine).
            skip_bad: default: the run's setting.
            skip_unreadable: leave out the files that cannot be read, listed in the report's
                `"skipped"` (pairing problems of segmentation data still follow `skip_bad`).
        """
        from keras_litenext import data as data_lib

        cfg = self.config
        folder = data or cfg.data
        if folder is None or not os.path.isdir(folder):
            raise RunError(f"{self.path}: its dataset folder {folder!r} is not here; pass --data <dataset folder>.")
        size = cfg.image_size if image_size == "train" else image_size
        skip_bad = cfg.skip_bad if skip_bad is None else skip_bad
        if self.task.uses_masks:  # images/ and masks/, paired by name
            return data_lib.scan_dataset(folder, size, channels=cfg.channels, masks_suffix=cfg.masks_suffix, task=self.task,
                                         skip_bad=skip_bad, skip_unreadable=skip_unreadable, intensity=cfg.recipe, slice_axis=cfg.slice_axis,
                                         empty_slices=cfg.empty_slices, nonfinite=cfg.nonfinite)
        from keras_litenext.data.folders import (
            load_image_folder,  # one sub-folder per class
        )

        images, labels, stems, _, report = load_image_folder(folder, size, channels=cfg.channels, class_names=self.task.class_names,
                                                             skip_bad=skip_bad or skip_unreadable)
        return images, labels, stems, report

    def arrays(self, image_size="train", data=None):
        """`{"train", "val", "test"}` → `(images, masks)` uint8 arrays (lists at native size);
        classification: `(images, labels)`."""
        images, masks, stems, _ = self.load_data(image_size=image_size, data=data)
        return self.split_arrays(images, masks, stems)

    def readable_arrays(self, image_size="train", data=None, skip_bad=None):
        """`(arrays, unreadable)`: `arrays` as `arrays` gives them, of the files that could be
        read; `unreadable`: `{stem: (split name, or None outside the split, ["file: reason", ...])}`
        of those that could not, in the run's split (every one when the split is made now).
        `skip_bad`: pairing problems, as in `load_data`."""
        known = self.splits()
        images, masks, stems, report = self.load_data(image_size=image_size, data=data, skip_bad=skip_bad, skip_unreadable=True)
        lines = report.get("unreadable")
        if lines is None:  # an image folder: "stem: reason" lines
            lines = {}
            for line in report.get("skipped", []):
                lines.setdefault(line.split(": ", 1)[0], []).append(line)
        where = {}
        for name in ("train", "val", "test") if known else ():
            where.update((_item_stem(s), name) for s in known[name])
        unreadable = {stem: (where.get(stem), items) for stem, items in lines.items() if not known or stem in where}
        return self.split_arrays(images, masks, stems, unreadable=set(lines)), unreadable


def _item_stem(stem):
    """The stem of the file a split stem comes from (`volume#012` → `volume`)."""
    from keras_litenext.data.medical import SLICE_SEPARATOR

    return stem.split(SLICE_SEPARATOR)[0]


def open_source(source, data=None):
    """`(model, run)` for a run folder, or `(model, None)` for a `.keras` file.

    Raises:
        FileNotFoundError, RunError: naming the path.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        run = Run.open(source)
        if data:
            run.config.data = data
        return run.load_model(), run
    if not source.endswith(".keras"):
        raise RunError(f"{source}: expected a run folder or a .keras file.")
    return load_model_file(source), None


def file_run(model, data, output=None, **settings):
    """A `Run` (not written) for a bare `.keras` file: its size and task read off the model
    (`tasks.task_for_output`), the data split 80/10/10 with seed 42 as training does by default."""
    from keras_litenext.tasks import task_for_output

    shape = model.input_shape
    settings = {**settings, **task_for_output(model.output_shape).file_settings(model, settings)}
    config = TrainConfig(data=data, image_size=shape[1], channels=int(shape[-1]), output=output, **settings)
    config.resolve_classes()
    return Run(output, config)
