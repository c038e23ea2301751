"""The run folder: one reader and writer for what a training run leaves behind.

`training.train` writes a run, `training/evaluate.py`, `training/predict.py` and
`tflite/convert.py` read it; all of them go through `Run`, so the layout is defined once:

| file | what |
|---|---|
| `config.json` | every setting (`TrainConfig`), the task and its class names included |
| `splits.json` | the train/val/test stems |
| `best.keras` | the inference model of the best validation score |
| `history.csv`, `logs/`, `curves.png` | per-epoch values, TensorBoard logs, their plot |
| `metrics.json`, `test_overlays.png` | test-split metrics, overlays (segmentation) |
| `model_card.md` | what the model is (and, for a reconstruction, that it is one), its data, settings and test scores |
| `metrics.json`, `confusion_matrix.png`, `test_predictions.csv` | test-split scores, confusion matrix, per-image class probabilities (classification) |
| `backup/` | the training state of the last finished epoch, while training (`training.RunBackup`) |
| `.lock` | held by the one process training into the folder (`Run.lock`) |
| `tflite/` | exported files, their contracts and `report.md` (`tflite/convert.py`) |

Every file is written atomically (`utils.atomic_path`).
"""

import contextlib
import dataclasses
import json
import os
import zipfile

from keras_litenext.cli import args as cli
from keras_litenext.utils import write_json

CONFIG = "config.json"
SPLITS = "splits.json"
BEST = "best.keras"
HISTORY = "history.csv"
METRICS = "metrics.json"
MODEL_CARD = "model_card.md"
LOCK = ".lock"

# How each setting is checked (`TrainConfig.validate`); training/fit.py gives its flags the same types.
SETTING_TYPES = {
    "image_size": cli.positive_int,
    "mask_threshold": cli.int_range(0, 65534),
    "num_classes": cli.int_range(2),
    "masks_suffix": cli.suffix(),
    "split": cli.floats(count=3, low=0.0, total=1.0),
    "batch_size": cli.positive_int,
    "epochs": cli.positive_int,
    "lr": cli.positive_float,
    "weight_decay": cli.nonnegative_float,
    "mwl_weights": cli.floats(count=3, low=0.0),
    "mwl_kernel": cli.positive_int,
    "class_weights": cli.floats(low=0.0),
    "label_smoothing": cli.float_range(0.0, 1.0, high_open=True),
    "serp_weight": cli.nonnegative_float,
    "serp_decay": cli.float_range(0.0, 1.0),
    "seed": cli.int_range(0, 2**32 - 1),
    "slice_axis": cli.int_range(0, 2),
    "empty_slices": cli.float_range(0.0, 1.0),
}


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; `training/fit.py` exposes each as a flag."""

    model: str = "litenext"
    data: str | None = None  # None: the sample bundled with the package
    image_size: int | None = None  # None: 96 for the bundled sample, else 256
    channels: int = 3
    task: str | None = None  # None: classification for a classification-only model, else binary for 2 classes, multiclass for more
    num_classes: int | None = None  # classes including the background; None: classes.json, else 2 (classification: the class folders)
    class_names: list | None = None  # None: classes.json beside the data, else generic names (classification: the class folders, sorted)
    palette: dict | str | None = None  # colour masks: a JSON file, stored resolved as {"r,g,b": class}
    masks_suffix: str = ""
    mask_threshold: int = 0
    intensity: dict | None = None  # the intensity recipe (`intensity.Intensity.to_dict()`); None: 8-bit (p / 255)
    slice_axis: int = 2  # NIfTI volumes: the voxel axis the 2-D slices are taken along
    empty_slices: float = 1.0  # DICOM/NIfTI volumes: fraction of the slices with an empty label that is kept
    splits: str | None = None  # a JSON file with "train"/"val"/"test" stems
    split: tuple = (0.8, 0.1, 0.1)
    batch_size: int = 8
    epochs: int | None = None  # None: 40 for the bundled sample, else 60
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # "cosine" or "plateau"
    loss: str | None = None  # None: the task's default ("mwl")
    mwl_weights: tuple | None = None  # margin, object, background; None: losses.MWL_WEIGHTS
    mwl_kernel: int = 7
    class_weights: tuple | None = None  # multiclass / classification cross-entropy weights, one per class
    label_smoothing: float = 0.0  # classification cross-entropy only
    augment: bool = True
    serp: bool = False
    serp_weight: float = 0.1
    serp_decay: float = 0.99
    seed: int = 42
    output: str | None = None  # None: runs/<model>-<data>-<time>
    resume: bool = False
    skip_bad: bool = False
    mixed_precision: str = "auto"  # auto: on when a GPU is visible
    jit_compile: str = "auto"  # auto: on when a GPU is visible, and always under JAX
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    verbose: str | int = "auto"

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path):
        """The settings stored in a JSON file (a run's `config.json`, a preset's `run.json`).

        Raises:
            RunError: naming the file, when it does not hold valid settings.
        """
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (ValueError, TypeError) as err:
            raise RunError(f"{path}: unreadable run settings ({err}).") from None

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}.")
        values = dict(values)
        for key in ("split", "mwl_weights", "class_weights"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def validate(self):
        """Check every setting's range and type (`SETTING_TYPES`), whether it came from a flag or
        a settings file; a bad one is a `ValueError` naming its flag."""
        for name, kind in SETTING_TYPES.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, cli.check(f"--{name.replace('_', '-')}", kind, value))
        if self.channels not in (1, 3):
            raise ValueError(f"--channels: must be 1 or 3, got {self.channels!r}")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"--schedule: must be cosine or plateau, got {self.schedule!r}")
        for name in ("mixed_precision", "jit_compile"):
            if getattr(self, name) not in ("auto", "on", "off", True, False):
                raise ValueError(f"--{name.replace('_', '-')}: must be auto, on or off, got {getattr(self, name)!r}")
        if self.intensity is not None:
            from keras_litenext.data.intensity import Intensity

            try:
                self.intensity = Intensity.from_dict(self.intensity).to_dict()
            except ValueError as err:
                raise ValueError(f"--intensity: {err}") from None
        if min(self.split) == 0:
            raise ValueError(f"--split: each of train, val and test needs a fraction above 0, got {','.join(f'{v:g}' for v in self.split)}")
        return self

    @property
    def recipe(self):
        """The `intensity.Intensity` of these settings (8-bit when none is set)."""
        from keras_litenext.data.intensity import Intensity

        return Intensity.from_dict(self.intensity)

    @property
    def task_spec(self):
        """The `keras_litenext.tasks` task of these settings."""
        from keras_litenext.tasks import task_from_config

        return task_from_config(self)

    def resolve_classes(self):
        """Fill `class_names` / `num_classes` from `classes.json` beside the data, and read a
        palette file into the config (so the run folder alone says how masks decode).

        The task defaults to `classification` when the model serves only that task; its class
        names are then the class folders of the data (sorted), unless given (a permutation of
        them). A task the model does not serve is an error naming both."""
        from keras_litenext.tasks import read_classes_json, read_palette

        spec = _model_spec(self.model)
        if self.task is None and spec is not None and set(spec.tasks) == {"classification"}:
            self.task = "classification"
        if spec is not None and self.task is not None and self.task not in spec.tasks:
            raise ValueError(f"Model {self.model!r} serves the task(s) {', '.join(spec.tasks)}, not {self.task!r}.")
        if self.task == "classification":
            return self._resolve_image_classes()
        if isinstance(self.palette, str):
            self.palette = {"{},{},{}".format(*c): i for c, i in read_palette(self.palette).items()}
        if self.class_names is None:
            names = read_classes_json(self.data)
            if names is not None and (self.num_classes is None or int(self.num_classes) == len(names)):
                self.class_names = names
            elif names is not None:
                raise ValueError(
                    f"--num-classes {self.num_classes} disagrees with {os.path.join(self.data, 'classes.json')} "
                    f"({len(names)} classes: {', '.join(names)})."
                )
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
            self.num_classes = len(self.class_names)
        task = self.task_spec  # validates the combination
        self.task, self.num_classes, self.class_names = task.name, task.num_classes, list(task.class_names)
        return task

    def _resolve_image_classes(self):
        from keras_litenext.data.folders import read_class_names

        if self.palette:
            raise ValueError("--palette maps mask colours to classes; it has no meaning for image classification.")
        if self.serp:
            raise ValueError("--serp (a reconstruction of the segmentation encoder) is for segmentation runs, not classification.")
        if self.data is not None and os.path.isdir(self.data):
            folders = list(read_class_names(self.data))
            if self.class_names is None:
                self.class_names = folders
            elif sorted(str(n) for n in self.class_names) != sorted(folders):
                raise ValueError(f"class_names {list(self.class_names)} are not the class folders of {self.data} ({', '.join(folders)}).")
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
            if self.num_classes is not None and int(self.num_classes) != len(self.class_names):
                raise ValueError(f"--num-classes {self.num_classes} but {len(self.class_names)} classes: {', '.join(self.class_names)}.")
        task = self.task_spec
        self.num_classes, self.class_names = task.num_classes, list(task.class_names)
        return task


def _model_spec(name):
    """The registry spec of a model name (`NAME-SIZE` accepted), or None when it is unknown."""
    from keras_litenext.models import registry

    try:
        return registry.get_spec(registry.resolve_model_name(name)[0])
    except ValueError:
        return None


def _lock_file(f):
    """An exclusive, non-blocking lock on an open file (OSError when another process holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class RunError(ValueError):
    """A run folder that is missing, incomplete or unreadable (one line naming the path)."""


def load_model_file(path):
    """A `.keras` file loaded, or a one-line `FileNotFoundError` / `RunError` naming it."""
    import keras

    import keras_litenext  # noqa: F401  (registers the package's layers, losses and metrics)

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

    def split_arrays(self, images, masks, stems):
        """Split loaded arrays by the run's split (made and saved on first use)."""
        from keras_litenext import data as data_lib

        splits = self.splits()
        if splits is None and self.task.kind == "classification":
            from keras_litenext.data.folders import split_images

            splits = split_images(stems, masks, fractions=self.config.split, seed=self.config.seed)
        elif splits is None:
            splits = data_lib.split_stems(stems, fractions=self.config.split, seed=self.config.seed)
        if self.path is not None and not self.exists(SPLITS):
            data_lib.save_splits(self.file(SPLITS), splits, seed=self.config.seed, data=os.path.abspath(self.config.data))
        return {name: data_lib.select(stems, images, masks, splits[name]) for name in ("train", "val", "test")}

    def load_data(self, image_size="train", data=None, skip_bad=None):
        """`(images, masks, stems, report)` of the run's dataset, decoded by its task; for a
        classification run `masks` are the `(N,)` class indices and the stems relative paths
        (`data_classification.load_image_folder`).

        Args:
            image_size: `"train"` (the run's size), None (each image at its own size) or a size.
            data: another dataset folder (e.g. the same data on another machine).
            skip_bad: default: the run's setting.
        """
        from keras_litenext import data as data_lib

        cfg = self.config
        folder = data or cfg.data
        if folder is None or not os.path.isdir(folder):
            raise RunError(f"{self.path}: its dataset folder {folder!r} is not here; pass --data <dataset folder>.")
        size = cfg.image_size if image_size == "train" else image_size
        if self.task.kind == "classification":
            from keras_litenext.data.folders import load_image_folder

            images, labels, stems, _, report = load_image_folder(
                folder, size, channels=cfg.channels, class_names=self.task.class_names,
                skip_bad=cfg.skip_bad if skip_bad is None else skip_bad)
            return images, labels, stems, report
        return data_lib.scan_dataset(folder, size, channels=cfg.channels, masks_suffix=cfg.masks_suffix, task=self.task,
                                     skip_bad=cfg.skip_bad if skip_bad is None else skip_bad, intensity=cfg.recipe,
                                     slice_axis=cfg.slice_axis, empty_slices=cfg.empty_slices)

    def arrays(self, image_size="train", data=None):
        """`{"train", "val", "test"}` → `(images, masks)` uint8 arrays (lists at native size);
        classification: `(images, labels)`."""
        images, masks, stems, _ = self.load_data(image_size=image_size, data=data)
        return self.split_arrays(images, masks, stems)


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
    """A `Run` (not written) for a bare `.keras` file: its size and task read off the model,
    the data split 80/10/10 with seed 42 as training does by default."""
    shape = model.input_shape
    channels = int(model.output_shape[-1])
    if len(model.output_shape) == 2:  # (batch, K): an image classifier, classes from the data's folders
        settings.setdefault("task", "classification")
    config = TrainConfig(data=data, image_size=shape[1], channels=int(shape[-1]), output=output, **settings)
    if config.task == "classification":
        config.model = _spec_name(model) or model.name
    elif config.num_classes is None and config.class_names is None:
        config.num_classes = 2 if channels == 1 else channels
    config.resolve_classes()
    return Run(output, config)


def _spec_name(model):
    from keras_litenext.models import registry

    try:
        return registry.spec_of(model).name
    except ValueError:
        return None
