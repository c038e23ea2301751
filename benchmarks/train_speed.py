"""Training throughput on the CPU, side by side with the authors' PyTorch models.

    python benchmarks/train_speed.py --authors /tmp/authors --torch-python /path/to/torch/venv/bin/python \\
        --models litenext,ulite,lvunet --size 128 --batch 8 --steps 10 --threads 2 --json out.json --write

`--authors` is a folder holding one export of each authors' repository, named by our registry
name: `litenext/` (github.com/tranngocduvnvp/LiteNeXt.), `ulite/` (github.com/duong-db/U-Lite),
`lvunet/` (github.com/juntaoJianggavin/LV-UNet); e.g. `git archive HEAD | tar -x -C /tmp/authors/ulite`.
Their code is imported from there at run time, by `--torch-python` (an interpreter with `torch`;
LV-UNet also needs `torchvision` and `timm`). Nothing of theirs is copied here, and torch is no
dependency of this package.

One training step, on both sides: forward on a random batch `(batch, size, size, 3)`, a BCE + Dice
loss on the one logit channel (per image: mean-pixel BCE + 1 - soft Dice, averaged over the
batch), backward, AdamW update (lr 1e-3, weight decay 0.01). Ours: the Keras model of
`create_model(name)` (its training form) compiled on the TensorFlow backend, stepped with
`model.train_on_batch` on tensors (the compiled train function `model.fit` runs; one `fit` call
per round instead, as `benchmarks/run.py` times training, took a whole multiple of about 5.1 s
on this machine, a floor of its own, not of the step); theirs: the authors' class in `model.train()`
(LiteNeXt with `kernel_sizes=[7]*4`, `ULite()`, `LV_UNet()` in its training form, MobileNetV3
backbone built with `weights=None`: no download, only speed is measured), a plain PyTorch loop.

Each side runs in its own child process (threads: TensorFlow intra/inter-op `--threads`,
`torch.set_num_threads(--threads)`), built once and warmed up; then `--rounds` interleaved rounds
(ours, theirs; the order alternates each round) of `--steps` timed steps each. The table gives the
median images/s over the rounds per side and the ratio ours/theirs. `--write` replaces this
script's section of BENCHMARKS.md between its markers.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- benchmarks/train_speed.py: start -->", "<!-- benchmarks/train_speed.py: end -->"
TITLE = "## Training throughput against the authors' PyTorch (CPU)"
# input side multiple of each model (the registry's `size_multiple`, checked again by our worker)
MULTIPLE = {"litenext": 16, "ulite": 32, "lvunet": 128}
THEIRS = {"litenext": "LiteNeXt(kernel_sizes=[7] * 4)", "ulite": "ULite()", "lvunet": "LV_UNet() (training form)"}


def model_list(value):
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    unknown = [n for n in names if n not in MULTIPLE]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"must be distinct names among {', '.join(MULTIPLE)}, got {value!r}")
    return names


def parse_args(argv=None):
    from keras_litenext.runs.checks import int_range

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", metavar="JSON", help="no measurement: rewrite the section from an earlier --json file")
    p.add_argument("--authors", help="folder with the authors' exports: litenext/, ulite/, lvunet/")
    p.add_argument("--torch-python", help="a Python interpreter with torch (and torchvision, timm)")
    p.add_argument("--models", type=model_list, default=list(MULTIPLE), help="comma-separated (default: all three)")
    p.add_argument("--size", type=int_range(16), default=128, help="image side (default 128)")
    p.add_argument("--batch", type=int_range(1), default=8)
    p.add_argument("--steps", type=int_range(1), default=10, help="timed steps per round (default 10)")
    p.add_argument("--warmup", type=int_range(1), default=3, help="untimed steps after building (default 3)")
    p.add_argument("--rounds", type=int_range(3), default=3, help="interleaved rounds, at least 3 (default 3)")
    p.add_argument("--threads", type=int_range(1), default=2)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--write", action="store_true", help="replace this script's section of BENCHMARKS.md")
    args = p.parse_args(argv)
    if not args.render and not (args.authors and args.torch_python):
        p.error("--authors and --torch-python are required (unless --render)")
    bad = [n for n in args.models if args.size % MULTIPLE[n]]
    if bad:
        p.error(f"--size {args.size} is not a multiple of {', '.join(f'{n} {MULTIPLE[n]}' for n in bad)}")
    return args


OURS_CODE = r"""
import json, resource, sys, time, numpy as np, tensorflow as tf, keras, keras_litenext as kl
from keras_litenext.tasks import get_task
name, size, batch, steps, warmup, threads = sys.argv[1], *map(int, sys.argv[2:7])
tf.config.threading.set_intra_op_parallelism_threads(threads); tf.config.threading.set_inter_op_parallelism_threads(threads)
assert size % kl.get_spec(name).size_multiple == 0, (name, size)
task = get_task("binary")
keras.utils.set_random_seed(0)
model = kl.create_model(name, input_shape=(size, size, 3), num_classes=task.output_channels)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01), loss=task.loss("bce_dice"))
rng = np.random.default_rng(0)
x = rng.random((batch, size, size, 3), dtype=np.float32)
y = (rng.random((batch, size, size, 1)) > 0.5).astype("float32")
x, y = tf.constant(x), tf.constant(y)
for _ in range(warmup):
    model.train_on_batch(x, y)
params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
print(json.dumps({"ready": True, "params": params, "jit_compile": bool(model.jit_compile),
                  "dtype_policy": keras.config.dtype_policy().name}), flush=True)
for line in sys.stdin:
    if line.strip() != "time":
        break
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    print(json.dumps({"img_s": batch * steps / (time.perf_counter() - t0)}), flush=True)
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""

THEIRS_CODE = r"""
import json, os, resource, sys, time, numpy as np, torch
import torch.nn.functional as F
name, authors, (size, batch, steps, warmup, threads) = sys.argv[1], sys.argv[2], map(int, sys.argv[3:8])
torch.set_num_threads(threads); torch.set_num_interop_threads(threads)
torch.manual_seed(0)
sys.path.insert(0, os.path.join(authors, name))
if name == "litenext":
    from Models.LiteNeXt import LiteNeXt
    model = LiteNeXt(kernel_sizes=[7] * 4)
elif name == "ulite":
    from models.ULite import ULite
    model = ULite()
else:
    import torchvision.models as tvm
    build = tvm.mobilenet_v3_large
    tvm.mobilenet_v3_large = lambda *a, **k: build(weights=None)  # their pretrained=True would download
    from LV_UNet import LV_UNet
    model = LV_UNet()
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.random((batch, 3, size, size), dtype=np.float32))
y = torch.from_numpy((rng.random((batch, 1, size, size)) > 0.5).astype("float32"))


def loss_fn(z, t, smooth=1e-6):
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").flatten(1).mean(1)
    p, t = torch.sigmoid(z).flatten(1), t.flatten(1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (bce + 1 - dice).mean()


def step():
    opt.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == y.shape, (tuple(out.shape), tuple(y.shape))
    loss = loss_fn(out, y)
    loss.backward()
    opt.step()


for _ in range(warmup):
    step()
print(json.dumps({"ready": True, "params": sum(p.numel() for p in model.parameters()),
                  "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    if line.strip() != "time":
        break
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"img_s": batch * steps / (time.perf_counter() - t0)}), flush=True)
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


class Worker:
    """A child process that builds one model, warms up, then times `steps` steps per "time" line."""

    def __init__(self, label, argv, env):
        self.label = label
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)

    def read(self):
        line = ""
        while not line.startswith("{"):
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.err.seek(0)
                tail = [x for x in self.err.read().strip().splitlines() if x.strip()]
                raise RuntimeError(f"{self.label}: {tail[-1] if tail else self.proc.returncode}")
        return json.loads(line)

    def send(self, word):
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        try:
            if self.proc.poll() is None:
                return self.send("quit")
            return {}
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=60)
            self.err.close()


def ours_worker(name, args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    nums = [str(v) for v in (args.size, args.batch, args.steps, args.warmup, args.threads)]
    return Worker(f"ours ({name})", [sys.executable, "-c", OURS_CODE, name, *nums], env)


def theirs_worker(name, args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    nums = [str(v) for v in (args.size, args.batch, args.steps, args.warmup, args.threads)]
    return Worker(f"theirs ({name})", [args.torch_python, "-c", THEIRS_CODE, name, os.path.abspath(args.authors), *nums], env)


def measure(name, args, log):
    """`{"ours": {...}, "theirs": {...}}` for one model: both built and warmed up, then interleaved rounds."""
    row = {"model": name, "size": args.size, "batch": args.batch, "load_before": os.getloadavg()[0]}
    sides = {}
    for side, make in (("ours", ours_worker), ("theirs", theirs_worker)):
        worker = make(name, args)
        try:
            info = worker.read()  # built and warmed up one after the other, so they do not share the CPU
            sides[side] = worker
            row[side] = {**info, "img_s": []}
            log(f"{name}: {side} ready ({info['params']:,} trainable parameters)")
        except RuntimeError as err:
            worker.close() if worker.proc.poll() is None else None
            row[side] = {"error": str(err)}
            log(f"{name}: failed: {err}")
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            try:
                row[side]["img_s"].append(sides[side].send("time")["img_s"])
            except RuntimeError as err:
                row[side]["error"] = str(err)
                sides.pop(side).close()
        log(f"{name}: round {r + 1}: " + ", ".join(f"{s} {row[s]['img_s'][-1]:.2f} img/s" for s in order if s in sides))
    for side, worker in sides.items():
        try:
            row[side].update(worker.close())
        except RuntimeError as err:
            row[side]["error"] = str(err)
    row["load_after"] = os.getloadavg()[0]
    return row


def median(side):
    """Median images/s of one side's rounds, None where it failed or has none."""
    if not side or side.get("error") or not side.get("img_s"):
        return None
    return statistics.median(side["img_s"])


def ratio(ours, theirs):
    """ours / theirs, None where either is missing or theirs is 0."""
    return ours / theirs if ours is not None and theirs else None


def fmt(value, spec=".1f", missing="–"):
    return missing if value is None else format(value, spec)


def table(rows):
    """The markdown table of `measure` rows."""
    lines = ["| model | input | ours: Keras (TF) img/s | theirs: PyTorch img/s | ours / theirs | ours, per round | theirs, per round | parameters, ours / theirs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t = r.get("ours", {}), r.get("theirs", {})
        mo, mt = median(o), median(t)
        per = [", ".join(f"{v:.1f}" for v in s.get("img_s", [])) or "–" for s in (o, t)]
        for i, s in enumerate((o, t)):
            if s.get("error"):
                per[i] = f"failed: {s['error']}"
        params = f"{o['params']:,} / {t['params']:,}" if "params" in o and "params" in t else "–"
        lines.append(f"| {r['model']} | {r['batch']}×{r['size']}² | {fmt(mo)} | {fmt(mt)} | {fmt(ratio(mo, mt), '.2f', '–')}{'×' if ratio(mo, mt) else ''} | "
                     f"{per[0]} | {per[1]} | {params} |")
    return "\n".join(lines) + "\n"


def replace_section(doc, text):
    """`doc` with this script's block between its markers replaced by `text` (or the section added
    before the suite's section, else at the end); everything outside the markers is kept."""
    return _sections().replace_section(doc, START, END, text, TITLE)


def write_section(text, path=None):
    _sections().write_section(path or os.path.join(ROOT, "BENCHMARKS.md"), START, END, text, TITLE)


def _sections():
    """`benchmarks/sections.py` (this script's folder on the path, as for `run.cpu_info`)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import sections

    return sections


def cpu():
    """`(model name, flags)` from /proc/cpuinfo, as `benchmarks/run.py` reads them."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import cpu_info

    return cpu_info()


def versions(args):
    import importlib.metadata as md

    out = {k: md.version(k) for k in ("tensorflow", "keras")}
    done = subprocess.run([args.torch_python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    out["torch"] = done.stdout.strip() or "?"
    tv = subprocess.run([args.torch_python, "-c", "import torchvision; print(torchvision.__version__)"], capture_output=True, text=True)
    out["torchvision"] = tv.stdout.strip() or "not installed"
    return out


def command_line(argv):
    return "python benchmarks/train_speed.py " + " ".join(argv)


def section(rows, meta):
    model, flags = meta["cpu"], meta["flags"]
    v = meta["versions"]
    lines = [f"Command ({meta['date']}; the authors' repositories exported with `git archive HEAD` into `--authors`):", "",
             "```bash", meta["command"], "```", "",
             f"CPU: {model}; avx512f: {'yes' if 'avx512f' in flags else 'no'}, avx512_vnni: {'yes' if 'avx512_vnni' in flags else 'no'}, "
             f"avx2: {'yes' if 'avx2' in flags else 'no'}; {meta.get('cores', '?')} cores, shared with other jobs. "
             f"Load average (1 min) {meta['load_before']:.2f} before, {meta['load_after']:.2f} after. "
             f"TensorFlow {v['tensorflow']}, Keras {v['keras']}, torch {v['torch']}, torchvision {v['torchvision']}, Python {meta.get('python', '?')}.",
             "",
             f"One step: forward, BCE + Dice loss on the one logit channel, backward, AdamW update; random batch; "
             f"{meta['threads']} threads per side; {meta['warmup']} warm-up steps, then {meta['rounds']} interleaved rounds of "
             f"{meta['steps']} timed steps per side; medians over the rounds. Theirs: "
             + ", ".join(f"`{THEIRS[r['model']]}`" for r in rows) + " in `model.train()`. Ours: `create_model(name)`, compiled, `model.train_on_batch`.",
             "", table(rows), reading(rows), "", DIFFERENCES]
    return "\n".join(lines)


DIFFERENCES = """What differs between the two sides, besides the framework:

- the loss: the same shape on both (per image mean-pixel BCE on logits + 1 − soft Dice, smooth
  1e-6, mean over the batch); ours is `keras_litenext.losses.BCEDiceLoss`, theirs a few lines of
  `torch.nn.functional`. LV-UNet's own `BCEDiceLoss` weighs the BCE by 0.5 and uses smooth 1e-5
  (the same work); LiteNeXt's paper trains with its marginal weight loss (ours: `mwl`, the
  binary task's default), not measured here;
- float32 on both sides, no mixed precision; no XLA on ours (Keras' `jit_compile="auto"` is off on
  a CPU-only machine), eager autograd on theirs (no `torch.compile`);
- training forms on both: LV-UNet's re-parameterisable blocks unfused with their BatchNorms (the
  deploy form is for inference only), deep-training slope `act_learn` 0 on theirs (their first
  epoch); BatchNorm in training mode on both; LiteNeXt's DropBlock layers, which the reference
  builds but never calls, are absent from ours and cost theirs nothing;
- ours steps with `model.train_on_batch` on one tensor (Keras' compiled train function), theirs a
  bare Python loop over one tensor; their LV-UNet backbone is MobileNetV3 with
  random weights (`weights=None`) instead of ImageNet's: the same layers, the same work.
"""


def reading(rows):
    """One generated sentence per model: which side is faster, by how much."""
    out = []
    for r in rows:
        mo, mt = median(r.get("ours", {})), median(r.get("theirs", {}))
        q = ratio(mo, mt)
        if q is None:
            out.append(f"{r['model']}: no ratio (a side failed or has no rounds).")
        elif q >= 1:
            out.append(f"{r['model']}: ours trains {q:.2f}× as many images/s as theirs.")
        else:
            out.append(f"{r['model']}: ours trains {q:.2f}× as many images/s as theirs: theirs is {1 / q:.2f}× faster.")
    return "Reading, this run: " + " ".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.render:
        with open(args.render, encoding="utf-8") as f:
            saved = json.load(f)
        text = section(saved["rows"], saved["meta"])
        print(text)
        if args.write:
            write_section(text)
        return saved["rows"]
    model, flags = cpu()
    meta = {"date": datetime.date.today().isoformat(), "command": command_line(argv), "cpu": model, "flags": flags,
            "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
            "versions": versions(args), "cores": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()[0]}
    rows = [measure(name, args, log) for name in args.models]
    meta["load_after"] = os.getloadavg()[0]
    text = section(rows, meta)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": {**meta, "flags": [f for f in flags if f.startswith(("avx", "fma"))]}, "rows": rows}, f, indent=1)
    if args.write:
        write_section(text)
    return rows


if __name__ == "__main__":
    main()
