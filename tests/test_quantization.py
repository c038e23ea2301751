"""Quantization-aware training: the rebuilt graph, weight and activation quantizers, calibration,
BatchNorm folding, unsupported layers, saving, and a short fine-tuning run."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

from keras_litenext import LiteNeXt
from keras_litenext import quantization as Q
from keras_litenext.data import make_dataset
from keras_litenext.layers import ChannelLayerNorm
from keras_litenext.models.litenext.litenext_layers import ScaleWeightedSum


def run_eager(model, x):
    """Model outputs without compiling a predict function (tracing costs more than it saves here)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def randomize_norms(model, seed=0):
    """Non-trivial gamma/beta (trained models have them; ones/zeros would be folded away)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, ChannelLayerNorm):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape).astype("float32"))
    return model


def blob_images(n=16, size=32, seed=0):
    """Smooth images with bright blobs, in [0, 1], and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.empty((n, size, size, 1), np.float32)
    for i in range(n):
        cy, cx = rng.integers(6, size - 6, 2)
        r = rng.integers(3, 8)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
        images[i] = np.clip(0.15 + 0.6 * blob[..., None] * rng.uniform(0.7, 1.0, 3) + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
        masks[i, ..., 0] = blob
    return images, masks


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return randomize_norms(LiteNeXt(input_shape=(32, 32, 3), width=8))


@pytest.fixture(scope="module")
def images():
    return blob_images()[0]


def test_quantize_model_rebuilds_the_graph_with_quantizers(tiny, images):
    qat = Q.quantize_model(tiny)
    kinds = {type(layer) for layer in qat.layers}
    for cls in (Q.QuantConv2D, Q.QuantDepthwiseConv2D, Q.QuantDense, Q.QuantChannelLayerNorm, Q.QuantScaleWeightedSum, Q.FakeQuant):
        assert cls in kinds, cls.__name__
    assert not kinds & {layers.Conv2D, layers.DepthwiseConv2D, layers.Dense, ChannelLayerNorm, ScaleWeightedSum}
    names = {layer.name for layer in qat.layers}
    # same names, plus <layer>_quant; the 7x7 depthwise kernels are split in three (XNNPACK)
    split = {layer.name for layer in tiny.layers if isinstance(layer, layers.DepthwiseConv2D) and layer.kernel_size == (7, 7)
             and min(layer.input.shape[1:3]) >= 7}  # maps smaller than the kernel keep it whole
    assert split and not split & names
    assert {layer.name for layer in tiny.layers} - split <= names
    assert {f"{n}_split{i}" for n in split for i in range(3)} <= names
    assert qat.get_layer("image_quant").fixed_range == [0.0, 1.0]
    assert qat.get_layer("fusion_softmax_quant").fixed_range == [0.0, 255.0 / 256.0]
    assert "stage2_down_pool_quant" not in names  # max-pooling keeps its input's scale
    assert Q.is_qat_model(qat) and not Q.is_qat_model(tiny)

    # Quantizers off: the float model exactly (weights were copied).
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(run_eager(qat, images), run_eager(tiny, images), atol=1e-5)
    Q.set_quant_mode(qat, "quantize")

    assert Q.uncalibrated_quantizers(qat)
    Q.calibrate(qat, images)
    assert Q.uncalibrated_quantizers(qat) == []
    # A concatenation's inputs share its output's range (int8 CONCATENATION has one scale).
    ranges = Q.quantizer_ranges(qat)
    tied = qat.get_layer("fusion_concat_quant").tied
    assert tied == ["fusion_weighted_sum/sum4", "fusion_query_value_act_quant/range"]
    assert {ranges[t] for t in tied} == {ranges["fusion_concat_quant/range"]}
    keys = qat.get_layer("fusion_keys_quant").tied
    assert len(keys) == 4 and {ranges[t] for t in keys} == {ranges["fusion_keys_quant/range"]}
    quantized = run_eager(qat, images)
    reference = run_eager(tiny, images)
    # int8 everywhere: close to the float model, not equal to it.
    assert 0 < np.mean(np.abs(quantized - reference)) < 0.1 * np.std(reference) + 1e-3


def test_weights_are_on_the_int8_per_channel_grid():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 0.1, (3, 3, 4, 5)).astype("float32")
    kernel[..., 2] *= 10  # channels with very different ranges
    for fake_quant_op in (True, False):
        q = keras.ops.convert_to_numpy(Q.quantize_weights(kernel, -1, fake_quant_op=fake_quant_op))
        scale = np.abs(kernel).max(axis=(0, 1, 2)) / 127.0
        steps = q / scale
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
        assert np.abs(np.round(steps)).max() == 127
        np.testing.assert_allclose(np.abs(q).max(axis=(0, 1, 2)), np.abs(kernel).max(axis=(0, 1, 2)), rtol=1e-6)
        assert np.abs(q - kernel).max() <= scale.max() / 2 + 1e-6


def test_calibration_then_moving_average_ranges():
    fq = Q.FakeQuant(decay=0.5)
    x = np.linspace(-1.0, 3.0, 64, dtype="float32").reshape(1, 64)
    fq(x)  # build
    fq.quant_mode = "calibrate"
    out = keras.ops.convert_to_numpy(fq(x))
    np.testing.assert_array_equal(out, x)  # calibration does not quantize
    fq(0.5 * x)
    assert fq.range.value() == pytest.approx((-0.75, 2.25))  # default: mean of the batch extremes
    fq.range.count.assign(0.0)
    fq.calibration = "minmax"
    fq(x), fq(0.5 * x)
    assert fq.range.value() == pytest.approx((-1.0, 3.0))  # extremes: a narrower batch does not shrink it
    fq.quant_mode = "quantize"
    out = keras.ops.convert_to_numpy(fq(x))
    step = 4.0 / 255
    assert np.abs(out - x).max() <= step / 2 + 1e-6
    assert len(np.unique(out)) <= 256
    fq(2.0 * x, training=True)  # EMA: halfway to the batch's (-2, 6)
    assert fq.range.value() == pytest.approx((-1.5, 4.5))
    fq(2.0 * x, training=False)  # inference does not move it
    assert fq.range.value() == pytest.approx((-1.5, 4.5))


def test_traced_calibration_sets_the_ranges_eager_calls_set(tiny, monkeypatch):
    """A long calibration is traced on TensorFlow (`TRACE_FROM` batches or more); the ranges are
    those of eager calls, batch by batch (the images differ per batch, a short last batch included)."""
    from keras_litenext.quantization import calibration

    images = np.concatenate([blob_images(n=5, seed=s)[0] * (0.5 + 0.2 * s) for s in range(2)])  # 10: batches of 4, 4 and 2
    qat = Q.quantize_model(tiny)

    def ranges(trace_from):
        monkeypatch.setattr(calibration, "TRACE_FROM", trace_from)
        Q.calibrate(qat, images, batch_size=4)  # every range starts again (count 0)
        return [r.value() for layer in Q.quant_layers(qat) for r in layer._ranges.values()]

    traced, eager = ranges(1), ranges(10**6)
    np.testing.assert_allclose(np.array(traced), np.array(eager), rtol=1e-6, atol=1e-7)
    assert len(set(eager)) > 10  # ranges that differ: the check compares something


class Mystery(layers.Layer):
    def call(self, x):
        return x * 2.0


def test_unsupported_layers_raise_a_clear_error():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, Mystery(name="mystery")(x))
    with pytest.raises(Q.UnsupportedLayerError, match=r"'mystery' \(Mystery\).*passthrough=\('Mystery',\)"):
        Q.quantize_model(model)
    assert Q.quantize_model(model, passthrough=("Mystery",)).get_layer("mystery")

    lam = keras.Model(inputs, layers.Lambda(lambda t: t + 1.0, name="shift")(x))
    with pytest.raises(Q.UnsupportedLayerError, match="'shift'.*Lambda"):
        Q.quantize_model(lam)

    flat = keras.Input((6,))
    dense_bn = keras.Model(flat, layers.BatchNormalization(name="bn_2d")(layers.Add()([flat, flat])))
    with pytest.raises(Q.UnsupportedLayerError, match="'bn_2d'.*folded when it directly follows.*4-D"):
        Q.quantize_model(dense_bn)


def test_batchnorm_that_cannot_fold_becomes_a_depthwise_conv():
    """A BatchNorm after an add (U-Lite's skips) keeps its float output in the QAT model and
    converts to one int8 DEPTHWISE_CONV_2D, not per-tensor MUL/ADD."""
    pytest.importorskip("tensorflow")
    from keras_litenext import litert as tflite

    rng = np.random.default_rng(3)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    bn = layers.BatchNormalization(name="bn_after_add")
    model = keras.Model(inputs, bn(layers.Add()([a, b])))
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.1, 3, 4)])
    images = rng.random((8, 8, 8, 3), dtype=np.float32)
    qat = Q.quantize_model(model)
    assert type(qat.get_layer("bn_after_add")).__name__ == "QuantBatchNormalization"
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(np.asarray(qat(images)), np.asarray(model(images)), atol=1e-5)
    qat = Q.calibrate(qat, images, batch_size=4)
    info = tflite.inspect_tflite(tflite.convert(qat, "int8", representative_data=images))
    assert sum(info["float_ops"].values()) == 0 and "DEPTHWISE_CONV_2D" in info["op_counts"], info["op_counts"]


def test_batchnorm_after_conv_is_folded():
    rng = np.random.default_rng(2)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(inputs, layers.Conv2D(1, 1, name="head")(x))
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        n = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)])
    x = rng.random((4, 16, 16, 3)).astype("float32")
    folded = Q.fold_batch_norms(model)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(run_eager(folded, x), run_eager(model, x), atol=1e-4)
    qat = Q.quantize_model(model)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in qat.layers)
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(run_eager(qat, x), run_eager(model, x), atol=1e-4)


def test_deployment_model_computes_the_same(tiny, images):
    deploy = Q.deployment_model(tiny)
    kinds = {type(layer) for layer in deploy.layers}
    assert {Q.DeployChannelLayerNorm, Q.DeployScaleWeightedSum, Q.ConcatRepeatVector} <= kinds
    np.testing.assert_allclose(run_eager(deploy, images), run_eager(tiny, images), atol=1e-5)


def test_qat_model_saves_and_loads(tiny, images, tmp_path):
    qat = Q.calibrate(Q.quantize_model(tiny), images[:8])
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    ranges, expected = Q.quantizer_ranges(loaded), Q.quantizer_ranges(qat)
    assert ranges.keys() == expected.keys()
    np.testing.assert_allclose([ranges[k] for k in sorted(ranges)], [expected[k] for k in sorted(ranges)], rtol=1e-6)
    np.testing.assert_allclose(run_eager(loaded, images), run_eager(qat, images), atol=1e-6)
    # A fresh process needs only `import keras_litenext` to load it (as convert.py's _qat.keras).
    code = f"import keras, keras_litenext; keras.saving.load_model({str(path)!r}, compile=False)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_qat_finetune_trains_from_calibrated_ranges():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = ChannelLayerNorm(name="norm")(x)
    x = layers.Activation("gelu", name="act")(x)
    model = keras.Model(inputs, layers.Conv2D(1, 1, name="head")(x))
    images, masks = blob_images(n=12, size=16, seed=4)
    to_uint8 = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
    train = make_dataset(to_uint8(images[:8]), masks[:8].astype(np.uint8), batch_size=4, shuffle=True, seed=0)
    val = make_dataset(to_uint8(images[8:]), masks[8:].astype(np.uint8), batch_size=4)
    from keras_litenext.export.finetune import qat_finetune

    qat = qat_finetune(model, train, val, epochs=2, lr=1e-3, loss="bce_dice", calibration_steps=2, verbose=0)
    assert Q.is_qat_model(qat) and Q.uncalibrated_quantizers(qat) == []
    assert all(np.isfinite(v).all() for v in qat.qat_history["loss"])
    assert qat.qat_best_epoch in (0, 1, 2)
    assert np.isfinite(run_eager(qat, images)).all()


def test_one_calibration_pass_gives_each_rsqrt_candidate_its_own_ranges(tiny):
    """`choose_rsqrt_quantile` calibrates once for every candidate (each norm records its rsqrt
    batch extremes per candidate): the ranges each candidate is scored with are exactly those of a
    calibration with that candidate alone."""
    images = blob_images(n=6, seed=5)[0]
    images[:, :, :12] = 0.0  # flat black: the rsqrt range ends of the candidates differ
    qat = Q.quantize_model(tiny)
    norms = [layer for layer in qat.layers if isinstance(layer, Q.QuantChannelLayerNorm)]
    ranges = lambda: [r.value() for layer in Q.quant_layers(qat) for r in layer._ranges.values()]  # noqa: E731
    seen = {}

    def score(model):
        seen[norms[0].rsqrt_quantile] = ranges()
        return 0.0

    candidates = (None, 0.5)
    Q.choose_rsqrt_quantile(qat, images, score, candidates=candidates, steps=2, batch_size=4, calibrate_best=False)
    for candidate in candidates:
        for layer in norms:
            layer.rsqrt_quantile = candidate
        Q.calibrate(qat, images, steps=2, batch_size=4)
        assert seen[candidate] == ranges(), candidate
    assert seen[None] != seen[0.5]  # the candidates' ranges differ: the comparison checks something
    assert all(getattr(layer, "rsqrt_record", None) is None for layer in norms)


def test_rsqrt_range_end_is_chosen_by_an_injected_score(tiny):
    # Flat black pixels push 1/sqrt(variance) up (towards 1/sqrt(epsilon) as the variance nears 0): a
    # quantile as the range end leaves the typical values more int8 steps than the max does.
    images, masks = blob_images(n=8)
    images[:, :, :16] = 0.0  # half of every image flat black
    masks[:, :, :16] = 0.0
    qat = Q.quantize_model(tiny)
    calls = []

    def dice(model):  # the caller's score (here: mean Dice of the thresholded logits)
        calls.append(model)
        pred = run_eager(model, images) > 0
        inter = (pred * masks).sum(axis=(1, 2, 3))
        return float(np.mean(2 * inter / (pred.sum(axis=(1, 2, 3)) + masks.sum(axis=(1, 2, 3)) + 1e-6)))

    scores = Q.choose_rsqrt_quantile(qat, images, dice, candidates=(None, 0.3), steps=1)
    assert set(scores) == {None, 0.3} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert len(calls) == 2 and all(m is qat for m in calls)
    best = max(scores, key=scores.get)
    norms = [layer for layer in qat.layers if isinstance(layer, Q.QuantChannelLayerNorm)]
    assert all(layer.rsqrt_quantile == best for layer in norms)
    assert norms[0].get_config()["rsqrt_quantile"] == best

    tops = {}
    for candidate in (None, 0.3):
        for layer in norms:
            layer.rsqrt_quantile = candidate
        Q.calibrate(qat, images, steps=1)
        tops[candidate] = qat.get_layer("stem_norm").ranges()["rsqrt"][1]
    assert tops[0.3] < 0.8 * tops[None]


def hard_swish_block(inputs):
    """MobileNetV3's squeeze-excite with its hard sigmoid written as keras.ops arithmetic."""
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    s = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    s = layers.Conv2D(8, 1, name="squeeze")(s)
    s = layers.ReLU(6.0, name="relu6")(s + 3.0) * (1.0 / 6.0)  # keras.ops add / multiply nodes
    x = layers.Multiply(name="excite")([x, s])
    x = keras.ops.maximum(x, np.linspace(-0.5, 0.5, 8).astype("float32"))  # an array constant
    return layers.Conv2D(1, 1, name="head")(x)


def test_keras_ops_nodes_get_quantizers_and_convert_to_int8():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, hard_swish_block(inputs))
    qat = Q.quantize_model(model)
    names = {layer.name for layer in qat.layers}
    nodes = [op.name for op in model.operations if not isinstance(op, layers.Layer)]  # add, multiply, maximum
    assert len(nodes) == 3 and {f"{n}_quant" for n in nodes} | {"relu6_quant", "excite_quant"} <= names
    images = blob_images(n=8, size=16)[0]
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(run_eager(qat, images), run_eager(model, images), atol=1e-5)
    Q.calibrate(qat, images)

    pytest.importorskip("tensorflow")
    from keras_litenext import litert as tflite

    data = tflite.convert(qat, "int8", representative_data=images)
    info = tflite.inspect_tflite(data)
    assert sum(info["float_ops"].values()) == 0, info["float_ops"]
    assert {"ADD", "MUL", "MAXIMUM"} <= set(info["op_counts"])
    # the file computes what the simulation computes (within a few output steps)
    scale = info["output"]["scale"]
    assert np.abs(tflite.run_tflite(data, images) - run_eager(qat, images)).max() <= 3 * scale


def test_keras_ops_node_without_a_rule_is_named_with_the_fix():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layers.Conv2D(4, 1, name="conv")(inputs) / 6.0)
    with pytest.raises(Q.UnsupportedLayerError) as err:
        Q.quantize_model(model)
    message = str(err.value)
    assert "keras.ops node" in message and "keras.ops.true_divide" in message and "reciprocal" in message
    supported = message.split("Rules exist for:")[1]
    assert "keras.ops.true_divide" not in supported and "keras.layers.Add" in supported
    assert "keras.ops.add" in supported


def test_rejection_never_lists_the_rejected_class():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Mystery(name="mystery")(inputs))
    with pytest.raises(Q.UnsupportedLayerError) as err:
        Q.quantize_model(model)
    assert "Mystery" not in str(err.value).split("Rules exist for:")[1]


def test_rules_are_open_and_found_by_mro():
    class Doubler(layers.Layer):  # arithmetic: a rule of its own, registered beside it
        def call(self, x):
            return x * 2.0

    class LoudDoubler(Doubler):  # a subclass keeps its parent's copy-and-quantize rule
        pass

    class WeirdConv(layers.Conv2D):  # overrides call: the Conv2D rule would drop its math
        def call(self, x):
            return super().call(x) * 2.0

    rule = Q.register_quant_rule(Doubler, Q.QuantRule(output=Q.OWN))
    assert Q.get_quant_rule(LoudDoubler()) is rule
    inputs = keras.Input((8, 8, 3))
    qat = Q.quantize_model(keras.Model(inputs, LoudDoubler(name="loud")(layers.Conv2D(4, 1, name="c")(inputs))))
    assert isinstance(qat.get_layer("loud"), LoudDoubler) and qat.get_layer("loud_quant")
    with pytest.raises(ValueError, match="already has a rule"):
        Q.register_quant_rule(Doubler, Q.QuantRule())
    weird = keras.Model(inputs, WeirdConv(4, 1, name="weird")(inputs))
    with pytest.raises(Q.UnsupportedLayerError, match=r"'weird' \(WeirdConv\).*register_quant_rule"):
        Q.quantize_model(weird)


# ----------------------------------------------------------------------------------------------
# Large depthwise kernels split for XNNPACK
# ----------------------------------------------------------------------------------------------
def test_depthwise_pieces_cover_every_tap_once():
    for size, dilation in [((7, 7), (1, 1)), ((9, 9), (1, 1)), ((7, 7), (2, 3)), ((3, 11), (1, 1)), ((11, 5), (1, 1))]:
        pieces = Q.depthwise_pieces(size, dilation)
        assert pieces is not None and len(pieces) > 1
        wide = size[1] > size[0]
        along, across = (size[1], size[0]) if wide else size
        step = dilation[1] if wide else dilation[0]
        covered = []
        for rows, piece_size, piece_dilation in pieces:
            assert piece_size[0] * piece_size[1] <= Q.MAX_DEPTHWISE_TAPS
            n, d = (piece_size[1], piece_dilation[1]) if wide else (piece_size[0], piece_dilation[0])
            assert n == len(rows) and (piece_size[0] if wide else piece_size[1]) == across
            # "same" padding places tap t of the piece at offset (t - (n - 1) / 2) * d from the centre
            offsets = [(t - (n - 1) / 2) * d for t in range(n)]
            assert offsets == [(r - along // 2) * step for r in rows]
            covered += rows
        assert sorted(covered) == list(range(along))
    assert Q.depthwise_pieces((5, 5)) is None and Q.depthwise_pieces((1, 7)) is None
    assert Q.depthwise_pieces((8, 8)) is None  # even: "same" padding is not centred
    assert Q.depthwise_pieces((31, 31)) is None  # two rows are already too long
    assert len(Q.depthwise_pieces((1, 31))) == 4  # a long row splits along itself


def test_split_depthwise_kernels_is_exact_and_quantizes_each_piece():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((24, 24, 6))
    x = layers.DepthwiseConv2D(7, padding="same", name="dw7")(inputs)
    x = layers.DepthwiseConv2D(7, padding="same", dilation_rate=2, activation="relu", use_bias=False, name="dw7d")(x)
    x = layers.DepthwiseConv2D((3, 11), padding="same", depth_multiplier=2, name="dw3x11")(x)
    x = layers.DepthwiseConv2D(5, padding="same", name="dw5")(x)
    model = keras.Model(inputs, x)
    for layer in model.layers[1:]:
        layer.set_weights([np.random.default_rng(2).normal(0, 0.1, w.shape).astype("float32") for w in layer.get_weights()])
    x = np.random.default_rng(3).uniform(0, 1, (2, 24, 24, 6)).astype("float32")

    split = Q.split_depthwise_kernels(model)
    dw = [layer for layer in split.layers if isinstance(layer, layers.DepthwiseConv2D)]
    assert max(np.prod(layer.kernel_size) for layer in dw) <= Q.MAX_DEPTHWISE_TAPS
    names = {layer.name for layer in split.layers}
    assert {"dw7_split0", "dw7_split2", "dw7_sum", "dw7d_activation", "dw3x11_split2", "dw5"} <= names
    assert "dw3x11_split3" not in names  # 3x7 centre (21 taps) + two 3x2 pairs
    assert "dw7" not in names
    np.testing.assert_allclose(run_eager(split, x), run_eager(model, x), atol=1e-5)
    assert Q.deployment_model(model, max_depthwise_taps=None) is model

    qat = Q.calibrate(Q.quantize_model(model), x)
    names = {layer.name for layer in qat.layers}
    assert {"dw7_split0_quant", "dw7_split1_quant", "dw7_sum_quant"} <= names
    assert type(qat.get_layer("dw7_sum")) is Q.QuantAdd  # the two int8 ADDs, partial sum quantized
    assert "dw7_sum/partial1" in Q.quantizer_ranges(qat)
    Q.set_quant_mode(qat, "float")
    np.testing.assert_allclose(run_eager(qat, x), run_eager(model, x), atol=1e-5)
    whole = Q.quantize_model(model, max_depthwise_taps=None)
    assert "dw7" in {layer.name for layer in whole.layers}


def test_nearest_up_sampling_deploys_without_tile():
    """Keras' nearest UpSampling2D lowers to TILE, which XNNPACK does not run; the deployment and
    QAT forms are CONCATENATION + RESHAPE with the same values."""
    from keras_litenext import litert as tflite

    inputs = keras.Input((5, 7, 3))
    x = layers.UpSampling2D(2, name="up2")(inputs)
    x = layers.UpSampling2D((3, 1), name="up31")(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="head")(x))
    x = np.random.default_rng(0).random((2, 5, 7, 3), dtype=np.float32)
    deploy = Q.deployment_model(model)
    assert {type(layer) for layer in deploy.layers} >= {Q.ConcatUpSampling2D}
    np.testing.assert_array_equal(run_eager(deploy, x), run_eager(model, x))
    qat = Q.quantize_model(model)
    assert type(qat.get_layer("up2")) is Q.ConcatUpSampling2D and "up2_quant" not in {layer.name for layer in qat.layers}
    ops = tflite.inspect_tflite(tflite.convert(model, "fp32"))["op_counts"]
    assert "TILE" not in ops and ops["CONCATENATION"] >= 2
