"""The paired statistics and the promotion rule against independent computations: McNemar's p from a hand count of
the binomial tail, the bootstrap interval against scipy's paired bootstrap and its coverage of a known true
difference, recalls against scikit-learn, ECE with each model's temperature, and verdicts that pass and fail."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import recall_score

from sightline.decision import softmax
from sightline.errors import SpecError
from sightline.loop.paired import calibration, compare_split, mcnemar_exact, paired_bootstrap, recall_changes
from sightline.loop.verdict import decide_promotion
from sightline.spec import Promotion, parse_spec


def _pairs(n: int, p_a: float, p_b: float, rho_share: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' predictions (3 classes) with P(a right) = p_a, P(b right) = p_b; with probability
    rho_share both are right or wrong together (a paired design), else independent."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    shared = rng.random(n) < rho_share
    u = rng.random(n)
    ra = np.where(shared, u < p_a, rng.random(n) < p_a)
    rb = np.where(shared, u < p_b, rng.random(n) < p_b)
    wrong = (y + rng.integers(1, 3, n)) % 3
    return y, np.where(ra, y, wrong), np.where(rb, y, (y + rng.integers(1, 3, n)) % 3)


def _hand_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p: twice the smaller binomial tail of Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_mcnemar_matches_a_hand_count() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    a = np.array([0, 1, 2, 0, 1, 2, 1, 2, 0, 1, 1, 2, 0, 0])  # wrong at 6, 7, 8, 9, 13
    b = np.array([0, 1, 2, 0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 0])  # wrong at 4, 5, 13
    m = mcnemar_exact(y, a, b)
    # by hand: a alone right at 4, 5; b alone right at 6, 7, 8, 9; both wrong at 13; both right at the other 7
    assert (m["champion_only"], m["challenger_only"], m["both_wrong"], m["both_right"]) == (2, 4, 1, 7)
    assert m["p_value"] == pytest.approx(_hand_mcnemar(2, 4)) and m["p_value"] == pytest.approx(22 / 32)
    for seed in range(5):
        y, a, b = _pairs(300, 0.7, 0.78, 0.5, seed)
        m = mcnemar_exact(y, a, b)
        only_a = int(((a == y) & (b != y)).sum())
        only_b = int(((b == y) & (a != y)).sum())
        assert (m["champion_only"], m["challenger_only"]) == (only_a, only_b)
        assert m["p_value"] == pytest.approx(_hand_mcnemar(only_a, only_b), rel=1e-9)
    assert mcnemar_exact(y, a, a)["p_value"] == 1.0  # no discordant image: nothing against "equal"


def test_bootstrap_agrees_with_scipy_and_covers_the_true_difference() -> None:
    y, a, b = _pairs(400, 0.75, 0.8, 0.6, seed=11)
    ours = paired_bootstrap(y, a, b, n_resamples=4000, seed=3)
    assert ours["difference"] == pytest.approx((b == y).mean() - (a == y).mean())
    ref = bootstrap(((a == y).astype(float), (b == y).astype(float)),
                    lambda ra, rb, axis: rb.mean(axis) - ra.mean(axis),
                    paired=True, vectorized=True, n_resamples=4000, method="percentile", random_state=5)
    assert ours["low"] == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert ours["high"] == pytest.approx(ref.confidence_interval.high, abs=0.006)

    # Coverage: draws from a population whose true difference is 0.05; a 95 % interval must cover it about 95 %
    # of the time (Binomial(60, 0.95) < 52 has probability < 0.002).
    covered = 0
    for seed in range(60):
        y, a, b = _pairs(300, 0.75, 0.8, 0.6, seed=100 + seed)
        ci = paired_bootstrap(y, a, b, n_resamples=1000, seed=seed)
        covered += ci["low"] <= 0.05 <= ci["high"]
    assert covered >= 52
    # A paired interval is narrower than treating the two accuracies as independent samples.
    y, a, b = _pairs(300, 0.75, 0.8, 0.9, seed=7)
    paired = paired_bootstrap(y, a, b, n_resamples=2000)
    draws = np.random.default_rng(0).integers(0, 300, (2, 2000, 300))  # each model resampled on its own
    unpaired = (b == y)[draws[0]].mean(1) - (a == y)[draws[1]].mean(1)
    assert paired["high"] - paired["low"] < 0.6 * (np.quantile(unpaired, 0.975) - np.quantile(unpaired, 0.025))


def test_recall_changes_match_sklearn() -> None:
    y, a, b = _pairs(200, 0.7, 0.8, 0.3, seed=2)
    classes = ["x", "y", "z", "never"]
    rows = recall_changes(y, a, b, classes)
    ra = recall_score(y, a, labels=[0, 1, 2], average=None)
    rb = recall_score(y, b, labels=[0, 1, 2], average=None)
    for k, name in enumerate(classes[:3]):
        assert rows[name]["champion"] == pytest.approx(ra[k]) and rows[name]["challenger"] == pytest.approx(rb[k])
        assert rows[name]["change"] == pytest.approx(rb[k] - ra[k]) and rows[name]["support"] == int((y == k).sum())
    assert rows["never"] == {"support": 0, "champion": None, "challenger": None, "change": None}


def test_calibration_uses_each_models_probabilities() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (500, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(logits)])  # labels drawn from softmax(logits): calibrated
    cal = calibration(softmax(logits, 1.0), softmax(logits, 0.25), y)
    # T = 1 is the truth here; sharpening (T = 0.25) makes the model over-confident: ECE must rise clearly.
    assert cal["champion_ece"] < 0.06 < cal["challenger_ece"] and cal["change"] > 0.05
    conf, correct = softmax(logits, 0.25).max(1), softmax(logits, 0.25).argmax(1) == y
    bins = np.clip(np.digitize(conf, np.linspace(0, 1, 16)[1:-1], right=True), 0, 14)
    by_hand = sum((bins == i).mean() * abs(correct[bins == i].mean() - conf[bins == i].mean())
                  for i in range(15) if (bins == i).any())
    assert cal["challenger_ece"] == pytest.approx(by_hand)


def _comparison(acc_a: float, acc_b: float, n: int = 100, *, seed: int = 0) -> dict:
    y, a, b = _pairs(n, acc_a, acc_b, 0.5, seed)
    probs = np.eye(3)
    return compare_split(y, probs[a], probs[b], a, b, ["x", "y", "z"], n_resamples=500)


def test_verdict_passes_and_fails_on_the_rule() -> None:
    rule = Promotion()
    # The same model on test (no difference at all) and a clearly better one on production: promote.
    y, a, _ = _pairs(200, 0.8, 0.8, 1.0, seed=4)
    same = compare_split(y, np.eye(3)[a], np.eye(3)[a], a, a, ["x", "y", "z"], n_resamples=200)
    better = _comparison(0.6, 0.9, n=200, seed=5)
    assert better["mcnemar"]["p_value"] < 0.001
    verdict = decide_promotion(same, better, rule)
    assert verdict.promote and [c.passed for c in verdict.checks] == [True, True, True]
    # Without a production split the production check is not applied, and the rest decides.
    alone = decide_promotion(same, None, rule)
    assert alone.promote and alone.checks[2].passed is None and "not applied" in alone.checks[2].detail

    # Worse on production (the right direction is required, not only a small p): do not promote.
    worse = _comparison(0.9, 0.6, n=200, seed=6)
    v = decide_promotion(same, worse, rule)
    assert not v.promote and v.checks[2].passed is False and v.reasons == [v.checks[2].detail]

    # A test drop just beyond the allowed one fails; exactly the allowed one passes.
    test = {**same, "accuracy": {**same["accuracy"], "difference": -0.02, "challenger": 0.78}}
    assert not decide_promotion(test, None, rule).promote
    assert decide_promotion(test, None, Promotion(max_test_drop=0.02)).promote

    # One class's recall falling by more than allowed fails, naming the class.
    recall = {**same, "per_class_recall": {**same["per_class_recall"],
                                           "y": {"support": 50, "champion": 0.9, "challenger": 0.86, "change": -0.04}}}
    v = decide_promotion(recall, None, rule)
    assert not v.promote and v.checks[1].passed is False and "y 0.900 -> 0.860" in v.checks[1].detail
    assert decide_promotion(recall, None, Promotion(max_class_recall_drop=0.05)).promote


def test_promotion_rule_in_the_spec() -> None:
    assert parse_spec({}).promotion == Promotion(max_test_drop=0.01, production_p=0.05, max_class_recall_drop=0.02)
    assert parse_spec({"promotion": {"production_p": 0.01}}).promotion.production_p == 0.01
    with pytest.raises(SpecError, match=r"promotion\.max_test_drp is an unknown key; did you mean 'max_test_drop'"):
        parse_spec({"promotion": {"max_test_drp": 0.02}})
    with pytest.raises(SpecError, match=r"promotion\.production_p=1\.5 must be <= 1"):
        parse_spec({"promotion": {"production_p": 1.5}})
