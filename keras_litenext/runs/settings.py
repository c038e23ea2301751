"""The settings of a training run: `TrainConfig`, the one typed settings object.

The command line (`keras_litenext.cli.fit`), a `--config` JSON file and a resumed run's
`config.json` all become one `TrainConfig`, checked once by `validate` (`SETTING_TYPES`, the same
value types the flags have). Values keep their types until written: `intensity` is an
`intensity.Intensity` (or None), turned into its dict by `to_dict` (what `config.json` holds) and
back by `from_dict` / `read`. `augment` is True (the task's augmentation), False (none) or a dict of
`data.augmenter` keyword arguments over the task's defaults (e.g. `{"rotation": 15, "blur": 0}`),
stored in `config.json` as given.
"""

import dataclasses
import json

from keras_litenext.runs import checks

__all__ = ["RunError", "SETTING_TYPES", "TrainConfig"]

# How each setting is checked (`TrainConfig.validate`); `keras_litenext.cli.fit` gives its flags the same types.
SETTING_TYPES = {
    "image_size": checks.positive_int,
    "mask_threshold": checks.int_range(0, 65534),
    "num_classes": checks.int_range(2),
    "masks_suffix": checks.suffix(),
    "split": checks.floats(count=3, low=0.0, total=1.0),
    "batch_size": checks.positive_int,
    "epochs": checks.positive_int,
    "lr": checks.positive_float,
    "weight_decay": checks.nonnegative_float,
    "mwl_weights": checks.floats(count=3, low=0.0),
    "mwl_kernel": checks.positive_int,
    "class_weights": checks.floats(low=0.0),
    "label_smoothing": checks.float_range(0.0, 1.0, high_open=True),
    "serp_weight": checks.nonnegative_float,
    "serp_decay": checks.float_range(0.0, 1.0),
    "seed": checks.int_range(0, 2**32 - 1),
    "slice_axis": checks.int_range(0, 2),
    "empty_slices": checks.float_range(0.0, 1.0),
}


class RunError(ValueError):
    """A run folder that is missing, incomplete or unreadable (one line naming the path)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; `keras-litenext fit` exposes each as a flag."""

    model: str = "litenext"
    data: str | None = None  # None: the sample bundled with the package
    image_size: int | None = None  # None: 96 for the bundled sample, else 256
    channels: int = 3
    task: str | None = None  # None: the model's only task (classification for a classifier), else binary for 2 classes, multiclass for more
    num_classes: int | None = None  # classes including the background; None: classes.json, else 2 (classification: the class folders)
    class_names: list | None = None  # None: classes.json beside the data, else generic names (classification: the class folders, sorted)
    palette: dict | str | None = None  # colour masks: a JSON file, stored resolved as {"r,g,b": class}
    masks_suffix: str = ""
    mask_threshold: int = 0
    intensity: "Intensity | None" = None  # noqa: F821  (`intensity.Intensity`; a dict or text is read into one); None: 8-bit (p / 255)
    slice_axis: int = 2  # NIfTI volumes: the voxel axis the 2-D slices are taken along
    empty_slices: float = 1.0  # DICOM/NIfTI volumes: fraction of the slices with an empty label that is kept
    nonfinite: str = "minimum"  # DICOM/NIfTI image volumes: NaN/inf read as the lowest finite value ("minimum"), or refused ("error")
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
    augment: bool | dict = True  # True: the task's augmentation; False: none; a dict: `data.augmenter` arguments over it
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

    # The names of the settings a settings file or a command line stated (`from_dict`, `merged`):
    # a resumed run compares these with its stored ones (`train.train`'s `given`). Not a setting.
    stated = frozenset()

    def __post_init__(self):
        self._read_intensity()

    def _read_intensity(self):
        """`intensity` as an `intensity.Intensity` (a dict or the command-line text is read into one)."""
        if self.intensity is not None:
            from keras_litenext.data.intensity import Intensity

            try:
                self.intensity = Intensity.from_dict(self.intensity)
            except ValueError as err:
                raise ValueError(f"--intensity: {err}") from None

    # -- reading and writing -----------------------------------------------------------------
    def to_dict(self):
        """Every setting as JSON-able values (`intensity` as its dict): what `config.json` holds."""
        values = dataclasses.asdict(dataclasses.replace(self, intensity=None))
        values["intensity"] = None if self.intensity is None else self.intensity.to_dict()
        return values

    @classmethod
    def read(cls, path, flag=None):
        """The settings stored in a JSON file: a run's `config.json`, a preset's `run.json`, or,
        with `flag` (`"--config"`), a settings file given on the command line.

        Raises:
            RunError: naming the file, when a run's file does not hold valid settings.
            ValueError: naming `flag` and the file, when a given settings file is unreadable or
                not a JSON object; an unknown setting, named.
        """
        if flag is None:
            try:
                with open(path, encoding="utf-8") as f:
                    return cls.from_dict(json.load(f))
            except (ValueError, TypeError) as err:
                raise RunError(f"{path}: unreadable run settings ({err}).") from None
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"{flag} {path}: not a readable JSON file ({checks.one_line(err)})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{flag} {path}: must hold a JSON object of settings, not {type(values).__name__}")
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values):
        """Settings from their dict (`to_dict`, or any subset of the names); `stated` records the names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}.")
        values = dict(values)
        for key in ("split", "mwl_weights", "class_weights"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        config = cls(**values)
        config.stated = frozenset(values)
        return config

    def merged(self, values):
        """These settings with `values` (`{name: value}`, e.g. the flags given) over them; `stated`
        gains their names."""
        config = dataclasses.replace(self, **values)
        config.stated = frozenset(self.stated) | frozenset(values)
        return config

    # -- checking ----------------------------------------------------------------------------
    def validate(self):
        """Check every setting's range and type (`SETTING_TYPES`), whether it came from a flag or
        a settings file; a bad one is a `ValueError` naming its flag."""
        for name, kind in SETTING_TYPES.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, checks.check(f"--{name.replace('_', '-')}", kind, value))
        if self.channels not in (1, 3):
            raise ValueError(f"--channels: must be 1 or 3, got {self.channels!r}")
        if self.nonfinite not in ("minimum", "error"):
            raise ValueError(f"--nonfinite: must be minimum or error, got {self.nonfinite!r}")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"--schedule: must be cosine or plateau, got {self.schedule!r}")
        for name in ("mixed_precision", "jit_compile"):
            if getattr(self, name) not in ("auto", "on", "off", True, False):
                raise ValueError(f"--{name.replace('_', '-')}: must be auto, on or off, got {getattr(self, name)!r}")
        self._read_intensity()  # one set after construction is read too
        self.augment = _checked_augment(self.augment)
        if min(self.split) == 0:
            raise ValueError(f"--split: each of train, val and test needs a fraction above 0, got {','.join(f'{v:g}' for v in self.split)}")
        return self

    # -- what the settings mean ----------------------------------------------------------------
    @property
    def recipe(self):
        """The `intensity.Intensity` of these settings (8-bit when none is set)."""
        from keras_litenext.data.intensity import Intensity

        return self.intensity or Intensity()

    @property
    def task_spec(self):
        """The `keras_litenext.tasks` task of these settings."""
        from keras_litenext.tasks import task_from_config

        return task_from_config(self)

    def resolve_classes(self):
        """Fill the task, `class_names` and `num_classes` (the task reads them: `classes.json` or a
        palette beside segmentation data, the class folders of classification data), so the run
        folder alone says how its targets decode; returns the task.

        The task defaults to the model's only task (classification for a classifier). A task the
        model does not serve is an error naming both."""
        from keras_litenext.tasks import TASKS, SegmentationTask, task_of_model

        self.task = task_of_model(_model_spec(self.model), self.task, model_name=self.model)
        return TASKS.get(self.task, SegmentationTask).resolve_settings(self)


def _checked_augment(value):
    """`augment` checked: True, False, or a dict of `data.augmenter` keyword arguments (its names
    and ranges; `seed` is the run's); an empty dict is True. A bad one is a one-line `ValueError`
    naming the key."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"--augment: must be true, false or a dict of augmentation settings, got {value!r}")
    if not value:
        return True
    import inspect

    from keras_litenext.data.augment import augmenter

    known = [name for name in inspect.signature(augmenter).parameters if name != "seed"]
    for key, setting in value.items():
        if key not in known:
            raise ValueError(f"--augment: unknown augmentation setting {key!r}; known: {', '.join(known)}")
        kind = bool if key == "flip" else (int, float)
        if not isinstance(setting, kind) or (kind is not bool and isinstance(setting, bool)):
            raise ValueError(f"--augment: {key} must be {'true or false' if kind is bool else 'a number'}, got {setting!r}")
    try:
        augmenter(**value)  # its ranges
    except ValueError as err:
        raise ValueError(f"--augment: {str(err).removeprefix('augmenter: ')}") from None
    return dict(value)


def _model_spec(name):
    """The registry spec of a model name (`NAME-SIZE` accepted), or None when it is unknown."""
    from keras_litenext.models import registry

    try:
        return registry.get_spec(registry.resolve_model_name(name)[0])
    except ValueError:
        return None
