"""Import weights from the reference PyTorch implementations.

The state dict is a plain mapping of names to arrays (for example `dict(np.load("x.npz"))`, or
`{k: v.numpy() for k, v in torch_model.state_dict().items()}`), so PyTorch is not a dependency.
"""

import numpy as np
from keras import layers

from keras_litenext.layers import ChannelLayerNorm
from keras_litenext.models.registry import get_torch_key

_SKIPPED_SUFFIXES = ("num_batches_tracked",)


def _convert(layer, prefix, state_dict):
    """`(pytorch_name, keras_array)` for each weight of `layer`, PyTorch layouts converted."""

    def get(suffix, convert=lambda a: a):
        return f"{prefix}.{suffix}", convert(state_dict[f"{prefix}.{suffix}"])

    if isinstance(layer, layers.DepthwiseConv2D):
        arrays = [get("weight", lambda w: w.transpose(2, 3, 0, 1))]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    elif isinstance(layer, layers.Conv2D):
        arrays = [get("weight", lambda w: w.transpose(2, 3, 1, 0))]  # (O, I, kh, kw) -> (kh, kw, I, O)
    elif isinstance(layer, layers.Dense):
        # a Linear, or a 1x1 convolution applied to a pooled vector
        arrays = [get("weight", lambda w: (w[:, :, 0, 0] if w.ndim == 4 else w).T)]
    elif isinstance(layer, ChannelLayerNorm):
        return [get("weight"), get("bias")]
    elif isinstance(layer, layers.BatchNormalization):
        return [get("weight"), get("bias"), get("running_mean"), get("running_var")]
    else:
        raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) has no PyTorch weight conversion.")
    if layer.use_bias:
        arrays.append(get("bias"))
    return arrays


def _used_keys(layer, prefix):
    names = ["weight", "bias"]
    if isinstance(layer, layers.BatchNormalization):
        names += ["running_mean", "running_var", "num_batches_tracked"]
    elif isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)) and not layer.use_bias:
        names = ["weight"]
    return {f"{prefix}.{n}" for n in names}


def load_torch_weights(model, state_dict, architecture=None):
    """Fill `model` with the weights of the reference PyTorch model.

    Args:
        model: a model built by this package (e.g. `LiteNeXt(kernel_size=7)`), with the same
            configuration as the reference model the weights come from.
        state_dict: mapping of PyTorch state-dict names to arrays. Entries whose names start
            with `__` (fixture metadata) and BatchNorm `num_batches_tracked` counters are ignored.
        architecture: registry name of the model (`"litenext"`). Defaults to `model.name`.

    Raises:
        ValueError: naming every missing, unexpected or mis-shaped tensor. Nothing is assigned
            unless every tensor fits.

    Example:
    >>> state = dict(np.load("litenext_k7.npz"))
    >>> load_torch_weights(LiteNeXt(input_shape=(96, 96, 3)), state)
    """
    torch_key = get_torch_key(architecture or model.name)
    state = {k: np.asarray(v) for k, v in state_dict.items() if not k.startswith("__")}
    missing, mismatched, used, assignments = [], [], set(), []
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_key(layer.name)
        if prefix is None:
            raise ValueError(f"Layer {layer.name!r} has weights but no PyTorch counterpart in {architecture or model.name!r}.")
        expected = _used_keys(layer, prefix)
        absent = sorted(k for k in expected if k not in state and not k.endswith(_SKIPPED_SUFFIXES))
        if absent:
            missing.extend(f"{k} (for layer {layer.name!r})" for k in absent)
            continue
        used |= expected
        arrays = _convert(layer, prefix, state)
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
