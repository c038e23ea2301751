"""The quality gates of an export: how much the int8 file may lose against the float Keras model.

A segmentation run is gated on Dice (`quality_gate`: the mean over the foreground classes and
each class), a classification run on accuracy and macro AUC (`classification_gate`); the task
picks its gate (`task.export_gate`), which also writes each file's drops into the report.

A gate compares the int8 file with the float model, so it verifies nothing when the float model
itself scores at chance (an untrained or collapsed model: Dice 0 against Dice 0 is no drop). The
task says when that is (`task.at_chance`); the gate's `status` is then `"not verified"`, not
`"passed"` (and `passed` is false), and its message says to train longer.
"""

from keras_litenext.export.scoring import number


def _int8_entry(report):
    return next(f for f in report["files"] if f["kind"] == "int8")


def _class_dice(test, name):
    entry = (test.get("per_class") or {}).get(name) or {}
    return number((entry.get("dice") or {}).get("mean"))


def dice_drops(float_test, file_test):
    """`(mean drop, {class: drop})` in Dice points (x 100; positive = the file is worse); None
    where a value is undefined (no test image holds the class)."""
    f, q = number(float_test["dice"]["mean"]), number(file_test["dice"]["mean"])
    mean = None if f is None or q is None else 100.0 * (f - q)
    classes = {}
    for name in float_test.get("per_class") or {}:
        fc, qc = _class_dice(float_test, name), _class_dice(file_test, name)
        classes[name] = None if fc is None or qc is None else 100.0 * (fc - qc)
    return mean, classes


def quality_gate(report, max_dice_drop=0.5, max_class_drop=1.0):
    """`(passed, message)`: is the int8 file's test Dice (mean over the foreground classes)
    within `max_dice_drop` points (Dice x 100) of the float Keras model's, and every foreground
    class's within `max_class_drop`? A mean can hide one class collapsing, hence the second
    clause. For a binary task the one class's drop is the mean drop."""
    float_test = report["keras_float"]["test"]
    int8 = _int8_entry(report)["test"]
    drop, class_drops = dice_drops(float_test, int8)
    if drop is None:
        return False, "int8 or float test Dice is undefined (no test image with a foreground class was counted)"
    mean_ok = drop <= max_dice_drop
    message = (
        f"int8 test Dice {100 * int8['dice']['mean']:.2f} vs float {100 * float_test['dice']['mean']:.2f}: "
        f"{'drop' if drop >= 0 else 'gain'} of {abs(drop):.2f} points "
        f"({'within' if mean_ok else 'more than'} the allowed {max_dice_drop:g})"
    )
    counted = {n: d for n, d in class_drops.items() if d is not None}
    failed = {n: d for n, d in counted.items() if d > max_class_drop}
    if failed and (len(class_drops) > 1 or mean_ok):  # binary: the one class is the mean, said once
        message += "; " + "; ".join(
            f"class {n!r}: int8 test Dice {100 * _class_dice(int8, n):.2f} vs float {100 * _class_dice(float_test, n):.2f}, "
            f"a drop of {d:.2f} points (more than the allowed {max_class_drop:g} per class)"
            for n, d in sorted(failed.items(), key=lambda item: -item[1])
        )
    elif len(class_drops) > 1 and counted:
        worst = max(counted, key=counted.get)
        d = counted[worst]
        message += (f"; every class within the allowed {max_class_drop:g} per class "
                    f"(worst {worst!r}: {'drop' if d >= 0 else 'gain'} of {abs(d):.2f} points)")
    absent = [n for n, d in class_drops.items() if d is None]
    if absent and len(class_drops) > 1:
        message += f"; not in the test split, so not gated: {', '.join(repr(n) for n in absent)}"
    return bool(mean_ok and not failed), message


def classification_gate(report, max_accuracy_drop=1.0, max_auc_drop=0.01):
    """`(passed, message)` of a classification export: is the int8 file's test accuracy within
    `max_accuracy_drop` points (accuracy x 100) of the float Keras model's, and its macro AUC
    within `max_auc_drop` (AUC units, 0..1)? Both: accuracy alone can hold while the ranking
    (AUC, i.e. any other operating threshold) degrades, and AUC alone hides a shifted arg-max."""
    float_test = report["keras_float"]["test"]
    int8 = _int8_entry(report)["test"]
    acc_drop, auc_drop = classification_drops(float_test, int8)
    if acc_drop is None:
        return False, "int8 or float test accuracy is undefined (an empty test split?)"
    acc_ok = acc_drop <= max_accuracy_drop
    message = (f"int8 test accuracy {100 * int8['accuracy']:.2f} vs float {100 * float_test['accuracy']:.2f}: "
               f"{'drop' if acc_drop >= 0 else 'gain'} of {abs(acc_drop):.2f} points "
               f"({'within' if acc_ok else 'more than'} the allowed {max_accuracy_drop:g})")
    if auc_drop is None:
        return acc_ok, message + "; AUC undefined (a class absent from the test split), not gated"
    auc_ok = auc_drop <= max_auc_drop
    message += (f"; int8 test AUC {int8['auc']:.4f} vs float {float_test['auc']:.4f}: "
                f"{'drop' if auc_drop >= 0 else 'gain'} of {abs(auc_drop):.4f} "
                f"({'within' if auc_ok else 'more than'} the allowed {max_auc_drop:g})")
    return bool(acc_ok and auc_ok), message


def classification_drops(float_test, file_test):
    """`(accuracy drop in points, AUC drop in AUC units)`; positive = the file is worse; None
    where a value is undefined."""
    fa, qa = number(float_test.get("accuracy")), number(file_test.get("accuracy"))
    fu, qu = number(float_test.get("auc")), number(file_test.get("auc"))
    return (None if fa is None or qa is None else 100.0 * (fa - qa)), (None if fu is None or qu is None else fu - qu)


PASSED, FAILED, NOT_VERIFIED = "passed", "failed", "not verified"  # a gate's `status`


def verdict(gate, passed, message, task=None, float_test=None):
    """`gate` with `passed`, `status` and `message` set: `"not verified"` when the task finds the
    float model at chance (`task.at_chance(float_test)`: why, or None), else passed or failed."""
    chance = task.at_chance(float_test) if task is not None else None
    if chance:
        return {**gate, "passed": False, "status": NOT_VERIFIED,
                "message": f"not verified: {chance}; train longer before exporting (int8 against float: {message})"}
    return {**gate, "passed": bool(passed), "status": PASSED if passed else FAILED, "message": message}


def dice_gate(report, max_dice_drop=0.5, max_class_drop=1.0, task=None):
    """The `"gate"` section of a segmentation report; each file's Dice drops (mean and per
    class, in points) are written into its entry. With `task`, a float model at chance
    (`task.at_chance`) leaves the file not verified."""
    float_test = report["keras_float"]["test"]
    for entry in report["files"]:
        drop, class_drops = dice_drops(float_test, entry["test"])
        entry["dice_drop_points"] = None if drop is None else round(drop, 3)
        entry["class_dice_drop_points"] = {n: None if d is None else round(d, 3) for n, d in class_drops.items()}
    passed, message = quality_gate(report, max_dice_drop, max_class_drop)
    int8 = _int8_entry(report)
    return verdict({
        "max_dice_drop_points": max_dice_drop,
        "max_class_drop_points": max_class_drop,
        "dice_drop_points": int8["dice_drop_points"],
        "class_dice_drop_points": int8["class_dice_drop_points"],
    }, passed, message, task, float_test)


def accuracy_gate(report, max_accuracy_drop=1.0, max_auc_drop=0.01, task=None):
    """The `"gate"` section of a classification report; each file's accuracy drop (points) and
    AUC drop are written into its entry. With `task`, a float model at chance
    (`task.at_chance`) leaves the file not verified."""
    float_test = report["keras_float"]["test"]
    for entry in report["files"]:
        acc_drop, auc_drop = classification_drops(float_test, entry["test"])
        entry["accuracy_drop_points"] = None if acc_drop is None else round(acc_drop, 3)
        entry["auc_drop"] = None if auc_drop is None else round(auc_drop, 5)
    passed, message = classification_gate(report, max_accuracy_drop, max_auc_drop)
    int8 = _int8_entry(report)
    return verdict({
        "max_accuracy_drop_points": max_accuracy_drop,
        "max_auc_drop": max_auc_drop,
        "accuracy_drop_points": int8["accuracy_drop_points"],
        "auc_drop": int8["auc_drop"],
    }, passed, message, task, float_test)
