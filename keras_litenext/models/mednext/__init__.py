"""MedNeXt-lightweight (Xue et al., PLOS ONE 2026, doi:10.1371/journal.pone.0340108): a
**reconstruction from the abstract** (spec `mednext_style.md` §5; uncertain parts in its §5.7),
not the DKFZ 3D MedNeXt (Roy et al., MICCAI 2023). Classifier and U-shaped segmenter, their
blocks, and two registry specs, `mednext_cls` and `mednext_seg`, each built at `size="t"|"s"|"b"`
(default `"s"`). The model contract runs a narrow, shallow custom size (`ModelSpec.contract_kwargs`):
a MedNeXt block is ~40 layers, and conversion time grows with them.
"""

from keras_litenext.models.mednext.mednext_layers import (
    Downsample,
    LinearAttentionFFN,
    MedNeXtBlock,
    SmoothDwConvFFN,
    SpatialEncodingModule,
)
from keras_litenext.models.mednext.mednext_model import (
    SIZES,
    STRIDE,
    MedNeXtClassifier,
    MedNeXtSeg,
    feature_layers,
    registry_builder,
)
from keras_litenext.models.registry import ModelSpec, register_model

CONTRACT_SIZE = {"widths": (16, 32, 48, 64), "depths": (1, 1, 1, 1)}  # every module, a fraction of the layers
_REFERENCE = (
    "Xue, Pi, Liu, Zeng, Sun, MedNeXt for accurate medical image classification and segmentation: a lightweight "
    "transformer-style convolutional neural network, PLOS ONE 21(1):e0340108, 2026 (reconstructed from the abstract; "
    "not the DKFZ MedNeXt of Roy et al., MICCAI 2023)"
)

_NOTES = (
    "**A reconstruction, not the authors' model.** No code and no full text of the paper are public: only its "
    "abstract names the three modules (Spatial Encoding Module, Linear Attention FFN, Smooth DwConv FFN) and the "
    "headline results. The modules' internals, the widths and depths of the T/S/B sizes, the stem, the head and "
    "the segmentation decoder are this package's choices (README, \"MedNeXt-lightweight (a reconstruction)\"); its scores are not "
    "the paper's. Not the DKFZ 3D MedNeXt (Roy et al., MICCAI 2023)."
)

CLS_SPEC = register_model(
    ModelSpec(
        name="mednext_cls",
        builder=registry_builder(MedNeXtClassifier, "mednext_cls"),
        tasks=("classification",),
        size_multiple=STRIDE,
        feature_layers=feature_layers,
        description=(
            "MedNeXt-lightweight classifier (reconstruction): 4-stage SEM/linear-attention/DW-FFN ConvNet; "
            "size t/s/b = 2.99/7.64/15.23 M parameters, 0.49/1.27/2.57 G MACs at 224x224; default size s."
        ),
        default_input_shape=(224, 224, 3),
        notes=_NOTES,
        reference=_REFERENCE,
        contract_kwargs={"size": CONTRACT_SIZE},
    )
)

SEG_SPEC = register_model(
    ModelSpec(
        name="mednext_seg",
        builder=registry_builder(MedNeXtSeg, "mednext_seg"),
        tasks=("binary", "multiclass"),
        size_multiple=STRIDE,
        feature_layers=feature_layers,
        description=(
            "MedNeXt-lightweight U-shaped segmenter (reconstruction); size t/s/b = 3.83/9.48/18.48 M parameters, "
            "0.87/2.10/4.01 G MACs at 224x224 (9 classes); default size s."
        ),
        default_input_shape=(256, 256, 3),
        notes=_NOTES,
        reference=_REFERENCE,
        contract_kwargs={"size": CONTRACT_SIZE, "decoder_depths": (1, 0, 0)},
    )
)

__all__ = [
    "CLS_SPEC",
    "SEG_SPEC",
    "SIZES",
    "STRIDE",
    "Downsample",
    "LinearAttentionFFN",
    "MedNeXtBlock",
    "MedNeXtClassifier",
    "MedNeXtSeg",
    "SmoothDwConvFFN",
    "SpatialEncodingModule",
    "feature_layers",
]
