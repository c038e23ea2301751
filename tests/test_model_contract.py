"""The contract every registered model family keeps; a new family is checked by registering it.

For each `list_models()` entry: it builds at its default and at a small size (with the spec's
`contract_kwargs`, a narrow configuration of a large family), is one flat
functional graph of standard or registered layers, survives a `.keras` round trip bit for bit,
runs under the JAX backend, rejects a size that breaks its `size_multiple` with a message that
names the multiple, has the feature layers its spec names, has a PyTorch name for every
weighted layer when the spec maps them, and converts its deploy form (`spec.deploy_form`) to a
full-int8 TFLite file through `quantize_model` + `calibrate` with no float op left.
"""

import json
import os
import textwrap

import keras
import numpy as np
import pytest
from conftest import run_python

import keras_litenext as kl
from keras_litenext import quantization as Q
from keras_litenext.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENTATION_TASKS = {"binary", "multiclass"}
JAX_TOLERANCE = 1e-5  # largest |JAX - TensorFlow| output difference, relative to the largest |output|


def small_shape(spec):
    """The smallest square input the contract runs at: two output strides, at least 32 pixels."""
    side = max(2 * spec.size_multiple, 32)
    side = -(-side // spec.size_multiple) * spec.size_multiple
    return (side, side, spec.default_input_shape[-1])


def perturb_weights(model, seed=0):
    """Seeded noise on every float weight, BatchNorm statistics included, so that no weight keeps
    its initial value (zeros, ones, a symmetric init): a check on such weights can miss a wrong
    bias, gamma or moving mean. Variances stay positive (scaled by e^noise)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if not str(w.dtype).startswith("float"):
            continue
        value = keras.ops.convert_to_numpy(w.value).astype(np.float64)
        noise = rng.normal(size=value.shape)
        if "variance" in w.path:
            value = value * np.exp(0.3 * noise)
        else:
            value = value * (1.0 + 0.1 * rng.normal(size=value.shape)) + 0.05 * noise
        w.assign(value.astype(w.dtype))
    return model


@pytest.fixture(scope="module", params=kl.list_models())
def case(request, tmp_path_factory):
    """`(spec, model at the small size, images, outputs, saved .keras path)` of one family."""
    spec = kl.get_spec(request.param)
    keras.utils.set_random_seed(0)
    model = kl.create_model(spec.name, input_shape=small_shape(spec), **spec.contract_kwargs)
    images = np.random.default_rng(0).random((4, *small_shape(spec)), dtype=np.float32)
    outputs = keras.ops.convert_to_numpy(model(images, training=False))
    path = tmp_path_factory.mktemp(spec.name) / f"{spec.name}.keras"
    model.save(path)
    return spec, model, images, outputs, path


def test_spec_is_complete(case):
    spec, model, *_ = case
    assert spec.description and spec.tasks and spec.size_multiple >= 1
    assert registry.get_spec(spec.name) is spec and spec.name in kl.list_models(task=spec.tasks[0])
    assert registry.spec_of(model) is spec


def test_builds_at_default_and_small_size(case):
    spec, _, images, outputs, _ = case
    default = kl.create_model(spec.name)
    assert tuple(default.input_shape[1:]) == tuple(spec.default_input_shape)
    assert registry.spec_of(default) is spec and default.name == spec.name
    assert np.isfinite(outputs).all() and outputs.shape[0] == len(images)
    if set(spec.tasks) <= SEGMENTATION_TASKS:  # per-pixel logits at the input resolution
        assert outputs.shape[1:3] == images.shape[1:3]


def test_flat_graph_of_standard_or_registered_layers(case):
    _, model, *_ = case
    for layer in model.layers:
        assert not isinstance(layer, keras.Model), f"{layer.name} is a nested model"
        cls = type(layer)
        assert cls.__module__.startswith("keras.") or ">" in keras.saving.get_registered_name(cls), (
            f"{layer.name} ({cls.__name__}) is neither a Keras layer nor a registered serializable"
        )
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))


def test_keras_round_trip_is_identical(case):
    spec, _, images, outputs, path = case
    restored = keras.saving.load_model(path)
    assert registry.spec_of(restored) is spec
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(images, training=False)), outputs)


@pytest.fixture(scope="module")
def jax_outputs(tmp_path_factory):
    """`{family: (TensorFlow outputs, JAX outputs)}` of every family's model at the small size on
    non-initial weights (seeded noise on every weight), saved as `.keras` and run under JAX in one
    process for all families (a JAX process starts in ~15 s; one per family cost a minute)."""
    pytest.importorskip("jax")
    folder = tmp_path_factory.mktemp("jax")
    expected = {}
    for name in kl.list_models():
        spec = kl.get_spec(name)
        keras.utils.set_random_seed(0)
        model = perturb_weights(kl.create_model(name, input_shape=small_shape(spec), **spec.contract_kwargs))
        images = np.random.default_rng(0).random((4, *small_shape(spec)), dtype=np.float32)
        expected[name] = keras.ops.convert_to_numpy(model(images, training=False))
        model.save(folder / f"{name}.keras")
        np.save(folder / f"{name}_images.npy", images)
    code = textwrap.dedent(
        f"""
        import os, jax, keras, numpy as np
        assert keras.backend.backend() == "jax", keras.backend.backend()
        import keras_litenext as kl

        def run(model, x):  # one XLA program (eager JAX compiles op by op, ~5x slower here)
            f = jax.jit(lambda v, t, x: model.stateless_call(v, t, x, training=False)[0])
            return np.asarray(f([w.value for w in model.trainable_variables], [w.value for w in model.non_trainable_variables], x))

        folder = {str(folder)!r}
        for name in {sorted(expected)!r}:
            images = np.load(os.path.join(folder, name + "_images.npy"))
            np.save(os.path.join(folder, name + "_jax.npy"), run(keras.saving.load_model(os.path.join(folder, name + ".keras")), images))
            fresh = kl.create_model(name, input_shape=images.shape[1:], **kl.get_spec(name).contract_kwargs)
            assert np.isfinite(run(fresh, images)).all(), name
        """
    )
    # loading compiles one random-initialiser program per weight shape (~150 here): at -O0
    # (conftest.JAX_TEST_XLA_FLAGS)
    result = run_python(code, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: (out, np.load(folder / f"{name}_jax.npy")) for name, out in expected.items()}


def test_runs_under_jax(case, jax_outputs):
    """The saved model under JAX, on non-initial weights, against TensorFlow's outputs at a tight
    tolerance."""
    outputs, under_jax = jax_outputs[case[0].name]
    # float32 on both backends, other kernels and op orders: 1e-5 of the output's scale (measured
    # up to 1.1e-6 on these weights; one weight tensor off by 1e-4 of itself fails it)
    scale = float(np.abs(outputs).max())
    np.testing.assert_allclose(under_jax, outputs, rtol=0, atol=JAX_TOLERANCE * scale)


def test_size_that_breaks_the_multiple_names_it(case):
    spec, *_ = case
    if spec.size_multiple == 1:
        pytest.skip("any size is valid")
    side, _, channels = small_shape(spec)
    with pytest.raises(ValueError, match=rf"\b{spec.size_multiple}\b"):
        kl.create_model(spec.name, input_shape=(side + 1, side, channels), **spec.contract_kwargs)


def test_feature_layers_exist_shallow_to_deep(case):
    spec, model, images, *_ = case
    names = spec.feature_layer_names(model)
    assert names
    features = registry.feature_extractor(model)(images[:1])
    features = features if isinstance(features, (list, tuple)) else [features]
    sizes = [int(np.prod(f.shape[1:-1])) for f in features]
    assert len(features) == len(names) and sizes == sorted(sizes, reverse=True)


def test_every_weighted_layer_has_a_torch_name(case):
    spec, model, *_ = case
    if spec.torch_key is None:
        pytest.skip("no PyTorch reference")
    keys = {layer.name: spec.torch_key(layer.name) for layer in model.layers if layer.weights}
    assert all(keys.values()), [name for name, key in keys.items() if not key]
    assert len(set(keys.values())) == len(keys)


_INT8_FILES = {}


def real_pixels(side, count=4):
    """`count` bundled nuclei images (DSB 2018, real) as `(N, side, side, 3)` uint8 RGB."""
    import cv2

    from keras_litenext.data import sample_data_dir

    folder = os.path.join(sample_data_dir(), "images")
    return np.stack([cv2.resize(cv2.imread(os.path.join(folder, f)), (side, side), interpolation=cv2.INTER_AREA)[..., ::-1]
                     for f in sorted(os.listdir(folder))[:count]])


def int8_file(case):
    """The family's full-int8 file at MediaPipe's I/O (uint8 in, float32 out), converted once
    (a one-logit segmenter with its last bias centred on the images' median logit)."""
    from keras_litenext import litert as tflite

    spec, model, images, *_ = case
    if spec.name not in _INT8_FILES:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        deploy = spec.deploy_form(copy)
        if int(deploy.outputs[0].shape[-1]) == 1:
            # one logit: at initial weights it has one sign on every pixel, and a constant mask
            # would agree with anything; the last bias is moved so that half the pixels are foreground
            last = [layer for layer in deploy.layers if getattr(layer, "bias", None) is not None][-1]
            logits = keras.ops.convert_to_numpy(deploy(real_pixels(images.shape[1]) / 255.0, training=False))
            last.bias.assign(last.bias - float(np.median(logits)))
        qat = Q.calibrate(Q.quantize_model(deploy), images, batch_size=2)  # what the converter gets
        assert Q.uncalibrated_quantizers(qat) == []
        _INT8_FILES[spec.name] = tflite.convert(qat, "int8", representative_data=(images * 255).astype(np.uint8), io="uint8_float",
                                                int8_mode="strict")
    return _INT8_FILES[spec.name]


def test_quantizes_and_converts_to_full_int8(case):
    pytest.importorskip("tensorflow")
    from keras_litenext import litert as tflite

    strict = int8_file(case)
    info = tflite.inspect_tflite(strict)
    assert sum(info["float_ops"].values()) == 0, info["float_ops"]
    assert info["input"]["dtype"] == "uint8" and info["output"]["dtype"] == "float32"
    assert info["ops"][0]["op"] == "QUANTIZE" and info["ops"][0]["inputs"] == ["uint8"]  # uint8 -> int8 in
    assert info["ops"][-1]["op"] == "DEQUANTIZE" and info["ops"][-1]["outputs"] == ["float32"]  # int8 -> float32 out
    # The default ("cpu") file: XNNPACK's float-only ops as float islands, the same values as the
    # strict file's int8 kernels up to their rounding, and one XNNPACK partition.
    cpu = tflite.float_islands(strict)
    islands = tflite.inspect_tflite(cpu)["float_ops"]
    assert set(islands) <= {*tflite.ISLAND_OPS, *tflite.WINDOW_OPS}
    assert set(info["op_counts"]) & set(tflite.ISLAND_OPS) <= set(islands)  # every float-only op is an island
    assert tflite.xnnpack_accepts(strict) and tflite.xnnpack_accepts(cpu)
    assert tflite.xnnpack_partitions(cpu)["partitions"] == 1, tflite.xnnpack_partitions(cpu)
    images = case[2]
    a, b = tflite.run_tflite(strict, images, xnnpack=False), tflite.run_tflite(cpu, images, xnnpack=False)
    step = float(np.std(a)) + 1e-6
    assert np.mean(np.abs(a - b)) <= 0.05 * step, (np.mean(np.abs(a - b)), step)


def test_mediapipe_task_loads_the_int8_file_and_agrees_with_litert(case, tmp_path):
    """MediaPipe's own task (ImageSegmenter / ImageClassifier) on the file with its metadata, on
    real images (the bundled DSB 2018 nuclei), against our LiteRT run of the same file."""
    from keras_litenext import litert as tflite
    from keras_litenext.export import metadata

    if not metadata.mediapipe_available():
        pytest.skip(f"MediaPipe's metadata writers are not installed ({metadata.MEDIAPIPE_HINT})")
    spec, model, images, *_ = case
    classification = "classification" in spec.tasks
    k = int(model.outputs[0].shape[-1])
    names = [f"class{i}" for i in range(k)] if classification else (["background", "foreground"] if k == 1 else
                                                                      ["background"] + [f"class{i}" for i in range(1, k)])
    data, _ = metadata.add_metadata(int8_file(case), names, "classification" if classification else "segmentation", k,
                                    spec.name, "a test file", input_dtype="uint8")
    path = tmp_path / f"{spec.name}.tflite"
    tflite.write_bytes(path, data)
    pixels = real_pixels(images.shape[1])
    logits = tflite.run_tflite(path, pixels)
    result = metadata.check_mediapipe(path, pixels, "classification" if classification else "segmentation")
    assert result["labels"] == metadata.output_labels(names, "classification" if classification else "segmentation", k)
    if classification:
        assert np.array_equal(result["top"], np.argmax(logits, axis=-1))
    else:
        labels = np.where(logits[..., 0] > 0, 0, 255) if k == 1 else np.argmax(logits, axis=-1)  # MediaPipe's category mask
        assert len(np.unique(labels)) > 1, "a constant mask checks nothing"
        assert np.mean(result["category"] == labels) >= 0.999


def test_browser_runs_the_default_int8_file_as_litert_does(case, tmp_path):
    """The family's default int8 file (XNNPACK's float-only ops as float islands) with its
    metadata, in the web page in headless Chromium (`keras-litenext web --check`), on real
    images: the class masks agree with LiteRT's on >= 99.5 % of pixels, a classifier's top class
    on every image (the file `int8_file` converted, with its float islands as the export makes them)."""
    import cv2

    from keras_litenext import litert as tflite
    from keras_litenext.export import metadata
    from keras_litenext.web import check

    if check.missing() is not None:
        pytest.skip(check.missing())
    spec, model, images, *_ = case
    cpu = tflite.float_islands(int8_file(case))
    classification = "classification" in spec.tasks
    kind, k = ("classification" if classification else "segmentation"), int(model.outputs[0].shape[-1])
    names = [f"class{i}" for i in range(max(k, 2))]
    data, _ = metadata.add_metadata(cpu, names, kind, k, spec.name, "a test file", input_dtype="uint8")
    path = tmp_path / f"{spec.name}_int8.tflite"
    tflite.write_bytes(path, data)
    paths = []
    for i, rgb in enumerate(real_pixels(images.shape[1], count=3)):  # at the model's size: the page feeds them as they are
        paths.append(tmp_path / f"image{i}.png")
        cv2.imwrite(str(paths[-1]), rgb[..., ::-1])
    report = check.check_page(path, paths, tmp_path / "out")
    assert report["outside_requests"] == []
    logits = tflite.run_tflite(path, np.stack([cv2.imread(str(p))[..., ::-1] for p in paths]))
    if not classification:
        assert len(np.unique((logits[..., 0] > 0) if k == 1 else np.argmax(logits, -1))) > 1, "constant masks check nothing"
    for p, lg in zip(paths, logits):
        if classification:
            assert json.loads((tmp_path / "out" / f"{p.stem}_scores.json").read_text())["top"] == int(np.argmax(lg)), p.name
            continue
        mask = cv2.imread(str(tmp_path / "out" / f"{p.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        expected = (lg[..., 0] > 0) if k == 1 else np.argmax(lg, -1)
        assert mask.shape == expected.shape and np.mean(mask == expected) >= 0.995, (p.name, np.mean(mask == expected))


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="Unknown model 'nope'.*litenext"):
        kl.create_model("nope")
    stranger = keras.Model(inputs := keras.Input((8, 8, 3)), keras.layers.Conv2D(1, 1)(inputs), name="mine")
    with pytest.raises(ValueError, match="Cannot tell which registered model 'mine'.*litenext"):
        registry.spec_of(stranger)
    assert registry.list_models(task="no-such-task") == []
