"""Label-free accuracy: its interval covers the realised accuracy when calibration holds; Wilson vs scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sightline.errors import UserInputError
from sightline.monitor.estimate import expected_accuracy, measured_accuracy, wilson_interval


def _calibrated_window(rng, n, k=3):
    """Probabilities drawn at random and labels drawn from them: calibrated by construction."""
    probs = rng.dirichlet(np.full(k, 0.7), n)
    # each label drawn from its row: the first class whose cumulative probability passes a uniform draw
    labels = np.minimum((rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1), k - 1)
    return probs, labels


def test_interval_covers_realised_accuracy_at_its_level():
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        probs, labels = _calibrated_window(rng, 200)
        est = expected_accuracy(probs)
        realised = np.mean(probs.argmax(1) == labels)
        hits += est["low"] <= realised <= est["high"]
    assert 0.90 <= hits / 200 <= 0.99  # nominal 95 %


def test_per_class_and_formula():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    est = expected_accuracy(probs, classes=["ok", "bad"], confidence=0.9)
    top = np.array([0.9, 0.6, 0.8, 0.7])
    half = stats.norm.ppf(0.95) * np.sqrt(np.sum(top * (1 - top))) / 4
    assert est["expected_accuracy"] == pytest.approx(0.75) and est["low"] == pytest.approx(0.75 - half)
    assert est["high"] == 1.0  # clipped
    assert est["per_class"]["ok"]["expected_accuracy"] == pytest.approx(0.75)
    assert est["per_class"]["bad"]["n"] == 2
    empty = expected_accuracy(np.zeros((0, 2)))
    assert empty["n"] == 0 and empty["expected_accuracy"] is None


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 120)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high))


def test_measured_accuracy_and_bad_input():
    res = measured_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert res["accuracy"] == 0.75 and res["low"] < 0.75 < res["high"]
    assert measured_accuracy(np.array([], int), np.array([], int))["accuracy"] is None
    with pytest.raises(UserInputError, match="equal length"):
        measured_accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(UserInputError, match="confidence"):
        expected_accuracy(np.ones((3, 2)) / 2, confidence=1.5)
