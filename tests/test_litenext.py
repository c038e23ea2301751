"""LiteNeXt: structure, parity with the reference PyTorch model, serialization, shape rules."""

import os
import textwrap

import keras
import numpy as np
import pytest
from conftest import run_python

import keras_litenext as kl
from keras_litenext.models.litenext import torch_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_and_repo_parameter_counts():
    assert kl.LiteNeXt().count_params() == 711_201
    assert kl.LiteNeXt(kernel_size=3).count_params() == 701_601


def test_registry_builds_litenext():
    assert "litenext" in kl.list_models()
    model = kl.create_model("litenext", input_shape=(64, 64, 3))
    assert model.count_params() == 711_201
    with pytest.raises(ValueError, match="Unknown model 'nope'"):
        kl.create_model("nope")


@pytest.mark.parametrize("fixture,kernel_size", [("litenext_k7.npz", 7), ("litenext_k3.npz", 3)])
def test_parity_with_reference(fixture_loader, fixture, kernel_size):
    state, x, ref = fixture_loader(fixture)
    model = kl.LiteNeXt(input_shape=x.shape[1:], kernel_size=kernel_size)
    kl.load_torch_weights(model, state)
    out = np.asarray(model.predict_on_batch(x))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5


def test_parity_with_dynamic_input_size(fixture_loader):
    state, x, ref = fixture_loader("litenext_k7.npz")
    model = kl.LiteNeXt(input_shape=(None, None, 3))
    kl.load_torch_weights(model, state)
    assert np.abs(np.asarray(model(x)) - ref).max() <= 1e-5


def test_keras_round_trip_is_identical(fixture_loader, tmp_path):
    state, x, _ = fixture_loader("litenext_k3.npz")
    model = kl.LiteNeXt(input_shape=x.shape[1:], kernel_size=3)
    kl.load_torch_weights(model, state)
    path = tmp_path / "litenext.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.count_params() == 701_601
    np.testing.assert_array_equal(np.asarray(restored.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)))


@pytest.mark.parametrize("shape,message", [
    ((100, 96, 3), "multiples of 16.*height=100.*112x96"),
    ((96, 40, 1), "multiples of 16.*width=40.*96x48"),
    ((96, 96, None), "number of input channels"),
    ((96, 96), "height, width, channels"),
])
def test_bad_input_shapes_name_the_rule(shape, message):
    with pytest.raises(ValueError, match=message):
        kl.LiteNeXt(input_shape=shape)


@pytest.mark.parametrize("kwargs", [dict(depths=(1, 1, 1)), dict(depths=(1, 0, 1, 1)), dict(num_classes=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        kl.LiteNeXt(input_shape=(32, 32, 3), **kwargs)


def test_grey_multiclass_deeper_variant():
    model = kl.LiteNeXt(input_shape=(None, None, 1), num_classes=3, width=8, depths=(2, 1, 1, 2))
    out = model(np.random.default_rng(0).random((2, 48, 80, 1), dtype=np.float32))
    assert out.shape == (2, 48, 80, 3)
    # every weighted layer has a reference name, and block indices follow the reference layout
    assert torch_key("stage1_block2_far_conv") == "stage1.1.conv"
    assert torch_key("stage4_block2_mix_norm") == "stage4.2.ln2.layernorm"
    assert all(torch_key(layer.name) for layer in model.layers if layer.weights)


def test_output_is_logits_at_input_resolution():
    model = kl.LiteNeXt(input_shape=(64, 96, 3))
    assert model.output_shape == (None, 64, 96, 1)
    assert model.get_layer("head").activation is keras.activations.linear


def test_importer_names_bad_tensors(fixture_loader):
    state, _, _ = fixture_loader("litenext_k3.npz")
    model = kl.LiteNeXt(input_shape=(64, 96, 3))  # k=7 model, k=3 weights
    with pytest.raises(ValueError, match=r"mis-shaped.*stage1\.0\.conv\.weight.*\(7, 7, 16, 1\).*\(3, 3, 16, 1\)"):
        kl.load_torch_weights(model, state)
    broken = dict(state)
    del broken["head.bias"]
    broken["extra.weight"] = np.zeros(3)
    model = kl.LiteNeXt(input_shape=(64, 96, 3), kernel_size=3)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"missing tensors: head\.bias.*unexpected tensors: extra\.weight"):
        kl.load_torch_weights(model, broken)
    # nothing was assigned
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_macs_match_the_reference_count():
    # 412.27 M (k=7) and 392.61 M (k=3): conv/linear MACs of the reference measured with forward hooks.
    assert abs(kl.count_macs(kl.LiteNeXt()) / 412.27e6 - 1) < 0.01
    assert abs(kl.count_macs(kl.LiteNeXt(input_shape=(None, None, 3), kernel_size=3), (256, 256, 3)) / 392.61e6 - 1) < 0.01
    with pytest.raises(ValueError, match="input_shape"):
        kl.count_macs(kl.LiteNeXt(input_shape=(None, None, 3)))


def test_jax_backend_parity():
    pytest.importorskip("jax")
    code = textwrap.dedent(
        """
        import keras, numpy as np
        assert keras.backend.backend() == "jax", keras.backend.backend()
        import keras_litenext as kl
        from conftest import load_fixture
        state, x, ref = load_fixture("litenext_k7.npz")
        model = kl.LiteNeXt(input_shape=x.shape[1:])
        kl.load_torch_weights(model, state)
        print("maxdiff", float(np.abs(np.asarray(model(x)) - ref).max()))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    diff = float(result.stdout.split("maxdiff")[-1])
    assert diff <= 1e-5


def test_init_is_pytorchs_and_keeps_gradients_finite_on_black_images():
    # PyTorch's Conv2d/Linear init (uniform +-1/sqrt(fan_in), biases included). With Keras'
    # zero biases an all-black patch gives equal channels, the channel LayerNorm sees zero
    # variance and the gradient explodes (1.6e11 here), which turned 192x192 training NaN.
    import tensorflow as tf

    from keras_litenext.losses import get_loss

    keras.utils.set_random_seed(0)
    model = kl.LiteNeXt(input_shape=(64, 64, 3))
    for name, fan_in in (("stem_conv", 2 * 2 * 3), ("stage1_block1_far_conv", 7 * 7), ("fusion_score", 2 * 128), ("head", 16)):
        layer = model.get_layer(name)
        bound = 1 / np.sqrt(fan_in)
        kernel, bias = layer.get_weights()
        assert bound * 0.8 < np.abs(kernel).max() <= bound, name
        assert 0 < np.abs(bias).max() <= bound, name
    x = np.zeros((2, 64, 64, 3), "float32")
    x[:, 20:40, 20:40] = 0.8
    y = (x[..., :1] > 0).astype("float32")
    with tf.GradientTape() as tape:
        loss = get_loss("mwl")(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert max(float(np.abs(g).max()) for g in grads) < 1e3
