"""Drift tests: agreement with scipy and with a slow MMD, known shifts detected, false alarms near alpha."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from sightline.errors import UserInputError
from sightline.monitor.drift import (
    adjust,
    check_window,
    class_mix_test,
    feature_mmd,
    image_stats_test,
    mmd_permutations,
    softmax_ks,
    unknown_rate_test,
)
from sightline.monitor.ood import OODChoice
from sightline.monitor.reference import ReferenceProfile

CLASSES = ["a", "b", "c"]
C = 8  # projected feature dimensions
BASE = np.array([2.0, 1.0, 1.0])  # Dirichlet concentration of the reference softmax vectors


def _probs(rng, n, alpha=BASE):
    return rng.dirichlet(alpha, n)


def _stats(rng, n, *, brightness=0.45, fmt_png=0.25):
    return {"width": rng.integers(200, 260, n).astype(float), "brightness": rng.normal(brightness, 0.08, n),
            "sharpness": rng.lognormal(5.0, 1.0, n),
            "jpeg_quality": np.where(rng.random(n) < fmt_png, np.nan, rng.integers(70, 96, n)).astype(float),
            "format": np.where(rng.random(n) < fmt_png, "PNG", "JPEG")}


def _profile(m=400, seed=1000) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    probs = _probs(rng, m)
    choice = OODChoice(score="msp", threshold=0.5, quantile=0.99, chosen_by="test", n_in=m, n_out=0,
                       table={"msp": {"val_flag_rate": 0.01}})
    return ReferenceProfile(classes=CLASSES, temperature=1.0, logits=np.log(probs).astype(np.float32),
                            pca_mean=np.zeros(C, np.float32), pca_components=np.eye(C, dtype=np.float32),
                            projected=rng.normal(size=(m, C)).astype(np.float16), image_stats=_stats(rng, m),
                            ood_choice=choice)


def _slow_mmd(x, y, permutations, seed):
    """Textbook MMD^2 (biased) with loops, the median heuristic by loops, the same permutations."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    total, n = len(pooled), len(x)
    dists = [np.sum((pooled[i] - pooled[j]) ** 2) for i in range(total) for j in range(i + 1, total)]
    sigma2 = float(np.median(dists))

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma2))

    def mmd2(xs, ys):
        kxx = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
        kyy = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
        kxy = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
        return kxx + kyy - 2 * kxy

    observed = mmd2(pooled[:n], pooled[n:])
    perms = mmd_permutations(np.random.default_rng(seed), total, permutations)
    null = [mmd2(pooled[p < n], pooled[p >= n]) for p in perms]
    return observed, (1 + sum(v >= observed for v in null)) / (1 + permutations)


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_mmd_matches_slow_reference(shift):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 3)) + shift, rng.normal(size=(13, 3))
    res = feature_mmd(x, y, permutations=60, seed=11, min_window=5)
    observed, p = _slow_mmd(x, y, 60, 11)
    assert res.statistic == pytest.approx(observed, rel=1e-4)
    assert res.p_value == pytest.approx(p)


def test_ks_and_chi_square_match_scipy():
    rng = np.random.default_rng(0)
    w, r = _probs(rng, 80, np.array([1.0, 1.0, 2.0])), _probs(rng, 300)
    res = softmax_ks(w, r, classes=CLASSES)
    raw = [stats.ks_2samp(w[:, c], r[:, c]).pvalue for c in range(3)]
    assert [p["p_value"] for p in res.parts] == pytest.approx(raw)
    assert res.p_value == pytest.approx(min(1.0, 3 * min(raw))) and res.correction == "bonferroni"
    assert len(softmax_ks(w[:, :2] / w[:, :2].sum(1, keepdims=True), r[:, :2]).parts) == 1  # binary: one column
    wl, rl = rng.integers(0, 3, 100), rng.integers(0, 3, 400)
    mix = class_mix_test(wl, rl, 3)
    table = np.stack([np.bincount(wl, minlength=3), np.bincount(rl, minlength=3)])
    expected = stats.chi2_contingency(table, correction=False)
    assert mix.statistic == pytest.approx(expected.statistic) and mix.p_value == pytest.approx(expected.pvalue)
    u = unknown_rate_test(7, 100, 0.02, 500)  # c = 10 of 500 validation images above the threshold
    assert u.p_value == pytest.approx(stats.betabinom(100, 11, 490).sf(6))


def test_chi_square_pools_rare_categories():
    w = np.array([0] * 60 + [1] * 38 + [2, 3])  # classes 2 and 3 expected < 5 times in the window
    r = np.array([0] * 240 + [1] * 150 + [2] * 5 + [3] * 5)
    res = class_mix_test(w, r, 4)
    pooled = np.array([[60, 38, 2], [240, 150, 10]])
    assert res.p_value == pytest.approx(stats.chi2_contingency(pooled, correction=False).pvalue)
    assert res.parts[0]["dof"] == 2


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    with pytest.raises(UserInputError, match="correction"):
        adjust(p, "fdr")


def test_small_windows_are_not_tested():
    profile = _profile()
    rng = np.random.default_rng(0)
    res = check_window(profile, _probs(rng, 30), projected=rng.normal(size=(30, C)), unknown=np.zeros(30, bool),
                       image_stats={k: v[:30] for k, v in _stats(rng, 30).items()})
    assert not res.significant and res.p_value is None
    for t in res.tests.values():
        assert not t.ran and "at least 50" in t.reason and t.p_value is None


def _trial(profile, seed, n, *, alpha=BASE, feature_shift=0.0, brightness=0.45, unknown_rate=0.01):
    rng = np.random.default_rng(seed)
    probs = _probs(rng, n, alpha)
    return check_window(profile, probs, projected=rng.normal(size=(n, C)) + feature_shift,
                        image_stats=_stats(rng, n, brightness=brightness), unknown=rng.random(n) < unknown_rate,
                        permutations=100, seed=seed)


def test_false_alarm_rate_near_alpha_without_shift():
    """200 seeded clean windows: every test and the window verdict flag at most ~alpha (<= 8 % allows for the
    binomial spread of 200 trials around 5 %); the exact permutation test is not dead either."""
    profile = _profile()
    results = [_trial(profile, seed, 80) for seed in range(200)]
    rates = {name: np.mean([r.tests[name].significant for r in results]) for name in results[0].tests}
    rates["window"] = np.mean([r.significant for r in results])
    assert json.loads(json.dumps(results[0].to_json()))["tests"].keys() == results[0].tests.keys()  # plain data
    assert all(rate <= 0.08 for rate in rates.values()), rates
    assert rates["feature_mmd"] >= 0.01, rates


@pytest.mark.parametrize("shift, test, part", [
    ({"alpha": np.array([1.0, 1.0, 3.0])}, "softmax_ks", None),
    ({"feature_shift": 0.35}, "feature_mmd", None),
    ({"brightness": 0.52}, "image_stats", "brightness"),
    ({"alpha": np.array([1.0, 2.0, 1.0])}, "class_mix", None),
    ({"unknown_rate": 0.06}, "unknown_rate", None),
])
def test_known_shifts_are_detected(shift, test, part):
    profile = _profile()
    results = [_trial(profile, seed, 200, **shift) for seed in range(30)]
    power = np.mean([r.tests[test].significant for r in results])
    assert power >= 0.9, (test, power)
    if part is not None:  # the part that moved is the one reported
        hits = [p["name"] for r in results for p in r.tests[test].parts if p["significant"]]
        assert hits.count(part) >= 0.9 * len(results) and set(hits) == {part}
    if test in ("softmax_ks", "feature_mmd", "image_stats"):  # driving tests raise the window's verdict
        assert np.mean([r.significant for r in results]) >= 0.85


def test_image_stats_skips_sparse_columns_and_reports_it():
    rng = np.random.default_rng(0)
    ref = _stats(rng, 300)
    window = _stats(rng, 60, fmt_png=0.9)  # almost no JPEG: too few quality values
    window["jpeg_quality"][:] = np.nan
    res = image_stats_test(window, ref)
    assert res.ran and "jpeg_quality" in res.reason and res.correction == "holm"
    assert {p["name"] for p in res.parts} == {"width", "brightness", "sharpness", "format"}
    assert next(p for p in res.parts if p["name"] == "format")["significant"]  # 90 % PNG vs 25 %
    rows = [{k: (None if isinstance(v[i], float) and np.isnan(v[i]) else v[i].item()) for k, v in window.items()}
            for i in range(60)]
    assert image_stats_test(rows, ref).p_value == pytest.approx(res.p_value)  # per-image dicts work too


def test_constant_statistics_are_not_counted():
    """A statistic with one value in window and reference together (every image 128 px high, every one RGB) cannot
    differ: it is left out of Holm (Tarone), so the statistics that can differ keep their power; a value the
    reference never had makes it count again."""
    rng = np.random.default_rng(1)
    ref, window = _stats(rng, 300), _stats(rng, 100, brightness=0.47)
    ref["height"], window["height"] = np.full(300, 128.0), np.full(100, 128.0)
    ref["mode"], window["mode"] = np.full(300, "RGB"), np.full(100, "RGB")
    res = image_stats_test(window, ref)
    assert [p["name"] for p in res.parts] == ["width", "brightness", "sharpness", "jpeg_quality", "format"]
    assert "not counted (one value in window and reference): height, mode" in res.reason
    for part in res.parts[:4]:  # raw p-values: scipy on the finite values
        w, r = window[part["name"]], ref[part["name"]]
        assert part["p_value"] == pytest.approx(stats.ks_2samp(w[np.isfinite(w)], r[np.isfinite(r)]).pvalue)
    raw = sorted(p["p_value"] for p in res.parts)  # Holm by hand over the 5 that vary
    holm = np.minimum(1.0, np.maximum.accumulate([(5 - i) * p for i, p in enumerate(raw)]))
    assert sorted(p["p_adjusted"] for p in res.parts) == pytest.approx(holm)
    window["height"][0], window["mode"][0] = 127.0, "L"
    res = image_stats_test(window, ref)
    assert {"height", "mode"} <= {p["name"] for p in res.parts} and len(res.parts) == 7
    ref = {k: v for k, v in ref.items() if k in ("height", "mode")}
    res = image_stats_test({k: np.full(100, v[0]) for k, v in ref.items()}, ref)
    assert not res.ran and "one value" in res.reason


def test_shapes_are_checked():
    with pytest.raises(UserInputError, match="softmax"):
        softmax_ks(np.ones((60, 3)) / 3, np.ones((60, 4)) / 4)
    with pytest.raises(UserInputError, match="feature"):
        feature_mmd(np.ones((60, 3)), np.ones((60, 4)))


def test_unknown_rate_false_alarms_stay_below_alpha_when_validation_set_the_threshold():
    """The open-set threshold is the 99 % quantile of validation's scores, and the test compared a window with the
    share of those same images above it (1 of 76 on hymenoptera) as if it were the population's rate: 37 % of
    in-distribution windows of 500 read as significant. Window and validation exchangeable here."""
    rng = np.random.default_rng(0)
    m, n, trials = 76, 500, 600
    flagged = 0
    for _ in range(trials):
        val = rng.normal(size=m)
        threshold = np.quantile(val, 0.99)
        window = rng.normal(size=n)
        flagged += unknown_rate_test(int((window > threshold).sum()), n, float(np.mean(val > threshold)), m).significant
    assert flagged / trials <= 0.05
    # a window with a fifth of its images above the threshold still reads as one
    assert unknown_rate_test(100, 500, 1 / 76, 76).p_value < 1e-4
    assert unknown_rate_test(10, 50, 1 / 76, 76).p_value < 1e-3


def test_a_rise_in_unknown_images_alone_makes_the_window_significant():
    """Images of no trained class through the same camera and file pipeline leave image statistics, features and
    softmax of the rest alone: only the unknown rate moves, and it explained drift without raising it, so a window
    a fifth unknown (validation 1 %) raised no alert."""
    profile = _profile()
    results = [_trial(profile, seed, 80, unknown_rate=0.2) for seed in range(20)]
    assert all(r.tests["unknown_rate"].significant for r in results)
    assert np.mean([r.significant for r in results]) >= 0.9
