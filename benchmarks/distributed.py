"""Training throughput of `fit` in N processes on JAX's distributed runtime (127.0.0.1) against one
process, on the same machine, the same data, global batch and seed, interleaved.

    python benchmarks/distributed.py                        # bundled sample, 96 px, 2 processes, 4 epochs, 3 repeats
    python benchmarks/distributed.py --processes 2 --epochs 5 --image-size 64 --repeats 3

An epoch's time is read off the run's backup files (`backup/epoch-NNNN.weights.h5`, written at
each epoch's end): the time between two of them is one epoch, training and validation. The first
epoch (compilation) is left out; the figure is the median of the later epochs over the repeats,
and images/s is the training split's image count over it. On one machine whose cores the
processes share, N processes show the runtime's overhead, not a speed-up: each process runs its
slice of every global batch on the same cores, and the gradients are all-reduced between them.
"""

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from beam import machine  # noqa: E402  (the same machine line as the Beam benchmark)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fit(out, count, args, cache):
    """Run `fit` in `count` processes; returns the times (perf_counter) at which each epoch's backup
    file appeared."""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=cache)
    port, procs = free_port(), []
    for index in range(count):
        group = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(index)] if count > 1 else []
        cmd = [sys.executable, "-m", "keras_litenext", "fit", "--output", out, "--image-size", str(args.image_size),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", "42", "--quiet", *group]
        if args.data:
            cmd += ["--data", args.data]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    seen = {}
    while any(p.poll() is None for p in procs):
        for path in glob.glob(os.path.join(out, "backup", "epoch-*.weights.h5")):
            epoch = int(os.path.basename(path).split("-")[1].split(".")[0])
            seen.setdefault(epoch, time.perf_counter())
        time.sleep(0.02)
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"fit in {count} process(es) failed ({p.returncode}):\n{err[-2000:]}")
    return [seen[e] for e in sorted(seen)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset folder (default: the bundled sample)")
    p.add_argument("--processes", type=int, default=2, help="processes of the group (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run, at least 3 (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=96, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: %(default)s)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-distributed-")
    epochs = {1: [], args.processes: []}
    train_images = None
    try:
        load_before = os.getloadavg()
        for r in range(args.repeats):
            for count in (1, args.processes) if r % 2 == 0 else (args.processes, 1):  # the order alternating
                out = os.path.join(work, f"run{r}-{count}")
                stamps = run_fit(out, count, args, os.path.join(work, "jax-cache"))
                if len(stamps) < 3:
                    raise SystemExit(f"only {len(stamps)} epoch file(s) seen: give more --epochs")
                epochs[count] += [b - a for a, b in zip(stamps[:-1], stamps[1:])]  # from the 2nd epoch on
                with open(os.path.join(out, "splits.json"), encoding="utf-8") as f:
                    train_images = len(json.load(f)["train"])
                print(f"repeat {r}: {count} process(es), epochs {', '.join(f'{s:.1f}' for s in epochs[count][-len(stamps) + 1:])} s",
                      file=sys.stderr)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (shared machine)")
    print(f"LiteNeXt (default), {train_images} training images at {args.image_size} px, global batch {args.batch_size}, "
          f"epochs 2-{args.epochs} of {args.repeats} interleaved repeats (epoch 1 compiles)\n")
    print("| processes | median s / epoch | min | max | training images/s | vs 1 process |")
    print("|---|---|---|---|---|---|")
    one = statistics.median(epochs[1])
    for count, times in epochs.items():
        median = statistics.median(times)
        print(f"| {count} | {median:.1f} | {min(times):.1f} | {max(times):.1f} | {train_images / median:.1f} | {one / median:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
