"""Every registered segmentation model side by side: size, MACs and CPU latency of the Keras
model and of its float32 and int8 TFLite files (LiteRT + XNNPACK), batch 1.

Each model is built in its deploy form (`ModelSpec.deploy_form`, what the converter ships) with
random weights; latency does not depend on the weights. The int8 file is made the way
`tflite/convert.py` makes the shipped one (`quantize_model` + `calibrate` on random images, then
full-int8 conversion), so its graph is the shipped graph. Every contender is timed in
interleaved rounds (`keras_litenext.tflite.benchmark` for the files, the same round-robin for the
Keras models), so load from other processes hits all of them alike; medians are reported.

    python benchmarks/bench_models.py --image-size 256 --threads 2
    python benchmarks/bench_models.py --models litenext,ulite --json out.json
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated registry names (default: every segmentation model)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=10, help="timed runs per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.image_size < 1 or args.threads < 1 or args.runs < 1 or args.rounds < 1:
        p.error("--image-size, --threads, --runs and --rounds must be positive")
    return args


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{model} ({', '.join(simd) or 'no AVX2'})"


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import keras_litenext as kl
    from keras_litenext import quantization as Q
    from keras_litenext import tflite

    names = args.models.split(",") if args.models else kl.list_models(task="binary")
    rng = np.random.default_rng(0)
    rows, keras_calls, files = {}, {}, []
    folder = tempfile.mkdtemp(prefix="bench-models-")
    for name in names:
        spec = kl.get_spec(name)
        size = -(-args.image_size // spec.size_multiple) * spec.size_multiple
        keras.utils.set_random_seed(0)
        model = spec.deploy_form(kl.create_model(name, input_shape=(size, size, 3)))
        images = rng.random((8, size, size, 3), dtype=np.float32)
        t0 = time.time()
        fp32 = os.path.join(folder, f"{name}_fp32.tflite")
        tflite.convert_to_file(model, fp32, "fp32")
        int8 = os.path.join(folder, f"{name}_int8.tflite")
        qat = Q.calibrate(Q.quantize_model(model), images, batch_size=4)
        tflite.convert_to_file(qat, int8, "int8", representative_data=(images * 255).astype(np.uint8))
        info = tflite.inspect_tflite(int8)
        parts = tflite.xnnpack_partitions(int8, num_threads=args.threads)
        rows[name] = {
            "size": size,
            "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "macs": int(kl.count_macs(model)),
            "int8_float_ops": int(sum(info["float_ops"].values())),
            "int8_xnnpack_partitions": parts["partitions"],
            "int8_not_delegated": parts["not_delegated"],
            "convert_s": round(time.time() - t0, 1),
        }
        fn = tf.function(lambda t, m=model: m(t, training=False))
        x = tf.constant(images[:1])
        keras_calls[name] = lambda fn=fn, x=x: fn(x).numpy()
        files += [fp32, int8]
        print(f"{name}: converted in {rows[name]['convert_s']} s", file=sys.stderr)

    # Keras models: the same interleaved rounds as tflite.benchmark uses for the files.
    for call in keras_calls.values():
        for _ in range(args.warmup):
            call()
    keras_times = {name: [] for name in keras_calls}
    for _ in range(args.rounds):
        for name, call in keras_calls.items():
            for _ in range(args.runs):
                t0 = time.perf_counter()
                call()
                keras_times[name].append((time.perf_counter() - t0) * 1e3)
    for row in tflite.benchmark(files, threads=(args.threads,), runs=args.runs, rounds=args.rounds, warmup=args.warmup):
        name, kind = row["name"][: -len(".tflite")].rsplit("_", 1)
        rows[name][f"{kind}_ms"] = row["median_ms"]
        rows[name][f"{kind}_kib"] = round(row["size_bytes"] / 1024)
    for name, t in keras_times.items():
        rows[name]["keras_ms"] = statistics.median(t)

    print(f"{datetime.date.today()}; {cpu_flags()}, {os.cpu_count()} cores; batch 1, {args.threads} threads, "
          f"{args.rounds} rounds x {args.runs} runs after {args.warmup} warm-up; tensorflow {tf.__version__}, "
          f"keras {keras.__version__}")
    print("| model | input | params | MACs | Keras ms | fp32 .tflite ms | int8 .tflite ms | int8 / fp32 | int8 KiB | "
          "int8 XNNPACK partitions (not delegated) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        nd = ", ".join(f"{k} x{v}" for k, v in sorted(r["int8_not_delegated"].items())) or "none"
        print(f"| {name} | {r['size']}² | {r['params']:,} | {r['macs'] / 1e9:.3f} G | {r['keras_ms']:.1f} | {r['fp32_ms']:.1f} | "
              f"{r['int8_ms']:.1f} | {r['int8_ms'] / r['fp32_ms']:.2f} | {r['int8_kib']} | {r['int8_xnnpack_partitions']} ({nd}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
