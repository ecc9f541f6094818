"""A paired comparison of two classifiers on the same images: pure functions over arrays, plain data out.

`y` (N,) holds the true class indices, `a` (N,) the champion's predicted indices and `b` (N,) the challenger's,
row i being the same image for all three. Every difference is challenger minus champion (b - a), as a share
(0.01 = 1 point). Because both models saw the same images, the comparison is paired: the bootstrap resamples
images and scores both models on each resample, and McNemar's test looks only at the images where exactly one
model is right (Dietterich 1998, "Approximate statistical tests for comparing supervised classification learning
algorithms").

Example:
    >>> paired_bootstrap(y, a, b)["low"]      # 2.5th percentile of acc(b) - acc(a) over resampled image sets
    >>> mcnemar_exact(y, a, b)["p_value"]     # exact two-sided binomial test on the discordant pairs
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["paired_bootstrap", "mcnemar_exact", "recall_changes", "calibration", "compare_split"]

_CELLS = 1 << 22  # resample x image cells held at once by the bootstrap (32 MB of int64)


def _check(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, a, b))
    if y.ndim != 1 or y.shape != a.shape or y.shape != b.shape:
        raise ValueError(f"y, a and b must be (N,) arrays of one length; got {y.shape}, {a.shape}, {b.shape}")
    if len(y) == 0:
        raise ValueError("a paired comparison needs at least one image")
    return y, a, b


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0, keep_samples: bool = False) -> dict[str, Any]:
    """Accuracy difference acc(b) - acc(a) with a percentile bootstrap interval: the N images are resampled with
    replacement `n_resamples` times and both models are scored on each resample.

    Returns {"champion", "challenger" (accuracies), "difference", "low", "high", "level", "n_resamples",
    "n_images"}, plus "samples" ((n_resamples,) float64 differences) when `keep_samples`."""
    y, a, b = _check(y, a, b)
    n = len(y)
    per_image = (b == y).astype(np.int64) - (a == y).astype(np.int64)  # +1: only b right, -1: only a right
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _CELLS // n)
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        diffs[start:stop] = per_image[idx].sum(axis=1) / n
    alpha = (1.0 - level) / 2.0
    out: dict[str, Any] = {
        "champion": float((a == y).mean()),
        "challenger": float((b == y).mean()),
        "difference": float(per_image.mean()),
        "low": float(np.quantile(diffs, alpha)),
        "high": float(np.quantile(diffs, 1.0 - alpha)),
        "level": level,
        "n_resamples": n_resamples,
        "n_images": n,
    }
    if keep_samples:
        out["samples"] = diffs
    return out


def mcnemar_exact(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: under "both models are equally accurate", each image that exactly one model gets right
    is as likely to favour either, so the challenger-only count is Binomial(discordant, 1/2). Two-sided p-value
    (scipy.stats.binomtest); 1.0 when no image is discordant.

    Returns {"champion_only" (a right, b wrong), "challenger_only", "both_right", "both_wrong", "discordant",
    "p_value"}."""
    from scipy.stats import binomtest

    y, a, b = _check(y, a, b)
    ra, rb = a == y, b == y
    a_only, b_only = int((ra & ~rb).sum()), int((rb & ~ra).sum())
    discordant = a_only + b_only
    p = float(binomtest(b_only, discordant, 0.5, alternative="two-sided").pvalue) if discordant else 1.0
    return {"champion_only": a_only, "challenger_only": b_only, "both_right": int((ra & rb).sum()),
            "both_wrong": int((~ra & ~rb).sum()), "discordant": discordant, "p_value": p}


def recall_changes(y: np.ndarray, a: np.ndarray, b: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per class: {"support", "champion", "challenger", "change"} where the middle two are the recalls (share of the
    class's images predicted as it) and change = challenger - champion; recalls are None for a class with no image."""
    y, a, b = _check(y, a, b)
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        mask = y == k
        n = int(mask.sum())
        if n == 0:
            out[name] = {"support": 0, "champion": None, "challenger": None, "change": None}
            continue
        ra, rb = float((a[mask] == k).mean()), float((b[mask] == k).mean())
        out[name] = {"support": n, "champion": ra, "challenger": rb, "change": rb - ra}
    return out


def calibration(probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error of each model's (N, K) probabilities (each with its own temperature applied),
    15 equal-width bins as in sightline.evaluate.calibration, and the change (b - a; negative = better)."""
    from sightline.evaluate.calibration import expected_calibration_error, reliability

    ea = expected_calibration_error(probs_a, y, n_bins=n_bins)
    eb = expected_calibration_error(probs_b, y, n_bins=n_bins)
    return {"champion_ece": ea, "challenger_ece": eb, "change": eb - ea, "n_bins": n_bins,
            "reliability": {"champion": reliability(probs_a, y, n_bins=n_bins),
                            "challenger": reliability(probs_b, y, n_bins=n_bins)}}


def compare_split(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                  classes: Sequence[str], *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                  keep_samples: bool = False) -> dict[str, Any]:
    """Everything `sightline challenge` reports for one split: `y`, `pred_a`, `pred_b` (N,) class indices into
    `classes`; `probs_a`, `probs_b` (N, K) calibrated probabilities in the same class order.

    Returns {"n_images", "accuracy": paired_bootstrap, "mcnemar", "per_class_recall", "calibration"}."""
    return {
        "n_images": len(np.asarray(y)),
        "accuracy": paired_bootstrap(y, pred_a, pred_b, n_resamples=n_resamples, level=level, seed=seed,
                                     keep_samples=keep_samples),
        "mcnemar": mcnemar_exact(y, pred_a, pred_b),
        "per_class_recall": recall_changes(y, pred_a, pred_b, classes),
        "calibration": calibration(probs_a, probs_b, y),
    }
