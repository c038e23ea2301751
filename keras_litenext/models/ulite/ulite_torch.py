"""Names of U-Lite's weights in the reference PyTorch code (github.com/duong-db/U-Lite,
`models/ULite.py`), for `keras_litenext.load_torch_weights`."""

import re

_AXIAL = {"h": "dw_h", "w": "dw_w"}
_DECODER_PARTS = {"in_conv": "pw", "norm": "bn", "out_conv": "pw2"}
_RULES = [
    (r"stem_conv", lambda m: "conv_in"),
    (r"encoder(\d)_axial_([hw])", lambda m: f"e{m[1]}.dw.{_AXIAL[m[2]]}"),
    (r"encoder(\d)_norm", lambda m: f"e{m[1]}.bn"),
    (r"encoder(\d)_conv", lambda m: f"e{m[1]}.pw"),
    (r"bottleneck_in_conv", lambda m: "b5.pw1"),
    (r"bottleneck_axial(\d)_([hw])", lambda m: f"b5.dw{m[1]}.{_AXIAL[m[2]]}"),
    (r"bottleneck_norm", lambda m: "b5.bn"),
    (r"bottleneck_out_conv", lambda m: "b5.pw2"),
    (r"decoder(\d)_axial_([hw])", lambda m: f"d{m[1]}.dw.{_AXIAL[m[2]]}"),
    (r"decoder(\d)_(in_conv|norm|out_conv)", lambda m: f"d{m[1]}.{_DECODER_PARTS[m[2]]}"),
    (r"head", lambda m: "conv_out"),
]


def torch_key(layer_name):
    """The reference PyTorch module path of a U-Lite layer, or `None` if it has no weights there.

    Example:
    >>> torch_key("decoder5_axial_h"), torch_key("bottleneck_axial3_w"), torch_key("encoder1_pool")
    ('d5.dw.dw_h', 'b5.dw3.dw_w', None)
    """
    for pattern, build in _RULES:
        match = re.fullmatch(pattern, layer_name)
        if match:
            return build(match)
    return None
