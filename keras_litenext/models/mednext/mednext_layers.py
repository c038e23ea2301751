"""MedNeXt-lightweight's blocks (Xue et al., PLOS ONE 2026, doi:10.1371/journal.pone.0340108),
as builders that add standard and registered layers to a functional graph.

**A reconstruction from the abstract** (`shared/specs/mednext_style.md` §5): the abstract names
three modules (a Linear Attention FFN, a Spatial Encoding Module and a Smooth DwConv FFN) and
nothing of their insides. What each one computes here is the spec's best guess from the public
blocks whose names match (§5.1-§5.2): MobileViTv2's separable linear attention, a multi-kernel
depthwise mixer, Conv2Former's MLP with an inner residual depthwise convolution. The internals,
kernel sizes, expansion ratio, norms, activations, layer scale and block order are all
uncertain (§5.7). This is **not** the DKFZ 3D MedNeXt (Roy et al., MICCAI 2023), which shares
the name only (§8.4).

Every sub-layer is pre-norm and residual: `x + DropPath(LayerScale(f(LN(x))))`, with the
package's `ChannelLayerNorm` (per-pixel layer norm over channels, epsilon 1e-6, which
quantizes to int8) and exact GELU. Pointwise projections are 1x1 `Conv2D`s (int8 CONV_2D).
"""

from keras import layers

from keras_litenext.layers import (
    ChannelLayerNorm,
    LayerScale,
    StochasticDepth,
    conv_fan_in,
    torch_init,
)

EPSILON = 1e-6  # LayerNorm epsilon (ConvNeXt's)
KERNEL_SIZES = (3, 5, 7, 9)  # the SEM's depthwise kernels, one per channel group (spec §5.2a)
PARTS = ("sem", "la", "ffn")  # the block's sub-layers, in the reconstruction's order (§5.2d)


def _pw(filters, name):
    """A 1x1 `Conv2D` with bias and PyTorch's initialisation."""

    def apply(x):
        return layers.Conv2D(filters, 1, name=name, **torch_init(x.shape[-1]))(x)

    return apply


def _dw(kernel_size, name):
    """A depthwise `kernel_size` convolution, stride 1, "same" padding, with bias."""

    def apply(x):
        init = torch_init(conv_fan_in(x, kernel_size, depthwise=True))
        return layers.DepthwiseConv2D(
            kernel_size, padding="same", name=name,
            depthwise_initializer=init["kernel_initializer"], bias_initializer=init["bias_initializer"],
        )(x)

    return apply


def residual(shortcut, branch, layer_scale_init, drop_path_rate, name):
    """`shortcut + DropPath(LayerScale(branch))`; the layer scale (`{name}_scale`) is left out
    when `layer_scale_init` is falsy, the drop-path (`{name}_drop_path`) when the rate is 0."""
    if layer_scale_init:
        branch = LayerScale(layer_scale_init, name=f"{name}_scale")(branch)
    if drop_path_rate:
        branch = StochasticDepth(drop_path_rate, name=f"{name}_drop_path")(branch)
    return layers.Add(name=f"{name}_add")([shortcut, branch])


def SpatialEncodingModule(kernel_sizes=KERNEL_SIZES, layer_scale_init=1e-6, drop_path_rate=0.0, name=None):
    """Spatial Encoding Module: multi-scale depthwise encoding, residual (a reconstruction).

    Xue et al. (PLOS ONE 2026) call it the module "integrating multi-scale lesion information";
    its design is not public. Reconstruction (spec §5.2a; CMT/CPVT-style positional encoding
    made multi-scale as in MixConv/EdgeNeXt): LN, 1x1 projection C -> C, the channels split into
    `len(kernel_sizes)` equal groups with one depthwise kernel size each (3, 5, 7, 9), concat,
    GELU, 1x1 projection C -> C, layer scale, drop-path, add. Uncertain (§5.7): the kernel set
    (larger kernels, dilations), a gating product. `2C^2 + 47C` parameters with the default
    kernels.

    The 1x1 projection feeding the groups is written as one 1x1 `Conv2D` per group (C -> C/g,
    `{name}_group{i}_pw`), the same function and parameters as one projection split into groups,
    without a split op.

    Args:
        kernel_sizes: ints, one depthwise kernel size per channel group. Defaults to (3, 5, 7, 9).
        layer_scale_init: float, the `LayerScale` init (None or 0: none). Defaults to 1e-6.
        drop_path_rate: float, the `StochasticDepth` rate. Defaults to 0.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((56, 56, 48))
    >>> SpatialEncodingModule(name="block1_sem")(x).shape
    (None, 56, 56, 48)
    """
    kernel_sizes = tuple(int(k) for k in kernel_sizes)

    def apply(x):
        channels = int(x.shape[-1])
        groups = len(kernel_sizes)
        if not groups or channels % groups:
            raise ValueError(
                f"SpatialEncodingModule {name}: the channels ({channels}) must split into {groups} equal groups "
                f"(one per kernel size {kernel_sizes})."
            )
        h = ChannelLayerNorm(EPSILON, name=f"{name}_norm")(x)
        branches = []
        for i, k in enumerate(kernel_sizes, start=1):
            b = _pw(channels // groups, f"{name}_group{i}_pw")(h)
            branches.append(_dw(k, f"{name}_group{i}_dw")(b))
        h = layers.Concatenate(name=f"{name}_concat")(branches) if groups > 1 else branches[0]
        h = layers.Activation("gelu", name=f"{name}_act")(h)
        h = _pw(channels, f"{name}_proj")(h)
        return residual(x, h, layer_scale_init, drop_path_rate, name)

    return apply


def LinearAttentionFFN(layer_scale_init=1e-6, drop_path_rate=0.0, name=None):
    """Linear Attention FFN: separable linear self-attention, residual (a reconstruction).

    Xue et al. (PLOS ONE 2026) call it the module "enhancing lesion features"; its design is not
    public. Reconstruction (spec §5.1-§5.2b): the attention half of MobileViTv2's
    `LinearAttnFFN` (Mehta & Rastegari, arXiv:2206.02680), over the whole map (1x1 patches); its
    FFN half is the block's `SmoothDwConvFFN`. LN; 1x1 projections to a one-channel score map
    `q`, keys `K` and values `V` (C each); a softmax of `q` over all H*W positions; the context
    vector `c = sum_n s_n K_n` (C values, a `Dot` over positions); `ReLU(V) * c` broadcast over
    space; a 1x1 projection C -> C; layer scale, drop-path, add. Cost linear in H*W;
    `3C^2 + 7C + 1` parameters. Uncertain (§5.7): Conv2Former modulation, a GLU-type FFN or
    EfficientViT ReLU attention are the alternatives.

    The three projections are three 1x1 `Conv2D`s (`{name}_query`, `_key`, `_value`): the same
    function and parameters as MobileViTv2's one projection to 1 + 2C channels, split. The
    softmax runs in float32 under mixed precision. Works for any input size.

    int8: the softmax output has TFLite's fixed scale 1/256, so weights below ~1/512 round to 0;
    with near-uniform attention over a large map (1/3136 at 56x56) the int8 context vanishes.
    Quantization-aware fine-tuning can sharpen the scores; measure before deploying.

    Args:
        layer_scale_init: float, the `LayerScale` init (None or 0: none). Defaults to 1e-6.
        drop_path_rate: float, the `StochasticDepth` rate. Defaults to 0.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((14, 14, 192))
    >>> LinearAttentionFFN(name="block1_la")(x).shape
    (None, 14, 14, 192)
    """

    def apply(x):
        channels = int(x.shape[-1])
        h = ChannelLayerNorm(EPSILON, name=f"{name}_norm")(x)
        query = _pw(1, f"{name}_query")(h)
        key = _pw(channels, f"{name}_key")(h)
        value = _pw(channels, f"{name}_value")(h)
        scores = layers.Reshape((-1,), name=f"{name}_scores")(query)
        weights = layers.Softmax(axis=-1, name=f"{name}_softmax", dtype="float32")(scores)
        weights = layers.Reshape((-1, 1), name=f"{name}_weights")(weights)
        keys = layers.Reshape((-1, channels), name=f"{name}_keys")(key)
        context = layers.Dot(axes=1, name=f"{name}_context")([weights, keys])  # (batch, 1, C)
        context = layers.Reshape((1, 1, channels), name=f"{name}_context_map")(context)
        value = layers.ReLU(name=f"{name}_value_act")(value)
        h = layers.Multiply(name=f"{name}_gate")([value, context])
        h = _pw(channels, f"{name}_proj")(h)
        return residual(x, h, layer_scale_init, drop_path_rate, name)

    return apply


def SmoothDwConvFFN(ratio=4, layer_scale_init=1e-6, drop_path_rate=0.0, name=None):
    """Smooth DwConv FFN: the channel MLP with a residual depthwise "smoothing" (a reconstruction).

    Xue et al. (PLOS ONE 2026) call it the module for "efficient interaction of channel
    features"; its design is not public. Reconstruction (spec §5.2c; Conv2Former's MLP, CMT's
    IRFFN): LN, 1x1 expansion C -> rC, GELU giving `h`, `h + GELU(DW3(h))`, 1x1 projection
    rC -> C, layer scale, drop-path, add. `2rC^2 + 11rC + 4C` parameters. Uncertain (§5.7):
    Mix-FFN (no inner residual), r = 2-3.

    Args:
        ratio: int, the expansion ratio r. Defaults to 4.
        layer_scale_init: float, the `LayerScale` init (None or 0: none). Defaults to 1e-6.
        drop_path_rate: float, the `StochasticDepth` rate. Defaults to 0.
        name: str, the prefix of the layers' names.

    Example:
    >>> x = keras.Input((28, 28, 96))
    >>> SmoothDwConvFFN(name="block1_ffn")(x).shape
    (None, 28, 28, 96)
    """

    def apply(x):
        channels = int(x.shape[-1])
        h = ChannelLayerNorm(EPSILON, name=f"{name}_norm")(x)
        h = _pw(int(ratio) * channels, f"{name}_expand")(h)
        h = layers.Activation("gelu", name=f"{name}_act")(h)
        smooth = _dw(3, f"{name}_dw")(h)
        smooth = layers.Activation("gelu", name=f"{name}_dw_act")(smooth)
        h = layers.Add(name=f"{name}_smooth")([h, smooth])
        h = _pw(channels, f"{name}_project")(h)
        return residual(x, h, layer_scale_init, drop_path_rate, name)

    return apply


def MedNeXtBlock(
    parts=PARTS, kernel_sizes=KERNEL_SIZES, ffn_ratio=4, layer_scale_init=1e-6, drop_path_rate=0.0, name=None
):
    """One MedNeXt block: its residual sub-layers in order (a reconstruction).

    Default order (spec §5.1, §5.2d; CMT's LPU -> attention -> IRFFN layout):
    `SpatialEncodingModule` (`{name}_sem`) -> `LinearAttentionFFN` (`{name}_la`) ->
    `SmoothDwConvFFN` (`{name}_ffn`), each with its own layer scale and the block's drop-path
    rate. The order is a guess (§5.7): `("la", "sem", "ffn")` gives the abstract's listing
    order, and leaving `"la"` out a pure-convolution block (`13C^2 + 102C + 1` parameters with
    all three).

    Args:
        parts: names from `("sem", "la", "ffn")`, each at most once, in order.
        kernel_sizes: the SEM's depthwise kernels. Defaults to (3, 5, 7, 9).
        ffn_ratio: int, the SD-FFN expansion. Defaults to 4.
        layer_scale_init: float, the `LayerScale` init. Defaults to 1e-6.
        drop_path_rate: float, the block's `StochasticDepth` rate. Defaults to 0.
        name: str, the prefix of the layers' names.
    """
    parts = check_parts(parts)

    def apply(x):
        for part in parts:
            prefix = f"{name}_{part}"
            if part == "sem":
                x = SpatialEncodingModule(kernel_sizes, layer_scale_init, drop_path_rate, name=prefix)(x)
            elif part == "la":
                x = LinearAttentionFFN(layer_scale_init, drop_path_rate, name=prefix)(x)
            else:
                x = SmoothDwConvFFN(ffn_ratio, layer_scale_init, drop_path_rate, name=prefix)(x)
        return x

    return apply


def check_parts(parts):
    """`parts` as a tuple, checked: names from `PARTS`, each at most once, at least one."""
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"MedNeXt: block parts must be distinct names from {PARTS}, got {parts!r}.")
    return parts


def Downsample(filters, name=None):
    """ConvNeXt's down-sampling between stages: LN, then a 2x2 stride-2 convolution to `filters`
    (`{name}_norm`, `{name}_conv`). A reconstruction choice (spec §5.3)."""

    def apply(x):
        x = ChannelLayerNorm(EPSILON, name=f"{name}_norm")(x)
        return layers.Conv2D(filters, 2, strides=2, name=f"{name}_conv", **torch_init(conv_fan_in(x, 2)))(x)

    return apply
