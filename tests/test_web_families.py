"""Each family's default int8 file, exported from a short run, gives in headless Chromium what it
gives in LiteRT (Python, same file, same images).

A short run: 1 epoch on 16 bundled images at the family's smallest size (MedNeXt at its smallest
size, `t`: the same blocks and ops as the default `s`, whose int8 conversion alone takes ~2.5 min
here), exported as `keras-litenext export` does by default (the QAT form, the "cpu" int8 mode,
uint8 in / float32 out, the metadata) without the QAT fine-tuning epochs, which change weights
only. A short run's class masks may be all one class, so a segmenter's confidence masks (the
sigmoid or softmax MediaPipe applies to the file's logits) are compared too, on images whose
confidences vary. Needs Chromium and Playwright, as `test_web.py`.
"""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from test_web import AGREE, assert_masks_agree, litert_logits

from keras_litenext.web import check as C

pytestmark = pytest.mark.skipif(C.missing() is not None, reason=str(C.missing()))

# MedNeXt's two runs are in `test_web_mednext.py`: a module each, so two test processes share them.
SHORT_RUNS = {"litenext": 32, "ulite": 32, "lvunet": 128}
CLASSIFIERS = ("mednext_cls-t",)


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    return make_short_runs(tmp_path_factory.mktemp("short"), SHORT_RUNS)


def make_short_runs(root, families):
    """{family: (int8 file, images at its size)} for `families` ({name: image size})."""
    import shutil

    from keras_litenext.data import sample_data_dir
    from keras_litenext.export import export_run
    from keras_litenext.runs.settings import TrainConfig
    from keras_litenext.train import train

    src = pathlib.Path(sample_data_dir())
    stems = sorted(p.name for p in (src / "images").glob("*.png"))[:16]
    for sub in ("images", "masks"):
        (root / "seg" / sub).mkdir(parents=True)
        for name in stems:
            shutil.copy(src / sub / name, root / "seg" / sub / name)
    for k, name in enumerate(stems):  # two class folders for the classifier
        folder = root / "cls" / ("few" if k % 2 else "many")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "images" / name, folder / name)
    out = {}
    for family, size in families.items():
        run = root / family
        data = root / ("cls" if family in CLASSIFIERS else "seg")
        train(TrainConfig(model=family, data=str(data), image_size=size, epochs=1, batch_size=8, output=str(run), verbose=0))
        export_run(str(run), kinds=["int8"], qat_epochs=0, num_calibration=8, qat_retries=0, verbose=0, log=lambda *a, **k: None)
        images = []
        for name in stems[:3]:
            images.append(root / f"{family}_{name}")
            Image.open(src / "images" / name).convert("RGB").resize((size, size), Image.BILINEAR).save(images[-1])
        out[family] = (next((run / "tflite").glob("*_int8.tflite")), images)
    return out


def activation(logits):
    """What MediaPipe's confidence masks hold: the sigmoid of one logit, else the softmax."""
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def assert_confidences_agree(confidences, expected, atol=1e-4):
    for i, (conf, ref) in enumerate(zip(confidences, expected)):
        assert conf.shape == ref.shape, (i, conf.shape, ref.shape)
        agree = float(np.mean(np.abs(conf - ref) <= atol))
        assert agree >= AGREE, f"image {i}: the browser's confidences agree with LiteRT's on {agree:.2%} of pixels"


@pytest.mark.parametrize("family", list(SHORT_RUNS))
def test_each_familys_default_int8_file_runs_in_the_browser_as_in_litert(family, short_runs, tmp_path):
    check_in_the_browser(family, *short_runs[family], tmp_path)


def check_in_the_browser(family, path, images, tmp_path):
    from keras_litenext.litert import inspect_tflite

    info = inspect_tflite(str(path))
    assert info["input"]["dtype"] == "uint8" and info["output"]["dtype"] == "float32"
    logits = litert_logits(path, images)
    classifier = family in CLASSIFIERS
    report = C.check_page(path, images, tmp_path, confidence=not classifier)
    assert report["outside_requests"] == [] and report["reader"] == ("ImageClassifier" if classifier else "ImageSegmenter")
    if classifier:
        for p, lg in zip(images, logits):
            scores = json.loads((tmp_path / f"{p.stem}_scores.json").read_text())
            assert scores["top"] == int(np.argmax(lg)), (p.name, scores, lg)
            np.testing.assert_allclose(scores["scores"], lg, atol=1e-3)
        return
    masks = [np.asarray(Image.open(tmp_path / f"{p.stem}_mask.png")) for p in images]
    assert_masks_agree(masks, [(lg[..., 0] > 0).astype(np.uint8) if lg.shape[-1] == 1 else np.argmax(lg, -1).astype(np.uint8) for lg in logits])
    expected = [activation(lg) for lg in logits]
    # the confidences vary over each image, so agreeing on them says something about the file
    assert all(np.ptp(e) > 1e-3 for e in expected), [float(np.ptp(e)) for e in expected]
    confidences = [np.load(tmp_path / f"{p.stem}_confidence.npy") for p in images]
    assert_confidences_agree(confidences, expected)
    # the check fails a confidence map off by 1e-3 on 1 % of its pixels
    broken = [c.copy() for c in confidences]
    broken[0].reshape(-1)[: broken[0].size // 100 + 1] += 1e-3
    with pytest.raises(AssertionError, match="confidences agree"):
        assert_confidences_agree(broken, expected)
