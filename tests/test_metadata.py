"""The TFLite metadata written without MediaPipe (`keras_litenext.export.tflite_metadata`, used by
`metadata.add_metadata`) is the metadata MediaPipe's own `metadata_writers` write, and MediaPipe's
tasks run the files; the base install declares one OpenCV.

MediaPipe is installed here only to check (`.ci/run`: `pip install --no-deps "mediapipe==1.2.3"`).
"""

import importlib.metadata
import io
import json
import pathlib
import runpy
import zipfile
from unittest import mock

import numpy as np
import pytest
from conftest import ROOT, run_python

from keras_litenext.export import metadata as M
from keras_litenext.export import tflite_metadata as TM

needs_mediapipe = pytest.mark.skipif(not M.mediapipe_available(), reason=f"MediaPipe is not installed ({M.MEDIAPIPE_HINT})")
PRESET_INT8 = ROOT / "keras_litenext" / "presets" / "litenext-nuclei" / "tflite" / "litenext_int8.tflite"
WINDOW = {"norm_mean": 0.3, "norm_std": 0.21}  # a fixed intensity window: float32 rounding of mean, std and stats

# name: (file, class names, task kind, output channels, input dtype, intensity)
CASES = {
    "segmenter-1-logit-float": ("seg1", ["background", "cells"], "segmentation", 1, "float32", None),
    "segmenter-3-classes-window": ("seg3", ["background", "a", "b"], "segmentation", 3, "float32", WINDOW),
    "segmenter-uint8-int8-file": ("preset", ["background", "nuclei"], "segmentation", 1, "uint8", None),
    "classifier-float": ("cls", ["bright", "dark"], "classification", 2, "float32", None),
}


def _without_metadata(data):
    """The preset's int8 file without its TFLITE_METADATA entry nor the archive after it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    model.metadata = [m for m in model.metadata if m.name != TM.METADATA_NAME.encode()]
    b = flatbuffers.Builder(len(data))
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def files():
    """Converted files without metadata: 16x16 RGB float segmenters (1 logit, 3 classes), a
    2-class classifier, and the bundled preset's int8 file (uint8 pixels in, float logits out)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3))
    models = {"seg1": keras.layers.Conv2D(1, 3, padding="same")(image),
              "seg3": keras.layers.Conv2D(3, 3, padding="same")(image),
              "cls": keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(image))}
    out = {name: tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, y)).convert() for name, y in models.items()}
    out["preset"] = _without_metadata(PRESET_INT8.read_bytes())
    return out


def _ours(files, case, **extra):
    key, names, kind, k, dtype, intensity = CASES[case]
    return M.add_metadata(files[key], names, kind, k, name=f"m_{key}", description=f"a {case} file", input_dtype=dtype,
                          intensity=intensity, version="9.9", **extra)


def _mediapipe_writes(model_bytes, class_names, task_kind, output_channels, name, description, input_dtype, intensity, version):
    """The same metadata, written with MediaPipe's `metadata_writers` (what `add_metadata` used before)."""
    M._provide_version_module()  # the 1.2.3 wheel lacks the native minimum-parser-version module
    from mediapipe.tasks.python.metadata.metadata_writers import (
        image_segmenter,
        metadata_info,
        metadata_writer,
    )

    mean, std = M.input_normalization(input_dtype, intensity)
    writer = metadata_writer.MetadataWriter(bytearray(model_bytes))
    writer._general_md = metadata_info.GeneralMd(name=name, version=version, description=description, author="keras-litenext",
                                                 licenses=M.LICENSE)
    writer.add_image_input(mean, std, name="image", description="RGB image, resized to the model's input size")
    labels = metadata_writer.Labels().add(M.output_labels(class_names, task_kind, output_channels), exported_filename=M.LABELS_FILE)
    if task_kind == "classification":
        writer.add_classification_output(labels, name="logits",
                                         description=f"{len(class_names)} logits, one per class (arg-max = class; softmax = probabilities)")
    else:
        activation = image_segmenter.Activation.SIGMOID if output_channels == 1 else image_segmenter.Activation.SOFTMAX
        writer.add_custom_metadata(image_segmenter.ImageSegmenterOptionsMd(activation))
        writer.add_segmentation_output(labels, name="logits", description=(
            "one logit per pixel (sigmoid = foreground probability)" if output_channels == 1
            else f"{output_channels} logits per pixel, one per class (softmax = probabilities, arg-max = class)"))
    data, _ = writer.populate()
    return bytes(data)


@needs_mediapipe
@pytest.mark.parametrize("case", list(CASES))
def test_our_metadata_is_what_mediapipe_writes(files, case):
    """MediaPipe's displayer shows the same metadata (every field: name, version, author, licence,
    description, RGB image input with its normalisation and stats, output content, stats and
    labels file, segmenter activation, minimum parser version) and the same packed labels file
    for both files. The bytes differ (the flatbuffers are laid out in another order)."""
    key, names, kind, k, dtype, intensity = CASES[case]
    data, json_view = _ours(files, case)
    theirs = _mediapipe_writes(files[key], names, kind, k, f"m_{key}", f"a {case} file", dtype, intensity, "9.9")
    ours_read, theirs_read = M.read_metadata(data), M.read_metadata(theirs)
    assert ours_read == theirs_read
    assert json.loads(json_view) == ours_read["metadata"]  # add_metadata's JSON is the displayer's view
    assert ours_read["files"] == {"labels.txt": "\n".join(M.output_labels(names, kind, k))}
    subgraph = ours_read["metadata"]["subgraph_metadata"][0]
    assert ("custom_metadata" in subgraph) == (kind == "segmentation")
    # written again over its own metadata: replaced, not added to (one entry, one labels file)
    again, _ = M.add_metadata(data, names, kind, k, name="renamed", description="d", input_dtype=dtype, intensity=intensity)
    assert M.read_metadata(again)["metadata"]["name"] == "renamed" and M.read_metadata(again)["files"] == ours_read["files"]
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(again), 0)
    assert [m.name for m in model.metadata].count(TM.METADATA_NAME.encode()) == 1
    assert zipfile.ZipFile(io.BytesIO(again)).namelist() == ["labels.txt"]


def _litert_logits(data, pixels, dtype, intensity):
    """The file's logits from LiteRT for uint8 RGB pixels, fed as the metadata says (uint8: as
    they are; float: `(p - mean) / std`)."""
    from keras_litenext.litert import run_tflite

    if dtype == "uint8":
        return run_tflite(data, pixels)
    mean, std = M.input_normalization(dtype, intensity)
    return run_tflite(data, (pixels.astype(np.float32) - np.float32(mean[0])) / np.float32(std[0]))


@needs_mediapipe
@pytest.mark.parametrize("case", list(CASES))
def test_mediapipe_tasks_run_our_files_as_litert_does(files, case, tmp_path):
    key, names, kind, k, dtype, intensity = CASES[case]
    data, _ = _ours(files, case)
    path = tmp_path / f"{key}.tflite"
    path.write_bytes(data)
    side = 16 if key != "preset" else 96
    pixels = np.random.default_rng(1).integers(0, 256, (3, side, side, 3), dtype=np.uint8)
    logits = _litert_logits(str(path), pixels, dtype, intensity)
    result = M.check_mediapipe(path, pixels, kind)
    assert result["labels"] == M.output_labels(names, kind, k)
    if kind == "classification":
        assert np.array_equal(result["top"], np.argmax(logits, axis=-1))
        np.testing.assert_allclose(result["scores"], logits, atol=1e-4)  # no activation in the metadata: the logits
        return
    if k == 1:  # the category mask: 0 (the one label) where sigmoid(logit) > 0.5, 255 elsewhere
        expected, probabilities = np.where(logits[..., 0] > 0, 0, 255), 1 / (1 + np.exp(-logits))
    else:
        expected = np.argmax(logits, axis=-1)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
    assert np.mean(result["category"] == expected) >= 0.999
    assert np.mean(np.abs(result["confidence"] - probabilities) < 1e-3) >= 0.999


def test_metadata_is_written_with_mediapipe_unimportable(files, tmp_path):
    """`add_metadata` imports no MediaPipe: run where `import mediapipe` fails, its file carries the
    TFLITE_METADATA buffer and the labels archive, the same file as written here."""
    key, names, kind, k, dtype, intensity = CASES["segmenter-3-classes-window"]
    source, target = tmp_path / "in.tflite", tmp_path / "out.tflite"
    source.write_bytes(files[key])
    done = run_python(f"""
        import sys
        sys.modules["mediapipe"] = None  # import mediapipe raises ImportError
        from keras_litenext.export import metadata as M
        data, _ = M.add_metadata(open(sys.argv[1], "rb").read(), {names!r}, {kind!r}, {k}, name="m_{key}",
                                 description="a segmenter-3-classes-window file", input_dtype={dtype!r}, intensity={intensity!r},
                                 version="9.9")
        assert not M.mediapipe_available()
        assert not any(name.startswith("mediapipe.") for name in sys.modules)
        open(sys.argv[2], "wb").write(data)
        """, backend="tensorflow", args=(source, target))
    assert done.returncode == 0, done.stderr[-2000:]
    written = target.read_bytes()
    assert written == _ours(files, "segmenter-3-classes-window")[0]
    assert zipfile.ZipFile(io.BytesIO(written)).read("labels.txt") == b"background\na\nb"
    spec = json.loads(_ours(files, "segmenter-3-classes-window")[1])
    assert TM.pack_metadata(spec)[4:8] == TM.METADATA_IDENTIFIER


def test_not_a_model_is_a_metadata_error():
    with pytest.raises(M.MetadataError, match="writing TFLite metadata failed"):
        M.add_metadata(b"not a tflite file at all", ["a", "b"], "classification", 2, name="x", description="y")


# --------------------------------------------------------------------------------------------------
# One OpenCV: the base install and its test extra declare one distribution of cv2
# --------------------------------------------------------------------------------------------------
CV2_DISTRIBUTIONS = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}


def _declared():
    """`setup()`'s arguments, read from setup.py itself (a stale egg-info in the clone can shadow
    the installed metadata)."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def _closure(requirements):
    """The names of the distributions `requirements` bring, through the installed ones' own
    requirements (markers evaluated; a distribution not installed here counts by its name)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in [""] + sorted(req.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            try:
                todo += [(Requirement(r), wanted) for r in importlib.metadata.requires(name) or []]
            except importlib.metadata.PackageNotFoundError:
                pass
    return {name for name, _ in seen}


def _cv2_providers(names):
    providers = set()
    for name in names:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        if name in CV2_DISTRIBUTIONS or any(pathlib.PurePath(str(f)).parts[:1] == ("cv2",) for f in files):
            providers.add(name)
    return providers


def test_the_install_and_its_test_extra_bring_one_opencv():
    """`pip install keras-litenext` and `[test]` (what the README's test command installs) bring
    exactly one distribution of `cv2`, the headless one (`import keras_litenext` needs no
    libGL); MediaPipe, whose wheel declares opencv-contrib-python, is no requirement of either."""
    setup = _declared()
    base, extras = setup["install_requires"], setup["extras_require"]
    assert any(r.startswith("ai-edge-litert") for r in base)  # scoring and timing the files is the main job
    for requirements in (base, base + extras["test"], base + extras["litert"]):
        names = _closure(requirements)
        assert "mediapipe" not in names
        assert _cv2_providers(names) == {"opencv-python-headless"}
    if M.mediapipe_available():  # why MediaPipe is installed with --no-deps
        assert "opencv-contrib-python" in _closure(base + extras["mediapipe"])
