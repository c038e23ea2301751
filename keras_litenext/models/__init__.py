"""Model families, one folder each (`litenext/`), and the registry that generic code reads.

Each family's `__init__.py` registers its `ModelSpec`; importing this package registers them
all. `create_model(name, **kwargs)` builds one, `get_spec(name)` / `spec_of(model)` give its
facts (size multiple, feature layers, tasks, PyTorch names).
"""

from keras_litenext.models.litenext import LiteNeXt  # registers "litenext"
from keras_litenext.models.lvunet import (  # registers "lvunet"
    LVUNet,
    model_to_deploy,
    reparameterize,
)
from keras_litenext.models.mednext import (  # registers "mednext_cls", "mednext_seg"
    MedNeXtClassifier,
    MedNeXtSeg,
)
from keras_litenext.models.registry import (
    ModelSpec,
    create_model,
    feature_extractor,
    get_spec,
    list_models,
    register_model,
    spec_of,
)
from keras_litenext.models.ulite import ULite  # registers "ulite"

__all__ = [
    "LVUNet",
    "LiteNeXt",
    "MedNeXtClassifier",
    "MedNeXtSeg",
    "ModelSpec",
    "ULite",
    "create_model",
    "feature_extractor",
    "get_spec",
    "list_models",
    "model_to_deploy",
    "register_model",
    "reparameterize",
    "spec_of",
]
