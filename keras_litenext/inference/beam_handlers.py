"""Apache Beam `ModelHandler`s of keras-litenext: a run folder / `.keras` file (`KerasModelHandler`)
and a `.tflite` file run by LiteRT (`LiteRTModelHandler`), for `RunInference` (`inference.beam`).

Beam's own TensorFlow handlers take a SavedModel or a `tf.keras` model and its TFLite support takes
a plain interpreter; neither knows a run folder (its task, class names and intensity recipe), the
any-size modes of `predict_image`, DICOM/NIfTI slices, or LiteRT's int8 files with their contract.
These handlers load what `predict` loads (`runs.open_source`, a preset, `litert.runtime.TFLiteRunner`)
and predict with the same stage functions (`inference.folder.predict_input`, `class_probabilities`),
so an image gets the same labels from the pipeline as from `predict`.

An example is an `Item` (the input's path, its decoded image or slices, the staged local copy); a
prediction is the label map (segmentation) or the class probabilities (classification), or the
`batch.Failure` of that one image: one bad image never fails its batch. Requires
``pip install "keras-litenext[beam]"``; this module imports Apache Beam, the package does not.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from keras_litenext.inference.batch import Failure, reason_of

NAMESPACE = "keras_litenext"  # Beam metrics namespace


def _no_resource_warning(record):
    """Beam's RunInference logs "Resource module is not available" on every model load where its
    optional model manager (which imports PyTorch) is missing: not a problem of this platform."""
    return not str(record.msg).startswith("Resource module is not available")


logging.getLogger().addFilter(_no_resource_warning)


@dataclasses.dataclass
class Item:
    """An input on its way through the pipeline: its path (the key), what `read_input` gave (an
    image, `Slices`, or a classifier's resized image), and the staged local copy a DICOM/NIfTI
    file's labels take their geometry from ("" for an image)."""

    path: str
    data: object
    local: str = ""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What to predict with, sent to the workers: a run folder, a `.keras` or a `.tflite` file on
    any Beam filesystem (local, gs://, s3://, hdfs://...), or a preset's name or folder."""

    location: str
    preset: bool = False

    @property
    def tflite(self):
        return not self.preset and self.location.lower().endswith(".tflite")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """`predict`'s options: `predict_image`'s mode, overlap and TTA, the binary threshold, the
    DICOM/NIfTI `nonfinite` rule (None: the run's), and a classifier's batch size."""

    mode: str = "resize"
    overlap: float = 0.5
    tta: bool = False
    threshold: float = 0.5
    nonfinite: str = None
    batch_size: int = 8


def is_local(path):
    """Whether a path is on the local file system (no scheme, or file://)."""
    return FileSystems.get_scheme(path) in (None, "file")


def stage(path, folder, readable=None):
    """A local copy of `path` (any Beam filesystem; `readable`: its `fileio.ReadableFile`) under
    `folder`, keeping its name (the name tells a file's kind, as `predict` reads it); the bytes as
    stored (a `.nii.gz` stays compressed); a local path is copied too, so both are read alike."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(tempfile.mkdtemp(dir=folder), os.path.basename(path.rstrip("/")))
    source = (readable.open(mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) if readable
              else FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
    with source as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def local_model(location, folder):
    """A local path for a model source: itself when local, else the file (or a run folder's
    `config.json` and `best.keras`) copied under `folder`."""
    if is_local(location):
        return location
    if location.lower().endswith((".keras", ".tflite")):
        return stage(location, folder)
    from keras_litenext.runs import BEST, CONFIG

    run = tempfile.mkdtemp(dir=folder)
    for name in (CONFIG, BEST):
        shutil.move(stage(FileSystems.join(location, name), folder), os.path.join(run, name))
    return run


def failure(item, stage_name, err):
    """The `Failure` of an item, its reason without the staged copy's path."""
    reason = reason_of(err, item.local or None)
    return Failure(item.path, stage_name, reason.replace(item.local, item.path) if item.local else reason)


class LiteRTModel:
    """A `.tflite` file as `predict_image` uses a Keras model: `input_shape`, `output_shape`,
    `predict_on_batch` and `predict` (`litert.runtime.TFLiteRunner`: int8 files quantized and
    dequantized with their own scale; a grey image repeated to RGB for a grey model's RGB file, as
    `export.scoring.file_input` does). Its input size is fixed: no `pad` mode."""

    def __init__(self, path, num_threads=1):
        from keras_litenext.litert.runtime import TFLiteRunner

        self.runner = TFLiteRunner(path, num_threads=num_threads)
        self.input_shape = (None, *self.runner.input_shape[1:])
        self.output_shape = (None, *(int(d) for d in self.runner.output["shape"][1:]))

    def predict_on_batch(self, batch):
        x = np.asarray(batch, np.float32)
        if x.shape[-1] == 1 and self.input_shape[-1] == 3:
            x = np.repeat(x, 3, axis=-1)
        return self.runner(x)

    def predict(self, x, batch_size=None, verbose=0):
        return self.predict_on_batch(x)


def tflite_settings(path, model):
    """`(task, intensity recipe)` of a `.tflite` file: its export contract beside it
    (`<name>.json`: task, classes, intensity), else the task its output implies and 8-bit pixels."""
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.tasks import task_for_output, task_from_config

    try:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            contract = json.load(f)
        classes = contract["classes"]
        task = task_from_config({"task": contract["task"], "class_names": [classes[str(i)] for i in range(len(classes))]})
        intensity = contract.get("input", {}).get("intensity")
        return task, Intensity.from_dict(intensity) if intensity else Intensity()
    except (OSError, ValueError, KeyError, TypeError):
        return task_for_output(model.output_shape), Intensity()


@dataclasses.dataclass(frozen=True)
class Reader:
    """How `predict` reads a file for a model, without the model (sent to the read stage): the
    task, the model's input channels and size, the run's intensity recipe, slice axis and
    `nonfinite` rule."""

    task: object
    channels: int
    size: tuple
    recipe: object
    slice_axis: int = 2
    nonfinite: str = "minimum"

    def read(self, path):
        """Stage `read` of a local file: `folder.read_input` (segmentation) or `classifier_input`."""
        from keras_litenext.inference.folder import classifier_input, read_input

        if self.task.writes_label_files:
            return read_input(path, self.channels, self.recipe, self.slice_axis, self.nonfinite)
        return classifier_input(path, *self.size, self.channels)


class Predictor:
    """A loaded model and what predicting with it needs: the task, the run's intensity recipe,
    slice axis and `nonfinite` rule, `predict_image`'s options. `run(items)` gives one label map,
    probability vector or `Failure` per item."""

    def __init__(self, model, task, recipe, options, slice_axis=2, nonfinite="minimum"):
        from keras_litenext.inference.predictor import size_agnostic

        self.model, self.task, self.recipe, self.options = model, task, recipe, options
        dynamic = size_agnostic(model) if options.mode == "pad" else None
        self.how = {"mode": options.mode, "dynamic_model": dynamic, "overlap": options.overlap, "tta": options.tta, "task": task}
        self.reader = Reader(task, int(model.input_shape[-1]), tuple(model.input_shape[1:3]), recipe, slice_axis,
                             options.nonfinite or nonfinite)

    def run(self, items):
        from keras_litenext.inference.folder import class_probabilities, predict_input

        if not self.task.writes_label_files:
            try:
                return list(class_probabilities(self.model, self.task, [i.data for i in items], self.options.batch_size))
            except Exception:  # one at a time, so that only the bad image fails
                if len(items) == 1:
                    raise
                return [self.run([item])[0] for item in items]
        out = []
        for item in items:
            try:
                out.append(predict_input(self.model, self.task, item.data, self.recipe, self.how, self.options.threshold))
            except Exception as err:  # noqa: BLE001  (the image's failure, not its batch's)
                out.append(failure(item, "predict", err))
        return out


def open_keras(source, options, folder):
    """A `Predictor` of a run folder or `.keras` file (`runs.open_source`) or a preset."""
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.inference.source import task_of
    from keras_litenext.runs import open_source

    if source.preset:
        from keras_litenext.presets import open_preset

        model, run = open_preset(source.location)
    else:
        model, run = open_source(local_model(source.location, folder))
    task = task_of(model, None if run is None else run.config)
    if run is None:
        return Predictor(model, task, Intensity(), options)
    return Predictor(model, task, run.config.recipe, options, run.config.slice_axis, run.config.nonfinite)


def open_tflite(source, options, folder):
    """A `Predictor` of a `.tflite` file run by LiteRT (its contract beside it gives task and recipe)."""
    path = local_model(source.location, folder)
    if options.mode == "pad":
        raise ValueError(f"{source.location}: --mode pad predicts each image at its own size; a .tflite file has a fixed input "
                         "size (use resize, tile or gaussian)")
    model = LiteRTModel(path)
    if not is_local(source.location):  # the contract beside a remote file
        try:
            shutil.move(stage(os.path.splitext(source.location)[0] + ".json", folder), os.path.splitext(path)[0] + ".json")
        except OSError:
            pass
    task, recipe = tflite_settings(path, model)
    return Predictor(model, task, recipe, options)


class _Handler(ModelHandler):
    """The common part of the two handlers: a `Predictor` per worker process, batches of up to
    `options.batch_size` items (`RunInference` batching), one result per item."""

    opener = None

    def __init__(self, source, options=PredictOptions()):
        super().__init__(min_batch_size=1, max_batch_size=max(1, int(options.batch_size)))
        self.source, self.options = source, options
        self._folder = None

    def load_model(self):
        self._folder = tempfile.mkdtemp(prefix="keras-litenext-model-")
        return type(self).opener(self.source, self.options, self._folder)

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(item, out, model_id=self.source.location) for item, out in zip(batch, model.run(list(batch)))]

    def get_num_bytes(self, batch):
        return int(sum(getattr(i.data, "nbytes", 0) or getattr(getattr(i.data, "array", None), "nbytes", 0) for i in batch))

    def get_metrics_namespace(self):
        return NAMESPACE


class KerasModelHandler(_Handler):
    """`RunInference` with a run folder, a `.keras` file or a preset (`ModelSource`)."""

    opener = staticmethod(open_keras)


class LiteRTModelHandler(_Handler):
    """`RunInference` with a `.tflite` file, run by LiteRT (`ModelSource` ending in `.tflite`)."""

    opener = staticmethod(open_tflite)


def handler_for(source, options=PredictOptions()):
    """The handler of a model source: `LiteRTModelHandler` for a `.tflite` file, else `KerasModelHandler`."""
    return (LiteRTModelHandler if source.tflite else KerasModelHandler)(source, options)
