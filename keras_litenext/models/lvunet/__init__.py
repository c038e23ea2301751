"""LV-UNet (Jiang et al., 2024, arXiv:2408.16886): builder, fusible blocks, deep-training
schedule, re-parameterisation, PyTorch names, registry spec."""

from keras_litenext.models.lvunet.lvunet_layers import (
    DeepTrainingSchedule,
    FusibleBlock,
    FusibleConv,
    FusibleDepthwiseConv,
    InvertedResidual,
    deep_training_slope,
    fusible_layers,
    set_slope,
)
from keras_litenext.models.lvunet.lvunet_model import (
    STRIDE,
    LVUNet,
    feature_layers,
    load_backbone_weights,
    model_to_deploy,
    reparameterize,
)
from keras_litenext.models.lvunet.lvunet_torch import torch_key
from keras_litenext.models.lvunet.weights import fetch_imagenet_weights
from keras_litenext.models.registry import ModelSpec, register_model

SPEC = register_model(
    ModelSpec(
        name="lvunet",
        builder=LVUNet,
        tasks=("binary", "multiclass"),
        size_multiple=STRIDE,
        feature_layers=feature_layers,
        torch_key=torch_key,
        description="MobileNetV3-Large trunk and re-parameterisable VanillaNet-style blocks; 0.93 M parameters "
                    "training (0.17 G MACs at 256x256), 0.51 M deployed (0.16 G MACs).",
        default_input_shape=(256, 256, 3),
        reference="Jiang et al., LV-UNet: A Lightweight and Vanilla Model for Medical Image Segmentation, "
                  "arXiv:2408.16886 (IEEE BIBM 2024)",
        deploy=reparameterize,
        training_callbacks=lambda epochs: [DeepTrainingSchedule(epochs)],
    )
)

__all__ = [
    "SPEC",
    "STRIDE",
    "DeepTrainingSchedule",
    "FusibleBlock",
    "FusibleConv",
    "FusibleDepthwiseConv",
    "InvertedResidual",
    "LVUNet",
    "deep_training_slope",
    "feature_layers",
    "fetch_imagenet_weights",
    "fusible_layers",
    "load_backbone_weights",
    "model_to_deploy",
    "reparameterize",
    "set_slope",
    "torch_key",
]
