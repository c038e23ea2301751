"""Medical images as they come: the intensity recipe, DICOM and NIfTI datasets written from the
bundled PNGs with pydicom / nibabel, labels back in the input's geometry, physical units, and
every inference mode on images of other sizes than the training size against NumPy."""

import json
import os
import pathlib

import cv2
import keras
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from scipy import ndimage

from keras_litenext import data as data_lib
from keras_litenext import inference
from keras_litenext.data import decode
from keras_litenext.data import medical as medical_io
from keras_litenext.data.intensity import Intensity, IntensityError, to_float
from keras_litenext.metrics import (
    average_surface_distance,
    hausdorff95,
    per_image_scores,
    volumes,
)

SAMPLE = data_lib.sample_data_dir()


def sample_pngs(n, size=None):
    """`(grey uint8 images, binary uint8 masks, stems)` of the first `n` bundled pairs."""
    pairs = data_lib.find_pairs(SAMPLE)[:n]
    images, masks, stems, _ = data_lib.load_pairs(pairs, size or 96, channels=1)
    return images[..., 0], masks[..., 0], stems


def write_dicom(path, pixels, slope=1.0, intercept=0.0, spacing=(0.5, 0.7), photometric="MONOCHROME2", window=None,
                thickness=None, pixel_data=True, transfer_syntax=ExplicitVRLittleEndian, series_uid=None):
    """A real-format CT DICOM: 16-bit unsigned (or 8-bit) stored pixels, one or several frames."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "anon"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10.0, -20.0, 30.0], [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelSpacing = list(spacing)
    if thickness:
        ds.SliceThickness = thickness
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_data:
        ds.PixelData = pixels.tobytes() if transfer_syntax == ExplicitVRLittleEndian else pydicom.encaps.encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def nifti(path, volume, spacing=(0.8, 0.9, 2.5)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [5.0, -7.0, 11.0]
    img = nib.Nifti1Image(volume, affine)
    img.header.set_zooms(spacing)
    nib.save(img, str(path))
    return path


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------
def test_recipe_round_trips_and_refuses_bad_settings_in_one_line():
    for text in ("uint8", "window", "window:-1000,400", "percentile", "percentile:1,99", "zscore", "zscore:2.5"):
        recipe = Intensity.parse(text)
        assert Intensity.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
        assert Intensity.parse(str(recipe)) == recipe
    assert Intensity.parse("window:-1000,400").to_dict() == {"kind": "window", "low": -1000.0, "high": 400.0,
                                                            "norm_mean": -1000.0, "norm_std": 1400.0}
    assert Intensity.from_dict(None) == Intensity("uint8")
    for bad in ("bogus", "window:400,-1000", "window:1", "percentile:0,101", "zscore:0", "zscore:a", "uint8:3"):
        with pytest.raises(IntensityError) as err:
            Intensity.parse(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(IntensityError, match="unknown intensity setting"):
        Intensity.from_dict({"kind": "window", "lo": 1})
    with pytest.raises(IntensityError, match="disagree"):
        Intensity.from_dict({"kind": "window", "low": 0, "high": 10, "norm_mean": 1, "norm_std": 10})


def test_recipe_formulas_against_numpy():
    rng = np.random.default_rng(0)
    v = rng.integers(-1200, 2000, (17, 23)).astype(np.int16)
    np.testing.assert_allclose(Intensity.parse("window:-1000,400").map(v), np.clip((v + 1000) / 1400, 0, 1), atol=1e-6)
    lo, hi = np.percentile(v, [2, 98])
    np.testing.assert_allclose(Intensity.parse("percentile:2,98").map(v), np.clip((v - lo) / (hi - lo), 0, 1), atol=1e-6)
    z = (v - v.mean()) / v.std()
    np.testing.assert_allclose(Intensity.parse("zscore:2").map(v), (np.clip(z, -2, 2) + 2) / 4, atol=1e-6)
    np.testing.assert_allclose(Intensity("window").map(v, window=(0, 100), invert=True), 1 - np.clip(v / 100, 0, 1), atol=1e-6)
    with pytest.raises(IntensityError, match="no window"):
        Intensity("window").map(v)
    with pytest.raises(IntensityError, match="8-bit recipe cannot map"):
        Intensity().map(v)
    # the 8-bit recipe is exactly the pipeline before recipes, 16-bit files included
    p16 = rng.integers(0, 65536, (9, 9)).astype(np.uint16)
    assert np.array_equal(Intensity().to_array(p16), decode.to_uint8(p16))
    assert Intensity().to_array(p16).dtype == np.uint8 and Intensity("zscore").to_array(p16).dtype == np.uint16
    assert to_float(np.array([65535], np.uint16))[0] == 1.0 and to_float(np.array([255], np.uint8))[0] == 1.0


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------
def dicom_dataset(root, n=8, frames=False):
    """images/*.dcm (16-bit stored s = 4 * p + 1000, slope 0.25, intercept -250, so the values
    are the PNG's p) and masks/*.png; with `frames`, one multi-frame DICOM and a NIfTI label."""
    images, masks, stems = sample_pngs(n)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = images.astype(np.uint16) * 4 + 1000
    if frames:
        write_dicom(root / "images" / "cine.dcm", stored, slope=0.25, intercept=-250.0, thickness=3.0)
        nifti(root / "masks" / "cine.nii.gz", np.moveaxis(masks, 0, 2).astype(np.uint8))
        return root, images, masks, stems
    for s, m, stem in zip(stored, masks, stems):
        write_dicom(root / "images" / f"{stem}.dcm", s, slope=0.25, intercept=-250.0)
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), m * 255)
    return root, images, masks, stems


def test_dicom_round_trip_reproduces_the_png_pipeline(tmp_path):
    root, images, _, stems = dicom_dataset(tmp_path / "dcm")
    recipe = Intensity.parse("window:0,255")  # the rescaled values are the PNG's 0..255
    x, y, got_stems, report = data_lib.load_pairs(data_lib.find_pairs(root), 64, channels=1, intensity=recipe)
    png_x, png_y, png_stems, _ = data_lib.load_pairs(data_lib.find_pairs(SAMPLE)[: len(stems)], 64, channels=1)
    assert got_stems == png_stems == stems and x.dtype == np.uint16
    np.testing.assert_allclose(to_float(x), to_float(png_x), atol=1.5 / 255)  # resize of uint16 vs uint8 values
    native = data_lib.load_pairs(data_lib.find_pairs(root), None, channels=1, intensity=recipe)[0]
    np.testing.assert_allclose(to_float(np.stack(native))[..., 0], images / 255.0, atol=1e-6)  # same size: exact
    assert np.array_equal(y, png_y)
    # the spacing travels, scaled by the resize from 96 to 64
    assert report["spacing"][stems[0]] == pytest.approx([0.5 * 96 / 64, 0.7 * 96 / 64, None])


def test_16_bit_dicom_reaches_the_model_with_more_than_256_levels(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = (rng.random((40, 40)) * 4000).astype(np.uint16)  # 12-bit CT-like values
    write_dicom(tmp_path / "images" / "a.dcm", image, slope=1.0, intercept=-1024.0)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), (image > 2000).astype(np.uint8) * 255)
    for recipe in ("percentile", "window:-1024,2976", "zscore"):
        x, y, _, _ = data_lib.load_pairs(data_lib.find_pairs(tmp_path), 40, channels=1, intensity=Intensity.parse(recipe))
        batch = next(iter(data_lib.make_dataset(x, y, 1)))[0].numpy()
        assert batch.dtype == np.float32 and 0.0 <= batch.min() and batch.max() <= 1.0
        assert len(np.unique(batch)) > 256, recipe
    x8 = data_lib.load_pairs(data_lib.find_pairs(tmp_path), 40, channels=1, intensity=Intensity.parse("window:-1024,2976"))[0]
    np.testing.assert_allclose(to_float(x8)[0, ..., 0], np.clip(image / 4000.0, 0, 1), atol=1e-5)
    # the same values in a 16-bit PNG: the percentile stretch does not see the DICOM's intercept
    png = tmp_path / "png"
    (png / "images").mkdir(parents=True)
    (png / "masks").mkdir()
    cv2.imwrite(str(png / "images" / "a.png"), image)
    cv2.imwrite(str(png / "masks" / "a.png"), (image > 2000).astype(np.uint8) * 255)
    recipe = Intensity("percentile")
    from_png = data_lib.load_pairs(data_lib.find_pairs(png), 40, channels=3, intensity=recipe)[0]
    from_dicom = data_lib.load_pairs(data_lib.find_pairs(tmp_path), 40, channels=3, intensity=recipe)[0]
    assert from_png.dtype == np.uint16 and np.abs(from_png.astype(int) - from_dicom.astype(int)).max() <= 1
    assert len(np.unique(from_png)) > 256


def test_dicom_monochrome1_own_window_and_multiframe(tmp_path):
    root, images, masks, _ = dicom_dataset(tmp_path / "mf", n=5, frames=True)
    x, y, got, report = data_lib.load_pairs(data_lib.find_pairs(root), None, channels=1, intensity=Intensity.parse("window:0,255"))
    assert got == [f"cine#{i:03d}" for i in range(5)]
    np.testing.assert_allclose(to_float(np.stack(x))[..., 0], images / 255.0, atol=1e-6)
    assert np.array_equal(np.stack(y)[..., 0], masks)
    assert report["spacing"]["cine#000"] == pytest.approx([0.5, 0.7, 3.0])
    one = tmp_path / "m1"
    (one / "images").mkdir(parents=True)
    (one / "masks").mkdir()
    write_dicom(one / "images" / "a.dcm", images[0].astype(np.uint16), photometric="MONOCHROME1", window=(100.0, 200.0))
    cv2.imwrite(str(one / "masks" / "a.png"), masks[0] * 255)
    x = data_lib.load_pairs(data_lib.find_pairs(one), None, channels=3, intensity=Intensity("window"))[0][0]
    expected = 1.0 - np.clip((images[0] - 0.0) / 200.0, 0, 1)  # own window 0..200, then inverted
    assert x.shape == (96, 96, 3)
    np.testing.assert_allclose(to_float(x)[..., 1], expected, atol=1e-5)


def test_bad_dicom_and_nifti_files_are_one_line_each(tmp_path, caplog):
    images, masks, _ = sample_pngs(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_dicom(tmp_path / "images" / "nopix.dcm", images[0], pixel_data=False)
    write_dicom(tmp_path / "images" / "jp2.dcm", images[0], transfer_syntax=JPEG2000Lossless)
    (tmp_path / "images" / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    nifti(tmp_path / "images" / "vol.nii.gz", np.zeros((96, 96, 4), np.int16))
    nifti(tmp_path / "masks" / "vol.nii.gz", np.zeros((96, 90, 4), np.uint8))
    write_dicom(tmp_path / "images" / "hu.dcm", images[0].astype(np.uint16), intercept=-1024.0)
    for stem in ("nopix", "jp2", "junk", "hu"):
        cv2.imwrite(str(tmp_path / "masks" / f"{stem}.png"), masks[0] * 255)
    with pytest.raises(data_lib.DatasetError) as err:
        data_lib.load_pairs(data_lib.find_pairs(tmp_path), 32, channels=1)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("5 of 5 pairs")
    text = "\n".join(lines[1:])
    assert "images/nopix.dcm: has no pixel data" in text
    assert "images/jp2.dcm: compressed with JPEG 2000 Image Compression (Lossless Only)" in text
    assert "images/junk.dcm: is not a DICOM file" in text
    assert "images/vol.nii.gz: has 4 slice(s) of 96x96 (WxH) but its label file vol.nii.gz has 4 of 90x96" in text
    assert "images/hu.dcm: has float64 values -" in text and "8-bit recipe cannot map" in text
    assert len(lines) == 6 and "Traceback" not in text
    assert not [r for r in caplog.records if r.levelno >= 30], "a library logged a warning or traceback"


# ----------------------------------------------------------------------------------------------
# NIfTI
# ----------------------------------------------------------------------------------------------
def nifti_dataset(root, volumes=3, depth=6):
    """images/volK.nii.gz (int16 "HU" = 8 * p - 1000) and masks/volK.nii.gz, slices along axis 2;
    the first two slices of each label volume are empty."""
    images, masks, _ = sample_pngs(volumes * depth)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(volumes):
        img = images[k * depth : (k + 1) * depth].astype(np.int16) * 8 - 1000
        lab = masks[k * depth : (k + 1) * depth].copy()
        lab[:2] = 0
        nifti(root / "images" / f"vol{k}.nii.gz", np.moveaxis(img, 0, 2))
        nifti(root / "masks" / f"vol{k}.nii.gz", np.moveaxis(lab, 0, 2).astype(np.float32))  # float labels, as often
    return root, images, masks


def test_nifti_slices_spacing_thinning_and_split_by_volume(tmp_path):
    root, images, _ = nifti_dataset(tmp_path / "nii")
    recipe = Intensity.parse("window:-1000,1040")
    x, _, stems, report = data_lib.load_pairs(data_lib.find_pairs(root), None, channels=1, intensity=recipe)
    assert len(stems) == 18 and stems[:2] == ["vol0#000", "vol0#001"]
    np.testing.assert_allclose(to_float(np.stack(x))[..., 0], images / 255.0, atol=1e-5)
    assert report["spacing"]["vol1#003"] == pytest.approx([0.8, 0.9, 2.5])
    _, _, kept, _ = data_lib.load_pairs(data_lib.find_pairs(root), 32, channels=1, intensity=recipe, empty_slices=0.5)
    assert len(kept) == 3 * 5 and "vol0#000" in kept and "vol0#001" not in kept  # 1 of the 2 empty slices kept
    splits = data_lib.split_stems(stems, (0.34, 0.33, 0.33), seed=1)
    for part in splits.values():
        assert len(part) == 6 and len({s.split("#")[0] for s in part}) == 1  # whole volumes
    # the other axis: slices of 96 x 6
    _, _, side, rep = data_lib.load_pairs(data_lib.find_pairs(root), None, channels=1, intensity=recipe, slice_axis=0)
    assert len(side) == 3 * 96 and rep["spacing"][side[0]] == pytest.approx([0.9, 2.5, 0.8])


def test_volumes_and_areas_in_physical_units():
    labels = np.zeros((2, 10, 10, 1), np.uint8)
    labels[0, 2:6, 2:7] = 1  # 20 pixels
    labels[1, 0:3, 0:3] = 1  # 9 pixels
    logits = np.where(labels > 0, 5.0, -5.0).astype(np.float32)
    scores = per_image_scores(labels, logits, spacing=[(0.5, 2.0), (1.0, 1.0)], areas=True, surface=True)
    assert scores["area_true"].tolist() == [20.0, 9.0] and scores["area_pred"].tolist() == [20.0, 9.0]
    assert scores["assd"].tolist() == [0.0, 0.0] and scores["hd95"].tolist() == [0.0, 0.0]
    three = np.zeros((1, 10, 10, 1), np.uint8)
    three[0, :2] = 1
    three[0, 5:] = 2  # 20 pixels of class 1, 50 of class 2
    onehot = np.eye(3, dtype=np.float32)[three[..., 0]] * 10
    multi = per_image_scores(three, onehot, spacing=(0.5, 0.5), areas=True, surface=True, class_names=["bg", "a", "b"])
    assert multi["area_true_a"].tolist() == [5.0] and multi["area_pred_b"].tolist() == [12.5]
    assert multi["assd_a"].tolist() == [0.0] and multi["assd"].tolist() == [0.0]
    vols = volumes(["v#000", "v#001", "flat"], scores, {"v#000": 2.0, "v#001": 2.0})
    assert vols == {"v": {"slices": 2, "true_ml": pytest.approx(58e-3), "pred_ml": pytest.approx(58e-3)}}
    # HD95 / ASSD in mm of an anisotropic grid, against SciPy's transform computed here
    truth = np.zeros((30, 30), bool)
    truth[5:20, 5:15] = True
    pred = np.roll(truth, 3, axis=1)
    dist_to_true = ndimage.distance_transform_edt(~(truth & ~ndimage.binary_erosion(truth, np.ones((3, 3)), border_value=0)),
                                                  sampling=(0.5, 2.0))
    surface_pred = pred & ~ndimage.binary_erosion(pred, np.ones((3, 3)), border_value=0)
    surface_true = truth & ~ndimage.binary_erosion(truth, np.ones((3, 3)), border_value=0)
    dist_to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=(0.5, 2.0))
    a, b = dist_to_true[surface_pred], dist_to_pred[surface_true]
    assert hausdorff95(truth, pred, (0.5, 2.0)) == pytest.approx(max(np.percentile(a, 95), np.percentile(b, 95)))
    assert average_surface_distance(truth, pred, (0.5, 2.0)) == pytest.approx(np.concatenate([a, b]).mean())


# ----------------------------------------------------------------------------------------------
# Inference modes on other sizes, against an independent NumPy computation
# ----------------------------------------------------------------------------------------------
KERNEL = np.random.default_rng(3).normal(0, 1, (5, 5)).astype(np.float32)
BIAS = 0.1


@pytest.fixture(scope="module")
def conv_model():
    """One 5x5 convolution ('same', zero padding) at a 16x16 training size: its output near a
    window's border depends on the window, so every mode gives a different, computable map."""
    inputs = keras.Input((16, 16, 1))
    layer = keras.layers.Conv2D(1, 5, padding="same")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([KERNEL[:, :, None, None], np.array([BIAS], np.float32)])
    return model


def np_model(x):
    """The model in NumPy: zero-padded cross-correlation, bias, sigmoid."""
    return 1.0 / (1.0 + np.exp(-(ndimage.correlate(x.astype(np.float64), KERNEL, mode="constant") + BIAS)))


def np_windows(x, starts_y, starts_x, weight):
    acc, norm = np.zeros_like(x, np.float64), np.zeros_like(x, np.float64)
    for y0 in starts_y:
        for x0 in starts_x:
            acc[y0 : y0 + 16, x0 : x0 + 16] += weight * np_model(x[y0 : y0 + 16, x0 : x0 + 16])
            norm[y0 : y0 + 16, x0 : x0 + 16] += weight
    return acc / norm


def np_reference(x, mode, overlap=0.5):
    h, w = x.shape
    if mode == "resize":
        small = cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA if h * w > 256 else cv2.INTER_LINEAR)
        return cv2.resize(np_model(small).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if mode == "pad":  # reflect to the multiple (4 here), whole image
        ph, pw = -(-h // 4) * 4, -(-w // 4) * 4
        return np_model(np.pad(x, ((0, ph - h), (0, pw - w)), mode="reflect"))[:h, :w]
    padded = np.pad(x, ((0, max(0, 16 - h)), (0, max(0, 16 - w))), mode="reflect")
    ph, pw = padded.shape
    if mode == "tile":  # half-window stride, the last window flush with the border, plain mean
        def starts(n):
            s = list(range(0, n - 16 + 1, 8))
            return s if s[-1] == n - 16 else s + [n - 16]
        return np_windows(padded, starts(ph), starts(pw), 1.0)[:h, :w]
    # gaussian: nnU-Net's steps, sigma = 16 / 8 = 2 around the window centre 7.5
    def steps(n):
        if n <= 16:
            return [0]
        k = int(np.ceil((n - 16) / (16 * (1 - overlap)))) + 1
        return [round(i * (n - 16) / (k - 1)) for i in range(k)]
    g = np.exp(-0.5 * ((np.arange(16) - 7.5) / 2.0) ** 2)
    return np_windows(padded, steps(ph), steps(pw), np.outer(g, g) / g.max() ** 2)[:h, :w]


@pytest.mark.parametrize("shape", [(37, 53), (16, 40), (11, 13)])
@pytest.mark.parametrize("mode", inference.MODES)
def test_every_inference_mode_on_other_sizes_against_numpy(conv_model, mode, shape):
    x = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    got = inference.predict_image(conv_model, x[..., None], mode=mode, multiple=4)[..., 0]
    assert got.shape == shape
    np.testing.assert_allclose(got, np_reference(x, mode), atol=2e-5)
    if mode in ("tile", "gaussian") and shape == (37, 53):  # the modes really differ
        assert np.abs(got - np_reference(x, "tile" if mode == "gaussian" else "gaussian")).max() > 1e-3
    flips = [np.flip(np_reference(np.flip(x, axes).copy(), mode), axes) if axes else np_reference(x, mode)
             for axes in ((), (1,), (0,), (0, 1))]
    tta = inference.predict_image(conv_model, x[..., None], mode=mode, multiple=4, tta=True)[..., 0]
    np.testing.assert_allclose(tta, np.mean(flips, axis=0), atol=2e-5)


def test_gaussian_overlap_and_weights(conv_model):
    assert inference.window_starts(53, 16, 0.5) == [0, 7, 15, 22, 30, 37]
    assert inference.window_starts(53, 16, 0.0) == [0, 12, 25, 37]
    w = inference.gaussian_importance(16, 16)
    assert w.max() == pytest.approx(1.0) and w[0, 0] == pytest.approx((np.exp(-0.5 * (7.5 / 2) ** 2) / np.exp(-0.5 * (0.5 / 2) ** 2)) ** 2, rel=1e-5)
    x = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    got = inference.predict_image(conv_model, x[..., None], mode="gaussian", overlap=0.25)[..., 0]
    np.testing.assert_allclose(got, np_reference(x, "gaussian", overlap=0.25), atol=2e-5)
    with pytest.raises(ValueError, match="overlap"):
        inference.predict_image(conv_model, x[..., None], mode="gaussian", overlap=1.0)


# ----------------------------------------------------------------------------------------------
# End to end: fit on DICOM and NIfTI, evaluate, predict back into the same format and geometry
# ----------------------------------------------------------------------------------------------
def _cli(name):
    from importlib.machinery import SourceFileLoader

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return SourceFileLoader(name, os.path.join(root, "training", f"{name}.py")).load_module()


def test_fit_evaluate_predict_on_dicom_files_and_nifti_volumes(tmp_path):
    """One folder holding both formats (one training, to keep the suite fast): 8 DICOM files with
    PNG masks and 3 NIfTI image/label volumes of 4 slices, values 0..255 in both."""
    root, _, _, stems = dicom_dataset(tmp_path / "data", n=8)
    images, masks, _ = sample_pngs(20)
    for k in range(3):
        nifti(root / "images" / f"vol{k}.nii.gz", np.moveaxis(images[8 + 4 * k : 12 + 4 * k].astype(np.int16), 0, 2))
        nifti(root / "masks" / f"vol{k}.nii.gz", np.moveaxis(masks[8 + 4 * k : 12 + 4 * k], 0, 2).astype(np.uint8))
    run = tmp_path / "run"
    assert _cli("fit").main(["--data", str(root), "--output", str(run), "--epochs", "1", "--image-size", "32", "--batch-size", "4",
                             "--channels", "1", "--intensity", "window:-20,300", "--quiet", "--mwl-kernel", "3",
                             "--config", str(_tiny_config(tmp_path))]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["intensity"] == {"kind": "window", "low": -20.0, "high": 300.0, "norm_mean": -20.0, "norm_std": 320.0}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["units"].startswith("mm") and "assd" in metrics and "area_true" in metrics
    splits = {k: v for k, v in json.loads((run / "splits.json").read_text()).items() if k in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 8 + 12
    for part in splits.values():  # the slices of a volume are in one split
        assert not {s.split("#")[0] for s in part} & {s.split("#")[0] for p in splits.values() if p is not part for s in p}
    assert _cli("evaluate").main([str(run), "--split", "all", "--mode", "gaussian", "--tta", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["units"].startswith("mm") and result["tta"] and result["images"] == 20
    assert "area_true" in result and "assd" in result and sorted(result["volumes"]) == ["vol0", "vol1", "vol2"]
    vol = result["volumes"]["vol1"]
    assert vol["slices"] == 4 and vol["true_ml"] == pytest.approx(masks[12:16].sum() * 0.8 * 0.9 * 2.5 / 1000, rel=1e-6)
    # predict back: a DICOM label file with the source's geometry, a NIfTI volume with its affine
    out = tmp_path / "pred"
    src = root / "images" / f"{stems[0]}.dcm"
    assert _cli("predict").main([str(run), str(src), "--output", str(out), "--mode", "gaussian"]) == 0
    labels, source = pydicom.dcmread(out / f"{stems[0]}_labels.dcm"), pydicom.dcmread(src)
    assert labels.pixel_array.shape == (96, 96) and set(np.unique(labels.pixel_array)) <= {0, 1}
    for tag in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID", "StudyInstanceUID"):
        assert labels.get(tag) == source.get(tag), tag
    assert labels.SOPInstanceUID != source.SOPInstanceUID and "RescaleSlope" not in labels
    src = root / "images" / "vol1.nii.gz"
    assert _cli("predict").main([str(run), str(src), "--output", str(out), "--mode", "tile", "--tta"]) == 0
    labels, source = nib.load(out / "vol1_labels.nii.gz"), nib.load(src)
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
    assert labels.header.get_zooms() == source.header.get_zooms() and labels.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(labels.dataobj))) <= {0, 1}
    # the export contract and the metadata state the recipe, with the formula an app applies
    from keras_litenext.export import io_contract
    from keras_litenext.litert import convert, write_bytes
    from keras_litenext.runs import Run

    opened = Run.open(run)
    path = str(tmp_path / "m.tflite")
    write_bytes(path, convert(opened.load_model(), "fp32"))
    contract = io_contract(path, "m", "fp32", opened.config, {"data": str(root)}, opened.task)
    assert contract["input"]["intensity"]["kind"] == "window" and not contract["input"]["intensity"]["per_image"]
    assert "x = clip((v - (-20)) / 320, 0, 1)" in contract["input"]["preprocess"]
    assert contract["metadata"]["normalization"] == {"mean": [-20.0], "std": [320.0]}


def _tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model_kwargs": {"width": 8}}))
    return path


def test_medical_data_defaults_to_a_percentile_stretch(tmp_path):
    from keras_litenext.data.intensity import default_for

    root, _, _ = nifti_dataset(tmp_path / "nii", volumes=1, depth=2)
    assert default_for(root) == Intensity("percentile") and default_for(SAMPLE) == Intensity("uint8")


def test_recipe_storage_feeds_calibration_conversion_and_tflite_as_floats():
    """uint16 images (a recipe's) reach int8 calibration, the TFLite representative set and the
    TFLite runner as x = v / 65535, like make_dataset gives them to training."""
    from keras_litenext.litert import representative_dataset
    from keras_litenext.quantization.calibration import _image_batches

    x = np.random.default_rng(0).integers(0, 65536, (3, 8, 8, 1)).astype(np.uint16)
    expected = x.astype(np.float32) / 65535.0
    np.testing.assert_allclose(np.concatenate(list(_image_batches(x, batch_size=2))), expected, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([b[0] for b in representative_dataset(x)()]), expected, rtol=1e-6)
    batch = next(iter(data_lib.make_dataset(x, np.zeros((3, 8, 8, 1), np.uint8), 3)))[0].numpy()
    np.testing.assert_allclose(batch, expected, rtol=1e-6)


def test_labels_written_back_fit_multiframe_dicom_and_any_slice_axis(tmp_path):
    images, _, _ = sample_pngs(5)
    src = write_dicom(tmp_path / "cine.dcm", images.astype(np.uint16), thickness=3.0, series_uid="1.2.3")
    labels = (images > 100).astype(np.uint8) * np.arange(5, dtype=np.uint8)[:, None, None] % 3
    out = medical_io.write_labels(src, labels, medical_io.label_path(src, str(tmp_path / "out")), series_uid="1.2.3.4")
    ds = pydicom.dcmread(out)
    assert out.endswith("cine_labels.dcm") and int(ds.NumberOfFrames) == 5 and ds.SeriesInstanceUID == "1.2.3.4"
    assert np.array_equal(ds.pixel_array, labels) and ds.SliceThickness == 3.0
    shared = {}
    uids = {medical_io.write_labels(write_dicom(tmp_path / f"s{i}.dcm", images[i].astype(np.uint16), series_uid="9.9"),
                                    labels[i][None], str(tmp_path / f"s{i}_labels.dcm"), series_uid=shared) for i in range(2)}
    assert len({pydicom.dcmread(u).SeriesInstanceUID for u in uids}) == 1 and list(shared) == ["9.9"]
    volume = np.random.default_rng(0).integers(0, 100, (7, 9, 11)).astype(np.int16)
    src = nifti(tmp_path / "v.nii", volume)
    slices = medical_io.read_slices(src, slice_axis=0)
    assert len(slices) == 7 and slices.spacing == pytest.approx((0.9, 2.5)) and slices.thickness == pytest.approx(0.8)
    labels = (slices.array > 50).astype(np.uint8)
    out = medical_io.write_labels(src, labels, medical_io.label_path(src, str(tmp_path / "out")), slice_axis=0)
    back = nib.load(out)
    assert out.endswith("v_labels.nii") and np.array_equal(np.asanyarray(back.dataobj), (volume > 50).astype(np.uint8))
    assert np.allclose(back.affine, nib.load(src).affine)


def test_dicom_files_known_by_content_whatever_their_name(tmp_path):
    """PACS exports: no extension (IM0001) or a UID as the name; each is its own stem."""
    root, images, _, stems = dicom_dataset(tmp_path / "dcm", n=3)
    names = ["IM0001", "1.2.840.10008.5", "1.2.840.10008.6"]
    for stem, name in zip(stems, names):
        os.rename(root / "images" / f"{stem}.dcm", root / "images" / name)
        os.rename(root / "masks" / f"{stem}.png", root / "masks" / f"{name}.png")
    (root / "images" / "notes").write_text("not an image")  # no extension, not a DICOM: not a pair
    recipe = Intensity.parse("window:0,255")
    x, _, got, _ = data_lib.load_pairs(data_lib.find_pairs(root), None, channels=1, intensity=recipe)
    assert got == sorted(names)
    by_name = dict(zip(got, x))
    for name, image in zip(names, images):
        np.testing.assert_allclose(to_float(by_name[name])[..., 0], image / 255.0, atol=1e-6)
    assert medical_io.is_medical(root / "images" / "IM0001") and not medical_io.is_medical(root / "images" / "notes")
    labels = {medical_io.label_path(root / "images" / n, "out") for n in names}
    assert labels == {os.path.join("out", f"{n}_labels.dcm") for n in names}


# ----------------------------------------------------------------------------------------------
# Real files as pydicom and nibabel ship them
# ----------------------------------------------------------------------------------------------
def shipped_dicoms():
    """Every DICOM pydicom ships in its package (the local folder: `get_testdata_files` would also
    try to download its optional external data)."""
    import glob

    return sorted(glob.glob(os.path.join(os.path.dirname(pydicom.data.get_testdata_file("MR_small.dcm")), "*.dcm")))


def raw_dataset(path, source="MR_small.dcm"):
    """A shipped DICOM written without the 128-byte preamble, ``DICM`` and file meta (old archives)."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(source))
    del ds.preamble
    ds.file_meta = FileMetaDataset()
    pydicom.dcmwrite(path, ds, enforce_file_format=False)
    assert not medical_io.has_dicom_preamble(path)
    return path


def test_dicom_without_preamble_or_file_meta_is_read_by_content(tmp_path):
    expected = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).pixel_array
    for name in ("raw.dcm", "IM0002", "1.2.840.113619.2.7"):
        path = raw_dataset(tmp_path / name)
        assert medical_io.is_medical(path) and medical_io.file_stem(path)[0] == ("raw" if name == "raw.dcm" else name)
        slices = medical_io.read_slices(path)
        assert np.array_equal(slices.array[0], expected) and slices.spacing is not None
        out = medical_io.write_labels(path, (slices.array > 1000).astype(np.uint8), medical_io.label_path(path, str(tmp_path / "out")))
        back = pydicom.dcmread(out)
        assert np.array_equal(back.pixel_array, (expected > 1000).astype(np.uint8)) and back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for junk in (b"not dicom at all" * 20, b"\x08\x00\x05\x00" + bytes(range(256)) * 3):
        (tmp_path / "junk").write_bytes(junk)
        assert not medical_io.is_medical(tmp_path / "junk")
        (tmp_path / "junk.dcm").write_bytes(junk)
        with pytest.raises(medical_io.MedicalError, match="is not a DICOM file"):
            medical_io.read_slices(tmp_path / "junk.dcm")


def test_dicom_errors_say_what_the_file_is(tmp_path):
    from pydicom.pixels import get_decoder

    def reason(path):
        with pytest.raises(medical_io.MedicalError) as err:
            medical_io.read_slices(path)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert reason(pydicom.data.get_testdata_file("rtstruct.dcm")).startswith("has no pixel data (RT Structure Set)")
    assert reason(pydicom.data.get_testdata_file("MR_truncated.dcm")).startswith("is truncated")
    whole = pathlib.Path(pydicom.data.get_testdata_file("MR_small.dcm")).read_bytes()
    for size in (700, 3000):
        (tmp_path / f"cut{size}.dcm").write_bytes(whole[:size])
        assert reason(tmp_path / f"cut{size}.dcm").startswith("is truncated"), size
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    (tmp_path / "images" / "cut.dcm").write_bytes(whole[:3000])
    cv2.imwrite(str(tmp_path / "masks" / "cut.png"), np.zeros((64, 64), np.uint8))
    with pytest.raises(data_lib.DatasetError, match=r"\nimages/cut.dcm: is truncated: its pixel data holds 1500 of the 8192 bytes"):
        data_lib.load_pairs(data_lib.find_pairs(tmp_path), None, channels=1, intensity=Intensity("percentile"))
    jpeg_ls = pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(jpeg_ls).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    text = reason(jpeg_ls)
    assert text.startswith("compressed with JPEG-LS Lossless Image Compression, which needs a decoder: pip install ")
    assert "pylibjpeg-libjpeg" in text and ">=" not in text


def test_labels_written_for_every_transfer_syntax_pydicom_ships(tmp_path):
    """Big and little endian, implicit and explicit VR, deflate, RLE, JPEG: the label file is
    explicit VR little endian with the source's geometry and identifiers, one frame per frame."""
    import warnings

    from pydicom.uid import UID

    written, no_decoder = 0, 0
    for path in shipped_dicoms():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own, on the reference read
            source = pydicom.dcmread(path, force=True)
        if "PixelData" not in source:
            continue
        try:
            slices = medical_io.read_slices(path)
        except medical_io.MedicalError as err:
            no_decoder += "needs a decoder" in str(err)
            continue
        grey = slices.array[..., 0] if slices.rgb else slices.array
        labels = (grey > np.median(grey)).astype(np.uint8) * 2
        out = medical_io.write_labels(path, labels, str(tmp_path / f"{written:02d}_labels.dcm"), series_uid={})
        back = pydicom.dcmread(out)
        name = os.path.basename(path)
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert np.array_equal(back.pixel_array.reshape(labels.shape), labels), name
        assert int(back.get("NumberOfFrames", 1)) == len(slices), name
        for tag in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "PatientName", "SOPClassUID"):
            assert back.get(tag) == source.get(tag), (name, tag)
        assert back.SOPInstanceUID != source.get("SOPInstanceUID") and back.SeriesInstanceUID != source.get("SeriesInstanceUID")
        assert UID(back.file_meta.MediaStorageSOPInstanceUID) == back.SOPInstanceUID
        written += 1
    assert written >= 40, (written, no_decoder)


def test_nonfinite_volume_values_become_background_with_one_note(tmp_path):
    from keras_litenext.notes import Note

    volume = np.random.default_rng(0).normal(100, 20, (32, 32, 3)).astype(np.float32)
    volume[:4] = np.nan  # outside the field of view of a resampled volume
    volume[5, 5, 0], volume[6, 6, 1] = np.inf, -np.inf
    labels = np.zeros((32, 32, 3), np.uint8)
    labels[10:20, 10:20] = 1
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    nifti(tmp_path / "images" / "rs.nii.gz", volume)
    nifti(tmp_path / "masks" / "rs.nii.gz", labels)
    with pytest.warns(Note, match=r"rs.nii.gz: 386 NaN or infinite value\(s\) of 3072 set to .*lowest finite"):
        x, _, stems, _ = data_lib.load_pairs(data_lib.find_pairs(tmp_path), None, channels=1, intensity=Intensity("zscore"))
    finite = volume[np.isfinite(volume)]
    slices = medical_io.read_slices(tmp_path / "images" / "rs.nii.gz")
    assert np.isfinite(slices.array).all() and slices.array[0, 0, 0] == finite.min() and len(stems) == 3
    with pytest.raises(medical_io.MedicalError, match="386 NaN or infinite value"):
        medical_io.read_slices(tmp_path / "images" / "rs.nii.gz", nonfinite="error")
    bad = labels.astype(np.float32)
    bad[0, 0, 0] = np.nan
    nifti(tmp_path / "masks" / "rs.nii.gz", bad)
    with pytest.raises(data_lib.DatasetError, match=r"masks/rs.nii.gz: holds 1 NaN or infinite value"):
        data_lib.load_pairs(data_lib.find_pairs(tmp_path), None, channels=1, intensity=Intensity("zscore"))


def test_warnings_are_one_line_notes_naming_the_file(tmp_path):
    import warnings

    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from keras_litenext.notes import Note

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    ds[0x00281050] = RawDataElement(Tag(0x00281050), "IS", 2, b"1A", 0, False, True)  # WindowCenter, a bad integer
    ds.save_as(tmp_path / "typo.dcm")
    padded = pydicom.data.get_testdata_file("MR_small_padded.dcm")  # excess padding: nothing to do, quiet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        medical_io.read_slices(padded)
        medical_io.read_slices(tmp_path / "typo.dcm")
    assert [w.category for w in caught] == [Note], [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert text.startswith(f"{tmp_path / 'typo.dcm'}: ") and "'1A'" in text and "\n" not in text
    assert warnings.formatwarning(text, Note, "/x/keras_litenext/data/dicom.py", 12) == f"note: {text}\n"
    assert issubclass(Note, UserWarning)
    png = tmp_path / "p.png"
    cv2.imwrite(str(png), np.full((8, 8), 4000, np.uint16))
    with pytest.warns(Note, match="12-bit"):
        data_lib.read_image(png)
