"""Run-level export: from a training run to deployable `.tflite` files with a report and a gate.

`export_run` fine-tunes a run's model with quantization-aware training, converts it to int8
(QAT and PTQ), fp16 and fp32 files with `keras_litenext.tflite`, scores every file with LiteRT
on the run's test split, writes the I/O contract of each file and `report.md`, and applies the
quality gate. The TFLite mechanics live in `keras_litenext.tflite`.
"""


import collections
import os
import re

import numpy as np

from keras_litenext.tflite import (
    IO_TYPES,
    convert,
    inspect_tflite,
    io_details,
    run_tflite,
    write_bytes,
    xnnpack_partitions,
)
from keras_litenext.utils import atomic_path


def evaluate_tflite(model, images, masks, threshold=0.5, empty="skip", num_threads=2, xnnpack=True):
    """Per-image Dice/IoU/precision/recall of a `.tflite` file, as `metrics.evaluate_model` gives
    them for a Keras model (`{"dice": {"mean", "std"}, ..., "per_image": {...}}`)."""
    from keras_litenext.metrics import per_image_scores, summarize

    logits = run_tflite(model, images, num_threads=num_threads, xnnpack=xnnpack)
    scores = per_image_scores(masks, logits, threshold=threshold, empty=empty)
    result = summarize(scores)
    result["per_image"] = {k: v.tolist() for k, v in scores.items()}
    return result


# ----------------------------------------------------------------------------------------------
# From a training run to deployable files
# ----------------------------------------------------------------------------------------------
FILE_KINDS = {  # suffix -> description
    "int8": "int8, quantization-aware fine-tuned (QAT)",
    "int8_ptq": "int8, post-training quantized (PTQ)",
    "fp16": "float16 weights, float32 compute",
    "fp32": "float32",
}


class ExportError(ValueError):
    """A bad input to `export_run` (missing run files, data, sizes), with a one-line message."""


def load_source(source, data=None):
    """`(model, config, arrays, meta)` for a run folder or a `.keras` file.

    A run folder (`training.train`'s output) gives `best.keras`, `config.json` (data folder,
    image size, channels, mask settings, loss) and `splits.json` (train/val/test stems). A
    `.keras` file needs `data` (a dataset folder) and is split 80/10/10 with seed 42, as
    training does by default. `data` also overrides a run's data folder (e.g. on another
    machine).

    Returns:
        model (float, loaded without its training config), config (dict of TrainConfig
        fields), arrays `{"train"|"val"|"test": (uint8 images, uint8 masks)}`, and meta
        (`{"run", "model_path", "data"}`).
    """
    import keras

    from keras_litenext import data as data_lib
    from keras_litenext.training import TrainConfig

    source = os.fspath(source)
    if os.path.isdir(source):
        model_path = os.path.join(source, "best.keras")
        config_path = os.path.join(source, "config.json")
        if not os.path.isfile(model_path):
            raise ExportError(f"{source} has no best.keras: is it a finished run folder of training/fit.py?")
        if not os.path.isfile(config_path):
            raise ExportError(f"{source} has no config.json: is it a run folder of training/fit.py?")
        import json

        with open(config_path, encoding="utf-8") as f:
            config = TrainConfig.from_dict(json.load(f)).to_dict()
        splits_path = os.path.join(source, "splits.json")
        splits = data_lib.load_splits(splits_path) if os.path.isfile(splits_path) else None
        run = os.path.abspath(source)
    elif source.endswith(".keras"):
        if not os.path.isfile(source):
            raise ExportError(f"{source} does not exist.")
        if data is None:
            raise ExportError(f"{source} is a model file: pass --data DATASET_FOLDER (with images/ and masks/) to calibrate and evaluate it.")
        model_path, config, splits, run = source, TrainConfig().to_dict(), None, None
    else:
        raise ExportError(f"{source}: expected a run folder (with best.keras and config.json) or a .keras file.")
    if data is not None:
        config["data"] = os.fspath(data)
    if not config.get("data") or not os.path.isdir(config["data"]):
        raise ExportError(f"dataset folder {config.get('data')!r} not found: pass --data DATASET_FOLDER.")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:
        raise ExportError(f"cannot load {model_path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    height, width, channels = (model.inputs[0].shape[1:] + (None,) * 3)[:3]
    size = config.get("image_size") or height
    if height is not None and size != height:
        raise ExportError(f"{model_path} takes {height}x{width} images but the run's config says image_size={size}.")
    if size is None:
        raise ExportError(f"{model_path} has a free input size and no image_size is known; convert a run folder.")
    config["image_size"] = int(size)
    if channels is not None:
        config["channels"] = int(channels)
    pairs = data_lib.find_pairs(config["data"], masks_suffix=config.get("masks_suffix", ""), skip_bad=config.get("skip_bad", False))
    images, masks, stems, _ = data_lib.load_pairs(
        pairs, config["image_size"], channels=config.get("channels", 3), mask_threshold=config.get("mask_threshold", 0),
        skip_bad=config.get("skip_bad", False),
    )
    if splits is None:
        splits = data_lib.split_stems(stems, fractions=tuple(config.get("split") or (0.8, 0.1, 0.1)), seed=config.get("seed", 42))
    arrays = {k: data_lib.select(stems, images, masks, splits[k], name=f"{k} split") for k in ("train", "val", "test")}
    if len(arrays["test"][0]) == 0 or len(arrays["train"][0]) == 0:
        raise ExportError("the train and test splits must not be empty.")
    meta = {"run": run, "model_path": os.path.abspath(model_path), "data": os.path.abspath(config["data"])}
    return model, config, arrays, meta


def _metrics_summary(result):
    return {
        **{k: {"mean": result[k]["mean"], "std": result[k]["std"]} for k in ("dice", "iou", "precision", "recall")},
        "images": result["images"],
        "counted": result["counted"],
    }


def io_contract(path, model_name, kind, config, meta):
    """The I/O contract of a `.tflite` file: what to feed it and how to read its output.

    Returns a JSON-able dict: input size, channels, dtype, scale / zero point and the mapping
    from camera pixels (0..255) to the input tensor; output shape and meaning (logits,
    threshold 0 = sigmoid 0.5, in the output's own units); model name and training data.
    """
    details = io_details(path)
    inp, out = details["input"], details["output"]
    _, height, width, channels = inp["shape"]
    color = "RGB" if channels == 3 else "grey (one channel)"
    if inp["dtype"] in ("int8", "uint8"):
        s, z = inp["scale"], inp["zero_point"]
        exact = abs(s * 255.0 - 1.0) < 1e-6
        pixels = (
            f"q = round(p / 255 / {s:.9g}) + ({z}), clipped to the {inp['dtype']} range, for a pixel value p in 0..255"
            + (f"; with this scale (1/255) that is exactly q = p {'-' if z < 0 else '+'} {abs(z)}" if exact and z else "")
            + ("; with this scale (1/255) that is exactly q = p" if exact and not z else "")
        )
    else:
        pixels = "x = p / 255 (float32 in [0, 1]) for a pixel value p in 0..255"
    if out["dtype"] in ("int8", "uint8"):
        s, z = out["scale"], out["zero_point"]
        to_float = f"logit = (q - ({z})) * {s:.9g}"
        mask = f"foreground where logit > 0, i.e. where q > {z} (the output zero point); equivalent to sigmoid(logit) > 0.5"
    else:
        to_float = "the float32 output is the logit"
        mask = "foreground where logit > 0, equivalent to sigmoid(logit) > 0.5"
    return {
        "model": model_name,
        "file": os.path.basename(path),
        "kind": kind,
        "description": FILE_KINDS.get(kind, kind),
        "input": {
            **inp,
            "layout": "NHWC, batch 1",
            "height": height,
            "width": width,
            "channels": channels,
            "color": color,
            "from_camera_pixels": pixels,
            "preprocess": f"resize the image to {width}x{height} ({'RGB channel order' if channels == 3 else 'grey'}); "
            "no mean/std normalisation: the network was trained on pixels / 255",
        },
        "output": {
            **out,
            "meaning": "one logit per pixel for the foreground class, at the input resolution",
            "to_float": to_float,
            "mask": mask,
            "probability": "sigmoid(logit); for another probability threshold t use logit > ln(t / (1 - t))",
        },
        "trained_on": {
            "data": meta.get("data"),
            "run": meta.get("run"),
            "image_size": config.get("image_size"),
            "channels": config.get("channels"),
            "masks_suffix": config.get("masks_suffix"),
            "mask_threshold": config.get("mask_threshold"),
        },
    }


def _file_report(path, kind, images, masks, threads):
    info = inspect_tflite(path)
    result = evaluate_tflite(path, images.astype(np.float32) / 255.0, masks, num_threads=threads, xnnpack=True)
    return {
        "file": os.path.basename(path),
        "kind": kind,
        "description": FILE_KINDS.get(kind, kind),
        "size_bytes": info["size_bytes"],
        "op_count": sum(info["op_counts"].values()),
        "op_counts": info["op_counts"],
        "float_ops": info["float_ops"],
        "float_op_count": int(sum(info["float_ops"].values())),
        "boundary_ops": info["boundary_ops"],
        "dynamic_shape_ops": info["dynamic_shape_ops"],
        "xnnpack": xnnpack_partitions(path),
        "input": info["input"],
        "output": info["output"],
        "ops": info["ops"],
        "test": _metrics_summary(result),
    }


def quality_gate(report, max_dice_drop):
    """`(passed, message)`: is the int8 file's test Dice within `max_dice_drop` points
    (Dice x 100) of the float Keras model's?"""
    float_dice = report["keras_float"]["test"]["dice"]["mean"]
    int8 = next(f for f in report["files"] if f["kind"] == "int8")
    int8_dice = int8["test"]["dice"]["mean"]
    drop = 100.0 * (float_dice - int8_dice)
    passed = drop <= max_dice_drop
    message = (
        f"int8 test Dice {100 * int8_dice:.2f} vs float {100 * float_dice:.2f}: "
        f"{'drop' if drop >= 0 else 'gain'} of {abs(drop):.2f} points "
        f"({'within' if passed else 'more than'} the allowed {max_dice_drop:g})"
    )
    return passed, message


def export_run(source, output=None, name=None, io="int8", qat_epochs=3, qat_lr=1e-5, data=None, num_calibration=200,
               max_dice_drop=0.5, threads=2, verbose=1, log=print):
    """Convert a trained model to every deployable TFLite file, evaluate them and write a report.

    Writes to `output` (default `<run>/tflite`):

    - `<name>_int8.tflite`: int8 from the QAT model (`qat_epochs` of fine-tuning with the run's
      loss and data pipeline, from the float weights, after calibration);
    - `<name>_int8_ptq.tflite`: int8, post-training quantized;
    - `<name>_fp16.tflite`, `<name>_fp32.tflite`;
    - `<file>.json` beside each: its I/O contract (`io_contract`);
    - `<name>_qat.keras`: the QAT model (ranges included), which `convert` turns into the int8
      file again;
    - `report.json` and `report.md`: per file size, ops with dtypes, float-op count, XNNPACK
      partitions, and test-split Dice/IoU measured by running the file with LiteRT (XNNPACK,
      `threads` threads), next to the float Keras model's; the quality gate.

    Args:
        source: run folder, or `.keras` file with `data`.
        output: output folder.
        name: file name prefix; defaults to the model's name.
        io: int8 files' input/output type: "int8", "uint8" or "float".
        qat_epochs: QAT fine-tuning epochs (0: calibration only).
        qat_lr: QAT peak learning rate.
        data: dataset folder (required with a `.keras` file; overrides a run's).
        num_calibration: training images for int8 calibration.
        max_dice_drop: the quality gate, in Dice points.
        threads: LiteRT threads for the evaluation.
        verbose: Keras verbosity for the fine-tuning.
        log: callable for progress lines.

    Returns:
        the report dict (also in report.json), with `"gate": {"passed", "message", ...}`.
    """
    import time

    from keras_litenext.metrics import evaluate_model
    from keras_litenext.utils import write_json

    if io not in IO_TYPES:
        raise ExportError(f"io must be one of {IO_TYPES}, got {io!r}.")
    if qat_epochs < 0:
        raise ExportError(f"qat_epochs must be >= 0, got {qat_epochs}.")
    model, config, arrays, meta = load_source(source, data=data)
    name = name or model.name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"name {name!r} must be letters, digits, '_', '-' or '.'.")
    output = os.fspath(output) if output is not None else os.path.join(meta["run"] or os.path.dirname(meta["model_path"]), "tflite")
    os.makedirs(output, exist_ok=True)
    train_images = arrays["train"][0]
    test_images, test_masks = arrays["test"]
    x_test = test_images.astype(np.float32) / 255.0
    sizes = {k: int(len(v[0])) for k, v in arrays.items()}
    log(f"Model {name} ({model.count_params():,} parameters), data {meta['data']} at {config['image_size']}px, "
        f"train {sizes['train']} / val {sizes['val']} / test {sizes['test']} images")

    started = time.time()
    float_result = evaluate_model(model, (x_test, test_masks.astype(np.float32)), batch_size=8)
    log(f"float Keras test Dice {float_result['dice']['mean']:.4f}")

    files = []

    def emit(kind, build):
        path = os.path.join(output, f"{name}_{kind}.tflite")
        t0 = time.time()
        data_bytes = build()
        write_bytes(path, data_bytes)
        size = len(data_bytes)
        contract = io_contract(path, name, kind, config, meta)
        write_json(os.path.join(output, f"{name}_{kind}.json"), contract)
        entry = _file_report(path, kind, test_images, test_masks, threads)
        entry["convert_seconds"] = round(time.time() - t0, 1)
        files.append(entry)
        log(f"{os.path.basename(path)}: {size / 1024:.0f} KiB, {entry['op_count']} ops, {entry['float_op_count']} float ops, "
            f"{entry['xnnpack']['partitions']} XNNPACK partitions, test Dice {entry['test']['dice']['mean']:.4f}")

    emit("fp32", lambda: convert(model, "fp32"))
    emit("fp16", lambda: convert(model, "fp16"))
    emit("int8_ptq", lambda: convert(model, "int8", representative_data=train_images, io=io, num_calibration=num_calibration))

    log(f"QAT: calibrating, then fine-tuning {qat_epochs} epoch(s) at lr {qat_lr:g}")
    from keras_litenext.qat_finetune import finetune_run

    qat = finetune_run(model, config, arrays, epochs=qat_epochs, lr=qat_lr, verbose=verbose, calibration_steps=max(1, num_calibration // 8))
    qat_result = evaluate_model(qat, (x_test, test_masks.astype(np.float32)), batch_size=8)
    with atomic_path(os.path.join(output, f"{name}_qat.keras")) as tmp:
        qat.save(tmp)
    emit("int8", lambda: convert(qat, "int8", representative_data=train_images, io=io, num_calibration=num_calibration))

    report = {
        "model": name,
        "source": meta,
        "config": {k: config.get(k) for k in ("model", "data", "image_size", "channels", "masks_suffix", "mask_threshold", "loss", "batch_size")},
        "splits": sizes,
        "io": io,
        "evaluation": f"test split ({sizes['test']} images), per-image Dice/IoU; .tflite files run with ai-edge-litert, XNNPACK, {threads} threads",
        "keras_float": {"params": int(model.count_params()), "test": _metrics_summary(float_result)},
        "qat": {
            "epochs": int(qat_epochs),
            "lr": qat_lr,
            "best_epoch": getattr(qat, "qat_best_epoch", None),
            "history": getattr(qat, "qat_history", None),
            "rsqrt_quantile_val_dice": {str(k): v for k, v in (getattr(qat, "rsqrt_quantile_scores", None) or {}).items()},
            "keras_test": _metrics_summary(qat_result),
        },
        "files": sorted(files, key=lambda f: list(FILE_KINDS).index(f["kind"])),
        "seconds": round(time.time() - started, 1),
    }
    float_dice = float_result["dice"]["mean"]
    for entry in report["files"]:
        entry["dice_drop_points"] = round(100.0 * (float_dice - entry["test"]["dice"]["mean"]), 3)
    passed, message = quality_gate(report, max_dice_drop)
    report["gate"] = {"max_dice_drop_points": max_dice_drop, "passed": passed, "message": message}
    report["output"] = os.path.abspath(output)
    write_json(os.path.join(output, "report.json"), report)
    with atomic_path(os.path.join(output, "report.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_markdown(report))
    return report


def _signature(op):
    return f"{','.join(op['inputs'])} -> {','.join(op['outputs'])}"


def report_markdown(report):
    """`report.md` of `export_run`: summary table, quality gate, then each file's ops with dtypes."""
    f = report["keras_float"]["test"]
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); "
        f"splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test Dice | test IoU | Dice vs float (points) |",
        "|---|---|---|---|---|---|---|---|",
        f"| Keras float32 | - | - | - | - | {f['dice']['mean']:.4f} | {f['iou']['mean']:.4f} | - |",
    ]
    q = report["qat"]["keras_test"]
    lines.append(f"| Keras QAT (simulated int8) | - | - | - | - | {q['dice']['mean']:.4f} | {q['iou']['mean']:.4f} | "
                 f"{100 * (q['dice']['mean'] - f['dice']['mean']):+.2f} |")
    for e in report["files"]:
        lines.append(
            f"| `{e['file']}` ({e['description']}) | {e['size_bytes'] / 1024:.0f} KiB | {e['op_count']} | {e['float_op_count']} | "
            f"{e['xnnpack']['partitions']} | {e['test']['dice']['mean']:.4f} | {e['test']['iou']['mean']:.4f} | {-e['dice_drop_points']:+.2f} |"
        )
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_dice_drop_points']:g} points): **{'PASSED' if gate['passed'] else 'FAILED'}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        "(0 = the calibrated model, before fine-tuning).",
    ]
    scores = report["qat"].get("rsqrt_quantile_val_dice") or {}
    if scores:
        chosen = max(scores, key=scores.get)
        lines.append("Layer-norm 1/sqrt(variance) range end, simulated val Dice per candidate (None = max): "
                     + ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) + f"; kept {chosen}.")
    lines += [
        "",
    ]
    for e in report["files"]:
        lines += [f"## `{e['file']}`", ""]
        lines.append(f"Input {e['input']['dtype']} {e['input']['shape']} (scale {e['input']['scale']}, zero point {e['input']['zero_point']}); "
                     f"output {e['output']['dtype']} {e['output']['shape']} (scale {e['output']['scale']}, zero point {e['output']['zero_point']}).")
        nd = e["xnnpack"]["not_delegated"]
        lines.append(f"XNNPACK: {e['xnnpack']['delegated']} of {e['xnnpack']['ops']} ops in {e['xnnpack']['partitions']} partition(s)"
                     + (f"; not delegated: {', '.join(f'{k} x{v}' for k, v in nd.items())}." if nd else "."))
        if e["float_ops"]:
            lines.append(f"Float ops: {', '.join(f'{k} x{v}' for k, v in e['float_ops'].items())}.")
        if e["dynamic_shape_ops"]:
            lines.append(f"Run-time shape ops: {', '.join(f'{k} x{v}' for k, v in e['dynamic_shape_ops'].items())}.")
        lines += ["", "| op | count | dtypes (inputs -> outputs) |", "|---|---|---|"]
        groups = collections.OrderedDict()
        for op in e["ops"]:
            groups.setdefault((op["op"], _signature(op)), 0)
            groups[(op["op"], _signature(op))] += 1
        for (op, sig), n in sorted(groups.items()):
            lines.append(f"| {op} | {n} | {sig} |")
        lines.append("")
    return "\n".join(lines)

