"""Import weights from the reference PyTorch implementations.

The state dict is a plain mapping of names to arrays (for example `dict(np.load("x.npz"))`, or
`{k: v.numpy() for k, v in torch_model.state_dict().items()}`), so PyTorch is not a dependency.
Which PyTorch module a layer comes from is the model's `ModelSpec.torch_key`; how a layer's
tensors convert is a converter per layer class (`register_torch_converter`, found by MRO).
"""

import numpy as np
from keras import layers

from keras_litenext.layers import ChannelLayerNorm
from keras_litenext.models.registry import get_spec, spec_of

_SKIPPED_SUFFIXES = ("num_batches_tracked",)
_CONVERTERS = {}


def register_torch_converter(layer_classes, converter):
    """Register how the PyTorch tensors of one or more layer classes become Keras weights.

    `converter(layer)` returns `[(suffix, convert), ...]` in the order of `layer.weights`:
    the PyTorch parameter name under the module path (`"weight"`) and a function from the
    PyTorch array to the Keras one. Registering a class twice raises.
    """
    classes = tuple(layer_classes) if isinstance(layer_classes, (tuple, list)) else (layer_classes,)
    for cls in classes:
        if cls in _CONVERTERS:
            raise ValueError(f"register_torch_converter: {cls.__name__} already has a converter.")
        _CONVERTERS[cls] = converter
    return converter


def _same(a):
    return a


def _with_bias(layer, kernel):
    return [("weight", kernel)] + ([("bias", _same)] if layer.use_bias else [])


register_torch_converter(layers.DepthwiseConv2D, lambda layer: _with_bias(layer, lambda w: w.transpose(2, 3, 0, 1)))  # (C, M, kh, kw)
register_torch_converter(layers.Conv2D, lambda layer: _with_bias(layer, lambda w: w.transpose(2, 3, 1, 0)))  # (O, I, kh, kw)
# a Linear, or a 1x1 convolution applied to a pooled vector
register_torch_converter(layers.Dense, lambda layer: _with_bias(layer, lambda w: (w[:, :, 0, 0] if w.ndim == 4 else w).T))
register_torch_converter(
    (ChannelLayerNorm, layers.LayerNormalization, layers.GroupNormalization), lambda layer: [("weight", _same), ("bias", _same)]
)
register_torch_converter(
    layers.BatchNormalization,
    lambda layer: [("weight", _same), ("bias", _same), ("running_mean", _same), ("running_var", _same)],
)


def _converter(layer):
    for cls in type(layer).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls]
    raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) has no PyTorch weight conversion; "
                    "add one with keras_litenext.weights.register_torch_converter.")


def load_torch_weights(model, state_dict, architecture=None):
    """Fill `model` with the weights of the reference PyTorch model.

    Args:
        model: a model built by this package (e.g. `LiteNeXt(kernel_size=7)`), with the same
            configuration as the reference model the weights come from.
        state_dict: mapping of PyTorch state-dict names to arrays. Entries whose names start
            with `__` (fixture metadata) and BatchNorm `num_batches_tracked` counters are ignored.
        architecture: registry name of the model (`"litenext"`). Defaults to the spec of
            `model` (`keras_litenext.models.spec_of`, from its name).

    Raises:
        ValueError: naming every missing, unexpected or mis-shaped tensor. Nothing is assigned
            unless every tensor fits.

    Example:
    >>> state = dict(np.load("litenext_k7.npz"))
    >>> load_torch_weights(LiteNeXt(input_shape=(96, 96, 3)), state)
    """
    spec = get_spec(architecture) if architecture else spec_of(model)
    if spec.torch_key is None:
        raise ValueError(f"Model {spec.name!r} has no PyTorch reference to import weights from.")
    state = {k: np.asarray(v) for k, v in state_dict.items() if not k.startswith("__")}
    missing, mismatched, used, assignments = [], [], set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = spec.torch_key(layer.name)
        if prefix is None:
            raise ValueError(f"Layer {layer.name!r} has weights but no PyTorch counterpart in {spec.name!r}.")
        parts = _converter(layer)(layer)
        expected = {f"{prefix}.{suffix}" for suffix, _ in parts}
        if isinstance(layer, layers.BatchNormalization):
            expected.add(f"{prefix}.num_batches_tracked")
        absent = sorted(k for k in expected if k not in state and not k.endswith(_SKIPPED_SUFFIXES))
        if absent:
            missing.extend(f"{k} (for layer {layer.name!r})" for k in absent)
            continue
        used |= expected
        arrays = [(f"{prefix}.{suffix}", convert(state[f"{prefix}.{suffix}"])) for suffix, convert in parts]
        for variable, (key, array) in zip(layer.weights, arrays):
            if tuple(variable.shape) != array.shape:
                mismatched.append(f"{key} -> {variable.path}: expected {tuple(variable.shape)}, got {array.shape} after conversion")
        assignments.append((layer, [array for _, array in arrays]))
    unexpected = sorted(k for k in state if k not in used and not k.endswith(_SKIPPED_SUFFIXES))
    problems = []
    if missing:
        problems.append("missing tensors: " + "; ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    if mismatched:
        problems.append("mis-shaped tensors: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"Cannot load the state dict into {model.name!r}: " + " | ".join(problems))
    for layer, arrays in assignments:
        layer.set_weights([a.astype(np.float32) for a in arrays])
    return model
