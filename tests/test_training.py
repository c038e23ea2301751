"""Training end to end on tiny synthetic data: artifacts, loss going down, resume, NaN, SeRP,
multi-device, the CLIs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import keras
import numpy as np
import pytest
from conftest import run_python

import keras_litenext as kl
from keras_litenext.train import (
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    TrainConfig,
    train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(model_kwargs={"width": 8}, image_size=32, batch_size=4, verbose=0, mwl_kernel=3)


def make_dataset(folder, n=20, size=32, seed=0):
    """Bright discs on a noisy dark background; the mask is the discs."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "masks", exist_ok=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 4)):
            c = rng.integers(6, size - 6, 2)
            cv2.circle(mask, (int(c[0]), int(c[1])), int(rng.integers(3, 7)), 255, -1)
        image = rng.normal(40, 10, (size, size, 3)) + (mask[..., None] > 0) * 150
        cv2.imwrite(str(folder / "images" / f"img{i:03d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"img{i:03d}.png"), mask)
    return folder


def read_history(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=16)


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    summary = train(TrainConfig(data=str(dataset), output=str(run), epochs=4, lr=3e-3, **TINY))
    return run, summary


def test_fit_writes_a_complete_run_and_lowers_the_loss(dataset, trained_run):
    run, summary = trained_run
    for name in ("config.json", "splits.json", "best.keras", "history.csv", "metrics.json", "curves.png", "test_overlays.png",
                 "model_card.md"):
        assert (run / name).exists(), name
    card = (run / "model_card.md").read_text()
    assert card.startswith("# Model card: litenext") and "arXiv" in card and "reconstruction" not in card
    assert f"Dice {summary['dice']['mean']:.4f}" in card and "train 12, val 2, test 2" in card
    assert os.listdir(run / "logs"), "TensorBoard logs"
    assert not (run / "backup").exists(), "backup state is removed after a finished run"
    history = read_history(run)
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == [f"img{i:03d}" for i in range(16)]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == len(splits["test"]) and 0 <= metrics["dice"]["mean"] <= 1
    assert summary["dice"]["mean"] == metrics["dice"]["mean"]
    model = keras.saving.load_model(run / "best.keras")
    assert model.count_params() == kl.LiteNeXt(input_shape=(32, 32, 3), width=8).count_params()
    # a fresh process loads it after nothing but `import keras_litenext` (custom loss and metrics registered)
    loaded = run_python(f"import keras, keras_litenext; print(keras.saving.load_model({str(run / 'best.keras')!r}).count_params())",
                        backend="tensorflow")
    assert loaded.returncode == 0 and loaded.stdout.split()[-1] == str(model.count_params()), loaded.stderr[-2000:]
    # the run folder is not overwritten by accident
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(data=str(dataset), output=str(run), epochs=1, **TINY))


def test_resume_after_kill_continues_from_the_last_epoch(dataset, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "training", "fit.py"), "--data", str(dataset), "--output", str(run),
           "--image-size", "32", "--epochs", "3", "--batch-size", "1", "--quiet", "--config", str(tmp_path / "c.json")]
    (tmp_path / "c.json").write_text(json.dumps({"model_kwargs": {"width": 8}, "mwl_kernel": 3}))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list((run / "backup").glob("epoch-*.weights.h5")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = max(int(p.name.split("-")[1].split(".")[0]) for p in (run / "backup").glob("epoch-*.weights.h5"))
    assert done >= 1 and not (run / "metrics.json").exists()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Epoch 1/3" not in resumed.stdout, "the resumed run started again from scratch"
    assert f"Epoch {done + 1}/3" in resumed.stdout
    epochs = [int(r["epoch"]) for r in read_history(run)]
    assert epochs[-1] == 2 and set(epochs) == {0, 1, 2}
    assert (run / "metrics.json").exists()


def test_nan_loss_stops_before_the_backup_is_overwritten(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((16, 8), dtype=np.float32)
    y = x.sum(1, keepdims=True)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[StopOnNonFiniteLoss(), backup])
    good = [w.copy() for w in model.get_weights()]
    # make the backup survive the end of a successful fit, as it does after a crash
    backup.delete_checkpoint = False
    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[StopOnNonFiniteLoss(), backup])
    saved = [w.copy() for w in model.get_weights()]
    x_bad = x.copy()
    x_bad[5] = np.nan
    with pytest.raises(NonFiniteLossError, match="loss became nan at batch 2"):
        model.fit(x_bad, y, epochs=4, initial_epoch=3, batch_size=4, verbose=0, shuffle=False,
                  callbacks=[StopOnNonFiniteLoss(), backup])
    fresh = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    fresh.compile("sgd", "mse")
    fresh.build((None, 8))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    restored = fresh.get_weights()
    assert all(np.isfinite(w).all() for w in restored)
    assert all(np.allclose(a, b) for a, b in zip(restored, saved))
    assert not all(np.allclose(a, b) for a, b in zip(good, saved))


def test_serp_trains_and_leaves_the_inference_model_plain(dataset, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data=str(dataset), output=str(run), epochs=1, serp=True, **TINY))
    model = keras.saving.load_model(run / "best.keras")
    plain = kl.LiteNeXt(input_shape=(32, 32, 3), width=8)
    assert model.count_params() == plain.count_params()
    assert [layer.name for layer in model.layers] == [layer.name for layer in plain.layers]
    assert [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in plain.weights]


def test_serp_adds_its_loss_and_updates_the_teacher():
    from keras_litenext.serp import build_serp_model

    model = kl.LiteNeXt(input_shape=(32, 32, 3), width=8)
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    y = (x[..., :1] > 0.5).astype("float32")
    losses = {}
    for weight in (0.0, 1.0):
        train_model, ema = build_serp_model(model, weight=weight)
        train_model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        losses[weight] = train_model.evaluate([x, x[:, ::-1]], y, verbose=0)
    assert losses[1.0] > losses[0.0] + 1e-4
    train_model, ema = build_serp_model(model, weight=1.0, decay=0.5)
    train_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    teacher = train_model.get_layer("teacher_encoder")
    before = [w.copy() for w in teacher.get_weights()]
    train_model.fit([x, x[:, ::-1]], y, batch_size=4, epochs=1, verbose=0, callbacks=[ema])
    student = train_model.get_layer("student_encoder").get_weights()
    after = teacher.get_weights()
    # one step with decay 0.5: teacher = (old + student) / 2
    for b, a, s in zip(before, after, student):
        np.testing.assert_allclose(a, 0.5 * b + 0.5 * s, atol=1e-6)


def test_mirrored_strategy_on_two_logical_cpus(dataset, tmp_path):
    result = run_python(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_litenext.train import TrainConfig, train
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        s = train(TrainConfig(data={str(dataset)!r}, output={str(tmp_path / 'run')!r}, epochs=1,
                              model_kwargs={{"width": 8}}, image_size=32, batch_size=4, verbose=0), strategy=strategy)
        print("dice", s["dice"]["mean"])
    """, backend="tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dice" in result.stdout and (tmp_path / "run" / "best.keras").exists()


def test_training_on_the_jax_backend(dataset, tmp_path):
    pytest.importorskip("jax")
    result = run_python(f"""
        import keras
        assert keras.backend.backend() == "jax"
        from keras_litenext.train import TrainConfig, train
        s = train(TrainConfig(data={str(dataset)!r}, output={str(tmp_path / 'run')!r}, epochs=1,
                              model_kwargs={{"width": 8}}, image_size=32, batch_size=4, verbose=0))
        print("dice", s["dice"]["mean"])
    """, backend="jax")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "best.keras").exists() and (tmp_path / "run" / "metrics.json").exists()


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    from importlib.machinery import SourceFileLoader

    fit = SourceFileLoader("fit", os.path.join(ROOT, "training", "fit.py")).load_module()
    data = make_dataset(tmp_path / "data", n=6)
    os.remove(data / "masks" / "img003.png")
    assert fit.main(["--data", str(data), "--output", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error:") and "img003" in "\n".join(err)
    assert "Traceback" not in "\n".join(err)


def test_evaluate_and_predict_clis(trained_run, tmp_path):
    from importlib.machinery import SourceFileLoader

    run, _ = trained_run
    evaluate = SourceFileLoader("evaluate", os.path.join(ROOT, "training", "evaluate.py")).load_module()
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    assert evaluate.main([str(tmp_path / "broken.keras"), "--data", str(run)]) == 1
    assert evaluate.main([str(run), "--json", str(tmp_path / "eval.json")]) == 0
    ours = json.loads((tmp_path / "eval.json").read_text())
    assert ours["dice"]["mean"] == pytest.approx(json.loads((run / "metrics.json").read_text())["dice"]["mean"], abs=1e-6)
    # at native resolution: the 32x32 images are the training size, so every mode scores alike
    for mode in ("resize", "pad", "tile"):
        assert evaluate.main([str(run), "--mode", mode, "--json", str(tmp_path / f"{mode}.json")]) == 0
        native = json.loads((tmp_path / f"{mode}.json").read_text())
        assert native["mode"] == mode and native["dice"]["mean"] == pytest.approx(ours["dice"]["mean"], abs=1e-6)
    predict = SourceFileLoader("predict", os.path.join(ROOT, "training", "predict.py")).load_module()
    big = tmp_path / "big"
    big.mkdir()
    cv2.imwrite(str(big / "a.png"), np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for mode in ("resize", "pad", "tile"):
        out = tmp_path / f"pred_{mode}"
        assert predict.main([str(run), str(big), "--output", str(out), "--mode", mode]) == 0
        mask = cv2.imread(str(out / "a_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
        assert (out / "a_overlay.png").exists()


def test_best_keras_is_the_best_validation_epoch(trained_run):
    """best.keras must hold the epoch with the highest val_dice, not the last one: re-scoring it
    on the val split with the same streaming metric gives the history's maximum."""
    from keras_litenext.runs import Run

    run_dir, _ = trained_run
    run = Run.open(run_dir)
    history = read_history(run_dir)
    val = [float(r["val_dice"]) for r in history]
    model = run.load_model()
    model.compile(metrics=run.task.metrics())
    from keras_litenext.train import build_datasets

    _, val_ds = build_datasets(run.config, run.arrays())
    score = model.evaluate(val_ds, verbose=0, return_dict=True)["dice"]
    assert score == pytest.approx(max(val), abs=1e-5)
    best_epoch = int(np.argmax(val))
    if any(abs(v - max(val)) > 1e-4 for v in val[best_epoch + 1:]):
        assert score != pytest.approx(val[-1], abs=1e-4)


def make_multiclass_dataset(folder, n=20, size=32, seed=1):
    """Discs (class 1, "nucleus") with a 2-pixel rim (class 2, "rim"); classes.json beside them."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "masks", exist_ok=True)
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 3)):
            c, r = rng.integers(8, size - 8, 2), int(rng.integers(4, 7))
            cv2.circle(label, (int(c[0]), int(c[1])), r, 2, -1)
            cv2.circle(label, (int(c[0]), int(c[1])), r - 2, 1, -1)
        image = rng.normal(30, 8, (size, size, 3)) + (label[..., None] == 1) * 180 + (label[..., None] == 2) * 90
        cv2.imwrite(str(folder / "images" / f"img{i:03d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"img{i:03d}.png"), label)
    (folder / "classes.json").write_text(json.dumps({"0": "background", "1": "nucleus", "2": "rim"}))
    return folder


def test_multiclass_run_end_to_end_with_evaluate_and_predict(tmp_path):
    """A 3-class dataset with classes.json trains a 3-logit model; metrics, evaluation and
    prediction carry the class names; predict writes class-index masks at the input's size."""
    from importlib.machinery import SourceFileLoader

    data = make_multiclass_dataset(tmp_path / "data", n=20)
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(data), output=str(run), epochs=3, lr=3e-3, **TINY))
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "multiclass" and config["class_names"] == ["background", "nucleus", "rim"]
    assert keras.saving.load_model(run / "best.keras").output_shape[-1] == 3
    history = read_history(run)
    assert {"val_dice", "val_dice_nucleus", "val_dice_rim"} <= set(history[0])
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("dice", "hd95", "dice_nucleus", "dice_rim", "iou_rim"):
        assert key in metrics and key in metrics["per_image"], key
    assert summary["class_names"] == ["background", "nucleus", "rim"]

    evaluate = SourceFileLoader("evaluate", os.path.join(ROOT, "training", "evaluate.py")).load_module()
    assert evaluate.main([str(run), "--json", str(tmp_path / "eval.json")]) == 0
    ours = json.loads((tmp_path / "eval.json").read_text())
    assert ours["dice_rim"]["mean"] == pytest.approx(metrics["dice_rim"]["mean"], abs=1e-6)
    predict = SourceFileLoader("predict", os.path.join(ROOT, "training", "predict.py")).load_module()
    big = make_multiclass_dataset(tmp_path / "big", n=1, size=48, seed=5) / "images"
    for mode in ("resize", "pad", "tile"):
        out = tmp_path / f"pred_{mode}"
        assert predict.main([str(run), str(big), "--output", str(out), "--mode", mode]) == 0
        mask = cv2.imread(str(out / "img000_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 1, 2}
        overlay = cv2.imread(str(out / "img000_overlay.png"))
        assert overlay.shape[0] > 48 and overlay.shape[1] == 48  # the legend strip below the picture
