"""Tests of keras_litenext.losses against hand-computed maps and independent NumPy formulas."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

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


def np_mwl(y, z, k=7, wm=2.0, wo=3.0, wb=5.0, dice_weight=1.0, per_image=False):
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


def test_weight_map_defaults_are_reference():
    m = np.zeros((1, 32, 32, 1), np.float32)
    m[:, 10:22, 10:22] = 1
    w = to_np(marginal_weight_map(m))[0, :, :, 0]
    assert w[15, 15] == 3.0 and w[10, 10] == 2.0 and w[0, 0] == 5.0


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
        {"kernel_size": 5, "w_margin": 5.0, "w_object": 3.0, "w_background": 2.0, "dice_weight": 0.5},
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
        wm=kwargs.get("w_margin", 2.0),
        wo=kwargs.get("w_object", 3.0),
        wb=kwargs.get("w_background", 5.0),
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
    print("RESULT" + json.dumps(out))
    """
)


def test_losses_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    y, z = random_batch(11, shape=(2, 16, 16, 1))
    np.savez(tmp_path / "data.npz", y=y, z=z)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "data.npz")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
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


def test_module_uses_keras_only():
    source = pathlib.Path(L.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", source, re.M)
    assert "tf.keras" not in source and "import_module" not in source
