"""Tasks and multi-class data: mask decoding, classes.json, palettes, exact label augmentation."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_litenext import data as D
from keras_litenext.runs import Run, TrainConfig
from keras_litenext.tasks import (
    BinaryTask,
    MaskError,
    MulticlassTask,
    get_task,
    read_classes_json,
    read_palette,
)


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array), path


def _label_map(h, w, seed, k=3):
    """Blocks of classes 1..k-1 on background 0, at seeded places."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for c in range(1, k):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        m[y : y + 6, x : x + 6] = c
    return m


def _multiclass_dataset(root, n=4, h=24, w=28, k=3, dtype=np.uint8, classes=True):
    for i in range(n):
        m = _label_map(h, w, i, k).astype(dtype)
        image = np.dstack([m * 80] * 3).astype(np.uint8)
        _write(root / "images" / f"s{i}.png", image)
        _write(root / "masks" / f"s{i}.png", m)
    if classes:
        names = ["background", "nucleus", "boundary", "other"][:k]
        (root / "classes.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))


def test_get_task_chooses_binary_for_two_classes_and_multiclass_above():
    assert isinstance(get_task(), BinaryTask) and get_task().output_channels == 1
    t = get_task(num_classes=3)
    assert isinstance(t, MulticlassTask) and t.output_channels == 3 and t.activation == "softmax"
    assert t.class_names == ("background", "class1", "class2")
    assert get_task("multiclass", num_classes=2).output_channels == 2  # softmax over two on request
    with pytest.raises(ValueError, match="2 class names .* num_classes=3"):
        get_task(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=">= 2"):
        get_task(num_classes=1)
    with pytest.raises(ValueError, match="differ"):
        get_task(class_names=["bg", "Nucleus", "nucleus"])


def test_multiclass_decode_index_maps_8_and_16_bit_and_rejects_values_out_of_range():
    task = get_task(num_classes=3)
    m = np.array([[0, 1], [2, 2]], np.uint16)
    np.testing.assert_array_equal(task.decode_mask(m), m.astype(np.uint8))
    grey3 = np.dstack([m.astype(np.uint8)] * 3)  # a label map saved as RGB with equal channels
    np.testing.assert_array_equal(task.decode_mask(grey3), m)
    with pytest.raises(MaskError, match=r"value\(s\) 3, 7 outside the 3 classes 0..2 \(values found: 0, 1, 3, 7\)"):
        task.decode_mask(np.array([[0, 1], [3, 7]], np.uint8))
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (0, 0, 255)
    with pytest.raises(MaskError, match="colour image.*palette"):
        task.decode_mask(colour)


def test_palette_maps_colours_exactly_and_names_unknown_colours(tmp_path):
    path = tmp_path / "palette.json"
    path.write_text(json.dumps({"0,0,0": 0, "#ff0000": 1, "0, 255, 0": 2}))
    palette = read_palette(path)
    assert palette == {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2}
    task = get_task(num_classes=3, palette=palette)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 255, 0)
    bgr = rgb[:, :, ::-1].copy()  # OpenCV's order, as files are read
    np.testing.assert_array_equal(task.decode_mask(bgr), [[0, 1, 0], [0, 0, 2]])
    rgb[1, 0] = (9, 8, 7)
    with pytest.raises(MaskError, match=r"not in the palette: \(9,8,7\)"):
        task.decode_mask(rgb[:, :, ::-1].copy())
    with pytest.raises(ValueError, match="outside 0..2"):
        get_task(num_classes=3, palette={(1, 2, 3): 5})
    (tmp_path / "bad.json").write_text('{"red": 1}')
    with pytest.raises(ValueError, match="bad.json: not a palette"):
        read_palette(tmp_path / "bad.json")


def test_classes_json_read_and_validated(tmp_path):
    assert read_classes_json(tmp_path) is None
    (tmp_path / "classes.json").write_text('{"0": "background", "1": "nucleus", "2": "boundary"}')
    assert read_classes_json(tmp_path) == ["background", "nucleus", "boundary"]
    (tmp_path / "classes.json").write_text('{"0": "background", "2": "boundary"}')
    with pytest.raises(ValueError, match="0..K-1"):
        read_classes_json(tmp_path)


def test_load_pairs_multiclass_keeps_indices_through_nearest_resize_and_lists_every_bad_file(tmp_path):
    _multiclass_dataset(tmp_path, n=4)
    task = get_task(class_names=read_classes_json(tmp_path))
    pairs = D.find_pairs(tmp_path)
    images, masks, stems, _ = D.load_pairs(pairs, (48, 56), task=task)
    assert masks.shape == (4, 48, 56, 1) and masks.dtype == np.uint8
    for i in range(4):  # x2 nearest: every label is the source's, duplicated
        src = _label_map(24, 28, i)
        np.testing.assert_array_equal(masks[i, ::2, ::2, 0], src)
    # the binary default refuses a 3-valued mask and points to --num-classes
    with pytest.raises(D.DatasetError, match="3 distinct values.*--num-classes"):
        D.load_pairs(pairs, 24)
    # values >= K in two files: both named, with their values, in one error
    for i in (1, 3):
        bad = _label_map(24, 28, i)
        bad[0, 0] = 5 + i
        _write(tmp_path / "masks" / f"s{i}.png", bad)
    with pytest.raises(D.DatasetError) as err:
        D.load_pairs(D.find_pairs(tmp_path), 24, task=task)
    text = str(err.value)
    assert "2 of 4 pairs" in text
    assert "masks/s1.png: has value(s) 6 outside the 3 classes" in text
    assert "masks/s3.png: has value(s) 8 outside the 3 classes" in text


def test_augmenter_moves_class_labels_exactly_with_the_image():
    """Image = label * 80 in every channel: after any geometry, the image (without photometric
    changes) must still read back as the mask's labels, and no label value is ever invented."""
    maps = np.stack([_label_map(32, 32, s, k=4) for s in range(6)])[..., None]
    images = np.repeat(maps.astype(np.float32) * 80.0 / 255.0, 3, axis=-1)
    augment = D.augmenter(seed=3, brightness=0, contrast=0, blur=0)
    moved = 0
    for _ in range(8):
        image, mask = augment(tf.constant(images), tf.constant(maps.astype(np.float32)))
        image, mask = image.numpy(), mask.numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0, 2.0, 3.0}
        recovered = np.round(image.mean(-1, keepdims=True) * 255.0 / 80.0)
        interior = np.abs(recovered - image.mean(-1, keepdims=True) * 255.0 / 80.0) < 0.05  # away from blended edges
        agreement = (recovered == mask)[interior].mean()
        assert agreement >= 0.99, agreement
        moved += int((mask != maps).any(axis=(1, 2, 3)).sum())
    assert moved >= 0.9 * 8 * len(maps)


def test_make_dataset_keeps_class_indices_unless_binary():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    masks = np.array([[[0, 1, 2, 3]] * 4] * 2, np.uint8)[..., None]
    _, y = next(iter(D.make_dataset(images, masks, 2, binary=False)))
    np.testing.assert_array_equal(y.numpy(), masks.astype(np.float32))
    _, y = next(iter(D.make_dataset(images, masks, 2)))
    np.testing.assert_array_equal(y.numpy(), (masks > 0).astype(np.float32))


def test_run_folder_records_classes_from_classes_json_and_reads_back(tmp_path):
    _multiclass_dataset(tmp_path / "data", n=10)
    config = TrainConfig(data=str(tmp_path / "data"), image_size=32, output=str(tmp_path / "run"))
    task = config.resolve_classes()
    assert task.name == "multiclass" and config.class_names == ["background", "nucleus", "boundary"]
    run = Run.create(config)
    reopened = Run.open(tmp_path / "run")
    assert reopened.task.class_names == ("background", "nucleus", "boundary")
    arrays = reopened.arrays()
    assert sum(len(v[0]) for v in arrays.values()) == 10 and (tmp_path / "run" / "splits.json").exists()
    assert int(arrays["train"][1].max()) == 2
    with pytest.raises(FileExistsError, match="not empty"):
        Run.create(config)
    assert run.path == reopened.path
    bad = TrainConfig(data=str(tmp_path / "data"), num_classes=4)
    with pytest.raises(ValueError, match="--num-classes 4 disagrees with .*classes.json"):
        bad.resolve_classes()
