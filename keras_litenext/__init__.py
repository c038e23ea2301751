"""keras-litenext: lightweight medical image segmentation in Keras 3, from training to int8 TFLite.

>>> from keras_litenext import LiteNeXt
>>> model = LiteNeXt()          # 711,201 parameters, logits at the input resolution
"""

from keras_litenext.cli import quiet_start as _quiet_start

_quiet_start()  # the command alone (not a library user): TensorFlow's C++ start-up lines stay out of its output

# Importing the modules registers their layers, quantization rules, model specs, losses and
# metrics with Keras, so that any saved `.keras` file of the package loads after
# `import keras_litenext`.
from keras_litenext import (
    export,  # keras_litenext.export.export(model, "out/", ...): phone files
    layers,
    losses,
    metrics,
    quantization,
)
from keras_litenext.models import (
    LiteNeXt,
    LVUNet,
    MedNeXtClassifier,
    MedNeXtSeg,
    ModelSpec,
    ULite,
    create_model,
    get_spec,
    list_models,
    model_to_deploy,
    reparameterize,
    spec_of,
)
from keras_litenext.presets import list_presets, load_preset, save_preset
from keras_litenext.utils import count_macs
from keras_litenext.version import __version__
from keras_litenext.weights import load_torch_weights

__all__ = [
    "LVUNet",
    "LiteNeXt",
    "MedNeXtClassifier",
    "MedNeXtSeg",
    "ModelSpec",
    "ULite",
    "count_macs",
    "create_model",
    "export",
    "get_spec",
    "layers",
    "list_models",
    "list_presets",
    "load_preset",
    "load_torch_weights",
    "losses",
    "metrics",
    "model_to_deploy",
    "quantization",
    "reparameterize",
    "save_preset",
    "spec_of",
    "__version__",
]
