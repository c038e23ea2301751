"""LV-UNet (Jiang et al., 2024): a MobileNetV3-Large trunk and fusible VanillaNet-style blocks,
trained in a re-parameterisable form and deployed in a smaller one.

Paper: "LV-UNet: A Lightweight and Vanilla Model for Medical Image Segmentation",
arXiv:2408.16886; IEEE BIBM 2024 (ML4BMI workshop). Code: github.com/juntaoJianggavin/LV-UNet.
"""

import os

import keras
import numpy as np
from keras import layers

from keras_litenext.layers import check_input_shape, torch_init
from keras_litenext.models.lvunet.lvunet_layers import (
    FUSIBLE_LAYERS,
    FusibleBlock,
    InvertedResidual,
    Stem,
)
from keras_litenext.models.lvunet.weights import fetch_imagenet_weights

STRIDE = 128  # four stride-2 stages in the trunk, then three max-pools
PADDINGS = ("torch", "keras")
PREPROCESSING = (None, "keras", "imagenet", "auto")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision mobilenet_v3_large features[1..9] as (expanded, out, kernel, stride, SE, activation);
# entry i is Keras' block i (`expanded_conv_{i}_*`).
TRUNK = (
    (16, 16, 3, 1, False, "relu"),
    (64, 24, 3, 2, False, "relu"),
    (72, 24, 3, 1, False, "relu"),
    (72, 40, 5, 2, True, "relu"),
    (120, 40, 5, 1, True, "relu"),
    (120, 40, 5, 1, True, "relu"),
    (240, 80, 3, 2, False, "hard_swish"),
    (200, 80, 3, 1, False, "hard_swish"),
    (184, 80, 3, 1, False, "hard_swish"),
)
TRUNK_FEATURES = ("expanded_conv_1_project_bn", "expanded_conv_4_add", "expanded_conv_8_add")  # e1, e2, e3
ENCODER_WIDTHS = (160, 240, 480)  # stage1..3 (the reference's stages.0-2), after e3 (80)
DECODER_WIDTHS = (240, 160, 80, 40, 24, 16, 16)  # up1..up7 (up_stages1.0-2, up_stages2.0-2, final.0)


def LVUNet(
    input_shape=(256, 256, 3),
    num_classes=1,
    reparameterized=False,
    padding="torch",
    preprocessing="auto",
    backbone_weights=None,
    slope=0.0,
    weights=None,
    name="lvunet",
):
    """Build LV-UNet, a lightweight U-Net on a MobileNetV3-Large trunk with fusible blocks.

    Reference: Jiang, Wang, Tian, Cheng, Liu, "LV-UNet: A Lightweight and Vanilla Model for
    Medical Image Segmentation", arXiv:2408.16886 (IEEE BIBM 2024).

    Encoder: MobileNetV3-Large up to its 80-channel stage (torchvision `features[0..9]`;
    layers named as in `keras.applications.MobileNetV3Large`) giving e1 (1/4, 24 channels), e2
    (1/8, 40) and e3 (1/16, 80), then three fusible blocks with max-pooling, `stage1..3` (1/32,
    1/64, 1/128; 160, 240, 480 channels). Decoder: seven fusible blocks with bilinear x2
    up-sampling, `up1..up7`; the outputs of `up1..up5` are *added* to stage2, stage1, e3, e2 and
    e1. A 1x1 `head` gives the logits. No deep supervision.

    Training form (`reparameterized=False`): each block is `FusibleConv` -> resample -> ReLU ->
    `FusibleDepthwiseConv`, the leaky-ReLU slope λ of `FusibleConv` annealed from 0 to 1 by
    `DeepTrainingSchedule`. Deploy form (`reparameterized=True`, or `reparameterize(model)` of
    a trained model): `Conv2D` 1x1 -> resample -> ReLU -> `DepthwiseConv2D` 3x3 with bias, equal
    to the training form at λ = 1. Parameters, PyTorch's count (trainable weights; BN moving
    statistics are PyTorch buffers, and λ is a plain attribute there): **934,545** training
    (non-trainable: 14,064 BN statistics + 10 slopes), **513,585** deploy (5,200 BN
    statistics). With the reference's weights (`keras_litenext.load_torch_weights`) both forms
    match the PyTorch code to float32 rounding.

    The output is **logits** at the input resolution, `(batch, height, width, num_classes)`.

    Args:
        input_shape: `(height, width, channels)`. Height and width must be multiples of 128
            (or `None`): the reference crashes on skip additions otherwise. Pixels in `[0, 1]`.
            Defaults to `(256, 256, 3)`.
        num_classes: int, output channels. Defaults to 1.
        reparameterized: bool, build the deploy form. Defaults to False (training form).
        padding: `"torch"` (default): the stride-2 convolutions pad symmetrically (`k // 2`
            every side), as torchvision and the reference. `"keras"`: Keras applications'
            asymmetric padding (0/1 for 3x3, 1/2 for 5x5), which its ImageNet weights were
            trained with. With the same (random) weights at 256x256 the two differ by max
            |Δ| 0.11 at e1, 0.021 at e2 and 0.019 at e3 (activations of std 0.24-0.32).
        preprocessing: what the model does to its `[0, 1]` input first. `None`: nothing (as
            the reference model, whose data pipeline normalises); `"keras"`: rescale to
            `[-1, 1]`, the input of Keras' ImageNet MobileNetV3 weights (its
            `include_preprocessing`, for `[0, 255]` input); `"imagenet"`: ImageNet mean/std,
            the input of torchvision's weights; `"auto"` (default): `"keras"` when
            `backbone_weights` is given, else `None`.
        backbone_weights: `None` (default; random initialisation), `"imagenet"` or the path of
            a local weights file (`.h5` or `.weights.h5`) of
            `keras.applications.MobileNetV3Large(include_top=False)` (alpha 1.0, not
            minimalistic), such as its ImageNet file; its trunk layers are copied by name.
            `"imagenet"` fetches Keras' ImageNet file as `keras.applications` does
            (`fetch_imagenet_weights`: same URL and hash, downloaded once into
            `$KERAS_HOME/models/`, default `~/.keras/models/`). Use it with `padding="keras"`.
        slope: float, λ of the training form as built. Defaults to 0.0 (ReLU, the reference's
            start); the schedule sets it every epoch.
        weights: `None` or the path of a `.weights.h5` file saved from a model of the same
            configuration and form.
        name: str, the model's name. Defaults to `"lvunet"`.

    Returns:
        A functional `keras.Model`.

    Raises:
        FileNotFoundError: `backbone_weights` names no file.
        OSError: `backbone_weights="imagenet"` and the download failed; ValueError: the
            downloaded file's hash is not Keras'. Either is one line naming the URL.

    Example:
    >>> model = LVUNet()
    >>> sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    934545
    >>> deploy = reparameterize(model)          # 513,585 trainable weights
    """
    height, width, channels = check_input_shape(input_shape, STRIDE, "LVUNet")
    if padding not in PADDINGS:
        raise ValueError(f"LVUNet: padding must be one of {PADDINGS}, got {padding!r}.")
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"LVUNet: preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}.")
    if int(num_classes) < 1:
        raise ValueError(f"LVUNet: num_classes must be >= 1, got {num_classes!r}.")
    imagenet = isinstance(backbone_weights, str) and backbone_weights == "imagenet"
    if backbone_weights is not None and not imagenet and not os.path.isfile(os.fspath(backbone_weights)):
        raise FileNotFoundError(
            f"LVUNet: backbone_weights file {os.fspath(backbone_weights)!r} does not exist. Pass the local weights file "
            f"of keras.applications.MobileNetV3Large(include_top=False) (e.g. "
            f"weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5 from ~/.keras/models/), or \"imagenet\" to download it."
        )
    if imagenet:  # before building: a failed download fails fast
        backbone_weights = fetch_imagenet_weights()
    if preprocessing == "auto":
        preprocessing = "keras" if backbone_weights is not None else None

    inputs = keras.Input((height, width, channels), name="image")
    x = inputs
    if preprocessing == "keras":
        x = layers.Rescaling(2.0, offset=-1.0, name="rescaling")(x)
    elif preprocessing == "imagenet":
        mean = np.array(IMAGENET_MEAN) if channels == 3 else np.full(channels, np.mean(IMAGENET_MEAN))
        std = np.array(IMAGENET_STD) if channels == 3 else np.full(channels, np.mean(IMAGENET_STD))
        x = layers.Rescaling((1.0 / std).tolist(), offset=(-mean / std).tolist(), name="rescaling")(x)
    x = Stem(padding)(x)
    skips = []
    for block_id, (expanded, filters, kernel, strides, se, act) in enumerate(TRUNK):
        x = InvertedResidual(expanded, filters, kernel, strides, se, act, block_id, padding=padding)(x)
        if block_id in (1, 4):  # e1, e2
            skips.append(x)
    for i, filters in enumerate(ENCODER_WIDTHS, start=1):
        skips.append(x)  # e3, stage1, stage2
        x = FusibleBlock(filters, "pool", reparameterized, slope, name=f"stage{i}")(x)
    for i, filters in enumerate(DECODER_WIDTHS, start=1):
        x = FusibleBlock(filters, "up", reparameterized, slope, name=f"up{i}")(x)
        if i <= 5:
            x = layers.Add(name=f"up{i}_add")([x, skips.pop()])
    outputs = layers.Conv2D(num_classes, 1, name="head", dtype="float32", **torch_init(x.shape[-1]))(x)
    model = keras.Model(inputs, outputs, name=name)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    if weights is not None:
        model.load_weights(weights)
    return model


def _trunk_layers(model):
    return [layer for layer in model.layers if layer.weights and (layer.name.startswith(("conv", "expanded_conv")))]


def load_backbone_weights(model, path):
    """Copy the trunk of a `keras.applications.MobileNetV3Large(include_top=False)` weights file
    (`.h5` or `.weights.h5`) into an LV-UNet's trunk, layer by layer under the Keras names.

    A one-channel model gets the stem kernel summed over RGB. Returns `model`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a MobileNetV3-Large (alpha 1.0) weights file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_backbone_weights: no such file {path!r}.")
    source, errors = None, []
    for include_preprocessing in (True, False):  # a layer without weights, but part of a .weights.h5's structure
        candidate = keras.applications.MobileNetV3Large(
            input_shape=(224, 224, 3), include_top=False, weights=None, include_preprocessing=include_preprocessing
        )
        try:
            candidate.load_weights(path)
        except Exception as err:  # noqa: BLE001 - tell the user what the file is not
            errors.append(f"{type(err).__name__}: {err}")
            continue
        source = candidate
        break
    if source is None:
        raise ValueError(
            f"load_backbone_weights: {path!r} is not a weights file of keras.applications.MobileNetV3Large(include_top=False, "
            f"alpha=1.0): {' | '.join(e[:300] for e in errors)}"
        )
    for layer in _trunk_layers(model):
        arrays = source.get_layer(layer.name).get_weights()
        if layer.name == "conv" and arrays[0].shape[2] != layer.kernel.shape[2]:
            if layer.kernel.shape[2] != 1:
                raise ValueError(f"load_backbone_weights: the stem takes {layer.kernel.shape[2]} channels; ImageNet weights fit 1 or 3.")
            arrays = [arrays[0].sum(axis=2, keepdims=True)]
        layer.set_weights(arrays)
    return model


def feature_layers(model):
    """LV-UNet's encoder features, shallow to deep: e1, e2, e3 of the trunk (strides 4, 8, 16)
    and the outputs of `stage1..3` (32, 64, 128)."""
    return TRUNK_FEATURES + tuple(f"stage{i}_act" for i in range(1, len(ENCODER_WIDTHS) + 1))


def _deploy_name(layer):
    """The name of a fusible layer's deploy form: `{block}_fusible_conv` becomes `{block}_conv`
    (one convolution replaces the pair); `{block}_act` keeps its name."""
    suffix = "_fusible_conv"
    return layer.name[: -len(suffix)] + "_conv" if layer.name.endswith(suffix) else layer.name


def reparameterize(model):
    """The deploy form of a training-form LV-UNet, with the same outputs at λ = 1.

    kimm's pattern: the model is rebuilt from its layers' configs with every fusible layer
    replaced by its deploy form (`get_reparameterized_layer`: a `Conv2D` 1x1 for each
    `FusibleConv`, a biased `DepthwiseConv2D` for each `FusibleDepthwiseConv`), which takes the
    fused weights (`get_reparameterized_weights`); every other weight is copied. The result is
    the model `LVUNet(..., reparameterized=True)` builds, with 513,585 parameters (from
    934,545) and 10 % fewer MACs: what the reference's `switch_to_deploy` does. The trunk's
    BatchNorms stay, as there; the int8 converter folds them (`quantize_model`).

    The fused network is the training form at λ = 1, whatever λ the layers hold: train with
    `DeepTrainingSchedule`, which ends at λ = 1, or the deploy form differs from the trained
    network. A model without fusible layers (already deployed) is returned as it is.

    Example:
    >>> deploy = reparameterize(trained)
    >>> deploy.save("lvunet_deploy.keras")
    """
    if not any(isinstance(layer, FUSIBLE_LAYERS) for layer in model.layers):
        return model
    sources = {}

    def clone(layer):
        if isinstance(layer, FUSIBLE_LAYERS):
            new = layer.get_reparameterized_layer(name=_deploy_name(layer))
            sources[new.name] = layer
            return new
        return layer.__class__.from_config(layer.get_config())

    deploy = keras.models.clone_model(model, clone_function=clone)
    for layer in deploy.layers:
        if not layer.weights:
            continue
        if layer.name in sources:
            layer.set_weights(sources[layer.name].get_reparameterized_weights())
        else:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return deploy


model_to_deploy = reparameterize
