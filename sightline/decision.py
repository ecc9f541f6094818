"""From logits to a decision, the same way in evaluation, batch prediction and the server.

Thresholds are chosen on validation data (sightline.evaluate.thresholds) and stored in the bundle's
`thresholds`; this module only applies them:
- probabilities = softmax(logits / temperature);
- `class_thresholds` {class: t}: a class whose probability reaches its threshold is predicted even when it is not
  the arg-max (how "recall of crack >= 0.98" is enforced); when several do, the one with the highest p / t wins;
  otherwise the arg-max;
- `review_confidence` r: a prediction whose probability is below r gets decision "review", else "accept".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Decisions", "softmax", "decide", "UNKNOWN_LABEL"]

# A reviewer's label for an image no class fits ("not a valid item"), beside the model's classes in the review
# queue; so no class may have this name (train refuses it), or a label would mean two things.
UNKNOWN_LABEL = "unknown"


@dataclass
class Decisions:
    probabilities: np.ndarray  # (N, K) calibrated probabilities
    labels: np.ndarray  # (N,) int class index
    confidences: np.ndarray  # (N,) probability of the predicted class
    review: np.ndarray  # (N,) bool, True -> "review"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (N, K) logits divided by `temperature`, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decide(
    logits: np.ndarray,
    classes: list[str],
    *,
    temperature: float = 1.0,
    thresholds: dict[str, Any] | None = None,
) -> Decisions:
    """Apply temperature, per-class thresholds and the review threshold to (N, K) logits."""
    probs = softmax(logits, temperature)
    labels = probs.argmax(axis=1)
    thresholds = thresholds or {}
    class_t = thresholds.get("class_thresholds") or {}
    if class_t:
        t = np.full(len(classes), np.inf)
        for name, value in class_t.items():
            if name in classes and value is not None:
                t[classes.index(name)] = float(value)
        # A threshold of 0 makes its class always eligible; the tiny floor keeps p / t finite (inf thresholds give 0).
        ratio = probs / np.maximum(t, 1e-12)
        fires = ratio >= 1.0
        any_fire = fires.any(axis=1)
        labels = np.where(any_fire, np.where(fires, ratio, -1.0).argmax(axis=1), labels)
    conf = probs[np.arange(len(labels)), labels]
    r = thresholds.get("review_confidence")
    review = conf < float(r) if r is not None else np.zeros(len(labels), dtype=bool)
    return Decisions(probabilities=probs, labels=labels, confidences=conf, review=review)
