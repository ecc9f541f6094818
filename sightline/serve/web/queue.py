"""The review page's order: most uncertain first, spread out so near-identical images do not fill a batch.

Candidates are the `pool * limit` unlabelled queued predictions with the lowest top-1 confidence (read in order
from the partial index ix_predictions_queue, which holds exactly those, with LIMIT); their uncertainty is the
margin between the two most probable classes (from the monitor's stored softmax when there is one, else the
stored top-k). k-center greedy on the stored projected features (prediction_signals.projected) then picks `limit`
of them, seeded by the most uncertain; items without features follow by margin. The slice `random` is the
store's random slice, drawn from every prediction whatever its decision (sightline.storage.images), oldest first:
its labels measure production accuracy without bias. A queued prediction in the slice shows in both lists.
`Store.review_count` counts what waits in all (the page shows at most `limit`), with the same filter.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Select, select

from sightline.storage.store import KeptImage, PredictionRecord, PredictionSignal, Store, review_conditions

__all__ = ["candidates", "k_center_greedy", "margin", "ordered_queue"]


def margin(probabilities: np.ndarray | None, top_k: list[dict[str, Any]]) -> float:
    """Top-1 minus top-2 probability (0 = a coin toss between two classes)."""
    if probabilities is not None and probabilities.size >= 2:
        top2 = np.partition(probabilities, -2)[-2:]
        return float(top2[1] - top2[0])
    conf = sorted((float(t["confidence"]) for t in top_k), reverse=True)
    return conf[0] - conf[1] if len(conf) >= 2 else (conf[0] if conf else 1.0)


def k_center_greedy(features: np.ndarray, k: int) -> list[int]:
    """Indices of `k` rows: row 0 first, then each time the row farthest from every row chosen so far."""
    n = len(features)
    if n == 0 or k <= 0:
        return []
    chosen = [0]
    dist = np.linalg.norm(features - features[0], axis=1)
    dist[0] = -1.0  # never chosen twice; exact duplicates (distance 0) still come before nothing
    while len(chosen) < min(k, n):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(features - features[nxt], axis=1))
        dist[chosen] = -1.0
    return chosen


def candidates(*, limit: int, sample: bool = False) -> Select:
    """The SELECT of up to `limit` unlabelled candidates: queued ones least confident first, or (`sample`) the
    random slice's oldest first, with their signals and kept-image rows."""
    p, s, k = PredictionRecord, PredictionSignal, KeptImage
    q = (select(p.id, p.created, p.filename, p.label, p.confidence, p.top_k, p.decision, p.model_version,
                s.probabilities, s.projected, s.ood_score, k.evicted, k.sha256)
         .outerjoin(s, s.prediction_id == p.id).outerjoin(k, k.prediction_id == p.id))
    q = q.where(*review_conditions(sample))
    # the queue: the partial index's own condition, as written, so SQLite reads that index in order (no sort)
    return q.order_by(p.id).limit(limit) if sample else q.order_by(p.confidence, p.id).limit(limit)


def ordered_queue(store: Store, *, limit: int = 50, pool: int = 4, sample: bool = False) -> list[dict[str, Any]]:
    """Up to `limit` unlabelled items for the page (dicts: the prediction's columns plus margin, ood_score,
    has_image)."""
    q = candidates(limit=limit if sample else limit * pool, sample=sample)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    items: list[dict[str, Any]] = []
    feats: list[np.ndarray | None] = []
    for r in rows:
        probs = np.frombuffer(r.probabilities, dtype=np.float32) if r.probabilities is not None else None
        items.append({"id": r.id, "created": r.created, "filename": r.filename, "label": r.label,
                      "confidence": r.confidence, "top_k": r.top_k, "decision": r.decision,
                      "model_version": r.model_version, "ood_score": r.ood_score,
                      "margin": margin(probs, r.top_k), "has_image": r.sha256 is not None and r.evicted is None})
        feats.append(np.frombuffer(r.projected, dtype=np.float16).astype(np.float32)
                     if r.projected is not None else None)
    if sample:
        return items
    order = sorted(range(len(items)), key=lambda i: (items[i]["margin"], items[i]["id"]))
    with_f = [i for i in order if feats[i] is not None]
    picked: list[int] = []
    if with_f:
        matrix = np.stack([feats[i] for i in with_f])  # type: ignore[misc]
        picked = [with_f[j] for j in k_center_greedy(matrix, limit)]
    picked += [i for i in order if feats[i] is None][: limit - len(picked)]
    picked.sort(key=lambda i: (items[i]["margin"], items[i]["id"]))
    return [items[i] for i in picked]
