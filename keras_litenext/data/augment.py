"""In-graph augmentation of ``(image, mask)`` float tensors: one fused resampling for the geometry,
then photometric changes on the image (`augmenter`)."""

import math

import numpy as np
import tensorflow as tf

# 3x3 binomial kernel (a Gaussian of sigma ~0.85), per channel for depthwise_conv2d.
_BLUR_KERNEL = (np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0).astype(np.float32)


def _geometry(u, height, width, rotation, flip, scale):
    """Per-image projective transforms (output pixel -> input pixel) for ImageProjectiveTransformV3.

    ``input = c + R(angle) F (output - c) / zoom`` with c the image centre, F the flips, so every
    transform is one resampling.
    """
    ones = tf.ones_like(u[:, 0])
    fh = tf.where(u[:, 0] < 0.5, -ones, ones) if flip else ones
    fv = tf.where(u[:, 1] < 0.5, -ones, ones) if flip else ones
    angle = (2.0 * u[:, 2] - 1.0) * (rotation * math.pi / 180.0)
    zoom = 1.0 + (2.0 * u[:, 3] - 1.0) * scale
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * fh, -sin * fv, sin * fh, cos * fv
    cx = tf.cast(width - 1, tf.float32) / 2.0
    cy = tf.cast(height - 1, tf.float32) / 2.0
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _warp(images, transforms, interpolation):
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation=interpolation, fill_mode="REFLECT",
    )


class _Augmenter:
    """See `augmenter`."""

    def __init__(self, seed, rotation, flip, scale, brightness, contrast, blur):
        self.seed = seed
        self.config = dict(seed=seed, rotation=rotation, flip=flip, scale=scale,
                           brightness=brightness, contrast=contrast, blur=blur)
        self._generator = None

    def __repr__(self):
        return "augmenter(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    def _next_seed(self):
        if self._generator is None:  # created on first use, eagerly or while tracing
            with tf.init_scope():
                self._generator = (
                    tf.random.Generator.from_seed(self.seed) if self.seed is not None
                    else tf.random.Generator.from_non_deterministic_state()
                )
        return self._generator.uniform_full_int([2], tf.int64)

    def __call__(self, image, mask, seed=None):
        c = self.config
        no_mask = mask is None  # image-only (classification): the mask steps are left out
        image = tf.cast(tf.convert_to_tensor(image), tf.float32)
        mask = image[..., :1] if no_mask else tf.cast(tf.convert_to_tensor(mask), tf.float32)
        single = image.shape.rank == 3
        if single:
            image, mask = image[None], mask[None]
        if image.shape.rank != 4 or mask.shape.rank != 4:
            raise ValueError(
                f"augment expects (H, W, C) or (B, H, W, C) image and mask, got {image.shape} and {mask.shape}"
            )
        if seed is None:
            seed = self._next_seed()
        seed = tf.reshape(tf.cast(seed, tf.int64), [2])
        shape = tf.shape(image)
        u = tf.random.stateless_uniform([shape[0], 8], seed)

        if c["flip"] or c["rotation"] or c["scale"]:
            transforms = _geometry(u, shape[1], shape[2], c["rotation"], c["flip"], c["scale"])
            image = _warp(image, transforms, "BILINEAR")
            if not no_mask:
                mask = _warp(mask, transforms, "NEAREST")

        if c["brightness"] or c["contrast"]:
            # x * k + (mean * (1 - k) + delta): contrast around the per-channel mean, then brightness.
            k = tf.reshape(1.0 + (2.0 * u[:, 4] - 1.0) * c["contrast"], [-1, 1, 1, 1])
            delta = tf.reshape((2.0 * u[:, 5] - 1.0) * c["brightness"], [-1, 1, 1, 1])
            offset = delta
            if c["contrast"]:
                offset = tf.reduce_mean(image, axis=[1, 2], keepdims=True) * (1.0 - k) + delta
            image = image * k + offset

        if c["blur"]:
            channels = image.shape[-1] or tf.shape(image)[3]
            kernel = tf.tile(tf.constant(_BLUR_KERNEL)[:, :, None, None], [1, 1, channels, 1])
            padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
            blurred = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")
            strength = tf.where(u[:, 6] < c["blur"], 0.25 + 0.75 * u[:, 7], tf.zeros_like(u[:, 7]))
            image = image + tf.reshape(strength, [-1, 1, 1, 1]) * (blurred - image)

        image = tf.clip_by_value(image, 0.0, 1.0)
        if no_mask:
            return (image[0] if single else image), None
        mask = tf.round(mask)  # nearest sampling copies labels; rounding only guards float noise
        if single:
            image, mask = image[0], mask[0]
        return image, mask


def augmenter(seed=None, rotation=20, flip=True, scale=0.1, brightness=0.1, contrast=0.1, blur=0.5):
    """In-graph augmentation for ``(image, mask)`` float tensors, single or batched.

    Geometry, identical for image and mask and applied as ONE resampling (a composed projective
    transform, `tf.raw_ops.ImageProjectiveTransformV3`, reflect padding): independent horizontal
    and vertical flips, a rotation in ``[-rotation, rotation]`` degrees and a zoom in
    ``[1 - scale, 1 + scale]``; images are sampled bilinearly, masks with nearest neighbour, so
    label maps keep exactly their values ({0, 1} or class indices; no class id is interpolated). Then, on the image only: contrast ``k`` in
    ``[1 - contrast, 1 + contrast]`` around the per-channel mean and a brightness shift in
    ``[-brightness, brightness]`` (the semantics of Keras `RandomContrast` / `RandomBrightness`
    with ``value_range=(0, 1)``), and with probability ``blur`` a 3x3 Gaussian blur mixed in at a
    random strength in [0.25, 1]; the image is clipped to [0, 1]. Every parameter is drawn per
    image; a 0/False argument leaves that step out.

    This fuses the work of Keras' RandomFlip, RandomRotation, RandomZoom, RandomBrightness,
    RandomContrast and RandomGaussianBlur: chained, those layers resample three times and ran
    about 2x slower on 2 CPU cores.

    Args:
        seed: int seed of the draws for calls without a per-call ``seed`` (a stateful
            `tf.random.Generator`); None for a non-deterministic start.
        rotation: maximum rotation in degrees (either way).
        flip: random horizontal and vertical flips.
        scale: maximum zoom, as a fraction (either way).
        brightness: maximum brightness shift, as a fraction of the [0, 1] range.
        contrast: maximum contrast change.
        blur: probability of blurring an image.

    Returns:
        callable ``augment(image, mask, seed=None) -> (image, mask)``; ``mask=None`` augments the
        image alone and returns ``(image, None)`` (classification). Inputs: images in [0, 1]
        and label maps (masks in {0, 1} or class indices), shaped ``(H, W, C)`` or ``(B, H, W, C)``. Outputs: float32, same
        shapes, image in [0, 1], mask values exactly those of the input. Given ``seed`` (an int tensor of shape
        (2,)), the result is a pure function of inputs and seed, which is how `make_dataset`
        keeps parallel augmentation deterministic. Pure TensorFlow ops: usable in `tf.data.map`
        and `tf.function` (no `py_function`).
    """
    for name, value, low, high in (("rotation", rotation, 0, 180), ("scale", scale, 0, 0.9),
                                   ("brightness", brightness, 0, 1), ("contrast", contrast, 0, 1),
                                   ("blur", blur, 0, 1)):
        if not low <= value <= high:
            raise ValueError(f"augmenter: {name} must be in [{low}, {high}], got {value!r}")
    return _Augmenter(seed, float(rotation), bool(flip), float(scale), float(brightness),
                      float(contrast), float(blur))
