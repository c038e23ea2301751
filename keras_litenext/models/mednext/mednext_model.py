"""MedNeXt-lightweight (Xue et al., PLOS ONE 2026): the classifier and the U-shaped segmenter.

Paper: Xue, Pi, Liu, Zeng, Sun, "MedNeXt for accurate medical image classification and
segmentation: A lightweight transformer-style convolutional neural network", PLOS ONE 21(1):
e0340108, 2026, doi:10.1371/journal.pone.0340108.

**A reconstruction from the abstract** (`shared/specs/mednext_style.md` §5): no code or full
text was available. The macro design (4 stages at strides 4-32, ConvNeXt stem/down-sampling/
head, the T/S/B ladder, the decoder) is the spec's, and the parts marked uncertain in its §5.7
(block composition and order, module internals, widths and depths, decoder) should be replaced
once the paper's Methods are read. **Not** the DKFZ 3D MedNeXt (Roy et al., MICCAI 2023).
"""

import keras
from keras import layers

from keras_litenext.layers import (
    ChannelLayerNorm,
    ConvNormAct,
    check_input_shape,
    torch_init,
)
from keras_litenext.models.mednext.mednext_layers import (
    EPSILON,
    KERNEL_SIZES,
    PARTS,
    Downsample,
    MedNeXtBlock,
    check_parts,
)

STRIDE = 32  # stem /4, then three 2x2 stride-2 down-samplings

# The spec's size ladder (§5.3; the names T/S/B are the spec's, not the paper's).
SIZES = {
    "t": {"widths": (32, 64, 128, 256), "depths": (2, 2, 4, 2), "drop_path_rate": 0.1},
    "s": {"widths": (48, 96, 192, 384), "depths": (2, 2, 6, 2), "drop_path_rate": 0.1},
    "b": {"widths": (64, 128, 256, 512), "depths": (2, 2, 8, 2), "drop_path_rate": 0.2},
}

_RECONSTRUCTION = """**A reconstruction** from the abstract of Xue et al. (PLOS ONE 2026,
    doi:10.1371/journal.pone.0340108; spec `mednext_style.md` §5), not the paper's code (none is
    public). Uncertain (spec §5.7): block composition and order, the three modules' internals,
    kernel sizes, widths and depths, norm/activation, layer scale and drop-path, the decoder.
    **Not** the DKFZ 3D MedNeXt (Roy et al., MICCAI 2023), which shares only the name."""


def size_config(size):
    """The widths, depths and default drop-path rate of size `"t"`, `"s"` or `"b"`, or of a
    custom size given as a dict with those three keys (four widths, four depths)."""
    if isinstance(size, dict):
        config = {"drop_path_rate": 0.0, **size}
        if set(config) != {"widths", "depths", "drop_path_rate"} or len(config["widths"]) != 4 or len(config["depths"]) != 4:
            raise ValueError(f"MedNeXt: a custom size is {{'widths': 4 ints, 'depths': 4 ints[, 'drop_path_rate']}}, got {size!r}.")
        return {"widths": tuple(int(w) for w in config["widths"]), "depths": tuple(int(d) for d in config["depths"]),
                "drop_path_rate": float(config["drop_path_rate"])}
    key = str(size).lower()
    if key not in SIZES:
        raise ValueError(f"MedNeXt: size must be one of {tuple(SIZES)}, got {size!r}.")
    return SIZES[key]


def _check(input_shape, num_classes, model_name, attention_stages, block_order):
    shape = check_input_shape(input_shape, STRIDE, model_name)
    if int(num_classes) < 1:
        raise ValueError(f"{model_name}: num_classes must be >= 1, got {num_classes!r}.")
    stages = tuple(int(s) for s in attention_stages)
    if any(s not in (1, 2, 3, 4) for s in stages):
        raise ValueError(f"{model_name}: attention_stages must be stage numbers 1-4, got {attention_stages!r}.")
    return shape, stages, check_parts(block_order)


def _encoder(inputs, size, drop_path_rate, layer_scale_init, ffn_ratio, kernel_sizes, block_order, attention_stages):
    """Stem and the four stages; returns the stage outputs (strides 4, 8, 16, 32)."""
    config = size_config(size)
    widths, depths = config["widths"], config["depths"]
    rate = config["drop_path_rate"] if drop_path_rate is None else float(drop_path_rate)
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]  # linear in depth, 0 -> rate
    # Overlapping stem (spec §5.3): 3x3/2 conv + BN + GELU, 3x3/2 conv + BN.
    x = ConvNormAct(widths[0] // 2, 3, strides=2, norm="batch", activation="gelu", name="stem1")(inputs)
    x = ConvNormAct(widths[0], 3, strides=2, norm="batch", activation=None, name="stem2")(x)
    features, index = [], 0
    for stage, (filters, depth) in enumerate(zip(widths, depths), start=1):
        if stage > 1:
            x = Downsample(filters, name=f"stage{stage}_down")(x)
        parts = block_parts(block_order, stage, attention_stages)
        for block in range(1, depth + 1):
            x = MedNeXtBlock(
                parts, kernel_sizes, ffn_ratio, layer_scale_init, rates[index], name=f"stage{stage}_block{block}"
            )(x)
            index += 1
        features.append(x)
    return features


def block_parts(block_order, stage, attention_stages):
    """The block's sub-layers at `stage`: `block_order` without `"la"` outside `attention_stages`."""
    return tuple(p for p in block_order if p != "la" or stage in attention_stages)


def MedNeXtClassifier(
    input_shape=(224, 224, 3),
    num_classes=2,
    size="s",
    drop_path_rate=None,
    layer_scale_init=1e-6,
    ffn_ratio=4,
    kernel_sizes=KERNEL_SIZES,
    block_order=PARTS,
    attention_stages=(1, 2, 3, 4),
    head_dropout=0.0,
    weights=None,
    name=None,
):
    """Build the MedNeXt-lightweight image classifier: a reconstruction, not the DKFZ MedNeXt.

    {reconstruction}

    Layout (spec §5.3): stem to 1/4 (3x3/2 conv + BN + GELU, 3x3/2 conv + BN); four stages of
    `MedNeXtBlock`s (Spatial Encoding Module -> Linear Attention FFN -> Smooth DwConv FFN, each a
    pre-norm residual with layer scale and drop-path) at strides 4, 8, 16, 32, stages 2-4
    opened by LN + 2x2/2 conv; head: global average pool, LN, dropout, dense. Drop-path rises
    linearly with depth from 0 to `drop_path_rate`.

    | size | widths | depths | parameters (2 classes) | MACs at 224x224 |
    |---|---|---|---|---|
    | `"t"` | 32, 64, 128, 256 | 2, 2, 4, 2 | 2,992,300 | 0.49 G |
    | `"s"` | 48, 96, 192, 384 | 2, 2, 6, 2 | 7,635,326 | 1.27 G |
    | `"b"` | 64, 128, 256, 512 | 2, 2, 8, 2 | 15,228,240 | 2.57 G |

    (The spec's analytic 2.99 / 7.64 / 15.23 M and 0.49 / 1.27 / 2.57 G; parameters include the
    stem BatchNorms' moving statistics.) The output is **logits** `(batch, num_classes)`; the
    classification task applies the softmax.

    Args:
        input_shape: `(height, width, channels)`; height and width multiples of 32 or None.
            Pixels are expected in `[0, 1]`. Defaults to `(224, 224, 3)`.
        num_classes: int, classes. Defaults to 2.
        size: `"t"`, `"s"` (default) or `"b"`.
        drop_path_rate: float, the deepest block's drop-path rate; None (default) takes the
            spec's 0.1 (T, S) or 0.2 (B).
        layer_scale_init: float, the layer-scale init of every sub-layer (None: no layer
            scale). Defaults to 1e-6.
        ffn_ratio: int, the SD-FFN expansion. Defaults to 4.
        kernel_sizes: the SEM's depthwise kernels, one per channel group. Defaults to
            (3, 5, 7, 9).
        block_order: the block's sub-layers in order, from `("sem", "la", "ffn")` (default).
        attention_stages: stages (1-4) whose blocks have the linear-attention sub-layer.
            Defaults to all four; `(3, 4)` is the spec's lighter option.
        head_dropout: float, dropout before the dense head. Defaults to 0.
        weights: None (random initialisation) or the path of a `.weights.h5` file of a model of
            the same configuration.
        name: str; None (default) gives `"mednext_cls_{{size}}"`.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = MedNeXtClassifier(size="t")
    >>> model.count_params(), model.output_shape
    (2992300, (None, 2))
    """
    (height, width, channels), stages, order = _check(
        input_shape, num_classes, "MedNeXtClassifier", attention_stages, block_order
    )
    inputs = keras.Input((height, width, channels), name="image")
    x = _encoder(inputs, size, drop_path_rate, layer_scale_init, ffn_ratio, kernel_sizes, order, stages)[-1]
    x = layers.GlobalAveragePooling2D(keepdims=True, name="head_pool")(x)
    x = ChannelLayerNorm(EPSILON, name="head_norm")(x)
    x = layers.Flatten(name="head_flatten")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(int(num_classes), name="head", dtype="float32", **torch_init(x.shape[-1]))(x)
    model = keras.Model(inputs, outputs, name=name or f"mednext_cls_{_size_name(size)}")
    if weights is not None:
        model.load_weights(weights)
    return model


def MedNeXtSeg(
    input_shape=(256, 256, 3),
    num_classes=1,
    size="s",
    decoder_depths=(2, 2, 2),
    drop_path_rate=None,
    layer_scale_init=1e-6,
    ffn_ratio=4,
    kernel_sizes=KERNEL_SIZES,
    block_order=PARTS,
    attention_stages=(1, 2, 3, 4),
    weights=None,
    name=None,
):
    """Build the MedNeXt-lightweight U-shaped segmenter: a reconstruction, not the DKFZ MedNeXt.

    {reconstruction}

    Layout (spec §5.4): the classifier's encoder (stem and four stages, no head); three decoder
    stages from 1/32 to 1/4, each a 2x2/2 `Conv2DTranspose` to the skip's width, a concatenation
    with the encoder stage output at that scale, a 1x1 fusion conv and `decoder_depths` MedNeXt
    blocks (no drop-path); a 4x4/4 `Conv2DTranspose` back to the input resolution (Swin-Unet's
    final patch expanding) and a 1x1 head. Deep supervision (spec option) is not built.

    | size | parameters (1 class) | (9 classes) | MACs at 224x224, 9 classes |
    |---|---|---|---|
    | `"t"` | 3,828,017 | 3,828,281 | 0.87 G |
    | `"s"` | 9,481,795 | 9,482,187 | 2.10 G |
    | `"b"` | 18,480,725 | 18,481,245 | 4.01 G |

    (The spec's analytic 3.83 / 9.48 / 18.48 M and "about" 0.87 / 2.10 / 4.02 G for 9 classes.)
    The output is **logits** at the input resolution, `(batch, height, width, num_classes)`.

    Args:
        input_shape: `(height, width, channels)`; height and width multiples of 32 or None.
            Pixels are expected in `[0, 1]`. Defaults to `(256, 256, 3)`.
        num_classes: int, output channels: 1 (default, binary) or K class logits.
        size: `"t"`, `"s"` (default) or `"b"`.
        decoder_depths: three ints, blocks of decoder stages 3, 2, 1 (strides 16, 8, 4).
            Defaults to (2, 2, 2).
        drop_path_rate: as in `MedNeXtClassifier`.
        layer_scale_init: as in `MedNeXtClassifier`.
        ffn_ratio: as in `MedNeXtClassifier`.
        kernel_sizes: as in `MedNeXtClassifier`.
        block_order: as in `MedNeXtClassifier`.
        attention_stages: as in `MedNeXtClassifier` (decoder blocks take the attention of their
            scale's encoder stage).
        weights: None or the path of a `.weights.h5` file of a model of the same configuration.
        name: str; None (default) gives `"mednext_seg_{{size}}"`.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> model = MedNeXtSeg(size="t")
    >>> model.count_params(), model.output_shape
    (3828017, (None, 256, 256, 1))
    """
    (height, width, channels), stages, order = _check(input_shape, num_classes, "MedNeXtSeg", attention_stages, block_order)
    decoder_depths = tuple(int(d) for d in decoder_depths)
    if len(decoder_depths) != 3 or min(decoder_depths) < 0:
        raise ValueError(f"MedNeXtSeg: decoder_depths must be three ints >= 0, got {decoder_depths!r}.")
    widths = size_config(size)["widths"]
    inputs = keras.Input((height, width, channels), name="image")
    features = _encoder(inputs, size, drop_path_rate, layer_scale_init, ffn_ratio, kernel_sizes, order, stages)
    x = features[-1]
    for stage, depth in zip((3, 2, 1), decoder_depths):
        filters = widths[stage - 1]
        prefix = f"decoder{stage}"
        x = _transpose(filters, 2, f"{prefix}_up")(x)
        x = layers.Concatenate(name=f"{prefix}_concat")([x, features[stage - 1]])
        x = layers.Conv2D(filters, 1, name=f"{prefix}_fuse", **torch_init(x.shape[-1]))(x)
        parts = block_parts(order, stage, stages)
        for block in range(1, depth + 1):
            x = MedNeXtBlock(parts, kernel_sizes, ffn_ratio, layer_scale_init, 0.0, name=f"{prefix}_block{block}")(x)
    x = _transpose(widths[0], 4, "final_up")(x)
    outputs = layers.Conv2D(int(num_classes), 1, name="head", dtype="float32", **torch_init(x.shape[-1]))(x)
    model = keras.Model(inputs, outputs, name=name or f"mednext_seg_{_size_name(size)}")
    if weights is not None:
        model.load_weights(weights)
    return model


MedNeXtClassifier.__doc__ = MedNeXtClassifier.__doc__.format(reconstruction=_RECONSTRUCTION)
MedNeXtSeg.__doc__ = MedNeXtSeg.__doc__.format(reconstruction=_RECONSTRUCTION)


def _transpose(filters, factor, name):
    """A `factor` x `factor` stride-`factor` `Conv2DTranspose` (PyTorch's init: fan-in
    `filters * factor^2`, from its `(in, out, kh, kw)` weight)."""

    def apply(x):
        return layers.Conv2DTranspose(filters, factor, strides=factor, name=name, **torch_init(filters * factor * factor))(x)

    return apply


def feature_layers(model):
    """The encoder features, shallow to deep: the last layer of each stage's last block
    (`stage{s}_block{d}_{part}_add`, strides 4, 8, 16 and 32)."""
    found = []
    for stage in range(1, 5):
        last = None
        for layer in model.layers:
            if layer.name.startswith(f"stage{stage}_block") and layer.name.endswith("_add"):
                last = layer.name
        if last is not None:
            found.append(last)
    return tuple(found)


def _size_name(size):
    return "custom" if isinstance(size, dict) else str(size).lower()


def registry_builder(builder, registry_name, default_size="s"):
    """`builder` as the registry builds it: named `registry_name` by default (`spec_of` and the
    contract expect `create_model(name).name == name`) and of size `default_size` unless `size=`
    is given; the direct builders are named `"{registry_name}_{size}"`."""

    def build(*args, size=default_size, name=registry_name, **kwargs):
        return builder(*args, size=size, name=name, **kwargs)

    build.__name__ = build.__qualname__ = f"{builder.__name__}_registry"
    build.__doc__ = (
        f"`{builder.__name__}` named `{registry_name!r}` and of size `{default_size!r}` by default (the registry's "
        f"builder; pass `size=` for another).\n\n" + (builder.__doc__ or "")
    )
    return build
