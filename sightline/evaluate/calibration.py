"""Calibration: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), expected
calibration error and reliability-diagram data.

The temperature T is fitted on the VALIDATION split by minimising the negative log-likelihood of
softmax(logits / T) with L-BFGS; it is stored in the bundle and applied everywhere by sightline.decision.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fit_temperature", "expected_calibration_error", "reliability"]


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, *, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising NLL of softmax(logits / T) on (N, K) `logits`, (N,) int `y_true` (val split).

    Optimises log T so T stays positive; returns 1.0 when there is nothing to fit (N == 0)."""
    import torch

    if len(y_true) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # A perfectly separated val set drives T -> 0 (ever sharper); cap it to a sane range.
    return float(np.clip(t, 0.05, 20.0))


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence| weighted by the bin's share of
    images. `probs` (N, K), `y_true` (N,). Top-label confidence, 15 bins (as Guo et al.)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    b = _bins(conf, n_bins)
    ece = 0.0
    for i in range(n_bins):
        m = b == i
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(probs: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15) -> dict[str, Any]:
    """Reliability-diagram data: per confidence bin, its centre, mean confidence, accuracy and image count
    (None for empty bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    b = _bins(conf, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: dict[str, Any] = {"bin_center": [], "confidence": [], "accuracy": [], "count": []}
    for i in range(n_bins):
        m = b == i
        out["bin_center"].append(float((edges[i] + edges[i + 1]) / 2))
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out
