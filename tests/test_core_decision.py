from __future__ import annotations

import numpy as np
from scipy.special import softmax as scipy_softmax

from sightline.decision import decide, softmax


def test_softmax_matches_scipy_with_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)) * 10
    np.testing.assert_allclose(softmax(logits, 2.5), scipy_softmax(logits / 2.5, axis=1), rtol=1e-12)


def test_argmax_without_thresholds():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 2.0]])
    d = decide(logits, ["a", "b", "c"])
    assert d.labels.tolist() == [0, 2]
    assert not d.review.any()
    np.testing.assert_allclose(d.confidences, d.probabilities.max(axis=1))


def test_class_threshold_overrides_argmax_and_review_fires():
    # class "crack" is predicted as soon as its probability reaches 0.2, even when "ok" is larger.
    logits = np.log(np.array([[0.75, 0.25], [0.9, 0.1], [0.52, 0.48]]))
    d = decide(logits, ["ok", "crack"], thresholds={"class_thresholds": {"crack": 0.2}, "review_confidence": 0.6})
    assert d.labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(d.confidences, [0.25, 0.9, 0.48])
    assert d.review.tolist() == [True, False, True]


def test_unknown_class_in_thresholds_is_ignored():
    d = decide(np.array([[1.0, 0.0]]), ["a", "b"], thresholds={"class_thresholds": {"zzz": 0.1}})
    assert d.labels.tolist() == [0]


def test_zero_threshold_is_always_eligible_without_warnings():
    # pytest turns warnings into errors: a division by zero here would fail the test.
    d = decide(np.log(np.array([[0.7, 0.2, 0.1]])), ["a", "b", "c"], thresholds={"class_thresholds": {"c": 0.0}})
    assert d.labels.tolist() == [2]
