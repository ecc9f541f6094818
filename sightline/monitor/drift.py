"""Two-sample tests of a window of production predictions against the reference profile.

Each test is a pure function over arrays and returns a `DriftResult`: the family's statistic and p-value after
the multiple-testing correction it names, whether that is significant at `alpha`, and one entry per part
(class, image statistic) with its raw and adjusted p-value. Windows smaller than `min_window` are not tested
(`ran` False, `reason` says why).

  softmax_ks    per-class two-sample KS on the calibrated softmax columns, Bonferroni over the classes (BBSD,
                Rabanser et al. 2019, "Failing Loudly": their best detector). With 2 classes one column is tested,
                the other being 1 minus it.
  feature_mmd   MMD^2 (biased V-statistic) with a Gaussian kernel, bandwidth = the median pairwise distance of the
                pooled sample (Gretton et al. 2012), p-value from a seeded permutation test.
  image_stats   KS per continuous statistic, chi-square per categorical one, Holm over the statistics tested. A
                statistic with one value in window and reference together (every image 128 x 128, every file
                a JPEG) cannot differ (p = 1 whatever the images) and is not counted in the correction (Tarone
                1990: a test that cannot reject at any level spends none of the family's alpha).
  class_mix     chi-square test of homogeneity of predicted-class counts (window vs reference).
  unknown_rate  exact test of the window's unknown count against validation's, whose scores set the threshold
                (beta-binomial: the count of new images above an order statistic of the reference).

`check_window` runs them all against a `ReferenceProfile`. The window is significant when one of the
`DRIVING` tests is, after Bonferroni over those tests, so the false-alarm rate per window stays <= alpha;
class mix explains a drift rather than raises one. The unknown rate drives: images of no trained class that come
through the same camera and file pipeline leave the image statistics alone and move the features and softmax of
only the images they are, so on hymenoptera a window of 50 with 10 of them (20 % unknown, validation 1.3 %) raised
nothing in 40 of 40 trials while the unknown-rate test read each one as significant (now 38 of 40 windows are
significant; 0 of 200 windows of the test photos alone).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from sightline.errors import UserInputError
from sightline.monitor.reference import ReferenceProfile
from sightline.monitor.stats import CATEGORICAL, CONTINUOUS, stats_columns

__all__ = ["DriftResult", "WindowResult", "DRIVING", "adjust", "softmax_ks", "feature_mmd", "mmd_permutations",
           "image_stats_test", "class_mix_test", "unknown_rate_test", "check_window"]

DRIVING = ("softmax_ks", "feature_mmd", "image_stats", "unknown_rate")
MIN_WINDOW = 50
MIN_STAT_VALUES = 20  # an image statistic is tested only when both sides have this many values (JPEG quality)
MIN_EXPECTED = 5.0  # chi-square: categories expected fewer times than this in the window are pooled


@dataclass
class DriftResult:
    test: str
    ran: bool
    n_window: int
    n_reference: int
    alpha: float
    correction: str  # "bonferroni", "holm" or "none"
    statistic: float | None = None
    p_value: float | None = None  # family p-value after the correction (the smallest adjusted part p-value)
    significant: bool = False
    reason: str | None = None  # why the test did not run
    parts: list[dict[str, Any]] = field(default_factory=list)  # {name, statistic, p_value, p_adjusted, significant}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def adjust(p_values: Sequence[float], method: str) -> np.ndarray:
    """Family-wise adjusted p-values: "bonferroni" (m * p) or "holm" (step-down), capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out = np.empty(m)
        out[order] = np.minimum(1.0, stepped)
        return out
    raise UserInputError(f"unknown multiple-testing correction {method!r}; use 'bonferroni' or 'holm'")


def _skipped(test: str, n: int, m: int, alpha: float, correction: str, reason: str) -> DriftResult:
    return DriftResult(test=test, ran=False, n_window=n, n_reference=m, alpha=alpha, correction=correction,
                       reason=reason)


def _too_small(n: int, min_window: int) -> str | None:
    return f"window has {n} predictions; tests need at least {min_window}" if n < min_window else None


def _family(test: str, n: int, m: int, alpha: float, correction: str, parts: list[dict[str, Any]]) -> DriftResult:
    """Adjust the parts' raw p-values and summarise: family p = the smallest adjusted p, statistic = that
    part's statistic (ties: the larger statistic)."""
    adj = adjust([pt["p_value"] for pt in parts], correction)
    for pt, a in zip(parts, adj):
        pt["p_adjusted"] = float(a)
        pt["significant"] = bool(a < alpha)
    top = min(parts, key=lambda pt: (pt["p_adjusted"], -pt["statistic"]))
    p = float(top["p_adjusted"])
    return DriftResult(test=test, ran=True, n_window=n, n_reference=m, alpha=alpha, correction=correction,
                       statistic=float(top["statistic"]), p_value=p, significant=p < alpha, parts=parts)


def softmax_ks(window: np.ndarray, reference: np.ndarray, *, classes: Sequence[str] | None = None,
               alpha: float = 0.05, min_window: int = MIN_WINDOW) -> DriftResult:
    """BBSD: one two-sample KS test per class on (n, K) window vs (m, K) reference calibrated probabilities,
    Bonferroni over the columns tested. Statistic: the KS distance of the most significant class."""
    window, reference = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    if window.ndim != 2 or reference.ndim != 2 or window.shape[1] != reference.shape[1]:
        raise UserInputError(f"softmax windows must be (n, K) like the reference {reference.shape}, got {window.shape}")
    n, m, k = window.shape[0], reference.shape[0], reference.shape[1]
    if reason := _too_small(n, min_window):
        return _skipped("softmax_ks", n, m, alpha, "bonferroni", reason)
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    columns = [1] if k == 2 else list(range(k))
    # one call for all the columns: scipy tests each column as it would alone, and its per-call checks (most of
    # the time on a window of 80) run once
    res = stats.ks_2samp(window[:, columns], reference[:, columns], axis=0)
    parts = [{"name": names[c], "statistic": float(s), "p_value": float(p)}
             for c, s, p in zip(columns, res.statistic, res.pvalue)]
    return _family("softmax_ks", n, m, alpha, "bonferroni", parts)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i|^2 + |b_j|^2 - 2 a_i.b_j, at least 0: (n, m). Computed in place, in the order the sum was written."""
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :]
    ab = (2.0 * a) @ b.T  # as written before: (2 a) b^T
    d -= ab
    return np.maximum(d, 0.0, out=d)


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D float array, from one partition at the middle rank (the rank below it is the largest
    value left of it). np.median partitions at both middle ranks and the last one at once, which numpy does ten
    times slower: 3.6 of feature_mmd's 9 ms on a window of 200 against 400 reference rows."""
    size = values.size
    if size < 2:
        return float(np.median(values))
    k = size // 2
    part = np.partition(values, k)
    if np.isnan(part[k:].max()):  # NaN sorts last: the median is NaN, as np.median's
        return float("nan")
    if size % 2:
        return float(part[k])
    return float(np.mean(np.array([part[:k].max(), part[k]], dtype=values.dtype)))  # np.median's mean of the two


@lru_cache(maxsize=8)
def _upper(k: int) -> np.ndarray:
    """(k, k) bool mask of the pairs above the diagonal, read-only: a matrix indexed by it gives the pairs in
    row-major order, as np.triu_indices(k, 1) does, without its two (k^2 / 2,) index arrays (a third of
    feature_mmd's time). Kept for the last few sizes (at most 1 MB each): a service's windows have one size."""
    mask = np.triu(np.ones((k, k), dtype=bool), 1)
    mask.flags.writeable = False
    return mask


def mmd_permutations(rng: np.random.Generator, n_total: int, permutations: int) -> np.ndarray:
    """(P, n_total) row-wise permutations of 0..n_total-1; in permutation i, element j belongs to the permuted
    window when perm[i, j] < n (the window's size). Public so an independent implementation can reproduce the
    same splits from the same seed."""
    return rng.permuted(np.broadcast_to(np.arange(n_total), (permutations, n_total)), axis=1)


def feature_mmd(window: np.ndarray, reference: np.ndarray, *, permutations: int = 200, seed: int = 0,
                alpha: float = 0.05, min_window: int = MIN_WINDOW, bandwidth_sample: int = 1000) -> DriftResult:
    """MMD^2 between (n, C) window and (m, C) reference projected features, permutation p-value
    (1 + #{permuted >= observed}) / (1 + permutations). Kernel exp(-d^2 / (2 sigma^2)), sigma = median pairwise
    distance of the pooled sample (of a seeded subsample of `bandwidth_sample` rows when larger).
    All permutations are one matrix product: weights (P+1, n+m) times the (n+m)^2 kernel, in float32."""
    x, y = np.asarray(window, np.float32), np.asarray(reference, np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UserInputError(f"feature windows must be (n, C) like the reference {y.shape}, got {x.shape}")
    n, m = x.shape[0], y.shape[0]
    if reason := _too_small(n, min_window):
        return _skipped("feature_mmd", n, m, alpha, "none", reason)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([x, y])
    total = n + m
    kernel = _sq_dists(pooled, pooled)  # squared distances now, the kernel below
    if total <= bandwidth_sample:  # every pair: no copy of the matrix to take its upper triangle from
        d_sub = kernel[_upper(total)]
    else:
        sub = np.sort(rng.choice(total, bandwidth_sample, replace=False))
        d_sub = kernel[np.ix_(sub, sub)][_upper(bandwidth_sample)]
    sigma2 = _median(d_sub)
    if sigma2 <= 0.0:  # more than half the pairs identical: fall back to the mean distance
        sigma2 = float(d_sub.mean()) or 1.0
    kernel *= np.float32(-0.5 / sigma2)
    np.exp(kernel, out=kernel)
    sign = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]).astype(np.float32)
    weights = np.empty((permutations + 1, total), dtype=np.float32)  # row 0: the observed split
    weights[0] = sign
    weights[1:] = sign[mmd_permutations(rng, total, permutations)]
    mmd2 = np.einsum("ip,ip->p", kernel @ weights.T, weights.T, dtype=np.float64)
    observed, null = mmd2[0], mmd2[1:]
    p = float((1 + np.sum(null >= observed)) / (1 + permutations))
    return DriftResult(test="feature_mmd", ran=True, n_window=n, n_reference=m, alpha=alpha, correction="none",
                       statistic=float(observed), p_value=p, significant=p < alpha,
                       parts=[{"name": "mmd2", "statistic": float(observed), "p_value": p, "p_adjusted": p,
                               "significant": p < alpha, "bandwidth": float(np.sqrt(sigma2)),
                               "permutations": permutations}])


def _chi2(window: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """Chi-square homogeneity test of two (L,) count vectors; categories expected fewer than MIN_EXPECTED
    times in the window are pooled into one. Returns (statistic, p-value, degrees of freedom); (0, 1, 0) when
    fewer than two categories remain."""
    table = np.stack([window, reference]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    expected = table.sum(0) * table[0].sum() / table.sum()
    small = expected < MIN_EXPECTED
    if small.any():
        table = np.concatenate([table[:, ~small], table[:, small].sum(axis=1, keepdims=True)], axis=1)
    if table.shape[1] < 2:
        return 0.0, 1.0, 0
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue), int(res.dof)


def _counts(window: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = sorted(set(window.tolist()) | set(reference.tolist()))
    index = {v: i for i, v in enumerate(labels)}
    w = np.bincount([index[v] for v in window.tolist()], minlength=len(labels))
    r = np.bincount([index[v] for v in reference.tolist()], minlength=len(labels))
    return w, r, labels


def _ks_columns(tests: Sequence[tuple[dict[str, Any], np.ndarray, np.ndarray]]) -> None:
    """Set each part's two-sample KS "statistic" and "p_value" from its (window, reference) values. The statistics
    with as many values as each other on each side (all but JPEG quality, usually) are one scipy call, which tests
    each column as it would alone: its per-call checks, most of the time on a window of 80, run once."""
    groups: dict[tuple[int, int], list[tuple[dict[str, Any], np.ndarray, np.ndarray]]] = {}
    for test in tests:
        groups.setdefault((test[1].size, test[2].size), []).append(test)
    for group in groups.values():
        res = stats.ks_2samp(np.stack([w for _, w, _ in group], axis=1), np.stack([r for _, _, r in group], axis=1),
                             axis=0)
        for (part, _, _), statistic, p in zip(group, res.statistic, res.pvalue):
            part["statistic"], part["p_value"] = float(statistic), float(p)


def image_stats_test(window: Sequence[Mapping[str, Any]] | Mapping[str, np.ndarray],
                     reference: Mapping[str, np.ndarray], *, alpha: float = 0.05, min_window: int = MIN_WINDOW,
                     correction: str = "holm") -> DriftResult:
    """KS per continuous statistic (NaN dropped), chi-square per categorical one, `correction` over the
    statistics tested. `window` is per-image dicts (`monitor.stats.image_stats`) or columns; `reference` is
    columns (`ReferenceProfile.stats_reference`: validation and the training sample). A statistic with fewer than
    20 values on either side is skipped (named in `reason`), and so is one that holds a single value across window
    and reference together (it cannot differ; counting it would only weaken the correction). Statistic: that of the most significant part (KS
    distance or chi-square)."""
    cols = stats_columns(list(window)) if not isinstance(window, Mapping) else dict(window)
    n = len(next(iter(cols.values()))) if cols else 0
    m = len(next(iter(reference.values()))) if reference else 0
    if not reference:
        return _skipped("image_stats", n, m, alpha, correction, "the reference profile has no image statistics")
    if reason := _too_small(n, min_window):
        return _skipped("image_stats", n, m, alpha, correction, reason)
    parts, skipped, constant = [], [], []
    ks: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []  # the KS parts, tested together below
    for name in [c for c in CONTINUOUS + CATEGORICAL if c in cols and c in reference]:
        w, r = np.asarray(cols[name]), np.asarray(reference[name])
        if name in CONTINUOUS:
            w, r = w.astype(np.float64), r.astype(np.float64)
            w, r = w[np.isfinite(w)], r[np.isfinite(r)]
            if min(w.size, r.size) < MIN_STAT_VALUES:
                skipped.append(name)
                continue
            if min(w.min(), r.min()) == max(w.max(), r.max()):  # one value in both
                constant.append(name)
                continue
            parts.append({"name": name, "kind": "ks", "statistic": None, "p_value": None})
            ks.append((parts[-1], w, r))
        else:
            wc, rc, _ = _counts(w.astype(str), r.astype(str))
            if wc.size < 2:
                constant.append(name)
                continue
            chi, p, dof = _chi2(wc, rc)
            parts.append({"name": name, "kind": "chi2", "statistic": chi, "p_value": p, "dof": dof})
    _ks_columns(ks)
    notes = ([f"skipped (fewer than {MIN_STAT_VALUES} values): {', '.join(skipped)}"] if skipped else []) + (
        [f"not counted (one value in window and reference): {', '.join(constant)}"] if constant else [])
    if not parts:
        return _skipped("image_stats", n, m, alpha, correction,
                        "; ".join(notes) if notes else "no image statistic has enough values on both sides")
    result = _family("image_stats", n, m, alpha, correction, parts)
    if notes:
        result.reason = "; ".join(notes)
    return result


def class_mix_test(window: np.ndarray, reference: np.ndarray, n_classes: int, *,
                   classes: Sequence[str] | None = None, alpha: float = 0.05,
                   min_window: int = MIN_WINDOW) -> DriftResult:
    """Chi-square homogeneity of (n,) window vs (m,) reference predicted class indices (classes expected
    fewer than 5 times in the window pooled). Parts: each class's share in window and reference."""
    w = np.bincount(np.asarray(window, dtype=np.int64), minlength=n_classes)
    r = np.bincount(np.asarray(reference, dtype=np.int64), minlength=n_classes)
    n, m = int(w.sum()), int(r.sum())
    if reason := _too_small(n, min_window):
        return _skipped("class_mix", n, m, alpha, "none", reason)
    chi, p, dof = _chi2(w, r)
    names = list(classes) if classes is not None else [str(i) for i in range(n_classes)]
    shares = [{"name": names[i], "window_share": float(w[i] / n), "reference_share": float(r[i] / max(m, 1))}
              for i in range(n_classes)]
    return DriftResult(test="class_mix", ran=True, n_window=n, n_reference=m, alpha=alpha, correction="none",
                       statistic=chi, p_value=p, significant=p < alpha,
                       parts=[{"name": "chi2", "statistic": chi, "p_value": p, "p_adjusted": p,
                               "significant": p < alpha, "dof": dof, "shares": shares}])


def unknown_rate_test(n_unknown: int, n: int, reference_rate: float, n_reference: int, *, alpha: float = 0.05,
                      min_window: int = MIN_WINDOW, alternative: str = "greater") -> DriftResult:
    """Exact test of `n_unknown` of `n` window predictions flagged unknown, when the threshold is a quantile of
    the `n_reference` validation scores with a share `reference_rate` of them above it (c images).

    The threshold comes from those same validation images, so their rate is no population rate: with c = 1 of 76
    the rate of new in-distribution images is anywhere near 0.5-7 %, and a binomial test against 1.3 % flagged 37 %
    of in-distribution windows of 500 (simulated, exchangeable scores). Under exchangeability the share of new
    images above the (m - c)-th order statistic is Beta(c + 1, m - c), so their count in a window is
    BetaBinomial(n, c + 1, m - c); the threshold is at or above that order statistic, so its p-value is exact or
    conservative (2.1 % false alarms at alpha 0.05 in the same simulation). `alternative` "greater" (default: only
    more unknowns is a problem) or "two-sided" (twice the smaller tail, capped at 1)."""
    if alternative not in ("greater", "two-sided"):
        raise UserInputError(f"alternative {alternative!r}: use 'greater' or 'two-sided'")
    if reason := _too_small(n, min_window):
        return _skipped("unknown_rate", n, n_reference, alpha, "none", reason)
    m = max(int(n_reference), 1)
    c = min(max(int(round(float(reference_rate) * m)), 0), m - 1)
    null = (int(n), c + 1, m - c)  # BetaBinomial(n, c + 1, m - c), not frozen: freezing costs more than sf itself
    upper = float(stats.betabinom.sf(int(n_unknown) - 1, *null))
    if alternative == "greater":
        p = upper
    else:
        p = min(1.0, 2.0 * min(upper, float(stats.betabinom.cdf(int(n_unknown), *null))))
    rate = c / m
    return DriftResult(test="unknown_rate", ran=True, n_window=n, n_reference=n_reference, alpha=alpha,
                       correction="none", statistic=float(n_unknown / n), p_value=p, significant=p < alpha,
                       parts=[{"name": "unknown_rate", "statistic": float(n_unknown / n), "p_value": p,
                               "p_adjusted": p, "significant": p < alpha, "reference_rate": rate}])


@dataclass
class WindowResult:
    n: int
    significant: bool  # a driving test is significant after Bonferroni over the driving tests that ran
    p_value: float | None  # min(1, number of driving tests that ran * smallest driving p-value)
    alpha: float
    correction: str
    tests: dict[str, DriftResult]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "significant": self.significant, "p_value": self.p_value, "alpha": self.alpha,
                "correction": self.correction, "tests": {k: v.to_json() for k, v in self.tests.items()}}


def check_window(
    profile: ReferenceProfile,
    probabilities: np.ndarray,
    *,
    projected: np.ndarray | None = None,
    image_stats: Sequence[Mapping[str, Any]] | Mapping[str, np.ndarray] | None = None,
    unknown: np.ndarray | None = None,
    alpha: float = 0.05,
    min_window: int = MIN_WINDOW,
    permutations: int = 200,
    seed: int = 0,
    driving: Sequence[str] = DRIVING,
) -> WindowResult:
    """Every test of one window against `profile`: (n, K) calibrated probabilities, optional (n, C) projected
    features (`profile.project`), per-image statistics and (n,) bool unknown flags (`profile.unknown`). The
    probabilities must use the profile's temperature (`profile.temperature`), or calibration alone reads as
    drift. Tests whose inputs are missing are left out. Each test is run at `alpha`; the window's verdict is
    Bonferroni over the `driving` tests that ran."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = probabilities.shape[0]
    ref_probs = profile.probabilities
    kw = {"alpha": alpha, "min_window": min_window}
    tests = {"softmax_ks": softmax_ks(probabilities, ref_probs, classes=profile.classes, **kw),
             "class_mix": class_mix_test(probabilities.argmax(axis=1), ref_probs.argmax(axis=1),
                                         len(profile.classes), classes=profile.classes, **kw)}
    if projected is not None:
        tests["feature_mmd"] = feature_mmd(projected, profile.projected, permutations=permutations, seed=seed, **kw)
    if image_stats is not None:
        tests["image_stats"] = image_stats_test(image_stats, profile.stats_reference, **kw)
    if unknown is not None and profile.ood_choice is not None:
        unknown = np.asarray(unknown, dtype=bool)
        tests["unknown_rate"] = unknown_rate_test(int(unknown.sum()), unknown.size, profile.ood_choice.val_flag_rate,
                                                  profile.ood_choice.n_in, **kw)
    ran = [tests[t] for t in driving if t in tests and tests[t].ran]
    if not ran:
        return WindowResult(n=n, significant=False, p_value=None, alpha=alpha, correction="bonferroni", tests=tests)
    p = float(min(1.0, len(ran) * min(t.p_value for t in ran)))
    return WindowResult(n=n, significant=p < alpha, p_value=p, alpha=alpha, correction="bonferroni", tests=tests)
