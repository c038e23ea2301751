"""Images/s of `predict --runner DirectRunner` (the Beam pipeline, 2 worker processes) against plain
`predict`, on the same files, the same machine, interleaved.

    python benchmarks/beam.py                       # 200 images of the bundled sample (96 px), the bundled preset
    python benchmarks/beam.py --images 400 --repeats 5 --workers 2

Each repeat runs both commands once, in turn, as a user would (a fresh process: Python, TensorFlow,
the model; Beam's workers start theirs too), into fresh output folders; the figure is the median
of the repeats' wall times, and images/s is the image count over it. Prints a Markdown table, the
machine (CPU model, cores, flags) and the load average before and after.
"""

import argparse
import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_folder(folder, count):
    """`count` images of the bundled sample (96×96 nuclei, `data.sample_data_dir`), repeated if needed."""
    sys.path.insert(0, ROOT)
    from keras_litenext.data import sample_data_dir

    sample = sorted(glob.glob(os.path.join(sample_data_dir(), "images", "*.png")))
    os.makedirs(folder)
    for i in range(count):
        shutil.copy(sample[i % len(sample)], os.path.join(folder, f"{i:05d}.png"))
    return folder


def command(preset, images, output, runner=None, workers=2):
    argv = [sys.executable, "-m", "keras_litenext", "predict", "--preset", preset, images if runner is None else os.path.join(images, "*.png"),
            "--output", output, "--quiet"]
    if runner:
        argv += ["--runner", runner, f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return argv


def timed(argv):
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def machine():
    """CPU model, core count and the flags that matter for these kernels."""
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("?", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags {', '.join(shown) or 'none of avx2/fma/avx512'}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="image count (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats, at least 3 (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes (default: %(default)s)")
    p.add_argument("--preset", default="litenext-nuclei", help="the model (default: %(default)s)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-beam-")
    try:
        images = images_folder(os.path.join(work, "images"), args.images)
        load_before = os.getloadavg()
        times = {"predict": [], "beam": []}
        for r in range(max(3, args.repeats)):
            for name in ("predict", "beam") if r % 2 == 0 else ("beam", "predict"):  # interleaved, the order alternating
                out = os.path.join(work, f"{name}{r}")
                times[name].append(timed(command(args.preset, images, out, "DirectRunner" if name == "beam" else None, args.workers)))
                print(f"repeat {r}: {name} {times[name][-1]:.1f} s", file=sys.stderr)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (shared machine)")
    print(f"{args.images} images of {args.preset}'s sample (96x96 PNG), --mode resize, medians of {max(3, args.repeats)} interleaved repeats\n")
    print("| command | median s | min s | max s | images/s |")
    print("|---|---|---|---|---|")
    for name, label in (("predict", "`predict` (one process)"), ("beam", f"`predict --runner DirectRunner`, {args.workers} worker processes")):
        median = statistics.median(times[name])
        print(f"| {label} | {median:.1f} | {min(times[name]):.1f} | {max(times[name]):.1f} | {args.images / median:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
