"""One registry of model builders, so that CLIs accept `--model litenext` and tests can loop over
every model (the `timm.create_model` idiom)."""

_MODELS = {}


def register_model(name, builder, torch_key=None):
    """Register `builder` under `name`.

    Args:
        name: str, the lower-case registry name (`"litenext"`).
        builder: the function that returns the functional `keras.Model`.
        torch_key: optional function mapping a Keras layer name to the PyTorch module path of
            the reference implementation, used by `keras_litenext.load_torch_weights`.
    """
    if name in _MODELS:
        raise ValueError(f"A model named {name!r} is already registered.")
    _MODELS[name] = {"builder": builder, "torch_key": torch_key}
    return builder


def list_models():
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def _entry(name):
    try:
        return _MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(list_models())}.") from None


def create_model(name, **kwargs):
    """Build the registered model `name` with keyword arguments for its builder.

    Example:
    >>> model = create_model("litenext", input_shape=(96, 96, 3))
    """
    return _entry(name)["builder"](**kwargs)


def get_torch_key(name):
    """The layer-name → PyTorch-module-path function registered for model `name`."""
    key = _entry(name)["torch_key"]
    if key is None:
        raise ValueError(f"Model {name!r} has no PyTorch reference to import weights from.")
    return key
