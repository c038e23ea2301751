"""MedNeXt-lightweight (a reconstruction of Xue et al., PLOS ONE 2026; spec `mednext_style.md` §5):
sizes against the spec's analytic counts (§5.5), the shared LayerScale / StochasticDepth layers,
`.keras` round trips, and a short fit of each model. The registry contract (flat graph, JAX,
int8 conversion) is `tests/test_model_contract.py -k mednext`."""

import itertools

import keras
import numpy as np
import pytest

import keras_litenext as kl
from keras_litenext.layers import LayerScale, QuantLayerScale, StochasticDepth
from keras_litenext.models import registry
from keras_litenext.models.mednext import SIZES, MedNeXtClassifier, MedNeXtSeg
from keras_litenext.quantization.keras_rules import QuantConv2DTranspose
from keras_litenext.utils import count_macs

# Spec §5.5: (M parameters, G MACs at 224x224); classifier with 2 classes, segmenter with 9.
SPEC_CLASSIFIER = {"t": (2.99, 0.49), "s": (7.64, 1.27), "b": (15.23, 2.57)}
SPEC_SEGMENTER = {"t": (3.83, 0.87), "s": (9.48, 2.10), "b": (18.48, 4.02)}
SMALL = (32, 32, 3)
# At 32x32 the last stage is 1x1: its attention softmax runs over one position (Keras warns).
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning")


def block_params(c, r=4):
    """Spec §5.2: SEM `2C^2 + 47C`, linear attention `3C^2 + 7C + 1`, SD-FFN `2rC^2 + 11rC + 4C`."""
    return (2 * c * c + 47 * c) + (3 * c * c + 7 * c + 1) + (2 * r * c * c + 11 * r * c + 4 * c)


def analytic_params(size, num_classes, segmenter=False, decoder_depths=(2, 2, 2)):
    """The reconstruction's parameter count from the spec's layer formulas (§5.2-§5.4)."""
    widths, depths = SIZES[size]["widths"], SIZES[size]["depths"]
    c0, half = widths[0], widths[0] // 2
    n = (27 * half + half + 4 * half) + (9 * half * c0 + c0 + 4 * c0)  # stem convs + BatchNorms (4 weights each)
    n += sum(d * block_params(c) for c, d in zip(widths, depths))
    n += sum(2 * a + 4 * a * b + b for a, b in itertools.pairwise(widths))  # LN + 2x2/2 conv
    if not segmenter:
        return n + 2 * widths[-1] + widths[-1] * num_classes + num_classes  # LN + dense head
    for i, d in zip((2, 1, 0), decoder_depths):  # up 2x2/2, 1x1 fuse of the concat, blocks
        c, deeper = widths[i], widths[i + 1]
        n += (4 * deeper * c + c) + (2 * c * c + c) + d * block_params(c)
    return n + (16 * c0 * c0 + c0) + (c0 * num_classes + num_classes)  # final 4x4/4 up + 1x1 head


@pytest.mark.parametrize("size", ["t", "s", "b"])
def test_classifier_size_matches_spec(size):
    model = MedNeXtClassifier(size=size)
    assert model.name == f"mednext_cls_{size}" and model.output_shape == (None, 2)
    params = model.count_params()
    assert params == analytic_params(size, 2)
    params_m, macs_g = SPEC_CLASSIFIER[size]
    assert round(params / 1e6, 2) == params_m
    assert round(count_macs(model) / 1e9, 2) == macs_g


@pytest.mark.parametrize("size", ["t", "s", "b"])
def test_segmenter_size_matches_spec(size):
    model = MedNeXtSeg(input_shape=(224, 224, 3), num_classes=9, size=size)
    assert model.name == f"mednext_seg_{size}" and model.output_shape == (None, 224, 224, 9)
    params = model.count_params()
    assert params == analytic_params(size, 9, segmenter=True)
    params_m, macs_g = SPEC_SEGMENTER[size]
    assert round(params / 1e6, 2) == params_m
    assert count_macs(model) / 1e9 == pytest.approx(macs_g, rel=0.005)  # the spec gives "about"


def test_registry_names_and_sizes():
    cls, seg = registry.get_spec("mednext_cls"), registry.get_spec("mednext_seg")
    assert cls.tasks == ("classification",) and set(seg.tasks) == {"binary", "multiclass"}
    for name, spec in (("mednext_cls_s", cls), ("mednext_cls-b", cls), ("mednext_seg_t", seg)):
        inputs = keras.Input((4,))
        assert registry.spec_of(keras.Model(inputs, keras.layers.Dense(1)(inputs), name=name)) is spec
    default = kl.create_model("mednext_cls", input_shape=SMALL)  # the registry builds size "s" by default
    assert default.name == "mednext_cls" and default.count_params() == analytic_params("s", 2)
    custom = kl.create_model("mednext_cls", input_shape=SMALL, **cls.contract_kwargs)  # the contract's size
    assert custom.name == "mednext_cls" and custom.count_params() < analytic_params("t", 2) / 10
    with pytest.raises(ValueError, match="custom size"):
        MedNeXtClassifier(input_shape=SMALL, size={"widths": (8, 16), "depths": (1, 1)})
    with pytest.raises(ValueError, match="size must be one of"):
        MedNeXtClassifier(input_shape=SMALL, size="xl")
    with pytest.raises(ValueError, match=r"\b32\b"):
        MedNeXtSeg(input_shape=(48, 48, 3), size="t")


def test_custom_layers_config_round_trip():
    for layer in (
        LayerScale(0.25, name="ls"),
        QuantLayerScale(0.5, decay=0.9, name="qls"),
        StochasticDepth(0.3, seed=7, name="dp"),
        QuantConv2DTranspose(4, 2, strides=2, decay=0.95, name="qt"),
    ):
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config


def test_layer_scale_multiplies_per_channel_and_quantizes_exactly():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    layer = LayerScale(1.0)
    layer.build(x.shape)
    gamma = np.array([0.5, -2.0, 1e-3], "float32")
    layer.gamma.assign(gamma)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), x * gamma, rtol=1e-6)
    quant = QuantLayerScale.from_config({**layer.get_config(), "decay": 0.99})
    quant.build(x.shape)
    quant.gamma.assign(gamma)  # one int8 weight per channel: exactly on its grid
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quant(x)), x * gamma, rtol=1e-5, atol=1e-7)


def test_stochastic_depth_identity_at_inference_drops_in_training():
    x = np.ones((4000, 2, 2, 3), "float32")
    layer = StochasticDepth(0.3, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(len(x), -1)
    assert np.all(per_sample == per_sample[:, :1])  # the whole sample is kept or dropped
    kept = per_sample[:, 0] != 0
    np.testing.assert_allclose(per_sample[kept, 0], 1 / 0.7, rtol=1e-6)  # survivors rescaled
    assert abs(1 - kept.mean() - 0.3) < 0.03 and abs(y.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(StochasticDepth(0.0)(x, training=True)), x)


@pytest.fixture(scope="module", params=["classifier", "segmenter"])
def small_model(request):
    """`(model, kind)`: size "t" at 32x32 without drop-path, built once for the round trip and the fit."""
    keras.utils.set_random_seed(0)
    builder = MedNeXtClassifier if request.param == "classifier" else MedNeXtSeg
    return builder(input_shape=SMALL, size="t", drop_path_rate=0.0), request.param


def test_keras_round_trip_is_identical(small_model, tmp_path):
    model, _ = small_model
    images = np.random.default_rng(1).random((2, *SMALL), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.name == model.name and registry.spec_of(restored).name in ("mednext_cls", "mednext_seg")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(images, training=False)), expected)


def test_short_fit_lowers_the_loss(small_model):
    """Sparse CE for the classifier, BCE for the segmenter; eager steps (tracing a graph of
    ~400-650 layers and its gradient costs minutes, two eager steps seconds): the loss after
    one step is below the first."""
    model, kind = small_model
    rng = np.random.default_rng(0)
    images = rng.random((4, *SMALL), dtype=np.float32)
    if kind == "classifier":
        targets, loss = rng.integers(0, 2, size=(4,)), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        targets = (rng.random((4, *SMALL[:2], 1)) > 0.5).astype("float32")
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=True)
    losses = model.fit(images, targets, batch_size=4, epochs=2, verbose=0, shuffle=False).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_run_model_card_says_it_is_a_reconstruction(small_model, tmp_path):
    from keras_litenext.runs import TrainConfig
    from keras_litenext.train import model_card

    model, kind = small_model
    task = "classification" if kind == "classifier" else "binary"
    config = TrainConfig(model="mednext-cls-t" if kind == "classifier" else "mednext-seg-t", data=str(tmp_path / "data"),
                         output=str(tmp_path / "run"), task=task, class_names=["normal", "pneumonia"] if kind == "classifier" else None)
    config.resolve_classes()
    summary = {"params": model.count_params(), "task": task, "class_names": config.class_names}
    card = model_card(config, model, summary, "accuracy 0.9")
    assert "**A reconstruction, not the authors' model.**" in card and "Roy et al." in card and "PLOS ONE" in card
