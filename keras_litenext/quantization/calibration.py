"""Calibration of a QAT model's activation ranges from data, and range ties."""

import numpy as np

from keras_litenext.data.intensity import to_float
from keras_litenext.quantization.graph import is_qat_model, quant_layers, set_quant_mode


def _image_batches(data, batch_size=8):
    """Float image batches from arrays (`(N, H, W, C)` float in [0, 1] or uint8 0-255) or an
    iterable of batches / `(image, mask)` batches (a `tf.data.Dataset`)."""
    if hasattr(data, "shape"):
        arr = np.asarray(data)
        arr = to_float(arr)  # uint8 / 255, uint16 (an intensity recipe's) / 65535, float as is
        for i in range(0, len(arr), batch_size):
            yield arr[i : i + batch_size]
        return
    iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
    for element in iterator:
        x = element[0] if isinstance(element, (tuple, list)) else element
        yield np.asarray(x, dtype="float32")


TRACE_FROM = 16  # batches: tracing the QAT forward pass costs about as much as 10-15 eager batches


def _forward(model, traced):
    """`model(batch, training=False)`: traced once on TensorFlow when `traced` (any batch size:
    one trace for a short last batch too), else eager."""
    import keras

    if not traced or keras.backend.backend() != "tensorflow":
        return lambda batch: model(batch, training=False)
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
    traced = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])
    return lambda batch: traced(tf.cast(batch, tf.float32))


def tie_ranges(model):
    """Give each group of tied ranges (a concatenation's inputs and output, see `FakeQuant`)
    their common range: the smallest min and the largest max of the group. `calibrate` calls
    it, and fine-tuning should call it at the end (moving averages move tied ranges apart); a
    group that holds a fixed range is left as it is.

    Returns:
        The number of ranges changed.
    """
    layers_by_name = {layer.name: layer for layer in quant_layers(model)}

    def lookup(name):
        layer, _, range_name = name.rpartition("/")
        owner = layers_by_name.get(layer)
        return None if owner is None else owner._ranges.get(range_name)

    parent = {}

    def find(name):
        while parent.setdefault(name, name) != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for layer in layers_by_name.values():
        for tied in getattr(layer, "tied", []):
            parent[find(tied)] = find(f"{layer.name}/range")
    groups = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    changed = 0
    for names in groups.values():
        ranges = [lookup(n) for n in names]
        if len(ranges) < 2 or any(r is None or r.fixed is not None for r in ranges):
            continue
        values = [r.value() for r in ranges]
        lo, hi = min(v[0] for v in values), max(v[1] for v in values)
        for r, v in zip(ranges, values):
            if v != (lo, hi):
                r.min.assign(lo)
                r.max.assign(hi)
                changed += 1
    return changed


def calibrate(model, data, steps=None, batch_size=8, statistic="mean", progress=None, traced=None):
    """Set every activation range of a QAT model from data.

    Quantization is off while calibrating, so the ranges are those of the float model.
    `statistic="mean"` (default) sets each range to the mean over batches of the batch min and
    max, what the moving averages of QAT converge to; `"minmax"` to the extremes over all
    batches, as the TFLite converter's post-training calibration does. On the 96x96 DSB 2018
    LiteNeXt the mean of batches of 8 gave a simulated int8 test Dice 0.4 points below float,
    the extremes 1.1 points below: rare outliers waste most of the int8 steps. On TensorFlow a
    call of `TRACE_FROM` batches or more traces the forward pass once (the same ranges as eager
    calls, 3.5x faster: 16 s against 56 s for 25 batches of the 96x96 LiteNeXt on 2 cores); a
    shorter one, and other backends, run eagerly (tracing costs more than a few batches).

    Args:
        model: a model from `quantize_model`.
        data: images (float `[0, 1]` or uint8 arrays), or batches / `(image, mask)` batches.
        steps: optional number of batches to use. Defaults to all.
        batch_size: for arrays; it sets what a "batch" extreme is. Defaults to 8.
        statistic: `"mean"` or `"minmax"`.
        progress: optional callable `progress(done, total)` after each batch (total: None when
            the data's length is unknown), e.g. to draw a progress bar.
        traced: trace the forward pass (TensorFlow only); None: from `TRACE_FROM` batches on.

    Returns:
        The model, in "quantize" mode.
    """
    if not is_qat_model(model):
        raise ValueError("calibrate: the model has no quantizers; build it with quantize_model first.")
    if statistic not in ("mean", "minmax"):
        raise ValueError(f"statistic must be 'mean' or 'minmax', got {statistic!r}.")
    for layer in quant_layers(model):
        layer.calibration = statistic
        for r in layer._ranges.values():
            if r.fixed is None:
                r.count.assign(0.0)
    set_quant_mode(model, "calibrate")
    seen = 0
    total = -(-len(data) // batch_size) if hasattr(data, "shape") else None
    total = steps if total is None else (total if steps is None else min(steps, total))
    if traced is None:
        traced = total is not None and total >= TRACE_FROM
    forward = _forward(model, traced=traced)
    try:
        for i, batch in enumerate(_image_batches(data, batch_size)):
            if steps is not None and i >= steps:
                break
            forward(batch)
            seen += 1
            if progress is not None:
                progress(seen, total)
    finally:
        set_quant_mode(model, "quantize")
    if not seen:
        raise ValueError("calibrate: the data gave no batch.")
    tie_ranges(model)
    return model


RSQRT_QUANTILES = (None, 0.99, 0.9, 0.5)


class _Record:
    """A norm's `(batch min, {candidate: batch top})` of its rsqrt values, one per batch
    (`batches`), for the quantiles `candidates` (a plain object: Keras would wrap a list)."""

    def __init__(self, candidates):
        self.candidates, self.batches = list(candidates), []


def choose_rsqrt_quantile(model, calibration_data, score_fn, candidates=RSQRT_QUANTILES, steps=8, batch_size=8,
                          calibrate_best=True):
    """Calibrate with each candidate `rsqrt_quantile` of the layer norms (None: the max) and
    keep the one whose calibrated model `score_fn` rates best.

    Which range end is best depends on the images: on BBBC039 (mostly black background) the
    median gave a simulated Dice 4 points above the max, on DSB 2018 the max was best. The
    score is the caller's (e.g. the validation Dice of the task), so this core needs no metrics.
    The layers tuned are those with an `rsqrt_quantile` attribute (`QuantChannelLayerNorm`).

    Args:
        model: a model from `quantize_model`.
        calibration_data: as for `calibrate`.
        score_fn: `score_fn(model) -> float`, higher is better (NaN counts as worst); called
            once per candidate on the calibrated QAT model.
        candidates: quantiles to try; None is the max. Defaults to `(None, 0.99, 0.9, 0.5)`.
        steps, batch_size: as for `calibrate`.
        calibrate_best: calibrate once more with the best candidate (False when the caller
            calibrates next anyway, as `qat_finetune` does).

    Returns:
        `{candidate: score}`; the norms keep the best candidate (and, with `calibrate_best`,
        the model is calibrated with it).

    Example:
    >>> scores = choose_rsqrt_quantile(qat, train_images, lambda m: val_dice(m), steps=4)
    """
    if not callable(score_fn):
        raise TypeError(f"choose_rsqrt_quantile: score_fn must be callable (model -> float), got {type(score_fn).__name__}.")
    norms = [layer for layer in quant_layers(model) if hasattr(layer, "rsqrt_quantile")]
    if not norms:
        raise ValueError("choose_rsqrt_quantile: the model has no layer with an rsqrt_quantile (no quantized layer norm).")
    candidates = [None if c is None else float(c) for c in candidates]
    # One calibration pass serves every candidate: nothing is quantized while calibrating, so the
    # other ranges are the same for all of them, and each norm records its rsqrt range's batch
    # extremes for every candidate; each candidate's range is then built from those records by the
    # range's own `observe` (the same values as a pass per candidate, at a quarter of the cost).
    for layer in norms:
        layer.rsqrt_record = _Record(candidates)
    try:
        calibrate(model, calibration_data, steps=steps, batch_size=batch_size, traced=False)
    finally:
        records = {id(layer): layer.rsqrt_record for layer in norms}
        for layer in norms:
            layer.rsqrt_record = None
    scores = {}
    for candidate in candidates:
        for layer in norms:
            layer.rsqrt_quantile = candidate
            rsqrt = layer._ranges["rsqrt"]
            rsqrt.count.assign(0.0)
            for lo, tops in records[id(layer)].batches:
                rsqrt.observe(lo, tops[candidate])
        tie_ranges(model)
        scores[candidate] = float(score_fn(model))
    best = max(scores, key=lambda c: -np.inf if np.isnan(scores[c]) else scores[c])
    for layer in norms:
        layer.rsqrt_quantile = None if best is None else float(best)
    if calibrate_best:
        calibrate(model, calibration_data, steps=steps, batch_size=batch_size)
    return scores


__all__ = ["RSQRT_QUANTILES", "calibrate", "choose_rsqrt_quantile", "tie_ranges"]
