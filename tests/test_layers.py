"""The shared layers: math against independent references, and serialization."""

import keras
import numpy as np
import pytest

from keras_litenext.layers import ChannelLayerNorm, ConvNormAct
from keras_litenext.models.litenext.litenext_layers import (
    LGEMixerBlock,
    ScaleWeightedSum,
)

RNG = np.random.default_rng(0)


def test_channel_layer_norm_matches_stock_layer_norm():
    x = RNG.normal(2.0, 3.0, (2, 5, 7, 12)).astype("float32")
    gamma, beta = RNG.normal(size=12).astype("float32"), RNG.normal(size=12).astype("float32")
    ours = ChannelLayerNorm(epsilon=1e-5)
    ours.build(x.shape)
    ours.set_weights([gamma, beta])
    mean = x.mean(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(np.asarray(ours(x)), expected, atol=2e-5)
    stock = keras.layers.LayerNormalization(epsilon=1e-5)
    stock.build(x.shape)
    stock.set_weights([gamma, beta])
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(stock(x)), atol=2e-5)


def test_channel_layer_norm_half_precision_stays_accurate():
    x = RNG.normal(3.0, 1e-2, (1, 4, 4, 64)).astype("float16").astype("float32")
    layer = ChannelLayerNorm(dtype="mixed_float16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    out = np.asarray(out).astype("float32")
    # a float16 variance of values ~3 +- 0.01 would lose most of its digits; float32 statistics do not
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, atol=5e-3)


def test_scale_weighted_sum_matches_numpy():
    weights = RNG.random((2, 3, 4)).astype("float32")
    values = [RNG.normal(size=(2, 5, 6, 4)).astype("float32") for _ in range(3)]
    expected = sum(weights[:, i, None, None, :] * values[i] for i in range(3))
    np.testing.assert_allclose(np.asarray(ScaleWeightedSum()([weights, *values])), expected, atol=1e-6)
    with pytest.raises(ValueError, match="2 feature maps but weights for 3"):
        ScaleWeightedSum()([weights, *values[:2]])


@pytest.mark.parametrize("layer", [ChannelLayerNorm(epsilon=1e-3, name="n"), ScaleWeightedSum(name="s")])
def test_layers_serialize(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


def test_lgemixer_block_structure():
    inputs = keras.Input((16, 16, 8))
    outputs = LGEMixerBlock(8, kernel_size=5, name="b")(inputs)
    model = keras.Model(inputs, outputs)
    names = [layer.name for layer in model.layers]
    for expected in ["b_local_conv", "b_far_conv", "b_far_norm", "b_add1", "b_add2", "b_mix_act"]:
        assert expected in names
    assert model.get_layer("b_far_conv").kernel.shape == (5, 5, 8, 1)
    # 10C^2 + k^2 C + 9C parameters (the reference's count for one block)
    assert model.count_params() == 10 * 64 + 25 * 8 + 9 * 8


def test_conv_norm_act_is_conv_then_norm_then_exact_gelu():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, ConvNormAct(4, 3, name="u")(inputs))
    x = RNG.random((1, 8, 8, 3)).astype("float32")
    h = np.asarray(model.get_layer("u_norm")(model.get_layer("u_conv")(x)))
    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    np.testing.assert_allclose(np.asarray(model(x)), gelu(h), atol=1e-5)


def test_conv_norm_act_norm_and_activation_choices():
    inputs = keras.Input((8, 8, 3))
    x = ConvNormAct(4, 3, norm="batch", activation="hard_swish", use_bias=False, name="mb")(inputs)
    x = ConvNormAct(4, 1, norm=None, activation=None, name="plain")(x)
    model = keras.Model(inputs, x)
    assert isinstance(model.get_layer("mb_norm"), keras.layers.BatchNormalization)
    assert not model.get_layer("mb_conv").use_bias
    assert {layer.name for layer in model.layers} >= {"mb_act", "plain_conv"}
    assert "plain_norm" not in {layer.name for layer in model.layers}
    with pytest.raises(ValueError, match="norm must be one of"):
        ConvNormAct(4, 1, norm="group", name="bad")
