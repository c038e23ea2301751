"""The benchmark suite: every registered model, every file kind, on this machine, in one run.

    python benchmarks/run.py                                   # all models, 256², writes BENCHMARKS.md
    python benchmarks/run.py --models litenext,ulite --no-write
    python benchmarks/run.py --reference-dir /path/to/LiteNeXt  # + the authors' PyTorch LiteNeXt
    python benchmarks/run.py --smoke                           # tiny and fast: CI checks that it runs
    python benchmarks/run.py --models litenext --preset litenext-nuclei --data path/to/dsb2018_96  # trained weights, scored

For each model (random weights: latency does not depend on them; or a preset's trained weights
at its size with `--preset`; the deploy form, what the converter ships):

- parameters and MACs (`count_macs`) at the image size, and the floor: `2 x MACs` over this
  CPU's measured float32 matrix-multiply rate (one thread, NumPy's BLAS), what no file beats;
- `.tflite` files as `tflite/convert.py` makes them: fp32, fp16, int8 in the default "cpu"
  mode (float islands inside XNNPACK) and in "strict" mode (every op int8), the int8 ones from
  the QAT graph calibrated on training images of `--data` (default: the bundled sample; a
  classifier without `--data`: the sample's images), the same images for every int8 file;
  XNNPACK partitions of each; LiteRT (XNNPACK) latency, batch 1, at
  each `--threads`; for a model with depthwise kernels of more than 25 taps also the fp32 file
  with those kernels whole (`fp32_whole`, the file before `split_depthwise_kernels`), timed in
  the same rounds;
- the Keras model: TensorFlow `tf.function` at batch 1 and 8, and JAX `jit` at batch 1 (in a
  child process: the backend is chosen at import), intra-op threads set to each `--threads`;
- training throughput on the CPU (TensorFlow backend, batch 8, the task's loss, images/s after
  warm-up) and its peak resident memory (a child process per model, so the peak is its own);
- what you would get otherwise (`peers.py`; `--no-peers` leaves it out): Keras'
  `model.export(format="litert")` fp32 and its full-int8 PTQ, and `litert-quantizer`'s static int8
  of our fp32 file, made from the same weights and calibration images, timed in the same
  interleaved rounds as ours; with `--preset`, the preset's shipped (QAT fine-tuned) int8 file too.
  All of them, and the Keras float model, are scored on the test split of `--data` (80/10/10,
  seed 42, as training and export split a folder): Dice, or accuracy and AUC for a classifier;
- the authors' PyTorch LiteNeXt when `--reference-dir` points at a checkout of their repository
  (github.com/tranngocduvnvp/LiteNeXt.; their code is imported from there at run time; it needs
  `pip install torch dropblock`), at batch 1 with `torch.no_grad()`, in the Keras rounds.

Then the tf.data training pipeline's throughput at 256² (`bench_data.py`'s measurement), and
LiteNeXt's speed goals against what this run measured (`goals`).
Latencies are medians of interleaved rounds (every contender once per round, so a change of
load hits all alike); ratios are computed within the run. The machine, CPU flags, versions,
date and command head every table. `--write` (default) replaces the suite's section of
BENCHMARKS.md between its markers.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- benchmarks/run.py: start -->", "<!-- benchmarks/run.py: end -->"


def kinds(args):
    """The files timed: the kinds `litert.convert` makes (int8 with float islands, its default
    mode) and the strict int8 file; fp16 left out of a smoke run."""
    from keras_litenext.litert import KINDS

    return tuple(k for k in (*KINDS, "int8_strict") if not (args.smoke and k == "fp16"))


def parse_args(argv=None):
    from keras_litenext.runs.checks import ints, nonnegative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated registry names (default: every registered model)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--threads", type=ints(1), default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per contender per round (default 10)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=nonnegative_int, default=5)
    p.add_argument("--train-steps", type=positive_int, default=10, help="timed training steps per model (default 10)")
    p.add_argument("--train-size", type=positive_int, default=128, help="training image size (default 128)")
    p.add_argument("--no-jax", action="store_true", help="leave out the JAX timings")
    p.add_argument("--no-train", action="store_true", help="leave out training throughput")
    p.add_argument("--reference-dir", help="checkout of the authors' LiteNeXt repository (adds their PyTorch model)")
    p.add_argument("--data", help="dataset folder (images/, masks/) for calibration and the held-out scores "
                                  "(default: the bundled sample, keras_litenext/assets/dsb2018_96)")
    p.add_argument("--preset", action="append", default=[],
                   help="a preset (bundled name or folder) whose trained weights and size its family uses (repeatable)")
    p.add_argument("--no-peers", action="store_true", help="leave out the peer files (Keras export, litert-quantizer)")
    p.add_argument("--num-calibration", type=positive_int, default=32, help="calibration images for every int8 file (default 32)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that the suite runs (no figures)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--no-write", action="store_true", help="print the tables only; leave BENCHMARKS.md as it is")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.runs, args.rounds, args.warmup = 32, 1, 1, 1
        args.train_steps, args.train_size, args.threads, args.no_write = 1, 32, [1], True
        args.no_peers, args.num_calibration = True, 4
    return args


def cpu_info():
    """`(model name, flags)` of this CPU from /proc/cpuinfo (`(None, [])` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None, []
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))), [])
    return model, flags


def machine():
    """`"model (SIMD flags), N cores"` of this CPU."""
    model, flags = cpu_info()
    if model is None:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm") if f in flags]
    if "avx2" in flags and not any(f in flags for f in ("avx512_vnni", "avx_vnni")):
        simd.append("no avx512_vnni / avx_vnni")
    return f"{model} ({', '.join(simd) or 'no AVX2'}), {os.cpu_count()} cores"


GEMM_CODE = """
import json, time, numpy as np
a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
a @ a
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < {seconds}:
    a @ a
    n += 1
print(json.dumps({{"gflops": 2 * 512**3 * n / (time.perf_counter() - t0) / 1e9}}))
"""


def matmul_gflops(seconds=1.0):
    """Measured float32 GEMM rate of one thread (GFLOP/s): the floor's denominator. In a child
    process whose BLAS is limited to one thread before NumPy loads it."""
    one = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
    return child(GEMM_CODE.format(seconds=seconds), env=one)["gflops"]


def interleaved(contenders, runs, rounds, warmup):
    """`{name: median ms}` of callables timed in interleaved rounds."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def child(code, env=None, timeout=1800):
    """Run `code` in a child Python; its last stdout line is JSON, returned parsed."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"child process failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


JAX_CODE = """
import json, time, statistics, numpy as np, jax, keras, keras_litenext as kl
spec = kl.get_spec({name!r})
model = spec.deploy_form(kl.create_model({name!r}, input_shape={shape!r}))
x = np.random.default_rng(0).random((1, *{shape!r}), dtype=np.float32)
fn = jax.jit(lambda v, t, x: model.stateless_call(v, t, x, training=False)[0])
v, t = [w.value for w in model.trainable_variables], [w.value for w in model.non_trainable_variables]
for _ in range({warmup} + 1):
    fn(v, t, x).block_until_ready()
ms = []
for _ in range({n}):
    t0 = time.perf_counter(); fn(v, t, x).block_until_ready(); ms.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({{"jax_ms": statistics.median(ms)}}))
"""

TRAIN_CODE = """
import json, resource, time, numpy as np, tensorflow as tf, keras, keras_litenext as kl
from keras_litenext.tasks import get_task
tf.config.threading.set_intra_op_parallelism_threads({threads}); tf.config.threading.set_inter_op_parallelism_threads(1)
spec = kl.get_spec({name!r})
task = get_task("classification" if "classification" in spec.tasks and "binary" not in spec.tasks else "binary", num_classes=2)
model = kl.create_model({name!r}, input_shape={shape!r}, num_classes=task.output_channels)
rng = np.random.default_rng(0)
x = rng.random((8, *{shape!r}), dtype=np.float32)
if task.kind == "classification":
    y = rng.integers(0, 2, (8,)).astype("int32")
else:
    y = (rng.random((8, *{shape!r}[:2], 1)) > 0.5).astype("float32")
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=task.loss())
ds = tf.data.Dataset.from_tensors((x, y)).repeat()
model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
t0 = time.perf_counter()
model.fit(ds, steps_per_epoch={steps}, epochs=1, verbose=0)
dt = time.perf_counter() - t0
print(json.dumps({{"train_img_s": 8 * {steps} / dt, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure_model(name, args, folder, log):
    import numpy as np
    import tensorflow as tf

    import keras
    import keras_litenext as kl
    from keras_litenext import quantization as Q
    from keras_litenext import litert as tflite

    spec = kl.get_spec(name)
    preset = presets_of(args).get(name)
    keras.utils.set_random_seed(0)
    if preset:  # trained weights, at the size they were trained at
        from keras_litenext.presets import load_preset

        model = load_preset(preset["path"])
        size = int(model.inputs[0].shape[1])
    else:
        size = -(-args.image_size // spec.size_multiple) * spec.size_multiple
        model = spec.deploy_form(kl.create_model(name, input_shape=(size, size, 3)))
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    images = rng.random((8, *shape), dtype=np.float32)
    row = {"model": name, "size": size, "params": int(model.count_params()), "macs": int(kl.count_macs(model)), "files": {},
           "weights": f"preset {preset['name']}" if preset else "random"}
    held = heldout_data(args, model, row)
    # every int8 file is calibrated on the same images: the data's training images, else bundled sample images
    if held:
        pixels = held[1]["train"][0][: args.num_calibration]
    else:
        from browser import sample_pixels

        pixels = sample_pixels(size, args.num_calibration)
        pixels = pixels if shape[-1] == 3 else pixels.mean(-1, keepdims=True).astype(np.uint8)
    from keras_litenext.data.intensity import to_float

    calibration = to_float(pixels)  # uint8 / 255 (a 16-bit set's / 65535)
    pixels = pixels if pixels.dtype == np.uint8 else calibration

    t0 = time.time()
    qat = Q.calibrate(Q.quantize_model(model), calibration, batch_size=4)
    builds = {
        "fp32": lambda: tflite.convert(model, "fp32"),
        "fp16": lambda: tflite.convert(model, "fp16"),
        "int8_strict": lambda: tflite.convert(qat, "int8", representative_data=pixels, int8_mode="strict"),
    }
    if args.smoke:
        builds.pop("fp16")
    whole = Q.deployment_model(model, max_depthwise_taps=None)
    if Q.split_depthwise_kernels(whole) is not whole:  # it has kernels to split: time the file without
        builds["fp32_whole"] = lambda: tflite.convert(whole, "fp32", rewrite=False)
    for kind, build in builds.items():
        path = os.path.join(folder, f"{name}_{kind}.tflite")
        tflite.write_bytes(path, build())
    strict = open(os.path.join(folder, f"{name}_int8_strict.tflite"), "rb").read()
    tflite.write_bytes(os.path.join(folder, f"{name}_int8.tflite"), tflite.apply_int8_mode(strict, "cpu"))
    for kind in kinds(args) + (("fp32_whole",) if "fp32_whole" in builds else ()):
        path = os.path.join(folder, f"{name}_{kind}.tflite")
        info, parts = tflite.inspect_tflite(path), tflite.xnnpack_partitions(path)
        row["files"][kind] = {"path": path, "kib": round(os.path.getsize(path) / 1024), "partitions": parts["partitions"],
                              "not_delegated": parts["not_delegated"], "float_ops": sum(info["float_ops"].values())}
    log(f"{name}: {size}², converted in {time.time() - t0:.0f} s")
    if not args.no_peers:
        t0 = time.time()
        row["peers"] = make_peer_files(name, model, preset, folder, calibration, row["files"]["fp32"]["path"], log)
        log(f"{name}: peer files made in {time.time() - t0:.0f} s")

    entries = {**row["files"], **{k: v for k, v in row.get("peers", {}).items() if "path" in v}}
    files = [f["path"] for f in entries.values()]
    for r in tflite.benchmark(files, threads=tuple(args.threads), runs=args.runs, rounds=args.rounds, warmup=args.warmup):
        kind = r["name"][len(name) + 1 : -len(".tflite")]
        entries[kind][f"ms_{r['threads']}t"] = r["median_ms"]
    if held:
        row["scores"] = score_all(model, held, entries, max(args.threads), log, name)

    # Keras under TensorFlow: one thread count per process (TensorFlow fixes it at start-up), the max
    fn = tf.function(lambda t: model(t, training=False))
    x1, x8 = tf.constant(images[:1]), tf.constant(images)
    contenders = {"tf_b1": lambda: fn(x1).numpy(), "tf_b8": lambda: fn(x8).numpy()}
    if args.reference_dir and name == "litenext":
        contenders["pytorch_b1"] = reference_litenext(args.reference_dir, images[:1], max(args.threads))
    row["keras"] = interleaved(contenders, args.runs, args.rounds, args.warmup)
    if not args.no_jax:
        try:
            row["jax_ms"] = child(JAX_CODE.format(name=name, shape=shape, warmup=args.warmup, n=args.runs * args.rounds),
                                  env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})["jax_ms"]
        except Exception as err:  # JAX is optional
            row["jax_ms"] = None
            log(f"{name}: JAX timing skipped ({err})")
    if not args.no_train:
        tshape = (-(-args.train_size // spec.size_multiple) * spec.size_multiple,) * 2 + (3,)
        row["train"] = child(TRAIN_CODE.format(name=name, shape=tshape, steps=args.train_steps, threads=max(args.threads)))
        row["train"]["size"] = tshape[0]
    return row


def presets_of(args):
    """`{family: {"name", "path", "int8"}}` of the `--preset`s (`int8`: its shipped int8 file, or None)."""
    if not args.preset:
        return {}
    from keras_litenext.presets import preset_metadata

    out = {}
    for p in args.preset:
        meta = preset_metadata(p)
        shipped = sorted(glob.glob(os.path.join(meta["path"], "tflite", "*_int8.tflite")))
        out[meta["model"]] = {"name": meta["name"], "path": meta["path"], "int8": shipped[0] if shipped else None}
    return out


def heldout_data(args, model, row):
    """`(task, arrays)` of `--data` (default the bundled sample) for `model`, or None with the
    reason in `row["data_note"]` (a classifier on a folder of masks, ...)."""
    import peers

    from keras_litenext.data import sample_data_dir

    data = args.data or sample_data_dir()
    if args.data is None and len(model.outputs[0].shape) == 2:
        row["data_note"] = "the bundled sample is a segmentation set (images/, masks/), not class folders: pass --data"
        return None
    try:
        task, arrays = peers.heldout(data, model)
    except Exception as err:  # a folder that does not fit the model: the suite goes on, unscored
        row["data_note"] = f"{os.path.basename(os.path.normpath(data))}: {err if isinstance(err, ValueError) else peers.one_line(err)}"
        return None
    row["data"] = {"folder": os.path.abspath(data), **{k: int(len(v[0])) for k, v in arrays.items()}}
    return task, arrays


def make_peer_files(name, model, preset, folder, calibration, fp32_path, log):
    """The peer files (`peers.make_peers`) with their size and XNNPACK partitions, and a preset's
    shipped int8 file (`preset_int8`)."""
    import shutil

    import peers

    from keras_litenext import litert as tflite

    with open(fp32_path, "rb") as f:
        out = peers.make_peers(name, model, f.read(), folder, calibration, log)
    if preset and preset["int8"]:
        path = os.path.join(folder, f"{name}_preset_int8.tflite")
        shutil.copyfile(preset["int8"], path)
        out = {"preset_int8": {"path": path}, **out}
    for entry in out.values():
        if "path" in entry:
            parts = tflite.xnnpack_partitions(entry["path"])
            entry.update(kib=round(os.path.getsize(entry["path"]) / 1024), partitions=parts["partitions"],
                         not_delegated=parts["not_delegated"])
    return out


def score_all(model, held, entries, threads, log, name):
    """Test scores of the Keras float model (`keras`) and of the fp32, int8 and peer files."""
    import peers

    task, arrays = held
    images, masks = arrays["test"]
    scores = {"keras": peers.score_keras(model, task, images, masks)}
    for kind, entry in entries.items():
        if kind in ("fp16", "int8_strict", "fp32_whole"):
            continue
        try:
            scores[kind] = peers.score_file(entry["path"], task, images, masks, threads)
        except Exception as err:  # a file LiteRT runs but the scoring cannot read: say why
            scores[kind] = {"error": peers.one_line(err)}
    log(f"{name}: scored on {len(images)} test images: " + ", ".join(f"{k} {peers.fmt_score(v)}" for k, v in scores.items()))
    return scores


def reference_litenext(checkout, x, threads):
    """A callable running the authors' PyTorch LiteNeXt (imported from `checkout`) on `x`."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.abspath(checkout))
    from Models.LiteNeXt import LiteNeXt as TorchLiteNeXt  # the reference repository's layout

    model = TorchLiteNeXt(kernel_sizes=[7] * 4).eval()
    xp = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def run():
        with torch.no_grad():
            return model(xp).numpy()

    return run


def data_throughput(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_data

    return bench_data.measure(size=args.image_size, n=16 if args.smoke else 128, batch_size=8 if args.smoke else 16,
                              seconds=0.5 if args.smoke else 3.0)


def tables(rows, data, gflops, args, header):
    t, KINDS = args.threads, kinds(args)
    lines = [header, ""]
    lines += ["### Size, floor and files", "",
              "| model | input | params | MACs | floor ms (1 thread) | " + " | ".join(f"{k} KiB / partitions" for k in KINDS) + " |",
              "|---|---|---|---|---|" + "---|" * len(KINDS)]
    for r in rows:
        floor = 2 * r["macs"] / (gflops * 1e9) * 1e3
        cells = [f"{r['files'][k]['kib']} / {r['files'][k]['partitions']}" for k in KINDS]
        lines.append(f"| {r['model']} | {r['size']}² | {r['params']:,} | {r['macs'] / 1e9:.3f} G | {floor:.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"Floor: 2 × MACs at {gflops:.0f} GFLOP/s, this CPU's measured one-thread float32 GEMM rate "
              "(NumPy 512×512): the float32 floor, which no float file beats (int8 kernels, 4 multiplies per VNNI lane, can go under it).", ""]
    lines += ["### Latency, batch 1 (ms, median)", "",
              "| model | threads | " + " | ".join(f".tflite {k}" for k in KINDS) + f" | int8 / fp32 | Keras TF ({max(t)} threads) | Keras TF batch 8, per image | JAX jit (1 thread) | best file / floor |",
              "|---|---|" + "---|" * (len(KINDS) + 5)]
    for r in rows:
        floor = 2 * r["macs"] / (gflops * 1e9) * 1e3
        for n in t:
            ms = [r["files"][k].get(f"ms_{n}t") for k in KINDS]
            keras_ms = r["keras"]
            jax = r.get("jax_ms")
            best = min(m for m in ms if m)
            ref = f" (PyTorch reference {keras_ms['pytorch_b1']:.1f})" if "pytorch_b1" in keras_ms else ""
            int8 = ms[KINDS.index("int8")]
            lines.append(f"| {r['model']} | {n} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {int8 / ms[0]:.2f} | "
                         f"{keras_ms['tf_b1']:.1f}{ref} | {keras_ms['tf_b8'] / 8:.1f} | {'-' if jax is None else f'{jax:.1f}'} | "
                         f"{best / floor if n == 1 else best * n / floor:.1f}× |")
    if any("peers" in r or "scores" in r for r in rows):
        lines += [""] + peer_table(rows, args)
    if any("train" in r for r in rows):
        lines += ["", f"### Training on the CPU (TensorFlow backend, batch 8, {max(t)} threads)", "",
                  "| model | input | images/s | peak memory MiB |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['train']['size']}² | {r['train']['train_img_s']:.1f} | {r['train']['peak_rss_mib']:.0f} |"
                  for r in rows if "train" in r]
    if data:
        lines += ["", f"### tf.data training pipeline at {args.image_size}²", "",
                  f"{data['augmented']:.0f} images/s with augmentation, {data['plain']:.0f} without (median of windows)."]
    rows_goals = goals(rows, gflops, args, data)
    if rows_goals:
        mark = {True: "met", False: "**not met**", None: "-"}
        size = next(r["size"] for r in rows if r["model"] == "litenext")
        lines += ["", f"### LiteNeXt's speed goals, this run ({size}²)", "", "| goal | measured | |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {mark[ok]} |" for g, m, ok in rows_goals]
    return "\n".join(lines) + "\n"


def peer_table(rows, args):
    """"What you would get otherwise": our fp32 and int8 files next to the peers' (`peers.py`),
    timed in the same rounds, and every file's test score."""
    import peers

    t = args.threads
    n = max(t)
    names = {"fp32": "ours: fp32 (`litert.convert`)", "int8": "ours: int8 (calibrated QAT graph, float islands)",
             "preset_int8": "ours: the preset's shipped int8 (QAT fine-tuned, `keras-litenext export`)",
             "keras_fp32": "Keras export, fp32", "keras_int8_ptq": "Keras export, full-int8 PTQ",
             "quantizer_int8": "litert-quantizer, static int8 of our fp32"}
    lines = ["### What you would get otherwise: the same weights through other tools", "",
             "| model | weights | file | KiB | XNNPACK partitions | " + " | ".join(f"ms, {k} thread{'s' if k > 1 else ''}" for k in t)
             + f" | / our int8 ({n} thread{'s' if n > 1 else ''}) | test score |",
             "|---|---|---|---|---|" + "---|" * len(t) + "---|---|"]
    for r in rows:
        entries = {k: r["files"][k] for k in ("fp32", "int8") if k in r["files"]}
        entries.update(r.get("peers", {}))
        ours = r["files"].get("int8", {}).get(f"ms_{n}t")
        scores = r.get("scores", {})
        for kind, e in entries.items():
            head = f"| {r['model']} {r['size']}² | {r.get('weights', 'random')} | {names.get(kind, kind)} |"
            if "error" in e:
                lines.append(f"{head} not made: {e['error'].replace('|', '/')} |" + " |" * (len(t) + 3))
                continue
            ms = [e.get(f"ms_{k}t") for k in t]
            mine = e.get(f"ms_{n}t")
            lines.append(f"{head} {e['kib']} | {e['partitions']} | " + " | ".join("-" if m is None else f"{m:.2f}" for m in ms)
                         + f" | {'-' if not (mine and ours) else f'{mine / ours:.2f}'} | {peers.fmt_score(scores.get(kind)).replace('|', '/')} |")
        if scores.get("keras"):
            lines.append(f"| {r['model']} {r['size']}² | {r.get('weights', 'random')} | the Keras float model (no file) | - | - | "
                         + " | ".join("-" for _ in t) + f" | - | {peers.fmt_score(scores['keras'])} |")
    data = next((r["data"] for r in rows if "data" in r), None)
    notes = [f"{r['model']}: not scored ({r['data_note']})" for r in rows if "data_note" in r]
    lines += ["", "Test score: " + (f"the test split of `{os.path.basename(data['folder'])}` ({data['test']} images; "
              f"{data['train']} training images, the first {args.num_calibration} of which calibrate every int8 file, ours and the peers'), "
              "split 80/10/10 with seed 42 as training and export split a folder; files run with LiteRT (XNNPACK, "
              f"{n} thread{'s' if n > 1 else ''}). " if data else "none: no data folder fits the models. ")
              + "Random weights score what random weights score: only a trained model's (`--preset`) scores compare the tools. "
              + " ".join(notes)]
    lines += ["", "Peers: " + "; ".join(f"`{k}`: {v}" for k, v in peers.PEERS.items()) + "."]
    return lines


def goals(rows, gflops, args, data=None):
    """LiteNeXt's speed goals (the speed issue's list) against this run: `(goal, measured, met)`
    rows; a goal this run cannot measure says what it needs."""
    r = next((r for r in rows if r["model"] == "litenext"), None)
    if r is None:
        return []
    n = 2 if 2 in args.threads else max(args.threads)
    f = {k: v.get(f"ms_{n}t") for k, v in r["files"].items()}
    fast_int8 = any(k in cpu_info()[1] for k in ("avx512_vnni", "avx_vnni", "asimddp"))
    out = []
    if f.get("fp32_whole"):
        gain = f["fp32_whole"] / f["fp32"]
        out.append((f"fp32 .tflite ≥ 2.5× faster than the file with whole 7×7 kernels ({n} threads)",
                    f"{f['fp32_whole']:.1f} → {f['fp32']:.1f} ms: {gain:.2f}×", gain >= 2.5))
    limit = 0.6 if fast_int8 else 1.0
    ratio = f["int8"] / f["fp32"]
    out.append((f"int8 ≤ {limit}× fp32 ({'a VNNI / dot-product CPU' if fast_int8 else 'a CPU without VNNI'}, {n} threads)",
                f"{f['int8']:.1f} / {f['fp32']:.1f} ms: {ratio:.2f}×", ratio <= limit))
    torch_ms = r["keras"].get("pytorch_b1")
    t = max(args.threads)
    if torch_ms:
        out.append((f"int8 ≤ 0.1× the authors' PyTorch LiteNeXt ({t} threads)",
                     f"{r['files']['int8'][f'ms_{t}t']:.1f} / {torch_ms:.1f} ms: {r['files']['int8'][f'ms_{t}t'] / torch_ms:.2f}×",
                     r["files"]["int8"][f"ms_{t}t"] <= 0.1 * torch_ms))
        out.append((f"Keras (TF `tf.function`) ≤ 0.3× the authors' PyTorch LiteNeXt ({t} threads)",
                     f"{r['keras']['tf_b1']:.1f} / {torch_ms:.1f} ms: {r['keras']['tf_b1'] / torch_ms:.2f}×",
                     r["keras"]["tf_b1"] <= 0.3 * torch_ms))
    else:
        out.append(("int8 ≤ 0.1× and Keras ≤ 0.3× the authors' PyTorch LiteNeXt", "not measured: run with --reference-dir", None))
    floor = 2 * r["macs"] / (gflops * 1e9) * 1e3
    best = min(r["files"][k]["ms_1t"] for k in kinds(args) if r["files"][k].get("ms_1t"))
    out.append(("state the floor (1 thread)", f"{r['macs'] / 1e6:.0f} M MACs at {gflops:.0f} GFLOP/s: {floor:.1f} ms; "
                f"best file {best:.1f} ms, {best / floor:.1f}× the floor", True))
    if data:
        out.append((f"tf.data pipeline ≥ 400 images/s at {args.image_size}² with augmentation ({os.cpu_count()} cores)",
                    f"{data['augmented']:.0f} images/s", data["augmented"] >= 400))
    out.append(("GPU training ≥ 1.5× the reference on the same GPU", "not measured: no GPU in this run", None))
    return out


def peer_versions(args):
    if args.no_peers:
        return ""
    from importlib import metadata

    try:
        return f", litert-quantizer {metadata.version('litert-quantizer')}"
    except metadata.PackageNotFoundError:
        return ", litert-quantizer not installed"


def write_section(text):
    from sections import SUITE
    from sections import write_section as write

    write(os.path.join(ROOT, "BENCHMARKS.md"), START, END, text, SUITE, before=None)


def main(argv=None):
    args = parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)  # peers.py, browser.py, bench_data.py
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(args.threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process (the test suite): keep its pools
        pass
    import keras

    import keras_litenext as kl

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    names = args.models.split(",") if args.models else kl.list_models()
    unknown = [n for n in names if n not in kl.list_models()]
    if unknown:
        print(f"error: --models: unknown {', '.join(unknown)}; registered: {', '.join(kl.list_models())}", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    gflops = matmul_gflops(0.2 if args.smoke else 2.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="litenext-bench-") as folder:
        for name in names:
            rows.append(measure_model(name, args, folder, log))
    data = data_throughput(args)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    import ai_edge_litert

    trained = [f"{r['model']}: {r['weights']} weights" for r in rows if r.get("weights", "random") != "random"]
    weights = "; ".join(trained) + (", the others: random weights" if len(trained) < len(rows) else "") if trained else "random weights"
    header = (f"Command `{command.strip()}`, {datetime.date.today()}; {machine()}; shared machine, load average "
              f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; tensorflow {tf.__version__}, keras {keras.__version__}, "
              f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}{peer_versions(args)}; "
              f"{weights}, deploy forms; "
              f"{args.rounds} interleaved rounds × {args.runs} runs after {args.warmup} warm-up. "
              "int8 = the default \"cpu\" mode (float islands inside XNNPACK), int8_strict = every op int8.")
    text = tables(rows, data, gflops, args, header)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "data": data, "gflops": gflops}, f, indent=1, default=str)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
