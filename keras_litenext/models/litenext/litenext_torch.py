"""Names of LiteNeXt's weights in the reference PyTorch code (github.com/tranngocduvnvp/LiteNeXt,
`Models/LiteNeXt.py`), for `keras_litenext.load_torch_weights`."""

import re

# PyTorch state_dict names of the reference (`Models/LiteNeXt.py`) for each weighted layer.
_MIXER_PARTS = {
    "local_conv": "conv_local",
    "local_norm": "ln1.layernorm",
    "far_conv": "conv",
    "far_norm": "ln3.layernorm",
    "mix_conv": "conv1x1",
    "mix_norm": "ln2.layernorm",
}
_RULES = [
    (r"stem_conv", lambda m: "patches_parition.0"),
    (r"stem_norm", lambda m: "patches_parition.1.layernorm"),
    (r"stage(\d)_down_conv", lambda m: f"stage{m[1]}.0.patches_merge.1"),
    (r"stage(\d)_down_norm", lambda m: f"stage{m[1]}.0.patches_merge.2.layernorm"),
    (
        r"stage(\d)_block(\d+)_(\w+)",
        lambda m: f"stage{m[1]}.{int(m[2]) - (m[1] == '1')}.{_MIXER_PARTS[m[3]]}" if m[3] in _MIXER_PARTS else None,
    ),
    (r"bottleneck_(in|out)_conv", lambda m: f"bottle_neck.0.{m[1]}_layers.0"),
    (r"bottleneck_(in|out)_norm", lambda m: f"bottle_neck.0.{m[1]}_layers.1.layernorm"),
    (r"fusion_(scale\d|query)_value_conv", lambda m: f"attention.{_normfm(m[1])}.norm.conv1x1"),
    (r"fusion_(scale\d|query)_value_norm", lambda m: f"attention.{_normfm(m[1])}.norm.bn.layernorm"),
    (r"fusion_(scale\d|query)_key_dense([12])", lambda m: f"attention.{_normfm(m[1])}.mlp.{2 * int(m[2]) - 2}"),
    (r"fusion_score", lambda m: "attention.mlp"),
    (r"decoder_conv", lambda m: "rb4.conv1x1"),
    (r"decoder_norm", lambda m: "rb4.bn.layernorm"),
    (r"head", lambda m: "head"),
]


def _normfm(part):
    return "normfmDecode" if part == "query" else f"normfm{part[len('scale'):]}"


def torch_key(layer_name):
    """The reference PyTorch module path of a LiteNeXt layer, or `None` if it has no weights there."""
    for pattern, build in _RULES:
        match = re.fullmatch(pattern, layer_name)
        if match:
            return build(match)
    return None
