"""The browser page (`keras-litenext web`) in headless Chromium agrees with LiteRT in Python.

The bundled preset's int8 file and two small files made here (a 3-class float segmenter and a
3-class classifier, each with its TFLite metadata) run through the page's own code path
(`check_page`: the page's file input) on sample images, RGB, grey and JPEG; the class masks agree
with LiteRT's on the same file and pixels on >= 99.5 % of pixels, a classifier's top class on
every image. Bad input shows one readable message. Each family's default int8 file:
`test_web_families.py`. Needs Debian's `chromium` and Python Playwright
(`.ci/run` installs both); MediaPipe's npm package is fetched once from the lock file and cached.
"""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_litenext.web import check as C

pytestmark = pytest.mark.skipif(C.missing() is not None, reason=str(C.missing()))

AGREE = 0.995


def preset_int8():
    from keras_litenext.presets import preset_metadata

    return pathlib.Path(preset_metadata("litenext-nuclei")["path"]) / "tflite" / "litenext_int8.tflite"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five bundled nuclei images (96x96 RGB PNG), one of them saved grey and one as JPEG."""
    from keras_litenext.data import sample_data_dir

    folder = tmp_path_factory.mktemp("images")
    paths = sorted((pathlib.Path(sample_data_dir()) / "images").glob("*.png"))[:5]
    Image.open(paths[3]).convert("L").save(folder / "grey.png")
    Image.open(paths[4]).convert("RGB").save(folder / "photo.jpg", quality=92)
    return [*paths[:3], folder / "grey.png", folder / "photo.jpg"]


def pixels(path):
    """An image as the page gets it: RGB uint8 (grey repeated on the three channels)."""
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A 3-class float segmenter and a 3-class classifier at 96x96, random weights, with metadata."""
    import keras
    import tensorflow as tf

    from keras_litenext.export.metadata import add_metadata

    keras.utils.set_random_seed(0)
    image = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    models = {"segmenter": (keras.layers.Conv2D(3, 3, padding="same")(x), "segmentation", 3),
              "classifier": (keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)), "classification", 3)}
    folder, out = tmp_path_factory.mktemp("files"), {}
    for name, (y, kind, k) in models.items():
        data = tf.lite.TFLiteConverter.from_keras_model(keras.Model(image, y)).convert()
        data, _ = add_metadata(data, ["background", "cells", "debris"] if kind == "segmentation" else ["normal", "benign", "malignant"],
                               kind, k, name=f"small_{name}", description=f"a small {name}", input_dtype="float32")
        (folder / f"{name}.tflite").write_bytes(data)
        out[name] = folder / f"{name}.tflite"
    return out


def litert_logits(path, image_paths):
    """LiteRT's logits for the images, fed as the metadata says (uint8 as they are, float /255)."""
    from keras_litenext.litert import io_details, run_tflite

    batch = np.stack([pixels(p) for p in image_paths])
    if io_details(str(path))["input"]["dtype"] != "uint8":
        batch = batch.astype(np.float32) / 255.0
    return run_tflite(str(path), batch)


def assert_masks_agree(masks, expected):
    for i, (mask, ref) in enumerate(zip(masks, expected)):
        assert mask.shape == ref.shape, (i, mask.shape, ref.shape)
        agree = float(np.mean(mask == ref))
        assert agree >= AGREE, f"image {i}: the browser's mask agrees with LiteRT's on {agree:.2%} of pixels"


@pytest.mark.parametrize("which", ["preset-int8", "segmenter-3-classes"])
def test_browser_masks_agree_with_litert(which, images, small_files, tmp_path):
    path = preset_int8() if which == "preset-int8" else small_files["segmenter"]
    report = C.check_page(path, images, tmp_path, runs=2)
    assert report["outside_requests"] == [] and report["reader"] == "ImageSegmenter"
    masks = [np.asarray(Image.open(tmp_path / f"{p.stem}_mask.png")) for p in images]
    logits = litert_logits(path, images)
    # one logit per pixel: foreground (class 1) where logit > 0; K logits: the arg-max
    expected = [(lg[..., 0] > 0).astype(np.uint8) if lg.shape[-1] == 1 else np.argmax(lg, -1).astype(np.uint8) for lg in logits]
    assert_masks_agree(masks, expected)
    for row, mask in zip(report["images"], masks):
        assert sum(row["areas"].values()) == mask.size and row["median_ms"] > 0 and row["runs"] == 2
    # the check fails a mask off by 1 % of its pixels
    broken = [m.copy() for m in masks]
    broken[0].reshape(-1)[: broken[0].size // 100 + 1] ^= 1
    with pytest.raises(AssertionError, match="agrees with LiteRT's"):
        assert_masks_agree(broken, expected)


def test_browser_classifier_top_class_agrees_with_litert(images, small_files, tmp_path):
    path = small_files["classifier"]
    report = C.check_page(path, images, tmp_path)
    assert report["reader"] == "ImageClassifier" and report["outside_requests"] == []
    logits = litert_logits(path, images)
    for p, lg in zip(images, logits):
        scores = json.loads((tmp_path / f"{p.stem}_scores.json").read_text())
        assert scores["classes"] == ["normal", "benign", "malignant"]
        assert scores["top"] == int(np.argmax(lg)), (p.name, scores, lg)
        np.testing.assert_allclose(scores["scores"], lg, atol=1e-3)
        assert sum(scores["probabilities"]) == pytest.approx(1.0, abs=1e-6)


def _without_metadata(path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    model.metadata = [m for m in model.metadata if m.name != b"TFLITE_METADATA"]
    b = flatbuffers.Builder(1 << 20)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_bad_input_shows_one_readable_message(images, tmp_path, capsys):
    from keras_litenext.cli.web import main
    from keras_litenext.web import WebError, build_page

    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "weights.tflite").write_bytes(b"\x00" * 64)
    (tmp_path / "bare.tflite").write_bytes(_without_metadata(preset_int8()))
    page = tmp_path / "page"
    build_page(preset_int8(), page)
    with C.BrowserPage(page) as browser:
        assert browser.ready
        shown = []
        for name, says in (("notes.png", "notes.png: not an image"), ("weights.tflite", "weights.tflite: not a .tflite file"),
                           ("bare.tflite", "bare.tflite: no TFLite metadata")):
            browser.page.set_input_files("#model" if name.endswith(".tflite") else "#images", str(tmp_path / name))
            browser.page.evaluate("() => window.litenext.idle()")
            text = browser.page.inner_text("#error")
            assert browser.page.is_visible("#error") and text.startswith(says) and "\n" not in text, text
            shown.append(text)
        # the page's model still runs after a rejected one
        assert browser.run(images[:1])[0].get("mask")
        assert browser.outside == []
    with pytest.raises(WebError, match="notes.png: not an image"):
        C.check_page(preset_int8(), [tmp_path / "notes.png"], tmp_path / "out")
    # the command: one line naming the file, no traceback
    assert main([str(tmp_path / "weights.tflite"), "--out", str(tmp_path / "p2")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights.tflite: not a TFLite model" in err and "Traceback" not in err
