"""CPU inference latency of LiteNeXt in Keras, optionally beside the authors' PyTorch model.

Batch 1, fixed thread count, warm-up first, then rounds that time each contender once in turn
(so that load from other processes hits all of them alike); reports the median per contender
and the ratio to the first. The PyTorch model is measured only when `--reference` points to a
checkout of the authors' repository (github.com/tranngocduvnvp/LiteNeXt) and torch is installed.

    python benchmarks/bench_inference.py --threads 2 --runs 50
    python benchmarks/bench_inference.py --reference /path/to/LiteNeXt-checkout
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--kernel-size", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50, help="timed runs per contender (>= 30)")
    p.add_argument("--reference", help="checkout of the authors' PyTorch repository (optional)")
    return p.parse_args()


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_litenext as kl

    size = args.image_size
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    model = kl.LiteNeXt(input_shape=(size, size, 3), kernel_size=args.kernel_size)
    graph_fn = tf.function(lambda t: model(t, training=False))
    xt = tf.constant(x)
    contenders = {
        "keras tf.function": lambda: graph_fn(xt).numpy(),
        "keras predict_on_batch": lambda: model.predict_on_batch(x),
    }
    if args.reference:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, os.path.abspath(args.reference))
        from Models.LiteNeXt import LiteNeXt as TorchLiteNeXt

        torch_model = TorchLiteNeXt(kernel_sizes=[args.kernel_size] * 4).eval()
        xp = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

        def run_torch():
            with torch.no_grad():
                return torch_model(xp).numpy()

        contenders[f"pytorch {torch.__version__} (reference)"] = run_torch

    for fn in contenders.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(args.runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)

    first = statistics.median(next(iter(times.values())))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    print(f"LiteNeXt k={args.kernel_size}, {size}x{size}, batch 1, {args.threads} threads, "
          f"{args.runs} runs after {args.warmup} warm-up; {machine}; {datetime.date.today()}")
    print(f"tensorflow {tf.__version__}, keras {__import__('keras').__version__}, params {model.count_params():,}")
    print("| contender | median ms | p10 ms | p90 ms | ratio to first |")
    print("|---|---|---|---|---|")
    results = {}
    for name, t in times.items():
        t_sorted = sorted(t)
        med = statistics.median(t)
        p10, p90 = t_sorted[len(t) // 10], t_sorted[(9 * len(t)) // 10]
        results[name] = {"median_ms": med, "p10_ms": p10, "p90_ms": p90}
        print(f"| {name} | {med:.1f} | {p10:.1f} | {p90:.1f} | {med / first:.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
