"""Classification metrics as pure functions: arrays in, plain data (JSON-ready) out.

Shapes: `y_true`, `y_pred` are (N,) int class indices into `classes`; `probs` is (N, K) probabilities whose rows
sum to 1. scikit-learn does the work; the bootstrap uses a confusion-matrix shortcut (tested against sklearn)
because it runs a thousand times.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "confusion",
    "classification_metrics",
    "headline_from_confusion",
    "bootstrap_ci",
    "coverage_accuracy_curve",
]

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) int counts, rows = true class, columns = predicted class."""
    idx = np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def headline_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall over classes present) and macro_f1 (over all K classes, 0 where
    undefined, as sklearn with zero_division=0) from a (K, K) confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1.mean()),
    }


def _curve_points(x: np.ndarray, y: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float]]:
    """Down-sample a curve for plotting/JSON, keeping the end points."""
    if len(x) > max_points:
        keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
        x, y = x[keep], y[keep]
    return [round(float(v), 5) for v in x], [round(float(v), 5) for v in y]


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    *,
    top_k: tuple[int, ...] = (1, 3, 5),
) -> dict[str, Any]:
    """Every metric of the report for one split.

    Returns accuracy, balanced_accuracy, macro_f1, weighted_f1, macro/weighted precision and recall, per_class
    {precision, recall, f1, support, false_positive_rate, average_precision, roc_auc}, confusion_matrix {labels,
    matrix, normalized (rows sum to 1)}, top_k {"top_1": ...}, macro_average_precision, macro_roc_auc and
    pr_curves {class: {precision, recall}} (one-vs-rest). AP / ROC-AUC of a class absent from y_true are None."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    labels = list(range(k))
    cm = confusion(y_true, y_pred, k)
    row = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, row, out=np.zeros(cm.shape), where=row > 0)

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "n_images": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        # From the confusion matrix (equal to sklearn's, tested) without its warning about absent classes.
        "balanced_accuracy": headline_from_confusion(cm)["balanced_accuracy"],
        "macro_f1": float(f.mean()),
        "weighted_f1": float(np.average(f, weights=s)) if s.sum() else 0.0,
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "weighted_precision": float(np.average(p, weights=s)) if s.sum() else 0.0,
        "weighted_recall": float(np.average(r, weights=s)) if s.sum() else 0.0,
    }
    per_class: dict[str, dict[str, Any]] = {}
    pr_curves: dict[str, dict[str, list[float]]] = {}
    aps, aucs = [], []
    for i, name in enumerate(classes):
        positive = y_true == i
        negatives = int((~positive).sum())
        fp = int(cm[:, i].sum() - cm[i, i])
        entry: dict[str, Any] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
            "false_positive_rate": fp / negatives if negatives else 0.0,
            "average_precision": None,
            "roc_auc": None,
        }
        if positive.any() and (~positive).any():
            ap = float(average_precision_score(positive, probs[:, i]))
            auc = float(roc_auc_score(positive, probs[:, i]))
            entry["average_precision"], entry["roc_auc"] = ap, auc
            aps.append(ap)
            aucs.append(auc)
            prec, rec, _ = precision_recall_curve(positive, probs[:, i])
            rx, py = _curve_points(rec[::-1], prec[::-1])
            pr_curves[name] = {"recall": rx, "precision": py}
        per_class[name] = entry
    out["per_class"] = per_class
    out["macro_average_precision"] = float(np.mean(aps)) if aps else None
    out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else None
    out["confusion_matrix"] = {
        "labels": list(classes),
        "matrix": cm.tolist(),
        "normalized": np.round(normalized, 4).tolist(),
    }
    out["top_k"] = {}
    for kk in top_k:
        if kk < k:  # (sklearn's top_k_accuracy_score refuses the binary case; this is the same count)
            best = np.argsort(-probs, axis=1, kind="stable")[:, :kk]
            out["top_k"][f"top_{kk}"] = float((best == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0
    out["pr_curves"] = pr_curves
    return out


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    k: int,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals for accuracy, balanced_accuracy and macro_f1: images are resampled with
    replacement `n_resamples` times. Returns {metric: {low, high, level, n_resamples}}.

    When every prediction is right (or every one wrong) every resample gives the same accuracy and balanced
    accuracy (1, or 0), and their percentile intervals collapsed to a point: 8 of 8 test images right read
    'accuracy 1.000 (95% CI 1.000-1.000)', certainty that 8 images cannot give. They get the accuracy's Wilson score
    interval then (8 of 8: 0.676-1.000), and `method` says so; so does macro_f1 when every prediction is wrong (0 in
    every resample). With every prediction right macro_f1 still varies (a resample can miss a class), so it keeps
    its bootstrap interval."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    correct = int(np.sum(y_true == y_pred))
    degenerate: tuple[str, ...] = ()
    if n and correct in (0, n):
        degenerate = ("accuracy", "balanced_accuracy") + (("macro_f1",) if correct == 0 else ())
    rng = np.random.default_rng(seed)
    codes = y_true * k + y_pred
    values: dict[str, list[float]] = {m: [] for m in HEADLINE}
    for _ in range(n_resamples):
        sample = codes[rng.integers(0, n, size=n)]
        cm = np.bincount(sample, minlength=k * k).reshape(k, k)
        for m, v in headline_from_confusion(cm).items():
            values[m].append(v)
    alpha = (1.0 - level) / 2.0
    out = {
        m: {
            "low": float(np.nanquantile(v, alpha)),
            "high": float(np.nanquantile(v, 1.0 - alpha)),
            "level": level,
            "n_resamples": n_resamples,
        }
        for m, v in values.items()
    }
    if degenerate:
        from sightline.monitor.estimate import wilson_interval

        low, high = wilson_interval(correct, n, confidence=level)
        for m in degenerate:
            out[m] = {"low": low, "high": high, "level": level, "n_resamples": 0,
                      "method": f"Wilson score interval of {correct} of {n} right (every resample gives the same)"}
    return out


def coverage_accuracy_curve(
    correct: np.ndarray, confidence: np.ndarray, *, thresholds: np.ndarray | None = None
) -> dict[str, list[float]]:
    """For each review threshold r: coverage (share of images with confidence >= r, i.e. accepted) and the accuracy
    on those accepted images (NaN -> None when nothing is accepted). `correct` (N,) bool, `confidence` (N,)."""
    correct = np.asarray(correct, dtype=bool)
    confidence = np.asarray(confidence, dtype=np.float64)
    if thresholds is None:
        thresholds = np.round(np.linspace(0.0, 1.0, 101), 4)
    cov, acc = [], []
    for t in thresholds:
        kept = confidence >= t
        cov.append(float(kept.mean()) if len(kept) else 0.0)
        acc.append(float(correct[kept].mean()) if kept.any() else None)
    return {"threshold": [float(t) for t in thresholds], "coverage": cov, "accuracy": acc}
