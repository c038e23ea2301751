"""Names of LV-UNet's weights in the reference PyTorch code (github.com/juntaoJianggavin/LV-UNet,
`LV_UNet.py`) and the PyTorch layouts of its fusible layers, for `keras_litenext.load_torch_weights`.

The trunk is torchvision's `mobilenet_v3_large().features[0..9]`, regrouped by the reference as
`firstconv` (features.0), `encoder1` (1, 2), `encoder2` (3, 4, 5) and `encoder3` (6 to 9). Both
forms load: the training form from the reference model's `state_dict()`, the deploy form from
the state after its `switch_to_deploy()`.
"""

import re

import keras
import numpy as np

from keras_litenext.models.lvunet.lvunet_layers import FusibleConv, FusibleDepthwiseConv
from keras_litenext.weights import register_torch_converter

_GROUPS = ((0, "encoder1", 0), (1, "encoder1", 1), (2, "encoder2", 0), (3, "encoder2", 1), (4, "encoder2", 2),
           (5, "encoder3", 0), (6, "encoder3", 1), (7, "encoder3", 2), (8, "encoder3", 3))
_MODULE = {block_id: f"{group}.{index}" for block_id, group, index in _GROUPS}
_SQUEEZE_EXCITE = (3, 4, 5)  # Keras block ids with SE
_BN = ("weight", "bias", "running_mean", "running_var")


def _block_part(block_id, part):
    """torchvision's `InvertedResidual.block` index of a Keras part: expansion (absent in block
    0), depthwise, SE (blocks 3-5), projection, each a `Conv2dNormActivation` (`.0` conv,
    `.1` BN) except the SE (`.fc1`, `.fc2`)."""
    order = (["expand"] if block_id else []) + ["depthwise"] + (["se"] if block_id in _SQUEEZE_EXCITE else []) + ["project"]
    base, _, bn = part.partition("_")
    if part in ("squeeze_excite_conv", "squeeze_excite_conv_1"):
        return f"{order.index('se')}.{'fc1' if part == 'squeeze_excite_conv' else 'fc2'}"
    if base in order and bn in ("", "bn"):
        return f"{order.index(base)}.{1 if bn else 0}"
    return None


def _trunk_key(block_id, part):
    index = _block_part(block_id, part)
    return None if index is None else f"{_MODULE[block_id]}.block.{index}"


def _decoder(i):
    i = int(i)
    return f"up_stages1.{i - 1}" if i <= 3 else f"up_stages2.{i - 4}" if i <= 6 else "final.0"


_RULES = [
    (r"conv", lambda m: "firstconv.0"),
    (r"conv_bn", lambda m: "firstconv.1"),
    (r"expanded_conv_(?:(\d+)_)?(\w+)", lambda m: _trunk_key(int(m[1] or 0), m[2])),
    (r"stage(\d)_fusible_conv", lambda m: f"stages.{int(m[1]) - 1}"),
    (r"stage(\d)_(conv|act)", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}"),
    (r"up(\d)_fusible_conv", lambda m: _decoder(m[1])),
    (r"up(\d)_(conv|act)", lambda m: f"{_decoder(m[1])}.{m[2]}"),
    (r"head", lambda m: "final.1"),
]


def torch_key(layer_name):
    """The reference PyTorch module path of an LV-UNet layer, or `None` if it has no weights there.

    Example:
    >>> torch_key("expanded_conv_4_squeeze_excite_conv"), torch_key("up7_fusible_conv")
    ('encoder2.2.block.2.fc1', 'final.0')
    """
    for pattern, build in _RULES:
        match = re.fullmatch(pattern, layer_name)
        if match:
            return build(match)
    return None


def _conv(w):
    return w.transpose(2, 3, 1, 0)


def _same(a):
    return a


def _fusible_conv_parts(layer):
    # λ (`act_learn`) is a plain attribute of the reference's blocks, not in their state dict;
    # its entry keeps the layer's own slope (it reads under the name of conv1's bias, which
    # every state dict of the block has, so the all-or-nothing importer sees a complete layer).
    keep_slope = ("conv1.0.bias", lambda _: np.asarray(keras.ops.convert_to_numpy(layer.slope), np.float32))
    parts = [keep_slope]
    for conv in ("conv1", "conv2"):
        parts += [(f"{conv}.0.weight", _conv), (f"{conv}.0.bias", _same)] + [(f"{conv}.1.{s}", _same) for s in _BN]
    return parts


register_torch_converter(FusibleConv, _fusible_conv_parts)
register_torch_converter(
    FusibleDepthwiseConv, lambda layer: [("weight", lambda w: w.transpose(2, 3, 0, 1))] + [(f"bn.{s}", _same) for s in _BN]
)
