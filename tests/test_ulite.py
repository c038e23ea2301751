"""U-Lite: parameter count, parity with the reference PyTorch model, serialization, shape rules,
the axial depthwise convolution, and the int8 form of its unfoldable BatchNorms."""

import keras
import numpy as np
import pytest
from keras import layers

import keras_litenext as kl
from keras_litenext import quantization as Q
from keras_litenext.layers import AxialDepthwiseConv
from keras_litenext.models.ulite import FEATURE_LAYERS, torch_key
from keras_litenext.quantization.keras_rules import QuantBatchNormalization


def n_weights(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture(scope="module")
def default_model():
    return kl.ULite()


def test_paper_parameter_count_and_macs(default_model):
    # PyTorch's 878,417 parameters; Keras also counts the 3,008 BatchNorm moving statistics.
    assert n_weights(default_model.trainable_weights) == 878_417
    assert n_weights(default_model.non_trainable_weights) == 3_008
    assert default_model.count_params() == 881_425
    assert kl.count_macs(default_model) == 736_509_952  # 0.7365 G, as measured on the reference
    assert default_model.output.dtype == "float32" and default_model.output.shape == (None, 256, 256, 1)


def test_registry_spec():
    spec = kl.get_spec("ulite")
    assert spec.builder is kl.ULite and spec.size_multiple == 32 and spec.tasks == ("binary", "multiclass")
    assert "2306.16103" in spec.reference and spec.feature_layers == FEATURE_LAYERS
    assert torch_key("stem_conv") == "conv_in" and torch_key("head") == "conv_out"
    assert torch_key("encoder3_axial_w") == "e3.dw.dw_w" and torch_key("bottleneck_axial2_h") == "b5.dw2.dw_h"
    assert torch_key("decoder1_out_conv") == "d1.pw2" and torch_key("decoder4_norm") == "d4.bn"
    assert torch_key("encoder1_pool") is None


def test_parity_with_reference(fixture_loader):
    state, x, ref = fixture_loader("ulite.npz")  # 1x128x160: the dilated bottleneck taps fall inside its 4x5 map
    model = kl.ULite(input_shape=x.shape[1:])
    kl.load_torch_weights(model, state)
    out = np.asarray(model.predict_on_batch(x))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5


def test_keras_round_trip_is_identical(tmp_path):
    keras.utils.set_random_seed(1)
    model = kl.ULite(input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BatchNorm statistics, so they must survive too
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)])
    x = rng.random((2, 64, 64, 3), dtype=np.float32)
    path = tmp_path / "ulite.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert kl.spec_of(restored).name == "ulite"
    np.testing.assert_array_equal(np.asarray(restored(x, training=False)), np.asarray(model(x, training=False)))


def test_grey_input_multiclass_and_mixed_precision():
    model = kl.ULite(input_shape=(32, 64, 1), num_classes=3)
    assert model.output.shape == (None, 32, 64, 3)
    assert model.get_layer("stem_conv").kernel.shape == (7, 7, 1, 16)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = kl.ULite(input_shape=(32, 32, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert half.get_layer("decoder1_act").output.dtype == "float16" and half.output.dtype == "float32"


@pytest.mark.parametrize("shape", [(48, 64, 3), (64, 100, 3)])
def test_size_that_is_not_a_multiple_of_32_is_refused(shape):
    with pytest.raises(ValueError, match=r"multiples of 32"):
        kl.ULite(input_shape=shape)
    kl.ULite(input_shape=(None, None, 3))  # free sizes are checked at run time by the caller


def test_feature_layers_are_the_skips_and_the_bottleneck():
    model = kl.ULite(input_shape=(64, 64, 3))
    shapes = [model.get_layer(n).output.shape[1:] for n in kl.get_spec("ulite").feature_layer_names(model)]
    assert shapes == [(64, 64, 16), (32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]


@pytest.mark.parametrize("kernel_size,dilation_rate,residual", [(7, 1, True), ((7, 5), (1, 2), True), (3, 3, False)])
def test_axial_depthwise_conv_equals_a_cross_shaped_kernel(kernel_size, dilation_rate, residual):
    """`x + DW_(kh x 1)(x) + DW_(1 x kw)(x)` is one depthwise conv whose (dilated) kernel is a
    cross with 1 added at its centre."""
    kh, kw = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
    dh, dw = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else dilation_rate
    rng = np.random.default_rng(3)
    channels = 5
    inputs = keras.Input((12, 14, channels))
    axial = keras.Model(inputs, AxialDepthwiseConv(kernel_size, dilation_rate, residual=residual, name="ax")(inputs))
    assert [layer.name for layer in axial.layers[1:]] == ["ax_h", "ax_w", "ax_add"]
    h, w = axial.get_layer("ax_h"), axial.get_layer("ax_w")
    h.set_weights([rng.normal(size=(kh, 1, channels, 1)), rng.normal(size=channels)])
    w.set_weights([rng.normal(size=(1, kw, channels, 1)), rng.normal(size=channels)])
    assert h.dilation_rate == (dh, 1) and w.dilation_rate == (1, dw)

    size_h, size_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    kernel = np.zeros((size_h, size_w, channels, 1), np.float32)
    kernel[::dh, size_w // 2] += h.get_weights()[0][:, 0]
    kernel[size_h // 2, ::dw] += w.get_weights()[0][0, :]
    kernel[size_h // 2, size_w // 2] += float(residual)
    dense = layers.DepthwiseConv2D((size_h, size_w), padding="same")
    dense.build((None, 12, 14, channels))
    dense.set_weights([kernel, h.get_weights()[1] + w.get_weights()[1]])

    x = rng.normal(size=(2, 12, 14, channels)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(axial(x)), np.asarray(dense(x)), atol=1e-5)


def test_axial_depthwise_conv_rejects_even_kernels_and_no_name():
    with pytest.raises(ValueError, match="odd"):
        AxialDepthwiseConv(6, name="ax")
    with pytest.raises(ValueError, match="name is required"):
        AxialDepthwiseConv(7)


def test_unfoldable_batchnorm_quantizes_as_a_depthwise_1x1():
    """U-Lite's skip and bottleneck BatchNorms follow an add / a concatenation: they become
    `QuantBatchNormalization` (the decoder's, after a 1x1 conv, are folded)."""
    rng = np.random.default_rng(4)
    model = kl.ULite(input_shape=(32, 32, 3))
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)])
    qat = Q.quantize_model(model)
    kept = sorted(layer.name for layer in qat.layers if isinstance(layer, layers.BatchNormalization))
    assert kept == ["bottleneck_norm"] + [f"encoder{i}_norm" for i in range(1, 6)]
    assert all(isinstance(qat.get_layer(name), QuantBatchNormalization) for name in kept)

    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    reference = np.asarray(model(x, training=False))
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(np.asarray(qat(x, training=False)), reference, atol=1e-4)

    layer = qat.get_layer("encoder2_norm")
    config = layer.get_config()
    clone = QuantBatchNormalization.from_config(config)
    assert clone.get_config() == config and config["epsilon"] == 1e-5 and config["momentum"] == 0.9
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is QuantBatchNormalization and again.get_config() == config


def test_quant_batchnorm_kernel_is_exact_in_int8():
    """One weight per channel: per-channel int8 quantization keeps it exactly."""
    rng = np.random.default_rng(5)
    inputs = keras.Input((6, 6, 4))
    a, b = layers.Conv2D(4, 1, name="a")(inputs), layers.Conv2D(4, 1, name="b")(inputs)
    model = keras.Model(inputs, layers.BatchNormalization(epsilon=1e-5, name="bn")(layers.Add(name="add")([a, b])))
    model.get_layer("bn").set_weights([rng.uniform(0.01, 5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.1, 9, 4)])
    qat = Q.quantize_model(model)
    x = rng.random((2, 6, 6, 4), dtype=np.float32)
    add_out = keras.Model(model.input, model.get_layer("add").output)(x)
    bn = qat.get_layer("bn")
    assert bn.quant_mode == "quantize"
    np.testing.assert_allclose(np.asarray(bn(add_out)), np.asarray(model.get_layer("bn")(add_out, training=False)), atol=1e-5)
