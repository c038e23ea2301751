"""LV-UNet: parity of both forms with the reference PyTorch code, re-parameterisation, parameter
counts, `.keras` round trips, the deep-training schedule, input sizes and the ImageNet trunk."""

import pathlib

import keras
import numpy as np
import pytest

import keras_litenext as kl
from keras_litenext import quantization as Q
from keras_litenext.models.lvunet import (
    DeepTrainingSchedule,
    FusibleConv,
    LVUNet,
    deep_training_slope,
    fusible_layers,
    reparameterize,
    set_slope,
)

# The reference's act_learn at the last of 300 epochs, 1 - cos(pi/2 * 299/300): the fixture's slope.
FIXTURE_SLOPE = 0.9947640361685804
SHAPE = (128, 256, 3)
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TRUNK_FEATURES = ("expanded_conv_1_project_bn", "expanded_conv_4_add", "expanded_conv_8_add")


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def load(name):
    """A reference fixture as (state_dict, NHWC input, NHWC output); the input is 1x3x128x256 NCHW."""
    state = dict(np.load(FIXTURES / name))
    return state, state.pop("__input__").transpose(0, 2, 3, 1), state.pop("__output__").transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def forms():
    """`(train model at the fixture's slope, deploy model, input, train output, deploy output)`."""
    train_state, x, train_out = load("lvunet_train.npz")
    deploy_state, _, deploy_out = load("lvunet_deploy.npz")
    train = kl.load_torch_weights(LVUNet(input_shape=SHAPE), train_state)
    set_slope(train, FIXTURE_SLOPE)
    deploy = kl.load_torch_weights(LVUNet(input_shape=SHAPE, reparameterized=True), deploy_state)
    return train, deploy, x, train_out, deploy_out


def test_parameter_counts(forms):
    train, deploy, *_ = forms
    # PyTorch's counts: its parameters are the trainable weights; BN statistics are buffers.
    assert count(train.trainable_weights) == 934_545
    assert count(train.non_trainable_weights) == 14_064 + 10  # BN statistics + one slope per FusibleConv
    assert count(deploy.trainable_weights) == 513_585
    assert count(deploy.non_trainable_weights) == 5_200


def test_macs_of_both_forms_at_256():
    # The spec's counts at 256x256 (convolutions and linear layers, no biases): training form
    # 0.1746 G (the fusible layers report their own convolutions), deploy form 0.1571 G.
    train = LVUNet()
    assert kl.count_macs(train) == 174_580_480
    assert kl.count_macs(kl.reparameterize(train)) == 157_070_080


def test_train_form_matches_reference(forms):
    train, _, x, train_out, *_ = forms
    assert np.abs(predict(train, x) - train_out).max() <= 1e-5


def test_deploy_form_matches_reference(forms):
    _, deploy, x, _, deploy_out = forms
    assert np.abs(predict(deploy, x) - deploy_out).max() <= 1e-5


def test_reparameterize_gives_the_reference_deploy_form(forms):
    train, deploy, x, train_out, deploy_out = forms
    set_slope(train, 1.0)
    try:
        fused = reparameterize(train)
        assert np.abs(predict(fused, x) - deploy_out).max() <= 1e-5
        assert np.abs(predict(train, x) - deploy_out).max() <= 1e-5  # the training form at slope 1
    finally:
        set_slope(train, FIXTURE_SLOPE)
    # the same model LVUNet(reparameterized=True) builds, with the reference's fused weights
    assert [(l.name, type(l)) for l in fused.layers] == [(l.name, type(l)) for l in deploy.layers]
    assert fused.name == train.name and kl.spec_of(fused).name == "lvunet"
    for name in ("stage1_conv", "stage3_act", "up7_conv", "up7_act"):
        ours, ref = fused.get_layer(name).get_weights(), deploy.get_layer(name).get_weights()
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    assert reparameterize(fused) is fused  # already deployed
    assert kl.model_to_deploy is reparameterize and kl.get_spec("lvunet").deploy is reparameterize
    # the reference's schedule never reaches 1: its deploy form is not the trained network
    assert np.abs(deploy_out - train_out).max() > 1e-2


def test_keras_round_trip_of_both_forms(forms, tmp_path):
    train, deploy, x, *_ = forms
    for form, model in (("train", train), ("deploy", deploy)):
        path = tmp_path / f"lvunet_{form}.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        assert [type(l) for l in restored.layers] == [type(l) for l in model.layers]
        np.testing.assert_array_equal(predict(restored, x), predict(model, x))
    restored = keras.saving.load_model(tmp_path / "lvunet_train.keras")
    assert {float(l.slope.numpy()) for l in fusible_layers(restored)} == {float(np.float32(FIXTURE_SLOPE))}


def test_train_form_quantizes_only_after_reparameterizing(forms):
    train, *_ = forms
    with pytest.raises(Q.UnsupportedLayerError, match="reparameterize"):
        Q.quantize_model(train)


def test_deep_training_schedule_ends_at_one_and_validates_at_one():
    epochs = 4
    assert [deep_training_slope(e, epochs) for e in range(epochs)] == pytest.approx(
        [1 - np.cos(np.pi / 2 * (e + 1) / epochs) for e in range(epochs)]
    )
    assert deep_training_slope(epochs - 1, epochs) == 1.0 and deep_training_slope(epochs + 5, epochs) == 1.0

    # a fusible layer inside a nested model, as in SeRP's training graph
    inputs = keras.Input((4, 4, 2))
    inner = keras.Model(inputs, FusibleConv(2, name="blk_fusible_conv")(inputs), name="inner")
    outer_in = keras.Input((4, 4, 2))
    outer = keras.Model(outer_in, keras.layers.Conv2D(1, 1)(inner(outer_in)), name="outer")
    (layer,) = fusible_layers(outer)

    seen = {"train": [], "test": []}

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen["train"].append(float(layer.slope.numpy()))

        def on_test_batch_begin(self, batch, logs=None):
            seen["test"].append(float(layer.slope.numpy()))

    data = np.random.default_rng(0).random((4, 4, 4, 2), dtype=np.float32)
    outer.compile("sgd", "mse")
    outer.fit(data, data[..., :1], validation_data=(data, data[..., :1]), epochs=epochs, batch_size=4, verbose=0,
              callbacks=[DeepTrainingSchedule(epochs), Probe()])
    expected = [np.float32(deep_training_slope(e, epochs)) for e in range(epochs)]
    assert seen["train"] == pytest.approx(expected, abs=0) and seen["train"][-1] == 1.0
    assert seen["test"] == [1.0] * epochs  # validation scores the deployable network
    assert float(layer.slope.numpy()) == 1.0

    # a compiled function reads the variable, so a new slope takes effect without retracing
    set_slope(outer, 0.0)
    relu = outer.predict(data - 0.5, verbose=0)
    set_slope(outer, 1.0)
    linear = outer.predict(data - 0.5, verbose=0)
    assert np.abs(relu - linear).max() > 1e-4
    np.testing.assert_allclose(linear, predict(outer, data - 0.5), atol=1e-6)


def test_input_size_must_be_a_multiple_of_128():
    with pytest.raises(ValueError, match=r"\b128\b"):
        LVUNet(input_shape=(192, 256, 3))
    assert LVUNet(input_shape=(None, None, 3)).output_shape == (None, None, None, 1)


def test_imagenet_trunk_maps_from_keras_mobilenet_v3(tmp_path):
    keras.utils.set_random_seed(1)
    ref = keras.applications.MobileNetV3Large(input_shape=(128, 128, 3), include_top=False, weights=None)
    rng = np.random.default_rng(0)
    for layer in ref.layers:  # non-trivial BatchNorms, so that every tensor of the mapping counts
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([1 + 0.1 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape),
                               0.1 * rng.standard_normal(shape), rng.uniform(0.5, 1.5, shape)])
    weights_h5, legacy_h5 = tmp_path / "mnv3.weights.h5", tmp_path / "mnv3.h5"
    ref.save_weights(weights_h5)
    ref.save(legacy_h5)
    x = rng.random((2, 128, 128, 3), dtype=np.float32)

    def features(model, images):
        return [np.asarray(f) for f in keras.Model(model.input, [model.get_layer(n).output for n in TRUNK_FEATURES])(images)]

    expected = features(ref, x * 255.0)  # Keras' model rescales [0, 255] itself
    for path in (weights_h5, legacy_h5):
        model = LVUNet(input_shape=(128, 128, 3), padding="keras", backbone_weights=path)  # preprocessing="auto": [-1, 1]
        assert model.get_layer("rescaling") is not None
        for ours, theirs in zip(features(model, x), expected):
            assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max())
    # what the padding costs: the same weights with torchvision's symmetric padding
    symmetric = features(LVUNet(input_shape=(128, 128, 3), backbone_weights=weights_h5), x)
    asymmetric = features(model, x)
    gaps = [float(np.abs(a - b).max()) for a, b in zip(symmetric, asymmetric)]
    print("max |delta| symmetric vs asymmetric padding at e1, e2, e3:", gaps)
    assert all(g > 1e-3 for g in gaps)

    with pytest.raises(FileNotFoundError, match="no_such_file.h5"):
        LVUNet(backbone_weights=tmp_path / "no_such_file.h5")


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A stand-in for Keras' ImageNet file: a seeded `MobileNetV3Large(include_top=False)` with
    non-trivial BatchNorms saved under Keras' file name, and its sha256 and md5."""
    import hashlib

    from keras_litenext.models.lvunet import weights as W

    keras.utils.set_random_seed(3)
    ref = keras.applications.MobileNetV3Large(input_shape=(224, 224, 3), include_top=False, weights=None)
    rng = np.random.default_rng(3)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([1 + 0.1 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape),
                               0.1 * rng.standard_normal(shape), rng.uniform(0.5, 1.5, shape)])
    path = tmp_path_factory.mktemp("origin") / W.FILE_NAME
    ref.save(path)
    data = path.read_bytes()
    return path, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


@pytest.fixture
def origin(tmp_path, monkeypatch):
    """`(serve, keras_home)`: `serve(data, file_hash)` puts `data` at a `file://` origin that the
    module fetches from with `file_hash` expected; downloads go to a temporary KERAS_HOME."""
    from keras_litenext.models.lvunet import weights as W

    keras_home = tmp_path / "keras_home"  # not created: the module must create it
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setattr(W, "BASE_WEIGHT_PATH", served.as_uri() + "/")

    def serve(data, file_hash):
        monkeypatch.setattr(W, "FILE_HASH", file_hash)
        if data is None:
            (served / W.FILE_NAME).unlink(missing_ok=True)
        else:
            (served / W.FILE_NAME).write_bytes(data)
        return served.as_uri() + "/" + W.FILE_NAME

    return serve, keras_home


def assert_one_line_naming(err, url):
    message = str(err.value)
    assert url in message and "\n" not in message and "Traceback" not in message
    assert "backbone_weights=" in message  # how to pass a local file instead
    assert err.value.__cause__ is None and err.value.__suppress_context__


def trunk_matches(model, source):
    trunk = [layer for layer in model.layers if layer.weights and layer.name.startswith(("conv", "expanded_conv"))]
    assert len(trunk) > 40
    return all(np.array_equal(a, b) for layer in trunk
               for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()))


def test_imagenet_backbone_is_fetched_once_checked_and_cached(imagenet_file, origin):
    from keras_litenext.models.lvunet import weights as W

    path, sha256, _ = imagenet_file
    serve, keras_home = origin
    serve(path.read_bytes(), sha256)
    source = keras.applications.MobileNetV3Large(input_shape=(224, 224, 3), include_top=False, weights=None)
    source.load_weights(path)
    model = LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet")
    assert trunk_matches(model, source)
    assert not trunk_matches(LVUNet(input_shape=(128, 128, 3)), source)
    assert model.get_layer("rescaling") is not None  # preprocessing="auto" -> "keras", as with a file
    cached = keras_home / "models" / W.FILE_NAME
    assert cached.read_bytes() == path.read_bytes()
    serve(None, sha256)  # the origin is gone: the cache serves
    assert trunk_matches(LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet"), source)


def test_imagenet_backbone_refuses_a_file_of_another_hash(imagenet_file, origin):
    from keras_litenext.models.lvunet import weights as W

    path, _, md5 = imagenet_file  # Keras' own hashes are md5
    serve, keras_home = origin
    good = path.read_bytes()
    url = serve(good + b"tampered", md5)
    with pytest.raises(ValueError, match="hash") as err:
        LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet")
    assert_one_line_naming(err, url)
    cached = keras_home / "models" / W.FILE_NAME
    assert not cached.exists()  # the bad download is not kept
    cached.write_bytes(good + b"stale")  # nor is a bad file in the cache used: with no origin, it fails
    serve(None, md5)
    with pytest.raises(OSError, match="could not download"):
        LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet")
    serve(good, md5)  # the good file is fetched again
    source = keras.applications.MobileNetV3Large(input_shape=(224, 224, 3), include_top=False, weights=None)
    source.load_weights(path)
    assert trunk_matches(LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet"), source)


def test_imagenet_backbone_without_network_is_one_line_naming_the_url(origin, monkeypatch):
    from keras_litenext.models.lvunet import weights as W

    _, keras_home = origin
    monkeypatch.setattr(W, "BASE_WEIGHT_PATH", "file:///nonexistent/keras-applications/mobilenet_v3/")
    url = W.imagenet_weights_url()
    with pytest.raises(OSError) as err:
        LVUNet(input_shape=(128, 128, 3), backbone_weights="imagenet")
    assert_one_line_naming(err, url)
    assert not (keras_home / "models" / W.FILE_NAME).exists()
    # Keras' own origin and hash, as keras.applications.MobileNetV3Large(include_top=False) uses them
    from keras.src.applications import mobilenet_v3

    monkeypatch.undo()
    assert W.imagenet_weights_url() == mobilenet_v3.BASE_WEIGHT_PATH + "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
    assert W.FILE_HASH == mobilenet_v3.WEIGHTS_HASHES["large_224_1.0_float"][1]


def test_fit_saves_the_deploy_form_scored_as_validated(tmp_path):
    """`fit --model lvunet` adds the schedule itself and writes the deploy form as best.keras;
    validation ran at slope 1, so the deploy model reproduces the best epoch's val Dice."""
    import csv

    import cv2

    from keras_litenext.runs import Run
    from keras_litenext.train import TrainConfig, build_datasets, train

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(12):
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, tuple(int(c) for c in rng.integers(16, 48, 2)), int(rng.integers(6, 14)), 255, -1)
        image = rng.normal(40, 10, (64, 64, 3)) + (mask[..., None] > 0) * 150
        cv2.imwrite(str(tmp_path / "data" / "images" / f"{i}.png"), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "data" / "masks" / f"{i}.png"), mask)
    config = TrainConfig(data=str(tmp_path / "data"), output=str(tmp_path / "run"), model="lvunet", image_size=128,
                         epochs=2, batch_size=4, verbose=0, mwl_kernel=3, split=(0.5, 0.25, 0.25))
    train(config)
    best = keras.saving.load_model(tmp_path / "run" / "best.keras")
    assert not fusible_layers(best) and count(best.trainable_weights) == 513_585
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        best_val = max(float(row["val_dice"]) for row in csv.DictReader(f))
    run = Run.open(str(tmp_path / "run"))
    _, val_ds = build_datasets(run.config, run.split_arrays(*run.load_data()[:3]))
    best.compile(loss=None, metrics=run.task.metrics())
    scores = best.evaluate(val_ds, return_dict=True, verbose=0)
    assert abs(scores["dice"] - best_val) < 1e-4, (scores["dice"], best_val)
