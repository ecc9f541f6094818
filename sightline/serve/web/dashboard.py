"""What the monitoring dashboard shows, read from the service database: recent predictions (filtered), the
confidence histogram per block of predictions (the monitor's windows), predicted class shares per block of
predictions (class mix over time), accuracy measured from reviewer labels on the random slice (drawn from all
predictions, whatever their decision: sightline.storage.images) with its confusion and FP/FN per class beside the
label-free estimate on the same items and how much of the slice is labelled per decision, the drift p-values of the
monitor's blocks, the alerts, and the registry alias's moves (which model version serves now and since when). Plain
data out (dicts, lists, SVG coordinates); the template draws it. Blocking: call from a worker thread.
"""
from __future__ import annotations

import math
from collections import Counter
from datetime import timezone
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select

from sightline.monitor.estimate import expected_accuracy, measured_accuracy
from sightline.storage.store import IN_SLICE, UNKNOWN_LABEL, KeptImage, MonitorWindow, PredictionRecord, Store

__all__ = ["PALETTE_SIZE", "class_mix_history", "confidence_by_block", "dashboard_data", "model_history",
           "p_value_history", "slice_accuracy", "slice_coverage", "window_view"]

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
                   window: int = 500, blocks: int = 6, bins: int = 10) -> dict[str, Any]:
    """Recent predictions (filtered by decision, predicted label, confidence band [low, high]), the confidence
    histograms of the last `blocks` blocks of `window` predictions (`confidence_by_block`), accuracy measured on
    the labelled random slice (`slice_accuracy`: every labelled slice member, whatever its decision) and the
    slice's coverage (`slice`: Store.slice_counts, members and labelled ones per decision)."""
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
        labelled = conn.execute(
            select(p.label, p.reviewed_label, p.confidence).join(KeptImage, KeptImage.prediction_id == p.id)
            .where(IN_SLICE, p.reviewed_label.is_not(None))
        ).all()
        total = conn.execute(select(func.count()).select_from(p)).scalar_one()
        wanted = _tail_length(total, window, blocks)
        confs = list(conn.scalars(select(p.confidence).order_by(p.id.desc()).limit(wanted)))[::-1]
    return {"recent": [{**r, "has_image": r["sha256"] is not None and r["evicted"] is None} for r in recent],
            "confidence": confidence_by_block(confs, first=total - len(confs), size=window, bins=bins),
            "total": total, "measured": slice_accuracy([tuple(r) for r in labelled], classes),
            "slice": slice_coverage(store.slice_counts())}


def slice_coverage(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What the page says of the random slice's coverage, from Store.slice_counts: {n, labelled, share (labelled /
    n, None when empty), by_decision: [{decision, n, labelled, share, unlabelled_evicted}] (decisions with members),
    uneven: True when some decision's members are labelled at a share more than 10 points from another's, so the
    measured accuracy leans towards the better-covered decisions (label the rest of the slice)}."""
    rows = [{"decision": d, **c, "share": c["labelled"] / c["n"] if c["n"] else None} for d, c in counts.items()
            if c["n"]]
    n, labelled = sum(r["n"] for r in rows), sum(r["labelled"] for r in rows)
    shares = [r["share"] for r in rows]
    return {"n": n, "labelled": labelled, "share": labelled / n if n else None, "by_decision": rows,
            "uneven": len(shares) > 1 and max(shares) - min(shares) > 0.10}


def _tail_length(total: int, size: int, blocks: int) -> int:
    """How many of the newest predictions make the last `blocks` blocks of `size` (block i holds positions
    i*size ... (i+1)*size - 1 in id order; the newest block may be partial), so the tail starts on a boundary."""
    return min(total, (total % size or size) + (blocks - 1) * size)


def confidence_by_block(confs: Sequence[float], *, first: int, size: int, bins: int = 10) -> dict[str, Any]:
    """Confidence histograms of consecutive blocks of `size` predictions, oldest first: `confs` are the top-1
    confidences of the predictions at positions first, first + 1, ... (first on a block boundary). Same bins for
    every block; bar heights are shares of the block on one scale over all blocks (100 = the largest share), so a
    shift shows as bars moving between panels. {size, bins: [{low, high}], blocks: [{label, n, partial, mean,
    bars: [{count, share, height}]}]}; no blocks without predictions."""
    edges = [{"low": i / bins, "high": (i + 1) / bins} for i in range(bins)]
    found = []
    for start in range(0, len(confs), size):
        chunk = confs[start:start + size]
        counts = [0] * bins
        for c in chunk:
            counts[min(bins - 1, max(0, int(c * bins)))] += 1
        found.append((f"{first + start + 1}-{first + start + len(chunk)}", counts, chunk))
    top = max((n / len(chunk) for _, counts, chunk in found for n in counts), default=1.0) or 1.0
    out = []
    for label, counts, chunk in found:
        out.append({"label": label, "n": len(chunk), "partial": len(chunk) < size, "mean": sum(chunk) / len(chunk),
                    "bars": [{"count": n, "share": n / len(chunk), "height": round(100 * n / len(chunk) / top, 2)}
                             for n in counts]})
    return {"size": size, "bins": edges, "blocks": out}


def model_history(registry: Any, alias: str, serving: str | None, *, limit: int = 20) -> dict[str, Any]:
    """The last `limit` moves of `alias` in a sightline.loop.registry.Registry's append-only log, newest first,
    each with the target version's name and model version; the newest move to `serving` (the registry version the
    service answers with, "v3") is marked `current`. `pending` is the version the alias points to when the service
    has not switched to it (yet, or because it cannot be served). One indexed read of at most `limit` rows (the
    Registry's own `history` reads the whole log)."""
    log, versions = registry.tables["log"], registry.tables["versions"]
    q = (select(log.c.id, log.c.action, log.c.from_version_id, log.c.to_version_id, log.c.by, log.c.at,
                log.c.reason, log.c.forced, versions.c.name, versions.c.model_version)
         .join(versions, versions.c.id == log.c.to_version_id)
         .where(log.c.alias == alias).order_by(log.c.id.desc()).limit(limit))
    with registry.engine.connect() as conn:
        rows = conn.execute(q).all()
    moves, marked = [], False
    for r in rows:
        to_ref = f"v{r.to_version_id}"
        current = not marked and to_ref == serving
        marked = marked or current
        at = r.at.replace(tzinfo=timezone.utc) if r.at is not None and r.at.tzinfo is None else r.at
        moves.append({"id": r.id, "action": r.action, "to": to_ref, "name": r.name, "version": r.model_version,
                      "from": f"v{r.from_version_id}" if r.from_version_id is not None else None, "by": r.by,
                      "at": at.isoformat(timespec="seconds") if at is not None else "", "reason": r.reason,
                      "forced": bool(r.forced), "current": current})
    pending = moves[0]["to"] if moves and moves[0]["to"] != serving else None
    return {"alias": alias, "moves": moves, "pending": pending, "limit": limit}


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
        wanted = _tail_length(total, size, blocks)
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
