"""One registry of model families, so that CLIs accept `--model litenext`, generic code reads a
model's facts from its spec, and tests loop over every model (the `timm.create_model` idiom).

A family registers a `ModelSpec` in its folder's `__init__.py`. Generic code (inference
padding, SeRP, the PyTorch weight importer, the contract test) reads the spec, never a model
file's constants or its layer names.

Example:
>>> spec = get_spec("litenext")
>>> spec.size_multiple, spec.tasks
(16, ('binary', 'multiclass'))
>>> model = create_model("litenext", input_shape=(96, 96, 3))
>>> spec_of(model).name
'litenext'
"""

import dataclasses
from typing import Callable, Optional, Tuple, Union

import keras

_SPECS = {}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What generic code needs to know about a model family.

    Attributes:
        name: the lower-case registry name (`"litenext"`); also the default `name` of the
            models the builder returns, which is how `spec_of` finds the spec of a built or
            loaded model.
        builder: the function returning the functional `keras.Model`; it takes `input_shape`,
            `num_classes`, `weights` and `name`, plus the family's own arguments.
        tasks: the task names whose outputs it can produce (`"binary"`, `"multiclass"`,
            `"classification"`).
        size_multiple: int, the multiple input height and width must be (the output stride);
            the builder raises a `ValueError` naming it for other sizes.
        feature_layers: names of the encoder feature layers, shallow to deep, or a function
            `model -> names` when they depend on the configuration (`feature_layer_names`).
        torch_key: function mapping a layer name to its module path in the reference PyTorch
            implementation (for `keras_litenext.load_torch_weights`), or None.
        description: one line.
        notes: what a user must know before trusting the model (for example that it is a
            reconstruction), shown in every run's `model_card.md`; empty by default.
        default_input_shape: `(height, width, channels)` the builder uses by default.
        reference: the paper (citation and arXiv id).
        deploy: function `model -> model` giving the inference form of a trained model (for
            example a re-parameterised one), or None when the trained model is deployed as is.
            Training saves this form as the run's `best.keras`, so evaluation, prediction and
            conversion use it.
        training_callbacks: function `(epochs) -> [keras.callbacks.Callback, ...]` of callbacks
            the family needs while training (for example a schedule), or None.
        contract_kwargs: builder arguments of the small model the contract test checks (a
            narrow, shallow configuration of a large family, which keeps every module type);
            empty by default.
    """

    name: str
    builder: Callable[..., keras.Model]
    tasks: Tuple[str, ...] = ("binary", "multiclass")
    size_multiple: int = 1
    feature_layers: Union[Tuple[str, ...], Callable[[keras.Model], Tuple[str, ...]]] = ()
    torch_key: Optional[Callable[[str], Optional[str]]] = None
    description: str = ""
    notes: str = ""
    default_input_shape: Tuple[Optional[int], Optional[int], int] = (256, 256, 3)
    reference: str = ""
    deploy: Optional[Callable[[keras.Model], keras.Model]] = None
    training_callbacks: Optional[Callable[[int], list]] = None
    contract_kwargs: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"ModelSpec: name must be a non-empty lower-case string, got {self.name!r}.")
        if not callable(self.builder):
            raise ValueError(f"ModelSpec {self.name!r}: builder must be callable.")
        if int(self.size_multiple) < 1:
            raise ValueError(f"ModelSpec {self.name!r}: size_multiple must be >= 1, got {self.size_multiple!r}.")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ValueError(f"ModelSpec {self.name!r}: tasks must name at least one task.")
        if not callable(self.feature_layers):
            object.__setattr__(self, "feature_layers", tuple(self.feature_layers))

    def feature_layer_names(self, model):
        """The names of `model`'s encoder feature layers, shallow to deep (checked to exist)."""
        names = tuple(self.feature_layers(model) if callable(self.feature_layers) else self.feature_layers)
        present = {layer.name for layer in model.layers}
        missing = [n for n in names if n not in present]
        if not names or missing:
            raise ValueError(
                f"{self.name}: the spec's feature layers {list(missing or names)} are not layers of model {model.name!r}."
            )
        return names

    def deploy_form(self, model):
        """`model` in its inference form (`deploy(model)`), or `model` itself."""
        return self.deploy(model) if self.deploy is not None else model

    def callbacks(self, epochs):
        """The family's own training callbacks for a run of `epochs` epochs."""
        return list(self.training_callbacks(int(epochs))) if self.training_callbacks is not None else []


def register_model(spec, builder=None, **fields):
    """Register a model family.

    Args:
        spec: a `ModelSpec`; or, for the older form, the registry name followed by `builder`
            and `ModelSpec` fields (`register_model("name", fn, torch_key=...)`).

    Returns:
        The registered `ModelSpec`.
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(name=spec, builder=builder, **fields)
    elif builder is not None or fields:
        raise TypeError("register_model: pass a ModelSpec, or a name with its builder and fields, not both.")
    if spec.name in _SPECS:
        raise ValueError(f"A model named {spec.name!r} is already registered.")
    _SPECS[spec.name] = spec
    return spec


def list_models(task=None):
    """Names of the registered models, sorted; with `task`, only those serving that task."""
    return sorted(name for name, spec in _SPECS.items() if task is None or task in spec.tasks)


def get_spec(name):
    """The `ModelSpec` registered under `name` (case-insensitive)."""
    try:
        return _SPECS[str(name).lower()]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(list_models())}.") from None


def _takes_size(builder):
    import inspect

    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False
    return "size" in params


def resolve_model_name(name):
    """`(registry name, model_kwargs)` of a model name as a user types it.

    Accepted: a registry name (`"litenext"`, any case, `-` for `_`: `"mednext-cls"`), or a
    family whose builder takes a `size` argument followed by `-SIZE` or `_SIZE`
    (`"mednext-cls-s"` or `"mednext_cls_s"` -> `("mednext_cls", {"size": "s"})`). The size
    value itself is checked by the builder.

    Raises:
        ValueError: no such model; the message lists the registered ones and the `NAME-SIZE` form.
    """
    text = str(name).strip().lower()
    for candidate in (text, text.replace("-", "_")):
        if candidate in _SPECS:
            return candidate, {}
    for sep in ("-", "_"):
        base, found, size = text.rpartition(sep)
        base = base.replace("-", "_")
        if found and size and base in _SPECS and _takes_size(_SPECS[base].builder):
            return base, {"size": size}
    sized = [n for n in list_models() if _takes_size(_SPECS[n].builder)]
    hint = f" ({', '.join(sized)} also take NAME-SIZE, e.g. {sized[0].replace('_', '-')}-s)" if sized else ""
    raise ValueError(f"Unknown model {name!r}; available: {', '.join(list_models())}{hint}.")


def create_model(name, **kwargs):
    """Build the registered model `name` with keyword arguments for its builder.

    Example:
    >>> model = create_model("litenext", input_shape=(96, 96, 3))
    """
    return get_spec(name).builder(**kwargs)


def spec_of(model):
    """The `ModelSpec` of a built or loaded model (a `.keras` file keeps the model's name).

    A model is recognised by its name: the registry name itself (the builders' default), or the
    registry name followed by `_` or `-` (`litenext_k3`, and `litenext_serp` for SeRP's
    training graph). The longest matching name wins.

    Raises:
        ValueError: the name matches no registered model; the message says how to fix it.
    """
    name = str(getattr(model, "name", "")).lower()
    if name in _SPECS:
        return _SPECS[name]
    matches = [n for n in _SPECS if name.startswith(n) and name[len(n) : len(n) + 1] in ("_", "-")]
    if matches:
        return _SPECS[max(matches, key=len)]
    raise ValueError(
        f"Cannot tell which registered model {getattr(model, 'name', model)!r} is: models are recognised by their "
        f"name, which must be a registered name ({', '.join(list_models())}) or start with one followed by '_' or '-'. "
        f"Build it with its default name (create_model(...) without name=), or use get_spec(<registry name>) directly."
    )


def feature_extractor(model, spec=None):
    """A model sharing `model`'s layers that returns its encoder features, shallow to deep
    (the spec's `feature_layers`), for feature-pyramid heads and self-supervision."""
    spec = spec or spec_of(model)
    names = spec.feature_layer_names(model)
    return keras.Model(model.input, [model.get_layer(n).output for n in names], name=f"{model.name}_features")


def get_torch_key(name):
    """The layer-name -> PyTorch-module-path function registered for model `name`."""
    key = get_spec(name).torch_key
    if key is None:
        raise ValueError(f"Model {name!r} has no PyTorch reference to import weights from.")
    return key
