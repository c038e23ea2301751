"""Input pipeline throughput: `load_pairs` decode rate and `make_dataset` + `augmenter` images/s.

    python benchmarks/bench_data.py                          # synthetic PNGs written to a temp dir
    python benchmarks/bench_data.py --data DIR --image-size 256 --batch-size 16

The one-off scan (`find_pairs` + `load_pairs`: decode, check, resize) is timed once. The training
pipeline (shuffle, batch, uint8 -> float, in-graph augmentation, prefetch) is timed after a
warm-up as the median of several windows; the same without augmentation is given for reference.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_litenext import data as D  # noqa: E402


def write_synthetic(folder, n, size, seed=0):
    """`n` RGB PNG images with bright discs and their binary masks, `size` x `size`."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "masks"))
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(3, 10))):
            x, y = (int(v) for v in rng.integers(0, size, 2))
            cv2.circle(mask, (x, y), int(rng.integers(size // 40 + 2, size // 8)), 255, -1)
        noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        image = np.where(mask[..., None] > 0, 180, 30).astype(np.uint8) + noise
        cv2.imwrite(os.path.join(folder, "images", f"{i:05d}.png"), image)
        cv2.imwrite(os.path.join(folder, "masks", f"{i:05d}.png"), mask)


def throughput(ds, batch_size, warmup, windows, seconds, batches):
    """Median images/s over `windows` timed windows (each `batches` batches or `seconds` long)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    rates = []
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while True:
            image, _ = next(it)
            count += int(image.shape[0])
            elapsed = time.perf_counter() - start
            if (batches and count >= batches * batch_size) or (not batches and elapsed >= seconds):
                break
        rates.append(count / elapsed)
    return statistics.median(rates), rates


def measure(size=256, n=128, batch_size=16, seconds=3.0, windows=5, warmup=10):
    """`{"augmented", "plain"}` images/s of the training pipeline on `n` synthetic PNG pairs at
    `size` (what `benchmarks/run.py` reports)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "synthetic")
        write_synthetic(data_dir, n, size)
        images, masks, _, _ = D.load_pairs(D.find_pairs(data_dir), size, channels=3)
    common = dict(batch_size=batch_size, shuffle=True, seed=0, repeat=True, drop_remainder=True)
    timing = dict(batch_size=batch_size, warmup=warmup, windows=windows, seconds=seconds, batches=0)
    plain, _ = throughput(D.make_dataset(images, masks, **common), **timing)
    augmented, _ = throughput(D.make_dataset(images, masks, augment=D.augmenter(seed=0), **common), **timing)
    return {"augmented": augmented, "plain": plain, "size": size, "batch_size": batch_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder with images/ and masks/ (default: synthetic PNGs)")
    parser.add_argument("--masks-suffix", default="")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--synthetic-count", type=int, default=256, help="pairs written when --data is not given")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up batches")
    parser.add_argument("--windows", type=int, default=5, help="timed windows (the median is reported)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a timed window")
    parser.add_argument("--batches", type=int, default=0, help="batches per window instead of --seconds")
    args = parser.parse_args(argv)

    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"os.cpu_count()={os.cpu_count()} | python {platform.python_version()} | tf {tf.__version__} | "
        f"cv2 {cv2.__version__} | {datetime.datetime.now().isoformat(timespec='seconds')}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            data_dir, source = args.data, args.data
        else:
            data_dir = os.path.join(tmp, "synthetic")
            write_synthetic(data_dir, args.synthetic_count, args.image_size)
            source = f"synthetic {args.synthetic_count} PNG pairs {args.image_size}x{args.image_size}"
        start = time.perf_counter()
        pairs = D.find_pairs(data_dir, masks_suffix=args.masks_suffix)
        images, masks, _, report = D.load_pairs(pairs, args.image_size, channels=args.channels)
        scan = time.perf_counter() - start
    print(
        f"load_pairs: {report['kept']} pairs in {scan:.2f} s = {report['kept'] / scan:.0f} pairs/s "
        f"(find + decode + check + resize to {args.image_size}x{args.image_size}, {source})"
    )

    common = dict(batch_size=args.batch_size, shuffle=True, seed=0, repeat=True, drop_remainder=True)
    timing = dict(batch_size=args.batch_size, warmup=args.warmup, windows=args.windows,
                  seconds=args.seconds, batches=args.batches)
    plain, _ = throughput(D.make_dataset(images, masks, **common), **timing)
    augmented, rates = throughput(
        D.make_dataset(images, masks, augment=D.augmenter(seed=0), **common), **timing
    )
    print(f"make_dataset without augment: {plain:.0f} img/s")
    print(
        f"RESULT make_dataset+augmenter: {augmented:.0f} img/s (median of {len(rates)} windows: "
        f"{', '.join(f'{r:.0f}' for r in rates)}) at {args.image_size}x{args.image_size}x{args.channels}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
