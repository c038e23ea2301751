"""TFLite metadata inside `.tflite` files, as MediaPipe Tasks read it, and the MediaPipe check.

The metadata is the TFLite metadata flatbuffer (the `TFLITE_METADATA` buffer plus the associated
files zipped onto the model), written by `keras_litenext.export.tflite_metadata` with
`flatbuffers` alone, exactly as MediaPipe's own `metadata_writers` write it (tested), so that
MediaPipe's `ImageSegmenter` and `ImageClassifier` (Android, iOS, web and Python run the same
C++ task code) load the file with no app-side arithmetic:

- the input: an RGB image and its `NormalizationOptions` (`x = (p - mean) / std` for a float
  input: mean 0, std 255 for the 8-bit `/255` mapping, or the run's intensity recipe when it is a
  fixed linear map (`input_normalization`); a uint8 input takes the camera pixels as they are,
  mean 0, std 1);
- the output: a labels file naming its channels (`labels.txt`: the K class names, class 0
  first; for one logit per pixel the foreground's name, `output_labels`) and, for a segmenter,
  its activation (`SIGMOID` for one logit per pixel, `SOFTMAX` for K; without it MediaPipe
  would threshold the raw logits at 0.5);
- a name, version, author, licence and a description naming the model, the training data and
  the metrics.

Writing needs no MediaPipe. Reading the metadata back (`read_metadata`, with MediaPipe's
displayer) and running MediaPipe's tasks on a file (`check_mediapipe`) do: an optional
dependency, for checking files. Its wheel declares `opencv-contrib-python`, a second
distribution of the `cv2` module that this package takes from `opencv-python-headless`; the
modules used here need only `flatbuffers`, `absl-py` and `numpy`, which TensorFlow brings. So
install it without its dependencies: `pip install --no-deps "mediapipe==1.2.3"` (docs, "Export
and phones"). MediaPipe loads its C++ library through `ctypes`; `check_mediapipe` runs the
tasks in a child process all the same, so that the task library and TensorFlow never share one
process.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

__all__ = [
    "MEDIAPIPE_HINT",
    "MetadataError",
    "add_metadata",
    "check_mediapipe",
    "input_normalization",
    "mediapipe_available",
    "output_labels",
    "read_metadata",
]

MEDIAPIPE_HINT = 'pip install --no-deps "mediapipe==1.2.3" (its modules used here need only flatbuffers, absl-py and numpy)'
LABELS_FILE = "labels.txt"
LICENSE = "Apache-2.0 (keras-litenext); the weights follow the licence of their training data"


class MetadataError(ValueError):
    """Metadata could not be written or read (not a model file, MediaPipe missing for reading, a file without metadata)."""


def mediapipe_available():
    """Whether MediaPipe's metadata module imports here (to read and check files; writing the
    metadata does not need it)."""
    try:
        _provide_version_module()
        from mediapipe.tasks.python.metadata import metadata  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def _min_parser_version(metadata_buf):
    """The metadata parser version a reader needs (the schema's own version table, as
    `metadata_schema.fbs` lists it: 1.5.0 custom metadata, ..., 1.0.1 vocabulary files).

    MediaPipe 1.2.3's wheel leaves out the native `_pywrap_metadata_version` module that its
    metadata populator asks for this number (and its metadata module imports); this is that one
    function, over the generated flatbuffer classes the same wheel ships."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    model = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buf), 0))
    subgraphs = model.subgraphMetadata or []
    tensors = [t for g in subgraphs for t in (g.inputTensorMetadata or []) + (g.outputTensorMetadata or [])]
    files = list(model.associatedFiles or []) + [f for g in subgraphs for f in (g.associatedFiles or [])]
    files += [f for t in tensors for f in (t.associatedFiles or [])]
    units = [u for t in tensors for u in (t.processUnits or [])]
    units += [u for g in subgraphs for u in (g.inputProcessUnits or []) + (g.outputProcessUnits or [])]
    options = {u.optionsType for u in units}
    kinds = {t.content.contentPropertiesType for t in tensors if t.content is not None}
    file_types = {f.type for f in files}
    rules = [
        ("1.5.0", any(g.customMetadata for g in subgraphs)),
        ("1.4.1", any(getattr(f, "version", None) for f in files)),
        ("1.4.0", fb.AssociatedFileType.SCANN_INDEX_FILE in file_types),
        ("1.3.0", fb.ContentProperties.AudioProperties in kinds),
        ("1.2.1", fb.ProcessUnitOptions.RegexTokenizerOptions in options),
        ("1.2.0", any(g.inputTensorGroups or g.outputTensorGroups for g in subgraphs)),
        ("1.1.0", bool({fb.ProcessUnitOptions.BertTokenizerOptions, fb.ProcessUnitOptions.SentencePieceTokenizerOptions} & options)
         or any(g.inputProcessUnits or g.outputProcessUnits for g in subgraphs)),
        ("1.0.1", fb.AssociatedFileType.VOCABULARY in file_types),
    ]
    return next((version for version, used in rules if used), "1.0.0")


def _provide_version_module():
    """Register `_min_parser_version` under the native module name MediaPipe imports, when the
    installed wheel lacks that module (1.2.3 does); a wheel that has it keeps its own."""
    import types

    import mediapipe.tasks  # noqa: F401  (ImportError without MediaPipe: nothing is registered then)

    name = "mediapipe.tasks.cc.metadata.python"
    try:
        __import__(f"{name}._pywrap_metadata_version")
        return
    except ImportError:
        pass
    module = types.ModuleType(f"{name}._pywrap_metadata_version")
    module.GetMinimumMetadataParserVersion = _min_parser_version
    package = sys.modules.get(name) or types.ModuleType(name)
    package._pywrap_metadata_version = module
    sys.modules.setdefault(name, package)
    sys.modules[module.__name__] = module


def input_normalization(input_dtype, intensity=None):
    """`(mean, std)` of the input's `NormalizationOptions`, in the units the reader feeds.

    A float input is `x = (v - mean) / std`: `(0, 255)` for 8-bit pixels (the default `/255`
    mapping), or the `norm_mean` / `norm_std` of a fixed linear intensity recipe (a window:
    `keras_litenext.data.intensity.Intensity.to_dict()`, the run's `config.json` `"intensity"`). A
    per-image recipe (percentile stretch, z-score) is no fixed map: the app computes its `x` in
    [0, 1] and hands over the 8-bit image `p = round(255 x)`, so `(0, 255)` again. A uint8
    input takes the pixels as they are (`(0, 1)`; its quantization parameters, scale 1/255 and
    zero point 0, make them `x = p / 255`).
    """
    if input_dtype in ("uint8", "int8"):
        return [0.0], [1.0]
    recipe = intensity if isinstance(intensity, dict) or intensity is None else intensity.to_dict()
    if recipe and "norm_mean" in recipe and "norm_std" in recipe:
        return [float(v) for v in np.atleast_1d(recipe["norm_mean"])], [float(v) for v in np.atleast_1d(recipe["norm_std"])]
    return [0.0], [255.0]


def output_labels(class_names, task_kind, output_channels):
    """The labels of the output tensor's channels (its `labels.txt`): one per channel, so a
    one-logit segmenter has one label, the foreground's (MediaPipe's category mask is then 0
    where `sigmoid(logit) > 0.5` and 255 elsewhere); K channels have the K class names."""
    names = [str(n) for n in class_names]
    return names[-1:] if int(output_channels) == 1 else names  # a classifier has K >= 2 logits


def add_metadata(model_bytes, class_names, task_kind, output_channels, name, description, input_dtype="float32",
                 intensity=None, version=None, author="keras-litenext", licence=LICENSE):
    """The `.tflite` bytes with TFLite metadata for MediaPipe Tasks (replacing any there).

    Written by `keras_litenext.export.tflite_metadata` (flatbuffers only, no MediaPipe): the
    same metadata MediaPipe's `metadata_writers` write (tests/test_metadata.py compares them).

    Args:
        model_bytes: the converted file's bytes.
        class_names: class names, class 0 first (the labels file, `output_labels`).
        task_kind: `"segmentation"` or `"classification"` (`task.metadata_kind`).
        output_channels: logits per pixel (segmentation): 1 gives `SIGMOID`, K gives `SOFTMAX`.
        name, description: the model's name and the description (model, data, metrics).
        input_dtype: the input tensor's dtype name (picks the normalisation).
        intensity: the run's intensity recipe, if any (`input_normalization`).
        version, author, licence: general metadata; version defaults to the package's.

    Returns:
        `(bytes, metadata_json)`: the file and the JSON of its metadata, in the form of
        MediaPipe's `MetadataDisplayer` (`read_metadata`).
    """
    from keras_litenext.export import tflite_metadata as tm
    from keras_litenext.litert.flatbuffer import io_tensor_types

    if version is None:
        from keras_litenext.version import __version__ as version
    mean, std = input_normalization(input_dtype, intensity)
    output_channels = int(output_channels)
    if bytes(model_bytes[4:8]) != b"TFL3":
        raise MetadataError("writing TFLite metadata failed: not a TFLite model (no TFL3 file identifier)")
    try:
        input_types, output_types = io_tensor_types(model_bytes)
        image = tm.image_input("image", "RGB image, resized to the model's input size", mean, std, input_types[0])
        output, activation = _OUTPUTS.get(task_kind, _segmenter_output)(len(class_names), output_channels, output_types[0])
        spec = tm.metadata_spec(name, description, str(version), author, licence, [image], [output], activation)
        data = tm.populate(model_bytes, spec, {LABELS_FILE: "\n".join(output_labels(class_names, task_kind, output_channels))})
    except (ValueError, IndexError, KeyError, struct.error) as err:  # not a model flatbuffer, or a value the schema cannot hold
        raise MetadataError(f"writing TFLite metadata failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    return data, tm.display_json(spec)


def _classifier_output(num_classes, output_channels, tensor_type):
    """An `ImageClassifier`'s output: the logits with their labels; no activation."""
    from keras_litenext.export import tflite_metadata as tm

    return tm.classification_output("logits", f"{num_classes} logits, one per class (arg-max = class; softmax = probabilities)",
                                    LABELS_FILE, tensor_type), None


def _segmenter_output(num_classes, output_channels, tensor_type):
    """An `ImageSegmenter`'s output: the logits with their labels, and the activation (SIGMOID
    for one logit per pixel, SOFTMAX for K; without it MediaPipe would threshold the raw logits)."""
    from keras_litenext.export import tflite_metadata as tm

    one = output_channels == 1
    return tm.segmentation_output("logits", "one logit per pixel (sigmoid = foreground probability)" if one else
                                  f"{output_channels} logits per pixel, one per class (softmax = probabilities, arg-max = class)",
                                  LABELS_FILE), "SIGMOID" if one else "SOFTMAX"


# The output of each kind of reader (`task.metadata_kind`: the task says which it is; a segmenter's by default).
_OUTPUTS = {"segmentation": _segmenter_output, "classification": _classifier_output}


def _metadata_buffer(data):
    from mediapipe.tasks.python.metadata import metadata

    return metadata.get_metadata_buffer(bytearray(data))


def read_metadata(model):
    """`{"metadata": dict, "files": {name: text}}` of a `.tflite` file (path or bytes): the
    metadata as MediaPipe's displayer gives it, and the associated files (`labels.txt`)."""
    try:
        _provide_version_module()
        from mediapipe.tasks.python.metadata import metadata
        from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter
    except Exception as err:
        raise MetadataError(f"reading TFLite metadata needs MediaPipe ({type(err).__name__}); {MEDIAPIPE_HINT}") from None
    if isinstance(model, (bytes, bytearray)):
        data = bytearray(model)
    else:
        with open(os.fspath(model), "rb") as f:
            data = bytearray(f.read())
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(data)
    except ValueError as err:
        raise MetadataError(f"{'the file' if isinstance(model, (bytes, bytearray)) else os.fspath(model)} has no TFLite metadata ({err})") from None
    text = image_segmenter.convert_to_json(_metadata_buffer(data))
    files = {n: displayer.get_associated_file_buffer(n).decode("utf-8") for n in displayer.get_packed_associated_file_list()}
    return {"metadata": json.loads(text), "files": files}


# ----------------------------------------------------------------------------------------------
# The real client: MediaPipe Tasks, in a child process
# ----------------------------------------------------------------------------------------------
def check_mediapipe(path, images, task_kind, timeout=300):
    """Run a `.tflite` file through MediaPipe's own task on RGB images, in a child process.

    Segmentation: `ImageSegmenter` with the category mask and the confidence masks;
    classification: `ImageClassifier` (all categories). The images are fed as MediaPipe
    `Image`s (SRGB, uint8) at the model's input size, so no resizing takes place.

    Args:
        path: the `.tflite` file (with metadata).
        images: `(N, H, W, 3)` uint8 RGB.
        task_kind: `"segmentation"` or `"classification"` (`task.metadata_kind`).

    Returns:
        segmentation: `{"category": (N, H, W) uint8, "confidence": (N, H, W, C) float32,
        "labels": [...]}` (the category mask is MediaPipe's: the class index for K channels;
        for one logit 0 where `sigmoid(logit) > 0.5`, the one label, and 255 elsewhere);
        classification: `{"scores": (N, K) float32 in class order, "top": (N,) int,
        "labels": [...]}`.

    Raises:
        MetadataError: MediaPipe missing, or the task refused the file (its message).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"check_mediapipe: expected (N, H, W, 3) uint8 RGB images, got {images.dtype} {images.shape}.")
    with tempfile.TemporaryDirectory(prefix="litenext-mediapipe-") as folder:
        np.save(os.path.join(folder, "images.npy"), images)
        # This file run as the main module, from the empty folder (so no file of the package's
        # folder shadows a module name): it imports MediaPipe and numpy only, not the package nor TensorFlow.
        code = f"import runpy; runpy.run_path({os.path.abspath(__file__)!r}, run_name='__main__')"
        cmd = [sys.executable, "-c", code, os.path.abspath(os.fspath(path)), folder, task_kind]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=folder)
        if done.returncode != 0:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            error = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), lines[-1] if lines else "no output")
            raise MetadataError(f"MediaPipe on {os.fspath(path)}: {error}")
        result = dict(np.load(os.path.join(folder, "result.npz")))
    result["labels"] = [str(n) for n in result["labels"]]
    return result


def _run_task(path, folder, task_kind):
    """The child process of `check_mediapipe`: MediaPipe only (no TensorFlow imported)."""
    sys.modules.setdefault("tensorflow", None)  # MediaPipe's metadata module would import it for file access
    images = np.load(os.path.join(folder, "images.npy"))
    out = _READERS.get(task_kind, _segment)(path, images)
    np.savez(os.path.join(folder, "result.npz"), **out)


def _classify(path, images):
    """`ImageClassifier` on each image: the scores of all categories, in class order."""
    import mediapipe as mp
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import image_classifier

    options = image_classifier.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path), max_results=-1)
    with image_classifier.ImageClassifier.create_from_options(options) as classifier:
        scores, labels = [], None
        for image in images:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            if labels is None:
                labels = [None] * len(categories)
                for c in categories:
                    labels[c.index] = c.category_name
            row = np.zeros(len(categories), np.float32)
            for c in categories:
                row[c.index] = c.score
            scores.append(row)
    return {"scores": np.stack(scores), "top": np.argmax(np.stack(scores), axis=-1), "labels": np.array(labels)}


def _segment(path, images):
    """`ImageSegmenter` on each image: the category mask and the confidence masks."""
    import mediapipe as mp
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import image_segmenter

    options = image_segmenter.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=path),
                                                    output_category_mask=True, output_confidence_masks=True)
    with image_segmenter.ImageSegmenter.create_from_options(options) as segmenter:
        category, confidence = [], []
        for image in images:
            result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            category.append(np.array(result.category_mask.numpy_view()).reshape(image.shape[:2]))
            confidence.append(np.stack([np.array(m.numpy_view()).reshape(image.shape[:2]) for m in result.confidence_masks], axis=-1))
        labels = segmenter.labels
    return {"category": np.stack(category), "confidence": np.stack(confidence).astype(np.float32), "labels": np.array(labels)}


_READERS = {"segmentation": _segment, "classification": _classify}


if __name__ == "__main__":  # check_mediapipe's child: FILE FOLDER TASK_KIND
    try:
        _run_task(*sys.argv[1:4])
    except Exception as err:
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        sys.exit(1)
