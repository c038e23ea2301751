"""SeRP: Self-embedding Representation Parallel training (LiteNeXt, Tran et al., 2024).

**A reconstruction.** The paper (arXiv:2405.15779) names SeRP, a self-learning augmentation that
"utilizes the network architecture itself" with two projector heads, ProjectorT and ProjectorS
(its Fig. 3), and the authors' code does not contain it. What is built here follows that
description with a BYOL-style design (Grill et al., 2020):

- two augmented views `x1`, `x2` of each training image; `x1` also gets the supervised loss;
- student: the segmentation model's own encoder (deepest stage output), pooled as
  `GAP + GMP` (the pooled-key idiom of the LiteNeXt decoder), then ProjectorS (MLP) and a
  predictor (MLP);
- teacher: an exponential-moving-average copy of encoder and ProjectorS (ProjectorT), never
  trained by gradients, updated after every step by the `EMATeacher` callback;
- loss: `weight * [(2 - 2 cos(p_S(x1), z_T(x2))) + (2 - 2 cos(p_S(x2), z_T(x1)))]`, added with
  `add_loss` to the supervised loss of `x1`.

Everything is ordinary Keras (a two-input functional graph, a loss layer, a callback), so it
trains with `model.fit` on the TensorFlow and JAX backends alike. The teacher, projectors and
predictor exist only in the training graph: the model saved for inference is the plain
segmentation model, with its parameter count unchanged.
"""

import keras
from keras import layers, ops

from keras_litenext.layers import PACKAGE
from keras_litenext.models.registry import spec_of


def default_feature_layer(model):
    """Name of the deepest encoder feature of a registered model: the last of its spec's
    `feature_layers` (LiteNeXt: the last stage-4 block)."""
    try:
        return spec_of(model).feature_layer_names(model)[-1]
    except ValueError as err:
        raise ValueError(f"Cannot find the encoder output of {model.name!r} ({err}); pass feature_layer=<layer name>.") from None


def _projector(in_dim, hidden_dim, out_dim, name):
    inputs = keras.Input((in_dim,))
    x = layers.Dense(hidden_dim, name="dense1")(inputs)
    x = layers.LayerNormalization(name="norm")(x)
    x = layers.Activation("gelu", name="act")(x)
    return keras.Model(inputs, layers.Dense(out_dim, name="dense2")(x), name=name)


def _pooled(encoder, name):
    """`encoder` followed by GAP + GMP, as a model mapping images to vectors."""
    feature = encoder.output
    pooled = layers.Add(name="pool")([layers.GlobalAveragePooling2D(name="gap")(feature), layers.GlobalMaxPooling2D(name="gmp")(feature)])
    return keras.Model(encoder.input, pooled, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SerpLoss(layers.Layer):
    """Adds the symmetric BYOL loss of SeRP and passes the segmentation logits through.

    Called on `[logits, p1, z2, p2, z1]`: student predictions `p` and teacher projections `z`
    (gradients stopped) of the two views. Returns `logits` unchanged, so the layer sits on the
    path to the model output and its loss is always part of the training graph.
    """

    def __init__(self, weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    @staticmethod
    def _byol(p, z):
        p = ops.cast(p, "float32")
        z = ops.stop_gradient(ops.cast(z, "float32"))
        p = p / ops.sqrt(ops.maximum(ops.sum(ops.square(p), axis=-1, keepdims=True), 1e-12))
        z = z / ops.sqrt(ops.maximum(ops.sum(ops.square(z), axis=-1, keepdims=True), 1e-12))
        return ops.mean(2.0 - 2.0 * ops.sum(p * z, axis=-1))

    def call(self, inputs):
        logits, p1, z2, p2, z1 = inputs
        self.add_loss(self.weight * (self._byol(p1, z2) + self._byol(p2, z1)))
        return logits

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight})
        return config


class EMATeacher(keras.callbacks.Callback):
    """After each training step, move every teacher weight towards its student weight.

    `teacher = decay * teacher + (1 - decay) * student`, for matched lists of variables.
    """

    def __init__(self, teacher_weights, student_weights, decay=0.99):
        super().__init__()
        if len(teacher_weights) != len(student_weights):
            raise ValueError("EMATeacher: teacher and student must have the same weights.")
        self.pairs = list(zip(teacher_weights, student_weights))
        self.decay = float(decay)

    def on_train_batch_end(self, batch, logs=None):
        _ = self.model  # on JAX, this syncs the training state into the variables first
        for teacher, student in self.pairs:
            teacher.assign(self.decay * ops.convert_to_tensor(teacher) + (1.0 - self.decay) * ops.convert_to_tensor(student))


def build_serp_model(model, weight=0.1, decay=0.99, projection_dim=128, hidden_dim=512, feature_layer=None):
    """Wrap a segmentation model in SeRP's two-view training graph.

    Args:
        model: the segmentation model (e.g. `LiteNeXt()`); its layers are shared, not copied,
            so training the wrapper trains `model`.
        weight: float, λ, the weight of the SeRP loss. Defaults to 0.1.
        decay: float, the teacher's EMA decay τ. Defaults to 0.99.
        projection_dim: int, output size of the projectors. Defaults to 128.
        hidden_dim: int, hidden size of projectors and predictor. Defaults to 512.
        feature_layer: str, the encoder layer to project; defaults to `default_feature_layer`.

    Returns:
        `(train_model, ema_callback)`: a model mapping `[view1, view2]` to the logits of
        `view1` (compile it with the segmentation loss against the masks of `view1`), and the
        `EMATeacher` callback to pass to `fit`.
    """
    feature_layer = feature_layer or default_feature_layer(model)
    feature = model.get_layer(feature_layer).output
    student = _pooled(keras.Model(model.input, feature), name="student_encoder")
    teacher = _pooled(keras.models.clone_model(keras.Model(model.input, feature)), name="teacher_encoder")
    teacher.set_weights(student.get_weights())
    dim = student.output.shape[-1]
    projector_s = _projector(dim, hidden_dim, projection_dim, "projector_s")
    projector_t = _projector(dim, hidden_dim, projection_dim, "projector_t")
    projector_t.set_weights(projector_s.get_weights())
    predictor = _projector(projection_dim, hidden_dim, projection_dim, "predictor")
    teacher.trainable = False
    projector_t.trainable = False

    segmenter = keras.Model(model.input, [model.output, student.output], name=f"{model.name}_with_features")
    view1 = keras.Input(model.input.shape[1:], name="view1")
    view2 = keras.Input(model.input.shape[1:], name="view2")
    logits, h1 = segmenter(view1)
    h2 = student(view2)
    p1, p2 = predictor(projector_s(h1)), predictor(projector_s(h2))
    z1, z2 = projector_t(teacher(view1)), projector_t(teacher(view2))
    outputs = SerpLoss(weight, name="serp_loss")([logits, p1, z2, p2, z1])
    train_model = keras.Model([view1, view2], outputs, name=f"{model.name}_serp")
    callback = EMATeacher(teacher.weights + projector_t.weights, student.weights + projector_s.weights, decay)
    return train_model, callback
