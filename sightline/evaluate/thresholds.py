"""Decision thresholds from the problem definition, CHOSEN ON VALIDATION and REPORTED ON TEST.

- Per-class thresholds (sightline.decision: a class whose calibrated probability reaches its threshold is
  predicted even when it is not the arg-max). A class gets one when a target names it (recall / precision / f1 /
  false_positive_rate) or when sightline.yaml lists a cost for it. Among the thresholds that meet the class's
  targets on val, the rule picks: the minimum expected cost when the class has its own cost; else, with a recall
  target, the lowest false-positive rate ("recall of crack >= 0.98 at the lowest FPR"); else the highest recall.
  When no threshold meets the targets on val, the closest one is kept and marked `reachable: false`.
- The review threshold r (predictions less confident than r go to a person): from sightline.yaml when given, else
  the lowest r at which the accepted val predictions reach the accuracy target (or 95 %), i.e. most coverage.

Every candidate is scored by running sightline.decision.decide itself, so what is chosen is what the server does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sightline.decision import decide
from sightline.evaluate.metrics import confusion, coverage_accuracy_curve, headline_from_confusion
from sightline.spec import ProblemSpec, Target

__all__ = ["expected_cost", "decision_metrics", "choose_thresholds", "check_targets", "DEFAULT_REVIEW_ACCURACY"]

DEFAULT_REVIEW_ACCURACY = 0.95
MAX_CANDIDATES = 500  # per class; beyond this, quantiles of the val probabilities


def expected_cost(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], spec: ProblemSpec) -> float:
    """Mean cost per image: a true A predicted as B costs A's false_negative plus B's false_positive."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    fn = np.array([spec.cost(c).false_negative for c in classes])
    fp = np.array([spec.cost(c).false_positive for c in classes])
    wrong = y_true != y_pred
    return float((fn[y_true[wrong]].sum() + fp[y_pred[wrong]].sum()) / len(y_true))


def decision_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], spec: ProblemSpec | None = None
) -> dict[str, Any]:
    """The values targets can name, computed from decisions: overall accuracy, balanced_accuracy, macro_f1,
    expected_cost, and per class recall, precision, f1, false_positive_rate. `counts` holds [successes, images]
    behind each share that is a proportion (accuracy; per class recall, precision, false_positive_rate), so a
    target's verdict can say how many images it rests on."""
    k = len(classes)
    cm = confusion(y_true, y_pred, k).astype(np.float64)
    out: dict[str, Any] = headline_from_confusion(cm)
    out["expected_cost"] = expected_cost(y_true, y_pred, classes, spec or ProblemSpec())
    per: dict[str, dict[str, float]] = {}
    n = cm.sum()
    counts: dict[str, Any] = {"accuracy": [int(np.trace(cm)), int(n)], "per_class": {}}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        pos = cm[i].sum()
        pred = cm[:, i].sum()
        neg = n - pos
        recall = tp / pos if pos else 0.0
        precision = tp / pred if pred else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[c] = {
            "recall": float(recall),
            "precision": float(precision),
            "f1": float(f1),
            "false_positive_rate": float((pred - tp) / neg) if neg else 0.0,
        }
        counts["per_class"][c] = {
            "recall": [int(tp), int(pos)],
            "precision": [int(tp), int(pred)],
            "false_positive_rate": [int(pred - tp), int(neg)],
        }
    out["per_class"] = per
    out["counts"] = counts
    return out


def _value(metrics: dict[str, Any], target: Target) -> float:
    if target.class_name is None:
        return float(metrics[target.metric])
    return float(metrics["per_class"][target.class_name][target.metric])


def _shortfall(value: float, target: Target) -> float:
    gap = 0.0
    if target.min is not None:
        gap += max(0.0, target.min - value)
    if target.max is not None:
        gap += max(0.0, value - target.max)
    return gap


def _choose_class_threshold(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: list[str],
    c: str,
    spec: ProblemSpec,
    fixed: dict[str, float],
) -> dict[str, Any]:
    i = classes.index(c)
    targets = [t for t in spec.targets if t.class_name == c]
    values = np.unique(probs[:, i])
    if len(values) > MAX_CANDIDATES:
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_CANDIDATES)))
    # A hair below each observed probability, so the image that sets it passes `p >= t` despite rounding.
    candidates: list[float | None] = [None, *np.maximum(values - 1e-9, 1e-12).tolist()]  # None: arg-max only
    log_p = np.log(np.clip(probs, 1e-12, 1.0))  # decide() on log-probs with T=1 reproduces `probs`
    scored = []
    for t in candidates:
        th = {**fixed, **({c: float(t)} if t is not None else {})}
        pred = decide(log_p, classes, thresholds={"class_thresholds": th}).labels
        m = decision_metrics(y_true, pred, classes, spec)
        pc = m["per_class"][c]
        shortfall = sum(_shortfall(_value(m, tg), tg) for tg in targets)
        if spec.has_explicit_cost(c):
            objective: tuple[float, ...] = (m["expected_cost"],)
        elif any(tg.metric == "recall" and tg.min is not None for tg in targets):
            objective = (pc["false_positive_rate"], -pc["recall"])
        else:
            objective = (-pc["recall"], pc["false_positive_rate"])
        scored.append((shortfall, objective, t, m))
    feasible = [s for s in scored if s[0] == 0.0]
    pool = feasible or scored
    shortfall, _, t, m = min(pool, key=lambda s: (s[0], s[1]))
    rule = (
        "minimum expected cost" if spec.has_explicit_cost(c)
        else "lowest false-positive rate meeting the targets"
        if any(tg.metric == "recall" and tg.min is not None for tg in targets)
        else "highest recall meeting the targets"
    )
    return {
        "threshold": None if t is None else float(t),
        "rule": rule,
        "reachable": bool(feasible),
        "val": {k: round(v, 4) for k, v in m["per_class"][c].items()},
    }


def choose_thresholds(
    logits_val: np.ndarray,
    y_val: np.ndarray,
    classes: list[str],
    *,
    spec: ProblemSpec | None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """bundle.thresholds chosen on the validation split (`logits_val` (N, K), `y_val` (N,)).

    Returns {"review_confidence", "class_thresholds" {class: prob}, "chosen_on": "val", "n_images", "details"
    {class: rule, reachable, val metrics}, "review": {rule, target_accuracy, val coverage/accuracy, curve}}."""
    spec = spec or ProblemSpec()
    probs = decide(logits_val, classes, temperature=temperature).probabilities
    y_val = np.asarray(y_val, dtype=np.int64)
    wanted = [c for c in classes if spec.has_explicit_cost(c) or any(t.class_name == c for t in spec.targets)]
    fixed: dict[str, float] = {}
    details: dict[str, Any] = {}
    for c in wanted:
        choice = _choose_class_threshold(probs, y_val, classes, c, spec, fixed)
        details[c] = choice
        if choice["threshold"] is not None:
            fixed[c] = choice["threshold"]

    d = decide(logits_val, classes, temperature=temperature, thresholds={"class_thresholds": fixed})
    correct = d.labels == y_val
    curve = coverage_accuracy_curve(correct, d.confidences)
    acc_targets = [t.min for t in spec.targets if t.metric == "accuracy" and t.min is not None]
    goal = max(acc_targets) if acc_targets else DEFAULT_REVIEW_ACCURACY
    review: dict[str, Any] = {"target_accuracy": goal}
    if spec.review_below_confidence is not None:
        r: float | None = spec.review_below_confidence
        review["rule"] = "given in sightline.yaml"
        review["reachable"] = True
    else:
        r, reachable = None, False
        for t, cov, acc in zip(curve["threshold"], curve["coverage"], curve["accuracy"]):
            if acc is not None and acc >= goal:
                r, reachable = t, True
                break
        if r is None:  # the goal is out of reach: keep the threshold with the best accepted accuracy, >= 10 % kept
            ok = [(a, t) for t, c, a in zip(curve["threshold"], curve["coverage"], curve["accuracy"])
                  if a is not None and c >= 0.1]
            r = max(ok)[1] if ok else None
        review["rule"] = f"lowest confidence whose accepted val predictions reach {goal:.1%} accuracy"
        review["reachable"] = reachable
    if r is not None:
        kept = d.confidences >= r
        review["val_coverage"] = float(kept.mean()) if len(kept) else 0.0
        review["val_accuracy_accepted"] = float(correct[kept].mean()) if kept.any() else None
    review["val_curve"] = curve
    return {
        "review_confidence": None if r is None else float(r),
        "class_thresholds": fixed,
        "chosen_on": "val",
        "n_images": int(len(y_val)),
        "temperature": float(temperature),
        "details": details,
        "review": review,
    }


def check_targets(
    spec: ProblemSpec | None,
    classes: list[str],
    *,
    test: dict[str, Any],
    val: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Pass/fail per target. `test` / `val` are decision_metrics() outputs; the verdict is the test value.

    For a share that is a proportion (accuracy, recall, precision, false_positive_rate) the row also carries `n`
    (the images it is a share of), its 95 % Wilson interval `low` / `high`, and `conclusive`: whether the whole
    interval lies on the verdict's side of the target (a recall of 25/26 = 0.96 passes ">= 0.9", but its interval
    0.81-0.99 does not rule out 0.85). None where the metric is not a simple proportion."""
    from sightline.monitor.estimate import wilson_interval

    if spec is None:
        return []
    out = []
    for t in spec.targets:
        value = _value(test, t)
        passed = bool(t.passes(value))
        counts = test.get("counts", {})
        k_n = counts.get("per_class", {}).get(t.class_name, {}) if t.class_name else counts
        k_n = k_n.get(t.metric) if isinstance(k_n, dict) else None
        n = low = high = conclusive = None
        if k_n is not None:
            n = k_n[1]
            low, high = wilson_interval(k_n[0], n)
            lo = -np.inf if t.min is None else t.min
            hi = np.inf if t.max is None else t.max
            # passed: the whole interval lies inside [min, max]; failed: none of it does
            conclusive = bool(lo <= low and high <= hi) if passed else bool(high < lo or low > hi)
        out.append(
            {
                "target": t.describe(),
                "metric": t.metric,
                "class": t.class_name,
                "min": t.min,
                "max": t.max,
                "value": value,
                "val_value": None if val is None else _value(val, t),
                "passed": passed,
                "n": n,
                "low": low,
                "high": high,
                "conclusive": conclusive,
            }
        )
    return out
