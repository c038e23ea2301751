"""Per-image latency in the browser (MediaPipe Tasks for the web, WebAssembly, CPU) next to LiteRT in Python.

    python benchmarks/browser.py                                   # every family at 96² and 256², the preset; writes BENCHMARKS.md
    python benchmarks/browser.py --models litenext --sizes 96 --images 20 --no-write
    python benchmarks/browser.py --smoke                           # tiny: checks that it runs (no figures)

For each family (`--models`, default every registered model; LV-UNet in its deploy form, as a
training run saves it) at each `--sizes` (rounded up to the family's size multiple), the fp32 and
int8 files are made with the export pipeline's own calls (`litert.convert_phone`: fp32 of the
float model; int8 of the calibrated QAT graph, `quantize_model` + `calibrate`, uint8 in and
float32 out, float islands inside XNNPACK; then `export.metadata.add_metadata`, which the page
reads). Weights: the family's default model (seed 0) calibrated on the bundled sample images;
latency does not depend on the weight values, and the graph is the one a trained model gives
(the export's QAT fine-tuning and `rsqrt_quantile` choice only move quantization ranges). The
bundled preset (`--preset`, default `litenext-nuclei`) adds its shipped int8 file and an fp32
file converted from its weights.

Each pair of files is opened in the page that `keras-litenext web` builds (`web.build_page`),
in headless Chromium (`web.check.BrowserPage`, the page's own code path: images given to its
file input, `segment()` / `classify()` timed by the page with `performance.now()`), and run
with LiteRT in Python (`litert.TFLiteRunner`, XNNPACK) at the thread count of the page's
WebAssembly build (1: the build is single-threaded, see `wasm_threads`), on the same images
(the bundled sample, resized to the model's size), interleaved: for each chunk of images,
browser then LiteRT for one file, then the other file, the order alternating from chunk to
chunk. Per image: one untimed run, then `--runs` timed runs, their median (the page does the
same with `window.litenext.timeRuns`); the table gives the median over `--images` images, after
`--warmup` images per file that are not counted. The browser time includes what MediaPipe does
around the model (the image into a tensor, the category mask out); the LiteRT time is the
interpreter's `invoke` alone.

`--write` (default) replaces this script's section of BENCHMARKS.md between its markers.
"""

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
START, END = "<!-- benchmarks/browser.py: start -->", "<!-- benchmarks/browser.py: end -->"
TITLE = "## In the browser: MediaPipe Tasks for the web, WebAssembly, CPU (`benchmarks/browser.py`)"
KINDS = ("int8", "fp32")


def parse_args(argv=None):
    from keras_litenext.runs.checks import ints, nonnegative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated registry names (default: every registered model)")
    p.add_argument("--sizes", type=ints(16), default="96,256", help="comma-separated input sizes (default 96,256; rounded up to the size multiple)")
    p.add_argument("--preset", default="litenext-nuclei", help="bundled preset (or preset folder) to add; 'none' leaves it out")
    p.add_argument("--images", type=positive_int, default=20, help="timed images per file (default 20)")
    p.add_argument("--warmup", type=nonnegative_int, default=2, help="images per file run first and not counted (default 2)")
    p.add_argument("--runs", type=positive_int, default=3, help="timed runs per image after its first (default 3)")
    p.add_argument("--chunk", type=positive_int, default=5, help="images per interleaved turn (default 5)")
    p.add_argument("--num-calibration", type=positive_int, default=32, help="sample images to calibrate the int8 files on (default 32)")
    p.add_argument("--files", help="keep the built .tflite files in this folder (reused when there)")
    p.add_argument("--smoke", action="store_true", help="tiny: one model at 32², 2 images, 1 run (checks that it runs)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave BENCHMARKS.md as it is")
    args = p.parse_args(argv)
    if args.smoke:
        args.models = args.models or "lvunet"
        args.sizes, args.images, args.warmup, args.runs, args.chunk = [32], 2, 1, 1, 2
        args.preset, args.no_write, args.num_calibration = "none", True, 4
    return args


def wasm_threads(npm_cache=None):
    """Whether the page's WebAssembly (MediaPipe Tasks' vision build, from the pinned npm package)
    is threaded: a threaded Emscripten build declares a shared memory (the memory section's or
    the memory import's limits flag 0x02). Returns `{file: bool}` for each `.wasm` the page serves."""
    import tarfile

    from keras_litenext.web import npm

    out = {}
    for name, entry in npm.pinned().items():
        with tarfile.open(npm.tarball(name, entry, cache=npm_cache)) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".wasm") and member.name[len("package/"):] in npm.FILES.get(name, ()):
                    out[os.path.basename(member.name)] = _wasm_shared_memory(tar.extractfile(member).read())
    return out


def _wasm_shared_memory(data):
    def leb(i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    def limits(i):
        flags = data[i]
        return flags

    i = 8
    while i < len(data):
        section, i = data[i], i + 1
        size, i = leb(i)
        end = i + size
        if section == 5:  # memory section: count, then limits
            _, j = leb(i)
            return bool(limits(j) & 2)
        if section == 2:  # imports: a memory import carries its limits
            count, j = leb(i)
            for _ in range(count):
                for _ in range(2):  # module, field
                    n, j = leb(j)
                    j += n
                kind, j = data[j], j + 1
                if kind == 0:
                    _, j = leb(j)
                elif kind == 1:  # table: element type, limits
                    j += 1
                    flags, j = data[j], j + 1
                    _, j = leb(j)
                    if flags & 1:
                        _, j = leb(j)
                elif kind == 2:
                    return bool(limits(j) & 2)
                elif kind == 3:
                    j += 2
        i = end
    return False


def sample_pixels(size, count, offset=0):
    """`count` bundled sample images (RGB uint8) resized to `size`² (area for down, linear for up)."""
    import cv2
    import numpy as np

    from keras_litenext.data import sample_data_dir

    folder = os.path.join(sample_data_dir(), "images")
    names = sorted(os.listdir(folder))[offset : offset + count]
    out = []
    for n in names:
        bgr = cv2.imread(os.path.join(folder, n), cv2.IMREAD_COLOR)
        interp = cv2.INTER_AREA if bgr.shape[0] > size else cv2.INTER_LINEAR
        out.append(cv2.resize(bgr, (size, size), interpolation=interp)[..., ::-1])
    return np.stack(out)


def _task_names(model):
    k = int(model.outputs[0].shape[-1])
    if len(model.outputs[0].shape) == 2:
        return "classification", [f"class{i}" for i in range(k)], k
    return "segmentation", (["background", "foreground"] if k == 1 else ["background"] + [f"class{i}" for i in range(1, k)]), k


def _with_metadata(data, model, name, kind, intensity=None):
    from keras_litenext.export.metadata import add_metadata
    from keras_litenext.litert import io_details

    task_kind, names, k = _task_names(model)
    dtype = io_details(data)["input"]["dtype"]
    out, _ = add_metadata(data, names, task_kind, k, name=f"{name}_{kind}", input_dtype=dtype, intensity=intensity,
                          description=f"{name} ({kind}), benchmark file: latency only")
    return out


def build_family(name, size, folder, num_calibration, log):
    """`{kind: path}` of the family's fp32 and int8 files at `size`², made as the export makes them."""
    import keras
    import numpy as np

    import keras_litenext as kl
    from keras_litenext import litert
    from keras_litenext import quantization as Q

    paths = {k: os.path.join(folder, f"{name}_{size}_{k}.tflite") for k in KINDS}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    spec = kl.get_spec(name)
    keras.utils.set_random_seed(0)
    kwargs = {"num_classes": 2} if "classification" in spec.tasks else {}
    model = spec.deploy_form(kl.create_model(name, input_shape=(size, size, 3), **kwargs))
    pixels = sample_pixels(size, num_calibration, offset=100)  # other images than the timed ones
    t0 = time.time()
    fp32 = litert.convert_phone(model, "fp32")
    qat = Q.calibrate(Q.quantize_model(model), pixels.astype(np.float32) / 255.0, batch_size=8)
    int8 = litert.convert_phone(qat, "int8", representative_data=pixels, io="uint8_float", num_calibration=len(pixels),
                                int8_mode="cpu")
    for kind, data in (("fp32", fp32), ("int8", int8)):
        litert.write_bytes(paths[kind], _with_metadata(data, model, name, kind))
    log(f"{name} {size}²: files made in {time.time() - t0:.0f} s")
    return paths


def build_preset(preset, folder, log):
    """`(size, {kind: path})`: the preset's shipped int8 file, and an fp32 file of its weights."""
    from keras_litenext import litert
    from keras_litenext.presets import load_preset, preset_metadata

    meta = preset_metadata(preset)
    size = int(meta["image_size"])
    shipped = sorted(pathlib.Path(meta["path"], "tflite").glob("*_int8.tflite"))
    if not shipped:
        raise SystemExit(f"error: preset {preset} has no *_int8.tflite file in its tflite/ folder")
    fp32 = os.path.join(folder, f"{meta['name']}_fp32.tflite")
    if not os.path.isfile(fp32):
        model = load_preset(preset)
        data = litert.convert_phone(model, "fp32")
        litert.write_bytes(fp32, _with_metadata(data, model, meta["name"], "fp32", intensity=meta.get("intensity")))
        log(f"preset {meta['name']}: fp32 file made")
    return meta["name"], size, {"int8": str(shipped[0]), "fp32": fp32}


class LiteRTTimer:
    """LiteRT in Python timing one file per image as the page does: a first run, then `runs` timed."""

    def __init__(self, path, threads):
        from keras_litenext.litert import TFLiteRunner

        self.runner = TFLiteRunner(path, num_threads=threads, xnnpack=True)

    def run(self, pixels, runs):
        out = []
        for rgb in pixels:
            tensor = self.runner.quantize_input(rgb.astype("float32") / 255.0)
            self.runner.invoke_raw(tensor)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                self.runner.invoke_raw(tensor)
                times.append((time.perf_counter() - t0) * 1e3)
            out.append(statistics.median(times))
        return out


PAGE_INFO = """() => ({
  isolated: self.crossOriginIsolated, shared: typeof SharedArrayBuffer !== "undefined",
  cores: navigator.hardwareConcurrency,
  wasm: performance.getEntriesByType("resource").map((e) => e.name).filter((n) => n.endsWith(".wasm")).map((n) => n.split("/").pop()),
})"""


def measure_pair(label, size, paths, image_paths, pixels, args, log):
    """Interleaved browser and LiteRT timings of the files `paths` (`{kind: path}`) on the images."""
    import contextlib

    from keras_litenext.web.build import WebError, build_page
    from keras_litenext.web.check import BrowserPage

    warm = args.warmup
    timed_paths, timed_pixels = image_paths[warm:], pixels[warm:]
    result = {"label": label, "size": size, "files": {}, "load": [os.getloadavg()[0]]}
    with contextlib.ExitStack() as stack:
        pages, timers = {}, {}
        first = None
        for kind, path in paths.items():
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="litenext-bench-web-"))
            build_page(path, folder)
            page = stack.enter_context(BrowserPage(folder, timeout=600, browser=first))
            first = first or page
            if not page.ready:
                raise WebError(f"{path}: the page did not load it: {' '.join(page.errors()) or 'no message'}")
            pages[kind], timers[kind] = page, LiteRTTimer(path, threads=1)
            result["files"][kind] = {"path": path, "kib": round(os.path.getsize(path) / 1024), "browser": [], "litert": [],
                                     "page": page.page.evaluate(PAGE_INFO), "chromium": page.version()}
        for kind in paths:  # warm-up, not counted
            if warm:
                _check(pages[kind].run(image_paths[:warm], args.runs))
                timers[kind].run(pixels[:warm], args.runs)
        order = list(paths)
        for turn, i in enumerate(range(0, len(timed_paths), args.chunk)):
            for kind in (order if turn % 2 == 0 else order[::-1]):
                pages[kind].page.bring_to_front()
                records = _check(pages[kind].run(timed_paths[i : i + args.chunk], args.runs))
                result["files"][kind]["browser"] += [r["median_ms"] for r in records]
                result["files"][kind]["litert"] += timers[kind].run(timed_pixels[i : i + args.chunk], args.runs)
            result["load"].append(os.getloadavg()[0])
    for f in result["files"].values():
        f["browser_ms"], f["litert_ms"] = statistics.median(f["browser"]), statistics.median(f["litert"])
    log(f"{label} {size}²: " + ", ".join(f"{k} browser {f['browser_ms']:.1f} ms / LiteRT {f['litert_ms']:.1f} ms"
                                         for k, f in result["files"].items()))
    return result


def _check(records):
    for r in records:
        if r.get("error"):
            from keras_litenext.web.build import WebError

            raise WebError(r["error"])
    return records


def write_pngs(pixels, folder):
    import cv2

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, rgb in enumerate(pixels):
        paths.append(os.path.join(folder, f"image{i:03d}.png"))
        cv2.imwrite(paths[-1], rgb[..., ::-1])
    return paths


def table(results, header, threads_note):
    lines = [header, "",
             "| family | size | file | KiB | browser ms | LiteRT Python ms (1 thread) | browser / LiteRT | int8 / fp32, browser | int8 / fp32, LiteRT | load average |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['size']}² | - | - | not measured: {r['error']} | | | | | |")
            continue
        f = r["files"]
        ratio_b = f["int8"]["browser_ms"] / f["fp32"]["browser_ms"]
        ratio_l = f["int8"]["litert_ms"] / f["fp32"]["litert_ms"]
        for kind in KINDS:
            x = f[kind]
            lines.append(f"| {r['label']} | {r['size']}² | {kind} | {x['kib']} | {x['browser_ms']:.1f} | {x['litert_ms']:.2f} | "
                         f"{x['browser_ms'] / x['litert_ms']:.2f} | " + (f"{ratio_b:.2f} | {ratio_l:.2f} | {min(r['load']):.1f}–{max(r['load']):.1f} |"
                                                                       if kind == "int8" else "| | |"))
    lines += ["", threads_note]
    return "\n".join(lines) + "\n"


def write_section(text):
    from sections import write_section as write

    write(os.path.join(ROOT, "BENCHMARKS.md"), START, END, text, TITLE)  # before the suite's section


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import keras_litenext as kl
    from keras_litenext.web import check

    sys.path.insert(0, HERE)
    import run as suite

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    why = check.missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    names = args.models.split(",") if args.models else kl.list_models()
    unknown = [n for n in names if n not in kl.list_models()]
    if unknown:
        print(f"error: --models: unknown {', '.join(unknown)}; registered: {', '.join(kl.list_models())}", file=sys.stderr)
        return 2
    threaded = wasm_threads()
    if any(threaded.values()):
        log("note: the page's WebAssembly build is threaded; LiteRT is still timed at 1 thread")
    started, results = time.time(), []
    gflops = [suite.matmul_gflops(1.0)]
    with tempfile.TemporaryDirectory(prefix="litenext-bench-browser-") as tmp:
        files = args.files or os.path.join(tmp, "files")
        os.makedirs(files, exist_ok=True)
        count = args.warmup + args.images
        jobs = []
        for name in names:
            multiple = kl.get_spec(name).size_multiple
            for size in args.sizes:
                side = -(-size // multiple) * multiple
                jobs.append((name, side, lambda n=name, s=side: build_family(n, s, files, args.num_calibration, log)))
        if args.preset and args.preset != "none":
            label, side, paths = build_preset(args.preset, files, log)
            jobs.append((f"preset {label}", side, lambda p=paths: p))
        for label, side, build in jobs:
            try:
                paths = build()
                pixels = sample_pixels(side, count)
                images = write_pngs(pixels, os.path.join(tmp, f"images{side}"))
                results.append(measure_pair(label, side, paths, images, pixels, args, log))
            except Exception as err:  # one family that fails is a row saying why; the others go on
                why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                log(f"{label} {side}²: not measured ({type(err).__name__}: {why})")
                results.append({"label": label, "size": side, "error": f"{type(err).__name__}: {why}", "load": []})
    gflops.append(suite.matmul_gflops(1.0))
    measured = [r for r in results if "error" not in r]
    if not measured:
        print("error: no file could be measured", file=sys.stderr)
        return 1
    loads = [x for r in results for x in r["load"]]
    page = measured[0]["files"]["int8"]["page"]
    import ai_edge_litert
    import tensorflow as tf

    from keras_litenext.web import npm

    packages = ", ".join(f"{n} {e['version']}" for n, e in npm.pinned().items())
    chromium = measured[0]["files"]["int8"]["chromium"]
    command = "python benchmarks/browser.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Command `{command.strip()}`, {datetime.date.today()}; {suite.machine()}; shared machine, load average "
              f"{min(loads):.1f}–{max(loads):.1f} during the run ({(time.time() - started) / 60:.0f} min; per pair in the last column), "
              f"one-thread float32 GEMM {gflops[0]:.0f} GFLOP/s at the start, {gflops[1]:.0f} at the end (NumPy 512×512, as `run.py` measures it); "
              f"Chromium {chromium} headless, "
              f"{packages} ({', '.join(page['wasm']) or '?'} loaded; cross-origin isolated: {page['isolated']}); "
              f"tensorflow {tf.__version__}, keras {keras.__version__}, ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}. "
              f"Per file: {args.warmup} warm-up images, then {args.images} images, each run once untimed and {args.runs} times timed; "
              "the figure is the median over the images of each image's median. Browser and LiteRT interleaved in chunks of "
              f"{args.chunk} images, the two files' order alternating. Family rows: the default model (seed 0), deploy form, "
              f"calibrated on {args.num_calibration} bundled sample images (latency does not depend on the weights); "
              "the preset rows: its shipped int8 file and an fp32 file of its weights.")
    builds = ", ".join(f"{k}: {'threaded' if v else 'not threaded'}" for k, v in threaded.items())
    note = (f"Threads: the page's WebAssembly builds ({builds}; "
            "its memory is not shared, so the interpreter runs on one thread) against LiteRT at 1 thread with XNNPACK. "
            "The browser time is the page's `performance.now()` around MediaPipe's `segment()` / `classify()`: "
            "the image into a tensor, the model, the category mask out (MediaPipe's image conversion runs on WebGL, "
            "here SwiftShader on the CPU); the LiteRT time is `invoke()` alone.")
    text = table(results, header, note)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "wasm_threads": threaded}, f, indent=1, default=str)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
