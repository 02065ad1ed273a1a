"""Classification metrics agree with scikit-learn on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from modelcycle.evaluation.metrics import classification_metrics

CLASSES = ["a", "b", "c", "d", "e", "f", "g"]


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 200)
    logits = rng.normal(size=(200, 7))
    logits[np.arange(200), labels] += 1.0  # better than chance, far from perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_matches_sklearn(arrays):
    labels, probs = arrays
    predicted = probs.argmax(1)
    m = classification_metrics(labels, probs, CLASSES)
    assert m["num_samples"] == 200
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert 0.3 < m["accuracy"] < 0.9
    assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, probs, k=5, labels=range(7)))
    assert m["topk"] == 5
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, average=avg, zero_division=0)
        assert m[f"{avg}_precision"] == pytest.approx(p)
        assert m[f"{avg}_recall"] == pytest.approx(r)
        assert m[f"{avg}_f1"] == pytest.approx(f)
    p, r, f, s = precision_recall_fscore_support(labels, predicted, zero_division=0)
    assert list(m["per_class"]) == CLASSES
    for i, name in enumerate(CLASSES):
        assert m["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": int(s[i])}
        )
    assert m["confusion_matrix"] == confusion_matrix(labels, predicted).tolist()


def test_hand_computed_small_case():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # right
            [0.2, 0.5, 0.3],  # wrong (b), a is last
            [0.1, 0.8, 0.1],  # right
            [0.6, 0.3, 0.1],  # wrong (a), b second
            [0.1, 0.2, 0.7],  # right
            [0.3, 0.6, 0.1],  # wrong (b), c last
        ]
    )
    m = classification_metrics(labels, probs, ["a", "b", "c"], k=2)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["top5"] == pytest.approx(4 / 6)  # top-2 here: rows 1 and 5 miss
    assert m["topk"] == 2
    assert m["per_class"]["b"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    assert m["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]


def test_top5_with_fewer_than_five_classes_is_capped():
    labels = np.array([0, 1, 2])
    probs = np.array([[0.1, 0.2, 0.7]] * 3)
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["topk"] == 3 and m["top5"] == 1.0
    assert m["accuracy"] == pytest.approx(1 / 3)


def test_absent_class_has_zero_support_and_no_warning_crash():
    labels = np.array([0, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    m = classification_metrics(labels, probs, ["a", "b", "never"])
    assert m["accuracy"] == 1.0
    assert m["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0, 0, 0]
