"""The input-shape check every model builder runs first."""


def check_input_shape(input_shape, multiple, model_name):
    """Validate `(height, width, channels)`: channels known, height/width `None` or multiples.

    A model whose encoder down-samples by `multiple` (its registry spec's `size_multiple`)
    needs height and width divisible by it. The `ValueError` names the rule and the nearest
    valid size, so that a bad size fails when the model is built rather than as a shape
    mismatch inside the backend.

    Returns:
        `(height, width, channels)` as ints (or None for a free height/width).

    Example:
    >>> check_input_shape((96, None, 3), 16, "LiteNeXt")
    (96, None, 3)
    """
    multiple = int(multiple)
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"{model_name}: input_shape must be (height, width, channels), got {input_shape!r}.")
    height, width, channels = input_shape
    if channels is None or int(channels) < 1:
        raise ValueError(f"{model_name}: the number of input channels must be known (1 for grey, 3 for RGB), got {channels!r}.")
    bad = [
        f"{axis}={size}"
        for axis, size in (("height", height), ("width", width))
        if size is not None and (int(size) <= 0 or int(size) % multiple)
    ]
    if bad:
        def fix(size):
            return size if size is None else max(multiple, -(-int(size) // multiple) * multiple)

        raise ValueError(
            f"{model_name}: input height and width must be multiples of {multiple} (the network down-samples by "
            f"{multiple}); got {', '.join(bad)}. Resize or pad the images, e.g. to {fix(height)}x{fix(width)}."
        )
    return (None if height is None else int(height), None if width is None else int(width), int(channels))
