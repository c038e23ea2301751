"""Model builders. Each returns a functional `keras.Model`; `create_model(name)` looks them up."""

from keras_litenext.models.litenext import LiteNeXt
from keras_litenext.models.registry import create_model, list_models, register_model

__all__ = ["LiteNeXt", "create_model", "list_models", "register_model"]
