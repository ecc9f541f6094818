"""Windows of production predictions, and one JSON summary per window: the drift tests against the reference
profile, label-free (and, where reviewers labelled, measured) accuracy, unknown rate, class mix, confidence
histogram and image-statistic shifts.

Window kinds (the server and `sightline monitor` share them):
  recent   the last N predictions (rolling; overlapping windows are not independent, so they are shown, never
           counted by an alert)
  block    consecutive, non-overlapping blocks of N predictions (ordered by prediction id): what the alert counts
  hour     calendar hours (UTC); day: calendar days (UTC)

A window smaller than `min_window` is not tested: its summary says so in `reason` and `significant` is None (an
alert neither counts it nor breaks its streak).

    batch = Batch(ids=..., times=..., probabilities=..., projected=..., unknown=..., ood=..., image_stats=...,
                  reviewed=...)
    for rows in blocks(len(batch), 500):
        summary = summarize(profile, batch.take(rows), kind="block", key=int(batch.ids[rows][-1]))
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from sightline.monitor.drift import DRIVING, MIN_WINDOW, check_window
from sightline.monitor.estimate import expected_accuracy, measured_accuracy
from sightline.monitor.reference import ReferenceProfile
from sightline.monitor.stats import CATEGORICAL, CONTINUOUS, stats_columns

__all__ = ["KINDS", "PERIOD_SECONDS", "NO_LABEL", "NOT_A_CLASS", "Batch", "blocks", "periods", "summarize", "jsonable"]

KINDS = ("recent", "block", "hour", "day")
PERIOD_SECONDS = {"hour": 3600, "day": 86400}
CONFIDENCE_BINS = 10
EXAMPLES = 12  # prediction ids kept per shifted image statistic, most shifted first (the report shows kept images)
NO_LABEL = -1  # Batch.reviewed where no reviewer labelled the prediction
NOT_A_CLASS = -2  # Batch.reviewed where the reviewer's label is 'unknown': the image shows none of the classes


@dataclass
class Batch:
    """Columns of n monitored predictions, oldest first (one row per prediction)."""

    ids: np.ndarray  # (n,) int64 prediction ids, increasing
    times: np.ndarray  # (n,) float64 seconds since the epoch (UTC) when the prediction was stored
    probabilities: np.ndarray  # (n, K) float32 calibrated softmax (the profile's temperature)
    projected: np.ndarray  # (n, C) float32 projected features (`ReferenceProfile.project`)
    unknown: np.ndarray  # (n,) bool open-set flag
    ood: np.ndarray  # (n,) float64 open-set score, NaN where the profile chose none
    image_stats: list[dict[str, Any]] = field(default_factory=list)  # n dicts (`monitor.stats.image_stats`)
    # (n,) int64 class index of a reviewer's label, NO_LABEL (-1) where none, NOT_A_CLASS (-2) for 'unknown'
    reviewed: np.ndarray | None = None
    # (n,) bool: the prediction is in the service's random slice (drawn whatever its decision), None when unknown
    in_slice: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: slice | np.ndarray) -> Batch:
        idx = np.arange(len(self))[rows]
        return Batch(ids=self.ids[idx], times=self.times[idx], probabilities=self.probabilities[idx],
                     projected=self.projected[idx], unknown=self.unknown[idx], ood=self.ood[idx],
                     image_stats=[self.image_stats[i] for i in idx] if self.image_stats else [],
                     reviewed=None if self.reviewed is None else self.reviewed[idx],
                     in_slice=None if self.in_slice is None else self.in_slice[idx])


def blocks(n_rows: int, size: int) -> list[slice]:
    """Consecutive full blocks of `size` rows of n_rows (a trailing partial block is left for later)."""
    if size < 1:
        raise ValueError(f"block size must be at least 1, got {size}")
    return [slice(start, start + size) for start in range(0, n_rows - size + 1, size)]


def periods(times: np.ndarray, unit: str) -> list[tuple[int, slice]]:
    """(period number, rows) of each calendar period ("hour" or "day", UTC) that holds rows of (n,) sorted epoch
    seconds; period number p covers [p * seconds, (p + 1) * seconds)."""
    if unit not in PERIOD_SECONDS:
        raise ValueError(f"unknown period {unit!r}; use one of {sorted(PERIOD_SECONDS)}")
    number = np.floor(np.asarray(times, dtype=np.float64) / PERIOD_SECONDS[unit]).astype(np.int64)
    if number.size == 0:
        return []
    cut = np.flatnonzero(np.diff(number)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [number.size]])
    return [(int(number[s]), slice(int(s), int(e))) for s, e in zip(starts, ends)]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(float(seconds), tz=timezone.utc).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """`value` with numpy scalars made plain and NaN / infinity made None (JSON, PostgreSQL's JSON included,
    has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def _test_json(result: Any) -> dict[str, Any]:
    d = result.to_json()
    keep = ("name", "kind", "statistic", "p_value", "p_adjusted", "significant", "dof", "reference_rate")
    d["parts"] = [{k: v for k, v in pt.items() if k in keep} for pt in d["parts"]]
    return d


def _shares(indices: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=len(classes))
    total = max(int(counts.sum()), 1)
    return {c: float(n / total) for c, n in zip(classes, counts)}


def _stat_shifts(window: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per image statistic: window and reference medians (continuous) or the most common value's share
    (categorical), and the robust shift (window median - reference median) / reference IQR (the reference's
    standard deviation when its IQR is 0: flat_share is 0 for most photos)."""
    out: dict[str, dict[str, Any]] = {}
    for name in CONTINUOUS:
        if name not in window or name not in reference:
            continue
        w, r = window[name][np.isfinite(window[name])], reference[name][np.isfinite(reference[name])]
        if w.size == 0 or r.size == 0:
            continue
        q1, med, q3 = np.percentile(r, [25, 50, 75])
        scale = q3 - q1 if q3 > q1 else (float(r.std()) or abs(med) or 1.0)
        w1, w3 = np.percentile(w, [25, 75])
        out[name] = {"window_median": float(np.median(w)), "reference_median": float(med),
                     "shift_iqr": float((np.median(w) - med) / scale),
                     # the spread, for the words: a window of one size of image differs in spread, not in "some images"
                     "window_iqr": float(w3 - w1), "reference_iqr": float(q3 - q1)}
    for name in CATEGORICAL:
        if name not in window or name not in reference or window[name].size == 0:
            continue
        values, counts = np.unique(window[name], return_counts=True)
        top = str(values[counts.argmax()])
        out[name] = {"window_top": top, "window_share": float(counts.max() / window[name].size),
                     "reference_share": float(np.mean(reference[name] == top)) if reference[name].size else None}
    return out


def _examples(ids: np.ndarray, window: dict[str, np.ndarray], reference: dict[str, np.ndarray], names: Sequence[str],
              shifts: dict[str, dict[str, Any]]) -> None:
    """Add `examples` to `shifts[name]` for each statistic in `names`: up to EXAMPLES prediction ids of the window,
    those furthest in the direction of the shift first (continuous: the highest values when the window's median is
    above the reference's, else the lowest; categorical: values the reference holds least often)."""
    for name in names:
        if name not in shifts or name not in window:
            continue
        values = window[name]
        if name in CONTINUOUS:
            up = shifts[name]["window_median"] >= shifts[name]["reference_median"]
            key = np.where(np.isfinite(values), -values if up else values, np.inf)
            order = np.argsort(key, kind="stable")
            order = order[np.isfinite(key[order])]
        else:
            ref_values, ref_counts = np.unique(reference[name], return_counts=True)
            seen = dict(zip(ref_values.tolist(), (ref_counts / max(reference[name].size, 1)).tolist()))
            share = np.array([seen.get(v, 0.0) for v in values.tolist()])
            order = np.argsort(share, kind="stable")
            order = order[share[order] < 0.5]  # values most of the reference holds are not examples of a shift
        shifts[name]["examples"] = [int(ids[i]) for i in order[:EXAMPLES]]


def summarize(
    profile: ReferenceProfile,
    batch: Batch,
    *,
    kind: str,
    key: int,
    start: float | None = None,
    end: float | None = None,
    alpha: float = 0.05,
    min_window: int = MIN_WINDOW,
    permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """One window's JSON summary (see the module docstring). `start` / `end` (epoch seconds) default to the
    first and last prediction's time; calendar windows pass their period's bounds.

    Keys: kind, key, start, end, first_id, last_id, n, tested, reason, significant (None when not tested),
    p_value, alpha, correction, min_window, tests {name: DriftResult JSON}, unknown_rate, reference_unknown_rate,
    mean_confidence, reference_mean_confidence (validation's), expected_accuracy (with `reliable`: False when the
    window drifted, None when not tested, and `caveat`), measured_accuracy (None without reviewer labels; a label
    'unknown' is right where the service flagged the image unknown, counted in `not_a_class` {n, rejected};
    `random_slice`: the same on the labelled members of the service's random slice, unbiased, when the batch knows
    them), class_mix,
    reference_class_mix, confidence_hist {edges, counts, reference}, image_stats {statistic: shift; a statistic the
    image-statistics test found significant also has `examples`, prediction ids of its most shifted images}."""
    n = len(batch)
    classes = profile.classes
    probs = np.asarray(batch.probabilities, dtype=np.float64).reshape(n, len(classes))
    top = probs.max(axis=1) if n else np.zeros(0)
    ref_probs = profile.probabilities
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    has_ood = profile.ood_choice is not None
    cols = stats_columns(batch.image_stats)
    summary: dict[str, Any] = {
        "kind": kind, "key": int(key),
        "start": _iso(start if start is not None else (batch.times[0] if n else 0.0)),
        "end": _iso(end if end is not None else (batch.times[-1] if n else 0.0)),
        "first_id": int(batch.ids[0]) if n else None, "last_id": int(batch.ids[-1]) if n else None, "n": n,
        "min_window": min_window, "alpha": alpha,
        "unknown_rate": float(batch.unknown.mean()) if n and has_ood else None,
        "reference_unknown_rate": profile.ood_choice.val_flag_rate if has_ood else None,
        "mean_confidence": float(top.mean()) if n else None,
        "reference_mean_confidence": float(ref_probs.max(axis=1).mean()),
        "class_mix": _shares(probs.argmax(axis=1), classes) if n else {},
        "reference_class_mix": _shares(ref_probs.argmax(axis=1), classes),
        "confidence_hist": {"edges": edges.tolist(), "counts": np.histogram(top, edges)[0].tolist(),
                            "reference": np.histogram(ref_probs.max(axis=1), edges)[0].tolist()},
        "expected_accuracy": {k: v for k, v in expected_accuracy(probs, classes=classes).items()},
        "measured_accuracy": None,
        "image_stats": _stat_shifts(cols, profile.stats_reference) if n else {},
    }
    if batch.reviewed is not None and n:
        labelled = batch.reviewed != NO_LABEL
        if labelled.any():
            # a reviewer's 'unknown' (no trained class) is right only where the service said unknown too
            none = batch.reviewed == NOT_A_CLASS
            predicted = np.where(none & batch.unknown, NOT_A_CLASS, probs.argmax(axis=1))
            measured = measured_accuracy(predicted[labelled], batch.reviewed[labelled])
            measured["not_a_class"] = {"n": int(none.sum()), "rejected": int((none & batch.unknown).sum())}
            measured["expected_on_labelled"] = float(top[labelled].mean())
            measured["note"] = ("reviewer labels come from the review queue (low confidence and unknown "
                                "predictions), not a random sample: compare with expected_on_labelled, the "
                                "label-free estimate on the same images")
            if batch.in_slice is not None:
                # the random slice's labelled members: drawn whatever the decision, so their accuracy is the
                # window's without the queue's bias (what the label-free estimate's caveat asks a person to label)
                chosen = labelled & batch.in_slice
                measured["random_slice"] = {"members": int(batch.in_slice.sum()),
                                            **measured_accuracy(predicted[chosen], batch.reviewed[chosen])}
            summary["measured_accuracy"] = measured
    if n < min_window:
        summary.update(tested=False, significant=None, p_value=None, correction="bonferroni", tests={},
                       reason=f"not tested: window has {n} predictions; tests need at least {min_window}")
        summary["expected_accuracy"].update(reliable=None, caveat=None)
        return jsonable(summary)
    result = check_window(profile, probs, projected=batch.projected,
                          image_stats=batch.image_stats if batch.image_stats else None,
                          unknown=batch.unknown if has_ood else None, alpha=alpha, min_window=min_window,
                          permutations=permutations, seed=seed)
    tested = result.p_value is not None
    stat_test = result.tests.get("image_stats")
    if stat_test is not None and stat_test.ran:
        shifted = [pt["name"] for pt in stat_test.parts if pt.get("significant")]
        _examples(batch.ids, cols, profile.stats_reference, shifted, summary["image_stats"])
    summary.update(
        tested=tested, significant=bool(result.significant) if tested else None, p_value=result.p_value,
        correction=f"{result.correction} over the driving tests that ran ({', '.join(DRIVING)})",
        tests={name: _test_json(t) for name, t in result.tests.items()},
        reason=None if tested else "not tested: no driving test could run",
    )
    summary["expected_accuracy"].update(_estimate_caveat(summary))
    return jsonable(summary)


def _estimate_caveat(summary: dict[str, Any]) -> dict[str, Any]:
    """{reliable, caveat} of a tested window's label-free accuracy. The estimate (mean calibrated top-1
    probability) holds only while the model is as well calibrated as on validation; a window that differs from the
    reference, or has more 'unknown' images than validation, breaks that: on hymenoptera, blurred photos read 0.79
    [0.69, 0.90] against 0.68 measured, and clip art, digits and noise (74-84 % unknown, none an ant or a bee) read
    0.66-0.73. Such an estimate is kept but marked not reliable (None: not tested, so not known)."""
    if not summary["tested"]:
        return {"reliable": None, "caveat": None}
    shifted = [name for name, t in summary["tests"].items()
               if t.get("significant") and name in DRIVING]
    if not summary["significant"]:
        return {"reliable": True, "caveat": None}
    return {"reliable": False, "caveat": (
        f"not reliable: this window differs from the reference ({', '.join(shifted)}), and the estimate assumes the "
        "model is as well calibrated as on validation, which a shift breaks (an image of no trained class counts as "
        "right with its confidence); label a random sample of the window to measure its accuracy")}
