"""Tests of keras_litenext.data on tiny synthetic datasets."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_litenext import data as D

# ---------------------------------------------------------------------------------- helpers


def _write(path, array, params=()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array, list(params)), path


def _square_mask(h, w, y0, x0, size):
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y0 + size, x0:x0 + size] = 255
    return mask


def _dataset(root, stems, h=16, w=20, image_ext=".png", mask_ext=".png", masks_suffix=""):
    """A folder with one RGB image and one binary mask per stem; returns the masks (0/1)."""
    rng = np.random.default_rng(0)
    out = {}
    for i, stem in enumerate(stems):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = _square_mask(h, w, 2 + i % 5, 3, 6)
        _write(root / "images" / f"{stem}{image_ext}", image)
        _write(root / "masks" / f"{stem}{masks_suffix}{mask_ext}", mask)
        out[stem] = mask // 255
    return out


# ---------------------------------------------------------------------------------- pairing


def test_find_pairs_pairs_by_stem_sorted_and_ignores_other_files(tmp_path):
    _dataset(tmp_path, ["c", "a", "b"], image_ext=".jpg", mask_ext=".png")
    (tmp_path / "images" / "notes.txt").write_text("x")
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"x")
    os.makedirs(tmp_path / "masks" / "0")
    pairs = D.find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["a", "b", "c"]
    assert pairs[0].image == os.path.join(str(tmp_path), "images", "a.jpg")
    assert pairs[0].mask == os.path.join(str(tmp_path), "masks", "a.png")
    assert isinstance(pairs[0], D.Pair)


def test_find_pairs_masks_suffix_and_hint(tmp_path):
    _dataset(tmp_path, ["ISIC_0001", "ISIC_0002"], image_ext=".jpg", masks_suffix="_segmentation")
    pairs = D.find_pairs(tmp_path, masks_suffix="_segmentation")
    assert [p.stem for p in pairs] == ["ISIC_0001", "ISIC_0002"]
    assert pairs[1].mask.endswith("ISIC_0002_segmentation.png")
    with pytest.raises(D.DatasetError) as e:
        D.find_pairs(tmp_path)
    message = str(e.value)
    assert "ISIC_0001.jpg" in message and "ISIC_0001_segmentation.png" in message
    assert "masks_suffix='_segmentation'" in message


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_dir", "does not exist"),
        ("missing_masks", "masks"),
        ("empty_images", "no image files"),
        ("image_without_mask", "lonely.png"),
        ("mask_without_image", "orphan.png"),
        ("duplicate_stem", "a.jpg"),
    ],
)
def test_find_pairs_errors_name_the_problem(tmp_path, case, expected):
    _dataset(tmp_path, ["a", "b"])
    target = tmp_path
    if case == "missing_dir":
        target = tmp_path / "nope"
    elif case == "missing_masks":
        for f in os.listdir(tmp_path / "masks"):
            os.remove(tmp_path / "masks" / f)
        os.rmdir(tmp_path / "masks")
    elif case == "empty_images":
        for f in os.listdir(tmp_path / "images"):
            os.remove(tmp_path / "images" / f)
        (tmp_path / "images" / "readme.txt").write_text("x")
    elif case == "image_without_mask":
        _write(tmp_path / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    elif case == "mask_without_image":
        _write(tmp_path / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    elif case == "duplicate_stem":
        _write(tmp_path / "images" / "a.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(D.DatasetError) as e:
        D.find_pairs(target)
    assert expected in str(e.value)


def test_find_pairs_many_unpaired_lists_first_few_and_count(tmp_path):
    _dataset(tmp_path, ["a"])
    for i in range(12):
        _write(tmp_path / "images" / f"x{i:02d}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(D.DatasetError) as e:
        D.find_pairs(tmp_path)
    message = str(e.value)
    assert message.startswith("12 images")
    assert "x00.png" in message and "x11.png" not in message and "7 more" in message


def test_find_pairs_skip_bad_warns_and_keeps_good(tmp_path):
    _dataset(tmp_path, ["a", "b", "c"])
    _write(tmp_path / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    _write(tmp_path / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    with pytest.warns(UserWarning, match=r"skipping 2 unpaired"):
        pairs = D.find_pairs(tmp_path, skip_bad=True)
    assert [p.stem for p in pairs] == ["a", "b", "c"]


# ---------------------------------------------------------------------------------- formats


RGB = (200, 100, 50)
BGR = RGB[::-1]


@pytest.mark.parametrize(
    "name, array, channels, expected, tol",
    [
        ("rgb.png", np.full((12, 10, 3), BGR, np.uint8), 3, RGB, 0),
        ("rgba.png", np.dstack([np.full((12, 10, 3), BGR, np.uint8), np.zeros((12, 10), np.uint8)]), 3, RGB, 0),
        ("rgb.jpg", np.full((12, 10, 3), BGR, np.uint8), 3, RGB, 4),
        ("rgb.bmp", np.full((12, 10, 3), BGR, np.uint8), 3, RGB, 0),
        ("rgb.tif", np.full((12, 10, 3), BGR, np.uint8), 3, RGB, 0),
        ("rgb16.tiff", np.full((12, 10, 3), np.array(BGR) * 257, np.uint16), 3, RGB, 0),
        ("grey16.tif", np.full((12, 10), 30000, np.uint16), 1, (117,), 0),
        ("grey.png", np.full((12, 10), 77, np.uint8), 3, (77, 77, 77), 0),
        ("grey.jpeg", np.full((12, 10), 77, np.uint8), 1, (77,), 2),
        ("rgb_to_grey.png", np.full((12, 10, 3), BGR, np.uint8), 1, (124,), 1),
        ("rgba_to_grey.png", np.dstack([np.full((12, 10, 3), BGR, np.uint8), np.full((12, 10), 9, np.uint8)]),
         1, (124,), 1),
    ],
)
def test_formats_and_channel_conversion(tmp_path, name, array, channels, expected, tol):
    stem, ext = os.path.splitext(name)
    _write(tmp_path / "images" / name, array)
    _write(tmp_path / "masks" / f"{stem}.png", _square_mask(12, 10, 2, 2, 5))
    images, masks, stems, report = D.load_pairs(D.find_pairs(tmp_path), (12, 10), channels=channels)
    assert images.dtype == np.uint8 and images.shape == (1, 12, 10, channels)
    assert np.abs(images[0].reshape(-1, channels).astype(int) - np.array(expected)).max() <= tol
    assert stems == [stem] and report == {"pairs": 1, "kept": 1, "skipped": []}
    assert masks.shape == (1, 12, 10, 1) and masks.dtype == np.uint8
    assert masks.sum() == 25


@pytest.mark.parametrize(
    "mask, threshold, binary_check, expected_sum",
    [
        (np.dstack([np.zeros((8, 8), np.uint8)] * 2 + [_square_mask(8, 8, 0, 0, 4)]), 0, True, 16),  # red-only RGB mask
        (np.where(_square_mask(8, 8, 0, 0, 4) > 0, 1, 0).astype(np.uint16), 0, True, 16),  # 16-bit 0/1 labels
        (np.where(_square_mask(8, 8, 0, 0, 4) > 0, 250, 3).astype(np.uint8), 127, True, 16),  # 2 values, threshold
        (np.where(_square_mask(8, 8, 0, 0, 4) > 0, 250, 3).astype(np.uint8) + np.eye(8, dtype=np.uint8), 127, True, 16),
        (np.where(_square_mask(8, 8, 0, 0, 4) > 0, 250, 0).astype(np.uint8) + np.eye(8, dtype=np.uint8), 0, False, 20),
    ],
)
def test_mask_reading_and_threshold(tmp_path, mask, threshold, binary_check, expected_sum):
    _write(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "masks" / ("a.tif" if mask.dtype == np.uint16 else "a.png"), mask)
    _, masks, _, _ = D.load_pairs(D.find_pairs(tmp_path), 8, mask_threshold=threshold, binary_check=binary_check)
    assert set(np.unique(masks)) <= {0, 1}
    assert masks.sum() == expected_sum
    assert masks[0, :4, :4].all()


def test_resizing_shrink_enlarge_and_mask_nearest(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = 255
    mask = np.zeros((40, 60), np.uint8)
    mask[:, :30] = 255  # left half
    _write(tmp_path / "images" / "a.png", image)
    _write(tmp_path / "masks" / "a.png", mask)
    pairs = D.find_pairs(tmp_path)
    for size in [(20, 30), (80, 90), 24]:
        images, masks, _, _ = D.load_pairs(pairs, size)
        h, w = (size, size) if isinstance(size, int) else size
        assert images.shape == (1, h, w, 3) and masks.shape == (1, h, w, 1)
        assert set(np.unique(masks)) == {0, 1}
        assert masks[0, :, : w // 2 - 1].all() and not masks[0, :, w // 2 + 1:].any()
        assert images[0, :, : w // 2 - 1].min() == 255 and images[0, :, w // 2 + 1:].max() == 0


def test_jpeg_mask_with_artefacts_is_rejected_with_hint_then_accepted_with_threshold(tmp_path):
    _write(tmp_path / "images" / "a.png", np.zeros((32, 32, 3), np.uint8))
    disc = cv2.circle(np.zeros((32, 32), np.uint8), (16, 16), 9, 255, -1)
    _write(tmp_path / "masks" / "a.jpg", disc, [cv2.IMWRITE_JPEG_QUALITY, 60])
    pairs = D.find_pairs(tmp_path)
    with pytest.raises(D.DatasetError) as e:
        D.load_pairs(pairs, 32)
    assert "masks/a.jpg" in str(e.value) and "distinct values" in str(e.value) and "mask_threshold" in str(e.value)
    _, masks, _, _ = D.load_pairs(pairs, 32, mask_threshold=127)
    assert (masks[0, ..., 0] == (disc > 127)).mean() > 0.98


def test_read_image(tmp_path):
    _write(tmp_path / "a.tif", np.full((5, 7, 3), np.array(BGR) * 257, np.uint16))
    image = D.read_image(tmp_path / "a.tif")
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8 and tuple(image[0, 0]) == RGB
    assert D.read_image(tmp_path / "a.tif", channels=1).shape == (5, 7, 1)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(D.DatasetError, match="bad.png: cannot be decoded"):
        D.read_image(tmp_path / "bad.png")
    with pytest.raises(D.DatasetError, match="missing.png: cannot be read"):
        D.read_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------- bad files


def _truncate(path):
    content = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


BAD_CASES = {
    "truncated_png_image": ("images/b.png", "cannot be decoded"),
    "truncated_jpeg_mask": ("masks/b.jpg", "truncated"),
    "not_an_image": ("images/b.png", "cannot be decoded"),
    "zero_size": ("masks/b.png", "empty"),
    "size_mismatch": ("images/b.png", "20x16"),
    "three_values": ("masks/b.png", "3 distinct values"),
}


def _make_bad(root, case):
    if case == "truncated_png_image":
        _truncate(root / "images" / "b.png")
    elif case == "truncated_jpeg_mask":
        os.remove(root / "masks" / "b.png")
        _write(root / "masks" / "b.jpg", _square_mask(16, 20, 2, 2, 5))
        _truncate(root / "masks" / "b.jpg")
    elif case == "not_an_image":
        (root / "images" / "b.png").write_bytes(b"this is not a png file at all")
    elif case == "zero_size":
        (root / "masks" / "b.png").write_bytes(b"")
    elif case == "size_mismatch":
        _write(root / "masks" / "b.png", np.zeros((10, 10), np.uint8))
    elif case == "three_values":
        mask = _square_mask(16, 20, 2, 2, 5)
        mask[0, 0] = 7
        _write(root / "masks" / "b.png", mask)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_pair_raises_one_line_naming_the_file(tmp_path, case):
    _dataset(tmp_path, ["a", "b", "c"])
    _make_bad(tmp_path, case)
    pairs = D.find_pairs(tmp_path)
    with pytest.raises(D.DatasetError) as e:
        D.load_pairs(pairs, 16)
    lines = str(e.value).splitlines()
    assert lines[0] == f"1 of 3 pairs in {tmp_path} are unusable (pass --skip-bad / skip_bad=True to skip them):"
    name, reason = BAD_CASES[case]
    assert len(lines) == 2 and lines[1].startswith(name + ": ") and reason in lines[1]
    if case == "size_mismatch":
        assert "10x10" in lines[1]
    assert "Traceback" not in str(e.value)


def test_all_problems_collected_then_skip_bad_keeps_good(tmp_path):
    masks = _dataset(tmp_path, ["a", "b", "c", "d", "e"])
    _truncate(tmp_path / "images" / "b.png")
    (tmp_path / "masks" / "c.png").write_bytes(b"")
    _write(tmp_path / "masks" / "e.png", np.zeros((5, 5), np.uint8))
    pairs = D.find_pairs(tmp_path)
    with pytest.raises(D.DatasetError) as e:
        D.load_pairs(pairs, 16)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("3 of 5 pairs")
    assert [line.split(":")[0] for line in lines[1:]] == ["images/b.png", "masks/c.png", "images/e.png"]

    with pytest.warns(UserWarning, match="3 of 5 pairs .* keeping 2"):
        images, got_masks, stems, report = D.load_pairs(pairs, (16, 20), skip_bad=True)
    assert stems == ["a", "d"]
    assert images.shape == (2, 16, 20, 3)
    np.testing.assert_array_equal(got_masks[1, ..., 0], masks["d"])
    assert report["pairs"] == 5 and report["kept"] == 2 and len(report["skipped"]) == 3


def test_skip_bad_with_nothing_left_raises(tmp_path):
    _dataset(tmp_path, ["a"])
    _truncate(tmp_path / "images" / "a.png")
    with pytest.raises(D.DatasetError, match="none left"):
        D.load_pairs(D.find_pairs(tmp_path), 16, skip_bad=True)


def test_load_pairs_argument_errors(tmp_path):
    _dataset(tmp_path, ["a"])
    pairs = D.find_pairs(tmp_path)
    for kwargs in ({"image_size": (0, 4)}, {"image_size": "big"}, {"image_size": 8, "channels": 2}):
        with pytest.raises(D.DatasetError):
            D.load_pairs(pairs, **kwargs)
    with pytest.raises(D.DatasetError):
        D.load_pairs([], 8)


# ---------------------------------------------------------------------------------- splits


def test_split_stems_deterministic_sizes_and_disjoint():
    stems = [f"s{i:03d}" for i in range(100)]
    a = D.split_stems(stems, seed=1)
    assert a == D.split_stems(list(reversed(stems)), seed=1)
    assert a != D.split_stems(stems, seed=2)
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(a["train"] + a["val"] + a["test"]) == stems
    assert a["val"] == sorted(a["val"])
    assert a["train"] != stems[:80]  # shuffled, not a plain cut


def test_split_stems_small_and_fraction_errors():
    three = D.split_stems(["a", "b", "c"])
    assert all(len(three[k]) == 1 for k in ("train", "val", "test"))
    for n in (4, 5, 7, 11):
        split = D.split_stems([str(i) for i in range(n)], fractions=(0.7, 0.15, 0.15))
        assert all(split[k] for k in ("train", "val", "test")) and sum(map(len, split.values())) == n
    no_test = D.split_stems([str(i) for i in range(10)], fractions=(0.9, 0.1, 0.0))
    assert len(no_test["test"]) == 0 and len(no_test["val"]) == 1
    for fractions in ((0.8, 0.1, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)):
        with pytest.raises(D.DatasetError, match="fractions"):
            D.split_stems(["a", "b", "c"], fractions=fractions)
    with pytest.raises(D.DatasetError):
        D.split_stems(["a", "b"])
    with pytest.raises(D.DatasetError, match="duplicate"):
        D.split_stems(["a", "a", "b", "c"])


def test_save_load_splits_round_trip_and_errors(tmp_path):
    splits = D.split_stems([f"s{i}" for i in range(10)], seed=3)
    path = tmp_path / "run" / "splits.json"
    D.save_splits(path, splits, seed=3, data_dir="/data/x")
    assert os.listdir(tmp_path / "run") == ["splits.json"]  # no temporary file left
    loaded = D.load_splits(path)
    assert {k: loaded[k] for k in ("train", "val", "test")} == splits
    assert loaded["seed"] == 3 and loaded["data_dir"] == "/data/x"

    (tmp_path / "bad.json").write_text('{"train": ["a"], "val": ["b"]}')
    with pytest.raises(D.DatasetError, match="'test'"):
        D.load_splits(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"train": [')
    with pytest.raises(D.DatasetError, match="not valid JSON"):
        D.load_splits(tmp_path / "broken.json")
    with pytest.raises(D.DatasetError, match="does not exist"):
        D.load_splits(tmp_path / "missing.json")
    with pytest.raises(D.DatasetError, match="both"):
        D.save_splits(tmp_path / "x.json", {"train": ["a"], "val": ["a"], "test": []})
    assert json.loads(path.read_text())["train"] == splits["train"]


def test_select_keeps_order_and_names_missing_stems():
    images = np.arange(5)[:, None] * np.ones((5, 3), int)
    masks = -images
    got_images, got_masks = D.select(["a", "b", "c", "d", "e"], images, masks, ["d", "a"])
    assert got_images[:, 0].tolist() == [3, 0] and got_masks[:, 0].tolist() == [-3, 0]
    with pytest.raises(D.DatasetError) as e:
        D.select(["a", "b"], images[:2], masks[:2], ["a", "zz", "yy"], name="val split")
    assert "2 of 3" in str(e.value) and "zz" in str(e.value) and "val split" in str(e.value)


# ---------------------------------------------------------------------------------- augmentation


def _blobs(batch=6, size=48, seed=0):
    """Images 0.1 with bright 0.9 squares and discs exactly where the mask is 1."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, size, size), np.uint8)
    for b in range(batch):
        for _ in range(3):
            y, x = rng.integers(4, size - 16, 2)
            if rng.random() < 0.5:
                masks[b, y:y + 12, x:x + 9] = 1
            else:
                cv2.circle(masks[b], (int(x) + 6, int(y) + 6), 6, 1, -1)
    masks = masks[..., None].astype(np.float32)
    images = np.where(masks > 0, 0.9, 0.1).astype(np.float32) * np.ones((1, 1, 1, 3), np.float32)
    return images, masks


@pytest.mark.parametrize("photometric", [False, True])
def test_augmenter_keeps_image_and_mask_aligned(photometric):
    images, masks = _blobs()
    kwargs = {} if photometric else {"brightness": 0, "contrast": 0, "blur": 0}
    augment = D.augmenter(seed=7, **kwargs)
    changed = 0
    for _ in range(12):
        image, mask = augment(tf.constant(images), tf.constant(masks))
        image, mask = image.numpy(), mask.numpy()
        assert image.shape == images.shape and mask.shape == masks.shape
        assert image.dtype == np.float32 and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert image.min() >= 0 and image.max() <= 1
        agreement = ((image.mean(axis=-1, keepdims=True) > 0.5) == (mask > 0.5)).mean(axis=(1, 2, 3))
        assert agreement.min() >= 0.97, agreement
        changed += int((mask != masks).any(axis=(1, 2, 3)).sum())
    assert changed >= 0.9 * 12 * len(images)  # the geometry really moved the masks


def test_augmenter_single_example_and_per_call_seed():
    images, masks = _blobs(batch=2)
    augment = D.augmenter(seed=0)
    image, mask = augment(images[0], masks[0])
    assert image.shape == images[0].shape and mask.shape == masks[0].shape
    assert ((image.numpy().mean(-1) > 0.5) == (mask.numpy()[..., 0] > 0.5)).mean() >= 0.97
    s1 = augment(images, masks, seed=tf.constant([1, 2], tf.int64))
    s1b = augment(images, masks, seed=tf.constant([1, 2], tf.int64))
    s2 = augment(images, masks, seed=tf.constant([1, 3], tf.int64))
    np.testing.assert_array_equal(s1[0].numpy(), s1b[0].numpy())
    np.testing.assert_array_equal(s1[1].numpy(), s1b[1].numpy())
    assert not np.array_equal(s1[0].numpy(), s2[0].numpy())
    a = D.augmenter(seed=5)(images, masks)[0].numpy()
    b = D.augmenter(seed=5)(images, masks)[0].numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        D.augmenter(rotation=400)


def test_augmenter_flips_are_independent_and_exact():
    image = np.arange(5 * 6 * 3, dtype=np.float32).reshape(1, 5, 6, 3) / 90.0
    mask = (image[..., :1] > 0.5).astype(np.float32)
    augment = D.augmenter(seed=3, rotation=0, scale=0, brightness=0, contrast=0, blur=0)
    batch = np.repeat(image, 32, axis=0)
    out, out_mask = (t.numpy() for t in augment(batch, np.repeat(mask, 32, axis=0)))
    flips = {"none": image[0], "h": image[0, :, ::-1], "v": image[0, ::-1], "hv": image[0, ::-1, ::-1]}
    seen = set()
    for k in range(32):
        names = [n for n, f in flips.items() if np.allclose(out[k], f, atol=1e-5)]
        assert len(names) == 1, k
        seen.add(names[0])
        assert np.array_equal(out_mask[k], (out[k, ..., :1] > 0.5).astype(np.float32))
    assert seen == set(flips)


def test_augmenter_without_seed_argument_advances_and_works_in_tf_data():
    images, masks = _blobs(batch=2, size=32)
    augment = D.augmenter(seed=9)
    first, second = augment(images, masks)[0].numpy(), augment(images, masks)[0].numpy()
    assert not np.array_equal(first, second)
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2).map(D.augmenter(seed=9))
    np.testing.assert_allclose(next(iter(ds))[0].numpy(), first, atol=1e-6)


# ---------------------------------------------------------------------------------- tf.data


def test_make_dataset_shapes_dtypes_values_order():
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 10, 3), dtype=np.uint8)
    masks = np.zeros((7, 8, 10), np.uint8)
    masks[:, :4] = 255
    batches = list(D.make_dataset(images, masks, batch_size=3))
    assert [b[0].shape[0] for b in batches] == [3, 3, 1]
    image, mask = batches[0]
    assert image.dtype == tf.float32 and mask.dtype == tf.float32
    assert image.shape == (3, 8, 10, 3) and mask.shape == (3, 8, 10, 1)
    np.testing.assert_allclose(image.numpy(), images[:3] / 255.0, atol=1e-6)
    assert set(np.unique(mask.numpy())) == {0.0, 1.0} and mask.numpy()[:, :4].all()
    assert len(list(D.make_dataset(images, masks, 3, drop_remainder=True))) == 2
    grey = D.make_dataset(images[..., :1], masks[..., None], 4, augment=D.augmenter(seed=0), shuffle=True, seed=0)
    g_image, g_mask = next(iter(grey))
    assert g_image.shape == (4, 8, 10, 1) and g_mask.shape == (4, 8, 10, 1)
    assert 0 <= g_image.numpy().min() and g_image.numpy().max() <= 1
    with pytest.raises(ValueError):
        D.make_dataset(images, masks[:5], 2)


def test_make_dataset_deterministic_with_seed():
    images, masks = _blobs(batch=8, size=32)
    images = (images * 255).astype(np.uint8)
    masks = masks.astype(np.uint8)

    def epoch(ds):
        return [(x.numpy(), y.numpy()) for x, y in ds]

    def build(seed):
        return D.make_dataset(images, masks, 4, augment=D.augmenter(), shuffle=True, seed=seed)

    ds = build(11)
    first, second = epoch(ds), epoch(ds)
    again = epoch(build(11))
    other = epoch(build(12))
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))  # epochs differ
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    for x, y in first:  # augmented through tf.data, still aligned
        assert ((x.mean(-1, keepdims=True) > 0.5) == (y > 0.5)).mean() >= 0.97

    unshuffled = D.make_dataset(images, masks, 4, augment=D.augmenter(), seed=11)
    a, b = epoch(unshuffled), epoch(unshuffled)
    assert not np.array_equal(a[0][0], b[0][0])  # fresh augmentation each epoch, same order

    repeated = D.make_dataset(images, masks, 3, shuffle=True, seed=0, repeat=True)
    assert sum(1 for _ in repeated.take(10)) == 10


def test_custom_augment_without_seed_argument():
    images = np.full((4, 6, 6, 3), 255, np.uint8)
    masks = np.ones((4, 6, 6, 1), np.uint8)
    ds = D.make_dataset(images, masks, 2, augment=lambda x, y: (x * 0.5, 1 - y))
    x, y = next(iter(ds))
    np.testing.assert_allclose(x.numpy(), 0.5)
    assert not y.numpy().any()


def test_sample_data_dir_path():
    path = D.sample_data_dir()
    assert path.endswith(os.path.join("keras_litenext", "assets", "dsb2018_96"))
    assert os.path.isabs(path)
