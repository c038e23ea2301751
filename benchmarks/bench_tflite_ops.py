"""What each LiteNeXt op costs in an int8 .tflite file against float32 (LiteRT + XNNPACK).

    python benchmarks/bench_tflite_ops.py                    # 128x128x16: stage 1 of a 256x256 input
    python benchmarks/bench_tflite_ops.py --size 64 --channels 32 --threads 2

Each unit below is repeated 8 times in a chain, converted to float32 and, through the package's
own quantization-aware graph (`quantize_model` + `calibrate`), to int8, and timed side by side in
interleaved rounds; the table gives the median time per unit and the int8/fp32 ratio. Units other
than the convolutions carry a 1x1 convolution in front (so each sees a fresh tensor): subtract the
`conv1x1` row to get the op alone. `layernorm_rsqrt_as_sigmoid` is the channel LayerNorm with its RSQRT
swapped for an int8 LOGISTIC, which XNNPACK runs: the difference isolates what the int8 RSQRT (run outside XNNPACK) costs.
"""

import argparse
import datetime
import os
import platform
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_litenext.litert import benchmark, convert, xnnpack_partitions  # noqa: E402
from keras_litenext.layers import ChannelLayerNorm  # noqa: E402
from keras_litenext.quantization import QuantChannelLayerNorm, calibrate, quantize_model  # noqa: E402

REPEAT = 8


class _NoRsqrtNorm(QuantChannelLayerNorm):
    """The QAT channel LayerNorm with `rsqrt(v)` replaced by `sigmoid(v)`, an int8 op that
    XNNPACK runs (latency probe only: it isolates the int8 RSQRT's cost)."""

    @staticmethod
    def _inverse_sqrt(variance):
        return ops.sigmoid(variance)


def _sigmoid_gelu(x, name):
    s = layers.Activation("sigmoid", name=f"{name}_sigmoid")(layers.Rescaling(1.702, name=f"{name}_scale")(x))
    return layers.Multiply(name=f"{name}_mul")([x, s])


def units(channels):
    conv1 = lambda x, n: layers.Conv2D(channels, 1, name=f"{n}_conv")(x)  # noqa: E731
    return {
        "conv1x1": conv1,
        "conv3x3": lambda x, n: layers.Conv2D(channels, 3, padding="same", name=n)(x),
        "depthwise7x7": lambda x, n: layers.DepthwiseConv2D(7, padding="same", name=n)(x),
        "conv1x1 + add": lambda x, n: layers.Add(name=n)([x, conv1(x, n)]),
        "conv1x1 + gelu": lambda x, n: layers.Activation("gelu", name=n)(conv1(x, n)),
        "conv1x1 + x*sigmoid(1.702x)": lambda x, n: _sigmoid_gelu(conv1(x, n), n),
        "conv1x1 + layernorm": lambda x, n: ChannelLayerNorm(name=n)(conv1(x, n)),
        "conv1x1 + layernorm_rsqrt_as_sigmoid": None,  # swapped in after quantize_model
    }


def build(unit, size, channels, name):
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i in range(REPEAT):
        x = unit(x, f"{name}{i}")
    return keras.Model(inputs, x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="feature-map height and width (default 128)")
    p.add_argument("--channels", type=int, default=16, help="channels (default 16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (16, args.size, args.size, args.channels)).astype("float32")
    table = units(args.channels)
    files, not_delegated = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for i, (label, unit) in enumerate(table.items()):
            probe = unit is None
            model = build(table["conv1x1 + layernorm"] if probe else unit, args.size, args.channels, f"u{i}_")
            fp32 = os.path.join(folder, f"u{i}_fp32.tflite")
            with open(fp32, "wb") as f:
                f.write(convert(model, "fp32"))
            qat = quantize_model(model, input_range=None)
            if probe:
                def swap(layer, *a, **k):
                    if isinstance(layer, QuantChannelLayerNorm):
                        layer = _NoRsqrtNorm.from_config(layer.get_config())
                    return layer(*a, **k)

                swapped = keras.models.clone_model(qat, call_function=swap)
                swapped.set_weights(qat.get_weights())
                qat = swapped
            calibrate(qat, data, steps=2)
            int8 = os.path.join(folder, f"u{i}_int8.tflite")
            with open(int8, "wb") as f:
                f.write(convert(qat, "int8", representative_data=data))
            not_delegated[label] = xnnpack_partitions(int8).get("not_delegated", {})
            files += [fp32, int8]
        rows = benchmark(files, None, threads=(args.threads,), runs=args.runs, rounds=args.rounds, warmup=10)
    median = {os.path.basename(r["name"]): r["median_ms"] / REPEAT for r in rows}
    print(f"Command: `python benchmarks/bench_tflite_ops.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}  ")
    print(f"Date: {datetime.date.today()}; {args.size}x{args.size}x{args.channels}, {args.threads} thread(s), "
          f"median of {args.rounds}x{args.runs} runs per unit x{REPEAT} chain")
    print()
    print("| unit | fp32 ms | int8 ms | int8 / fp32 | int8 ops outside XNNPACK |")
    print("|---|---|---|---|---|")
    for i, label in enumerate(table):
        f, q = median[f"u{i}_fp32.tflite"], median[f"u{i}_int8.tflite"]
        outside = ", ".join(f"{k} x{v // REPEAT}" for k, v in not_delegated[label].items()) or "-"
        print(f"| {label} | {f:.3f} | {q:.3f} | {q / f:.2f} | {outside} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
