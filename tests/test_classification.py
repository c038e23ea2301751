"""Image classification as a task: the image-folder scan and its errors, the stratified split,
the scores, `--model NAME-SIZE`, training end to end with resume, predict/evaluate, and the
int8 export gate. Tiny synthetic images (32x32) and a tiny classifier registered here."""

import csv
import json
import os

import cv2
import keras
import numpy as np
import pytest

from keras_litenext.data import DatasetError
from keras_litenext.data import folders as C
from keras_litenext.metrics import classification_scores, roc_auc
from keras_litenext.models.registry import (
    ModelSpec,
    get_spec,
    list_models,
    register_model,
    resolve_model_name,
)
from keras_litenext.runs import TrainConfig
from keras_litenext.tasks import ClassificationTask, get_task, task_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRASH = {"epoch": None}  # set to make the tiny model's training callback simulate a kill


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if CRASH["epoch"] is not None and epoch == CRASH["epoch"]:
            raise RuntimeError("simulated kill")


def tiny_classifier(input_shape=(32, 32, 3), num_classes=2, size="t", weights=None, name="tinycls"):
    """Conv - Conv - GlobalAveragePooling2D - Dense: logits (batch, num_classes)."""
    widths = {"t": 4, "s": 8}
    if size not in widths:
        raise ValueError(f"tinycls: size must be one of {', '.join(widths)}, got {size!r}.")
    w = widths[size]
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(w, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(2 * w, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    """`tinycls` in the registry while this module runs (registered at run time, not at import,
    so the contract test's `list_models()` parametrisation never sees it), removed after."""
    from keras_litenext.models import registry

    if "tinycls" not in list_models():
        register_model(ModelSpec("tinycls", tiny_classifier, tasks=("classification",), size_multiple=4,
                                 default_input_shape=(32, 32, 3), training_callbacks=lambda epochs: [_Crash()]))
    yield get_spec("tinycls")
    registry._SPECS.pop("tinycls", None)

TINY = dict(model="tinycls-s", batch_size=8, verbose=0, lr=1e-2)


def write_images(folder, n, bright, size=32, seed=0, grey=True):
    """n images: noise around 110 with a square of 230 (bright) or 10 (dark)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        image = rng.normal(110, 15, (size, size)).clip(0, 255)
        y, x = rng.integers(2, size - 14, 2)
        image[y : y + 12, x : x + 12] = 230 if bright else 10
        image = image.astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), image if grey else cv2.merge([image, image // 2, image]))


def flat_dataset(root, n=30, classes=("bright", "dark")):
    for k, name in enumerate(classes):
        write_images(root / name, n, bright=name == "bright", seed=k)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return flat_dataset(tmp_path_factory.mktemp("cls") / "data")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A 2-epoch run, killed after its first epoch and resumed."""
    run = tmp_path_factory.mktemp("clsrun") / "run"
    CRASH["epoch"] = 1
    try:
        with pytest.raises(RuntimeError, match="simulated kill"):
            C_train(data=str(dataset), output=str(run), epochs=2, **TINY)
    finally:
        CRASH["epoch"] = None
    assert (run / "backup").exists() and not (run / "metrics.json").exists()
    summary = C_train(output=str(run), resume=True, verbose=0)
    return run, summary


def C_train(**settings):
    from keras_litenext.train import train

    return train(TrainConfig(**settings))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- task ------------------------------------------------------------------------------------
def test_classification_task_round_trips_and_reads_logits():
    task = get_task("classification", class_names=["normal", "pneumonia"])
    assert isinstance(task, ClassificationTask) and task.kind == "classification"
    assert task.output_channels == 2 and task.monitor == "val_auc" and task.monitor_mode == "max"
    again = task_from_config({"task": "classification", "class_names": ["normal", "pneumonia"], "num_classes": 2})
    assert again.class_names == task.class_names
    np.testing.assert_allclose(task.probabilities([[0.0, np.log(3.0)]]), [[0.25, 0.75]], rtol=1e-6)
    assert task.labels([[1.0, 0.0], [0.0, 2.0]]).tolist() == [0, 1]
    assert "(1, 2)" in task.contract()["output_meaning"]
    with pytest.raises(ValueError, match="at least 2 classes"):
        get_task("classification", class_names=["only"])
    loss = task.loss(class_weights=[1.0, 2.0], label_smoothing=0.1)
    logits = np.array([[2.0, -1.0], [0.5, 0.5]], np.float32)
    y = np.array([0, 1])
    target = np.eye(2)[y] * 0.9 + 0.05
    ce = -(target * np.log(task.probabilities(logits))).sum(-1) * np.array([1.0, 2.0])
    assert float(loss(y, logits)) == pytest.approx(ce.mean(), rel=1e-5)
    auc = task.metrics()[1]
    auc.update_state(np.array([0, 1, 1, 0]), np.array([[2, 0], [0, 1], [1, 0], [3, 0]], np.float32))
    assert float(auc.result()) == pytest.approx(1.0, abs=1e-3)


def test_scores_match_hand_computed_values():
    # AUC of scores (0.1, 0.4, 0.35, 0.8) for labels (0, 0, 1, 1): pairs (pos > neg) 3 of 4 -> 0.75
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)  # a tie counts one half
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    s = classification_scores(labels, probs, ["a", "b", "c"])
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["recall_per_class"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    # one-vs-rest AUCs by hand: a: pos (.7,.5,.2) vs neg (.1,.3,.1) -> 8/9; b: pos (.8,.3) vs neg (.2,.4,.7,.1): 6/8;
    # c: pos (.8) vs all others -> 1
    assert s["auc_per_class"] == pytest.approx({"a": 8 / 9, "b": 6 / 8, "c": 1.0})
    assert s["auc"] == pytest.approx((8 / 9 + 6 / 8 + 1.0) / 3)


# -- data ------------------------------------------------------------------------------------
def test_flat_folder_scan_grey_and_rgb_and_stratified_split(tmp_path):
    root = tmp_path / "flat"
    write_images(root / "b_dark", 10, bright=False)
    write_images(root / "a_bright", 20, bright=True, grey=False)
    (root / "a_bright" / "notes.txt").write_text("not an image")
    data = C.load_image_folder(root, 16, channels=3)
    assert data.class_names == ("a_bright", "b_dark") and data.images.shape == (30, 16, 16, 3)
    assert data.stems[0] == "a_bright/img000.png" and data.labels.tolist() == [0] * 20 + [1] * 10
    assert data.report["ignored"] == 1 and data.report["per_class"] == {"a_bright": 20, "b_dark": 10}
    grey = C.load_image_folder(root, (8, 12), channels=1)
    assert grey.images.shape == (30, 8, 12, 1)
    split = C.split_images(data.stems, data.labels, (0.8, 0.1, 0.1), seed=3)
    assert split == C.split_images(data.stems, data.labels, (0.8, 0.1, 0.1), seed=3)
    assert split != C.split_images(data.stems, data.labels, (0.8, 0.1, 0.1), seed=4)
    assert sorted(sum(split.values(), [])) == sorted(data.stems)
    for name, (n_a, n_b) in {"train": (16, 8), "val": (2, 1), "test": (2, 1)}.items():
        assert sum(s.startswith("a_bright/") for s in split[name]) == n_a, name
        assert sum(s.startswith("b_dark/") for s in split[name]) == n_b, name


def test_split_folders_are_used_as_is_and_a_missing_val_is_carved_from_train(tmp_path):
    root = tmp_path / "splits"
    for split, n in (("train", 18), ("val", 3), ("test", 4)):
        for k, name in enumerate(("x", "y")):
            write_images(root / split / name, n, bright=k == 0, seed=k)
    data = C.load_image_folder(root, 32, channels=1)
    assert data.class_names == ("x", "y") and data.report["splits"] == ["test", "train", "val"]
    split = C.split_images(data.stems, data.labels, seed=0)
    assert all(s.startswith("val/") for s in split["val"]) and len(split["val"]) == 6
    assert all(s.startswith("test/") for s in split["test"]) and len(split["train"]) == 36
    import shutil

    shutil.rmtree(root / "val")
    data = C.load_image_folder(root, 32, channels=1)
    split = C.split_images(data.stems, data.labels, (0.8, 0.1, 0.1), seed=0)
    assert len(split["val"]) == 4 and all(s.startswith("train/") for s in split["val"])  # 1/9 of 18 per class
    assert {s.split("/")[1] for s in split["val"]} == {"x", "y"}


def test_one_line_errors_name_the_folder_or_file(tmp_path):
    def error(root):
        with pytest.raises(DatasetError) as info:
            C.load_image_folder(root, 16)
        return str(info.value)

    empty = tmp_path / "empty"
    write_images(empty / "a", 3, True)
    os.makedirs(empty / "b")
    (empty / "b" / "readme.md").write_text("x")
    message = error(empty)
    assert "hold no image files" in message and str(empty / "b") in message and "\n" not in message

    single = tmp_path / "single"
    write_images(single / "only", 3, True)
    assert "single class folder (only)" in error(single)

    loose = tmp_path / "loose"
    write_images(loose, 3, True)
    assert "no class sub-folders" in error(loose) and "3 image files directly" in error(loose)

    missing = tmp_path / "missing"
    write_images(missing / "train" / "a", 3, True)
    write_images(missing / "train" / "b", 3, False)
    write_images(missing / "test" / "a", 3, True)
    assert "test/b" in error(missing) and "missing from a split" in error(missing)

    bad = tmp_path / "bad"
    write_images(bad / "a", 4, True)
    write_images(bad / "b", 4, False)
    (bad / "a" / "img001.png").write_bytes(b"")
    (bad / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    message = error(bad)
    lines = message.splitlines()
    assert lines[0].startswith("2 of 9 images") and "--skip-bad" in lines[0]
    assert any(line.startswith("a/img001.png: is empty") for line in lines)
    assert any(line.startswith("b/broken.png: cannot be decoded") for line in lines)
    with pytest.warns(UserWarning, match="skipping them"):
        kept = C.load_image_folder(bad, 16, skip_bad=True)
    assert len(kept.stems) == 7

    few = tmp_path / "few"
    write_images(few / "a", 10, True)
    write_images(few / "b", 2, False)
    data = C.load_image_folder(few, 16)
    with pytest.raises(DatasetError, match="class folder b has 2 image"):
        C.split_images(data.stems, data.labels)


def test_default_image_size():
    assert C.default_image_size(28, 32) == 64  # PneumoniaMNIST with a stride-32 model
    assert C.default_image_size(28, 16) == 32
    assert C.default_image_size(28, 1) == 28
    assert C.default_image_size(1000, 32) == 256


# -- registry ---------------------------------------------------------------------------------
def test_model_name_with_a_size_resolves_generically():
    assert resolve_model_name("tinycls") == ("tinycls", {})
    assert resolve_model_name("tinycls-s") == ("tinycls", {"size": "s"})
    assert resolve_model_name("TinyCls_t") == ("tinycls", {"size": "t"})
    assert resolve_model_name("litenext") == ("litenext", {})
    with pytest.raises(ValueError, match="available: .*litenext"):
        resolve_model_name("litenext-s")  # its builder takes no size
    with pytest.raises(ValueError, match="NAME-SIZE"):
        resolve_model_name("nosuchmodel")
    from keras_litenext.cli import fit

    assert fit.build_parser().parse_args(["--model", "tinycls-s"]).model == "tinycls-s"
    with pytest.raises(SystemExit):
        fit.build_parser().parse_args(["--model", "nosuchmodel"])
    config = TrainConfig(model="tinycls", data=None)
    config.resolve_classes()
    assert config.task == "classification"  # the model serves only classification


# -- training, resume, outputs, predict, evaluate --------------------------------------------
def test_training_writes_the_run_lowers_the_loss_and_resumes(trained):
    run, summary = trained
    for name in ("config.json", "splits.json", "best.keras", "history.csv", "metrics.json", "curves.png",
                 "confusion_matrix.png", "test_predictions.csv"):
        assert (run / name).exists(), name
    assert os.listdir(run / "logs") and not (run / "backup").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "tinycls" and config["model_kwargs"] == {"size": "s"}
    assert config["task"] == "classification" and config["class_names"] == ["bright", "dark"]
    assert config["image_size"] == 32 and config["loss"] == "ce"
    history = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1], "resumed from epoch 1, not from scratch"
    assert {"val_auc", "val_accuracy", "accuracy", "auc"} <= set(history[0])
    assert float(history[1]["loss"]) < float(history[0]["loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "auc", "recall_per_class", "confusion_matrix", "class_names"):
        assert key in metrics, key
    assert np.sum(metrics["confusion_matrix"]) == metrics["images"] == 6 and summary["auc"] == metrics["auc"]
    rows = read_csv(run / "test_predictions.csv")
    splits = json.loads((run / "splits.json").read_text())
    assert [r["file"] for r in rows] == splits["test"] and set(rows[0]) == {"file", "true", "predicted", "bright", "dark"}
    assert cv2.imread(str(run / "confusion_matrix.png")) is not None


def test_predict_csv_and_evaluate_on_a_classification_run(trained, dataset, tmp_path):
    from importlib.machinery import SourceFileLoader

    run, _ = trained
    predict = SourceFileLoader("predict_cls", os.path.join(ROOT, "training", "predict.py")).load_module()
    assert predict.main([str(run), str(dataset), "--output", str(tmp_path / "out")]) == 0
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == ["file", "predicted", "bright", "dark"] and len(rows) == 60
    assert rows[0]["file"] == "bright/img000.png" and rows[0]["predicted"] in ("bright", "dark")
    assert abs(float(rows[0]["bright"]) + float(rows[0]["dark"]) - 1) < 1e-4
    evaluate = SourceFileLoader("evaluate_cls", os.path.join(ROOT, "training", "evaluate.py")).load_module()
    assert evaluate.main([str(run), "--json", str(tmp_path / "eval.json")]) == 0
    ours = json.loads((tmp_path / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert ours["auc"] == pytest.approx(metrics["auc"], abs=1e-6) and ours["confusion_matrix"] == metrics["confusion_matrix"]


# -- export ---------------------------------------------------------------------------------------
def test_int8_export_of_a_classifier_is_scored_and_gated(trained, tmp_path):
    from keras_litenext.export import classification_gate, export_run

    run, _ = trained
    report = export_run(str(run), output=str(tmp_path / "tflite"), qat_epochs=0, qat_retries=0, kinds=["int8", "fp32"],
                        num_calibration=16, verbose=0, log=lambda *a: None)
    assert report["task"] == "classification"
    files = {f["kind"]: f for f in report["files"]}
    assert files["int8"]["output"]["shape"] == [1, 2] and files["int8"]["output"]["dtype"] == "float32"  # MediaPipe's I/O
    assert files["int8"]["input"]["dtype"] == "uint8"
    metrics = json.loads((run / "metrics.json").read_text())
    assert files["fp32"]["test"]["auc"] == pytest.approx(metrics["auc"], abs=1e-4)
    for key in ("accuracy", "balanced_accuracy", "auc", "confusion_matrix"):
        assert key in files["int8"]["test"], key
    gate = report["gate"]
    assert {"max_accuracy_drop_points", "max_auc_drop", "accuracy_drop_points", "auc_drop"} <= set(gate)
    within = gate["accuracy_drop_points"] <= 1.0 and gate["auc_drop"] <= 0.01
    from keras_litenext.tasks import get_task

    at_chance = get_task("classification", class_names=["bright", "dark"]).at_chance(report["keras_float"]["test"])
    assert gate["status"] == ("not verified" if at_chance else "passed" if within else "failed"), gate["message"]
    assert gate["passed"] == (within and not at_chance)  # a float model at chance (this tiny 2-epoch one may be) verifies nothing
    contract = json.loads((tmp_path / "tflite" / f"{report['model']}_int8.json").read_text())
    assert contract["task"] == "classification" and contract["classes"] == {"0": "bright", "1": "dark"}
    assert "arg-max" in contract["output"]["decoding"]
    markdown = (tmp_path / "tflite" / "report.md").read_text()
    assert "accuracy" in markdown and "AUC" in markdown
    # MediaPipe's ImageClassifier loads both files (metadata inside) and ranks as our LiteRT run does
    from keras_litenext.export import load_source, metadata
    from keras_litenext.litert import run_tflite

    if metadata.mediapipe_available():
        images = load_source(str(run)).arrays["test"][0]
        pixels = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # a grey model's files take RGB
        for kind in ("int8", "fp32"):
            path = tmp_path / "tflite" / f"{report['model']}_{kind}.tflite"
            result = metadata.check_mediapipe(path, pixels, "classification")
            assert result["labels"] == ["bright", "dark"]
            assert np.array_equal(result["top"], np.argmax(run_tflite(path, pixels), axis=-1)), kind
    # the gate itself, on made-up numbers: an AUC drop alone fails it
    fake = {"task": "classification", "keras_float": {"test": {"accuracy": 0.90, "auc": 0.95}},
            "files": [{"kind": "int8", "test": {"accuracy": 0.90, "auc": 0.93}}]}
    passed, message = classification_gate(fake, max_accuracy_drop=1.0, max_auc_drop=0.01)
    assert not passed and "AUC" in message
    fake["files"][0]["test"]["auc"] = 0.945
    assert classification_gate(fake, max_accuracy_drop=1.0, max_auc_drop=0.01)[0]


def test_pneumoniamnist_layout_scans(tmp_path):
    """PneumoniaMNIST's layout (train/val/test x normal/pneumonia, 28x28 grey 8-bit PNGs), written
    here with random pixels: the scan reads the official split and the files' size."""
    rng = np.random.default_rng(3)
    for split in ("train", "val", "test"):
        for name in ("normal", "pneumonia"):
            os.makedirs(tmp_path / split / name)
            for i in range(3):
                cv2.imwrite(str(tmp_path / split / name / f"{split}_{i}_0.png"), rng.integers(0, 256, (28, 28), dtype=np.uint8))
    assert C.probe_size(tmp_path) == (28, 28)
    data = C.load_image_folder(tmp_path, 32, channels=1)
    assert data.class_names == ("normal", "pneumonia") and data.images.shape == (18, 32, 32, 1)
    split = C.split_images(data.stems, data.labels)
    assert [len(split[s]) for s in ("train", "val", "test")] == [6, 6, 6]
