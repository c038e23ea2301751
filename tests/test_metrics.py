"""Tests of keras_litenext.metrics against hand-computed values and an independent per-image loop."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_litenext import metrics as M
from keras_litenext.metrics import (
    METRICS,
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
    out = {name: [] for name in METRICS}
    for mask, output in zip(masks, outputs):
        prob = 1.0 / (1.0 + np.exp(-output.astype(np.float64))) if from_logits else output.astype(np.float64)
        g = set(np.flatnonzero(mask.ravel() > 0.5))
        p = set(np.flatnonzero(prob.ravel() > threshold))
        if not g:
            value = math.nan if empty == "skip" else (1.0 if not p else 0.0)
            for name in METRICS:
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
    for name in METRICS:
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
    for name in METRICS:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, equal_nan=True)
    probs = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    got_p = per_image_scores(y, probs, threshold=threshold, empty=empty, from_logits=False)
    for name in METRICS:
        np.testing.assert_allclose(got_p[name], ref[name], rtol=1e-12, equal_nan=True)


def test_empty_ground_truth_policies():
    y, z = random_set(1)
    skip = per_image_scores(y, z, empty="skip")
    score = per_image_scores(y, z, empty="score")
    for name in METRICS:
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
    for name in METRICS:
        got = stream(CLASSES[name](empty=empty), y, z)
        assert got == pytest.approx(ref[name], abs=1e-6)
        assert got == pytest.approx(summary[name]["mean"], abs=1e-6)


def test_streaming_threshold_probabilities_and_sample_weight():
    y, z = random_set(3)
    probs = (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(np.float32)
    ref = ref_scores(y, z, threshold=0.3)
    sw = np.random.default_rng(0).random(len(y)).astype(np.float32)
    for name in METRICS:
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
    for name in METRICS:
        metric = CLASSES[name](threshold=0.3, from_logits=False, empty="score")
        assert metric.name == name
        blob = keras.saving.serialize_keras_object(metric)
        assert blob["registered_name"] == f"keras_litenext>{type(metric).__name__}"
        restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
        assert type(restored) is type(metric) and restored.get_config() == metric.get_config()
    built = get_metrics(empty="score")
    assert [m.name for m in built] == list(METRICS) and all(m.empty == "score" for m in built)
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
    for name in METRICS:
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
        for name in METRICS:
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
    print("RESULT" + json.dumps(out))
    """
)


def test_metrics_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    y, z = random_set(9)
    np.savez(tmp_path / "data.npz", y=y, z=z)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "data.npz")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT") :])
    for empty in ("skip", "score"):
        ref = ref_means(y, z, empty=empty)
        for name in METRICS:
            assert out[empty]["stream"][name] == pytest.approx(ref[name], abs=1e-5)
            assert out[empty]["evaluate"][name] == pytest.approx(ref[name], abs=1e-5)


def test_module_uses_keras_only():
    source = pathlib.Path(M.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", source, re.M)
    assert "tf.keras" not in source and "import_module" not in source
