"""`StochasticDepth`: drop a residual branch per sample in training (drop-path), identity at
inference, with its quantization rule (passthrough).

Keras' own `StochasticDepth` (`keras.src.applications.convnext`) is private and takes
`[shortcut, branch]`; this one is applied to the branch alone, before the residual `Add`.
"""

import keras
from keras import layers, ops

from keras_litenext.quantization.rules import KEEP, QuantRule, register_quant_rule

PACKAGE = "keras_litenext"


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(layers.Layer):
    """Zero the whole input of a random fraction `rate` of the samples in training, and scale
    the others by `1 / (1 - rate)`; pass the input through unchanged at inference.

    Huang et al., "Deep Networks with Stochastic Depth" (arXiv:1603.09382), as drop-path in
    ConvNeXt and timm: applied to a residual branch `f(x)` before `x + f(x)`, it drops that block
    for the chosen samples. Random numbers come from `keras.random` with a `SeedGenerator`, so it
    runs on every backend.

    Args:
        rate: float in `[0, 1)`, the probability that a sample's branch is dropped. Defaults to 0.
        seed: optional int, the seed of the layer's `SeedGenerator`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> x = keras.ops.ones((8, 4, 4, 2))
    >>> StochasticDepth(0.5, seed=0)(x, training=False).shape
    (8, 4, 4, 2)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth: rate must be in [0, 1), got {rate!r}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.floor(ops.add(noise, keep))  # 1 with probability `keep`, else 0
        return ops.multiply(inputs, ops.multiply(mask, 1.0 / keep))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


# Identity at inference (what the converter traces): no op, the input's scale and values.
register_quant_rule(StochasticDepth, QuantRule(output=KEEP))
