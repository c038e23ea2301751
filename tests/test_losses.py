"""Tests of keras_litenext.losses against hand-computed maps and independent NumPy formulas."""

import itertools
import json
import pathlib
import re
import textwrap

import keras
import numpy as np
import pytest
from conftest import run_python

from keras_litenext import losses as L
from keras_litenext.losses import (
    LOSSES,
    BCEDiceLoss,
    DiceLoss,
    FocalLoss,
    MarginalWeightLoss,
    TverskyLoss,
    get_loss,
    marginal_weight_map,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Independent NumPy references (float64)
# ----------------------------------------------------------------------------------------------
def np_window_sum(masks, k):
    """Sum over a k x k window with zero padding, "same" output (PyTorch/TF split for even k)."""
    before = (k - 1) // 2
    after = k - 1 - before
    padded = np.pad(masks.astype(np.float64), ((0, 0), (before, after), (before, after), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
    return windows.sum(axis=(-1, -2))


def np_weight_map(masks, k, wm, wo, wb):
    s = np_window_sum(masks, k)
    dilated = (s > 0).astype(np.float64)
    eroded = (s == k * k).astype(np.float64)
    return wm * (dilated - eroded) + wo * eroded + wb * (1 - dilated)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_bce_logits(y, z):
    return np.logaddexp(0.0, z) - z * y


def np_dice(y, p, smooth=1e-6):
    axes = tuple(range(1, y.ndim))
    return (2 * (p * y).sum(axes) + smooth) / (p.sum(axes) + y.sum(axes) + smooth)


def np_mwl(y, z, k=7, wm=5.0, wo=3.0, wb=2.0, dice_weight=1.0, per_image=False):
    y, z = y.astype(np.float64), z.astype(np.float64)
    w = np_weight_map(y, k, wm, wo, wb)
    values = (w * np_bce_logits(y, z)).mean(axis=(1, 2, 3)) + dice_weight * (1 - np_dice(y, np_sigmoid(z)))
    return values if per_image else values.mean()


def random_batch(seed, shape=(3, 24, 24, 1), scale=3.0):
    """Blobby random masks (a few rectangles) and logits loosely correlated with them."""
    rng = np.random.default_rng(seed)
    y = np.zeros(shape, np.float32)
    for b in range(shape[0]):
        for _ in range(3):
            r, c = rng.integers(0, shape[1] - 4), rng.integers(0, shape[2] - 4)
            h, w = rng.integers(2, 12), rng.integers(2, 12)
            y[b, r : r + h, c : c + w] = 1
    z = (scale * rng.normal(size=shape) + 2.0 * (y - 0.5)).astype(np.float32)
    return y, z


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def grad_of(fn, x):
    """d fn(x) / dx with the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        g = tape.gradient(value, x)
        return None if g is None else g.numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(x))
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        value = fn(x)
        if not value.requires_grad:
            return None
        value.backward()
        return x.grad.numpy()
    pytest.skip(f"no gradient helper for backend {backend}")


# ----------------------------------------------------------------------------------------------
# Weight map
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(2.0, 3.0, 5.0), (7.0, 11.0, 13.0)])
def test_weight_map_square_pixel_counts(weights):
    wm, wo, wb = weights
    m = np.zeros((1, 32, 32, 1), np.float32)
    m[:, 10:22, 10:22] = 1  # 12 x 12 square
    w = to_np(marginal_weight_map(m, kernel_size=7, w_margin=wm, w_object=wo, w_background=wb))[0, :, :, 0]
    assert w.shape == (32, 32)
    assert (w == wo).sum() == 36  # interior 6 x 6
    assert (w == wm).sum() == 288  # 18 x 18 dilated minus the interior
    assert (w == wb).sum() == 32 * 32 - 18 * 18
    assert np.all(w[13:19, 13:19] == wo)  # 3 px in from the boundary
    assert np.all(w[7:25, 7:25][w[7:25, 7:25] != wo] == wm)  # 3 px out from the boundary
    assert w[6, 6] == wb and w[6, 15] == wb and w[25, 15] == wb


def test_default_weights_emphasise_the_margin():
    assert L.MWL_WEIGHTS == (5.0, 3.0, 2.0)
    m = np.zeros((1, 32, 32, 1), np.float32)
    m[:, 10:22, 10:22] = 1
    w = to_np(marginal_weight_map(m))[0, :, :, 0]
    assert w[15, 15] == 3.0 and w[10, 10] == 5.0 and w[0, 0] == 2.0
    for loss in (MarginalWeightLoss(), get_loss("mwl"), get_loss("mwl", num_classes=3)):
        assert (loss.w_margin, loss.w_object, loss.w_background) == (5.0, 3.0, 2.0)
    w3 = to_np(L.multiclass_weight_map(m, 2))[0]
    assert w3[15, 15] == 3.0 and w3[10, 10] == 5.0 and w3[0, 0] == 2.0


def test_weight_map_hand_7x7_k3():
    m = np.zeros((7, 7), np.float32)
    m[0:3, 0:3] = 1  # block in the top-left corner, touching two borders
    m[5, 5] = 1  # a single pixel
    # margin = 7, object = 11, background = 13, written out by hand
    expected = np.array(
        [
            [7, 7, 7, 7, 13, 13, 13],
            [7, 11, 7, 7, 13, 13, 13],
            [7, 7, 7, 7, 13, 13, 13],
            [7, 7, 7, 7, 13, 13, 13],
            [13, 13, 13, 13, 7, 7, 7],
            [13, 13, 13, 13, 7, 7, 7],
            [13, 13, 13, 13, 7, 7, 7],
        ],
        np.float32,
    )
    w = to_np(marginal_weight_map(m[None, :, :, None], 3, w_margin=7, w_object=11, w_background=13))
    np.testing.assert_array_equal(w[0, :, :, 0], expected)
    # A mask without a channel axis gives the same map.
    w3 = to_np(marginal_weight_map(m[None], 3, w_margin=7, w_object=11, w_background=13))
    np.testing.assert_array_equal(w3[0, :, :, 0], expected)


def test_weight_map_erodes_at_the_image_border():
    m = np.zeros((1, 6, 8, 1), np.float32)
    m[:, 0:3, :] = 1  # a band along the top edge, across the full width
    w = to_np(marginal_weight_map(m, 3, w_margin=2, w_object=3, w_background=5))[0, :, :, 0]
    expected = np.array(
        [
            [2, 2, 2, 2, 2, 2, 2, 2],  # row 0: the window reaches the zero padding above
            [2, 3, 3, 3, 3, 3, 3, 2],  # columns 0 and 7 reach the padding left and right
            [2, 2, 2, 2, 2, 2, 2, 2],
            [2, 2, 2, 2, 2, 2, 2, 2],  # dilation, one pixel below the band
            [5, 5, 5, 5, 5, 5, 5, 5],
            [5, 5, 5, 5, 5, 5, 5, 5],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(w, expected)


def test_weight_map_empty_and_full_masks():
    wm, wo, wb = 7.0, 11.0, 13.0
    empty = to_np(marginal_weight_map(np.zeros((2, 9, 10, 1), np.float32), 5, wm, wo, wb))
    assert np.all(empty == wb)
    full = to_np(marginal_weight_map(np.ones((1, 9, 10, 1), np.float32), 5, wm, wo, wb))[0, :, :, 0]
    expected = np.full((9, 10), wm, np.float32)  # ring of width 5 // 2 = 2 at the border
    expected[2:-2, 2:-2] = wo
    np.testing.assert_array_equal(full, expected)


def test_weight_map_large_kernel_is_a_true_erosion():
    m = np.zeros((1, 31, 31, 1), np.float32)
    m[:, 10:21, 10:21] = 1  # exactly 11 x 11
    w = to_np(marginal_weight_map(m, 11, 2, 3, 5))[0, :, :, 0]
    assert (w == 3).sum() == 1 and w[15, 15] == 3
    m[:, 10, 10] = 0  # one pixel short: floor(mean + 0.01) would still erode the centre
    w = to_np(marginal_weight_map(m, 11, 2, 3, 5))[0, :, :, 0]
    assert (w == 3).sum() == 0


@pytest.mark.parametrize("k", [3, 4, 7])
def test_weight_map_random_vs_numpy(k):
    rng = np.random.default_rng(k)
    m = (rng.random((2, 13, 11, 2)) > 0.35).astype(np.float32)  # two channels, processed independently
    w = to_np(marginal_weight_map(m, k, 7, 11, 13))
    np.testing.assert_array_equal(w, np_weight_map(m, k, 7, 11, 13))


def test_weight_map_soft_masks_match_reference_formula_k7():
    """For k <= 7 the erosion is the reference's floor(mean(window) + 0.01) on any mask in [0, 1]."""
    rng = np.random.default_rng(1)
    m = np.ones((1, 15, 15, 1), np.float32)
    m[0, 7, 7] = 0.995  # mean 1 - 0.005/49: the reference erodes
    m[0, 2, 12] = 0.4  # mean 1 - 0.6/49 < 0.99: it does not
    m = m * (rng.random(m.shape) > 0.02)  # and a few holes
    s = np_window_sum(m, 7)
    eroded = np.floor(s / 49 + 0.01)
    dilated = np.clip(s, 0, 1)
    expected = 7 * (dilated - eroded) + 11 * eroded + 13 * (1 - dilated)
    np.testing.assert_allclose(to_np(marginal_weight_map(m, 7, 7, 11, 13)), expected, atol=1e-5)


def test_weight_map_has_no_gradient():
    m = np.zeros((1, 8, 8, 1), np.float32)
    m[:, 2:6, 2:6] = 1
    g = grad_of(lambda t: keras.ops.sum(marginal_weight_map(t, 3)), m)
    assert g is None or np.all(np.asarray(g) == 0)


# ----------------------------------------------------------------------------------------------
# Marginal weight loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"kernel_size": 5, "w_margin": 2.0, "w_object": 3.0, "w_background": 5.0, "dice_weight": 0.5},
        {"kernel_size": 3, "w_margin": 7.0, "w_object": 11.0, "w_background": 13.0, "dice_weight": 0.0},
    ],
)
def test_mwl_vs_numpy(kwargs):
    y, z = random_batch(0)
    loss = MarginalWeightLoss(**kwargs)
    ref = np_mwl(
        y,
        z,
        k=kwargs.get("kernel_size", 7),
        wm=kwargs.get("w_margin", 5.0),
        wo=kwargs.get("w_object", 3.0),
        wb=kwargs.get("w_background", 2.0),
        dice_weight=kwargs.get("dice_weight", 1.0),
        per_image=True,
    )
    np.testing.assert_allclose(float(loss(y, z)), ref.mean(), rtol=1e-5, atol=1e-5)
    per_image = MarginalWeightLoss(reduction=None, **kwargs)(y, z)
    np.testing.assert_allclose(to_np(per_image), ref, rtol=1e-5, atol=1e-5)
    sw = np.array([1.0, 0.0, 2.0], np.float32)
    np.testing.assert_allclose(float(loss(y, z, sample_weight=sw)), (ref * sw).sum() / 3, rtol=1e-5, atol=1e-5)


def test_mwl_probabilities_input():
    y, z = random_batch(1)
    p = np_sigmoid(z.astype(np.float64)).astype(np.float32)
    got = float(MarginalWeightLoss(from_logits=False)(y, p))
    np.testing.assert_allclose(got, np_mwl(y, z), rtol=1e-4, atol=1e-4)


def test_mwl_unit_weights_is_bce_plus_dice():
    y, z = random_batch(2)
    unit = float(MarginalWeightLoss(w_margin=1, w_object=1, w_background=1)(y, z))
    bce = float(keras.losses.BinaryCrossentropy(from_logits=True)(y, z))
    dice = 1 - np_dice(y.astype(np.float64), np_sigmoid(z.astype(np.float64))).mean()
    np.testing.assert_allclose(unit, bce + dice, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(unit, float(BCEDiceLoss()(y, z)), rtol=1e-6, atol=1e-6)


def test_mwl_gradient_is_weighted_bce_gradient():
    """With dice_weight=0, dL/dz = W * (sigmoid(z) - y) / (batch * pixels): W is a constant."""
    y, z = random_batch(3, shape=(2, 12, 12, 1))
    loss = MarginalWeightLoss(kernel_size=3, w_margin=7, w_object=11, w_background=13, dice_weight=0.0)
    g = grad_of(lambda t: loss(y, t), z)
    expected = np_weight_map(y, 3, 7, 11, 13) * (np_sigmoid(z.astype(np.float64)) - y) / y.size
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_finite_on_extreme_logits(name):
    y, _ = random_batch(4, shape=(2, 12, 12, 1))
    z = np.where(np.random.default_rng(0).random(y.shape) > 0.5, 80.0, -80.0).astype(np.float32)
    z[0, 0, 0, 0], z[1, 5, 5, 0] = 0.0, 1e4
    loss = get_loss(name)
    value = float(loss(y, z))
    g = grad_of(lambda t: loss(y, t), z)
    assert np.isfinite(value) and np.all(np.isfinite(g))
    # An empty mask predicted empty is finite too (Dice 0/0 guarded by `smooth`).
    zeros = np.zeros_like(y)
    assert np.isfinite(float(loss(zeros, np.full_like(z, -80.0))))


def test_mixed_precision_inputs_are_computed_in_float32():
    y, z = random_batch(5)
    z16 = z.astype(np.float16)
    for loss in (MarginalWeightLoss(), DiceLoss(), FocalLoss(), TverskyLoss(), BCEDiceLoss()):
        out = loss(y, z16)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        np.testing.assert_allclose(float(out), float(loss(y, z16.astype(np.float32))), rtol=1e-6)
    mixed = MarginalWeightLoss(dtype="mixed_float16")
    np.testing.assert_allclose(float(mixed(y, z16)), np_mwl(y, z16.astype(np.float32)), rtol=1e-3)


# ----------------------------------------------------------------------------------------------
# Dice, Tversky, focal
# ----------------------------------------------------------------------------------------------
def test_dice_loss_vs_numpy_and_empty_masks():
    y, z = random_batch(6)
    y[1] = 0  # one empty mask
    p = np_sigmoid(z.astype(np.float64))
    np.testing.assert_allclose(float(DiceLoss()(y, z)), (1 - np_dice(y, p)).mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(DiceLoss(smooth=1.0)(y, z)), (1 - np_dice(y, p, smooth=1.0)).mean(), rtol=1e-5, atol=1e-6
    )
    # Hard predictions: perfect -> 0, empty prediction of an empty mask -> 0, disjoint -> 1.
    ones = np.zeros((1, 4, 4, 1), np.float32)
    ones[:, :2] = 1
    assert float(DiceLoss(from_logits=False)(ones, ones)) == pytest.approx(0.0, abs=1e-6)
    assert float(DiceLoss(from_logits=False)(0 * ones, 0 * ones)) == pytest.approx(0.0, abs=1e-6)
    assert float(DiceLoss(from_logits=False)(ones, 1 - ones)) == pytest.approx(1.0, abs=1e-6)


def test_tversky_vs_numpy_and_dice_equivalence():
    y, z = random_batch(7)
    y64, p = y.astype(np.float64), np_sigmoid(z.astype(np.float64))
    alpha, beta, s = 0.3, 0.7, 1e-6
    tp = (p * y64).sum((1, 2, 3))
    fp = (p * (1 - y64)).sum((1, 2, 3))
    fn = ((1 - p) * y64).sum((1, 2, 3))
    ref = (1 - (tp + s) / (tp + alpha * fp + beta * fn + s)).mean()
    np.testing.assert_allclose(float(TverskyLoss(alpha, beta)(y, z)), ref, rtol=1e-5, atol=1e-6)
    # alpha weights false positives: an over-segmentation costs more with a larger alpha.
    over = np.ones_like(y)
    fp_heavy, fn_heavy = TverskyLoss(0.9, 0.1, from_logits=False), TverskyLoss(0.1, 0.9, from_logits=False)
    assert float(fp_heavy(y, over)) > float(fn_heavy(y, over))
    np.testing.assert_allclose(float(TverskyLoss(0.5, 0.5)(y, z)), float(DiceLoss()(y, z)), atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.8, 2.0), (0.25, 1.5), (0.5, 0.0)])
def test_focal_vs_numpy(alpha, gamma):
    y, z = random_batch(8)
    y64, z64 = y.astype(np.float64), z.astype(np.float64)
    p = np_sigmoid(z64)
    pt = np.where(y64 == 1, p, 1 - p)
    at = np.where(y64 == 1, alpha, 1 - alpha)
    ref = (at * (1 - pt) ** gamma * np_bce_logits(y64, z64)).mean()
    np.testing.assert_allclose(float(FocalLoss(alpha, gamma)(y, z)), ref, rtol=1e-5, atol=1e-6)
    probs = p.astype(np.float32)
    np.testing.assert_allclose(float(FocalLoss(alpha, gamma, from_logits=False)(y, probs)), ref, rtol=1e-4, atol=1e-5)
    if gamma == 0.0:  # alpha = 0.5, gamma = 0: half the BCE
        bce = float(keras.losses.BinaryCrossentropy(from_logits=True)(y, z))
        np.testing.assert_allclose(float(FocalLoss(alpha, gamma)(y, z)), 0.5 * bce, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Registry and serialisation
# ----------------------------------------------------------------------------------------------
def test_get_loss_registry():
    assert set(LOSSES) == {"mwl", "bce_dice", "dice", "bce", "tversky", "focal"}
    expected = {
        "mwl": MarginalWeightLoss,
        "bce_dice": BCEDiceLoss,
        "dice": DiceLoss,
        "bce": keras.losses.BinaryCrossentropy,
        "tversky": TverskyLoss,
        "focal": FocalLoss,
    }
    for name, cls in expected.items():
        assert isinstance(get_loss(name), cls)
    assert get_loss("MWL", w_margin=5).w_margin == 5.0
    assert get_loss("bce").get_config()["from_logits"] is True
    with pytest.raises(ValueError, match="mwl.*focal"):
        get_loss("lovasz")


@pytest.mark.parametrize(
    "loss",
    [
        MarginalWeightLoss(kernel_size=5, w_margin=5, w_object=3, w_background=2, dice_weight=0.5, name="m"),
        DiceLoss(smooth=1.0),
        BCEDiceLoss(bce_weight=0.3, dice_weight=2.0),
        TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0),
        FocalLoss(alpha=0.25, gamma=1.5, reduction="sum"),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_serialization_round_trip(loss):
    y, z = random_batch(9, shape=(2, 12, 12, 1))
    blob = keras.saving.serialize_keras_object(loss)
    assert blob["registered_name"] == f"keras_litenext>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert float(restored(y, z)) == pytest.approx(float(loss(y, z)), rel=1e-6)


def test_compiled_model_saves_and_loads(tmp_path):
    from keras_litenext.metrics import DiceScore

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(inputs))
    loss = MarginalWeightLoss(kernel_size=3, w_margin=5, w_object=3, w_background=2)
    model.compile(optimizer="adam", loss=loss, metrics=[DiceScore(empty="score")], jit_compile=True)
    y, z = random_batch(10, shape=(4, 8, 8, 1))
    model.fit(z, y, batch_size=2, epochs=1, verbose=0)  # one training step in compiled mode
    before = model.evaluate(z, y, verbose=0, return_dict=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, MarginalWeightLoss)
    assert loaded.loss.get_config() == loss.get_config()
    after = loaded.evaluate(z, y, verbose=0, return_dict=True)
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert after["dice"] == pytest.approx(before["dice"], rel=1e-5)


# ----------------------------------------------------------------------------------------------
# JAX backend
# ----------------------------------------------------------------------------------------------
JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras, jax
    assert keras.backend.backend() == "jax"
    from keras_litenext.losses import (MarginalWeightLoss, DiceLoss, TverskyLoss, FocalLoss, BCEDiceLoss,
                                       marginal_weight_map)
    data = np.load(sys.argv[1])
    y, z = data["y"], data["z"]
    mwl = MarginalWeightLoss(kernel_size=5, w_margin=5.0, w_object=3.0, w_background=2.0)
    out = {
        "mwl_default": float(MarginalWeightLoss()(y, z)),
        "mwl_jit": float(jax.jit(lambda t: mwl(y, t))(z)),
        "dice": float(DiceLoss()(y, z)),
        "tversky": float(TverskyLoss(0.3, 0.7)(y, z)),
        "focal": float(FocalLoss()(y, z)),
        "bce_dice": float(BCEDiceLoss()(y, z)),
        "grad_finite": bool(np.all(np.isfinite(np.asarray(jax.grad(lambda t: mwl(y, t))(z))))),
        "map": np.asarray(marginal_weight_map(y, 5, 7.0, 11.0, 13.0)).tolist(),
    }
    from keras_litenext.losses import get_loss, multiclass_weight_map
    labels, z3 = data["labels"], data["z3"]
    mc = get_loss("mwl", 3, kernel_size=5, w_margin=7.0, w_object=11.0, w_background=13.0)
    out["mc_mwl_jit"] = float(jax.jit(lambda t: mc(labels, t))(z3))
    out["mc_ce_dice"] = float(get_loss("ce_dice", 3, class_weights=(0.5, 1.0, 2.0))(labels, z3))
    out["mc_map"] = np.asarray(multiclass_weight_map(labels, 3, 5, 7.0, 11.0, 13.0)).tolist()
    print("RESULT" + json.dumps(out))
    """
)


def test_losses_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    y, z = random_batch(11, shape=(2, 16, 16, 1))
    labels, z3 = random_labels(19, shape=(2, 16, 16))
    np.savez(tmp_path / "data.npz", y=y, z=z, labels=labels, z3=z3)
    proc = run_python(JAX_SCRIPT, args=[tmp_path / "data.npz"], cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT") :])
    y64, z64 = y.astype(np.float64), z.astype(np.float64)
    p = np_sigmoid(z64)
    assert out["mwl_default"] == pytest.approx(np_mwl(y, z), abs=1e-5)
    assert out["mwl_jit"] == pytest.approx(np_mwl(y, z, k=5, wm=5.0, wo=3.0, wb=2.0), abs=1e-5)
    assert out["dice"] == pytest.approx((1 - np_dice(y64, p)).mean(), abs=1e-5)
    assert out["bce_dice"] == pytest.approx(np_mwl(y, z, wm=1.0, wo=1.0, wb=1.0), abs=1e-5)
    assert out["tversky"] == pytest.approx(float(TverskyLoss(0.3, 0.7)(y, z)), abs=1e-5)
    assert out["focal"] == pytest.approx(float(FocalLoss()(y, z)), abs=1e-5)
    assert out["grad_finite"]
    np.testing.assert_array_equal(np.asarray(out["map"]), np_weight_map(y, 5, 7.0, 11.0, 13.0))
    w3 = np_multiclass_map(labels, 3, 5, 7.0, 11.0, 13.0)
    np.testing.assert_array_equal(np.asarray(out["mc_map"]), w3)
    ce, dice = np_ce_dice(labels, z3, 3, pixel_weights=w3)
    assert out["mc_mwl_jit"] == pytest.approx((ce + dice).mean(), rel=1e-5)
    ce, dice = np_ce_dice(labels, z3, 3, class_weights=(0.5, 1.0, 2.0))
    assert out["mc_ce_dice"] == pytest.approx((ce + dice).mean(), rel=1e-5)


def test_module_uses_keras_only():
    modules = sorted(pathlib.Path(L.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        source = module.read_text()
        assert not re.search(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", source, re.M), module.name
        assert "tf.keras" not in source and "import_module" not in source, module.name


# ----------------------------------------------------------------------------------------------
# Multi-class (softmax) losses
# ----------------------------------------------------------------------------------------------
def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_one_hot(labels, k):
    labels = labels.reshape(labels.shape[:3]).astype(np.int64)
    return (labels[..., None] == np.arange(k)).astype(np.float64)


def np_multiclass_map(labels, k_classes, k, wm, wo, wb):
    """Independent construction: pad the index map with background, then one class at a time."""
    labels = labels.reshape(labels.shape[:3]).astype(np.int64)
    before, after = (k - 1) // 2, k - 1 - ((k - 1) // 2)
    padded = np.pad(labels, ((0, 0), (before, after), (before, after)), constant_values=0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
    margin = np.zeros(labels.shape, bool)
    for c in range(k_classes):
        inside = windows == c
        margin |= inside.any(axis=(-1, -2)) & ~inside.all(axis=(-1, -2))
    return np.where(margin, wm, np.where(labels > 0, wo, wb)).astype(np.float64)


def np_ce_dice(labels, z, k, class_weights=None, pixel_weights=None, smooth=1e-6):
    """Per-image (CE, 1 - mean foreground soft Dice) in float64."""
    y = np_one_hot(labels, k)
    p = np_softmax(z.astype(np.float64))
    ce = -(y * np.log(p)).sum(-1)
    if class_weights is not None:
        ce = ce * (y * np.asarray(class_weights, np.float64)).sum(-1)
    if pixel_weights is not None:
        ce = ce * pixel_weights
    inter = (y * p).sum((1, 2))[:, 1:]
    den = (y.sum((1, 2)) + p.sum((1, 2)))[:, 1:]
    dice = ((2 * inter + smooth) / (den + smooth)).mean(-1)
    return ce.mean((1, 2)), 1 - dice


def random_labels(seed, shape=(3, 20, 20), k=3, scale=2.0):
    """Index maps of rectangles of classes 1..k-1 (some touching the border) and loosely correlated logits."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    for b in range(shape[0]):
        for _ in range(4):
            r, c = rng.integers(-2, shape[1] - 3), rng.integers(-2, shape[2] - 3)
            h, w = rng.integers(3, 10), rng.integers(3, 10)
            labels[b, max(r, 0) : r + h, max(c, 0) : c + w] = rng.integers(1, k)
    z = scale * rng.normal(size=shape + (k,)) + 2.0 * (np_one_hot(labels, k) - 0.5)
    return labels, z.astype(np.float32)


def test_multiclass_map_hand_3_classes():
    labels = np.zeros((1, 10, 12), np.float32)
    labels[0, 2:7, 2:5] = 1  # 5 x 3 block of class 1
    labels[0, 2:7, 5:9] = 2  # 5 x 4 block of class 2, touching it
    expected = np.full((10, 12), 13.0)  # background outside the dilated objects
    expected[1:8, 1:10] = 7.0  # bands of all classes, the class 1 / class 2 interface included
    expected[3:6, 3] = 11.0  # eroded class 1
    expected[3:6, 6:8] = 11.0  # eroded class 2
    w = to_np(L.multiclass_weight_map(labels[..., None], 3, 3, w_margin=7, w_object=11, w_background=13))
    np.testing.assert_array_equal(w[0], expected)
    # The binary map of the union would call the interface object (columns 4 and 5).
    binary = to_np(marginal_weight_map((labels > 0)[..., None].astype(np.float32), 3, 7, 11, 13))[0, :, :, 0]
    assert np.all(binary[3:6, 3:8] == 11.0)


@pytest.mark.parametrize("k", [3, 4, 7])
def test_multiclass_map_k2_equals_binary_map(k):
    fg, _ = random_batch(k, shape=(3, 22, 20, 1))  # sparse rectangles: background far from objects too
    fg[0, :, :4] = 1  # touching three borders
    fg[2] = (np.random.default_rng(k).random((22, 20, 1)) > 0.35).astype(np.float32)
    expected = to_np(marginal_weight_map(fg, k, 7, 11, 13))[..., 0]
    for labels in (fg, fg[..., 0].astype(np.int32), np.concatenate([1 - fg, fg], -1)):
        np.testing.assert_array_equal(to_np(L.multiclass_weight_map(labels, 2, k, 7, 11, 13)), expected)
    np.testing.assert_array_equal(expected, np_weight_map(fg, k, 7, 11, 13)[..., 0])


@pytest.mark.parametrize("k", [3, 4, 7])
def test_multiclass_map_random_vs_numpy(k):
    labels, _ = random_labels(k, shape=(2, 17, 15), k=4)
    got = to_np(L.multiclass_weight_map(labels.astype(np.float32), 4, k, 7, 11, 13))
    np.testing.assert_array_equal(got, np_multiclass_map(labels, 4, k, 7, 11, 13))


def test_multiclass_losses_k2_equal_binary_losses_on_logit_difference():
    y, z = random_batch(12, shape=(3, 16, 16, 1))
    z0 = np.random.default_rng(1).normal(size=z.shape).astype(np.float32)
    z2 = np.concatenate([z0, z0 + z], -1)  # softmax([z0, z0 + z])[1] = sigmoid(z)
    custom = {"kernel_size": 5, "w_margin": 7, "w_object": 11, "w_background": 13}
    pairs = [
        (MarginalWeightLoss(**custom), {"name": "mwl", **custom}),
        (MarginalWeightLoss(), {"name": "mwl"}),
        (BCEDiceLoss(), {"name": "ce_dice"}),
        (DiceLoss(), {"name": "dice"}),
        (get_loss("bce"), {"name": "ce"}),
    ]
    for binary, kwargs in pairs:
        multi = get_loss(num_classes=2, **kwargs)
        expected = float(binary(y, z))
        for labels in (y, y[..., 0].astype(np.int32)):
            assert float(multi(labels, z2)) == pytest.approx(expected, rel=1e-5, abs=1e-6), kwargs


def test_ce_dice_vs_numpy_class_weights_and_sample_weight():
    labels, z = random_labels(13)
    cw = (0.5, 2.0, 3.0)
    ce, dice = np_ce_dice(labels, z, 3, class_weights=cw)
    loss = L.CEDiceLoss(3, class_weights=cw, ce_weight=0.7, dice_weight=1.3, reduction=None)
    np.testing.assert_allclose(to_np(loss(labels[..., None].astype(np.float32), z)), 0.7 * ce + 1.3 * dice, rtol=1e-5)
    ce1, dice1 = np_ce_dice(labels, z, 3)
    sw = np.array([1.0, 0.0, 2.0], np.float32)
    got = float(get_loss("ce_dice", 3)(labels, z, sample_weight=sw))
    assert got == pytest.approx(((ce1 + dice1) * sw).sum() / 3, rel=1e-5)
    assert float(get_loss("ce", 3, class_weights=cw)(labels, z)) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(get_loss("dice", 3)(labels, z)) == pytest.approx(dice1.mean(), rel=1e-5)
    probs = np_softmax(z.astype(np.float64)).astype(np.float32)
    assert float(get_loss("ce_dice", 3, from_logits=False)(labels, probs)) == pytest.approx(
        (ce1 + dice1).mean(), rel=1e-4
    )
    # Hand values: a perfect hard prediction has Dice loss 0; predicting only background gives 1.
    one_hot = np_one_hot(labels, 3).astype(np.float32)
    assert float(get_loss("dice", 3, from_logits=False)(labels, one_hot)) == pytest.approx(0.0, abs=1e-6)
    background = np.zeros_like(one_hot)
    background[..., 0] = 1
    assert float(get_loss("dice", 3, from_logits=False)(labels, background)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dice_weight", [1.0, 0.0])
def test_multiclass_mwl_vs_numpy(dice_weight):
    labels, z = random_labels(14, k=4)
    w = np_multiclass_map(labels, 4, 5, 7, 11, 13)
    ce, dice = np_ce_dice(labels, z, 4, pixel_weights=w)
    loss = get_loss("mwl", 4, kernel_size=5, w_margin=7, w_object=11, w_background=13, dice_weight=dice_weight)
    assert float(loss(labels.astype(np.float32), z)) == pytest.approx((ce + dice_weight * dice).mean(), rel=1e-5)


@pytest.mark.parametrize("name", ["mwl", "ce_dice", "dice", "ce"])
def test_multiclass_losses_decrease_and_are_finite(name):
    labels, _ = random_labels(15, shape=(2, 16, 16), k=3)
    noise = np.random.default_rng(0).normal(size=labels.shape + (3,))
    loss = get_loss(name, num_classes=3)
    values = []
    for t in (0.0, 1.0, 2.0, 4.0, 8.0):
        z = (t * (2 * np_one_hot(labels, 3) - 1) + noise).astype(np.float32)
        values.append(float(loss(labels, z)))
    assert all(np.isfinite(values)) and all(a > b for a, b in itertools.pairwise(values)), values
    extreme = np.where(np.random.default_rng(1).random(labels.shape + (3,)) > 0.5, 80.0, -80.0).astype(np.float32)
    extreme[0, 0, 0] = 1e4
    g = grad_of(lambda t: loss(labels, t), extreme)
    assert np.isfinite(float(loss(labels, extreme))) and np.all(np.isfinite(g))
    assert np.isfinite(float(loss(np.zeros_like(labels), extreme)))  # only background


def test_multiclass_mixed_precision_and_errors():
    labels, z = random_labels(16, shape=(2, 12, 12))
    z16 = z.astype(np.float16)
    for name in MULTICLASS:
        loss = get_loss(name, num_classes=3)
        out = loss(labels, z16)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert float(out) == pytest.approx(float(loss(labels, z16.astype(np.float32))), rel=1e-6)
    assert float(get_loss("mwl", 3, dtype="mixed_float16")(labels, z16)) == pytest.approx(
        float(get_loss("mwl", 3)(labels, z)), rel=1e-2
    )
    with pytest.raises(ValueError, match=r"num_classes=3.*available: mwl, ce_dice, dice, ce\."):
        get_loss("focal", num_classes=3)
    with pytest.raises(ValueError, match=r"num_classes=1.*available: mwl, bce_dice, dice, bce, tversky, focal\."):
        get_loss("ce_dice")
    with pytest.raises(ValueError, match="num_classes"):
        get_loss("dice", num_classes=0)
    with pytest.raises(ValueError, match="class_weights"):
        get_loss("ce", 3, class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"\(batch, height, width, 4\)"):
        get_loss("ce_dice", 4)(labels, z)


MULTICLASS = ("mwl", "ce_dice", "dice", "ce")


def test_multiclass_registry():
    assert L.MULTICLASS_LOSSES == MULTICLASS
    assert L.LOSSES == ("mwl", "bce_dice", "dice", "bce", "tversky", "focal")
    expected = {
        "mwl": L.MultiClassMarginalWeightLoss,
        "ce_dice": L.CEDiceLoss,
        "dice": L.MultiClassDiceLoss,
        "ce": L.SoftmaxCrossEntropyLoss,
    }
    for name, cls in expected.items():
        loss = get_loss(name.upper().replace("_", "-"), num_classes=5)
        assert type(loss) is cls and loss.num_classes == 5 and loss.get_config()["num_classes"] == 5


@pytest.mark.parametrize(
    "loss",
    [
        L.MultiClassMarginalWeightLoss(3, kernel_size=5, w_margin=2, w_object=3, w_background=5, dice_weight=0.5),
        L.CEDiceLoss(3, class_weights=(0.2, 1.0, 4.0), ce_weight=0.5, smooth=1.0),
        L.MultiClassDiceLoss(3, smooth=1.0, reduction="sum"),
        L.SoftmaxCrossEntropyLoss(3, class_weights=(1, 2, 3)),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_multiclass_serialization_round_trip(loss):
    labels, z = random_labels(17, shape=(2, 12, 12))
    blob = keras.saving.serialize_keras_object(loss)
    assert blob["registered_name"] == f"keras_litenext>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert float(restored(labels, z)) == pytest.approx(float(loss(labels, z)), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_multiclass_compiled_model_saves_and_loads(tmp_path):
    """Loss and metrics, evaluated in compiled (XLA) mode before and after a `.keras` round trip."""
    from keras_litenext.metrics import get_metrics

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, padding="same")(inputs))
    loss = get_loss("mwl", num_classes=3, kernel_size=3, w_margin=4.0)
    metrics = get_metrics(num_classes=3, class_names=("background", "Nucleus", "boundary"))
    model.compile(optimizer="adam", loss=loss, metrics=metrics, jit_compile=True)
    labels, z = random_labels(18, shape=(4, 8, 8))
    y = labels[..., None].astype(np.float32)
    before = model.evaluate(z, y, verbose=0, return_dict=True)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, L.MultiClassMarginalWeightLoss)
    assert loaded.loss.get_config() == loss.get_config()
    after = loaded.evaluate(z, y, verbose=0, return_dict=True)
    assert set(after) == {"loss", "dice", "iou", "precision", "recall", "dice_nucleus", "dice_boundary"}
    for key, value in before.items():
        assert after[key] == pytest.approx(value, rel=1e-5), key
