"""The export's quality gate on real numbers and on nothing: the bundled preset's int8 file scored
with LiteRT on the sample's test split (images it never saw) against the float model's Dice
computed here; the same file with its int8 weights perturbed must fail; a float model at chance
(untrained, no foreground) leaves the file "not verified", never "passed"."""

import numpy as np
import pytest

import keras_litenext
from keras_litenext import export as E
from keras_litenext.export import gate as G
from keras_litenext.export.pipeline import ExportOptions
from keras_litenext.data import find_pairs, read_image, sample_data_dir, split_stems
from keras_litenext.litert import run_tflite
from keras_litenext.tasks import get_task

PRESET = "litenext-nuclei"


def dice_per_image(masks, logits):
    """Per-image Dice of `logit > 0` against binary masks, images without foreground left out
    (the package's `empty="skip"`), computed here with numpy alone."""
    pred, true = logits[..., 0] > 0, masks[..., 0] > 0
    keep = true.reshape(len(true), -1).any(axis=1)
    inter = (pred & true).reshape(len(true), -1).sum(axis=1)
    total = pred.reshape(len(true), -1).sum(axis=1) + true.reshape(len(true), -1).sum(axis=1)
    return (2.0 * inter / np.maximum(total, 1))[keep]


@pytest.fixture(scope="module")
def preset_test_split():
    """The preset's test split of the bundled sample, as its run recorded it (split fractions and
    seed in run.json), with the float model and its per-image Dice computed here."""
    import json
    import pathlib

    folder = pathlib.Path(keras_litenext.presets.preset_metadata(PRESET)["path"])
    run = json.loads((folder / "run.json").read_text())
    pairs = {p.stem: p for p in find_pairs(sample_data_dir())}
    split = split_stems(sorted(pairs), fractions=tuple(run["split"]), seed=run["seed"])
    test = [pairs[s] for s in split["test"]]
    recorded = keras_litenext.presets.preset_metadata(PRESET)["training_data"]["splits"]
    assert len(split["train"]) == recorded["train"] and len(test) == recorded["test"]
    images = np.stack([read_image(p.image, channels=3) for p in test]).astype(np.uint8)
    masks = np.stack([(read_image(p.mask, channels=1) > 0) for p in test]).astype(np.uint8)
    model = keras_litenext.load_preset(PRESET)
    logits = np.asarray(model(images.astype(np.float32) / 255.0, training=False))
    return {"folder": folder, "images": images, "masks": masks, "float_dice": dice_per_image(masks, logits)}


def gate_of(float_dice, file_dice, task=None):
    """The gate at its defaults on a report of two per-image Dice lists."""
    def summary(d):
        return {"dice": {"mean": float(np.mean(d)) if len(d) else float("nan"), "std": 0.0}, "per_class": {}, "counted": len(d)}

    report = {"keras_float": {"test": summary(float_dice)}, "files": [{"kind": "int8", "test": summary(file_dice)}]}
    return G.dice_gate(report, task=task)


def test_preset_int8_file_passes_the_gate_on_unseen_images(preset_test_split):
    s = preset_test_split
    path = str(s["folder"] / "tflite" / "litenext_int8.tflite")
    file_dice = dice_per_image(s["masks"], run_tflite(path, s["images"]))
    assert len(file_dice) >= 25 and np.mean(s["float_dice"]) > 0.8  # a trained model, on a real test split
    gate = gate_of(s["float_dice"], file_dice, task=get_task("binary"))
    assert gate["status"] == "passed" and gate["passed"] is True, gate["message"]
    # the package's own scoring of the file agrees with the numpy Dice above
    scored = E.evaluate_tflite(path, s["images"], s["masks"], get_task("binary"), hd95=False)
    assert scored["dice"]["mean"] == pytest.approx(np.mean(file_dice), abs=1e-6)


def perturbed(data, scale=12, seed=0):
    """The flatbuffer with seeded noise (up to `scale` int8 steps) on every int8 weight buffer."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    rng = np.random.default_rng(seed)
    changed = 0
    for tensor in model.subgraphs[0].tensors:
        buf = model.buffers[tensor.buffer]
        if tensor.type == schema.TensorType.INT8 and buf.data is not None and len(buf.data) > 64:
            w = np.asarray(buf.data, np.uint8).view(np.int8).astype(np.int32)
            w = np.clip(w + rng.integers(-scale, scale + 1, w.shape), -127, 127).astype(np.int8)
            buf.data = w.view(np.uint8)
            changed += 1
    assert changed > 10
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_gate_fails_a_file_with_perturbed_weights(preset_test_split, tmp_path):
    s = preset_test_split
    broken = tmp_path / "broken_int8.tflite"
    broken.write_bytes(perturbed((s["folder"] / "tflite" / "litenext_int8.tflite").read_bytes()))
    file_dice = dice_per_image(s["masks"], run_tflite(str(broken), s["images"]))
    gate = gate_of(s["float_dice"], file_dice, task=get_task("binary"))
    assert gate["status"] == "failed" and gate["passed"] is False and "more than the allowed 0.5" in gate["message"]


# -- a gate cannot pass on nothing ----------------------------------------------------------------
def test_float_model_at_chance_is_not_verified():
    binary = get_task("binary")
    gate = gate_of([0.0, 0.01, 0.0], [0.0, 0.01, 0.0], task=binary)  # Dice 0 vs 0: no drop, and nothing shown
    assert gate["status"] == "not verified" and gate["passed"] is False
    assert gate["message"].startswith("not verified: the float model scores at chance (Dice 0.33")
    assert "train longer before exporting" in gate["message"]
    assert gate_of([], [], task=binary)["status"] == "not verified"  # no test image with foreground
    assert gate_of([0.8, 0.9], [0.8, 0.9], task=binary)["status"] == "passed"
    assert gate_of([0.8, 0.9], [0.7, 0.8], task=binary)["status"] == "failed"
    assert gate_of([0.0], [0.0])["status"] == "passed"  # without a task the gate only compares (as before)


def test_classifier_at_chance_is_not_verified():
    task = get_task("classification", class_names=["normal", "pneumonia"])

    def gate(accuracy, auc, matrix):
        test = {"accuracy": accuracy, "auc": auc, "confusion_matrix": matrix}
        return G.accuracy_gate({"keras_float": {"test": test}, "files": [{"kind": "int8", "test": dict(test)}]}, task=task)

    assert gate(0.5, 0.5, [[5, 5], [5, 5]])["status"] == "not verified"  # AUC at chance
    constant = gate(0.75, 0.80, [[0, 5], [0, 15]])  # always "pneumonia": the majority-class rate
    assert constant["status"] == "not verified" and "majority class" in constant["message"]
    assert gate(0.90, 0.95, [[4, 1], [1, 14]])["status"] == "passed"


def test_useless_model_on_the_test_split_is_not_verified(preset_test_split):
    """A model that finds nothing (zero-output logits), scored by the package's own scoring on the
    real test split, next to a file that matches it exactly: not verified."""
    task, s = get_task("binary"), preset_test_split
    logits = np.full(s["masks"].shape, -1.0, np.float32)
    test = task.report_summary(task.test_scores(s["masks"], logits, hd95=False))
    report = {"keras_float": {"test": test}, "files": [{"kind": "int8", "test": dict(test)}]}
    gate = task.export_gate(report, ExportOptions(source="unused"))
    assert gate["status"] == "not verified" and gate["passed"] is False and "(Dice 0.00" in gate["message"]
    from keras_litenext.export.report import gate_word

    assert gate_word(gate) == "NOT VERIFIED" and gate_word({"passed": True}) == "PASSED"


def test_export_command_says_not_verified_and_exits_3(monkeypatch, capsys, tmp_path):
    from keras_litenext.cli import export as cli

    gate = {"passed": False, "status": "not verified",
            "message": "not verified: the float model scores at chance (Dice 0.00, below the floor of 5.00); train longer before exporting"}
    monkeypatch.setattr(E, "export_run", lambda *a, **k: {"output": str(tmp_path), "gate": gate, "files": [{"kind": "int8", "file": "m_int8.tflite"}]})
    assert cli.main([str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Quality gate NOT VERIFIED: not verified: the float model scores at chance (Dice 0.00" in err
    assert cli.main([str(tmp_path), "--force"]) == 0
    out = capsys.readouterr().out
    assert "m_int8.tflite" in out and "keras-litenext benchmark" in out
