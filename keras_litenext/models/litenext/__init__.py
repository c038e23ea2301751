"""LiteNeXt (Tran et al., 2024, arXiv:2405.15779): builder, blocks, PyTorch names, registry spec."""

from keras_litenext.layers import check_input_shape  # noqa: F401 (its older import path)
from keras_litenext.models.litenext.litenext_layers import (
    DownsampleBlock,
    LGEMixerBlock,
    MultiScaleAttentionFusion,
    ResidualBottleneck,
    ScaleWeightedSum,
)
from keras_litenext.models.litenext.litenext_model import (
    STRIDE,
    LiteNeXt,
    feature_layers,
)
from keras_litenext.models.litenext.litenext_torch import torch_key
from keras_litenext.models.registry import ModelSpec, register_model

SPEC = register_model(
    ModelSpec(
        name="litenext",
        builder=LiteNeXt,
        tasks=("binary", "multiclass"),
        size_multiple=STRIDE,
        feature_layers=feature_layers,
        torch_key=torch_key,
        description="ConvMixer-style encoder and multi-scale attention fusion decoder; 0.71 M parameters, 0.41 G MACs at 256x256.",
        default_input_shape=(256, 256, 3),
        reference="Tran et al., LiteNeXt, arXiv:2405.15779 (BSPC 2025)",
    )
)

__all__ = [
    "DownsampleBlock",
    "LGEMixerBlock",
    "LiteNeXt",
    "MultiScaleAttentionFusion",
    "ResidualBottleneck",
    "SPEC",
    "STRIDE",
    "ScaleWeightedSum",
    "feature_layers",
    "torch_key",
]
