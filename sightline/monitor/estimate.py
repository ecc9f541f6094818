"""Accuracy of a window without labels, and with them where reviewers labelled a sample.

With temperature-scaled (calibrated) probabilities, the expected accuracy of a window is the mean top-1
probability. The number of correct predictions is then a sum of independent Bernoulli(p_i) (a Poisson-binomial),
whose variance sum p_i (1 - p_i) gives a normal-approximation interval. The interval covers sampling only: it
assumes the calibration still holds, which is exactly what drift can break, so show it beside measured accuracy
(Wilson interval) where labels exist.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from sightline.errors import UserInputError

__all__ = ["expected_accuracy", "wilson_interval", "measured_accuracy"]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise UserInputError(f"confidence must lie in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def _poisson_binomial(top: np.ndarray, z: float) -> dict[str, Any]:
    n = int(top.size)
    if n == 0:
        return {"n": 0, "expected_accuracy": None, "low": None, "high": None}
    mean = float(top.mean())
    half = z * float(np.sqrt(np.sum(top * (1.0 - top)))) / n
    return {"n": n, "expected_accuracy": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half)}


def expected_accuracy(probabilities: np.ndarray, *, classes: Sequence[str] | None = None,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Label-free accuracy of a window of (n, K) calibrated probabilities: {n, expected_accuracy, low, high,
    confidence, method, per_class: {predicted class: {n, expected_accuracy, low, high}}}. Values None for an
    empty window or a class never predicted in it."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise UserInputError(f"probabilities must be (n, K), got shape {probs.shape}")
    z = _z(confidence)
    names = list(classes) if classes is not None else [str(i) for i in range(probs.shape[1])]
    if len(names) != probs.shape[1]:
        raise UserInputError(f"{len(names)} class names for {probs.shape[1]} probability columns")
    top = probs.max(axis=1) if probs.size else np.zeros(0)
    predicted = probs.argmax(axis=1) if probs.size else np.zeros(0, dtype=np.int64)
    out = _poisson_binomial(top, z)
    out.update(confidence=confidence, method="mean calibrated top-1 probability, Poisson-binomial normal interval")
    out["per_class"] = {name: _poisson_binomial(top[predicted == c], z) for c, name in enumerate(names)}
    return out


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the interval holds p exactly: at 0 of n (n of n) rounding left the bound at 2.8e-17 (0.9999999999999999), the
    # error bar accuracy - low came out negative and the monitor report's plot refused it with a traceback
    return float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half)))


def measured_accuracy(predicted: np.ndarray, labels: np.ndarray, *, confidence: float = 0.95) -> dict[str, Any]:
    """Accuracy of (n,) predicted class indices against (n,) reviewer labels, with a Wilson interval:
    {n, accuracy, low, high, confidence, method}. Labels must come from a random sample of the window (not
    only the review queue) for this to estimate the window's accuracy."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.ndim != 1:
        raise UserInputError(f"predicted {predicted.shape} and labels {labels.shape} must be (n,) of equal length")
    n = int(labels.size)
    correct = int(np.sum(predicted == labels))
    low, high = wilson_interval(correct, n, confidence=confidence)
    return {"n": n, "accuracy": correct / n if n else None, "low": low if n else None,
            "high": high if n else None, "confidence": confidence, "method": "Wilson score interval"}
