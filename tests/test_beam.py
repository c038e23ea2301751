"""`predict --runner`: the Apache Beam pipeline (`keras_litenext.inference.beam`) writes what `predict`
writes. On DirectRunner with two worker processes over ~100 images of mixed formats (PNG, JPEG,
TIFF, DICOM with and without an extension, NIfTI volumes) and two broken files: the same masks,
label files and rows as `predict_folder`; the broken files in the dead-letter failures.csv and
nothing else missing. The `.tflite` handler against LiteRT itself; a classifier's rows as its CSV."""

import csv
import os
import shutil

import cv2
import keras
import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileMetaDataset

import keras_litenext
from keras_litenext.cli import predict as predict_cli
from keras_litenext.inference import predict_folder

beam = pytest.importorskip("apache_beam", reason="apache_beam is not installed (pip install keras-litenext[beam])")

BROKEN = ("p07_bad.png", "MR_truncated.dcm")


def write_inputs(folder, rng, pngs=80, jpegs=8, tiffs=6):
    """~100 small images of mixed formats and sizes, with a bright square each, plus real DICOM and
    NIfTI files (pydicom's and nibabel's own test data) and the two `BROKEN` files."""
    folder.mkdir()

    def picture(grey=False):
        h, w = rng.integers(48, 65, 2)
        image = rng.integers(0, 80, (h, w) if grey else (h, w, 3), dtype=np.uint8)
        y, x = rng.integers(4, 28, 2)
        image[y : y + 16, x : x + 16] = 230
        return image

    for i in range(pngs):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), picture(grey=i % 3 == 0))
    for i in range(jpegs):
        cv2.imwrite(str(folder / f"j{i}.jpg"), picture())
    for i in range(tiffs):
        image = picture(grey=True)
        cv2.imwrite(str(folder / f"t{i}.tif"), image.astype(np.uint16) * 257 if i % 2 else image)
    cv2.imwrite(str(folder / "p01.jpg"), picture())  # shares its stem with p01.png: p01_png_mask.png, p01_jpg_mask.png
    for name in ("MR_small.dcm", "MR_small_bigendian.dcm", "CT_small.dcm", "MR_truncated.dcm"):
        shutil.copyfile(pydicom.data.get_testdata_file(name), folder / name)
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))  # a PACS export: no preamble, no extension
    del ds.preamble
    ds.file_meta = FileMetaDataset()
    pydicom.dcmwrite(folder / "IM0001", ds, enforce_file_format=False)
    for name in ("anatomical.nii", "resampled_anat_moved.nii", "standard.nii.gz"):
        shutil.copyfile(os.path.join(nibabel.testing.data_path, name), folder / name)
    (folder / "p07_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(120)))


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A run folder of an untrained tiny LiteNeXt (32x32, one channel, the percentile recipe)."""
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.runs import Run, TrainConfig

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("model") / "run"
    config = TrainConfig(output=str(folder), channels=1, image_size=32, task="binary", num_classes=2,
                         class_names=["background", "nucleus"], model_kwargs={"width": 4}, intensity=Intensity("percentile"))
    run = Run.create(config)
    keras_litenext.LiteNeXt(input_shape=(32, 32, 1), width=4).save(run.file("best.keras"))
    return str(folder)


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return sorted(f.read().splitlines()[1:]), f.name


def test_pipeline_writes_what_predict_writes_and_lists_the_broken(tmp_path, grey_run, capsys):
    images = tmp_path / "images"
    write_inputs(images, np.random.default_rng(0))
    beam_out, plain_out = tmp_path / "beam", tmp_path / "plain"
    status = predict_cli.main([grey_run, str(images / "*"), "--output", str(beam_out), "--runner", "DirectRunner",
                               "--direct_num_workers=2", "--direct_running_mode=multi_processing", "--batch-size", "4", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    plain = predict_folder(grey_run, str(images), str(plain_out))
    inputs = sorted(os.listdir(images))
    assert len(inputs) >= 100 and len(plain.failures) == 2

    # the same files, byte for byte where the format has no time or UID in it
    assert sorted(os.listdir(beam_out)) == sorted(os.listdir(plain_out))
    assert "p01_png_mask.png" in os.listdir(beam_out) and "IM0001_labels.dcm" in os.listdir(beam_out)
    for name in sorted(os.listdir(plain_out)):
        ours, theirs = beam_out / name, plain_out / name
        if name.endswith((".png", ".csv")) and name != "predictions.csv":
            assert ours.read_bytes() == theirs.read_bytes(), name
        elif ".nii" in name:
            a, b = nib.load(ours), nib.load(theirs)
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)) and np.array_equal(a.affine, b.affine), name
        elif name.endswith(".dcm"):
            a, b = pydicom.dcmread(ours), pydicom.dcmread(theirs)
            assert np.array_equal(a.pixel_array, b.pixel_array), name
            assert all(a.get(t) == b.get(t) for t in ("Rows", "Columns", "ImagePositionPatient", "PixelSpacing")), name

    # the rows: one per image written, the same text (the pipeline's come in any order)
    ours, theirs = rows_of(beam_out / "predictions.csv")[0], rows_of(plain_out / "predictions.csv")[0]
    assert ours == theirs and len(ours) == len(inputs) - 2
    with open(beam_out / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = {os.path.basename(r["image"]): r for r in csv.DictReader(f)}
    assert set(rows) == set(inputs) - set(BROKEN)  # nothing else missing
    assert rows["MR_small.dcm"]["mm2_nucleus"] and not rows["MR_small.dcm"]["ml_nucleus"]  # 2-D with spacing: mm²
    assert rows["anatomical.nii"]["ml_nucleus"] and rows["anatomical.nii"]["slices"] == "25"  # a volume: ml
    assert not rows["p00.png"]["mm2_nucleus"] and len(rows["p00.png"]["model_sha256"]) == 64

    # the dead letters: the two broken files, with predict's stage and reason; exit 1, listed at the end
    with open(beam_out / "failures.csv", newline="", encoding="utf-8") as f:
        failed = list(csv.DictReader(f))
    assert sorted(os.path.basename(r["item"]) for r in failed) == sorted(BROKEN)
    assert (beam_out / "failures.csv").read_text() == (plain_out / "failures.csv").read_text()
    assert all(name in captured.err for name in BROKEN) and "Traceback" not in captured.err
    assert f"{len(inputs) - 2} file(s) predicted" in captured.out

    # label files of one source series form one series, whichever worker wrote them
    series = {n: pydicom.dcmread(beam_out / n).SeriesInstanceUID for n in os.listdir(beam_out) if n.endswith(".dcm")}
    sources = {n: pydicom.dcmread(images / n.replace("_labels.dcm", ".dcm" if n != "IM0001_labels.dcm" else ""), force=True)
               .SeriesInstanceUID for n in series}
    assert all((series[a] == series[b]) == (sources[a] == sources[b]) for a in series for b in series)


def test_tflite_handler_gives_litert_labels(tmp_path):
    """The `.tflite` handler through RunInference (in-process DirectRunner) against the LiteRT
    runtime called directly: the same labels, the rows in Parquet."""
    from keras_litenext.data import read_image
    from keras_litenext.data.intensity import to_float
    from keras_litenext.inference.rows import read_rows
    from keras_litenext.litert.runtime import TFLiteRunner
    from keras_litenext.presets import preset_metadata

    tflite = tmp_path / "model" / "litenext_int8.tflite"
    shutil.copytree(os.path.join(preset_metadata("litenext-nuclei")["path"], "tflite"), tflite.parent)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(((96, 96), (64, 80), (120, 100))):
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        image[10:40, 20:50] = 220
        cv2.imwrite(str(images / f"n{i}.png"), image)
    assert predict_cli.main([str(tflite), str(images / "*.png"), "--output", str(out), "--runner", "DirectRunner",
                             "--format", "parquet", "--quiet"]) == 0
    runner = TFLiteRunner(str(tflite))
    rows = {os.path.basename(r["image"]): r for r in read_rows(out / "predictions.parquet")}
    for name in sorted(os.listdir(images)):
        x = to_float(read_image(str(images / name), channels=3))
        h, w = x.shape[:2]
        small = cv2.resize(x, (96, 96), interpolation=cv2.INTER_AREA if h * w > 96 * 96 else cv2.INTER_LINEAR)
        probability = cv2.resize(1.0 / (1.0 + np.exp(-runner(small[None])[0])), (w, h), interpolation=cv2.INTER_LINEAR)
        expected = (probability.reshape(h, w) > 0.5).astype(np.uint8) * 255
        mask = cv2.imread(str(out / name.replace(".png", "_mask.png")), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(mask, expected), name
        assert rows[name]["pixels_foreground"] == int((expected > 0).sum()) and rows[name]["mm2_foreground"] is None


def test_classifier_rows_are_its_predictions_csv(tmp_path):
    """A classifier through the pipeline: the rows of `predictions.csv` as `predict` writes them."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    model.save(tmp_path / "cls.keras")
    images = tmp_path / "images"
    rng = np.random.default_rng(2)
    for i in range(6):
        (images / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / f"c{i % 2}" / f"x{i}.png"), rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))
    assert predict_cli.main([str(tmp_path / "cls.keras"), str(images / "*" / "*.png"), "--output", str(tmp_path / "beam"),
                             "--runner", "DirectRunner", "--quiet"]) == 0
    predict_folder(str(tmp_path / "cls.keras"), str(images), str(tmp_path / "plain"))
    ours, theirs = (tmp_path / "beam" / "predictions.csv").read_text(), (tmp_path / "plain" / "predictions.csv").read_text()
    assert ours.splitlines()[0] == theirs.splitlines()[0] == "file,predicted,class0,class1,class2"
    assert sorted(ours.splitlines()) == sorted(theirs.splitlines()) and len(ours.splitlines()) == 7


def test_predict_rows_of_several_runs_into_one_folder(tmp_path, grey_run):
    """`predict` keeps the rows earlier runs wrote into the folder; another model's rows file is refused."""
    from keras_litenext.inference.rows import read_rows
    from keras_litenext.runs import open_source

    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / f"{name}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    source = open_source(grey_run)  # loaded once
    for name in ("a", "b", "a"):
        predict_folder(source, str(tmp_path / name / f"{name}.png"), str(tmp_path / "out"), overwrite=True)
    assert [os.path.basename(r["image"]) for r in read_rows(tmp_path / "out" / "predictions.csv")] == ["a.png", "b.png"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "predictions.csv").write_text("image,something_else\n")
    with pytest.raises(FileExistsError, match="another model"):
        predict_folder(source, str(tmp_path / "a"), str(tmp_path / "other"))


def test_without_beam_the_command_says_what_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "apache_beam" else real(name, *a))
    assert predict_cli.main(["run", "x/*.png", "--output", str(tmp_path), "--runner", "DirectRunner"]) == 1
    assert capsys.readouterr().err.strip() == 'error: --runner needs Apache Beam: pip install "keras-litenext[beam]"'
