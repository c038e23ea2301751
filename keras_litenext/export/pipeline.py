"""The export as a sequence of steps over one `ExportOptions`: a run (or a model) to phone files.

`export_run` loads the source, scores the float Keras model, writes the comparison files (fp32,
fp16, int8 PTQ), fine-tunes the QAT model and writes the int8 file from it, each file with its
I/O contract, metadata and test scores; then the task's gate and the report. `export` is the
one call from Python over it (a model object, a `.keras` file or a run folder).
"""

import collections
import dataclasses
import inspect
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable

from keras_litenext.data.intensity import Intensity
from keras_litenext.export.contract import description, io_contract
from keras_litenext.export.report import write_report
from keras_litenext.export.scoring import file_report, predict, score_logits
from keras_litenext.export.source import ExportError, load_source
from keras_litenext.litert import (
    FILE_KINDS,
    IO_TYPES,
    PHONE_IO,
    convert_phone,
    write_bytes,
)
from keras_litenext.utils import atomic_path, write_json

__all__ = ["ExportOptions", "Exported", "export", "export_run", "retry_plan", "run_export"]


@dataclasses.dataclass
class ExportOptions:
    """Everything an export takes (`export_run`'s arguments, in its order, with its defaults).

    Attributes:
        source: run folder, or `.keras` file with `data`.
        output: output folder (default `<run>/tflite`, or beside the `.keras` file).
        name: file name prefix; defaults to the model's name.
        io: int8 files' input/output type: "uint8_float" (default: uint8 camera pixels in,
            float32 out, what MediaPipe reads), "int8", "uint8" or "float" (`litert.IO_TYPES`).
        qat_epochs: QAT fine-tuning epochs (0: calibration only).
        qat_lr: QAT peak learning rate.
        qat_retries: further QAT attempts when the int8 file misses its gate (`retry_plan`:
            more epochs, a learning rate above and below); the file of the attempt with the
            best validation score is kept, every attempt is in the report. 0: one attempt.
        data: dataset folder (required with a `.keras` file; overrides a run's).
        num_calibration: training images for int8 calibration.
        max_dice_drop: the quality gate on the mean foreground Dice, in Dice points.
        max_class_drop: the quality gate on each foreground class's Dice, in Dice points.
        threads: LiteRT threads for the evaluation.
        verbose: Keras verbosity for the fine-tuning.
        log: callable for progress lines.
        kinds: the files to write, from `FILE_KINDS` (default all); "int8" is required, the
            gate judges it. Leaving out the comparison files saves their conversion.
        max_accuracy_drop, max_auc_drop: the gate of a classification run (`classification_gate`):
            accuracy points and macro AUC (0..1) the int8 file may lose; the Dice limits are then unused.
        metadata: write TFLite metadata for MediaPipe Tasks into the files
            (`keras_litenext.export.metadata`, no MediaPipe needed). False leaves it out.
        settings: run settings for a bare `.keras` file (`task`, `class_names`, ...), as
            `runs.file_run` takes them.
        int8_mode: `"cpu"` (default: the int8 ops XNNPACK lacks as float islands inside
            XNNPACK, the fastest file on a CPU) or `"strict"` (every op int8, for NPUs and DSPs);
            see `keras_litenext.litert.convert`.
        skip_bad: skip unpaired files too (default: the run's setting). Files that cannot be
            read are always left out and listed in the report's `"failures"` and `failures.csv`.

    Raises:
        ExportError: kinds without int8 or unknown, an unknown `io`, negative `qat_epochs`.
    """

    source: str
    output: str | None = None
    name: str | None = None
    io: str = PHONE_IO
    qat_epochs: int = 3
    qat_lr: float = 1e-5
    qat_retries: int = 2
    data: str | None = None
    num_calibration: int = 200
    max_dice_drop: float = 0.5
    max_class_drop: float = 1.0
    threads: int = 2
    verbose: int = 1
    log: Callable = print
    kinds: list | None = None
    max_accuracy_drop: float = 1.0
    max_auc_drop: float = 0.01
    metadata: bool = True
    settings: dict | None = None
    int8_mode: str = "cpu"
    skip_bad: bool = False

    def __post_init__(self):
        self.kinds = list(FILE_KINDS) if self.kinds is None else [str(k).strip() for k in self.kinds]
        unknown = [k for k in self.kinds if k not in FILE_KINDS]
        if unknown or "int8" not in self.kinds:
            raise ExportError(f"--kinds must include int8 and come from {', '.join(FILE_KINDS)}; got {', '.join(self.kinds) or 'none'}.")
        if self.io not in IO_TYPES:
            raise ExportError(f"io must be one of {IO_TYPES}, got {self.io!r}.")
        if self.qat_epochs < 0:
            raise ExportError(f"qat_epochs must be >= 0, got {self.qat_epochs}.")
        if self.qat_retries < 0:
            raise ExportError(f"qat_retries must be >= 0, got {self.qat_retries}.")


def export_run(*args, **kwargs):
    """Convert a trained model to every deployable TFLite file, evaluate them and write a report.

    Takes `ExportOptions`' fields (`source`, then `output=None, name=None, io="uint8_float",
    qat_epochs=3, ...`). Writes to `output` (default `<run>/tflite`):

    - `<name>_int8.tflite`: int8 from the QAT model (`qat_epochs` of fine-tuning with the run's
      task loss, metrics and data pipeline, from the float weights, after calibration);
    - `<name>_int8_ptq.tflite`: int8, post-training quantized;
    - `<name>_fp16.tflite`, `<name>_fp32.tflite`;
    - `<file>.json` beside each: its I/O contract (`io_contract`: classes, pixel formula,
      output decoding);
    - inside every `.tflite`: TFLite metadata for MediaPipe Tasks (`keras_litenext.export.metadata`:
      normalisation, RGB input, the class names as `labels.txt`, the segmenter activation, a
      description with the model, training data and this file's test metrics), and the class
      names beside them as `<name>_labels.txt`. A grey model's files take RGB and average it
      inside the graph (`litert.phone_model`);
    - `<name>_qat.keras`: the QAT model (ranges included), which `convert` turns into the int8
      file again;
    - `report.json` and `report.md`: per file size, ops with dtypes, float-op count, XNNPACK
      partitions, and test-split Dice/IoU/HD95 (mean over foreground classes and per class)
      measured by running the file with LiteRT (XNNPACK, `threads` threads), next to the float
      Keras model's; the task's quality gate;
    - `failures.csv`: the files that could not be read (`item,stage,reason`), also in the
      report's `"failures"`; they are left out of calibration, fine-tuning and scoring, and the
      gate judges the files on the test images that were read.

    Returns:
        the report dict (also in report.json), with `"gate": {"passed", "message", ...}`.
    """
    return run_export(ExportOptions(*args, **kwargs))


export_run.__signature__ = inspect.signature(ExportOptions).replace(return_annotation=inspect.Signature.empty)


def run_export(options):
    """`export_run` over an `ExportOptions`."""
    model, run, arrays, meta, failures = load_source(options.source, data=options.data, settings=options.settings,
                                                     skip_bad=options.skip_bad)
    task = run.task
    name = options.name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"name {name!r} must be letters, digits, '_', '-' or '.'.")
    output = (os.fspath(options.output) if options.output is not None
              else os.path.join(meta["run"] or os.path.dirname(meta["model_path"]), "tflite"))
    os.makedirs(output, exist_ok=True)
    sizes = {k: int(len(v[0])) for k, v in arrays.items()}
    classes = f", classes {', '.join(task.class_names)}" if task.output_channels > 1 else ""
    options.log(f"Model {name} ({model.count_params():,} parameters), {task.name} task{classes}, data {meta['data']} at "
                f"{run.config.image_size}px, train {sizes['train']} / val {sizes['val']} / test {sizes['test']} images")
    if failures:
        options.log(f"{len(failures)} file(s) could not be read and are left out (listed at the end and in failures.csv)")

    started = time.time()
    test_images, test_masks = arrays["test"]
    float_result = score_logits(task, test_masks, predict(model, test_images, progress=progress_bar(options, "image")))
    options.log(f"float Keras test {task.summary_line(float_result)}")
    chance = task.at_chance(task.report_summary(float_result))
    if chance:
        options.log(f"note: {chance}, so the quality gate cannot verify the int8 file; train longer before exporting")
    writer = _FileWriter(options, output, name, run, meta, arrays, task.report_summary(float_result))
    writer.write_labels()
    writer.write_comparison_files(model)
    qat, qat_test = writer.write_int8_file(model)

    report = _report(options, name, model, run, meta, sizes, writer, qat, qat_test, failures)
    report["gate"] = task.export_gate(report, options)
    report = _further_attempts(options, model, run, meta, sizes, writer, report, failures)
    report["seconds"] = round(time.time() - started, 1)
    lost = report["test_images"]["failed_to_read"]
    if lost:
        report["gate"]["message"] += f" (on the {sizes['test']} test images read; {lost} test file(s) could not be read)"
    return write_report(report, output, task)


def progress_bar(options, unit):
    """A `progress(done, total)` callback drawing a bar with the rate and the time left on stderr
    for a long step (calibration, scoring); silent when stderr is not a terminal or `verbose` is 0.
    A pass that starts again at 1 draws a new bar."""
    from keras_litenext.inference.batch import Progress

    bar = {}

    def update(done, total):
        if "bar" not in bar or done <= bar["bar"].done:
            bar["bar"] = Progress(total or done, unit, quiet=not options.verbose)
        bar["bar"].total = max(int(total or done), 1)
        bar["bar"].update(done)

    return update


class _FileWriter:
    """Writes the files of one export: each `.tflite` with its contract, metadata and scores."""

    def __init__(self, options, output, name, run, meta, arrays, float_test):
        self.options, self.output, self.name, self.meta, self.arrays = options, output, name, meta, arrays
        self.config, self.task, self.float_test = run.config, run.task, float_test
        self.files = []

    def write_labels(self):
        """`<name>_labels.txt`: the class names, class 0 first (with metadata only)."""
        if not self.options.metadata:
            return
        with atomic_path(os.path.join(self.output, f"{self.name}_labels.txt")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(self.task.class_names) + "\n")

    def write_comparison_files(self, model):
        """The fp32, fp16 and int8 PTQ files of the float model, those among the kinds asked for."""
        o, train_images = self.options, self.arrays["train"][0]
        frozen = {}  # the model is traced and frozen once for the three files
        builds = {
            "fp32": lambda: convert_phone(model, "fp32", frozen=frozen),
            "fp16": lambda: convert_phone(model, "fp16", frozen=frozen),
            "int8_ptq": lambda: convert_phone(model, "int8", representative_data=train_images, io=o.io,
                                              num_calibration=o.num_calibration, int8_mode=o.int8_mode, frozen=frozen),
        }
        for kind, build in builds.items():
            if kind in o.kinds:
                self.emit(kind, build)

    def write_int8_file(self, model, epochs=None, lr=None):
        """Calibrate and fine-tune the QAT model (`epochs` at `lr`; default: the options'), save
        it, write the int8 file from it; returns the QAT model and its test scores (the report's view)."""
        from keras_litenext.export.finetune import finetune_run

        o, task, train_images = self.options, self.task, self.arrays["train"][0]
        epochs, lr = (o.qat_epochs if epochs is None else epochs), (o.qat_lr if lr is None else lr)
        o.log(f"QAT: calibrating, then fine-tuning {epochs} epoch(s) at lr {lr:g}, keeping the best {task.monitor}")
        qat = finetune_run(model, self.config, self.arrays, epochs=epochs, lr=lr, verbose=o.verbose,
                           calibration_steps=max(1, o.num_calibration // 8), progress=progress_bar(o, "batch"))
        qat.qat_epochs, qat.qat_lr = epochs, lr
        test_images, test_masks = self.arrays["test"]
        qat_result = score_logits(task, test_masks, predict(qat, test_images, progress=progress_bar(o, "image")))
        with atomic_path(os.path.join(self.output, f"{self.name}_qat.keras")) as tmp:
            qat.save(tmp)
        self.emit("int8", lambda: convert_phone(qat, "int8", representative_data=train_images, io=o.io,
                                                num_calibration=o.num_calibration, int8_mode=o.int8_mode))
        return qat, task.report_summary(qat_result)

    def emit(self, kind, build):
        """Convert (`build()`), score, add the metadata and write one file with its contract."""
        o, task, name = self.options, self.task, self.name
        path = os.path.join(self.output, f"{name}_{kind}.tflite")
        t0 = time.time()
        data_bytes = build()
        write_bytes(path, data_bytes)
        contract = io_contract(path, name, kind, self.config, self.meta, task)
        if not o.metadata:
            contract.pop("metadata")
        entry = file_report(path, kind, *self.arrays["test"], task, o.threads, progress=progress_bar(o, "image"))
        if kind.startswith("int8"):  # what the file is: islands, or strict (asked for, or XNNPACK's fallback)
            entry["int8_mode"] = "cpu" if entry["float_op_count"] else "strict"
        if o.metadata:  # after scoring, so the description names this file's own test metrics
            from keras_litenext.export.metadata import add_metadata

            data_bytes, _ = add_metadata(data_bytes, task.class_names, task.metadata_kind, task.output_channels,
                                         name=f"{name}_{kind}", input_dtype=entry["input"]["dtype"],
                                         description=description(name, kind, task, self.config, self.meta, entry["test"], self.float_test),
                                         intensity=self.config.intensity)
            write_bytes(path, data_bytes)
            entry["size_bytes"] = len(data_bytes)
        write_json(os.path.join(self.output, f"{name}_{kind}.json"), contract)
        entry["convert_seconds"] = round(time.time() - t0, 1)
        self.files.append(entry)
        o.log(f"{os.path.basename(path)}: {len(data_bytes) / 1024:.0f} KiB, {entry['op_count']} ops, {entry['float_op_count']} float ops, "
              f"{entry['xnnpack']['partitions']} XNNPACK partitions, {task.file_headline(entry['test'])}")


def _report(options, name, model, run, meta, sizes, writer, qat, qat_test, failures=()):
    """The report's dict, before its gate."""
    config, task = run.config, run.task
    lost = sum(1 for f in failures if f["split"] == "test")
    evaluation = task.evaluation_text(sizes["test"])
    if failures:
        evaluation += f"; {sizes['test']} test images scored, {lost} test file{'' if lost == 1 else 's'} could not be read"
    settings = {k: getattr(config, k) for k in ("model", "data", "image_size", "channels", "masks_suffix", "mask_threshold", "loss", "batch_size")}
    settings["intensity"] = None if config.intensity is None else Intensity.from_dict(config.intensity).to_dict()
    return {
        "model": name,
        "task": task.name,
        "class_names": list(task.class_names),
        "source": meta,
        "config": settings,
        "splits": sizes,
        "io": options.io,
        "int8_mode": options.int8_mode,
        "metadata": bool(options.metadata),
        "evaluation": f"{evaluation}; .tflite files run with ai-edge-litert, XNNPACK, {options.threads} threads",
        "test_images": {"scored": sizes["test"], "failed_to_read": lost},
        "failures": list(failures),
        "keras_float": {"params": int(model.count_params()), "test": writer.float_test},
        "qat": {
            "epochs": int(getattr(qat, "qat_epochs", options.qat_epochs)),
            "lr": getattr(qat, "qat_lr", options.qat_lr),
            "monitor": task.monitor,
            "start_score": getattr(qat, "qat_start_score", None),
            "best_epoch": getattr(qat, "qat_best_epoch", None),
            "history": getattr(qat, "qat_history", None),
            "rsqrt_quantile_val_dice": {str(k): v for k, v in (getattr(qat, "rsqrt_quantile_scores", None) or {}).items()},
            "keras_test": qat_test,
        },
        "files": sorted(writer.files, key=lambda f: list(FILE_KINDS).index(f["kind"])),
    }


RETRY_SCHEDULE = ((2, 3.0), (2, 1.0 / 3.0))  # (epochs x, lr x) of attempts 2, 3; then again with epochs doubled


def retry_plan(epochs, lr, retries):
    """`[(epochs, lr), ...]` of the further QAT attempts: more epochs than the first (at least 2),
    at a learning rate 3x above and 3x below it, then the same with twice the epochs, and so on.
    On a held-out polyp set U-Lite's file missed its gate after 3 epochs at 1e-5, the best epoch
    the last one, still improving: more epochs and a larger rate are the first things to try."""
    plan = []
    for i in range(retries):
        times, factor = RETRY_SCHEDULE[i % len(RETRY_SCHEDULE)]
        plan.append((max(int(epochs), 1) * times * 2 ** (i // len(RETRY_SCHEDULE)), lr * factor))
    return plan


def _val_score(writer, path):
    """The task's monitor score (e.g. mean foreground Dice) of an int8 file on the val split."""
    from keras_litenext.data.intensity import to_float
    from keras_litenext.export.scoring import file_input
    from keras_litenext.litert import run_tflite

    images, masks = writer.arrays["val"]
    x = file_input(to_float(images), path)
    return float(writer.task.monitor_score(masks, run_tflite(path, x, num_threads=writer.options.threads)))


def _attempt_row(number, report, score):
    gate = report["gate"]
    return {"attempt": number, "epochs": report["qat"]["epochs"], "lr": report["qat"]["lr"],
            "val_score": score, "gate": gate["status"], "message": gate["message"]}


def _further_attempts(options, model, run, meta, sizes, writer, report, failures):
    """When the int8 file misses its gate (`"failed"`, not `"not verified"`), up to
    `options.qat_retries` further QAT attempts (`retry_plan`), each written to a folder of its
    own; the attempt whose int8 file scores best on the val split is kept (its files replace the
    first's), the others are deleted, and the report lists every attempt (`qat.attempts`). The
    test split only decides whether to go on: it never picks the file. Without a val split
    there is nothing to choose by, so the first attempt stays."""
    from keras_litenext.export.gate import FAILED

    task, name = run.task, writer.name
    if report["gate"]["status"] != FAILED or not options.qat_retries:
        return report
    if not sizes.get("val"):
        options.log("note: the int8 file missed its gate and there is no val split to choose a further QAT attempt by")
        return report
    int8 = os.path.join(writer.output, f"{name}_int8.tflite")
    attempts = [(report, writer.output)]
    rows = [_attempt_row(1, report, _val_score(writer, int8))]
    best = 0
    for number, (epochs, lr) in enumerate(retry_plan(options.qat_epochs, options.qat_lr, options.qat_retries), start=2):
        options.log(f"The int8 file missed its gate ({attempts[best][0]['gate']['message']}); "
                    f"QAT attempt {number} of {1 + options.qat_retries}: {epochs} epoch(s) at lr {lr:g}")
        folder = os.path.join(writer.output, f".attempt{number}")
        os.makedirs(folder, exist_ok=True)
        other = _FileWriter(options, folder, name, run, meta, writer.arrays, writer.float_test)
        other.files = [e for e in writer.files if e["kind"] != "int8"]
        qat, qat_test = other.write_int8_file(model, epochs, lr)
        candidate = _report(options, name, model, run, meta, sizes, other, qat, qat_test, failures)
        candidate["gate"] = task.export_gate(candidate, options)
        attempts.append((candidate, folder))
        rows.append(_attempt_row(number, candidate, _val_score(other, os.path.join(folder, f"{name}_int8.tflite"))))
        best = max(range(len(rows)), key=lambda i: (rows[i]["val_score"], -i))
        options.log(f"attempt {number}: val {task.monitor} {rows[-1]['val_score']:.4f}, gate {rows[-1]['gate']}")
        if attempts[best][0]["gate"]["passed"]:
            break
    kept, folder = attempts[best]
    if folder != writer.output:
        for suffix in ("_int8.tflite", "_int8.json", "_qat.keras"):
            os.replace(os.path.join(folder, name + suffix), os.path.join(writer.output, name + suffix))
    for _, other in attempts[1:]:
        shutil.rmtree(other, ignore_errors=True)
    kept["qat"]["attempts"], kept["qat"]["kept_attempt"] = rows, best + 1
    kept["gate"]["message"] += attempts_note(len(rows), best + 1, kept["gate"]["passed"], options.qat_retries, task.monitor)
    return kept


def attempts_note(count, kept, passed, retries, monitor):
    """What the gate's message adds after further QAT attempts: which one was kept, and that the
    budget is spent when none passed (every attempt ran then: a passing one ends the loop)."""
    if not passed:
        return (f" (the best of {count} QAT attempts by val {monitor}, attempt {kept}; "
                f"the budget of {retries} further attempt{'s' if retries != 1 else ''} is spent)")
    return f" (QAT attempt {kept} of {count}, kept by its val {monitor})" if kept > 1 else ""


# ----------------------------------------------------------------------------------------------
# One call
# ----------------------------------------------------------------------------------------------
Exported = collections.namedtuple("Exported", "files paths report")
Exported.__doc__ = """What `export` wrote: `files` (`{kind: .tflite path}`), `paths` (every file
written: the `.tflite` files, their contracts, labels, the QAT model, report.json/md) and the
`report` dict (also in report.json, with the quality gate)."""


def export(model_or_run, output, formats=("int8", "fp16"), data=None, task=None, class_names=None, **options):
    """Phone-ready TFLite files of a model or a run, in one call.

        from keras_litenext.export import export
        files, paths, report = export(model, "out/", formats=("int8", "fp16"), data="data/nuclei")

    Every file carries the TFLite metadata MediaPipe Tasks read (`ImageSegmenter` /
    `ImageClassifier` load it as it is), its I/O contract beside it, and the report scores it
    on the test split; the int8 file takes uint8 camera pixels and gives float32 logits.

    Args:
        model_or_run: a `keras.Model`, a `.keras` file or a run folder of `training/fit.py`.
        output: the output folder.
        formats: file kinds from `FILE_KINDS` (`"int8"`, `"int8_ptq"`, `"fp16"`, `"fp32"`);
            `"int8"` is required (the quality gate judges it).
        data: dataset folder (needed for a model or a `.keras` file: calibration, QAT and the
            test split; a run folder brings its own).
        task: for a model or a `.keras` file: `"binary"`, `"multiclass"`, `"classification"`,
            or a `keras_litenext.tasks` task (default: read off the output channels, with
            `classes.json` beside the data).
        class_names: class names, class 0 first (default: from the task or the data).
        **options: `ExportOptions`' other fields (`io`, `qat_epochs`, `num_calibration`,
            `max_dice_drop`, `name`, `metadata`, `verbose`, `log`, ...).

    Returns:
        `Exported(files, paths, report)`.
    """
    settings = {}
    if task is not None:
        settings["task"] = task if isinstance(task, str) else task.name
        if not isinstance(task, str):
            class_names = class_names or list(task.class_names)
    if class_names is not None:
        settings["class_names"] = [str(n) for n in class_names]
    kinds = [formats] if isinstance(formats, str) else list(formats)
    options.setdefault("log", lambda *a, **k: None)
    options.setdefault("verbose", 0)
    with tempfile.TemporaryDirectory(prefix="litenext-export-") as folder:
        source = model_or_run
        if hasattr(model_or_run, "save") and hasattr(model_or_run, "inputs"):  # a Keras model
            source = os.path.join(folder, f"{model_or_run.name}.keras")
            model_or_run.save(source)
            options.setdefault("name", model_or_run.name)
        if os.path.isdir(os.fspath(source)):
            settings = None  # a run folder brings its task and classes
        report = export_run(os.fspath(source), output=os.fspath(output), data=data, kinds=kinds, settings=settings or None, **options)
    files = {e["kind"]: os.path.join(report["output"], e["file"]) for e in report["files"]}
    written = ["report.json", "report.md", "failures.csv", f"{report['model']}_qat.keras", f"{report['model']}_labels.txt"]
    written += [f"{report['model']}_{k}{ext}" for k in files for ext in (".tflite", ".json")]
    paths = sorted(p for p in (os.path.join(report["output"], n) for n in set(written)) if os.path.isfile(p))
    return Exported(files, paths, report)
