"""Latency of every .tflite file in a folder (LiteRT, XNNPACK) and of the Keras model, batch 1.

    python tflite/benchmark.py runs/my-run/tflite
    python tflite/benchmark.py deploy/ --keras runs/my-run/best.keras --threads 1 2 4 --rounds 10

Each configuration (file x thread count, and the Keras model) is warmed up, then timed in
interleaved rounds (default 5 rounds of 20 runs: 100 timings each); the table gives the median
over all timings, the 10th-90th percentile range and the spread of the round medians. The Keras
model (default: the one named in the folder's report.json) runs with TensorFlow's own thread
pool. Prints a markdown table headed by the command, machine and date; --json also saves the
numbers. Desktop timings do not predict a phone: measure there too (tflite/android/README.md).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shlex
import sys

from keras_litenext.cli import args as cli


def _cpu():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load():
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=cli.existing_dir, help="folder with .tflite files (e.g. the output of tflite/convert.py)")
    p.add_argument("--keras", type=cli.existing_path, help="Keras model to time too (.keras file or run folder); default: the one in report.json")
    p.add_argument("--no-keras", action="store_true", help="do not time the Keras model")
    p.add_argument("--threads", type=cli.positive_int, nargs="+", default=[1, 2], help="LiteRT thread counts (default 1 2)")
    p.add_argument("--runs", type=cli.positive_int, default=20, help="runs per round (default 20)")
    p.add_argument("--rounds", type=cli.positive_int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=cli.nonnegative_int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--no-xnnpack", action="store_true", help="builtin kernels instead of XNNPACK")
    p.add_argument("--json", type=cli.output_path, help="also write the rows to this JSON file")
    return p


def main(argv=None) -> int:
    """Run the command on `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.runs * args.rounds < 50:
        print(f"note: {args.runs * args.rounds} timings per configuration; use at least 50 for stable medians", file=sys.stderr)
    files = sorted(glob.glob(os.path.join(args.folder, "*.tflite")))
    if not files:
        print(f"error: no .tflite files in {args.folder}", file=sys.stderr)
        return 1

    keras_path = None
    if not args.no_keras:
        keras_path = args.keras
        report = os.path.join(args.folder, "report.json")
        if keras_path is None and os.path.isfile(report):
            with open(report, encoding="utf-8") as f:
                keras_path = json.load(f).get("source", {}).get("model_path")
        if keras_path and os.path.isdir(keras_path):
            keras_path = os.path.join(keras_path, "best.keras")
        if keras_path and not os.path.isfile(keras_path):
            print(f"error: Keras model {keras_path} not found (pass --keras or --no-keras)", file=sys.stderr)
            return 1

    from keras_litenext.litert import benchmark

    keras_model = None
    if keras_path:
        import keras

        keras_model = keras.saving.load_model(keras_path, compile=False)
    load_before = _load()
    try:
        rows = benchmark(files, keras_model, threads=args.threads, runs=args.runs, rounds=args.rounds, warmup=args.warmup,
                         xnnpack=not args.no_xnnpack)
    except ValueError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    load_after = _load()

    import ai_edge_litert

    versions = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    if keras_model is not None:
        import keras
        import tensorflow as tf

        versions += f", TensorFlow {tf.__version__}, Keras {keras.__version__}"
    print(f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'tflite/benchmark.py', *(argv if argv is not None else sys.argv[1:])])}`  ")
    print(f"Machine: {_cpu()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}; "
          f"{versions}  ")
    print(f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {load_before} before, {load_after} after  ")
    print(f"Batch 1, {'XNNPACK' if not args.no_xnnpack else 'builtin kernels'}; {args.rounds} interleaved rounds x {args.runs} runs "
          f"after {args.warmup} warm-up runs.")
    print()
    print("| model | size | threads | median ms | p10-p90 ms | round medians ms | vs fp32 (same threads) |")
    print("|---|---|---|---|---|---|---|")
    fp32 = {r["threads"]: r["median_ms"] for r in rows if r["name"].endswith("_fp32.tflite")}
    for r in rows:
        size = f"{r['size_bytes'] / 1024:.0f} KiB" if r["size_bytes"] else "-"
        ratio = f"{r['median_ms'] / fp32[r['threads']]:.2f}x" if r["threads"] in fp32 else "-"
        threads = r["threads"] if r["threads"] is not None else "TF default"
        spread = f"{min(r['round_medians_ms']):.2f}-{max(r['round_medians_ms']):.2f}"
        print(f"| `{r['name']}` | {size} | {threads} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {spread} | {ratio} |")
    if args.json:
        from keras_litenext.utils import write_json

        write_json(args.json, {"folder": os.path.abspath(args.folder), "cpu": _cpu(), "load": [load_before, load_after], "rows": rows})
    return 0

