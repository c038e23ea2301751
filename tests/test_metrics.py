"""Tests of keras_litenext.metrics against hand-computed values and an independent per-image loop."""

import json
import math
import pathlib
import re
import textwrap

import keras
import numpy as np
import pytest
from conftest import run_python

from keras_litenext import metrics as M
from keras_litenext.metrics import (
    OVERLAP_METRICS,
    DiceScore,
    IoUScore,
    PrecisionScore,
    RecallScore,
    evaluate_model,
    get_metrics,
    per_image_scores,
    summarize,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = {"dice": DiceScore, "iou": IoUScore, "precision": PrecisionScore, "recall": RecallScore}


# ----------------------------------------------------------------------------------------------
# Independent reference: one image at a time, sets of pixels
# ----------------------------------------------------------------------------------------------
def ref_scores(masks, outputs, threshold=0.5, empty="skip", from_logits=True):
    out = {name: [] for name in OVERLAP_METRICS}
    for mask, output in zip(masks, outputs):
        prob = 1.0 / (1.0 + np.exp(-output.astype(np.float64))) if from_logits else output.astype(np.float64)
        g = set(np.flatnonzero(mask.ravel() > 0.5))
        p = set(np.flatnonzero(prob.ravel() > threshold))
        if not g:
            value = math.nan if empty == "skip" else (1.0 if not p else 0.0)
            for name in OVERLAP_METRICS:
                out[name].append(value)
            continue
        inter = len(g & p)
        out["dice"].append(2 * inter / (len(p) + len(g)))
        out["iou"].append(inter / len(g | p))
        out["precision"].append(inter / len(p) if p else 0.0)
        out["recall"].append(inter / len(g))
    return {name: np.array(values) for name, values in out.items()}


def ref_means(masks, outputs, **kwargs):
    scores = ref_scores(masks, outputs, **kwargs)
    return {name: (float(np.nanmean(v)) if np.any(~np.isnan(v)) else 0.0) for name, v in scores.items()}


def random_set(seed, n=12, size=10):
    """Masks and logits with every special case: empty ground truth predicted empty and not,
    empty prediction of a non-empty mask, and ordinary images."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, size, size, 1)) > 0.6).astype(np.float32)
    z = (2.5 * rng.normal(size=y.shape) + 1.5 * (y - 0.5)).astype(np.float32)
    y[0] = 0
    z[0] = -abs(z[0]) - 0.1  # empty ground truth, empty prediction
    y[1] = 0  # empty ground truth, non-empty prediction
    z[2] = -abs(z[2]) - 0.1  # empty prediction of a non-empty mask
    y[3], z[3] = 0, -abs(z[3]) - 0.1
    return y, z


def stream(metric, y, z, sizes=(4, 3, 5), sample_weight=None):
    start = 0
    for size in sizes:
        sw = None if sample_weight is None else sample_weight[start : start + size]
        metric.update_state(y[start : start + size], z[start : start + size], sample_weight=sw)
        start += size
    assert start == len(y)
    return float(metric.result())


# ----------------------------------------------------------------------------------------------
# Hand-computed values
# ----------------------------------------------------------------------------------------------
def hand_case():
    g = np.zeros((2, 4, 4, 1), np.float32)
    z = np.full((2, 4, 4, 1), -3.0, np.float32)
    g[0, 0, 0:4] = 1  # |G| = 4
    z[0, 0, 1:4] = 2.0  # 3 true positives
    z[0, 1, 0:3] = 0.5  # 3 false positives -> |P| = 6
    g[1, 2:4, 2:4] = 1  # |G| = 4, perfectly predicted
    z[1, 2:4, 2:4] = 4.0
    return g, z


def test_hand_computed_per_image_and_streaming():
    g, z = hand_case()
    expected = {"dice": [0.6, 1.0], "iou": [3 / 7, 1.0], "precision": [0.5, 1.0], "recall": [0.75, 1.0]}
    scores = per_image_scores(g, z)
    for name in OVERLAP_METRICS:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-12)
        metric = CLASSES[name]()
        metric.update_state(g, z)
        assert float(metric.result()) == pytest.approx(np.mean(expected[name]), abs=1e-6)


def test_threshold_is_strict_and_applies_to_probabilities():
    g = np.ones((1, 1, 4, 1), np.float32)
    z = np.array([0.0, 1e-3, -1e-3, 5.0], np.float32).reshape(1, 1, 4, 1)  # sigmoid(0) = 0.5 is not > 0.5
    assert per_image_scores(g, z)["recall"][0] == pytest.approx(0.5)
    metric = RecallScore()
    metric.update_state(g, z)
    assert float(metric.result()) == pytest.approx(0.5)
    probs = np.array([0.5, 0.69, 0.71, 0.9], np.float32).reshape(1, 1, 4, 1)
    assert per_image_scores(g, probs, threshold=0.7, from_logits=False)["recall"][0] == pytest.approx(0.5)
    metric = RecallScore(threshold=0.7, from_logits=False)
    metric.update_state(g, probs)
    assert float(metric.result()) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# NumPy evaluation against the reference loop
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["skip", "score"])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_per_image_scores_vs_reference(empty, threshold):
    y, z = random_set(0)
    got = per_image_scores(y, z, threshold=threshold, empty=empty)
    ref = ref_scores(y, z, threshold=threshold, empty=empty)
    for name in OVERLAP_METRICS:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, equal_nan=True)
    probs = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    got_p = per_image_scores(y, probs, threshold=threshold, empty=empty, from_logits=False)
    for name in OVERLAP_METRICS:
        np.testing.assert_allclose(got_p[name], ref[name], rtol=1e-12, equal_nan=True)


def test_empty_ground_truth_policies():
    y, z = random_set(1)
    skip = per_image_scores(y, z, empty="skip")
    score = per_image_scores(y, z, empty="score")
    for name in OVERLAP_METRICS:
        assert np.isnan(skip[name][[0, 1, 3]]).all() and not np.isnan(skip[name][2:3]).any()
        assert score[name][0] == 1.0 and score[name][3] == 1.0  # empty predicted empty
        assert score[name][1] == 0.0  # empty predicted non-empty
    assert skip["precision"][2] == 0.0 and skip["recall"][2] == 0.0 and skip["dice"][2] == 0.0


def test_summarize():
    s = summarize({"dice": np.array([0.5, np.nan, 1.0]), "iou": np.array([0.25, np.nan, 1.0])})
    assert s["dice"] == {"mean": 0.75, "std": 0.25}
    assert s["iou"]["mean"] == pytest.approx(0.625) and s["iou"]["std"] == pytest.approx(0.375)
    assert (s["images"], s["counted"], s["skipped_empty"]) == (3, 2, 1)
    none = summarize({"dice": np.array([np.nan, np.nan])})
    assert math.isnan(none["dice"]["mean"]) and none["counted"] == 0 and none["skipped_empty"] == 2


# ----------------------------------------------------------------------------------------------
# Streaming metrics
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["skip", "score"])
def test_streaming_equals_mean_of_per_image_scores(empty):
    y, z = random_set(2)
    ref = ref_means(y, z, empty=empty)
    summary = summarize(per_image_scores(y, z, empty=empty))
    for name in OVERLAP_METRICS:
        got = stream(CLASSES[name](empty=empty), y, z)
        assert got == pytest.approx(ref[name], abs=1e-6)
        assert got == pytest.approx(summary[name]["mean"], abs=1e-6)


def test_streaming_threshold_probabilities_and_sample_weight():
    y, z = random_set(3)
    probs = (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)
    ref = ref_scores(y, z, threshold=0.3)
    sw = np.random.default_rng(0).random(len(y)).astype(np.float32)
    for name in OVERLAP_METRICS:
        assert stream(CLASSES[name](threshold=0.3), y, z) == pytest.approx(np.nanmean(ref[name]), abs=1e-6)
        metric = CLASSES[name](threshold=0.3, from_logits=False)
        assert stream(metric, y, probs) == pytest.approx(np.nanmean(ref[name]), abs=1e-6)
        valid = ~np.isnan(ref[name])
        weighted = (sw[valid] * ref[name][valid]).sum() / sw[valid].sum()
        assert stream(CLASSES[name](threshold=0.3), y, z, sample_weight=sw) == pytest.approx(weighted, abs=1e-6)


def test_skip_policy_with_only_empty_masks_and_reset():
    metric = DiceScore()
    empty_y = np.zeros((3, 6, 6, 1), np.float32)
    metric.update_state(empty_y, np.ones_like(empty_y))
    assert float(metric.result()) == 0.0 and float(metric.count) == 0.0
    y, z = random_set(4)
    stream(metric, y, z)
    assert float(metric.result()) == pytest.approx(ref_means(y, z)["dice"], abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0 and float(metric.count) == 0.0 and float(metric.total) == 0.0
    y2, z2 = random_set(5)
    assert stream(metric, y2, z2) == pytest.approx(ref_means(y2, z2)["dice"], abs=1e-6)


def test_masks_without_channel_axis():
    y, z = random_set(6)
    metric = IoUScore()
    metric.update_state(y[..., 0], z)
    assert float(metric.result()) == pytest.approx(ref_means(y, z)["iou"], abs=1e-6)
    np.testing.assert_allclose(per_image_scores(y[..., 0], z)["iou"], ref_scores(y, z)["iou"], equal_nan=True)


def test_config_round_trip_and_registry():
    for name in OVERLAP_METRICS:
        metric = CLASSES[name](threshold=0.3, from_logits=False, empty="score")
        assert metric.name == name
        blob = keras.saving.serialize_keras_object(metric)
        assert blob["registered_name"] == f"keras_litenext>{type(metric).__name__}"
        restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
        assert type(restored) is type(metric) and restored.get_config() == metric.get_config()
    built = get_metrics(empty="score")
    assert [m.name for m in built] == list(OVERLAP_METRICS) and all(m.empty == "score" for m in built)
    assert [type(m) for m in get_metrics("iou")] == [IoUScore]
    with pytest.raises(ValueError, match="dice, iou, precision, recall"):
        get_metrics(["dice", "hausdorff"])
    with pytest.raises(ValueError, match="empty"):
        DiceScore(empty="ignore")
    with pytest.raises(ValueError, match="empty"):
        per_image_scores(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), empty="zero")
    with pytest.raises(ValueError, match="same images"):
        per_image_scores(np.zeros((2, 4, 4)), np.zeros((2, 3, 3)))


# ----------------------------------------------------------------------------------------------
# Keras training loop and model evaluation
# ----------------------------------------------------------------------------------------------
def identity_model(size=10):
    return keras.Sequential([keras.Input((size, size, 1)), keras.layers.Identity()])


@pytest.mark.parametrize("empty,jit", [("skip", True), ("score", False)])
def test_compiled_metrics_in_evaluate(empty, jit):
    y, z = random_set(7)
    model = identity_model()
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(loss=loss, metrics=get_metrics(empty=empty), jit_compile=jit)
    result = model.evaluate(z, y, batch_size=5, verbose=0, return_dict=True)  # batches of 5, 5, 2
    ref = ref_means(y, z, empty=empty)
    for name in OVERLAP_METRICS:
        assert result[name] == pytest.approx(ref[name], abs=1e-6)


def test_evaluate_model_on_arrays_datasets_and_batches():
    y, z = random_set(8)
    model = identity_model()
    ref = ref_scores(y, z)
    batches = [(z[i : i + 5], y[i : i + 5]) for i in range(0, len(y), 5)]
    results = [
        evaluate_model(model, (z, y), batch_size=5),
        evaluate_model(model, batches),
        evaluate_model(model, [(z[i], y[i]) for i in range(len(y))]),  # unbatched elements
    ]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        results.append(evaluate_model(model, tf.data.Dataset.from_tensor_slices((z, y)).batch(5)))
    for result in results:
        assert (result["images"], result["counted"], result["skipped_empty"]) == (12, 9, 3)
        for name in OVERLAP_METRICS:
            valid = ref[name][~np.isnan(ref[name])]
            assert result[name]["mean"] == pytest.approx(valid.mean(), abs=1e-9)
            assert result[name]["std"] == pytest.approx(valid.std(), abs=1e-9)
            np.testing.assert_allclose(result["per_image"][name], ref[name], equal_nan=True)
    scored = evaluate_model(model, (z, y), empty="score")
    assert scored["counted"] == 12
    assert scored["dice"]["mean"] == pytest.approx(np.mean(ref_scores(y, z, empty="score")["dice"]))


# ----------------------------------------------------------------------------------------------
# JAX backend
# ----------------------------------------------------------------------------------------------
JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax"
    from keras_litenext.metrics import get_metrics
    data = np.load(sys.argv[1])
    y, z = data["y"], data["z"]
    out = {}
    for empty in ("skip", "score"):
        streamed = {}
        for metric in get_metrics(empty=empty):
            for start in range(0, len(y), 5):
                metric.update_state(y[start:start + 5], z[start:start + 5])
            streamed[metric.name] = float(metric.result())
        model = keras.Sequential([keras.Input(y.shape[1:]), keras.layers.Identity()])
        model.compile(loss="mse", metrics=get_metrics(empty=empty), jit_compile=True)
        evaluated = model.evaluate(z, y, batch_size=5, verbose=0, return_dict=True)
        out[empty] = {"stream": streamed, "evaluate": {k: float(evaluated[k]) for k in streamed}}
    labels, z3 = data["labels"], data["z3"]
    model = keras.Sequential([keras.Input(z3.shape[1:]), keras.layers.Identity()])
    model.compile(loss="mse", metrics=get_metrics(num_classes=4), jit_compile=True)
    evaluated = model.evaluate(z3, labels[..., None], batch_size=4, verbose=0, return_dict=True)
    out["multiclass"] = {k: float(v) for k, v in evaluated.items() if k != "loss"}
    print("RESULT" + json.dumps(out))
    """
)


def test_metrics_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    y, z = random_set(9)
    labels, z3 = random_multiclass(14)
    np.savez(tmp_path / "data.npz", y=y, z=z, labels=labels, z3=z3)
    proc = run_python(JAX_SCRIPT, args=[tmp_path / "data.npz"], cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT") :])
    for empty in ("skip", "score"):
        ref = ref_means(y, z, empty=empty)
        for name in OVERLAP_METRICS:
            assert out[empty]["stream"][name] == pytest.approx(ref[name], abs=1e-5)
            assert out[empty]["evaluate"][name] == pytest.approx(ref[name], abs=1e-5)
    scores = per_image_scores(labels, z3, hd95=False)
    assert set(out["multiclass"]) == {"dice", "iou", "precision", "recall", "dice_class1", "dice_class2", "dice_class3"}
    for key, value in out["multiclass"].items():
        assert value == pytest.approx(np.nanmean(scores[key]), abs=1e-5), key


def test_module_uses_keras_only():
    modules = sorted(pathlib.Path(M.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        source = module.read_text()
        assert not re.search(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", source, re.M), module.name
        assert "tf.keras" not in source and "import_module" not in source, module.name


# ----------------------------------------------------------------------------------------------
# HD95
# ----------------------------------------------------------------------------------------------
def brute_hd95(truth, prediction):
    """Surfaces by an explicit 8-neighbour test (outside the image is outside), pairwise distances."""

    def surface(mask):
        padded = np.pad(mask, 1, constant_values=False)
        h, w = mask.shape
        all_in = np.ones_like(mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                all_in &= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        return np.argwhere(mask & ~all_in).astype(np.float64)

    a, b = surface(prediction), surface(truth)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_hd95_hand_values():
    a, b = square((30, 30), 5, 5, 10), square((30, 30), 5, 8, 10)  # shifted by 3 px
    assert M.hausdorff95(a, b) == pytest.approx(3.0, abs=1e-6)
    assert M.hausdorff95(b, a) == pytest.approx(3.0, abs=1e-6)
    assert M.hausdorff95(a, a) == 0.0
    assert M.hausdorff95(a, b, spacing=(0.5, 0.5)) == pytest.approx(1.5, abs=1e-6)
    assert M.hausdorff95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0, abs=1e-6)  # shift along columns
    assert M.hausdorff95(a, b, spacing=(2.0, 1.0)) == pytest.approx(3.0, abs=1e-6)
    # Percentile, not maximum: one far pixel among 44 + 1 predicted surface pixels is ignored...
    gt = square((40, 40), 2, 2, 12)
    pred = gt.copy()
    pred[35, 35] = True
    assert M.hausdorff95(gt, pred) == 0.0
    # ... and NumPy's linear interpolation: prediction-to-truth distances [0, 4] -> 0.95 * 4.
    gt = np.zeros((9, 9), bool)
    gt[4, 2] = True
    pred = gt.copy()
    pred[4, 6] = True
    assert M.hausdorff95(gt, pred) == pytest.approx(3.8, abs=1e-6)
    # Pixels on the image edge are surface: a full-image truth vs all but its last column.
    full = np.ones((10, 10), bool)
    cut = full.copy()
    cut[:, 9] = False
    assert M.hausdorff95(full, cut) == pytest.approx(1.0, abs=1e-6)
    assert M.hausdorff95(full, full) == 0.0


def test_hd95_empty_rules():
    some = square((30, 40), 3, 3, 5)
    none = np.zeros((30, 40), bool)
    assert math.isnan(M.hausdorff95(none, some)) and math.isnan(M.hausdorff95(none, none))
    assert M.hausdorff95(some, none) == pytest.approx(50.0)  # diagonal sqrt(30² + 40²)
    assert M.hausdorff95(some, none, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(60, 20))
    assert M.hausdorff95(none, none, empty="score") == 0.0
    assert M.hausdorff95(none, some, empty="score") == pytest.approx(50.0)
    assert M.hausdorff95(some, none, empty="score") == pytest.approx(50.0)


def test_hd95_random_vs_brute_force_and_per_image_scores():
    y, z = random_set(10, n=8, size=16)
    scores = per_image_scores(y, z)
    gt, pred = y[..., 0] > 0.5, z[..., 0] > 0
    for i in range(len(y)):
        if not gt[i].any():
            assert math.isnan(scores["hd95"][i])
        elif not pred[i].any():
            assert scores["hd95"][i] == pytest.approx(math.hypot(16, 16))
        else:
            assert scores["hd95"][i] == pytest.approx(brute_hd95(gt[i], pred[i]), abs=1e-4)
    assert list(scores) == ["dice", "iou", "precision", "recall", "hd95"]
    assert list(per_image_scores(y, z, hd95=False)) == list(OVERLAP_METRICS)
    scored = per_image_scores(y, z, empty="score")["hd95"]
    assert scored[0] == 0.0 and scored[1] == pytest.approx(math.hypot(16, 16))


# ----------------------------------------------------------------------------------------------
# Multi-class
# ----------------------------------------------------------------------------------------------
def one_hot_logits(pred_labels, k, scale=4.0):
    return (scale * (pred_labels[..., None] == np.arange(k))).astype(np.float32)


def hand_multiclass():
    """Three 4 x 6 images of 3 classes, every value below worked out by hand."""
    gt = np.zeros((3, 4, 6), np.int64)
    pred = np.zeros((3, 4, 6), np.int64)
    gt[0, 0, 0:4] = 1  # |G1| = 4
    pred[0, 0, 1:4] = 1
    pred[0, 1, 0:3] = 1  # |P1| = 6, 3 true positives: Dice 0.6, IoU 3/7, precision 0.5, recall 0.75
    gt[0, 2:4, 4:6] = 2
    pred[0, 2:4, 4:6] = 2  # class 2 perfect
    gt[1, 0:2, 0:2] = 2  # |G2| = 4
    pred[1, 0:2, 0:1] = 2  # |P2| = 2: Dice 2/3, IoU 1/2, precision 1, recall 1/2
    pred[1, 3, 5] = 1  # class 1 absent from the truth: not counted
    pred[2, 1, 1] = 1  # image without foreground: not counted
    return gt, one_hot_logits(pred, 3)


def test_multiclass_hand_per_image_scores():
    gt, z = hand_multiclass()
    nan = math.nan
    s = per_image_scores(gt[..., None].astype(np.float32), z, class_names=["bg", "Cell", "Edge"])
    expected = {
        "dice_cell": [0.6, nan, nan],
        "dice_edge": [1.0, 2 / 3, nan],
        "iou_cell": [3 / 7, nan, nan],
        "iou_edge": [1.0, 0.5, nan],
        "precision_cell": [0.5, nan, nan],
        "precision_edge": [1.0, 1.0, nan],
        "recall_cell": [0.75, nan, nan],
        "recall_edge": [1.0, 0.5, nan],
        "hd95_cell": [1.0, nan, nan],  # P->G distances [0,0,0,1,1,1] -> 1; G->P [1,0,0,0] -> 0.85
        "hd95_edge": [0.0, 1.0, nan],  # image 1: G->P [0,0,1,1] -> 1
        "dice": [0.8, 2 / 3, nan],
        "iou": [(3 / 7 + 1) / 2, 0.5, nan],
        "precision": [0.75, 1.0, nan],
        "recall": [0.875, 0.5, nan],
        "hd95": [0.5, 1.0, nan],
    }
    assert list(s)[:5] == ["dice", "iou", "precision", "recall", "hd95"]
    assert set(s) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(s[key], values, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=key)
    # Integer maps without a channel axis, and probabilities, give the same.
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    s2 = per_image_scores(gt, probs, from_logits=False, class_names=["bg", "Cell", "Edge"])
    for key in expected:
        np.testing.assert_allclose(s2[key], s[key], equal_nan=True)
    # "score": an absent class scores 1 if not predicted, else 0; every image counts.
    sc = per_image_scores(gt, z, empty="score", hd95=False)
    np.testing.assert_allclose(sc["dice"], [0.8, (0 + 2 / 3) / 2, (0 + 1) / 2])
    np.testing.assert_allclose(sc["dice_class1"], [0.6, 0.0, 0.0])
    summary = summarize(s)
    assert (summary["images"], summary["counted"], summary["skipped_empty"]) == (3, 2, 1)
    assert summary["dice"]["mean"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert summary["dice_cell"]["mean"] == pytest.approx(0.6)


def test_multiclass_hand_streaming():
    gt, z = hand_multiclass()
    expected = {
        "dice": (0.8 + 2 / 3) / 2,
        "iou": ((3 / 7 + 1) / 2 + 0.5) / 2,
        "precision": (0.75 + 1.0) / 2,
        "recall": (0.875 + 0.5) / 2,
        "dice_class1": 0.6,
        "dice_class2": (1 + 2 / 3) / 2,
    }
    metrics = get_metrics(num_classes=3)
    assert [m.name for m in metrics] == list(expected)
    for metric in metrics:
        metric.update_state(gt[:2, ..., None].astype(np.float32), z[:2])
        metric.update_state(gt[2:], z[2:])
        assert float(metric.result()) == pytest.approx(expected[metric.name], abs=1e-6), metric.name
    scored = {m.name: m for m in get_metrics(num_classes=3, empty="score", threshold=0.3, from_logits=False)}
    for metric in scored.values():
        metric.update_state(gt, z)
    assert float(scored["dice"].result()) == pytest.approx((0.8 + 1 / 3 + 0.5) / 3, abs=1e-6)
    assert float(scored["dice_class1"].result()) == pytest.approx(0.2, abs=1e-6)


def ref_multiclass(labels, pred, k, empty="skip"):
    """Per image: mean over the present foreground classes of the set-based binary scores."""
    out = {name: [] for name in OVERLAP_METRICS}
    for g_img, p_img in zip(labels, pred):
        per_class = {name: [] for name in OVERLAP_METRICS}
        for c in range(1, k):
            g = set(np.flatnonzero(g_img.ravel() == c))
            p = set(np.flatnonzero(p_img.ravel() == c))
            if not g:
                if empty == "score":
                    for name in OVERLAP_METRICS:
                        per_class[name].append(1.0 if not p else 0.0)
                continue
            inter = len(g & p)
            per_class["dice"].append(2 * inter / (len(g) + len(p)))
            per_class["iou"].append(inter / len(g | p))
            per_class["precision"].append(inter / len(p) if p else 0.0)
            per_class["recall"].append(inter / len(g))
        for name in OVERLAP_METRICS:
            out[name].append(np.mean(per_class[name]) if per_class[name] else math.nan)
    return {name: np.array(v) for name, v in out.items()}


def random_multiclass(seed, n=12, size=12, k=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, (n, size, size))
    labels[0] = 0  # no foreground at all
    labels[1] = np.where(labels[1] == 2, 0, labels[1])  # class 2 absent
    z = (2.0 * rng.normal(size=(n, size, size, k)) + 1.5 * (labels[..., None] == np.arange(k))).astype(np.float32)
    return labels, z


@pytest.mark.parametrize("empty", ["skip", "score"])
def test_multiclass_random_vs_reference_and_streaming(empty):
    labels, z = random_multiclass(11)
    ref = ref_multiclass(labels, z.argmax(-1), 4, empty=empty)
    got = per_image_scores(labels[..., None], z, empty=empty, hd95=False)
    sw = np.random.default_rng(1).random(len(labels)).astype(np.float32)
    for name in OVERLAP_METRICS:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, equal_nan=True)
    for metric in get_metrics(num_classes=4, empty=empty):
        key = metric.name
        streamed = stream(metric, labels[..., None].astype(np.float32), z)
        valid = ~np.isnan(got[key])
        assert streamed == pytest.approx(got[key][valid].mean(), abs=1e-6), key
        metric.reset_state()
        weighted = (sw[valid] * got[key][valid]).sum() / sw[valid].sum()
        assert stream(metric, labels, z, sample_weight=sw) == pytest.approx(weighted, abs=1e-6), key


@pytest.mark.parametrize("empty", ["skip", "score"])
def test_two_class_softmax_equals_binary(empty):
    y, z = random_set(12)
    z2 = np.concatenate([np.zeros_like(z), z], -1)  # arg-max is class 1 exactly where logit > 0
    binary = per_image_scores(y, z, empty=empty)
    multi = per_image_scores(y, z2, empty=empty, class_names=["background", "lesion"])
    assert list(multi) == [*binary, *(f"{m}_lesion" for m in binary)]
    for name, values in binary.items():
        np.testing.assert_allclose(multi[name], values, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(multi[f"{name}_lesion"], values, rtol=1e-12, equal_nan=True)
    for b, m in zip(get_metrics(empty=empty), get_metrics(num_classes=2, empty=empty)):
        assert stream(b, y, z) == pytest.approx(stream(m, y, z2), abs=1e-6)


def test_multiclass_metric_names_config_and_errors():
    names = [m.name for m in get_metrics(num_classes=4, class_names=["BG", "Liver Tumour", "kidney-2", "x"])]
    assert names == ["dice", "iou", "precision", "recall", "dice_liver_tumour", "dice_kidney_2", "dice_x"]
    assert [m.name for m in get_metrics(num_classes=3)][-2:] == ["dice_class1", "dice_class2"]
    assert [m.name for m in get_metrics("iou", num_classes=3, per_class=False)] == ["iou"]
    for metric in get_metrics(num_classes=3, empty="score"):
        blob = keras.saving.serialize_keras_object(metric)
        assert blob["registered_name"] == "keras_litenext>MultiClassScore"
        restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
        assert restored.get_config() == metric.get_config() and restored.name == metric.name
    with pytest.raises(ValueError, match="3 names"):
        get_metrics(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        get_metrics(num_classes=3, class_names=["bg", "A b", "a-b"])
    with pytest.raises(ValueError, match="class_index"):
        M.MultiClassScore(3, class_index=3)
    with pytest.raises(ValueError, match="dice, iou, precision, recall"):
        get_metrics("hd95", num_classes=3)
    with pytest.raises(ValueError, match="same images"):
        per_image_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 5, 3)))


def test_multiclass_compiled_evaluate_and_evaluate_model():
    labels, z = random_multiclass(13, n=7)
    model = keras.Sequential([keras.Input((12, 12, 4)), keras.layers.Identity()])
    model.compile(loss="mse", metrics=get_metrics(num_classes=4), jit_compile=False)  # XLA: test_losses
    y = labels[..., None].astype(np.float32)
    result = model.evaluate(z, y, batch_size=3, verbose=0, return_dict=True)
    scores = per_image_scores(y, z, class_names=["bg", "a", "b", "c"])
    for key in ("dice", "iou", "precision", "recall"):
        assert result[key] == pytest.approx(np.nanmean(scores[key]), abs=1e-6)
    for c, name in enumerate("abc", start=1):
        assert result[f"dice_class{c}"] == pytest.approx(np.nanmean(scores[f"dice_{name}"]), abs=1e-6)
    evaluated = evaluate_model(model, (z, y), batch_size=3, class_names=["bg", "a", "b", "c"])
    batched = evaluate_model(
        model, [(z[i : i + 3], y[i : i + 3]) for i in range(0, 7, 3)], class_names=["bg", "a", "b", "c"]
    )
    for out in (evaluated, batched):
        assert list(out["per_image"]) == list(scores)
        assert (out["images"], out["counted"], out["skipped_empty"]) == (7, 6, 1)
        for key, values in scores.items():
            np.testing.assert_allclose(out["per_image"][key], values, equal_nan=True)
            assert out[key]["mean"] == pytest.approx(np.nanmean(values))
