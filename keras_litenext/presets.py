"""Presets: a trained model as a folder that loads by name or by path (KerasHub's preset shape).

A preset folder holds

- `config.json`: the Keras model's config (`keras.saving.serialize_keras_object`);
- `model.weights.h5`: its weights;
- `metadata.json`: name, description, task and class names, image size, channels, intensity
  recipe, training data (folder name and images per split), test metrics, licence, and the
  keras-litenext / Keras versions it was saved with;
- `run.json`: the run's settings (`runs.TrainConfig`), so prediction preprocesses as training did;
- `tflite/`: the phone files of the run (`.tflite` files with their metadata, I/O contracts,
  labels, `report.json`), when it has them.

`save_preset(run, folder)` writes one from a run folder of `training/fit.py`;
`load_preset(name_or_folder)` returns the Keras model; `preset_metadata` its `metadata.json`;
`list_presets()` names the presets bundled with the package (`keras_litenext/presets/<name>/`);
`open_preset` gives the model with its run settings, what `training/predict.py --preset` uses.

Example:
>>> save_preset("runs/litenext-dsb2018_96-20261122-101500", "presets/litenext-nuclei", licence="CC0-1.0")
>>> model = load_preset("presets/litenext-nuclei")
"""

import copy
import json
import os
import shutil
import tempfile

from keras_litenext.utils import write_json

__all__ = ["PresetError", "list_presets", "load_preset", "open_preset", "preset_metadata", "preset_path", "save_preset"]

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
CONFIG, WEIGHTS, METADATA, RUN = "config.json", "model.weights.h5", "metadata.json", "run.json"
PHONE_FILES = (".tflite", ".json", ".txt", ".md")


class PresetError(ValueError):
    """A preset that does not exist or is incomplete (one line naming it)."""


def list_presets():
    """Names of the presets bundled with the package."""
    if not os.path.isdir(BUNDLED):
        return []
    return sorted(n for n in os.listdir(BUNDLED) if os.path.isfile(os.path.join(BUNDLED, n, METADATA)))


def preset_path(name_or_folder):
    """The folder of a preset: a folder path as it is, or the bundled preset of that name."""
    path = os.fspath(name_or_folder)
    if os.path.isdir(path):
        folder = path
    elif os.path.isdir(os.path.join(BUNDLED, path)):
        folder = os.path.join(BUNDLED, path)
    else:
        bundled = list_presets()
        raise PresetError(f"no preset {path!r}: not a folder, and the bundled presets are "
                          f"{', '.join(bundled) if bundled else 'none'}.")
    missing = [f for f in (CONFIG, WEIGHTS, METADATA) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise PresetError(f"{folder} is not a preset: {', '.join(missing)} missing.")
    return folder


def preset_metadata(name_or_folder):
    """The preset's `metadata.json` (with `"path"`: its folder, and `"run"`: its settings)."""
    folder = preset_path(name_or_folder)
    with open(os.path.join(folder, METADATA), encoding="utf-8") as f:
        meta = json.load(f)
    run = os.path.join(folder, RUN)
    if os.path.isfile(run):
        with open(run, encoding="utf-8") as f:
            meta["run"] = json.load(f)
    meta["path"] = os.path.abspath(folder)
    return meta


def load_preset(name_or_folder, compile=False):
    """The Keras model of a preset (a folder, or a bundled preset's name)."""
    import keras

    from keras_litenext import layers, losses, metrics, models, quantization  # noqa: F401  (register what a saved model may name)

    folder = preset_path(name_or_folder)
    with open(os.path.join(folder, CONFIG), encoding="utf-8") as f:
        config = json.load(f)
    try:
        model = keras.saving.deserialize_keras_object(config)
        model.load_weights(os.path.join(folder, WEIGHTS))
    except Exception as err:  # a config or weights file of another version or model
        raise PresetError(f"{folder}: the model does not load ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from None
    if compile:
        model.compile()
    return model


def open_preset(name_or_folder):
    """`(model, run)` of a preset: its Keras model and a `runs.Run` (no folder) of its settings,
    so inference preprocesses, decodes and names classes as the training run did."""
    from keras_litenext.runs import Run, TrainConfig

    folder = preset_path(name_or_folder)
    path = os.path.join(folder, RUN)
    if not os.path.isfile(path):
        raise PresetError(f"{folder}: {RUN} missing (the preset was not written by save_preset).")
    return load_preset(folder), Run(None, TrainConfig.read(path))


def save_preset(run, folder, name=None, description=None, licence=None, tflite=None, overwrite=False):
    """Write a preset folder from a run folder of `training/fit.py`.

    Args:
        run: the run folder (its `best.keras`, `config.json`, `metrics.json`, `splits.json`).
        folder: the preset folder to write (whole or not at all: written beside, then renamed).
        name: the preset's name (default: the folder's name).
        description: one line on what it does (default: model, task and data).
        licence: the licence of the weights, i.e. of their training data (e.g. "CC0-1.0").
        tflite: a folder of phone files to include (default: the run's `tflite/`, if any).
        overwrite: replace an existing preset folder.

    Returns:
        the preset's metadata dict.
    """
    import keras

    from keras_litenext.runs import RunError, open_source
    from keras_litenext.version import __version__

    folder = os.fspath(folder)
    if os.path.exists(folder) and not overwrite:
        raise PresetError(f"{folder} exists: pass overwrite=True to replace it.")
    try:
        model, run_obj = open_source(os.fspath(run))
    except (FileNotFoundError, RunError, ValueError) as err:
        raise PresetError(f"{os.fspath(run)}: {str(err).splitlines()[0]}") from None
    if run_obj is None or run_obj.path is None:
        raise PresetError(f"{os.fspath(run)} is not a run folder (a preset records the run's settings and metrics).")
    config, task = run_obj.config, run_obj.task
    metrics_path = os.path.join(run_obj.path, "metrics.json")
    metrics = None
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
    name = name or os.path.basename(os.path.abspath(folder))
    data = os.path.basename(os.path.normpath(config.data)) if config.data else None
    meta = {
        "name": name,
        "description": description or f"{model.name} for {task.name} ({', '.join(task.class_names)}), trained on {data}",
        "model": model.name,
        "task": task.name,
        "class_names": list(task.class_names),
        "image_size": config.image_size,
        "channels": config.channels,
        "intensity": None if config.intensity is None else config.intensity.to_dict(),
        "parameters": int(model.count_params()),
        "training_data": {"name": data, "splits": run_obj.split_sizes()},
        "metrics": metrics,
        "licence": licence or "unknown: the licence of the training data applies to the weights",
        "keras_litenext_version": __version__,
        "keras_version": keras.__version__,
    }
    phone = os.fspath(tflite) if tflite is not None else os.path.join(run_obj.path, "tflite")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        config_dict = keras.saving.serialize_keras_object(model)
        config_dict.pop("compile_config", None)  # the model alone: no optimizer (nor its state in the weights)
        write_json(os.path.join(tmp, CONFIG), config_dict)
        bare = keras.saving.deserialize_keras_object(copy.deepcopy(config_dict))  # (deserialising consumes its dict)
        bare.set_weights(model.get_weights())
        bare.save_weights(os.path.join(tmp, WEIGHTS))
        write_json(os.path.join(tmp, RUN), _portable_settings(config))
        if os.path.isdir(phone):
            names = sorted(n for n in os.listdir(phone) if n.endswith(PHONE_FILES) and not n.startswith("."))
            if names:
                os.makedirs(os.path.join(tmp, "tflite"))
                for n in names:
                    shutil.copy2(os.path.join(phone, n), os.path.join(tmp, "tflite", n))
                meta["tflite"] = [n for n in names if n.endswith(".tflite")]
        write_json(os.path.join(tmp, METADATA), meta)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return meta


def _portable_settings(config):
    """The run's settings without this machine's paths: no output folder, and the bundled
    sample as `data: null` (what `TrainConfig` reads as that sample)."""
    from keras_litenext.data import sample_data_dir

    settings = dict(config.to_dict(), output=None)
    if settings.get("data") and os.path.abspath(settings["data"]) == os.path.abspath(sample_data_dir()):
        settings["data"] = None
    return settings

