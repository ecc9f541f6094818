"""What the monitoring dashboard shows, read from the service database: recent predictions (filtered), the
confidence histogram, predicted class shares per block of predictions (class mix over time), accuracy measured
from reviewer labels on the random slice with its confusion and FP/FN per class beside the label-free estimate on
the same items, the drift p-values of the monitor's blocks, and the alerts. Plain data out (dicts, lists, SVG
coordinates); the template draws it. Blocking: call from a worker thread.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select

from sightline.monitor.estimate import expected_accuracy, measured_accuracy
from sightline.storage.store import UNKNOWN_LABEL, KeptImage, MonitorWindow, PredictionRecord, Store

__all__ = ["PALETTE_SIZE", "class_mix_history", "dashboard_data", "p_value_history", "slice_accuracy",
           "window_view"]

PALETTE_SIZE = 10  # app.css colours classes .c0 ... .c9; later classes reuse them in turn


def window_view(kind: str, w: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard shows of a stored window result (sightline.monitor's summary): its tests' p-values, the
    combined one, the unknown rate and the label-free accuracy estimate with its interval."""
    tests = {name: t.get("p_value") for name, t in (w.get("tests") or {}).items() if isinstance(t, dict)}
    est = w.get("expected_accuracy") or {}
    return {"kind": kind, "n": w.get("n"), "significant": w.get("significant"), "p_value": w.get("p_value"),
            "tests": tests, "unknown_rate": w.get("unknown_rate"), "mean_confidence": w.get("mean_confidence"),
            "estimate": est.get("expected_accuracy"), "low": est.get("low"), "high": est.get("high")}


def slice_accuracy(pairs: Sequence[tuple[str, str, float]], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy of the labelled random slice from (predicted label, reviewer label, calibrated top-1 confidence)
    triples, one per item.

    Items the reviewer labelled 'unknown' (not a valid item) are counted apart (`unknown_labels`) and left out of
    accuracy, confusion and FP/FN: they measure the open-set decision, not the classifier. Returns {n, accuracy,
    low, high (Wilson, 95 %), estimate {expected_accuracy, low, high}: the label-free estimate (mean calibrated
    confidence) on the same items, unknown_labels, classes, confusion: rows = reviewer label, columns = predicted,
    per_class: [{name, n (reviewer said), predicted, tp, fp, fn, precision, recall}]}."""
    names = list(classes)
    rows = [(p, t, c) for p, t, c in pairs if t != UNKNOWN_LABEL]
    for p, t, _ in rows:  # a label outside the bundle's classes (an older model's) still gets a row and column
        for name in (t, p):
            if name not in names:
                names.append(name)
    index = {name: i for i, name in enumerate(names)}
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for p, t, _ in rows:
        confusion[index[t], index[p]] += 1
    measured = measured_accuracy(np.array([p for p, _, _ in rows], dtype=object),
                                 np.array([t for _, t, _ in rows], dtype=object))
    top1 = np.array([c for _, _, c in rows], dtype=np.float64)
    est = expected_accuracy(top1[:, None])  # (n, 1): each row's maximum is its top-1 probability
    tp = np.diag(confusion)
    said, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    per_class = [{"name": name, "n": int(said[i]), "predicted": int(predicted[i]), "tp": int(tp[i]),
                  "fp": int(predicted[i] - tp[i]), "fn": int(said[i] - tp[i]),
                  "precision": float(tp[i] / predicted[i]) if predicted[i] else None,
                  "recall": float(tp[i] / said[i]) if said[i] else None} for i, name in enumerate(names)]
    return {"n": measured["n"], "accuracy": measured["accuracy"], "low": measured["low"], "high": measured["high"],
            "estimate": {k: est[k] for k in ("expected_accuracy", "low", "high")},
            "unknown_labels": len(pairs) - len(rows), "classes": names, "confusion": confusion.tolist(),
            "per_class": per_class}


def dashboard_data(store: Store, *, classes: Sequence[str] = (), decision: str | None = None,
                   label: str | None = None, low: float = 0.0, high: float = 1.0, limit: int = 50,
                   bins: int = 10) -> dict[str, Any]:
    """Recent predictions (filtered by decision, predicted label, confidence band [low, high]), the confidence
    histogram of the last 1,000, and accuracy measured on the labelled random slice (`slice_accuracy`)."""
    p = PredictionRecord
    q = select(p.id, p.created, p.filename, p.label, p.confidence, p.decision, p.reviewed_label, KeptImage.evicted,
               KeptImage.sha256).outerjoin(KeptImage, KeptImage.prediction_id == p.id)
    if low > 0.0 or high < 1.0:  # a band only when one is chosen: the plain query reads newest first and stops
        q = q.where(p.confidence >= low, p.confidence <= high)
    if decision:
        q = q.where(p.decision == decision)
    if label:
        q = q.where(p.label == label)
    with store.engine.connect() as conn:
        recent = [dict(r._mapping) for r in conn.execute(q.order_by(p.id.desc()).limit(limit))]
        confs = [c for (c,) in conn.execute(select(p.confidence).order_by(p.id.desc()).limit(1000))]
        labelled = conn.execute(
            select(p.label, p.reviewed_label, p.confidence).join(KeptImage, KeptImage.prediction_id == p.id)
            .where(KeptImage.reason == "sample", p.reviewed_label.is_not(None))
        ).all()
        total = conn.execute(select(func.count()).select_from(p)).scalar_one()
    counts = [0] * bins
    for c in confs:
        counts[min(bins - 1, max(0, int(c * bins)))] += 1
    top = max(counts) or 1
    histogram = [{"low": i / bins, "high": (i + 1) / bins, "count": n, "height": round(100 * n / top)}
                 for i, n in enumerate(counts)]
    return {"recent": [{**r, "has_image": r["sha256"] is not None and r["evicted"] is None} for r in recent],
            "histogram": histogram, "histogram_n": len(confs), "total": total,
            "measured": slice_accuracy([tuple(r) for r in labelled], classes)}


def class_mix_history(store: Store, classes: Sequence[str], *, size: int, blocks: int = 24,
                      reference: dict[str, float] | None = None) -> dict[str, Any]:
    """Predicted class shares in consecutive blocks of `size` predictions (the monitor's block size), the last
    `blocks` of them, oldest first. Block i holds the predictions at positions i*size ... (i+1)*size - 1 in id
    order, so a block keeps its contents as predictions arrive; the newest may be partial (marked). `reference`
    (the profile's class mix: {class: share}) adds a last bar. Stacked-bar geometry on a 100-unit-high plot, 10
    units a bar: {bars: [{label, n, partial, x, segments: [{name, share, y, height, colour}]}], legend: [{name,
    colour}], size, width}; no bars without predictions."""
    p = PredictionRecord
    with store.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(p)).scalar_one()
        wanted = min(total, (total % size or size) + (blocks - 1) * size)  # starts on a block boundary
        # the labels themselves, newest first: counting them per block in SQL (row_number() over the tail, then
        # GROUP BY) measured slower on SQLite than this one indexed read and a Counter per block
        labels = list(conn.scalars(select(p.label).order_by(p.id.desc()).limit(wanted)))[::-1]
    names = list(classes)
    names += sorted(set(labels) - set(names))  # an older model's classes still show
    colour = {name: f"c{i % PALETTE_SIZE}" for i, name in enumerate(names)}
    first = total - len(labels)
    groups: list[tuple[str, dict[str, float], int]] = []
    for start in range(0, len(labels), size):
        chunk = labels[start:start + size]
        found = Counter(chunk)
        groups.append((f"{first + start + 1}-{first + start + len(chunk)}", {n: float(found[n]) for n in names},
                       len(chunk)))
    if groups and reference:
        groups.append(("reference", {n: float(reference.get(n, 0.0)) for n in names}, 0))
    bars = []
    for i, (label, counts, n) in enumerate(groups):
        whole = sum(counts.values()) or 1.0
        y, segments = 0.0, []
        for name in names:
            if counts[name] > 0:
                share = counts[name] / whole
                segments.append({"name": name, "share": share, "y": round(y, 3), "height": round(100 * share, 3),
                                 "colour": colour[name]})
                y += 100 * share
        bars.append({"label": label, "n": n, "partial": label != "reference" and n < size, "x": 10 * i,
                     "segments": segments})
    return {"bars": bars, "legend": [{"name": n, "colour": colour[n]} for n in names], "size": size,
            "width": 10 * len(bars)}


def p_value_history(store: Store, profile: str, *, kind: str = "block", limit: int = 40) -> list[dict[str, Any]]:
    """The combined drift p-value of the last `limit` windows of `kind`, oldest first, with SVG coordinates
    (x over the windows, y = -log10 p on 0..4 over a 100-unit-high plot)."""
    w = MonitorWindow
    q = (select(w.key, w.created, w.significant, w.result).where(w.profile == profile, w.kind == kind)
         .order_by(w.id.desc()).limit(limit))
    with store.engine.connect() as conn:
        rows = list(conn.execute(q))[::-1]
    points = []
    for i, r in enumerate(rows):
        pv = (r.result or {}).get("p_value")
        if pv is None:
            continue
        y = 100 - 25 * min(4.0, -math.log10(max(pv, 1e-4)))
        points.append({"key": r.key, "created": r.created, "p": pv, "significant": r.significant,
                       "x": 5 + 190 * i / max(1, len(rows) - 1), "y": round(y, 2)})
    return points
