"""Metrics, calibration and thresholds against independent computations (scikit-learn, brute force)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from sightline.decision import decide, softmax
from sightline.evaluate.calibration import expected_calibration_error, fit_temperature, reliability
from sightline.evaluate.metrics import bootstrap_ci, classification_metrics, confusion, headline_from_confusion
from sightline.evaluate.thresholds import check_targets, choose_thresholds, decision_metrics, expected_cost
from sightline.spec import parse_spec

CLASSES = ["a", "b", "c", "d"]


def _data(n: int = 300, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 1.5
    logits[np.arange(n), y] += 2.0
    return y, logits


def test_metrics_match_sklearn():
    y, logits = _data()
    probs = softmax(logits)
    pred = probs.argmax(1)
    m = classification_metrics(y, pred, probs, CLASSES, top_k=(1, 2))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    assert np.allclose(np.sum(m["confusion_matrix"]["normalized"], axis=1), 1.0, atol=1e-3)
    p, r, f, s = precision_recall_fscore_support(y, pred)
    for i, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
        assert pc["average_precision"] == pytest.approx(average_precision_score(y == i, probs[:, i]))
        assert pc["roc_auc"] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
        neg = y != i
        assert pc["false_positive_rate"] == pytest.approx(((pred == i) & neg).sum() / neg.sum())
    assert m["top_k"]["top_2"] == pytest.approx(top_k_accuracy_score(y, probs, k=2))
    assert m["top_k"]["top_1"] == pytest.approx(m["accuracy"])


def test_absent_class_has_no_ap_and_fast_headline_matches_sklearn():
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 0, 1, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = classification_metrics(y, pred, probs, ["x", "y", "z"])
    assert m["per_class"]["z"]["average_precision"] is None and m["per_class"]["z"]["support"] == 0
    h = headline_from_confusion(confusion(y, pred, 3))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(y, pred)
    assert h["balanced_accuracy"] == pytest.approx(expected) == m["balanced_accuracy"]
    assert h["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0))


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_data():
    y, logits = _data(200)
    pred = logits.argmax(1)
    ci = bootstrap_ci(y, pred, 4, n_resamples=300)
    acc = accuracy_score(y, pred)
    assert ci["accuracy"]["low"] < acc < ci["accuracy"]["high"]
    y2, logits2 = _data(3000, seed=1)
    ci2 = bootstrap_ci(y2, logits2.argmax(1), 4, n_resamples=300)
    width = lambda c: c["accuracy"]["high"] - c["accuracy"]["low"]  # noqa: E731
    assert width(ci2) < width(ci) / 2


def test_temperature_recovers_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(0)
    y, logits = _data(2000)
    # Draw labels from softmax(logits) so T=1 is calibrated, then sharpen 3x: the fit should find T ~ 3.
    probs = softmax(logits)
    y = (rng.random((len(probs), 1)) > probs.cumsum(axis=1)).sum(axis=1)
    t = fit_temperature(logits * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(logits * 3.0), y)
    after = expected_calibration_error(softmax(logits * 3.0, t), y)
    assert after < before / 2
    rel = reliability(softmax(logits), y)
    assert sum(rel["count"]) == len(y)


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin 0.9: acc 0.5, conf 0.9 -> 0.4 * 0.5; bin 0.6: acc 1.0, conf 0.6 -> 0.4 * 0.5
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)


def test_expected_cost_by_hand():
    spec = parse_spec({"costs": {"default": {"false_positive": 1, "false_negative": 2},
                                 "crack": {"false_positive": 3, "false_negative": 50}}})
    classes = ["crack", "ok"]
    y = np.array([0, 0, 1, 1])
    pred = np.array([1, 0, 0, 1])  # one missed crack (50 + ok's fp 1), one false crack (ok's fn 2 + crack fp 3)
    assert expected_cost(y, pred, classes, spec) == pytest.approx((51 + 5) / 4)


def test_recall_target_threshold_is_chosen_on_val_and_lowest_fpr():
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)  # class 1 = crack, rare
    score = rng.normal(size=n) + 1.5 * y
    logits = np.stack([np.zeros(n), score], axis=1)
    classes = ["ok", "crack"]
    spec = parse_spec({"targets": [{"metric": "recall", "class": "crack", "min": 0.95}]})
    th = choose_thresholds(logits, y, classes, spec=spec)
    t = th["class_thresholds"]["crack"]
    assert th["chosen_on"] == "val" and th["details"]["crack"]["reachable"]
    # Brute force: among all thresholds on P(crack) with recall >= 0.95, the lowest FPR.
    p = softmax(logits)[:, 1]
    best = None
    for cand in np.unique(p):
        pred = np.where(p >= cand, 1, logits.argmax(1))
        rec = (pred[y == 1] == 1).mean()
        fpr = (pred[y == 0] == 1).mean()
        if rec >= 0.95 and (best is None or fpr < best[0]):
            best = (fpr, cand)
    pred = decide(logits, classes, thresholds=th).labels
    assert (pred[y == 1] == 1).mean() >= 0.95
    assert (pred[y == 0] == 1).mean() == pytest.approx(best[0])
    assert best[1] - 0.05 < t <= best[1] + 1e-9  # any threshold between the same two images is as good
    # A review threshold was chosen too, and reported per target with pass/fail.
    assert th["review_confidence"] is not None
    res = check_targets(spec, classes, test=decision_metrics(y, pred, classes, spec))
    assert res[0]["passed"] is True and res[0]["value"] >= 0.95


def test_cost_threshold_minimises_val_cost():
    rng = np.random.default_rng(4)
    n = 300
    y = (rng.random(n) < 0.4).astype(int)
    logits = np.stack([np.zeros(n), rng.normal(size=n) + 1.0 * y], axis=1)
    classes = ["ok", "crack"]
    spec = parse_spec({"costs": {"crack": {"false_positive": 1, "false_negative": 20}}})
    th = choose_thresholds(logits, y, classes, spec=spec)
    cost_with = expected_cost(y, decide(logits, classes, thresholds=th).labels, classes, spec)
    cost_argmax = expected_cost(y, logits.argmax(1), classes, spec)
    assert cost_with < cost_argmax
    # Brute force minimum over all thresholds equals what was chosen.
    p = softmax(logits)[:, 1]
    brute = min(expected_cost(y, np.where(p >= c, 1, logits.argmax(1)), classes, spec) for c in np.unique(p))
    assert cost_with == pytest.approx(min(brute, cost_argmax))


def test_review_threshold_reaches_accuracy_goal_with_most_coverage():
    y, logits = _data(500)
    spec = parse_spec({"targets": [{"metric": "accuracy", "min": 0.9}]})
    th = choose_thresholds(logits, y, CLASSES, spec=spec)
    r = th["review_confidence"]
    d = decide(logits, CLASSES, thresholds=th)
    kept = d.confidences >= r
    assert (d.labels[kept] == y[kept]).mean() >= 0.9
    lower = d.confidences >= r - 0.01
    assert (d.labels[lower] == y[lower]).mean() < 0.9
    given = choose_thresholds(logits, y, CLASSES, spec=parse_spec({"review_below_confidence": 0.7}))
    assert given["review_confidence"] == 0.7


def test_targets_say_how_many_images_a_verdict_rests_on():
    # The demo run: 25 of 26 cracks found passes "recall >= 0.9", but 26 images cannot rule out 0.85.
    classes = ["ok", "crack"]
    y = np.array([0] * 200 + [1] * 26)
    pred = y.copy()
    pred[200] = 0  # one crack missed
    pred[:5] = 1  # five ok parts called crack: fpr 5/200
    spec = parse_spec({"targets": [{"metric": "recall", "class": "crack", "min": 0.9},
                                   {"metric": "false_positive_rate", "class": "crack", "max": 0.1},
                                   {"metric": "accuracy", "min": 0.99},
                                   {"metric": "f1", "class": "crack", "min": 0.5}]})
    recall, fpr, acc, f1 = check_targets(spec, classes, test=decision_metrics(y, pred, classes, spec))
    assert recall["passed"] and recall["n"] == 26 and recall["conclusive"] is False
    assert recall["low"] == pytest.approx(0.8116, abs=1e-3) and recall["high"] == pytest.approx(0.9932, abs=1e-3)
    assert fpr["passed"] and fpr["n"] == 200 and fpr["conclusive"] is True and fpr["high"] < 0.1
    assert not acc["passed"] and acc["n"] == 226 and acc["conclusive"] is True  # 220/226: interval under 0.99
    assert f1["n"] is None and f1["conclusive"] is None  # not a simple proportion: no interval
