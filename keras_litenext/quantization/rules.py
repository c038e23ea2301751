"""The open registry of quantization rules: one `QuantRule` per layer class, found by MRO.

A rule says, for one class of layer (or of `keras.ops` node in a functional graph), everything
`quantize_model` and `deployment_model` need:

- `quantize(layer, decay)`: the layer of the QAT graph (a `QuantConv2D` for a `Conv2D`; a
  float copy for layers whose math int8 keeps, such as a max-pool);
- `output(layer)`: how the output is quantized: `KEEP` (the input's scale and values, no
  quantizer: reshapes, max-pooling), `SAME` (new values on the input's grid: the input's
  quantizer again, e.g. bilinear up-sampling), `OWN` (a `FakeQuant` of its own), `SELF` (the
  QAT layer quantizes its output itself, its last range) or a fixed `(min, max)` (TFLite's
  softmax/sigmoid scales);
- `tie_inputs`: inputs and output share one range (int8 CONCATENATION);
- `deploy(layer)`: a float layer with the same math whose TFLite ops XNNPACK runs, or None.

Rules are registered beside their layers, so a new layer never means editing a switch:

>>> register_quant_rule(MyPooling, QuantRule(output=KEEP))            # a plain rule
>>> @register_quant_rule(MyNorm, output=SELF, deploy_class=MyNormForTFLite)
... class QuantMyNorm(QuantLayerMixin, MyNorm): ...                   # the QAT class itself

Lookup walks the class's MRO, so a subclass inherits its parent's rule; a subclass that
overrides `call` does not inherit a rule that replaces the layer (the replacement would drop
its own math) and needs a rule of its own.
"""

import re

import keras

from keras_litenext.quantization.core import QuantLayerMixin, UnsupportedLayerError

KEEP = "keep"
SAME = "same"
OWN = "own"
SELF = "self"
OUTPUT_KINDS = (KEEP, SAME, OWN, SELF)

_RULES = {}


def float_config(layer):
    """`layer.get_config()` with a float32 dtype (QAT graphs compute in float32)."""
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return config


def clone_as(cls, layer, **extra):
    """A new `cls` built from `layer`'s config (float32) plus `extra` arguments."""
    config = float_config(layer)
    config.update(extra)
    return cls.from_config(config)


class QuantRule:
    """How one class of layer is quantized for int8 TFLite, and deployed in float.

    Args:
        output: `KEEP`, `SAME`, `OWN` (default), `SELF` or a fixed `(min, max)` range.
        qat_class: the QAT layer class built from the layer's config (given `decay=` when it
            is a `QuantLayerMixin`); None (default) copies the layer.
        deploy_class: the float deployment class built from the layer's config; None keeps
            the layer.
        tie_inputs: bool, the inputs share the output's range. Defaults to False.
        reject: a reason (text); the layer is never quantized, and the error gives it.

    Subclasses override `quantize`, `output` or `deploy` when the answer depends on the
    layer's configuration (an `Activation`'s function, an `UpSampling2D`'s interpolation), and
    `call_arguments` to change the non-tensor arguments of a call (quantize constants).
    """

    def __init__(self, output=OWN, qat_class=None, deploy_class=None, tie_inputs=False, reject=None):
        if not (output in OUTPUT_KINDS or (isinstance(output, tuple) and len(output) == 2)):
            raise ValueError(f"QuantRule: output must be one of {OUTPUT_KINDS} or a (min, max) range, got {output!r}.")
        self._output = output if isinstance(output, str) else (float(output[0]), float(output[1]))
        self.qat_class = qat_class
        self.deploy_class = deploy_class
        self.tie_inputs = bool(tie_inputs)
        self.reject = reject

    @property
    def replaces(self):
        """True when the QAT layer is another class (so a subclass's own `call` would be lost)."""
        return self.qat_class is not None or self.deploy_class is not None

    def quantize(self, layer, decay):
        """The layer of the QAT graph for `layer`."""
        if self.reject:
            raise unsupported_error(layer, f" ({self.reject})", hint=False)
        if self.qat_class is None:
            return layer.__class__.from_config(float_config(layer))
        extra = {"decay": decay} if issubclass(self.qat_class, QuantLayerMixin) else {}
        return clone_as(self.qat_class, layer, **extra)

    def output(self, layer):
        """How the output of `layer` is quantized (see the module docstring)."""
        return self._output

    def call_arguments(self, layer, args, kwargs):
        """The arguments of the QAT layer's call, from the float graph's (tensors already mapped)."""
        return args, kwargs

    def deploy(self, layer):
        """The float deployment form of `layer`, or None to keep it."""
        if self.deploy_class is None or type(layer) is self.deploy_class:
            return None
        return self.deploy_class.from_config(layer.get_config())

    def __repr__(self):
        parts = [f"output={self._output!r}"]
        for attr in ("qat_class", "deploy_class"):
            if getattr(self, attr) is not None:
                parts.append(f"{attr}={getattr(self, attr).__name__}")
        if self.tie_inputs:
            parts.append("tie_inputs=True")
        if self.reject:
            parts.append("reject=...")
        return f"{type(self).__name__}({', '.join(parts)})"


def register_quant_rule(layer_classes, rule=None, **fields):
    """Register the quantization rule of one or more layer (or `keras.ops` operation) classes.

    With `rule` (a `QuantRule`): registers it and returns it. Without: returns a class
    decorator. Decorating a layer class makes it the `qat_class` of `QuantRule(**fields)`;
    decorating a `QuantRule` subclass registers `cls(**fields)`. Registering a class twice
    raises: a rule has one owner.

    Example:
    >>> register_quant_rule(keras.layers.MaxPooling2D, QuantRule(output=KEEP))
    >>> @register_quant_rule(ChannelLayerNorm, output=SELF)
    ... class QuantChannelLayerNorm(QuantLayerMixin, ChannelLayerNorm): ...
    """
    classes = tuple(layer_classes) if isinstance(layer_classes, (tuple, list)) else (layer_classes,)

    def add(new_rule):
        for cls in classes:
            if not isinstance(cls, type):
                raise TypeError(f"register_quant_rule: expected layer classes, got {cls!r}.")
            if cls in _RULES:
                raise ValueError(f"register_quant_rule: {display_name(cls)} already has a rule ({_RULES[cls]!r}).")
        for cls in classes:
            _RULES[cls] = new_rule
        return new_rule

    if rule is not None:
        if fields:
            raise TypeError("register_quant_rule: pass either a rule or its fields, not both.")
        return add(rule)

    def decorator(obj):
        if isinstance(obj, type) and issubclass(obj, QuantRule):
            add(obj(**fields))
        else:
            add(QuantRule(qat_class=obj, **fields))
        return obj

    return decorator


def find_quant_rule(layer):
    """`(rule, registered_class)` for `layer`, or None: the rule of the nearest class of its MRO
    that has one, unless that rule replaces the layer and the layer overrides `call`."""
    for cls in type(layer).__mro__:
        rule = _RULES.get(cls)
        if rule is None:
            continue
        if cls is not type(layer) and rule.replaces and _overrides_call(type(layer), cls):
            return None
        return rule, cls
    return None


def _overrides_call(cls, base):
    return getattr(cls, "call", None) is not getattr(base, "call", None)


def get_quant_rule(layer):
    """The `QuantRule` of `layer`; raises `UnsupportedLayerError` naming it when there is none."""
    found = find_quant_rule(layer)
    if found is None:
        raise unsupported_error(layer)
    return found[0]


def supported_layers():
    """Display names of every class with a rule, sorted: `keras.layers.Conv2D`,
    `keras.ops.add`, `keras_litenext>ChannelLayerNorm`, ..."""
    return sorted({display_name(cls) for cls, rule in _RULES.items() if not rule.reject})


def is_ops_node(layer):
    """True for a `keras.ops` operation in a functional graph (not a layer)."""
    return isinstance(layer, keras.Operation) and not isinstance(layer, keras.layers.Layer)


def display_name(cls):
    """How a user writes the class: `keras.layers.Add`, `keras.ops.add`, or its registered name."""
    module = cls.__module__
    if module.startswith("keras.src.layers") or module.startswith("keras.layers"):
        return f"keras.layers.{cls.__name__}"
    if module.startswith("keras.src.ops") or module.startswith("keras.ops"):
        return f"keras.ops.{re.sub(r'(?<!^)(?=[A-Z])', '_', cls.__name__).lower()}"
    registered = keras.saving.get_registered_name(cls)
    return registered if ">" in registered else f"{module}.{cls.__name__}"


def unsupported_error(layer, why="", hint=True):
    """The error for a layer without an int8-faithful QAT form: names it, lists the rules (never
    its own class), and says what to do."""
    cls = type(layer)
    own = display_name(cls)
    supported = ", ".join(name for name in supported_layers() if name != own)
    if is_ops_node(layer):
        text = (
            f"quantize_model: the keras.ops node {layer.name!r} ({own}; an operation of the functional graph, not a layer) "
            f"cannot be quantized{why or ': no quantization rule is registered for it'}. Write that step with a layer that "
            f"has a rule (keras.layers.Add / Multiply, an Activation or ReLU layer, ...), or register a rule for its class: "
            f"keras_litenext.quantization.register_quant_rule({cls.__module__}.{cls.__name__}, QuantRule(...))."
        )
    else:
        text = f"quantize_model: layer {layer.name!r} ({cls.__name__}) cannot be quantized{why or ': no quantization rule is registered for it'}."
        if hint:
            text += (
                f" Register one (keras_litenext.quantization.register_quant_rule({cls.__name__}, QuantRule(...))), rewrite "
                f"that part of the model with layers that have rules, or, if the layer only moves values around (no "
                f"arithmetic), pass passthrough=({cls.__name__!r},)."
            )
    return UnsupportedLayerError(f"{text} Rules exist for: {supported}.")
