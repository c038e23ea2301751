"""LV-UNet's blocks (Jiang et al., 2024, arXiv:2408.16886): the MobileNetV3-Large inverted
residual of its pre-trained trunk, the fusible block with its two re-parameterisable layers,
and the deep-training schedule of the block's non-linearity.

The fusible block (VanillaNet's block, Chen et al., 2023, arXiv:2305.12972) has a training
form and a deploy form with the same outputs at slope 1:

- training: `FusibleConv` (1x1 conv -> BN -> leaky ReLU of slope λ -> 1x1 conv -> BN) ->
  max-pool or bilinear x2 -> ReLU -> `FusibleDepthwiseConv` (3x3 depthwise, no bias -> BN);
- deploy: `Conv2D` 1x1 -> max-pool or bilinear x2 -> ReLU -> `DepthwiseConv2D` 3x3 with bias.

The two fusible layers know how to fuse themselves (`get_reparameterized_layer`,
`get_reparameterized_weights`, kimm's pattern); the deploy form is made of standard layers, so
it quantizes with the stock rules, and the training form refuses to (quantize the deploy form,
`keras_litenext.models.lvunet.reparameterize`).
"""

import math

import keras
import numpy as np
from keras import layers, ops

from keras_litenext.layers import torch_init
from keras_litenext.quantization.rules import QuantRule, register_quant_rule

PACKAGE = "keras_litenext"
BN_EPSILON = 1e-3  # the MobileNetV3 trunk (torchvision and Keras alike)
BN_MOMENTUM = 0.99  # torchvision's 0.01 (Keras applications use 0.999)
FUSIBLE_EPSILON = 1e-6  # the reference's fusible-block BatchNorms
FUSIBLE_MOMENTUM = 0.9  # PyTorch's default 0.1


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)


def _bn_scale_shift(bn):
    """`(s, t)` with `bn(z) = s * z + t` in inference."""
    scale = _numpy(bn.gamma) / np.sqrt(_numpy(bn.moving_variance) + bn.epsilon)
    return scale, _numpy(bn.beta) - scale * _numpy(bn.moving_mean)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusibleConv(layers.Layer):
    """The training form of LV-UNet's 1x1 convolution pair, which fuses into one `Conv2D`.

    `BN2(conv2(φ_λ(BN1(conv1(x)))))`, with 1x1 convolutions with bias (`conv1` keeps the
    channels, `conv2` maps them to `filters`), BatchNorms of epsilon 1e-6, and the leaky ReLU
    `φ_λ(z) = relu(z) + λ · min(z, 0)` of the deep-training schedule (`DeepTrainingSchedule`):
    λ = 0 is a ReLU, λ = 1 the identity. At λ = 1 the layer is affine and
    `get_reparameterized_weights` gives the one 1x1 convolution that computes it (Jiang et al.,
    LV-UNet, arXiv:2408.16886; VanillaNet, arXiv:2305.12972).

    λ is the non-trainable scalar weight `slope`, so a compiled training step reads its current
    value, the schedule sets it between epochs (`set_slope`), and it is saved with the model. It
    is the one weight without a PyTorch counterpart (the reference keeps it as a plain attribute,
    `act_learn`). Re-parameterisation assumes λ = 1 whatever `slope` holds, as the reference's
    `switch_to_deploy` does.

    Args:
        filters: int, output channels.
        epsilon: float, the BatchNorms' epsilon. Defaults to `1e-6` (the reference's).
        momentum: float, the BatchNorms' momentum. Defaults to 0.9 (PyTorch's 0.1).
        slope: float, the initial λ. Defaults to 0.0 (a ReLU, where the reference starts).
        **kwargs: standard layer arguments.

    Example:
    >>> x = keras.Input((16, 16, 80))
    >>> FusibleConv(160, name="stage1_fusible_conv")(x).shape
    (None, 16, 16, 160)
    """

    def __init__(self, filters, epsilon=FUSIBLE_EPSILON, momentum=FUSIBLE_MOMENTUM, slope=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.initial_slope = float(slope)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.slope = self.add_weight(
            name="slope", shape=(), initializer=keras.initializers.Constant(self.initial_slope), trainable=False
        )
        bn = {"epsilon": self.epsilon, "momentum": self.momentum, "dtype": self.dtype_policy}
        self.conv1 = layers.Conv2D(channels, 1, name="conv1", dtype=self.dtype_policy, **torch_init(channels))
        self.bn1 = layers.BatchNormalization(name="bn1", **bn)
        self.conv2 = layers.Conv2D(self.filters, 1, name="conv2", dtype=self.dtype_policy, **torch_init(channels))
        self.bn2 = layers.BatchNormalization(name="bn2", **bn)
        self.conv1.build(input_shape)
        self.bn1.build(tuple(input_shape[:-1]) + (channels,))
        self.conv2.build(tuple(input_shape[:-1]) + (channels,))
        self.bn2.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, inputs, training=None):
        z = self.bn1(self.conv1(inputs), training=training)
        z = ops.relu(z) + ops.cast(self.slope, z.dtype) * ops.minimum(z, 0.0)
        return self.bn2(self.conv2(z), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def count_macs(self, input_shape, output_shape):
        """Multiply-accumulates of the two 1x1 convolutions (for `keras_litenext.count_macs`)."""
        positions, channels = int(np.prod(output_shape[1:-1])), int(input_shape[-1])
        return positions * channels * (channels + self.filters)

    def get_reparameterized_weights(self):
        """`[kernel, bias]` of the `Conv2D` 1x1 equal to this layer at λ = 1 (BNs in inference).

        Both BatchNorms fold into their convolutions (`M' = M · diag(s)`, `b' = s (b - μ) + β`,
        `s = γ / sqrt(σ² + ε)`); with φ the identity the two maps compose: `M = M1' M2'`,
        `b = b1' M2' + b2'` (Keras kernel orientation, inputs x outputs). Computed in float64.
        """
        s1, t1 = _bn_scale_shift(self.bn1)
        s2, t2 = _bn_scale_shift(self.bn2)
        m1 = _numpy(self.conv1.kernel)[0, 0] * s1
        b1 = _numpy(self.conv1.bias) * s1 + t1
        m2 = _numpy(self.conv2.kernel)[0, 0] * s2
        b2 = _numpy(self.conv2.bias) * s2 + t2
        kernel = (m1 @ m2)[None, None]
        return [kernel.astype("float32"), (b1 @ m2 + b2).astype("float32")]

    def get_reparameterized_layer(self, name=None):
        """The deploy form: an unbuilt `Conv2D(filters, 1)` with bias, named `name` (default: this
        layer's name); fill it with `get_reparameterized_weights()`."""
        return layers.Conv2D(self.filters, 1, name=name or self.name, dtype=self.dtype_policy)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "epsilon": self.epsilon,
            "momentum": self.momentum,
            "slope": self.initial_slope,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusibleDepthwiseConv(layers.Layer):
    """The training form of the depthwise convolution of VanillaNet's series-informed
    activation, which fuses into one `DepthwiseConv2D` with bias.

    `BN(depthwise_kxk(x))`, the depthwise kernel without bias, 'same' padding (k // 2 on every
    side, as the reference), BatchNorm of epsilon 1e-6. The activation's ReLU is the layer
    before it. The kernel starts as a normal of std 0.02 (the reference's `trunc_normal_` with
    bounds ±2, i.e. ±100 std, which never truncates).

    Args:
        kernel_size: int, the depthwise window. Defaults to 3 (the reference's `act_num=1`).
        epsilon: float, the BatchNorm's epsilon. Defaults to `1e-6`.
        momentum: float, the BatchNorm's momentum. Defaults to 0.9.
        **kwargs: standard layer arguments.

    Example:
    >>> x = keras.Input((8, 8, 160))
    >>> FusibleDepthwiseConv(name="stage1_act")(x).shape
    (None, 8, 8, 160)
    """

    def __init__(self, kernel_size=3, epsilon=FUSIBLE_EPSILON, momentum=FUSIBLE_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)

    def build(self, input_shape):
        self.depthwise = layers.DepthwiseConv2D(
            self.kernel_size, padding="same", use_bias=False, name="depthwise", dtype=self.dtype_policy,
            depthwise_initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self.bn = layers.BatchNormalization(epsilon=self.epsilon, momentum=self.momentum, name="bn", dtype=self.dtype_policy)
        self.depthwise.build(input_shape)
        self.bn.build(input_shape)

    def call(self, inputs, training=None):
        return self.bn(self.depthwise(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def count_macs(self, input_shape, output_shape):
        """Multiply-accumulates of the depthwise convolution (for `keras_litenext.count_macs`)."""
        return int(np.prod(output_shape[1:])) * self.kernel_size**2

    def get_reparameterized_weights(self):
        """`[kernel, bias]` of the biased `DepthwiseConv2D` equal to this layer (BN in inference):
        `K' = s K` per channel, `b = β - s μ`."""
        scale, shift = _bn_scale_shift(self.bn)
        kernel = _numpy(self.depthwise.kernel) * scale[None, None, :, None]
        return [kernel.astype("float32"), shift.astype("float32")]

    def get_reparameterized_layer(self, name=None):
        """The deploy form: an unbuilt `DepthwiseConv2D` with bias, named `name` (default: this
        layer's name); fill it with `get_reparameterized_weights()`."""
        return layers.DepthwiseConv2D(self.kernel_size, padding="same", name=name or self.name, dtype=self.dtype_policy)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "epsilon": self.epsilon, "momentum": self.momentum}


FUSIBLE_LAYERS = (FusibleConv, FusibleDepthwiseConv)
register_quant_rule(
    FUSIBLE_LAYERS,
    QuantRule(reject="it is the training form of LV-UNet's fusible block; quantize the deploy form, "
                     "keras_litenext.models.lvunet.reparameterize(model), which is what the converter uses"),
)


def fusible_layers(model):
    """Every `FusibleConv` of `model`, nested models included (SeRP's training graph wraps the
    segmentation model; its EMA teacher holds copies), each once."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, FusibleConv) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def set_slope(model, slope):
    """Set λ of every `FusibleConv` of `model` (nested models included); returns how many."""
    found = fusible_layers(model)
    for layer in found:
        layer.slope.assign(float(slope))
    return len(found)


def deep_training_slope(epoch, epochs):
    """λ at epoch `epoch` (0-based) of `epochs`: `1 - cos(π/2 · (epoch + 1) / epochs)`, exactly
    1 from the last epoch on."""
    fraction = (int(epoch) + 1) / max(int(epochs), 1)
    return 1.0 if fraction >= 1.0 else 1.0 - math.cos(math.pi / 2 * fraction)


class DeepTrainingSchedule(keras.callbacks.Callback):
    """LV-UNet's deep training: anneal the fusible blocks' leaky ReLU from a ReLU to the identity.

    At the start of epoch `e` (0-based) of `E` every `FusibleConv` gets
    `λ_e = 1 - cos(π/2 · (e + 1) / E)`, so the last epoch trains at exactly λ = 1, the network
    the deploy form (`reparameterize`) computes. Two deviations from the reference (`train.py`),
    both so that what is trained and selected is what gets deployed:

    - the reference uses `1 - cos(π/2 · e / E)`, which starts at 0 and never reaches 1: its last
      epoch of 300 runs at λ = 0.99476, and its deploy form then differs from the trained
      network (max |Δ| 0.03, 11 % of the logits' std, on the reference's fixture);
    - validation runs at λ = 1 (`on_test_begin`; `on_test_end` restores the epoch's λ), so the
      monitored score, and hence the best checkpoint, is that of the deployable network. The
      reference validates at the epoch's λ and deploys its last checkpoint.

    The fusible layers are found by walking the model recursively, so a wrapping training graph
    (SeRP) is scheduled too.

    Args:
        epochs: int, the run's number of epochs `E`.

    Example:
    >>> model.fit(images, masks, epochs=300, callbacks=[DeepTrainingSchedule(300)])
    """

    def __init__(self, epochs):
        super().__init__()
        if int(epochs) < 1:
            raise ValueError(f"DeepTrainingSchedule: epochs must be >= 1, got {epochs!r}.")
        self.epochs = int(epochs)
        self.slope = None  # the current epoch's λ, None outside fit

    def on_epoch_begin(self, epoch, logs=None):
        self.slope = deep_training_slope(epoch, self.epochs)
        set_slope(self.model, self.slope)

    def on_test_begin(self, logs=None):
        set_slope(self.model, 1.0)

    def on_test_end(self, logs=None):
        if self.slope is not None:
            set_slope(self.model, self.slope)

    def get_config(self):
        return {"epochs": self.epochs}


def _kaiming_normal_fan_out(depthwise=False):
    """torchvision MobileNetV3's conv init, `kaiming_normal_(mode="fan_out")`. PyTorch's fan-out
    of a depthwise kernel `(C, 1, k, k)` is `C k²`, which is Keras' fan-in of `(k, k, C, 1)`."""
    return keras.initializers.VarianceScaling(2.0, "fan_in" if depthwise else "fan_out", "untruncated_normal")


def _batch_norm(name):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _stride2_padding(kernel_size, padding):
    """The zero padding before a stride-2 'valid' convolution: torchvision's symmetric `k // 2`
    on every side, or Keras applications' `(k // 2 - 1, k // 2)` (its `correct_pad` for even
    sizes, the only ones LV-UNet takes)."""
    half = kernel_size // 2
    return half if padding == "torch" else ((half - 1, half), (half - 1, half))


def Stem(padding="torch", name="conv"):
    """MobileNetV3's stem: 3x3 stride-2 convolution (16, no bias) -> BN -> hard-swish.

    Layers `conv_pad` (torch padding only), `conv`, `conv_bn`, `conv_act`: the weighted ones
    named as in `keras.applications.MobileNetV3Large`. With `padding="keras"` the convolution
    pads as Keras' (TF 'same': 0 before, 1 after).
    """

    def apply(x):
        if padding == "torch":
            x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        x = layers.Conv2D(
            16, 3, strides=2, padding="valid" if padding == "torch" else "same", use_bias=False, name=name,
            kernel_initializer=_kaiming_normal_fan_out(),
        )(x)
        x = _batch_norm(f"{name}_bn")(x)
        return layers.Activation("hard_swish", name=f"{name}_act")(x)

    return apply


def InvertedResidual(expanded, filters, kernel_size, strides, squeeze_excite, activation, block_id, padding="torch"):
    """MobileNetV3's inverted residual block (Howard et al., 2019, arXiv:1905.02244).

    1x1 expansion (skipped when `expanded` equals the input channels) -> BN -> act; depthwise
    `kernel_size` (stride 2: explicit zero padding, then 'valid') -> BN -> act; optional
    squeeze-and-excitation (global average -> 1x1 conv with bias to `make_divisible(expanded /
    4, 8)` -> ReLU -> 1x1 conv with bias -> hard-sigmoid -> multiply); 1x1 projection -> BN;
    residual add when the shape is kept. All BNs epsilon 1e-3.

    Layer names are those of `keras.applications.MobileNetV3Large` (prefix `expanded_conv_`
    for block 0, `expanded_conv_{block_id}_` after), so that its ImageNet weights map by name;
    the activations are `{prefix}expand_act` / `{prefix}depthwise_act`.

    Args:
        expanded: int, the expanded channels.
        filters: int, output channels.
        kernel_size: int, the depthwise window (3 or 5).
        strides: int, 1 or 2.
        squeeze_excite: bool.
        activation: `"relu"` or `"hard_swish"`.
        block_id: int, the Keras block index (torchvision's `features[block_id + 1]`).
        padding: `"torch"` (symmetric) or `"keras"`, for stride 2.

    Example:
    >>> x = keras.Input((64, 64, 24))
    >>> InvertedResidual(72, 40, 5, 2, True, "relu", block_id=3)(x).shape
    (None, 32, 32, 40)
    """
    prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"

    def act(x, name):
        if activation == "relu":
            return layers.ReLU(name=name)(x)
        return layers.Activation(activation, name=name)(x)

    def apply(inputs):
        channels = int(inputs.shape[-1])
        x = inputs
        if expanded != channels:
            x = layers.Conv2D(
                expanded, 1, use_bias=False, name=f"{prefix}expand", kernel_initializer=_kaiming_normal_fan_out()
            )(x)
            x = _batch_norm(f"{prefix}expand_bn")(x)
            x = act(x, f"{prefix}expand_act")
        if strides == 2:
            x = layers.ZeroPadding2D(_stride2_padding(kernel_size, padding), name=f"{prefix}depthwise_pad")(x)
        x = layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
            name=f"{prefix}depthwise", depthwise_initializer=_kaiming_normal_fan_out(depthwise=True),
        )(x)
        x = _batch_norm(f"{prefix}depthwise_bn")(x)
        x = act(x, f"{prefix}depthwise_act")
        if squeeze_excite:
            squeezed = max(8, int(expanded / 4 + 4) // 8 * 8)
            squeezed += 8 if squeezed < 0.9 * expanded / 4 else 0
            conv = {"kernel_initializer": _kaiming_normal_fan_out(), "bias_initializer": "zeros"}
            s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(x)
            s = layers.Conv2D(squeezed, 1, name=f"{prefix}squeeze_excite_conv", **conv)(s)
            s = layers.ReLU(name=f"{prefix}squeeze_excite_relu")(s)
            s = layers.Conv2D(expanded, 1, name=f"{prefix}squeeze_excite_conv_1", **conv)(s)
            s = layers.Activation("hard_sigmoid", name=f"{prefix}squeeze_excite_hard_sigmoid")(s)
            x = layers.Multiply(name=f"{prefix}squeeze_excite_mul")([x, s])
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}project", kernel_initializer=_kaiming_normal_fan_out())(x)
        x = _batch_norm(f"{prefix}project_bn")(x)
        if strides == 1 and channels == filters:
            x = layers.Add(name=f"{prefix}add")([inputs, x])
        return x

    return apply


def FusibleBlock(filters, resample, reparameterized=False, slope=0.0, name=None):
    """LV-UNet's fusible block: `Block` (`resample="pool"`) or `UpBlock` (`"up"`) of the reference.

    Training form: `{name}_fusible_conv` (`FusibleConv`) -> `{name}_pool` (max-pool 2) or
    `{name}_up` (bilinear x2, half-pixel centres as PyTorch's `align_corners=False`) ->
    `{name}_relu` -> `{name}_act` (`FusibleDepthwiseConv`). Deploy form
    (`reparameterized=True`): `{name}_conv` (`Conv2D` 1x1 with bias) -> the same resampling and
    ReLU -> `{name}_act` (`DepthwiseConv2D` 3x3 with bias).

    Args:
        filters: int, output channels.
        resample: `"pool"` or `"up"`.
        reparameterized: bool, build the deploy form. Defaults to False.
        slope: float, the training form's initial λ. Defaults to 0.0.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((16, 16, 80))
    >>> FusibleBlock(160, "pool", name="stage1")(x).shape
    (None, 8, 8, 160)
    """
    if resample not in ("pool", "up"):
        raise ValueError(f"FusibleBlock {name}: resample must be 'pool' or 'up', got {resample!r}.")

    def apply(x):
        if reparameterized:
            x = layers.Conv2D(filters, 1, name=f"{name}_conv", **torch_init(x.shape[-1]))(x)
        else:
            x = FusibleConv(filters, slope=slope, name=f"{name}_fusible_conv")(x)
        if resample == "pool":
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        if reparameterized:
            return layers.DepthwiseConv2D(3, padding="same", name=f"{name}_act")(x)
        return FusibleDepthwiseConv(3, name=f"{name}_act")(x)

    return apply
