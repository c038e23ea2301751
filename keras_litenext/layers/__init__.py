"""Layers and block builders shared by the model families of the package.

Blocks are *builders*, in the keras.applications style: a function that takes the block's
hyper-parameters and a `name`, and returns a callable that adds standard Keras layers with
readable names (`stage2_block1_far_conv`, ...) to a functional graph. Models therefore stay flat
graphs of standard layers, which is what layer-by-layer tools need: the PyTorch weight importer,
the MAC counter and the quantization-aware cloner all walk `model.layers` by type and name.

Shared here:

- `ChannelLayerNorm`: layer normalisation over the channel axis, written out with `keras.ops`
  so that it quantizes to int8 (with its QAT and deployment forms and their rules);
- `ConvNormAct`: convolution, norm, activation (LiteNeXt's CLG unit by default);
- `torch_init`: PyTorch's initialisation of convolutions and dense layers;
- `check_input_shape`: the input-shape rule every builder checks first;
- `AxialDepthwiseConv`: U-Lite's axial depthwise convolution, `x + DW_(k x 1)(x) + DW_(1 x k)(x)`;
- `LayerScale` (per-channel learned multiplier, int8 as a depthwise 1x1 convolution) and
  `StochasticDepth` (per-sample drop-path in training, identity at inference).

Blocks of one family live in its folder (`keras_litenext.models.litenext.litenext_layers`);
`LGEMixerBlock`, `DownsampleBlock`, `ResidualBottleneck`, `MultiScaleAttentionFusion` and
`ScaleWeightedSum` stay importable from here. Everything uses `keras.layers` and `keras.ops`
only, so it runs on every Keras backend.
"""

from keras_litenext.layers.axial import AxialDepthwiseConv
from keras_litenext.layers.channel_layer_norm import (
    ChannelLayerNorm,
    DeployChannelLayerNorm,
    QuantChannelLayerNorm,
)
from keras_litenext.layers.conv_norm_act import ConvNormAct, conv_fan_in, torch_init
from keras_litenext.layers.input_shape import check_input_shape
from keras_litenext.layers.layer_scale import LayerScale, QuantLayerScale
from keras_litenext.layers.stochastic_depth import StochasticDepth

PACKAGE = "keras_litenext"

__all__ = [
    "PACKAGE",
    "AxialDepthwiseConv",
    "ChannelLayerNorm",
    "ConvNormAct",
    "DeployChannelLayerNorm",
    "LayerScale",
    "QuantChannelLayerNorm",
    "QuantLayerScale",
    "StochasticDepth",
    "check_input_shape",
    "conv_fan_in",
    "torch_init",
]
