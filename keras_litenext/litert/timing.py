"""Latency of `.tflite` files (LiteRT) and of a Keras model, batch 1, in interleaved rounds."""

import os

import numpy as np

from keras_litenext.litert.runtime import TFLiteRunner


def benchmark(files, keras_model=None, threads=(1, 2), runs=20, rounds=5, warmup=10, xnnpack=True, seed=0):
    """Latency of `.tflite` files (LiteRT) and optionally of a Keras model, batch 1.

    Every configuration (file x thread count, and the Keras model) is warmed up, then timed in
    `rounds` rounds of `runs` invocations, the rounds interleaved across configurations so
    that a change of machine load hits all of them alike.

    Args:
        files: `.tflite` paths.
        keras_model: optional Keras model, timed with `predict_on_batch` (TensorFlow's own
            thread pool; `threads` does not apply).
        threads: LiteRT thread counts.
        runs: invocations per round (so `runs * rounds` timings per configuration).
        rounds: interleaved rounds.
        warmup: untimed invocations first.
        xnnpack: use the XNNPACK delegate (the default CPU path on devices).
        seed: seed of the random input image.

    Returns:
        list of dicts: `{"name", "threads", "runs", "median_ms", "p10_ms", "p90_ms",
        "round_medians_ms", "size_bytes"}`.
    """
    import time

    rng = np.random.default_rng(seed)
    configs = []
    for path in files:
        for n in threads:
            runner = TFLiteRunner(path, num_threads=int(n), xnnpack=xnnpack)
            tensor = runner.quantize_input(rng.random(runner.input_shape[1:], dtype=np.float32))
            configs.append({"name": os.path.basename(path), "threads": int(n), "size_bytes": os.path.getsize(path),
                            "call": (lambda r=runner, t=tensor: r.invoke_raw(t))})
    if keras_model is not None:
        shape = tuple(keras_model.inputs[0].shape[1:])
        x = rng.random((1, *shape), dtype=np.float32)
        configs.append({"name": f"Keras ({keras_model.name}, predict_on_batch)", "threads": None, "size_bytes": None,
                        "call": (lambda m=keras_model, x=x: m.predict_on_batch(x))})
    for c in configs:
        for _ in range(warmup):
            c["call"]()
        c["times"], c["rounds"] = [], []
    for _ in range(rounds):
        for c in configs:
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                c["call"]()
                times.append(time.perf_counter() - t0)
            c["times"] += times
            c["rounds"].append(float(np.median(times) * 1e3))
    rows = []
    for c in configs:
        t = np.asarray(c["times"]) * 1e3
        rows.append({
            "name": c["name"], "threads": c["threads"], "runs": int(t.size), "size_bytes": c["size_bytes"],
            "median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)), "p90_ms": float(np.percentile(t, 90)),
            "round_medians_ms": [round(v, 3) for v in c["rounds"]],
        })
    return rows
