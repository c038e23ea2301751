"""LiteNeXt's own blocks (Tran et al., 2024, arXiv:2405.15779): the LGEMixer block, patch merging,
the residual bottleneck and the multi-scale attention fusion decoder ("AttentionDC"), and the
one layer with math of its own, `ScaleWeightedSum`, with its QAT and deployment forms and rule.
"""

import keras
from keras import layers, ops

from keras_litenext.layers import ConvNormAct, torch_init
from keras_litenext.quantization.core import QuantLayerMixin
from keras_litenext.quantization.rules import SELF, register_quant_rule

PACKAGE = "keras_litenext"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleWeightedSum(layers.Layer):
    """Sum of feature maps weighted per scale and per channel: `sum_i A[:, i] * V_i`.

    Called on `[weights, v_1, ..., v_n]`, where `weights` has shape `(batch, n, channels)`
    (typically a softmax over the scale axis) and every `v_i` has shape
    `(batch, height, width, channels)`. Each weight vector is broadcast over space. This is the
    fusion step of LiteNeXt's AttentionDC decoder (Tran et al., 2024, arXiv:2405.15779).

    Example:
    >>> a = ops.softmax(keras.random.normal((2, 3, 8)), axis=1)
    >>> v = [keras.random.normal((2, 4, 4, 8)) for _ in range(3)]
    >>> ScaleWeightedSum()([a, *v]).shape
    (2, 4, 4, 8)
    """

    def call(self, inputs):
        weights, *values = inputs
        if weights.shape[1] is not None and weights.shape[1] != len(values):
            raise ValueError(f"{self.name}: got {len(values)} feature maps but weights for {weights.shape[1]} scales.")
        fused = None
        for i, value in enumerate(values):
            w = ops.expand_dims(ops.expand_dims(weights[:, i, :], 1), 1)
            term = ops.multiply(value, w)
            fused = term if fused is None else ops.add(fused, term)
        return fused

    def compute_output_shape(self, input_shape):
        return input_shape[1]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeployScaleWeightedSum(ScaleWeightedSum):
    """`ScaleWeightedSum` that takes the per-scale weights with one SPLIT instead of a
    STRIDED_SLICE per scale (XNNPACK runs SPLIT, not STRIDED_SLICE). Same result."""

    def call(self, inputs):
        weights, *values = inputs
        fused = None
        for w, value in zip(ops.split(weights, len(values), axis=1), values):
            term = ops.multiply(value, ops.expand_dims(w, 1))
            fused = term if fused is None else ops.add(fused, term)
        return fused


@register_quant_rule((ScaleWeightedSum, DeployScaleWeightedSum), output=SELF, deploy_class=DeployScaleWeightedSum)
@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantScaleWeightedSum(QuantLayerMixin, ScaleWeightedSum):
    """`ScaleWeightedSum` with a quantizer on every product and partial sum (int8 MUL / ADD)."""

    def __init__(self, decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self._init_quant(decay)

    def build(self, input_shape):
        n = len(input_shape) - 1
        self.q_products = [self._add_range(f"product{i + 1}") for i in range(n)]
        self.q_sums = [self._add_range(f"sum{i + 1}") for i in range(1, n)]

    def call(self, inputs, training=None):
        t = bool(training)
        weights, *values = inputs
        fused = None
        for i, (w, value) in enumerate(zip(ops.split(weights, len(values), axis=1), values)):
            term = self.q_products[i](ops.multiply(value, ops.expand_dims(w, 1)), t)
            fused = term if fused is None else self.q_sums[i - 1](ops.add(fused, term), t)
        return fused


def LGEMixerBlock(filters, kernel_size=7, dilation_rate=1, epsilon=1e-5, name=None):
    """LGEMixer block: LiteNeXt's ConvMixer-style block (Tran et al., 2024, Fig. 2).

    - LocalMixer: `a = CLG(x)` with a dense 3x3 convolution;
    - FarMixer: `b = CLG(a)` with a depthwise `kernel_size` convolution;
    - residual: `s = a + b + x` (the input joins both mixers' outputs);
    - channel mixing: `CLG(s)` with a 1x1 convolution, with no residual around it.

    Relative to ConvMixer, BatchNorm becomes a channel LayerNorm and a dense 3x3 local mixer
    comes first. The reference constructs a DropBlock it never calls; it is left out here. The
    three-way sum is written as two two-input `Add` layers (same order as the reference) so that
    quantization sees every intermediate tensor. Layers: `{name}_local_*`, `{name}_far_*`,
    `{name}_add1`, `{name}_add2`, `{name}_mix_*`.

    Args:
        filters: int, channels in and out (the input must have `filters` channels).
        kernel_size: int, the depthwise (FarMixer) kernel. The paper's model uses 7; the
            authors' repository defaults to 3.
        dilation_rate: int, the FarMixer dilation. Defaults to 1.
        epsilon: float, the norms' epsilon. Defaults to `1e-5`.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((32, 32, 16))
    >>> LGEMixerBlock(16, name="stage1_block1")(x).shape
    (None, 32, 32, 16)
    """

    def apply(x):
        a = ConvNormAct(filters, 3, epsilon=epsilon, name=f"{name}_local")(x)
        b = ConvNormAct(
            filters, kernel_size, depthwise=True, dilation_rate=dilation_rate, epsilon=epsilon, name=f"{name}_far"
        )(a)
        s = layers.Add(name=f"{name}_add1")([a, b])
        s = layers.Add(name=f"{name}_add2")([s, x])
        return ConvNormAct(filters, 1, epsilon=epsilon, name=f"{name}_mix")(s)

    return apply


def DownsampleBlock(filters, epsilon=1e-5, name=None):
    """LiteNeXt's patch merging: 2x2 max pooling, then a 1x1 CLG unit to `filters` channels.

    Layers: `{name}_pool`, `{name}_conv`, `{name}_norm`, `{name}_act`.
    """

    def apply(x):
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        return ConvNormAct(filters, 1, epsilon=epsilon, name=name)(x)

    return apply


def ResidualBottleneck(filters, kernel_size=3, epsilon=1e-5, name=None):
    """Residual block "RB" (LiteNeXt Fig. 1d): two 3x3 CLG units and an identity skip.

    `out = CLG(CLG(x)) + x`, with no norm or activation after the sum. The input must have
    `filters` channels. Layers: `{name}_in_*`, `{name}_out_*`, `{name}_add`.
    """

    def apply(x):
        h = ConvNormAct(filters, kernel_size, epsilon=epsilon, name=f"{name}_in")(x)
        h = ConvNormAct(filters, kernel_size, epsilon=epsilon, name=f"{name}_out")(h)
        return layers.Add(name=f"{name}_add")([h, x])

    return apply


def MultiScaleAttentionFusion(dim, scales, epsilon=1e-5, name=None):
    """LiteNeXt's fusion decoder ("AttentionDC", Tran et al., 2024): attention across scales.

    Called on `[f_1, ..., f_n, f_query]`, feature maps at strides that `scales` brings to the
    resolution of `f_1` (e.g. `scales=(1, 2, 4, 8, 8)`). For each map:

    - value `V_i` = bilinear up-sampling by `scales[i]` of `CLG_1x1(f_i -> dim)`;
    - key `k_i` = `Dense(dim)(GELU(Dense(C_i)(GAP(f_i) + GMP(f_i))))`, a `dim`-vector.

    The last map is the query. Scores `Dense(dim)([k_i, k_query])` are soft-maxed over the
    scale axis separately for every channel, the values of the first `n` maps are summed with
    these weights, and the output is `concat([fused, V_query])`: `2 * dim` channels at the
    resolution of `f_1`. Layers: `{name}_scale{i}_*`, `{name}_query_*`, `{name}_score`,
    `{name}_softmax`, `{name}_weighted_sum`, `{name}_concat`.

    Args:
        dim: int, the channels of values and keys (LiteNeXt: 8x its width, 128).
        scales: sequence of ints, the up-sampling factor of each input, query last.
        epsilon: float, the norms' epsilon. Defaults to `1e-5`.
        name: str, the prefix of the layers' names.
    """
    scales = tuple(int(s) for s in scales)

    def branch(f, scale, prefix):
        value = ConvNormAct(dim, 1, epsilon=epsilon, name=f"{prefix}_value")(f)
        if scale > 1:
            value = layers.UpSampling2D(scale, interpolation="bilinear", name=f"{prefix}_value_up")(value)
        pooled = layers.Add(name=f"{prefix}_pool")(
            [
                layers.GlobalAveragePooling2D(name=f"{prefix}_gap")(f),
                layers.GlobalMaxPooling2D(name=f"{prefix}_gmp")(f),
            ]
        )
        key = layers.Dense(f.shape[-1], name=f"{prefix}_key_dense1", **torch_init(pooled.shape[-1]))(pooled)
        key = layers.Activation("gelu", name=f"{prefix}_key_act")(key)
        key = layers.Dense(dim, name=f"{prefix}_key_dense2", **torch_init(key.shape[-1]))(key)
        return value, key

    def apply(features):
        if len(features) != len(scales):
            raise ValueError(f"{name}: expected {len(scales)} feature maps (one per scale), got {len(features)}.")
        *maps, query_map = features
        values, keys = [], []
        for i, (f, scale) in enumerate(zip(maps, scales)):
            value, key = branch(f, scale, f"{name}_scale{i + 1}")
            values.append(value)
            keys.append(layers.Reshape((1, dim), name=f"{name}_scale{i + 1}_key_reshape")(key))
        query_value, query = branch(query_map, scales[-1], f"{name}_query")
        keys = layers.Concatenate(axis=1, name=f"{name}_keys")(keys)
        query = layers.RepeatVector(len(maps), name=f"{name}_query_repeat")(query)
        key_query = layers.Concatenate(axis=-1, name=f"{name}_key_query")([keys, query])
        scores = layers.Dense(dim, name=f"{name}_score", **torch_init(key_query.shape[-1]))(key_query)
        weights = layers.Softmax(axis=1, name=f"{name}_softmax")(scores)
        fused = ScaleWeightedSum(name=f"{name}_weighted_sum")([weights, *values])
        return layers.Concatenate(axis=-1, name=f"{name}_concat")([fused, query_value])

    return apply
