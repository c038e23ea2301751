"""Classification scores cross-checked against scikit-learn on random data (K = 2 and K > 2, with
tied scores), and the streaming `MacroAUC` metric against the one-shot value."""

import numpy as np
import pytest

from keras_litenext.metrics.classification import MacroAUC, classification_scores, roc_auc
from keras_litenext.tasks.base import softmax

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="could not import 'sklearn': pip install scikit-learn")


def random_case(k, n=300, seed=0, decimals=1):
    """Labels 0..k-1 and probabilities rounded to `decimals` (many ties), somewhat informative."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
    return labels, np.round(softmax(logits), decimals).astype(np.float64), logits.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 500).astype(bool)
    score = np.round(rng.normal(size=500) + truth, 1)  # ~60 distinct values: ties across the classes
    assert len(np.unique(score)) < 100
    assert roc_auc(truth, score) == pytest.approx(sklearn_metrics.roc_auc_score(truth, score), abs=1e-12)
    constant = np.zeros(500)
    assert roc_auc(truth, constant) == pytest.approx(0.5, abs=1e-12) == sklearn_metrics.roc_auc_score(truth, constant)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_scores_match_sklearn(k):
    labels, probabilities, _ = random_case(k, seed=k)
    names = [f"c{i}" for i in range(k)]
    ours = classification_scores(labels, probabilities, names)
    predicted = np.argmax(probabilities, axis=-1)  # ties: the lowest index, as numpy and ours
    assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted), abs=1e-12)
    assert ours["balanced_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(labels, predicted), abs=1e-12)
    if k == 2:
        expected = sklearn_metrics.roc_auc_score(labels, probabilities[:, 1])
    else:
        expected = np.mean([sklearn_metrics.roc_auc_score(labels == c, probabilities[:, c]) for c in range(k)])  # macro one-vs-rest
        exact = probabilities / probabilities.sum(1, keepdims=True)  # rows summing to 1, as multi_class="ovr" wants
        ovr = sklearn_metrics.roc_auc_score(labels, exact, multi_class="ovr", average="macro")
        assert classification_scores(labels, exact, names)["auc"] == pytest.approx(ovr, abs=1e-12)
    assert ours["auc"] == pytest.approx(expected, abs=1e-12)
    for c, name in enumerate(names):
        assert ours["auc_per_class"][name] == pytest.approx(sklearn_metrics.roc_auc_score(labels == c, probabilities[:, c]), abs=1e-12)
    assert np.array_equal(np.asarray(ours["confusion_matrix"]), sklearn_metrics.confusion_matrix(labels, predicted, labels=range(k)))


@pytest.mark.parametrize("k", [2, 4])
def test_streaming_macro_auc_matches_the_one_shot_value(k):
    labels, _, logits = random_case(k, n=400, seed=10 + k)
    metric = MacroAUC(k, num_thresholds=1000)
    for i in range(0, len(labels), 64):  # in batches, as fit feeds it
        metric.update_state(labels[i : i + 64], logits[i : i + 64])
    streamed = float(metric.result())
    one_shot = classification_scores(labels, softmax(logits), [f"c{i}" for i in range(k)])["auc"]
    assert streamed == pytest.approx(one_shot, abs=2e-3)  # bins of 1/1000: the only difference
    whole = MacroAUC(k, num_thresholds=1000)
    whole.update_state(labels, logits)
    assert float(whole.result()) == pytest.approx(streamed, abs=1e-6)  # streaming adds nothing
