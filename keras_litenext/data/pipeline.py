"""The `tf.data` pipelines that feed `model.fit`: in-memory arrays -> shuffle -> batch -> float
conversion and augmentation (seeded per batch) -> prefetch."""

import inspect

import numpy as np
import tensorflow as tf


def batched(arrays, batch_size, shuffle=False, seed=None, repeat=False, drop_remainder=False):
    """``from_tensor_slices(arrays)`` (kept in memory as stored) -> whole-set shuffle (seeded,
    reshuffled each epoch) -> repeat -> batch."""
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(int(batch_size), drop_remainder=drop_remainder)


def map_batches(ds, fn):
    """``ds.map(fn)`` on parallel calls, in order."""
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def map_seeded(ds, fn, seed):
    """``fn(batch, call_seed)`` on every batch, ``call_seed`` an int64 (2,) tensor from
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``: with a ``seed`` the calls
    are deterministic yet differ from epoch to epoch, even on parallel calls."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return map_batches(tf.data.Dataset.zip((ds, seeds)), fn)


def _accepts_seed(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def make_dataset(images, masks, batch_size, augment=None, shuffle=False, seed=None, repeat=False,
                 drop_remainder=False, binary=True):
    """`tf.data` pipeline of ``(image, mask)`` batches for `model.fit`.

    ``from_tensor_slices`` (the uint8 arrays stay uint8 in memory) -> shuffle (whole dataset,
    seeded, reshuffled each epoch) -> repeat -> batch -> map (image float32 in [0, 1]: uint8
    ``/ 255``, uint16 (an intensity recipe's) ``/ 65535``, mask
    float32 in {0, 1} with any non-zero value foreground, then ``augment`` per batch;
    ``num_parallel_calls=AUTOTUNE``, ordered) -> prefetch.

    With a ``seed``, the shuffle order and the augmentation of every batch are deterministic
    (identical for two datasets built alike) yet differ from epoch to epoch: each batch gets a
    per-call seed from ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, passed
    to ``augment`` when it takes a ``seed`` argument (like `augmenter`'s callable).

    Args:
        images: uint8 or uint16 ``(N, H, W, C)`` (or ``(N, H, W)``, treated as C=1).
        masks: uint8 ``(N, H, W, 1)`` or ``(N, H, W)``.
        batch_size: int.
        augment: None or ``augment(image, mask[, seed]) -> (image, mask)`` on batches.
        shuffle: shuffle the examples each epoch.
        seed: int or None.
        repeat: repeat forever (then pass ``steps_per_epoch`` to fit).
        drop_remainder: drop the last partial batch.
        binary: masks are binary (any non-zero value is foreground, 1.0); False keeps the
            values as class indices (multi-class label maps).

    Returns:
        `tf.data.Dataset` of ``(float32 (B, H, W, C), float32 (B, H, W, 1))``.

    Raises:
        ValueError: inconsistent shapes or a non-positive batch size.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"make_dataset expects uint8 or uint16 images (as load_pairs returns), got {images.dtype}")
    full_scale = 255.0 if images.dtype == np.uint8 else 65535.0  # intensity.to_float
    if images.ndim == 3:
        images = images[..., None]
    if masks.ndim == 3:
        masks = masks[..., None]
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 1:
        raise ValueError(
            f"make_dataset expects images (N, H, W, C) and masks (N, H, W, 1), got {images.shape} and {masks.shape}"
        )
    if images.shape[:3] != masks.shape[:3]:
        raise ValueError(f"make_dataset: images {images.shape} and masks {masks.shape} do not match")
    if len(images) == 0:
        raise ValueError("make_dataset got no examples")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    ds = batched((images, masks), batch_size, shuffle, seed, repeat, drop_remainder)

    def to_float(image, mask):
        mask = tf.cast(mask > 0, tf.float32) if binary else tf.cast(mask, tf.float32)
        return tf.cast(image, tf.float32) / full_scale, mask

    height, width = images.shape[1:3]

    def static(batch):  # augmenting a batch of unknown size loses the static height and width
        return tf.nest.map_structure(lambda t: tf.ensure_shape(t, [None, height, width, t.shape[-1]]), batch)

    if augment is None:
        ds = map_batches(ds, to_float)
    elif _accepts_seed(augment):
        def fn(batch, call_seed):
            image, mask = to_float(*batch)
            return static(augment(image, mask, seed=call_seed))

        ds = map_seeded(ds, fn, seed)
    else:
        def fn(image, mask):
            return static(augment(*to_float(image, mask)))

        ds = map_batches(ds, fn)
    return ds.prefetch(tf.data.AUTOTUNE)
