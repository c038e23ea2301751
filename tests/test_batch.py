"""Batches over many files: predict, evaluate and export (its calibration and scoring) go on past
an item that cannot be read, predicted or written, list it at the end and in failures.csv, and
exit 1; NaN in an image volume is read as its lowest finite value (`--nonfinite`)."""

import csv
import glob
import json
import os
import shutil
import warnings

import cv2
import keras
import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from scipy import ndimage

import keras_litenext
from keras_litenext.cli import evaluate as evaluate_cli
from keras_litenext.cli import export as export_cli
from keras_litenext.cli import fit as fit_cli
from keras_litenext.cli import predict as predict_cli

UNCOMPRESSED_OR_RLE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless}
GEOMETRY = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID",
            "StudyInstanceUID", "PatientID")


def failures_csv(folder):
    with open(os.path.join(folder, "failures.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def blobs(rng, size=32, channels=3):
    """An image with a bright square and its 0/255 mask."""
    image = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(4, size // 2, 2)
    image[y : y + 10, x : x + 10] = 220
    mask[y : y + 10, x : x + 10] = 255
    return image, mask


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A run folder of a tiny LiteNeXt taking one channel of any size, with the percentile recipe
    medical data gets by default."""
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.runs import Run, TrainConfig

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("model") / "run"
    config = TrainConfig(output=str(folder), channels=1, task="binary", num_classes=2, class_names=["background", "foreground"],
                         intensity=Intensity("percentile"))
    run = Run.create(config)
    keras_litenext.LiteNeXt(input_shape=(None, None, 1), width=4).save(run.file("best.keras"))
    return str(folder)


def test_png_folder_predict_goes_on_past_a_corrupt_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for name in ("a0", "z1"):
        cv2.imwrite(str(folder / f"{name}.png"), blobs(rng, 64)[0])
    (folder / "m_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    status = predict_cli.main(["--preset", "litenext-nuclei", str(folder), "--output", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    for name in ("a0", "z1"):
        assert cv2.imread(str(out / f"{name}_mask.png"), cv2.IMREAD_GRAYSCALE).shape == (64, 64)
        assert (out / f"{name}_overlay.png").exists()
    assert not list(out.glob("m_bad*"))
    rows = failures_csv(out)
    assert [(os.path.basename(r["item"]), r["stage"]) for r in rows] == [("m_bad.png", "read")] and rows[0]["reason"]
    assert "m_bad.png" in captured.err and "Traceback" not in captured.err + captured.out
    assert "2 file(s) predicted" in captured.out and "1 failed" in captured.out and "next:" in captured.out


def raw_dataset(path, source="MR_small.dcm"):
    """A shipped DICOM written without the 128-byte preamble, ``DICM`` and file meta."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(source))
    del ds.preamble
    ds.file_meta = FileMetaDataset()
    pydicom.dcmwrite(path, ds, enforce_file_format=False)
    return path


def mixed_dicom_folder(folder):
    """Every uncompressed and RLE DICOM pydicom ships with pixel data, a preamble-less copy of
    MR_small, and three that cannot give labels: truncated, an RT Structure Set, no pixels at all.
    Returns `(images: {name: source path}, broken names)`."""
    shipped = os.path.dirname(pydicom.data.get_testdata_file("MR_small.dcm"))  # the local folder, no download
    images = {}
    for path in sorted(glob.glob(os.path.join(shipped, "*.dcm"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # noqa: BLE001  (pydicom's own broken examples)
                continue
        syntax = getattr(ds.get("file_meta", FileMetaDataset()), "TransferSyntaxUID", None)
        if "PixelData" not in ds or syntax not in UNCOMPRESSED_OR_RLE or os.path.basename(path) == "MR_truncated.dcm":
            continue
        try:
            ds.pixel_array  # noqa: B018  (pydicom's examples of broken headers have pixels it cannot decode either)
        except Exception:  # noqa: BLE001
            continue
        name = os.path.basename(path)
        shutil.copyfile(path, folder / name)
        images[name] = path
    assert "MR_small_bigendian.dcm" in images and len(images) >= 20, sorted(images)
    raw_dataset(folder / "raw_mr.dcm")
    images["raw_mr.dcm"] = str(folder / "raw_mr.dcm")
    broken = ["MR_truncated.dcm", "rtstruct.dcm"]
    for name in broken:
        shutil.copyfile(pydicom.data.get_testdata_file(name), folder / name)
    return images, broken


def test_mixed_real_dicoms_all_labelled_and_the_broken_listed(tmp_path, grey_run, capsys):
    """Acceptance: a label file for every image that has pixels, with its source's geometry and
    identifiers; the broken ones listed at the end; exit 1; nothing else missing."""
    folder, out = tmp_path / "dicoms", tmp_path / "labels"
    folder.mkdir()
    images, broken = mixed_dicom_folder(folder)
    status = predict_cli.main([grey_run, str(folder), "--output", str(out), "--mode", "pad", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    for name, source_path in images.items():
        target = out / f"{os.path.splitext(name)[0]}_labels.dcm"
        assert target.exists(), name
        labels, source = pydicom.dcmread(target), pydicom.dcmread(source_path, force=True)
        for tag in GEOMETRY:
            assert labels.get(tag) == source.get(tag), (name, tag)
    failed = {os.path.basename(r["item"]): r for r in failures_csv(out)}
    assert sorted(failed) == sorted(broken)
    assert failed["MR_truncated.dcm"]["stage"] == "read" and "truncated" in failed["MR_truncated.dcm"]["reason"]
    assert "no pixel data" in failed["rtstruct.dcm"]["reason"]
    assert sorted(os.listdir(out)) == sorted([f"{os.path.splitext(n)[0]}_labels.dcm" for n in images] + ["failures.csv", "predictions.csv"])
    for name in broken:
        assert name in captured.err
    assert "Traceback" not in captured.err


def dicom_run(root):
    """A run folder on a dataset of `mixed_dicom_folder`'s files: each image with a label DICOM of
    its frames, the broken ones with a good label file (the pair fails on its image), the
    percentile recipe medical data gets by default, and a
    splits.json that names one broken stem in the train split and one in the test split, as when
    a file breaks after training. An untrained tiny LiteNeXt at 32x32, one channel.
    Returns `(run folder, broken file names, test split stems)`."""
    from keras_litenext.data import save_splits, split_stems
    from keras_litenext.data.intensity import Intensity
    from keras_litenext.data.medical import read_slices, write_labels
    from keras_litenext.runs import Run, TrainConfig

    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    images, broken = mixed_dicom_folder(data / "images")
    for name in images:
        frames, rows, columns = read_slices(str(data / "images" / name)).array.shape[:3]
        labels = np.zeros((frames, rows, columns), np.uint8)
        labels[:, rows // 4 : rows // 2, columns // 4 : columns // 2] = 1
        write_labels(str(data / "images" / name), labels, str(data / "masks" / name))
    for name in broken:
        shutil.copyfile(data / "masks" / "MR_small.dcm", data / "masks" / name)
    config = TrainConfig(data=str(data), output=str(root / "run"), channels=1, image_size=32, task="binary", num_classes=2,
                         class_names=["background", "foreground"], model_kwargs={"width": 4}, verbose=0,
                         intensity=Intensity("percentile"))
    run = Run.create(config)
    keras.utils.set_random_seed(0)
    keras_litenext.LiteNeXt(input_shape=(32, 32, 1), width=4).save(run.file("best.keras"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stems = run.load_data(skip_unreadable=True)[2]
    assert {s.split("#")[0] for s in stems} == {os.path.splitext(n)[0] for n in images}  # every good file read
    splits = split_stems(stems, (0.6, 0.2, 0.2), seed=0)
    splits["test"].append(os.path.splitext(broken[0])[0])
    splits["train"].append(os.path.splitext(broken[1])[0])
    save_splits(run.file("splits.json"), splits)
    return root / "run", broken, splits["test"]


def test_export_calibrates_and_scores_what_it_can_read_and_lists_the_rest(tmp_path, capsys):
    """The mixed real-DICOM folder through export: every file and the report written under their
    final names, the test split scored on the images read, the broken files listed at the end,
    in report.json, report.md and failures.csv; exit 1."""
    run, broken, test_stems = dicom_run(tmp_path)
    out = tmp_path / "tflite"
    status = export_cli.main([str(run), "--output", str(out), "--kinds", "int8", "--qat-epochs", "0", "--qat-retries", "0", "--calibration-images", "8",
                              "--verbose", "0", "--force"])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert sorted(os.listdir(out)) == ["failures.csv", "litenext_int8.json", "litenext_int8.tflite", "litenext_labels.txt",
                                       "litenext_qat.keras", "report.json", "report.md"]
    assert sorted(os.path.basename(r["item"]) for r in failures_csv(out)) == sorted(broken)
    assert {r["stage"] for r in failures_csv(out)} == {"read"} and all(r["reason"] for r in failures_csv(out))
    report = json.loads((out / "report.json").read_text())
    assert {os.path.basename(f["item"]): f["split"] for f in report["failures"]} == {broken[0]: "test", broken[1]: "train"}
    scored = len(test_stems) - 1  # the test split less its broken file
    assert report["splits"]["test"] == scored and report["test_images"] == {"scored": scored, "failed_to_read": 1}
    assert len(report["files"][0]["test"]["per_image"]["dice"]) == scored
    markdown = (out / "report.md").read_text()
    assert all(name in markdown for name in broken) and f"{scored} test images scored, 1 test file could not be read" in markdown
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert sorted(os.path.basename(line.split()[1]) for line in failed) == sorted(broken)
    assert "Traceback" not in captured.err + captured.out


def test_export_exit_status_with_failures(monkeypatch, tmp_path, capsys):
    """Failures: exit 1, or 0 with --skip-bad (it is passed on); a failed gate still exits 3."""
    from keras_litenext import export as E

    failure = {"item": "images/a.dcm", "stage": "read", "reason": "is truncated"}
    report = {"output": str(tmp_path), "files": [], "failures": [failure], "gate": {"passed": True, "message": "fine"}}
    seen = {}
    monkeypatch.setattr(E, "export_run", lambda *a, **k: seen.update(k) or report)
    assert export_cli.main([str(tmp_path)]) == 1 and seen["skip_bad"] is False
    assert "failed: images/a.dcm (read): is truncated" in capsys.readouterr().err
    assert export_cli.main([str(tmp_path), "--skip-bad"]) == 0 and seen["skip_bad"] is True
    report["gate"] = {"passed": False, "message": "drop of 10.00 points"}
    assert export_cli.main([str(tmp_path)]) == 3
    assert export_cli.main([str(tmp_path), "--force"]) == 1


def png_dataset(root, n=8, bad=("img3",)):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask = blobs(rng)
        cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask)
        if f"img{i}" in bad:
            (root / "images" / f"img{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
        else:
            cv2.imwrite(str(root / "images" / f"img{i}.png"), image)
    return root


def test_evaluate_scores_every_readable_pair_and_lists_the_rest(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model_path = tmp_path / "m.keras"
    keras_litenext.LiteNeXt(input_shape=(32, 32, 3), width=4).save(model_path)
    data = png_dataset(tmp_path / "data", bad=("img3", "img6"))
    report = tmp_path / "eval" / "e.json"
    report.parent.mkdir()
    assert evaluate_cli.main([str(model_path), "--data", str(data), "--json", str(report), "--quiet"]) == 1
    captured = capsys.readouterr()
    result = json.loads(report.read_text())
    assert len(result["per_image"]["dice"]) == 6
    assert sorted(os.path.basename(f["item"]) for f in result["failures"]) == ["img3.png", "img6.png"]
    assert {f["stage"] for f in result["failures"]} == {"read"}
    assert sorted(os.path.basename(r["item"]) for r in failures_csv(report.parent)) == ["img3.png", "img6.png"]
    assert "img3.png" in captured.err and "img6.png" in captured.err and "Traceback" not in captured.err
    # --skip-bad asks for the skip: the same scores, exit 0
    assert evaluate_cli.main([str(model_path), "--data", str(data), "--skip-bad", "--quiet"]) == 0
    # at native resolution too (the per-image loop)
    native = tmp_path / "eval" / "native.json"
    assert evaluate_cli.main([str(model_path), "--data", str(data), "--mode", "tile", "--json", str(native), "--quiet"]) == 1
    assert len(json.loads(native.read_text())["per_image"]["dice"]) == 6


def resampled_volume(seed):
    """nibabel's anatomical.nii resampled (zoomed, float32) with NaN outside its field of view, and
    its label volume."""
    anat = nib.load(os.path.join(nibabel.testing.data_path, "anatomical.nii"))
    volume = ndimage.zoom(np.asanyarray(anat.dataobj).astype(np.float32), (1.0, 0.8, 0.5), order=1)[:32, :32]
    volume = np.roll(volume, seed, axis=0)
    labels = (volume > np.percentile(volume, 70)).astype(np.uint8)
    volume[:3] = np.nan  # the border a resampling leaves outside the field of view
    return volume, labels, anat.affine


def test_nonfinite_volume_trains_and_predicts_with_one_note_and_nan_labels_are_named(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(3):
        volume, labels, affine = resampled_volume(k)
        nib.save(nib.Nifti1Image(volume, affine), root / "images" / f"vol{k}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), root / "masks" / f"vol{k}.nii.gz")
    nan_count = int(np.isnan(volume).sum())
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model_kwargs": {"width": 4}}))
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=rf"vol2.nii.gz: {nan_count} NaN or infinite value"):
        assert fit_cli.main(["--data", str(root), "--output", str(run), "--epochs", "1", "--image-size", "32", "--batch-size", "4",
                             "--channels", "1", "--quiet", "--mwl-kernel", "3", "--config", str(config)]) == 0
    assert json.loads((run / "config.json").read_text())["nonfinite"] == "minimum"
    out = tmp_path / "pred"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert predict_cli.main([str(run), str(root / "images" / "vol2.nii.gz"), "--output", str(out), "--quiet"]) == 0
    notes = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert len(notes) == 1 and f"{nan_count} NaN or infinite value" in notes[0]
    assert nib.load(out / "vol2_labels.nii.gz").shape == volume.shape
    # --nonfinite error refuses the image volume: a failure of that file, exit 1
    assert predict_cli.main([str(run), str(root / "images" / "vol2.nii.gz"), "--output", str(tmp_path / "p2"), "--quiet",
                             "--nonfinite", "error"]) == 1
    assert "NaN" in failures_csv(tmp_path / "p2")[0]["reason"]
    # a label volume with NaN is an error naming the file
    bad = np.where(labels > 0, np.nan, 0).astype(np.float32)
    nib.save(nib.Nifti1Image(bad, affine), root / "masks" / "vol1.nii.gz")
    capsys.readouterr()
    assert fit_cli.main(["--data", str(root), "--output", str(tmp_path / "run2"), "--epochs", "1", "--image-size", "32",
                         "--channels", "1", "--quiet", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "vol1.nii.gz" in err and "NaN" in err
