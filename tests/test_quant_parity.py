"""The QAT simulation computes what the int8 TFLite file computes, on U-Lite's block patterns.

A small U-Lite-like graph: a stem conv whose channels differ in scale by up to 10x (trained
stems do),
an axial depthwise block `x + DW(3,1)(x) + DW(1,3)(x)` (a three-input add, two int8 ADDs)
followed by a BatchNormalization that cannot be folded (its statistics those of the data, so
its scale is large on the quiet channels), a 1x1 conv, max-pool and GELU; a bottleneck whose
concatenation `[z, axial(z)]` feeds a BatchNormalization; nearest x2 up-sampling concatenated
with the skip; a 1x1 head. After `quantize_model` + `calibrate`, the int8 file's output must
equal the QAT model's within about two output steps: a partial sum left unquantized, or a range
the converter chooses differently, shows up here as many steps (the BatchNorm multiplies it).
"""

import keras
import numpy as np
from keras import layers

from keras_litenext import litert as tflite
from keras_litenext import quantization as Q
from keras_litenext.layers import AxialDepthwiseConv

STEM_SPREAD = 1.0  # log10 of the largest ratio between the stem's channel scales


def _images(n=16, size=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None] * rng.uniform(0.4, 0.8, 3)
        out[i] = np.clip(0.2 + blob + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
    return out


def _ulite_like():
    inputs = keras.Input((16, 16, 3), name="image")
    stem = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    skip = layers.BatchNormalization(epsilon=1e-5, name="enc_norm")(AxialDepthwiseConv(3, name="enc_axial")(stem))
    y = layers.Conv2D(16, 1, name="enc_conv")(skip)
    y = layers.Activation("gelu", name="enc_act")(layers.MaxPooling2D(2, name="enc_pool")(y))
    z = layers.Conv2D(8, 1, name="mid_in")(y)
    z = layers.Concatenate(name="mid_concat")([z, AxialDepthwiseConv(3, dilation_rate=2, name="mid_axial")(z)])
    z = layers.Conv2D(16, 1, name="mid_out")(layers.BatchNormalization(epsilon=1e-5, name="mid_norm")(z))
    z = layers.Activation("gelu", name="mid_act")(z)
    up = layers.UpSampling2D(2, interpolation="nearest", name="dec_up")(z)
    x = layers.Conv2D(8, 1, name="dec_conv")(layers.Concatenate(name="dec_concat")([up, skip]))
    x = layers.Activation("gelu", name="dec_act")(x)
    return keras.Model(inputs, layers.Conv2D(1, 1, name="head")(x))


def _trained_like(model, images, seed=0):
    """Stem channels of very different scales, and BatchNorm statistics those of the data."""
    rng = np.random.default_rng(seed)
    stem = model.get_layer("stem")
    kernel, bias = stem.get_weights()
    factors = 10.0 ** rng.uniform(-STEM_SPREAD, 0.0, kernel.shape[-1])
    stem.set_weights([kernel * factors, bias * factors])
    for name in ("enc_norm", "mid_norm"):
        bn = model.get_layer(name)
        before = keras.Model(model.input, bn.input)(images, training=False)
        values = keras.ops.convert_to_numpy(before).reshape(-1, bn.input.shape[-1])
        n = values.shape[1]
        bn.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.5, n), values.mean(0), values.var(0)])
    return model


def parity_steps(seed=3):
    """|int8 file - QAT model| of the U-Lite-like graph, in output quantization steps."""
    keras.utils.set_random_seed(seed)
    images = _images(seed=seed)
    model = _trained_like(_ulite_like(), images, seed=seed)
    qat = Q.calibrate(Q.quantize_model(model), images)
    data = tflite.convert(qat, "int8", representative_data=images, num_calibration=len(images))

    scale = tflite.io_details(data)["output"]["scale"]
    simulated = keras.ops.convert_to_numpy(qat(images, training=False))
    return np.abs(tflite.run_tflite(data, images, num_threads=1) - simulated) / scale


def test_axial_add_and_batchnorm_rewrite_keep_the_float_math():
    keras.utils.set_random_seed(3)
    images = _images(n=4, seed=3)
    model = _trained_like(_ulite_like(), images, seed=3)
    qat = Q.quantize_model(model)
    assert isinstance(qat.get_layer("enc_axial_add"), Q.QuantAdd)  # x + h + w: two int8 ADDs
    assert "enc_axial_add/partial1" in Q.uncalibrated_quantizers(qat)
    # The BatchNorm after the sum now normalises x; h and w carry its scale.
    assert qat.get_layer("enc_norm").input is qat.get_layer("stem_quant").output
    Q.set_quant_mode(qat, "float")
    reference = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(qat(images, training=False)), reference, atol=1e-4 * np.abs(reference).max())


def test_int8_file_matches_the_qat_model():
    steps = parity_steps()
    # Rounding ties and TFLite's fixed-point rescaling move a few values by a step, which the
    # layers after pass on (most where a fine grid follows a coarse one); a rule that quantizes
    # differently from the file moves most values by many (an unquantized partial sum of the
    # axial add: mean 4.3 steps, 95th percentile 12).
    summary = f"mean {np.mean(steps):.2f}, 95th percentile {np.percentile(steps, 95):.1f}, max {steps.max():.0f}"
    assert np.mean(steps) < 0.5, f"int8 file vs QAT model: {summary} output steps"
    assert np.percentile(steps, 95) <= 2.0 + 1e-3, f"int8 file vs QAT model: {summary} output steps"
