"""The report of an export: `report.json` and `report.md` (the task's summary table, then each
file's I/O, XNNPACK delegation and ops with dtypes, then the files that could not be read), and
`failures.csv` (those files, `inference.batch.write_failures`)."""

import collections
import math
import os

from keras_litenext.export.gate import classification_drops, dice_drops
from keras_litenext.export.scoring import fmt, mean_of
from keras_litenext.inference.batch import FAILURES_CSV, Failure, write_failures
from keras_litenext.utils import atomic_path, write_json


def gate_word(gate):
    """The gate's verdict as report.md and the command say it: PASSED, FAILED or NOT VERIFIED."""
    return gate.get("status", "passed" if gate["passed"] else "failed").upper()


def report_markdown(report, task):
    """`report.md` of `export_run`: the task's tables and gate (`task.report_markdown`:
    segmentation: summary table, per-class Dice (K > 1), quality gate; classification: accuracy /
    AUC, per-class recall and AUC, the int8 file's confusion matrix and its gate), then each
    file's ops with dtypes, then the files that could not be read. `task`: the report's task
    (`report["task"]`, `report["class_names"]`)."""
    return task.report_markdown(report) + failures_markdown(report)


def failures_markdown(report):
    """`report.md`'s section on the files that could not be read ("" when every file was read)."""
    failures = report.get("failures") or []
    if not failures:
        return ""
    scored = (report.get("test_images") or {}).get("scored", report["splits"]["test"])
    text = (f"{len(failures)} file(s) could not be read and are left out of calibration, fine-tuning and scoring; "
            f"the gate judges the files on the {scored} test images that were read. Also in `{FAILURES_CSV}`.")
    lines = ["", "## Files that could not be read", "", text, "", "| file | split | reason |", "|---|---|---|"]
    for f in failures:
        reason = f["reason"].replace("|", "\\|")
        lines.append(f"| `{f['item']}` | {f.get('split') or '-'} | {reason} |")
    return "\n".join(lines + [""])


def write_report(report, output, task):
    """Write `report.json`, `report.md` and `failures.csv` (removed when every file was read) into
    `output`; returns the report (with `"output"`)."""
    report["output"] = os.path.abspath(output)
    failures = [Failure(f["item"], f["stage"], f["reason"]) for f in report.get("failures") or []]
    write_failures(os.path.join(output, FAILURES_CSV), failures)
    write_json(os.path.join(output, "report.json"), report)
    with atomic_path(os.path.join(output, "report.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_markdown(report, task))
    return report


def classification_markdown(report):
    """`report.md` of a classification export: accuracy / AUC, per-class recall and AUC, the
    int8 file's confusion matrix and its gate, then each file's ops."""
    f = report["keras_float"]["test"]
    q = report["qat"]["keras_test"]
    names = list(report["class_names"])
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); task classification "
        f"({', '.join(names)}); splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test accuracy | balanced accuracy | macro AUC | "
        "accuracy vs float (points) | AUC vs float |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label, test, size="-", ops="-", float_ops="-", partitions="-"):
        acc, auc = classification_drops(f, test) if test is not f else (None, None)
        return (f"| {label} | {size} | {ops} | {float_ops} | {partitions} | {fmt(test.get('accuracy'))} | "
                f"{fmt(test.get('balanced_accuracy'))} | {fmt(test.get('auc'))} | "
                f"{'-' if acc is None else fmt(0.0 - acc, '+.2f')} | {'-' if auc is None else fmt(0.0 - auc, '+.4f')} |")

    lines.append(row("Keras float32", f))
    lines.append(row("Keras QAT (simulated int8)", q))
    for e in report["files"]:
        lines.append(row(f"`{e['file']}` ({e['description']})", e["test"], f"{e['size_bytes'] / 1024:.0f} KiB", e["op_count"],
                         e["float_op_count"], e["xnnpack"]["partitions"]))
    lines += ["", "Per-class test recall / AUC:", "", "| model | " + " | ".join(f"{n} recall | {n} AUC" for n in names) + " |",
              "|---|" + "---|---|" * len(names)]
    for label, test in [("Keras float32", f), ("Keras QAT (simulated int8)", q)] + [(f"`{e['file']}`", e["test"]) for e in report["files"]]:
        cells = [f"{fmt((test.get('recall_per_class') or {}).get(n))} | {fmt((test.get('auc_per_class') or {}).get(n))}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    int8 = next(e for e in report["files"] if e["kind"] == "int8")
    lines += ["", f"Confusion matrix of `{int8['file']}` on the test split (rows true, columns predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for n, counts in zip(names, int8["test"]["confusion_matrix"]):
        lines.append(f"| {n} | " + " | ".join(str(c) for c in counts) + " |")
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_accuracy_drop_points']:g} points of accuracy, {gate['max_auc_drop']:g} of macro AUC): "
        f"**{gate_word(gate)}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        f"of the best {report['qat'].get('monitor', 'val_auc')} (0 = the calibrated model, before fine-tuning).",
        *attempts_lines(report),
        "",
    ]
    return "\n".join(lines + _files_markdown(report))


def segmentation_markdown(report):
    """`report.md` of a segmentation export: summary table, per-class Dice (K > 1), quality
    gate, then each file's ops with dtypes."""
    f = report["keras_float"]["test"]
    q = report["qat"]["keras_test"]
    lines = [
        f"# TFLite export of `{report['model']}`",
        "",
        f"Source: `{report['source'].get('run') or report['source'].get('model_path')}`; data `{report['source'].get('data')}` "
        f"at {report['config']['image_size']}px, {report['config']['channels']} channel(s); task {report.get('task', 'binary')}"
        + (f" ({', '.join(report['class_names'])})" if len(report.get("class_names") or ()) > 2 else "")
        + f"; splits train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']}.",
        f"Evaluation: {report['evaluation']}.",
        "",
        "| model | size | ops | float ops | XNNPACK partitions | test Dice | test IoU | test HD95 (px) | Dice vs float (points) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Keras float32 | - | - | - | - | {fmt(mean_of(f, 'dice'))} | {fmt(mean_of(f, 'iou'))} | {fmt(mean_of(f, 'hd95'), '.2f')} | - |",
    ]
    q_drop, _ = dice_drops(f, q)
    lines.append(f"| Keras QAT (simulated int8) | - | - | - | - | {fmt(mean_of(q, 'dice'))} | {fmt(mean_of(q, 'iou'))} | "
                 f"{fmt(mean_of(q, 'hd95'), '.2f')} | {fmt(None if q_drop is None else -q_drop, '+.2f')} |")
    for e in report["files"]:
        t, drop = e["test"], e.get("dice_drop_points")
        lines.append(
            f"| `{e['file']}` ({e['description']}) | {e['size_bytes'] / 1024:.0f} KiB | {e['op_count']} | {e['float_op_count']} | "
            f"{e['xnnpack']['partitions']} | {fmt(mean_of(t, 'dice'))} | {fmt(mean_of(t, 'iou'))} | {fmt(mean_of(t, 'hd95'), '.2f')} | "
            f"{fmt(None if drop is None else -drop, '+.2f')} |"
        )
    names = list(f.get("per_class") or {})
    if len(names) > 1:
        lines += ["", "Per-class test Dice (points vs float in brackets; HD95 in pixels):", "",
                  "| model | " + " | ".join(f"{n} Dice | {n} HD95" for n in names) + " |",
                  "|---|" + "---|---|" * len(names)]

        def row(label, test):
            cells = []
            for n in names:
                c, fc = test["per_class"][n], f["per_class"][n]
                dice, ref = mean_of(c, "dice"), mean_of(fc, "dice")
                diff = "" if test is f or dice is None or ref is None else f" ({100 * (dice - ref):+.2f})"
                cells.append(f"{fmt(dice)}{diff} | {fmt(mean_of(c, 'hd95'), '.2f')}")
            return f"| {label} | " + " | ".join(cells) + " |"

        lines.append(row("Keras float32", f))
        lines.append(row("Keras QAT (simulated int8)", q))
        lines += [row(f"`{e['file']}`", e["test"]) for e in report["files"]]
    gate = report["gate"]
    lines += [
        "",
        f"Quality gate (max drop {gate['max_dice_drop_points']:g} points in mean Dice, "
        f"{gate.get('max_class_drop_points', gate['max_dice_drop_points']):g} per class): "
        f"**{gate_word(gate)}**: {gate['message']}.",
        f"QAT: {report['qat']['epochs']} epoch(s) at lr {report['qat']['lr']:g}, kept epoch {report['qat']['best_epoch']} "
        f"of the best {report['qat'].get('monitor', 'val_dice')} (0 = the calibrated model, before fine-tuning).",
        *attempts_lines(report),
    ]
    scores = report["qat"].get("rsqrt_quantile_val_dice") or {}
    if scores:
        finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
        chosen = max(finite, key=finite.get) if finite else None
        lines.append("Layer-norm 1/sqrt(variance) range end, simulated val Dice per candidate (None = max): "
                     + ", ".join(f"{k}: {fmt(v)}" for k, v in scores.items()) + f"; kept {chosen}.")
    lines.append("")
    return "\n".join(lines + _files_markdown(report))


def _files_markdown(report):
    """Each file's section: I/O, XNNPACK delegation, float and run-time shape ops, op table."""
    lines = []
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
    return lines


def _signature(op):
    return f"{','.join(op['inputs'])} -> {','.join(op['outputs'])}"


def attempts_lines(report):
    """One line listing the QAT attempts when the file missed its gate and more were made."""
    rows = report["qat"].get("attempts") or []
    if len(rows) < 2:
        return []
    monitor = report["qat"].get("monitor", "val score")
    return ["QAT attempts (the int8 file missed the gate): " + "; ".join(
        f"{r['attempt']}: {r['epochs']} epoch(s) at lr {r['lr']:g}, int8 file {monitor} {fmt(r['val_score'])}, gate {r['gate']}"
        + (" (kept)" if r["attempt"] == report["qat"].get("kept_attempt") else "") for r in rows) + "."]
