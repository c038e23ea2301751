"""Model accounting: parameters and multiply-accumulates (MACs)."""

import keras
from keras import layers


def _with_input_shape(model, input_shape):
    """The model itself, or a weight-less clone with a fixed `(height, width, channels)` input."""
    if input_shape is None:
        return model
    inputs = keras.Input(tuple(input_shape), batch_size=1)
    return keras.models.clone_model(model, input_tensors=inputs)


def count_macs(model, input_shape=None, by_layer=False):
    """Multiply-accumulates of one forward pass at batch size 1.

    Counts convolutions (dense and depthwise) and dense layers, without biases, norms,
    activations, pooling or resizing: the convention behind the "0.42 GFLOPs" of LiteNeXt (its
    412.27 M conv/linear MACs at 256x256, measured on the reference code with forward hooks).

    Args:
        model: a functional `keras.Model`.
        input_shape: optional `(height, width, channels)`; needed when the model was built with
            `None` height or width.
        by_layer: bool, also return a dict of MACs per layer name.

    Returns:
        int total MACs, or `(total, per_layer)` when `by_layer=True`.

    Example:
    >>> count_macs(LiteNeXt(), (256, 256, 3)) / 1e6    # doctest: +ELLIPSIS
    412.2...
    """
    model = _with_input_shape(model, input_shape)
    per_layer = {}
    for layer in model.layers:
        if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
            continue
        for node_index in range(len(layer._inbound_nodes)):
            in_shape = layer._inbound_nodes[node_index].input_tensors[0].shape
            out_shape = layer._inbound_nodes[node_index].output_tensors[0].shape
            if any(d is None for d in out_shape[1:]):
                raise ValueError(
                    f"count_macs: {layer.name!r} has an unknown output size {out_shape}; pass input_shape=(height, width, channels)."
                )
            positions = 1
            for d in out_shape[1:-1]:
                positions *= d
            if isinstance(layer, layers.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                macs = positions * out_shape[-1] * kh * kw
            elif isinstance(layer, layers.Conv2D):
                kh, kw = layer.kernel_size
                macs = positions * out_shape[-1] * kh * kw * in_shape[-1] // layer.groups
            else:
                macs = positions * in_shape[-1] * out_shape[-1]
            per_layer[layer.name] = per_layer.get(layer.name, 0) + macs
    total = sum(per_layer.values())
    return (total, per_layer) if by_layer else total
