"""U-Lite (Dinh et al., 2023, arXiv:2306.16103): builder, blocks, PyTorch names, registry spec."""

from keras_litenext.models.registry import ModelSpec, register_model
from keras_litenext.models.ulite.ulite_layers import (
    DecoderBlock,
    DilatedAxialBottleneck,
    EncoderBlock,
)
from keras_litenext.models.ulite.ulite_model import FEATURE_LAYERS, STRIDE, ULite
from keras_litenext.models.ulite.ulite_torch import torch_key

SPEC = register_model(
    ModelSpec(
        name="ulite",
        builder=ULite,
        tasks=("binary", "multiclass"),
        size_multiple=STRIDE,
        feature_layers=FEATURE_LAYERS,
        torch_key=torch_key,
        description="U-Net of axial depthwise 7x7 convolutions with a dilated axial bottleneck; 0.88 M parameters, 0.74 G MACs at 256x256.",
        default_input_shape=(256, 256, 3),
        reference=(
            "Dinh, Nguyen, Tran, Pham, 1M parameters are enough? A lightweight CNN-based model for medical image "
            "segmentation (U-Lite), APSIPA ASC 2023, pp. 1279-1284, arXiv:2306.16103"
        ),
    )
)

__all__ = [
    "FEATURE_LAYERS",
    "SPEC",
    "STRIDE",
    "DecoderBlock",
    "DilatedAxialBottleneck",
    "EncoderBlock",
    "ULite",
    "torch_key",
]
